"""Keras upsampling layers: Conv2DTranspose (ConvTranspose: strides, "same" and "valid" padding,
output_padding with "same") and Resizing (Resize: bilinear up and down, nearest), exported by tf2onnx and by
Keras' own exporter, against tf.GradientTape (input gradient and every matched layer:
max|diff| / max|ref| <= 1e-4, float32), as in tests/test_keras_networks.py.

Bicubic Resizing is left out here: tf2onnx writes it as Resize(cubic, a=-0.5, exclude_outside=1),
which differs from TensorFlow's own bicubic kernel by ~1e-3 in the forward pass (12x8 -> 18x10),
so no gradient of the ONNX model can match GradientTape to 1e-4. The cubic rule is checked
against onnxruntime's Resize in tests/test_transformer_rules.py."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

import keras_zoo as kz
from test_keras_networks import check_gradients

SIZE = 16


def upsampling_model(seed: int = 0):
    """A 16x16 classifier: strided Conv2D down to 8x8, Conv2DTranspose back up ("same" and
    "valid"; tf2onnx writes output_padding as negative pads, which onnxruntime's shape inference
    rejects once the model carries value_info, so it is left out), Resizing up and down
    (bilinear, nearest). Smooth activations: no kinks, so every input is decision-stable."""
    kz.keras.utils.set_random_seed(seed)
    layers = kz.keras.layers
    inputs = kz.keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="tanh")(inputs)  # 8x8
    x = layers.Conv2DTranspose(6, 3, strides=2, padding="same", activation="elu")(x)  # 16x16
    x = layers.Conv2DTranspose(5, (3, 2), strides=(2, 1), padding="valid",
                               activation="tanh")(x)  # 33x17
    x = layers.Conv2D(5, 2, activation="tanh")(x)  # 32x16
    # scales exact in float32: onnxruntime's load-time shape inference floors 10 * 1.3f to 12
    # where its kernel makes 13, and a backward graph with static shapes would then not load
    x = layers.Resizing(24, 32, interpolation="bilinear")(x)
    x = layers.Resizing(12, 8, interpolation="nearest")(x)
    x = layers.Resizing(18, 10, interpolation="bilinear")(x)
    x = layers.Conv2D(4, 3, activation="softplus")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return kz.keras.Model(inputs, layers.Dense(5, activation="softmax")(x))


@pytest.mark.slow
@pytest.mark.parametrize("exporter", kz.EXPORTERS)
def test_upsampling_layers_match_gradient_tape(exporter, tmp_path):
    model = upsampling_model()
    path = kz.export(model, SIZE, tmp_path / f"{exporter}.onnx", exporter)
    ops = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert ops["ConvTranspose"] == 2 and ops["Resize"] == 3, ops
    errors = check_gradients(model, kz.Reference(model), path, SIZE)
    assert len(errors) >= 4  # score, input and at least two upsampled maps


def output_padding_model(seed: int = 0):
    """A 12x12 classifier whose Conv2DTranspose layers use output_padding with "same" padding
    (tf2onnx: asymmetric non-negative pads, e.g. [0, 0, 1, 1]), odd and even kernels, unequal
    strides, then Resizing by inexact ratios (bilinear and nearest)."""
    kz.keras.utils.set_random_seed(seed)
    layers = kz.keras.layers
    inputs = kz.keras.Input((12, 12, 3))
    x = layers.Conv2D(6, 3, strides=2, padding="same", activation="tanh")(inputs)  # 6x6
    x = layers.Conv2DTranspose(5, 3, strides=2, padding="same", output_padding=0,
                               activation="elu")(x)  # 12x12
    x = layers.Conv2DTranspose(4, 3, strides=2, padding="same", output_padding=1,
                               activation="tanh")(x)  # 24x24
    x = layers.Conv2DTranspose(4, (4, 3), strides=(3, 2), padding="same", output_padding=(2, 1),
                               activation="tanh")(x)  # 72x48
    x = layers.Conv2D(4, 3, strides=2, activation="tanh")(x)  # 32x21
    # inexact scales (23 / 32, 30 / 21, 11 / 23, 13 / 30); 10 / 23 would be refused: 23 times
    # 0.4347826f is 10 in onnxruntime's float32 and 9 in ONNX shape inference's double
    x = layers.Resizing(23, 30, interpolation="bilinear")(x)
    x = layers.Resizing(11, 13, interpolation="nearest")(x)
    x = layers.Conv2D(4, 3, activation="softplus")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return kz.keras.Model(inputs, layers.Dense(5, activation="softmax")(x))


@pytest.mark.slow
@pytest.mark.parametrize("exporter", kz.EXPORTERS)
def test_output_padding_and_inexact_resizing_match_gradient_tape(exporter, tmp_path):
    model = output_padding_model()
    path = kz.export(model, 12, tmp_path / f"{exporter}.onnx", exporter)
    pads = [list(a.ints) for node in onnx.load(str(path)).graph.node
            if node.op_type == "ConvTranspose" for a in node.attribute if a.name == "pads"]
    assert len(pads) == 3 and any(p[:2] != p[2:] for p in pads), pads  # asymmetric: adjusted
    errors = check_gradients(model, kz.Reference(model), path, 12)
    assert len(errors) >= 4


@pytest.mark.slow
def test_conv_transpose_valid_output_padding_is_refused_in_one_line(tmp_path):
    """With "valid" padding tf2onnx spells output_padding as negative pads, which ONNX forbids
    and onnxruntime refuses to load: every command says so in one line (exit 2), before any
    augmentation."""
    from PIL import Image
    from typer.testing import CliRunner

    from swag_onnx.cli import app

    kz.keras.utils.set_random_seed(0)
    layers = kz.keras.layers
    inputs = kz.keras.Input((8, 8, 3))
    x = layers.Conv2DTranspose(4, (3, 4), strides=(2, 3), padding="valid",
                               output_padding=(1, 2))(inputs)
    model = kz.keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(x)))
    path = kz.export(model, 8, tmp_path / "m.onnx", "tf2onnx")
    pads = [list(a.ints) for node in onnx.load(str(path)).graph.node
            if node.op_type == "ConvTranspose" for a in node.attribute if a.name == "pads"]
    assert min(pads[0]) < 0, pads
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    result = CliRunner().invoke(app, ["explain", "--model", str(path), "--input-size", "8",
                                      "--offset", "0", "--divisor", "1", "--method", "gradient",
                                      "--out", str(tmp_path / "out"), str(tmp_path / "x.png")])
    assert result.exit_code == 2, result.output
    assert "pads must not contain negative values" in result.output
    assert len(result.output.strip().splitlines()) == 1
