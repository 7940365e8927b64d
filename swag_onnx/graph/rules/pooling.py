"""Gradient rules of pooling and reductions: MaxPool, AveragePool, Global*Pool, ReduceMean/Sum.

MaxPool: a copy of the pool returns each window's argmax (first maximum on ties, as torch); from
opset 16 dY is scatter-added there (ScatterElements, reduction "add": overlapping windows add
up); below opset 16, the argmax offset inside its window picks one of K kernel taps and a
ConvTranspose with one-hot kernels [K, 1, k...] adds every window's gradient back at its input
position. AveragePool divides
dY by each window's element count and spreads it with an all-ones ConvTranspose.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper

from swag_onnx.graph import shapes
from swag_onnx.graph.rules import rule


def _pool_geometry(g, n):
    x_sizes = list(g.shape(n.inputs[0])[2:])
    kernel = list(n.attrs["kernel_shape"])
    rank = len(kernel)
    strides = list(n.attrs.get("strides") or [1] * rank)
    dilations = list(n.attrs.get("dilations") or [1] * rank)
    pads = shapes.explicit_pads(x_sizes, kernel, strides, dilations, n.attrs.get("pads"),
                                n.attrs.get("auto_pad", "NOTSET"))
    ceil = bool(n.attrs.get("ceil_mode", 0))
    y_sizes = [shapes.output_size(*a, ceil) for a in zip(x_sizes, kernel, strides, dilations,
                                                           pads[:rank], pads[rank:])]
    inferred = g.shape(n.outputs[0])
    if inferred is not None and None not in inferred[2:]:
        y_sizes = list(inferred[2:])  # ONNX and torch differ on ceil-mode edge windows
    tails = [shapes.transposed_tail(*a) for a in zip(x_sizes, y_sizes, kernel, strides,
                                                      dilations, pads[:rank])]
    return x_sizes, kernel, strides, dilations, pads, y_sizes, tails


def _pool_check(g, n):
    shape = g.shape(n.inputs[0])
    if shape is None or any(d is None for d in shape[1:]):
        return f"{n.op} whose input shape (channels, spatial) is not static"
    if n.op == "MaxPool" and n.attrs.get("storage_order", 0):
        return "MaxPool with storage_order=1"
    return None


def _spread_windows(g, n, per_offset, kernel_weights, geometry):
    """ConvTranspose [N*C, K, y...] -> [N, C, x...]: add each window's values back in place.
    onnxruntime has no float64 ConvTranspose, so double models spread in float32."""
    x_sizes, kernel, strides, dilations, pads, y_sizes, tails = geometry
    rank = len(kernel)
    flat = g.op("Reshape", per_offset, g.ints([-1, kernel_weights.shape[0]] + y_sizes))
    double = g.dtype(n.inputs[0]) == onnx.TensorProto.DOUBLE
    if double:
        flat = g.op("Cast", flat, to=onnx.TensorProto.FLOAT)
    dtype = np.float32 if double else helper.tensor_dtype_to_np_dtype(g.dtype(n.inputs[0]) or 1)
    spread = g.op("ConvTranspose", flat, g.const(kernel_weights, dtype), strides=strides,
                  dilations=dilations, pads=pads[:rank] + [max(t, 0) for t in tails],
                  output_padding=[max(-t, 0) for t in tails])
    if double:
        spread = g.op("Cast", spread, to=onnx.TensorProto.DOUBLE)
    return g.reshape_like(spread, n.inputs[0])


SCATTER_MIN_OPSET = 16  # ScatterElements(reduction="add") exists from opset 16


@rule("MaxPool", check=_pool_check)
def max_pool(g, n, dys, needs):
    # A copy of the pool returns the argmax of each window (flat index, first maximum on ties as
    # in torch). From opset 16 dY is scatter-added there (overlapping windows add up); below,
    # the argmax offset inside each window selects one of K one-hot ConvTranspose kernels.
    _, indices = g.op("MaxPool", n.inputs[0], n_out=2, **_pool_attrs(n))
    # onnxruntime's CPU ScatterElements cannot add float16
    if g.opset >= SCATTER_MIN_OPSET and g.dtype(n.inputs[0]) != onnx.TensorProto.FLOAT16:
        flat = g.ints([-1])
        zeros = g.op("Reshape", g.zeros_like(n.inputs[0]), flat)
        spread = g.op("ScatterElements", zeros, g.op("Reshape", indices, flat),
                      g.op("Reshape", dys[0], flat), axis=0, reduction="add")
        return [g.reshape_like(spread, n.inputs[0])]
    return [_max_pool_taps(g, n, dys[0], indices)]


def _max_pool_taps(g, n, dy, indices):
    """dX from the argmax indices by one-hot taps and one ConvTranspose (no scatter-add)."""
    geometry = _pool_geometry(g, n)
    x_sizes, kernel, strides, dilations, pads, y_sizes, tails = geometry
    position = g.op("Mod", indices, g.ints([int(np.prod(x_sizes))]))  # within one (n, c) map
    offset = g.op("Sub", position, g.const(_window_starts(x_sizes, strides, pads, y_sizes), np.int64))
    taps = [sum(o * d * stride for o, d, stride in zip(tap, dilations, _row_strides(x_sizes)))
            for tap in itertools.product(*(range(k) for k in kernel))]
    tap_shape = [1, 1, len(taps)] + [1] * len(kernel)
    hits = g.op("Equal", g.op("Unsqueeze", offset, g.ints([2])), g.const(np.reshape(taps, tap_shape),
                                                                         np.int64))
    routed = g.op("Mul", g.mask(hits, n.outputs[0]), g.op("Unsqueeze", dy, g.ints([2])))
    one_hot = np.eye(len(taps), dtype=np.float32).reshape([len(taps), 1] + kernel)
    return _spread_windows(g, n, routed, one_hot, geometry)


def _pool_attrs(n):
    keys = ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad")
    return {k: n.attrs[k] for k in keys if k in n.attrs}


def _row_strides(sizes):
    """Flat-index step of each spatial axis in a row-major map of `sizes`."""
    return [int(np.prod(sizes[i + 1:])) for i in range(len(sizes))]


def _window_starts(x_sizes, strides, pads, y_sizes):
    """Flat index (may be negative: padding) of each window's first element, shape y_sizes."""
    rank = len(x_sizes)
    starts = np.zeros(y_sizes, dtype=np.int64)
    for axis, row in enumerate(_row_strides(x_sizes)):
        first = (np.arange(y_sizes[axis]) * strides[axis] - pads[axis]) * row
        starts = starts + first.reshape([-1 if a == axis else 1 for a in range(rank)])
    return starts


