"""Gradient rules of pooling and reductions: MaxPool, AveragePool, Global*Pool, ReduceMean/Sum.

MaxPool (float32, float64): the pool is taken apart into one-axis pools, last spatial axis
first, and dY is routed back through them, each window's share to its first maximum (torch's
rule, ties included) by element-wise masks, shifts and one interleave per strided axis; no
argmax. Float16 (and FORMULATION = "argmax") takes each window's argmax from a copy of the pool
with its Indices output (a slow onnxruntime kernel): from opset 16 dY is scatter-added there
(ScatterElements, reduction "add"); below, the argmax offset inside its window picks one of K
kernel taps and a ConvTranspose with one-hot kernels [K, 1, k...] adds every window's gradient
back at its input position. AveragePool divides
dY by each window's element count and spreads it with an all-ones ConvTranspose.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper

from swag_onnx.graph import shapes
from swag_onnx.graph.rules import rule
from swag_onnx.graph.rules.activations import relu_grad


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
    """[N, C, K, y...] (or [N, C, y...] for K = 1) -> [N, C, x...]: add each window's values
    back in place, by one ConvTranspose with a group per channel (kernel_weights [K, 1, k...]
    repeated C times), which keeps the batch dimension as it is: onnxruntime then still proves
    the gradient's shape equal to the forward maps', so the backward Muls stay blocked (the
    former [N*C, K, y...] reshape lost it: every DenseNet mask after its first transition ran
    unblocked). onnxruntime has no float64 ConvTranspose, so double models spread in float32."""
    x_sizes, kernel, strides, dilations, pads, y_sizes, tails = geometry
    rank = len(kernel)
    channels, taps = g.shape(n.inputs[0])[1], kernel_weights.shape[0]
    grouped = per_offset
    if taps > 1:
        grouped = g.op("Reshape", per_offset, g.ints([0, channels * taps] + y_sizes))
    double = g.dtype(n.inputs[0]) == onnx.TensorProto.DOUBLE
    if double:
        grouped = g.op("Cast", grouped, to=onnx.TensorProto.FLOAT)
    dtype = np.float32 if double else helper.tensor_dtype_to_np_dtype(g.dtype(n.inputs[0]) or 1)
    weights = np.tile(kernel_weights, [channels] + [1] * (rank + 1))
    spread = g.op("ConvTranspose", grouped, g.const(weights, dtype), strides=strides,
                  dilations=dilations, pads=pads[:rank] + [max(t, 0) for t in tails],
                  output_padding=[max(-t, 0) for t in tails], group=channels)
    if double:
        spread = g.op("Cast", spread, to=onnx.TensorProto.DOUBLE)
    return spread


SCATTER_MIN_OPSET = 16  # ScatterElements(reduction="add") exists from opset 16
FORMULATION = "separable"  # "argmax": the Indices route for every dtype (tools/bench_rules.py)


@rule("MaxPool", check=_pool_check)
def max_pool(g, n, dys, needs):
    dy = dys[0]
    if n.outputs[0] in g.relu_mask_carriers:
        dy = relu_grad(g, dy, n.outputs[0])
    # Float16 keeps the argmax route it had: the one-axis route was timed in float32 only
    # (onnxruntime's CPU runs several of its float16 ops through inserted Casts).
    if (FORMULATION == "separable" and g.dtype(n.inputs[0]) != onnx.TensorProto.FLOAT16
            and not _ceil_window_outside(g, n)):
        return [_max_pool_separable(g, n, dy)]
    # A copy of the pool returns the argmax of each window (flat index, first maximum on ties as
    # in torch). From opset 16 dY is scatter-added there (overlapping windows add up); below,
    # the argmax offset inside each window selects one of K one-hot ConvTranspose kernels.
    _, indices = g.op("MaxPool", n.inputs[0], n_out=2, **_pool_attrs(n))
    # onnxruntime's CPU ScatterElements cannot add float16
    if g.opset >= SCATTER_MIN_OPSET and g.dtype(n.inputs[0]) != onnx.TensorProto.FLOAT16:
        flat = g.ints([-1])
        zeros = g.op("Reshape", g.zeros_like(n.inputs[0]), flat)
        spread = g.op("ScatterElements", zeros, g.op("Reshape", indices, flat),
                      g.op("Reshape", dy, flat), axis=0, reduction="add")
        return [g.reshape_like(spread, n.inputs[0])]
    return [_max_pool_taps(g, n, dy, indices)]


def _ceil_window_outside(g, n):
    """True when ceil mode adds a window starting past the input end: onnxruntime drops it at
    run time (as torch) but its load-time shape inference keeps it, so the separable route's
    shapes would not agree; the argmax route never reads the pooled shape."""
    if not n.attrs.get("ceil_mode", 0):
        return False
    x_sizes, kernel, strides, dilations, pads, _, _ = _pool_geometry(g, n)
    rank = len(kernel)
    for size, k, s, d, p0, p1 in zip(x_sizes, kernel, strides, dilations, pads[:rank], pads[rank:]):
        ceil_windows = -(-(size + p0 + p1 - shapes.effective_kernel(k, d)) // s) + 1
        if shapes.output_size(size, k, s, d, p0, p1, True) != ceil_windows:
            return True
    return False


def _max_pool_separable(g, n, dy):
    """dX [N, C, x...] of a MaxPool as a chain of one-axis pools, last spatial axis first.

    The first maximum of a window in row-major order lies in the window's first row (hyper-
    plane) that holds the maximum, at that row's first maximum: so routing dY back through
    the one-axis pools Z_a = MaxPool_a(Z_{a+1}) (Z_rank = X, Z_0 = Y), each to its own first
    maximum, is exactly torch's rule, ties included. The intermediate pools run forward here;
    each axis costs O(k) element-wise ops (`_route_axis`) instead of an argmax pool."""
    x_sizes, kernel, strides, dilations, pads, y_sizes, _ = _pool_geometry(g, n)
    rank = len(kernel)
    active = [a for a in range(rank) if (kernel[a], strides[a], pads[a], pads[rank + a],
                                         y_sizes[a]) != (1, 1, 0, 0, x_sizes[a])]
    zs = [n.inputs[0]]
    for a in reversed(active[1:]):  # forward: pool the inner axes one at a time
        zs.append(g.op("MaxPool", zs[-1], kernel_shape=_on_axis(kernel[a], a, rank),
                       strides=_on_axis(strides[a], a, rank),
                       dilations=_on_axis(dilations[a], a, rank),
                       pads=_on_axis(pads[a], a, rank, 0) + _on_axis(pads[rank + a], a, rank, 0),
                       ceil_mode=n.attrs.get("ceil_mode", 0)))
    ins = zs[::-1]
    for a, z, y in zip(active, ins, [n.outputs[0]] + ins[:-1]):
        where = (2 + a, rank + 2, y_sizes[a + 1:])  # the axes after a are pooled already
        window = (kernel[a], strides[a], dilations[a], pads[a])
        rows = None
        if a == rank - 1 and _rows_shift_exactly(window, (x_sizes[a], y_sizes[a])):
            rows = [0] + list(g.shape(n.inputs[0])[1:])  # z is the pool's input here
        dy = _route_axis(g, (z, y, dy), where, window, (x_sizes[a], y_sizes[a]),
                         g.np_dtype(n.inputs[0]), rows)
    return dy


def _rows_shift_exactly(window, sizes) -> bool:
    """Whether the shares of the innermost axis may be placed by shifting each map flattened
    (rows joined): a stride-1 pool keeping the axis's size, padded by at most 1 before, whose
    second running maximum is a pool. One Pad then copies whole maps, not rows of a few
    elements (GoogLeNet's 3x3/1 pools: 14-element rows, where a Pad is 4x slower per element
    and slower still on two threads). Exact: what crosses a row's end is the share of a tap in
    the padding, which is 0 (tap 0 before the row: padded with NaN, which matches no maximum;
    taps after the row: dY - dY, for finite dY)."""
    (k, stride, dilation, begin), (n_in, n_out) = window, sizes
    return (stride == 1 and n_in == n_out and begin <= 1
            and (k <= 2 or _prefix_end((1, stride, dilation, begin), sizes) is not None))


def _route_axis(g, tensors, where, window, sizes, dtype, rows=None):
    """dZ of Y = MaxPool(Z) pooled along one axis only, each window's dY to its first maximum.

    tensors: Z [..., n_in, ...], Y and dY [..., n_out, ...]; where: (axis, rank, sizes of the
    later axes); window: (k, stride, dilation, begin pad); sizes: (n_in, n_out); rows: the
    static shape of Z (batch 0) when its shifts run on flattened maps (_rows_shift_exactly).
    With M_t the maximum of the window's taps 0..t (padding: -inf), h_t = dY where M_t == Y
    else 0 rises once from 0 to dY: tap t takes h_t - h_{t-1} (h_{k-1} = dY, as M_{k-1} = Y)."""
    (z, y, dy), (k, stride, dilation, begin) = tensors, window
    firsts = [dilation * t - begin for t in range(k)]  # input position of tap t in window 0
    zero = g.const(0.0, dtype)
    shares, running, below = [], None, zero
    for t in range(k - 1):
        pooled = _prefix_pool(g, z, where, (t, stride, dilation, begin), sizes)
        if pooled is not None:
            running = pooled
        else:
            fill = np.nan if rows is not None and t == 0 else -np.inf
            tap = _tap(g, z, where, (firsts[t], stride), sizes, g.const(fill, dtype))
            running = tap if running is None else g.op("Max", running, tap)
        # a Mul by the cast mask, not Where(.., dY, 0): onnxruntime's Where is 1.2-1.5x slower
        hit = g.op("Cast", g.op("Equal", running, y), to=helper.np_dtype_to_tensor_dtype(dtype))
        reached = g.op("Mul", dy, hit)
        shares.append(reached if t == 0 else g.op("Sub", reached, below))
        below = reached
    shares.append(dy if k == 1 else g.op("Sub", dy, below))
    if rows is not None:
        placed = [_shift_rows(g, share, first, rows, zero) for share, first in zip(shares, firsts)]
        return placed[0] if len(placed) == 1 else g.op("Sum", *placed)
    return _place_taps(g, shares, where, (firsts, stride), sizes, zero)


def _shift_rows(g, x, shift, shape, zero):
    """x [N, ...] moved `shift` elements later (negative: earlier) in each flattened map [N, -1],
    `zero` (a scalar constant) shifted in; reshaped back to the static `shape` (batch 0)."""
    if shift == 0:
        return x
    flat = g.op("Reshape", x, g.ints([0, -1]))
    moved = _pad_axis(g, flat, (1, 2), shift, -shift, zero)
    return g.op("Reshape", moved, g.ints(shape))


def _prefix_pool(g, z, where, prefix, sizes):
    """M_t, the maximum of taps 0..t of each window, as a MaxPool along the axis (onnxruntime
    runs it in its blocked layout, where strided Slices of the innermost axis are slow: tap 0
    of SqueezeNet's first pool 0.13 ms pooled against 0.71 ms sliced, tools/bench_rules.py
    pools 5-10% faster); None when onnxruntime's pads < kernel rule forbids it, and for tap 0
    at stride 1 (a shift, which Pad does in one op)."""
    (axis, rank, _), (t, stride, dilation, begin), (n_in, n_out) = where, prefix, sizes
    end = _prefix_end(prefix, sizes)
    if end is None:
        return None
    spatial, count = axis - 2, rank - 2
    pooled = g.op("MaxPool", z, kernel_shape=_on_axis(t + 1, spatial, count),
                  strides=_on_axis(stride, spatial, count),
                  dilations=_on_axis(dilation, spatial, count),
                  pads=_on_axis(begin, spatial, count, 0) + _on_axis(end, spatial, count, 0))
    if _prefix_windows(prefix, n_in, end) == n_out:
        return pooled
    return g.op("Slice", pooled, g.ints([0]), g.ints([n_out]), g.ints([axis]))


def _prefix_windows(prefix, n_in, end):
    """The number of windows of M_t's pool (kernel t + 1) with end padding `end`."""
    t, stride, dilation, begin = prefix
    return (n_in + begin + end - dilation * t - 1) // stride + 1


