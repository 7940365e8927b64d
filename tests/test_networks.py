"""Whole-network gradients: every supported architecture, both PyTorch exporters, random weights.

The augmented ONNX model's input gradient and the gradients of its intermediate layers (the last
spatial map at each resolution, matched to torch module outputs by value) must equal
torch.autograd's on the same input: max|diff| / max|ref| <= 1e-4 in float32. The input is kept
away from max-pool ties and ReLU kinks (zoo.stable_input): there the gradient is discontinuous
and float32 rounding alone decides which side two implementations land on.
"""

from __future__ import annotations

import numpy as np
import pytest

import zoo
from gradcheck import stage_layer_session
from swag_onnx.graph import SCORE, SEED, act_name, grad_name

TOLERANCE = 1e-4
CASES = [(name, dynamo) for name in zoo.NETWORKS for dynamo in (False, True)]


@pytest.fixture(scope="module")
def networks():
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("name,dynamo", CASES, ids=[f"{n}-{'dynamo' if d else 'legacy'}"
                                                    for n, d in CASES])
def test_gradients_match_torch_autograd(name, dynamo, tmp_path, networks):
    if name not in networks:
        networks.clear()  # keep one network in memory at a time
        networks[name] = zoo.build(name)
    net = networks[name]
    size = zoo.INPUT_SIZE.get(name, zoo.DEFAULT_SIZE)
    path = zoo.export(net, size, tmp_path / "model.onnx", dynamo)
    info, layers, session = stage_layer_session(path)
    assert info.unsupported == []

    seed = np.random.default_rng(1).standard_normal((1, info.num_classes)).astype(np.float32)
    x = zoo.stable_input(net, path, (1, 3, size, size))
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {info.image_input: x, SEED: seed})))
    logits, input_grad, captured = zoo.autograd_reference(net, x, seed)

    assert zoo.relative_error(outputs[SCORE], logits) < TOLERANCE
    assert zoo.relative_error(outputs[grad_name(info.image_input)], input_grad) < TOLERANCE
    checked = 0
    for layer in layers:
        reference = zoo.match_layer(outputs[act_name(layer)], captured)
        if reference is not None:
            assert zoo.relative_error(outputs[grad_name(layer)], reference) < TOLERANCE, layer
            checked += 1
    assert checked >= 2, f"only {checked} layer(s) matched a torch module output"
