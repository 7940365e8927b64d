"""The augmented-model contract, the CLI, and bad input (one clear line, exit code 2)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import zoo
from swag_onnx import augment, augment_model, describe
from swag_onnx.cli import app
from swag_onnx.errors import BadModelError, BadOptionError, UnsupportedOpsError
from swag_onnx.graph import CONTRACT_KEY, SCORE, SEED, Contract, act_name, grad_name

runner = CliRunner()


class SoftmaxNet(torch.nn.Module):
    """conv -> relu -> global pool -> linear -> softmax: a classifier that ends in Softmax."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        features = torch.relu(self.conv(x))
        return torch.softmax(self.fc(features.mean((2, 3))), dim=1)


@pytest.fixture(scope="module")
def softmax_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("softmax") / "net.onnx"
    torch.onnx.export(SoftmaxNet().eval(), (torch.randn(2, 3, 16, 16),), str(path), dynamo=False,
                      opset_version=17, input_names=["image"], output_names=["probs"],
                      dynamic_axes={"image": {0: "N"}, "probs": {0: "N"}})
    return path


def run(model: onnx.ModelProto, feeds: dict) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_score_found_before_softmax_and_gradient_matches_torch(softmax_model):
    info = describe(softmax_model)
    assert info.score_source == "input of the final Softmax" and info.num_classes == 5
    augmented = augment_model(onnx.load(softmax_model), layers=["auto"])
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    seed = np.eye(5, dtype=np.float32)[[0, 2, 4]]
    out = run(augmented, {"image": x, SEED: seed})
    net = SoftmaxNet().eval()
    xt = torch.tensor(x, requires_grad=True)
    logits = net.fc(torch.relu(net.conv(xt)).mean((2, 3)))
    (logits * torch.tensor(seed)).sum().backward()
    assert zoo.relative_error(out[SCORE], logits.detach().numpy()) < 1e-5
    assert zoo.relative_error(out[grad_name("image")], xt.grad.numpy()) < 1e-5
    assert np.allclose(out["probs"].sum(1), 1.0)  # the original output is still there
    contract = Contract.from_model(augmented)
    assert contract.layers == [info.auto_layer] and contract.layout == "NCHW"
    assert act_name(info.auto_layer) in out and grad_name(info.auto_layer) in out


def _dead_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes none of whose outputs is read by another node or is a graph output."""
    read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if not read & set(n.output)]


@pytest.mark.parametrize("weights", [False, True])
def test_keep_outputs_prunes_the_backward_that_only_dropped_outputs_need(softmax_model, weights):
    """keep_outputs leaves no node that no kept output needs (onnxruntime would run it): without
    the input gradient, nothing reads the layer's gradient but its output (the Relu mask and the
    Conv's input gradient below it are gone); without the weight gradients, none of their nodes
    is left. The kept outputs equal the full model's bit for bit; the contract is kept."""
    from swag_onnx.graph.augment import keep_outputs

    full = augment_model(onnx.load(softmax_model), layers=["auto"], weights=weights)
    layer = Contract.from_model(full).layers[0]
    dropped = (lambda name: name.startswith("swag.wgrad.")) if weights else \
        (lambda name: name == grad_name("image"))
    pruned = keep_outputs(full, lambda name: not dropped(name))
    assert [o.name for o in pruned.graph.output] == [
        o.name for o in full.graph.output if not dropped(o.name)]
    assert _dead_nodes(pruned) == [] and len(pruned.graph.node) < len(full.graph.node)
    assert Contract.from_model(pruned) == Contract.from_model(full)
    if not weights:
        source = next(n.input[0] for n in pruned.graph.node if n.output[0] == grad_name(layer))
        assert [n.op_type for n in pruned.graph.node if source in n.input] == ["Identity"]
        assert len([n for n in full.graph.node if source in n.input]) > 1
    x = np.random.default_rng(4).standard_normal((2, 3, 16, 16)).astype(np.float32)
    feeds = {"image": x, SEED: np.eye(5, dtype=np.float32)[[1, 3]]}
    kept, everything = run(pruned, feeds), run(full, feeds)
    assert all(np.array_equal(value, everything[name]) for name, value in kept.items())


def test_batch_rows_are_independent(softmax_model):
    augmented = augment_model(onnx.load(softmax_model))
    x = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    seed = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    batch = run(augmented, {"image": x, SEED: seed})[grad_name("image")]
    for i in range(4):
        single = run(augmented, {"image": x[i:i + 1], SEED: seed[i:i + 1]})[grad_name("image")]
        assert np.allclose(batch[i:i + 1], single, atol=1e-6)


