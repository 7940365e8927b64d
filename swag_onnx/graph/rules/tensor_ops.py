"""Gradient rules of ops that move data without arithmetic: reshapes, Transpose, Concat, Split,
Slice (any step), Pad, Expand, Gather, Tile. Shape-dependent quantities are computed in the graph
from Shape(x), so models whose pads or slice bounds are computed at run time (\"same\" padding
subgraphs) work; onnxruntime folds them away where shapes are static."""

from __future__ import annotations

import numpy as np

from swag_onnx.graph.rules import rule
from swag_onnx.graph.rules.activations import relu_grad


def _none_for_rest(grad, n):
    return [grad] + [None] * (len(n.inputs) - 1)


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(g, n, dys, needs):
    x, y = n.inputs[0], n.outputs[0]
    return _none_for_rest(g.reshape_like(dys[0], x, same_batch=g.same_batch(x, y)), n)


@rule("Transpose")
def transpose(g, n, dys, needs):
    perm = n.attrs.get("perm") or list(reversed(range(g.rank(n.inputs[0]))))
    return [g.op("Transpose", dys[0], perm=[int(i) for i in np.argsort(perm)])]


@rule("Expand")
def expand(g, n, dys, needs):
    return _none_for_rest(g.unbroadcast(dys[0], n.inputs[0], n.outputs[0]), n)


def _dims(g, x, axes: list[int]) -> str:
    """int64 [len(axes)]: the sizes of tensor x along `axes` (constant where static)."""
    shape = g.shape(x)
    if shape is not None and all(shape[a] is not None for a in axes):
        return g.ints([shape[a] for a in axes])
    return g.op("Gather", g.op("Shape", x), g.ints(axes))


@rule("Concat")
def concat(g, n, dys, needs):
    axis = n.attrs["axis"] % g.rank(n.outputs[0])
    dy = dys[0]
    if n.outputs[0] in g.relu_mask_carriers:  # the masks of the Relus it concatenates
        dy = relu_grad(g, dy, n.outputs[0])
    sizes = g.op("Concat", *(_dims(g, x, [axis]) for x in n.inputs), axis=0)
    parts = g.op("Split", dy, sizes, axis=axis, n_out=len(n.inputs))
    parts = parts if isinstance(parts, list) else [parts]
    return [p if need else None for p, need in zip(parts, needs)]


@rule("Split")
def split(g, n, dys, needs):
    parts = [dy if dy is not None else g.zeros_like(y) for dy, y in zip(dys, n.outputs)]
    return _none_for_rest(g.op("Concat", *parts, axis=n.attrs.get("axis", 0)), n)


def _constant_or_absent(g, n, index, what):
    if n.input(index) and g.value(n.input(index)) is None:
        return f"{n.op} with computed (non-constant) {what}"
    return None


def _slice_check(g, n):
    steps = g.value(n.input(4))
    if n.input(4) and steps is None:
        return "Slice with computed (non-constant) steps"
    if n.input(3) == "" and (g.shape(n.input(1)) or [None])[0] is None:
        return "Slice whose number of sliced axes is unknown"
    if g.shape(n.inputs[0]) is None:
        return "Slice whose input rank is unknown"
    return _constant_or_absent(g, n, 3, "axes")


def _axes_or_all(g, n, index, count):
    axes = g.value(n.input(index))
    if axes is None:
        return list(range(count))
    return [int(a) % g.rank(n.inputs[0]) for a in axes.reshape(-1)]


def _pads_vector(g, rank, axes, begins, ends):
    """Full ONNX pads [2 * rank] from per-axis begin/end tensors (int64 [len(axes)])."""
    positions = g.ints(list(axes) + [rank + a for a in axes])
    return g.op("ScatterElements", g.ints([0] * (2 * rank)), positions,
                g.op("Concat", begins, ends, axis=0), axis=0)


@rule("Slice", check=_slice_check)
def slice_(g, n, dys, needs):
    # y takes m elements start, start + step, ... along each axis. dy is first laid out densely
    # over the span those elements cover (reversed for negative steps, |step| - 1 zeros between
    # elements), then padded with zeros to the input: before by the span's lowest index lo,
    # after by dim - lo - span.
    x, y = n.inputs[0], n.outputs[0]
    axes = _axes_or_all(g, n, 3, g.shape(n.input(1))[0])
    steps = [1] * len(axes) if not n.input(4) else [int(s) for s in g.value(n.input(4))]
    dims, counts = _dims(g, x, axes), _dims(g, y, axes)
    dy = dys[0]
    for axis, step in zip(axes, steps):
        dy = _spread_axis(g, dy, axis, step, g.rank(x))
    zero, one = g.ints([0]), g.ints([1])
    start = _clamped_start(g, n.inputs[1], dims, steps)
    last = g.op("Mul", g.op("Sub", counts, one), g.ints(steps))  # (m - 1) step
    lo = g.op("Where", g.const(np.array(steps) > 0, np.bool_), start, g.op("Add", start, last))
    span = g.op("Where", g.op("Greater", counts, zero),
                g.op("Add", g.op("Abs", last), one), zero)
    lo = g.op("Min", lo, g.op("Sub", dims, span))  # empty slices: any place inside the input
    pads = _pads_vector(g, g.rank(x), axes, lo, g.op("Sub", g.op("Sub", dims, lo), span))
    return _none_for_rest(g.op("Pad", dy, pads), n)


