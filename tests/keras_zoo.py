"""Keras applications (random weights), their ONNX exports (tf2onnx and Keras' own exporter,
through tools/export_keras.py), and a tf.GradientTape oracle.

Arrays: images and Keras activations are channels-last (N, H, W, C); ONNX tensors are in their
own layout (tf2onnx turns most maps channels-first, (N, C, H, W)); `to_nhwc` converts.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

TOOL = Path(__file__).resolve().parents[1] / "tools" / "export_keras.py"

# Smallest input size each network accepts (keras.applications' own minimum): keeps CI fast.
NETWORKS = {"MobileNetV2": 32, "ResNet50": 32, "EfficientNetB0": 32, "DenseNet121": 32,
            "VGG16": 32, "InceptionV3": 75}
EXPORTERS = ("tf2onnx", "keras")
# Pairs that do not export, and why (the export tool reports it as one line, exit code 1).
NOT_EXPORTABLE = {
    # Keras' exporter (tf2onnx.convert.from_function on Keras' concrete function, Keras 3.15,
    # tf2onnx 1.17) turns the constant tensors that the Normalization layer captures (its mean
    # and variance, computed from its variables at build time) into required graph inputs
    # ('.../normalization_1/Sub/y:0', '.../Sqrt/x:0'): onnxruntime cannot run the model without
    # them. tf2onnx.convert.from_keras freezes them correctly.
    ("EfficientNetB0", "keras"):
        "Keras' exporter leaves the Normalization layer's mean and variance as graph inputs",
}
# (offset, scale) of the standard-normal test input: networks that take raw pixels and
# normalise them inside (EfficientNet: Rescaling(1/255) + Normalization) get pixel-like values.
INPUT_SCALING = {"EfficientNetB0": (127.5, 60.0)}
DECISION_OPS_TF = ("Relu", "Relu6", "MaxPool")
DECISION_OPS_ONNX = ("Relu", "Clip", "MaxPool")


@lru_cache(maxsize=1)
def tool():
    """tools/export_keras.py as a module (export_onnx, ToolError, ...)."""
    spec = importlib.util.spec_from_file_location("export_keras", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(name: str, size: int, seed: int = 0) -> keras.Model:
    """A keras.applications network with random (seeded) weights at input size `size`, its
    BatchNormalization statistics mildly perturbed (so that folding them into the convolutions
    is not the identity, while the network stays well conditioned in float32)."""
    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = tuple(layer.moving_mean.shape)
            layer.moving_mean.assign(rng.uniform(-0.05, 0.05, shape).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.9, 1.1, shape).astype(np.float32))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.9, 1.1, shape).astype(np.float32))
            if layer.beta is not None:
                layer.beta.assign(rng.uniform(-0.02, 0.02, shape).astype(np.float32))
    return model


def layers_model(seed: int = 0) -> keras.Model:
    """A small 16x16 classifier with the Keras layers whose tf2onnx ops go beyond the
    applications': LayerNormalization (Reciprocal), ELU, SELU, softplus, UpSampling2D (Tile),
    Maximum and a leaky ReLU clipped at 4 (Max, Min)."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same")(inputs)
    x = layers.LayerNormalization()(x)
    x = layers.Activation("elu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.UpSampling2D(2)(x)
    y = layers.Conv2D(8, 1, activation="selu")(x)
    x = layers.Maximum()([x, y])
    x = layers.Conv2D(8, 3, strides=2, activation="softplus")(x)
    x = layers.ReLU(max_value=4.0, negative_slope=0.1)(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(5, activation="softmax")(x))


def export(model: keras.Model, size: int, path: Path, exporter: str) -> Path:
    """Export with the tool's export_onnx (input 'image' [N, size, size, 3], dynamic batch)."""
    with tool().quiet_stderr():
        tool().export_onnx(model, path, (size, size, 3), exporter)
    return path


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def to_nhwc(value: np.ndarray, layout: str) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W, C) when layout is NCHW; NHWC is returned as it is."""
    return value.transpose(0, 2, 3, 1) if layout == "NCHW" else value


class Reference:
    """tf.GradientTape gradients of sum(logits * seed), where logits are the input of the final
    Dense layer's softmax, with respect to the image and to every rank-4 layer output, plus the
    inputs of every Relu/Relu6/MaxPool op: all from one run of one traced graph, so that the
    discrete decisions and the gradients come from the same float32 arithmetic."""

    def __init__(self, model: keras.Model):
        head = model.layers[-1]
        assert isinstance(head, keras.layers.Dense), "expected a Dense classifier head"
        self.layers = [layer for layer in model.layers[1:-1]
                       if len(getattr(layer.output, "shape", ())) == 4]
        features = keras.Model(model.inputs, [layer.output for layer in self.layers]
                               + [head.input])
        self.decision_types: list[str] = []

        @tf.function(reduce_retracing=True)
        def run(x, seed):
            with tf.GradientTape() as tape:
                tape.watch(x)
                *acts, penultimate = features(x, training=False)
                logits = tf.matmul(penultimate, head.kernel) + head.bias
                score = tf.reduce_sum(logits * seed)
            grads = tape.gradient(score, [x] + acts)
            graph = tf.compat.v1.get_default_graph()
            decisions = [op for op in graph.get_operations() if op.type in DECISION_OPS_TF]
            self.decision_types = [op.type for op in decisions]
            return logits, grads, acts, [op.inputs[0] for op in decisions]

        self._run = run

    def __call__(self, x: np.ndarray, seed: np.ndarray) -> dict:
        """{"logits" (N, K), "input_grad" (N, H, W, C), "layers": [(act, grad)] NHWC,
        "decisions": [(op type, input value)]}."""
        logits, grads, acts, decisions = self._run(tf.constant(x), tf.constant(seed))
        return {"logits": logits.numpy(), "input_grad": grads[0].numpy(),
                "layers": [(a.numpy(), g.numpy()) for a, g in zip(acts, grads[1:])],
                "decisions": list(zip(self.decision_types, [d.numpy() for d in decisions]))}


def match_layer(act_nhwc: np.ndarray, layers) -> np.ndarray | None:
    """The Keras gradient of the layer output closest in value to `act_nhwc` (within 1e-4)."""
    errors = [(relative_error(act_nhwc, a), i) for i, (a, _) in enumerate(layers)
              if a.shape == act_nhwc.shape]
    best = min(errors, default=(np.inf, None))
    return layers[best[1]][1] if best[0] < 1e-4 else None


# -------------------------------------------------------------------- kinks and max-pool ties

def _onnx_decision(node, constants: dict):
    """decide(values in the node's NCHW layout) -> the discrete choices the node makes: the side
    of each kink for Relu/Clip, the argmax of each window (first maximum) for MaxPool."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Relu":
        return lambda v: v > 0
    if node.op_type == "Clip":
        bounds = [float(constants[name]) for name in node.input[1:3] if name in constants]
        return lambda v: sum((v > b).astype(np.int8) for b in bounds)
    kernel = list(attrs["kernel_shape"].ints)
    strides = list(attrs["strides"].ints) if "strides" in attrs else [1, 1]
    pads = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
    auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
    return lambda v: window_argmax(v, kernel, strides, pads, auto_pad)


def window_argmax(x: np.ndarray, kernel, strides, pads, auto_pad: str = "NOTSET") -> np.ndarray:
    """Index of the (first) maximum inside each pooling window of x (N, C, H, W), padding with
    -inf: int (N, C, H_out, W_out) (floor mode)."""
    h, w = x.shape[2:]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((-(-d // s) - 1) * s + k - d, 0) for d, k, s in zip((h, w), kernel, strides)]
        low = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        pads = low + [t - lo for t, lo in zip(total, low)]
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])),
                    constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=(2, 3))
    windows = windows[:, :, ::strides[0], ::strides[1]]
    return windows.reshape(windows.shape[:4] + (-1,)).argmax(-1)