def _window_counts(x_sizes, kernel, strides, pads, y_sizes, include_pad):
    """Number of elements each AveragePool window divides by, shape y_sizes."""
    rank = len(kernel)
    per_axis = []
    for i in range(rank):
        lo, hi = (-pads[i], x_sizes[i] + pads[rank + i]) if include_pad else (0, x_sizes[i])
        start = np.arange(y_sizes[i]) * strides[i] - pads[i]
        per_axis.append(np.clip(start + kernel[i], lo, hi) - np.clip(start, lo, hi))
    counts = per_axis[0]
    for axis_counts in per_axis[1:]:
        counts = np.multiply.outer(counts, axis_counts)
    return np.maximum(counts, 1)  # a window wholly outside the input (ceil mode) divides by 1


def _avg_check(g, n):
    if any(d != 1 for d in n.attrs.get("dilations") or []):
        return "AveragePool with dilations"
    return _pool_check(g, n)


@rule("AveragePool", check=_avg_check)
def average_pool(g, n, dys, needs):
    geometry = _pool_geometry(g, n)
    x_sizes, kernel, strides, dilations, pads, y_sizes, tails = geometry
    counts = _window_counts(x_sizes, kernel, strides, pads, y_sizes,
                            bool(n.attrs.get("count_include_pad", 0)))
    dtype = helper.tensor_dtype_to_np_dtype(g.dtype(n.inputs[0]) or 1)
    scaled = g.op("Div", dys[0], g.const(counts, dtype))
    ones = np.ones([1, 1] + kernel, dtype=np.float32)
    return [_spread_windows(g, n, scaled, ones, geometry)]


