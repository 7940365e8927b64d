"""Explaining images: the default model, the Python API, the explain/demo CLI and bad input."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from skimage import data
from typer.testing import CliRunner

from swag_onnx.cli import app
from swag_onnx.errors import BadModelError, BadOptionError
from swag_onnx.explain import Explainer
from swag_onnx.methods import METHODS

SWAG_METHODS = [name for name in METHODS if name.startswith("swag-")]

runner = CliRunner()
CATS = range(281, 286)


@pytest.fixture(scope="module")
def default():
    return Explainer()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    cv2.imwrite(str(folder / "chelsea.jpg"), data.chelsea()[:, :, ::-1])
    cv2.imwrite(str(folder / "coffee.png"), data.coffee()[:, :, ::-1])
    return folder


def test_default_model_recognises_scikit_image_photos(default):
    chelsea, coffee = default.predict([data.chelsea(), data.coffee()])
    assert chelsea.top5[0]["index"] in CATS
    assert coffee.top5[0]["index"] == 967 and coffee.top5[0]["label"] == "espresso"
    assert abs(sum(t["probability"] for t in chelsea.top5) - 1) < 0.5


@pytest.mark.parametrize("method", SWAG_METHODS)
def test_maps_have_original_size_range_and_are_deterministic(default, method):
    image = data.coffee()
    first, = default.explain([image], method=method)
    again, = default.explain([image], method=method)
    assert first.saliency.shape == image.shape[:2] and first.saliency.dtype == np.float32
    assert first.saliency.min() == 0.0 and first.saliency.max() == 1.0
    assert np.array_equal(first.saliency, again.saliency)
    assert first.target == {"index": 967, "label": "espresso"} and first.method == method
    assert json.loads(json.dumps(first.record()))["params"]["source"] == method.split("-")[1]


def test_target_by_name_and_index(default):
    by_name, = default.explain([data.chelsea()], target="Egyptian CAT")
    by_index, = default.explain([data.chelsea()], target=285)
    assert by_name.target["index"] == by_index.target["index"] == 285
    assert np.array_equal(by_name.saliency, by_index.saliency)
    with pytest.raises(BadOptionError, match="unknown class"):
        default.explain([data.chelsea()], target="unicorn")
    with pytest.raises(BadOptionError, match="out of range"):
        default.explain([data.chelsea()], target=1000)


class RedDetector(torch.nn.Module):
    """Class 1 = "there is something red": a 1x1 conv that responds to red minus the others,
    ReLU, global max pool (or mean: then the evidence adds up over the red pixels, which the
    perturbation methods need, since one visible red pixel saturates the max). The evidence is,
    by construction, where the red square is."""

    def __init__(self, pool: str = "max"):
        super().__init__()
        self.pool = pool
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0, 1, 1] = 2.0
            self.conv.weight[:, 1:, 1, 1] = -1.0
            self.conv.bias.fill_(-0.5)
        self.fc = torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
            self.fc.bias.zero_()

    def forward(self, x):
        features = torch.relu(self.conv(x))
        pooled = torch.amax(features, dim=(2, 3)) if self.pool == "max" else features.mean((2, 3))
        return self.fc(pooled * (1.0 if self.pool == "max" else 16.0))


def _red_model(folder, pool):
    torch.onnx.export(RedDetector(pool).eval(), (torch.rand(1, 3, 64, 64),),
                      str(folder / "model.onnx"), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    card = {"model": "model.onnx", "input_size": [64, 64], "layout": "NCHW",
            "scaling": {"offset": 0.0, "divisor": 255.0}, "class_names": ["plain", "red"]}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


@pytest.fixture(scope="module")
def red_model(tmp_path_factory):
    return _red_model(tmp_path_factory.mktemp("red"), "max")


@pytest.fixture(scope="module")
def red_mean_model(tmp_path_factory):
    return _red_model(tmp_path_factory.mktemp("red_mean"), "mean")


@pytest.mark.parametrize("method", SWAG_METHODS)
def test_swag_mass_lies_on_the_evidence(red_model, method):
    rng = np.random.default_rng(0)
    image = rng.integers(60, 120, (128, 128, 3), dtype=np.uint8)  # grey-ish noise
    image[40:72, 70:102] = [220, 30, 30]  # the red square (upsampled 2x: 16x16 at 64 px)
    inside = np.zeros(image.shape[:2], bool)
    inside[40:72, 70:102] = True
    result, = Explainer(red_model).explain([image], method=method, target="red")
    share = result.saliency[inside].sum() / result.saliency.sum()
    assert share > 0.5, f"{method}: only {share:.0%} of the map on the evidence"
    assert share > 3 * inside.mean()


def test_model_without_card_needs_preprocessing(red_model, tmp_path):
    bare = tmp_path / "bare.onnx"
    bare.write_bytes((red_model / "model.onnx").read_bytes())
    with pytest.raises(BadOptionError, match="--mean/--std"):
        Explainer(bare)
    result = runner.invoke(app, ["explain", str(bare), "--model", str(bare)])
    assert result.exit_code == 2 and "--mean/--std" in result.output
    ok = Explainer(bare, card={"input_size": [64, 64], "scaling": {"offset": 0, "divisor": 255}})
    top = ok.predict([data.chelsea()])[0].top5
    assert [t["label"] for t in top] in (["class 0", "class 1"], ["class 1", "class 0"])


def test_explain_cli_writes_all_outputs(photos, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(photos), "--out", str(out),
                                 "--method", "swag-image", "--method", "swag-gradient"])
    assert result.exit_code == 0, result.output
    for stem in ("chelsea", "coffee"):
        for method in ("swag-image", "swag-gradient"):
            record = json.loads((out / f"{stem}.{method}.json").read_text())
            assert {"top5", "target", "method", "params", "provider", "timings_ms"} <= set(record)
            saliency = np.load(out / f"{stem}.{method}.npy")
            picture = cv2.imread(str(out / f"{stem}.{method}.png"))
            assert saliency.shape == picture.shape[:2] and saliency.dtype == np.float32
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.{m}.{e}" for s in ("chelsea", "coffee") for m in ("swag-image", "swag-gradient")
         for e in ("png", "npy", "json")] + ["index.html"])
    assert "espresso" in result.output


def test_folder_with_bad_files_processes_the_good_ones(photos, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.png").write_bytes((photos / "coffee.png").read_bytes())
    (folder / "text.jpg").write_text("not an image")
    (folder / "cut.jpg").write_bytes((photos / "chelsea.jpg").read_bytes()[:2000])
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(folder), "--out", str(out)])
    assert result.exit_code == 1
    assert (out / "good.swag-image.png").exists()
    assert "text.jpg" in result.output and "cut.jpg" in result.output
    assert "Traceback" not in result.output and not list(out.glob("text*")) + list(out.glob("cut*"))


@pytest.mark.parametrize("args,message", [
    (["--target", "unicorn"], "unknown class"),
    (["--method", "occlusion"], "unknown method"),
    (["--superpixels", "lab"], "unknown superpixels"),
    (["--model", "/no/such/model"], "does not exist"),
    (["--n-segments", "0"], "n_segments"),
])
def test_explain_bad_options(photos, tmp_path, args, message):
    result = runner.invoke(app, ["explain", str(photos / "coffee.png"), "--out",
                                 str(tmp_path / "o")] + args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_missing_image_only(tmp_path):
    result = runner.invoke(app, ["explain", str(tmp_path / "nope.jpg"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "nope.jpg" in result.output


def test_demo_writes_three_variants(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "swag-demo").iterdir())
    assert written == sorted([f"chelsea.{m}.{e}" for m in SWAG_METHODS
                              for e in ("png", "npy", "json")] + ["index.html"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["swag-demo"]  # nothing else written


def test_missing_default_model_is_a_clear_error(monkeypatch, tmp_path):
    from swag_onnx import card
    installed = card.DEFAULT_MODEL_DIR
    monkeypatch.setattr(card, "DEFAULT_MODEL_DIR", tmp_path / "gone")
    monkeypatch.setattr(card, "INSTALLED_MODEL_DIR", tmp_path / "gone too")
    with pytest.raises(BadModelError, match="default model is missing"):
        Explainer()
    monkeypatch.setattr(card, "INSTALLED_MODEL_DIR", installed)  # a regular install's copy
    assert card.default_model() == installed


def test_provider_reported_is_the_one_that_runs(photos, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "o"
    auto = runner.invoke(app, ["explain", str(photos / "coffee.png"), "--out", str(out)])
    record = json.loads((out / "coffee.swag-image.json").read_text())
    assert auto.exit_code == 0 and record["provider"] in ort.get_available_providers()
    assert "CUDA" not in auto.output or record["provider"] == "CUDAExecutionProvider"  # quiet
    cuda = runner.invoke(app, ["explain", str(photos / "coffee.png"), "--out", str(out),
                               "--provider", "cuda"])
    if record["provider"] == "CUDAExecutionProvider":
        assert cuda.exit_code == 0
    else:  # a CPU-only machine: one clear line, not a silent fallback
        assert cuda.exit_code == 2 and "CUDA could not be loaded" in cuda.output
    bad = runner.invoke(app, ["explain", str(photos / "coffee.png"), "--provider", "tpu"])
    assert bad.exit_code == 2 and "unknown provider" in bad.output


def test_cache_is_keyed_by_model_and_augmentation_code(tmp_path, monkeypatch):
    from swag_onnx import runtime
    monkeypatch.setenv("SWAG_ONNX_CACHE", str(tmp_path))
    model = Explainer().onnx_path
    first = runtime.augmented_path(model, ("auto",), None)
    assert first.parent == tmp_path and runtime.augmented_path(model, ("auto",), None) == first
    runtime.augmenter_digest.cache_clear()
    monkeypatch.setattr(runtime, "__version__", "0.0.0-other")
    assert runtime.augmented_path(model, ("auto",), None) != first  # other code: rebuilt
    runtime.augmenter_digest.cache_clear()


def test_layer_methods_run_without_the_input_gradient():
    """Grad-CAM reads no input gradient: its shared run is made on a session that stops at the
    layers (the augmented model pruned below them), the only gradient session built for it.
    That run's scores, activations and layer gradients equal the full run's bit for bit, and so
    do the maps; a method that reads the input gradient adds the full session."""
    explainer = Explainer()
    cam, = explainer.explain([data.chelsea()], method="gradcam")
    assert list(explainer.runner._gradient_sessions) == [False]
    both = explainer.explain([data.chelsea()], method=["gradcam", "gradient"])
    assert sorted(explainer.runner._gradient_sessions) == [False, True]
    assert np.array_equal(cam.saliency, both[0].saliency)
    x = np.random.default_rng(2).standard_normal((2, 3, 224, 224)).astype(np.float32)
    seed = np.eye(explainer.num_classes, dtype=np.float32)[[281, 967]]
    full = explainer.runner.gradients(x, seed)
    layers = explainer.runner.gradients(x, seed, input_grad=False)
    assert layers.input_grad is None and full.input_grad.shape == x.shape
    assert np.array_equal(layers.scores, full.scores)
    for name in explainer.runner.layers:
        assert np.array_equal(layers.activations[name], full.activations[name])
        assert np.array_equal(layers.layer_grads[name], full.layer_grads[name])


def test_layer_methods_run_on_the_whole_model_where_it_cannot_be_pruned(monkeypatch):
    """Where onnx's Extractor or protobuf refuses the model (ValueError: sparse initializers,
    beyond 2 GiB), the layer methods run on the whole augmented model: same maps."""
    from swag_onnx import runtime

    pruned, = Explainer().explain([data.coffee()], method="gradcam")

    def refuse(model, keep):
        raise ValueError("len_sparse_initializer is 1, it must be 0.")
    monkeypatch.setattr(runtime, "keep_outputs", refuse)
    whole, = Explainer().explain([data.coffee()], method="gradcam")
    assert np.array_equal(whole.saliency, pruned.saliency)


OTHER_METHODS = [m for m, entry in METHODS.items()
                 if m not in SWAG_METHODS and not entry.control]
FAST = {"steps": 8, "samples": 20, "masks": 100}


def test_all_methods_share_one_call_and_have_the_right_shape(default):
    results = default.explain([data.coffee(), data.chelsea()], method=list(METHODS), **FAST)
    assert [r.method for r in results] == list(METHODS) * 2
    for r in results:
        assert r.saliency.shape == r.image.shape[:2] and r.saliency.max() == 1.0, r.method
        assert np.isfinite(r.saliency).all() and r.saliency.min() >= 0.0
    gradcam = next(r for r in results if r.method == "gradcam")
    assert gradcam.params["layers"] == ["/_swish_1/Clip_output_0"]  # the auto layer


@pytest.mark.parametrize("method", [m for m in OTHER_METHODS if m != "lime"])
def test_comparison_methods_find_the_evidence(red_model, red_mean_model, method):
    # LIME is left out: it switches a superpixel off by filling it with its own mean colour,
    # which leaves a uniform red square unchanged (tests/test_lime.py covers its evidence test).
    rng = np.random.default_rng(0)
    image = rng.integers(60, 120, (128, 128, 3), dtype=np.uint8)
    image[40:72, 70:102] = [220, 30, 30]
    inside = np.zeros(image.shape[:2], bool)
    inside[40:72, 70:102] = True
    params = {"integrated-gradients": {"steps": 8}, "smoothgrad": {"samples": 6},
              "rise": {"masks": 1000}}.get(method, {})
    model = red_mean_model if method == "rise" else red_model
    result, = Explainer(model).explain([image], method=method, target="red", **params)
    share = result.saliency[inside].sum() / result.saliency.sum()
    peak = np.unravel_index(result.saliency.argmax(), inside.shape)
    if method == "xrai":  # a whole region shares the maximum, and regions are dilated by 5 px:
        peak = tuple(np.round(np.argwhere(result.saliency == result.saliency.max()).mean(0))
                     .astype(int))  # its centre must lie on the evidence
    assert inside[peak], f"{method}: the map's maximum is off the evidence"
    # RISE's maps are smooth (bilinear 7x7 masks) and noisy, the others sharp
    assert share > (2 * inside.mean() if method == "rise" else 0.5), f"{method}: {share:.0%}"


@pytest.mark.parametrize("args,message", [
    (["--method", "gradcam", "--layer", "no_such_tensor"], "not a float tensor"),
    (["--method", "swag", "--steps", "8"], "do not apply"),
    (["--method", "normgrad", "--combine", "mean"], "unknown combine 'mean'"),
])
def test_comparison_method_bad_options(photos, tmp_path, args, message):
    result = runner.invoke(app, ["explain", str(photos / "coffee.png"), "--out",
                                 str(tmp_path / "o")] + args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_normgrad_combines_layers(default, tmp_path):
    from swag_onnx.graph import describe
    from swag_onnx.graph.analysis import stage_outputs
    info = describe(default.onnx_path)
    layers = [name for name, _ in stage_outputs(info.layers, info.layout)][-2:]
    explainer = Explainer(layers=layers)
    product, = explainer.explain([data.coffee()], method="normgrad", combine="product")
    total, = explainer.explain([data.coffee()], method="normgrad", combine="sum")
    assert product.params["layers"] == layers and not np.allclose(product.saliency, total.saliency)


def test_perturbation_methods_report_progress(default):
    seen = []
    default.explain([data.coffee()], method=["rise", "lime"], masks=128, samples=100,
                    on_progress=lambda method, done, total: seen.append((method, done, total)))
    assert ("rise", 128, 128) in seen and ("lime", 100, 100) in seen
    assert all(done <= total for _, done, total in seen)