def _prefix_end(prefix, sizes):
    """The end padding of M_t's pool: the least that gives it n_out windows; None when there is
    no such pool (onnxruntime's pads < kernel rule, or tap 0 at stride 1: a shift)."""
    (t, stride, _, begin), (n_in, n_out) = prefix, sizes
    if (t == 0 and (begin or stride == 1)) or begin > t:
        return None
    return next((e for e in range(t + 1) if _prefix_windows(prefix, n_in, e) >= n_out), None)


def _on_axis(value, axis, count, other=1):
    """A pool attribute over `count` spatial axes: value on spatial `axis`, `other` elsewhere."""
    return [value if i == axis else other for i in range(count)]


def _tap(g, z, where, first_stride, sizes, fill):
    """Z at positions first + stride i (i < n_out) along the axis, `fill` outside Z."""
    (first, stride), (n_in, n_out) = first_stride, sizes
    if stride == 1:  # one Pad shifts (negative pads crop)
        return _pad_axis(g, z, where, -first, first + n_out - n_in, fill)
    lo = max(-(first // stride), 0)  # the first i inside Z
    hi = max(min(n_out, (n_in - 1 - first) // stride + 1), lo)  # one past the last
    start = first + stride * lo
    tap = g.op("Slice", z, g.ints([start]), g.ints([start + stride * (hi - lo - 1) + 1]),
               g.ints([where[0]]), g.ints([stride]))
    return _pad_axis(g, tap, where, lo, n_out - hi, fill)


def _place_taps(g, shares, where, firsts_stride, sizes, zero):
    """Sum the k per-tap shares [..., n_out, ...] at their input positions along the axis:
    tap t of window i lands on first_t + stride i. Returns [..., n_in, ...]. The taps of one
    phase (first_t mod stride) are shifted copies summed at output resolution; the phases then
    interleave."""
    (axis, _, tail), (firsts, stride), (n_in, n_out) = where, firsts_stride, sizes
    length = -(-n_in // stride)  # of each phase
    phases = []
    for phase in range(stride):
        parts = [_pad_axis(g, share, where, first // stride, length - n_out - first // stride, zero)
                 for share, first in zip(shares, firsts) if first % stride == phase]
        phases.append(parts[0] if len(parts) == 1 else g.op("Sum", *parts) if parts else None)
    if stride == 1:
        return phases[0]
    some = next(p for p in phases if p is not None)
    phases = [g.op("Mul", some, zero) if p is None else p for p in phases]  # no tap lands here
    stacked = g.op("Concat", *[g.op("Unsqueeze", p, g.ints([axis + 1])) for p in phases],
                   axis=axis + 1)
    merged = g.op("Reshape", stacked, g.ints([0] * axis + [-1] + list(tail)))
    if stride * length == n_in:
        return merged
    return g.op("Slice", merged, g.ints([0]), g.ints([n_in]), g.ints([axis]))


def _pad_axis(g, x, where, before, after, value):
    """x padded with the scalar constant `value` along one axis (negative counts crop);
    where: (axis, rank of x, ...)."""
    if before == 0 and after == 0:
        return x
    axis, rank = where[:2]
    pads = [0] * (2 * rank)
    pads[axis], pads[rank + axis] = before, after
    return g.op("Pad", x, g.ints(pads), value)


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
    return [g.expand_when_summed(g.op("Mul", dys[0], _size_ratio(g, y, x)))]


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
    if n.op == "ReduceMean":
        dy = g.op("Mul", dy, _size_ratio(g, y, x))
    if 0 in _reduce_axes(g, n):  # no batch dimension to broadcast from
        return [g.op("Expand", dy, g.op("Shape", x))] + [None] * (len(n.inputs) - 1)
    return [g.expand_when_summed(dy)] + [None] * (len(n.inputs) - 1)


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