def test_zero_seed_row_explains_the_top1_class(softmax_model):
    augmented = augment_model(onnx.load(softmax_model))
    x = np.random.default_rng(3).standard_normal((3, 3, 16, 16)).astype(np.float32)
    seed = np.zeros((3, 5), np.float32)
    seed[1, 2] = 1.0  # row 1 asks for class 2; rows 0 and 2 for their top-1
    out = run(augmented, {"image": x, SEED: seed})
    top1 = out[SCORE].argmax(1)
    explicit = np.eye(5, dtype=np.float32)[[top1[0], 2, top1[2]]]
    reference = run(augmented, {"image": x, SEED: explicit})[grad_name("image")]
    assert np.allclose(out[grad_name("image")], reference, atol=1e-6)
    assert np.abs(reference).max() > 0


def test_score_override(softmax_model):
    augmented = augment_model(onnx.load(softmax_model), score="probs")
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    out = run(augmented, {"image": x, SEED: np.ones((1, 5), np.float32)})
    # d(sum of probabilities)/dx = 0
    assert np.abs(out[grad_name("image")]).max() < 1e-6
    with pytest.raises(BadOptionError):
        augment_model(onnx.load(softmax_model), score="no_such_tensor")


def test_unknown_layer_and_already_augmented(softmax_model):
    with pytest.raises(BadOptionError, match="not a float tensor"):
        augment_model(onnx.load(softmax_model), layers=["nope"])
    with pytest.raises(BadModelError, match="already augmented"):
        augment_model(augment_model(onnx.load(softmax_model)))


def test_augmented_file_shares_weights_and_input_is_untouched(tmp_path):
    net = zoo.build("resnet18")
    path = zoo.export(net, 64, tmp_path / "r18.onnx", dynamo=False)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "r18.grad.onnx"
    contract = augment(path, out, layers=["auto"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert out.stat().st_size <= 1.05 * path.stat().st_size
    model = onnx.load(out)
    assert any(p.key == CONTRACT_KEY for p in model.metadata_props)
    assert json.loads(next(p.value for p in model.metadata_props if p.key == CONTRACT_KEY))[
        "num_classes"] == contract.num_classes == 1000
    assert not list(tmp_path.glob(".*tmp*"))  # no temp files left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def _model_with(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _image(name="image", shape=(1, 3, 8, 8)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def test_unsupported_ops_are_all_named_at_once(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"]),
             helper.make_node("Atan", ["c"], ["a"]),
             helper.make_node("Softsign", ["a"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["p"]),
             helper.make_node("Flatten", ["p"], ["logits"])]
    model = _model_with(nodes, [_image()], [helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, [1, 4])], [w])
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedOpsError) as err:
        augment_model(model)
    assert "Atan" in str(err.value) and "Softsign" in str(err.value) and "Supported ops" in str(err.value)
    result = runner.invoke(app, ["augment", str(path), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 2
    assert "Atan" in result.output and "Softsign" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out.onnx").exists()
    shown = runner.invoke(app, ["inspect", str(path)])
    assert shown.exit_code == 0 and "Atan" in shown.output and "Softsign" in shown.output


def test_model_without_image_input(tmp_path):
    model = _model_with([helper.make_node("Relu", ["v"], ["y"])],
                        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 10])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    path = tmp_path / "vector.onnx"
    onnx.save(model, path)
    result = runner.invoke(app, ["augment", str(path)])
    assert result.exit_code == 2 and "no float image input" in result.output


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all", bytes(range(256)) * 10])
def test_corrupt_files(tmp_path, content):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    for command in (["augment", str(path), "-o", str(tmp_path / "o.onnx")], ["inspect", str(path)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2
    assert not (tmp_path / "o.onnx").exists()


def test_missing_file_and_folder(tmp_path):
    for target in (tmp_path / "missing.onnx", tmp_path):
        result = runner.invoke(app, ["inspect", str(target)])
        assert result.exit_code == 2 and "error" in result.output


def test_external_data_outside_the_model_folder_is_refused(tmp_path, softmax_model):
    model = onnx.load(softmax_model)
    onnx.save(model, tmp_path / "inner.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    escaped = onnx.load(tmp_path / "inner.onnx", load_external_data=False)
    for tensor in escaped.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    (tmp_path / "sub").mkdir()
    onnx.save(escaped, tmp_path / "sub" / "escaped.onnx")
    with pytest.raises(BadModelError, match="outside the model's folder"):
        describe(tmp_path / "sub" / "escaped.onnx")
    assert describe(tmp_path / "inner.onnx").num_classes == 5  # inside the folder is fine


def test_cli_inspect_and_augment(tmp_path, softmax_model):
    shown = runner.invoke(app, ["inspect", str(softmax_model)])
    assert shown.exit_code == 0
    assert "NCHW" in shown.output and "input of the final Softmax" in shown.output
    out = tmp_path / "net.grad.onnx"
    result = runner.invoke(app, ["augment", str(softmax_model), "-o", str(out), "--layer", "auto"])
    assert result.exit_code == 0, result.output
    assert out.exists() and "swag.seed" in result.output
    same = runner.invoke(app, ["augment", str(softmax_model), "-o", str(softmax_model)])
    assert same.exit_code == 2 and "output path is the input" in same.output
