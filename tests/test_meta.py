"""Meta-saliency: parameter gradients in the augmented graph (finite differences per rule, fed
through the overridable initializers), one SGD step against torch on a real network, and the
explain / CLI options."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from skimage import data
from typer.testing import CliRunner

import zoo
from gradcheck import one_node_model, session
from swag_onnx import augment_model
from swag_onnx.cli import app
from swag_onnx.graph.augment import SEED, Contract, weight_grad_name
from swag_onnx.runtime import ModelRunner

RNG = np.random.default_rng(0)


def _weight_vjp_error(model: onnx.ModelProto, x: np.ndarray, eps: float) -> dict[str, float]:
    """Per parameter: relative error of <t, dW> against central differences of <c, f(W + eps t)>,
    the perturbed weights fed through the parameter inputs of the augmented model."""
    augmented = augment_model(model, weights=True)
    contract = Contract.from_model(augmented)
    assert contract.weights, "no parameter found"
    run = session(augmented)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in augmented.graph.initializer}
    y = run.run(["y"], {"x": x, SEED: np.zeros((len(x), contract.num_classes), x.dtype)})[0]
    c = RNG.standard_normal(y.shape).astype(x.dtype)  # y is the score: c is the seed
    errors = {}
    for name in contract.weights:
        w = inits[name]
        t = RNG.standard_normal(w.shape).astype(w.dtype)

        def value(weights):
            return float((run.run(["y"], {"x": x, SEED: c, name: weights})[0] * c).sum())

        numeric = (value(w + eps * t) - value(w - eps * t)) / (2 * eps)
        grad = run.run([weight_grad_name(name)], {"x": x, SEED: c})[0]
        errors[name] = abs(float((grad * t).sum()) - numeric) / max(abs(numeric), 1e-8)
    return errors


WEIGHT_CASES = {
    "conv-dense-strided-padded": ("Conv", (2, 3, 9, 9), [RNG.standard_normal((4, 3, 3, 3)),
                                                         RNG.standard_normal(4)],
                                  {"strides": [2, 2], "pads": [1, 0, 1, 2]}),
    "conv-depthwise-strided": ("Conv", (2, 4, 8, 8), [RNG.standard_normal((4, 1, 3, 3))],
                               {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "conv-grouped-dilated": ("Conv", (1, 4, 9, 9), [RNG.standard_normal((6, 2, 2, 3)),
                                                    RNG.standard_normal(6)],
                             {"group": 2, "dilations": [2, 1], "pads": [2, 1, 1, 0]}),
    "conv-same-upper": ("Conv", (1, 2, 7, 8), [RNG.standard_normal((3, 2, 2, 3))],
                        {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "conv-1x1": ("Conv", (2, 5, 4, 4), [RNG.standard_normal((3, 5, 1, 1))], {}),
    "batchnorm": ("BatchNormalization", (2, 3, 4, 4),
                  [RNG.uniform(0.5, 1.5, 3), RNG.standard_normal(3), RNG.standard_normal(3) * 0.1,
                   RNG.uniform(0.5, 1.5, 3)], {"epsilon": 1e-3}),
    "gemm": ("Gemm", (3, 6), [RNG.standard_normal((4, 6)), RNG.standard_normal(4)],
             {"transB": 1}),
    "matmul": ("MatMul", (3, 6), [RNG.standard_normal((6, 4))], {}),
    "add-bias": ("Add", (2, 3, 4, 4), [RNG.standard_normal((3, 1, 1))], {}),
    "mul-scale": ("Mul", (2, 3, 4, 4), [RNG.standard_normal((1, 3, 1, 1))], {}),
}


@pytest.mark.parametrize("case", list(WEIGHT_CASES))
def test_parameter_gradients_match_finite_differences(case):
    op, shape, inputs, attrs = WEIGHT_CASES[case]
    dtype = TensorProto.FLOAT if op in ("Conv", "BatchNormalization") else TensorProto.DOUBLE
    image_shape = shape if len(shape) == 4 else shape + (1, 1)  # the image input is rank 4
    model = one_node_model(op, image_shape, inputs, attrs, dtype=dtype,
                           reshape_to=None if len(shape) == 4 else shape)
    x = RNG.standard_normal(image_shape).astype(
        np.float32 if dtype == TensorProto.FLOAT else np.float64)
    errors = _weight_vjp_error(model, x, 1e-2 if dtype == TensorProto.FLOAT else 1e-5)
    assert max(errors.values()) < (2e-3 if dtype == TensorProto.FLOAT else 1e-6), errors


def test_scalar_constants_are_not_parameters():
    model = one_node_model("Mul", (1, 2, 3, 3), [np.array(0.5)], dtype=TensorProto.DOUBLE)
    assert Contract.from_model(augment_model(model, weights=True)).weights == []


class SmallNet(torch.nn.Module):
    """Conv (bias), ReLU, BatchNorm after the ReLU (not folded into the conv by the exporters),
    depthwise strided conv, grouped conv, max-pool, linear: every parameter kind but LayerNorm."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.grouped = torch.nn.Conv2d(8, 12, 1, groups=4)
        self.fc = torch.nn.Linear(12, 10)
        self.relu1, self.relu2, self.pool = torch.nn.ReLU(), torch.nn.ReLU(), torch.nn.MaxPool2d(2)

    def forward(self, x):  # modules only, so that hooks see every layer output
        x = self.bn(self.relu1(self.conv(x)))
        x = self.pool(self.relu2(self.grouped(self.depthwise(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _small_net():
    torch.manual_seed(0)
    net = SmallNet()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.1, 0.1)
        net.bn.running_var.uniform_(0.8, 1.2)
        net.bn.weight.uniform_(0.8, 1.2)
        net.bn.bias.uniform_(-0.1, 0.1)
    return net.eval()


def _torch_meta(net, x, target, lr):
    """torch: one SGD step on cross-entropy over all parameters (eval mode: BN statistics
    frozen), then the autograd reference of the target's logit on the updated copy."""
    updated = copy.deepcopy(net)
    logits = updated(torch.tensor(x))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([target]))
    params = list(updated.parameters())
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * g
    seed = np.zeros((1, logits.shape[1]), np.float32)
    seed[0, target] = 1.0
    return zoo.autograd_reference(updated, x, seed)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_one_sgd_step_matches_torch(dynamo, tmp_path, monkeypatch):
    net = _small_net()
    path = zoo.export(net, 16, tmp_path / "model.onnx", dynamo)
    runner = ModelRunner(path, layers=["auto"])
    x = zoo.stable_input(net, path, (1, 3, 16, 16))
    scores = runner.scores(x)
    target = int(scores[0].argmax())
    probabilities = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    one_hot = np.eye(10, dtype=np.float32)[[target]]
    lr = 0.5  # large, so that the step visibly changes every gradient
    ours = runner.stepped_gradients(x, probabilities - one_hot, one_hot, lr)
    logits, input_grad, layers = _torch_meta(net, x, target, lr)
    assert zoo.relative_error(ours.scores, logits) < 1e-4
    assert zoo.relative_error(ours.input_grad, input_grad) < 1e-4
    (layer,) = runner.layers
    reference = zoo.match_layer(ours.activations[layer], layers)
    assert reference is not None, "the updated activation matches no torch module output"
    assert zoo.relative_error(ours.layer_grads[layer], reference) < 1e-4
    plain = runner.gradients(x, one_hot)  # the model itself is untouched ...
    np.testing.assert_array_equal(plain.scores, runner.scores(x))
    # ... and the step is not a no-op
    assert zoo.relative_error(plain.input_grad, input_grad) > 1e-2


def test_explain_meta_on_the_default_model(tmp_path):
    from swag_onnx.explain import Explainer

    explainer = Explainer()
    image = data.chelsea()
    plain = explainer.explain([image], method=["normgrad", "gradcam"])
    meta = explainer.explain([image], method=["normgrad", "gradcam"], meta=True)
    again = explainer.explain([image], method=["normgrad", "gradcam"], meta=True)
    for p, m, a in zip(plain, meta, again):
        assert m.target == p.target and m.top5 == p.top5  # predictions from the original model
        assert m.params["meta_lr"] == 0.0025
        assert np.abs(m.saliency - p.saliency).max() > 0.05  # the step changes the map
        np.testing.assert_array_equal(m.saliency, a.saliency)  # weights restored between runs
    adversarial = explainer.explain([image], method="normgrad", meta=True, meta_lr=-0.0025)
    assert np.abs(adversarial[0].saliency - meta[0].saliency).max() > 0.05


@pytest.mark.parametrize("args,message", [
    (["--method", "lime", "--meta"], "--meta applies to"),
    (["--method", "normgrad", "--method", "rise", "--meta"], "not to rise"),
    (["--method", "normgrad", "--meta", "--meta-lr", "0"], "--meta-lr"),
])
def test_meta_bad_combinations(tmp_path, args, message):
    import cv2

    path = tmp_path / "cat.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR))
    result = CliRunner().invoke(app, ["explain", str(path), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# --meta with SWAG's --average (issue 11): averaging makes extra gradient runs of the model, not
# the one stepped run meta-saliency changes; refused in one line before any model run.
META_AVERAGE = [("explain", "swag", "smoothgrad"), ("explain", "swag-gradient", "integrated"),
                ("explain", "swag-combined", "smoothgrad"), ("evaluate", "swag", "integrated"),
                ("evaluate", "swag-combined", "smoothgrad")]


def _count_model_runs(monkeypatch) -> list[str]:
    runs: list[str] = []
    for name in ("gradients", "stepped_gradients", "scores"):
        real = getattr(ModelRunner, name)
        monkeypatch.setattr(ModelRunner, name, lambda self, *a, _n=name, _r=real, **k:
                            runs.append(_n) or _r(self, *a, **k))
    return runs


@pytest.mark.parametrize("command, method, average", META_AVERAGE)
def test_meta_with_average_refused_in_one_line(tmp_path, monkeypatch, command, method, average):
    import cv2

    path = tmp_path / "cat.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR))
    runs = _count_model_runs(monkeypatch)
    out = tmp_path / "o"
    extra = ["--metric", "deletion"] if command == "evaluate" else []
    result = CliRunner().invoke(app, [command, str(path), "--out", str(out), "--method", method,
                                      "--average", average, "--meta", *extra])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --meta cannot be combined with "
                                                   f"--average {average} (swag-"), lines
    assert "use --average none" in lines[0]
    assert not out.exists() or not any(out.iterdir())
    assert not runs  # refused before any model run


def test_meta_with_average_refused_by_the_api(monkeypatch):
    from swag_onnx.errors import BadOptionError
    from swag_onnx.explain import Explainer

    explainer = Explainer()
    runs = _count_model_runs(monkeypatch)
    with pytest.raises(BadOptionError, match="--average integrated"):
        explainer.explain([data.chelsea()], method=["gradcam", "swag-image"], meta=True,
                          average="integrated")
    assert not runs


def test_meta_with_average_none_is_plain_meta():
    """average none keeps SWAG on the shared run: --meta applies and the map is unchanged."""
    from swag_onnx.explain import Explainer

    explainer = Explainer()
    image = data.chelsea()
    meta, = explainer.explain([image], method="swag-gradient", meta=True)
    given, = explainer.explain([image], method="swag-gradient", meta=True, average="none")
    np.testing.assert_array_equal(meta.saliency, given.saliency)
    assert given.params["average"] == "none" and given.params["meta_lr"] == 0.0025
