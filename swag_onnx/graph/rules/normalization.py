"""Gradient rules of normalisations: BatchNormalization (inference), LayerNormalization,
Softmax and LogSoftmax (opset >= 13 semantics: one axis)."""

from __future__ import annotations

import numpy as np

from swag_onnx.graph.rules import rule
from swag_onnx.graph.rules.activations import affine


def _bn_check(g, n):
    if n.attrs.get("training_mode", 0):
        return "BatchNormalization in training mode"
    if g.shape(n.inputs[0]) is None:
        return "BatchNormalization whose input rank is unknown"
    return None


@rule("BatchNormalization", check=_bn_check)
def batch_norm(g, n, dys, needs):
    # y = (x - mean) * scale / sqrt(var + eps) + bias, per channel (axis 1)
    # (statistics are constants: frozen, as in eval mode; scale and bias get gradients for
    # meta-saliency)
    x, scale, _, mean, var = n.inputs[:5]
    per_channel = g.ints([-1] + [1] * (g.rank(x) - 2))
    grads = [None] * len(n.inputs)
    factor = _static_factor(g, n)
    if needs[0] and factor is not None and g.blocked(x):
        # dY * scale / std as a blocked per-channel affine map (a Mul by a [C, 1, 1] constant
        # runs unblocked: DenseNet's 58 pre-activation norms, two layout conversions each)
        grads[0] = affine(g, dys[0], len(factor), factor, 0.0)
        needs = [False] + list(needs[1:])
    if not any(needs):
        return grads
    std = g.op("Sqrt", g.op("Add", var, g.scalar_like(n.attrs["epsilon"], x)))
    if needs[0]:
        grads[0] = g.op("Mul", dys[0], g.op("Reshape", g.op("Div", scale, std), per_channel))
    reduce_axes = [0] + list(range(2, g.rank(x)))
    if needs[1]:
        normalized = g.op("Div", g.op("Sub", x, g.op("Reshape", mean, per_channel)),
                          g.op("Reshape", std, per_channel))
        grads[1] = g.reduce_sum(g.op("Mul", dys[0], normalized), reduce_axes, keepdims=False)
    if needs[2]:
        grads[2] = g.reduce_sum(dys[0], reduce_axes, keepdims=False)
    return grads


def _static_factor(g, n):
    """scale / sqrt(var + epsilon) [C] of a BatchNormalization whose scale and variance are
    constants (computed in float32, as onnxruntime folds the same ops), else None."""
    scale, var = g.value(n.inputs[1]), g.value(n.inputs[4])
    if scale is None or var is None or scale.dtype != np.float32 or var.dtype != np.float32:
        return None
    return scale / np.sqrt(var + np.float32(n.attrs["epsilon"]))


def _layer_norm_check(g, n):
    shape = g.shape(n.inputs[0])
    if shape is None:
        return "LayerNormalization whose input rank is unknown"
    if any(d is None for d in shape[n.attrs["axis"] % len(shape):]):
        return "LayerNormalization whose normalised dimensions are not static"
    return None


@rule("LayerNormalization", check=_layer_norm_check)
def layer_norm(g, n, dys, needs):
    # xhat = (x - mu) * inv, y = xhat * scale + bias (over axes axis..rank-1)
    # dx = inv * (gh - mean(gh) - xhat * mean(gh * xhat)), gh = dy * scale
    x, scale = n.inputs[:2]
    shape = g.shape(x)
    axes = list(range(n.attrs["axis"] % len(shape), len(shape)))
    inv_count = g.scalar_like(1.0 / float(np.prod([shape[a] for a in axes])), x)

    def mean(t):
        return g.op("Mul", g.reduce_sum(t, axes, keepdims=True), inv_count)

    centred = g.op("Sub", x, mean(x))
    var = mean(g.op("Mul", centred, centred))
    inv = g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, g.scalar_like(n.attrs["epsilon"], x))))
    xhat = g.op("Mul", centred, inv)
    gh = g.op("Mul", dys[0], scale)
    inner = g.op("Sub", g.op("Sub", gh, mean(gh)), g.op("Mul", xhat, mean(g.op("Mul", gh, xhat))))
    return [g.op("Mul", inv, inner)] + [None] * (len(n.inputs) - 1)


def _softmax_axis(g, n):
    return n.attrs.get("axis", -1) % g.rank(n.inputs[0])


@rule("Softmax")
def softmax(g, n, dys, needs):
    y, dy = n.outputs[0], dys[0]
    dot = g.reduce_sum(g.op("Mul", dy, y), [_softmax_axis(g, n)], keepdims=True)
    return [g.op("Mul", y, g.op("Sub", dy, dot))]


@rule("LogSoftmax")
def log_softmax(g, n, dys, needs):
    y, dy = n.outputs[0], dys[0]
    total = g.reduce_sum(dy, [_softmax_axis(g, n)], keepdims=True)
    return [g.op("Sub", dy, g.op("Mul", g.op("Exp", y), total))]