def _size_ratio(g, small, big):
    """Size(small) / Size(big) as a float scalar: a constant when both share the batch dim."""
    if g.batch_only(small) and g.batch_only(big) and g.shape(small)[0] == g.shape(big)[0]:
        ratio = np.prod(g.shape(small)[1:]) / np.prod(g.shape(big)[1:])
        return g.scalar_like(float(ratio), big)
    to = g.dtype(big) or 1
    return g.op("Div", g.op("Cast", g.op("Size", small), to=to),
                g.op("Cast", g.op("Size", big), to=to))


@rule("GlobalAveragePool")
def global_average_pool(g, n, dys, needs):
    x, y = n.inputs[0], n.outputs[0]
    spread = g.expand_like(dys[0], x)
    return [g.op("Mul", spread, _size_ratio(g, y, x))]


@rule("GlobalMaxPool")
def global_max_pool(g, n, dys, needs):
    x, y = n.inputs[0], n.outputs[0]
    flat = g.op("Reshape", x, g.ints([0, 0, -1]))
    hits = g.mask(g.op("Equal", flat, g.op("Reshape", y, g.ints([0, 0, 1]))), y)
    first = g.mask(g.op("Equal", g.op("CumSum", hits, g.ints([2])), g.scalar_like(1.0, y)), y)
    routed = g.op("Mul", g.op("Mul", hits, first), g.op("Reshape", dys[0], g.ints([0, 0, 1])))
    return [g.reshape_like(routed, x)]


def _reduce_axes(g, n):
    """Normalised axes of a ReduceMean/ReduceSum (attribute or constant input); [] = all."""
    axes = n.attrs.get("axes")
    if axes is None and n.input(1):
        axes = g.value(n.input(1))
    rank = g.rank(n.inputs[0])
    if axes is None or len(axes) == 0:
        return list(range(rank))
    return sorted(int(a) % rank for a in np.asarray(axes).reshape(-1))


def _reduce_check(g, n):
    if n.input(1) and g.value(n.input(1)) is None:
        return f"{n.op} with computed (non-constant) axes"
    if g.shape(n.inputs[0]) is None:
        return f"{n.op} whose input rank is unknown"
    return None


def _is_noop(n) -> bool:
    """A reduction with no axes and noop_with_empty_axes=1 is the identity."""
    no_axes = not n.attrs.get("axes") and not n.input(1)
    return bool(no_axes and n.attrs.get("noop_with_empty_axes", 0))


def _keep_dims(g, n, *tensors):
    """The tensors (shaped like the reduction's output) with the reduced axes kept as 1."""
    if n.attrs.get("keepdims", 1):
        return tensors
    axes = g.ints(_reduce_axes(g, n))
    return tuple(g.op("Unsqueeze", t, axes) for t in tensors)


@rule("ReduceMean", "ReduceSum", check=_reduce_check)
def reduce_mean_sum(g, n, dys, needs):
    x, y = n.inputs[0], n.outputs[0]
    if _is_noop(n):
        return [dys[0]] + [None] * (len(n.inputs) - 1)
    dy, = _keep_dims(g, n, dys[0])
    dx = g.expand_like(dy, x) if 0 not in _reduce_axes(g, n) else g.op("Expand", dy, g.op("Shape", x))
    if n.op == "ReduceMean":
        dx = g.op("Mul", dx, _size_ratio(g, y, x))
    return [dx] + [None] * (len(n.inputs) - 1)


@rule("ReduceMax", "ReduceMin", check=_reduce_check)
def reduce_max_min(g, n, dys, needs):
    # The gradient is shared evenly by the elements that hit the extremum (torch.amax/amin).
    x = n.inputs[0]
    if _is_noop(n):
        return [dys[0]] + [None] * (len(n.inputs) - 1)
    dy, y = _keep_dims(g, n, dys[0], n.outputs[0])
    hits = g.mask(g.op("Equal", x, y), x)
    share = g.op("Div", hits, g.reduce_sum(hits, _reduce_axes(g, n), keepdims=True))
    return [g.op("Mul", share, dy)] + [None] * (len(n.inputs) - 1)
