"""Whole-network gradients of Keras applications: random weights, exported by tf2onnx and by Keras'
own ONNX exporter (tools/export_keras.py), channels-last inputs.

The augmented ONNX model's input gradient (in the input's own NHWC layout) and the gradients of
its intermediate layers (the last spatial map at each resolution, matched to Keras layer outputs
by value) must equal tf.GradientTape's on the same input: max|diff| / max|ref| <= 1e-4 in
float32. The input is kept away from ReLU kinks and max-pool ties (keras_zoo.stable_input).
"""

from __future__ import annotations

import numpy as np
import pytest

import keras_zoo as kz
from gradcheck import stage_layer_session
from swag_onnx.graph import SCORE, SEED, act_name, grad_name

TOLERANCE = 1e-4
CASES = [(name, exporter) for name in kz.NETWORKS for exporter in kz.EXPORTERS
         if (name, exporter) not in kz.NOT_EXPORTABLE]


@pytest.fixture(scope="module")
def networks():
    return {}


def _network(networks, name):
    """(model, its Reference), built once for both exporters."""
    if name not in networks:
        networks.clear()  # keep one network in memory at a time
        model = kz.build(name, kz.NETWORKS[name])
        networks[name] = model, kz.Reference(model)
    return networks[name]


def check_gradients(model, reference, path, size, input_scaling=(0.0, 1.0)) -> dict:
    """Augment the export at `path` with its stage layers and compare the score, the input
    gradient and every layer matched to a Keras layer output with `reference`; returns the
    relative errors by name (asserted below TOLERANCE)."""
    info, layers, session = stage_layer_session(path)
    assert info.layout == "NHWC" and info.unsupported == []
    assert info.score_source == "input of the final Softmax"

    seed = np.random.default_rng(1).standard_normal((1, info.num_classes)).astype(np.float32)
    x, ref, (matched, decisions) = kz.stable_input(reference, path, (1, size, size, 3), seed,
                                                   input_scaling)
    # every Relu/Clip/MaxPool of the export was checked against its TensorFlow twin
    assert matched == decisions, f"{decisions - matched} decision node(s) not matched"
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {info.image_input: x, SEED: seed})))

    errors = {"score": kz.relative_error(outputs[SCORE], ref["logits"]),
              "input": kz.relative_error(outputs[grad_name(info.image_input)],
                                         ref["input_grad"])}
    shapes = dict(info.layers)
    for layer in layers:
        layout = shapes[layer].layout
        reference_grad = kz.match_layer(kz.to_nhwc(outputs[act_name(layer)], layout),
                                        ref["layers"])
        if reference_grad is not None:
            errors[layer] = kz.relative_error(kz.to_nhwc(outputs[grad_name(layer)], layout),
                                              reference_grad)
    print(f"\n{model.name} {path.name} ({decisions} decision nodes): "
          + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert outputs[grad_name(info.image_input)].shape == x.shape  # the input's own layout
    assert len(errors) >= 3, f"no layer matched a Keras layer output: {layers}"
    assert max(errors.values()) < TOLERANCE, errors
    return errors


@pytest.mark.parametrize("name,exporter", CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_gradients_match_gradient_tape(name, exporter, tmp_path, networks):
    model, reference = _network(networks, name)
    size = kz.NETWORKS[name]
    path = kz.export(model, size, tmp_path / f"{exporter}.onnx", exporter)
    check_gradients(model, reference, path, size, kz.INPUT_SCALING.get(name, (0.0, 1.0)))


@pytest.mark.parametrize("exporter", kz.EXPORTERS)
def test_layers_model_gradients(exporter, tmp_path):
    """LayerNormalization, ELU, SELU, softplus, UpSampling2D, Maximum, clipped leaky ReLU."""
    model = kz.layers_model()
    path = kz.export(model, 16, tmp_path / f"{exporter}.onnx", exporter)
    check_gradients(model, kz.Reference(model), path, 16)


def test_keras_exporter_failure_is_reported(tmp_path, networks):
    """The one pair that does not export (NOT_EXPORTABLE) fails with one clear message."""
    (name, exporter), = kz.NOT_EXPORTABLE
    model, _ = _network(networks, name)
    with pytest.raises(kz.tool().ToolError, match="extra: .*normalization"):
        kz.export(model, kz.NETWORKS[name], tmp_path / "model.onnx", exporter)