def _clamped_start(g, starts, dims, steps):
    """int64 [len(axes)]: ONNX's effective start index (negative counts from the end; clamped to
    [0, dim] for positive steps, [0, dim - 1] for negative ones)."""
    zero = g.ints([0])
    starts = g.op("Where", g.op("Less", starts, zero), g.op("Add", starts, dims), starts)
    upper = g.op("Sub", dims, g.ints([int(s < 0) for s in steps]))
    return g.op("Min", g.op("Max", starts, zero), upper)


def _spread_axis(g, dy, axis, step, rank):
    """dy laid out over the span its elements came from along `axis`: reversed when step < 0,
    with |step| - 1 zeros between consecutive elements (length (m - 1) |step| + 1)."""
    if step < 0:
        dy = g.op("Slice", dy, g.ints([-1]), g.ints([np.iinfo(np.int64).min]), g.ints([axis]),
                  g.ints([-1]))
    stride = abs(step)
    if stride == 1:
        return dy
    gaps = [0] * (2 * (rank + 1))
    gaps[rank + 1 + axis + 1] = stride - 1  # end padding of the new axis after `axis`
    spaced = g.op("Pad", g.op("Unsqueeze", dy, g.ints([axis + 1])), g.ints(gaps))
    merged = g.op("Reshape", spaced, _merged_shape(g, spaced, axis, rank))
    return g.op("Slice", merged, g.ints([0]), g.ints([1 - stride]), g.ints([axis]))


def _merged_shape(g, t, axis, rank):
    """Target shape that merges axes `axis` and `axis + 1` of the rank + 1 tensor t."""
    shape = g.op("Shape", t)
    return g.op("Concat", g.op("Slice", shape, g.ints([0]), g.ints([axis])), g.ints([-1]),
                g.op("Slice", shape, g.ints([axis + 2]), g.ints([rank + 1])), axis=0)


def _pad_check(g, n):
    if n.attrs.get("mode", "constant") != "constant":
        return f"Pad with mode={n.attrs.get('mode')!r} (only constant padding has a rule)"
    pads = g.value(n.input(1))
    if pads is not None and np.any(pads < 0):
        return "Pad with negative pads"
    return _constant_or_absent(g, n, 3, "axes")


@rule("Pad", check=_pad_check)
def pad(g, n, dys, needs):
    # dx = dy[begin : begin + dim] along each padded axis
    x = n.inputs[0]
    axes = _axes_or_all(g, n, 3, g.rank(x))
    count = g.ints([len(axes)])
    begins = g.op("Slice", n.inputs[1], g.ints([0]), count)
    ends = g.op("Add", begins, _dims(g, x, axes))
    return _none_for_rest(g.op("Slice", dys[0], begins, ends, g.ints(axes)), n)


def _gather_check(g, n):
    shape = g.shape(n.inputs[0])
    if shape is None:
        return "Gather whose data rank is unknown"
    indices = g.value(n.inputs[1])
    if g.opset < 16 and (indices is None or np.unique(indices).size < indices.size):
        return "Gather with computed or repeated indices below opset 16 (no scatter-add)"
    return None


@rule("Gather", check=_gather_check)
def gather(g, n, dys, needs):
    # Scatter-add dy back to the gathered positions (repeated indices add up).
    data, indices = n.inputs
    rank = g.rank(data)
    axis = n.attrs.get("axis", 0) % rank
    axis_size = _dims(g, data, [axis])
    indices = g.op("Reshape", indices, g.ints([-1]))
    indices = g.op("Where", g.op("Less", indices, g.ints([0])),
                   g.op("Add", indices, axis_size), indices)
    shape_of = g.op("Shape", data)
    flat_shape = g.op("Concat", g.op("Slice", shape_of, g.ints([0]), g.ints([axis])),
                      g.ints([-1]), g.op("Slice", shape_of, g.ints([axis + 1]), g.ints([rank])),
                      axis=0)
    flat_dy = g.op("Reshape", dys[0], flat_shape)
    index_shape = g.ints([1] * axis + [-1] + [1] * (rank - axis - 1))
    spread = g.op("Expand", g.op("Reshape", indices, index_shape), g.op("Shape", flat_dy))
    reduction = "add" if g.opset >= 16 else None  # below 16 indices are constant and checked
    dx = g.op("ScatterElements", g.zeros_like(data), spread, flat_dy, axis=axis,
              reduction=reduction)
    return [dx, None]


def _tile_check(g, n):
    if g.shape(n.inputs[0]) is None:
        return "Tile whose input rank is unknown"
    return None


@rule("Tile", check=_tile_check)
def tile(g, n, dys, needs):
    # y = tile(x, r), x of shape d: view dy as [r0, d0, r1, d1, ...] and sum over the r axes
    x = n.inputs[0]
    rank = g.rank(x)
    pairs = g.op("Concat", g.op("Unsqueeze", n.inputs[1], g.ints([1])),
                 g.op("Unsqueeze", g.op("Shape", x), g.ints([1])), axis=1)  # [rank, 2]
    split = g.op("Reshape", dys[0], g.op("Reshape", pairs, g.ints([-1])))
    dx = g.op("ReduceSum", split, g.ints(list(range(0, 2 * rank, 2))), keepdims=0)
    return [dx, None]