def onnx_decisions(model_path: Path):
    """A function x -> [(input value, decide)] over every Relu/Clip/MaxPool node of the ONNX
    model, values as onnxruntime computes them (the session is built once)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in DECISION_OPS_ONNX]
    if not nodes:
        return lambda x: []
    names = list(dict.fromkeys(n.input[0] for n in nodes))
    decide = [(n.input[0], _onnx_decision(n, constants)) for n in nodes]
    image = model.graph.input[0].name
    del model.graph.output[:]
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run(x: np.ndarray):
        values = dict(zip(names, session.run(None, {image: x})))
        return [(values[name], fn) for name, fn in decide]
    return run


def same_decisions(onnx_values, tf_values) -> tuple[bool, int]:
    """(True when onnxruntime and TensorFlow take the same decision at every kink and max-pool
    window, number of ONNX decision tensors matched to a TensorFlow one by value)."""
    matched = 0
    for value, decide in onnx_values:
        for _, reference in tf_values:
            candidates = [reference] + ([reference.transpose(0, 3, 1, 2)]
                                        if reference.ndim == 4 else [])
            ref = next((c for c in candidates if c.shape == value.shape
                        and relative_error(value, c) < 1e-3), None)
            if ref is not None:
                matched += 1
                if np.any(decide(value) != decide(ref)):
                    return False, matched
                break
    return True, matched


def stable_input(reference: Reference, model_path: Path, shape, seed: np.ndarray,
                 input_scaling=(0.0, 1.0), tries: int = 12):
    """An input away from the gradient's discontinuities (ReLU kinks, max-pool ties), where
    float32 rounding alone decides which way a gradient is routed: onnxruntime and TensorFlow
    must take the same decision at every kink and window. Inputs come from a fixed sequence.
    Returns (x, the reference's outputs on x, (ONNX decision nodes matched to a TensorFlow
    tensor, ONNX decision nodes))."""
    rng = np.random.default_rng(0)
    offset, scale = input_scaling
    decisions = onnx_decisions(model_path)
    for _ in range(tries):
        x = (offset + scale * rng.standard_normal(shape)).astype(np.float32)
        ref = reference(x, seed)
        values = decisions(x)
        same, matched = same_decisions(values, ref["decisions"])
        if same:
            return x, ref, (matched, len(values))
    raise AssertionError(f"no input away from ties and kinks in {tries} tries")
