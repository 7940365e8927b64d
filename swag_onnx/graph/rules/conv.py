"""Gradient rules of Conv and ConvTranspose (at the end). Conv: with respect to its input X,
and (for meta-saliency) its weights W and bias B.

dX is a transposed convolution of dY with the same weights. onnxruntime's ConvTranspose is slow
for grouped (depthwise) kernels, so where it is exact we use a plain Conv instead:
- stride 1: dX = Conv(dY, W flipped and transposed per group), pads k_eff-1-pad;
- stride > 1 and groups > 1: the same Conv on dY with s-1 zeros inserted between samples
  (a depthwise 1x1 ConvTranspose of ones: 2.4x faster than padding, 1.2x than the full
  depthwise ConvTranspose);
- dense strided convolutions (and odd pads) keep ConvTranspose, which is fast there.
The weight transforms act on initializers, so onnxruntime folds them once at session start.

dW[o, i, k] = sum over images and output positions y of dY[o, y] * Xpad[g(o) i, y s + k d]:
one strided Slice of the padded input per kernel tap, all taps stacked and contracted with dY
by one batched MatMul per group (memory: kernel-size copies of X; used for one image at a time).
"""

from __future__ import annotations

import numpy as np

import itertools

from swag_onnx.graph import shapes
from swag_onnx.graph.rules import rule


def _geometry(g, n):
    """Static per-axis geometry: kernel, strides, dilations, pads, tails, x and y sizes."""
    x, w = n.inputs[:2]
    x_sizes = g.shape(x)[2:]
    kernel = list(n.attrs.get("kernel_shape") or g.shape(w)[2:])
    rank = len(kernel)
    strides = list(n.attrs.get("strides") or [1] * rank)
    dilations = list(n.attrs.get("dilations") or [1] * rank)
    pads = shapes.explicit_pads(x_sizes, kernel, strides, dilations, n.attrs.get("pads"),
                                n.attrs.get("auto_pad", "NOTSET"))
    y_sizes = [shapes.output_size(*a) for a in zip(x_sizes, kernel, strides, dilations,
                                                     pads[:rank], pads[rank:])]
    tails = [shapes.transposed_tail(*a) for a in zip(x_sizes, y_sizes, kernel, strides,
                                                      dilations, pads[:rank])]
    return kernel, strides, dilations, pads[:rank], tails


def _conv_check(g, n):
    x_shape, w_shape = g.shape(n.inputs[0]), g.shape(n.inputs[1])
    if x_shape is None or w_shape is None or any(d is None for d in list(x_shape[2:]) + list(w_shape)):
        return "Conv whose input spatial size or weight shape is not static"
    return None


@rule("Conv", check=_conv_check)
def conv(g, n, dys, needs):
    grads = [None] * len(n.inputs)
    if needs[0] and n.outputs[0] in g.class_maps and n.attrs["group"] == 1:
        grads[0] = _input_grad(g, n, *_seeded_classes_only(g, n, dys[0]))
    elif needs[0]:
        grads[0] = _input_grad(g, n, dys[0])
    if needs[1]:
        grads[1] = _weight_grad(g, n, dys[0])
    if len(needs) > 2 and needs[2]:
        grads[2] = g.reduce_sum(dys[0], [0] + list(range(2, g.rank(n.outputs[0]))), keepdims=False)
    return grads


def _weight_grad(g, n, dy):
    """dW [M, C/group, k...] of a Conv, from dY [N, M, y...] and the input X [N, C, x...]."""
    x, w = n.inputs[:2]
    kernel, strides, dilations, _, _ = _geometry(g, n)
    pads = shapes.explicit_pads(g.shape(x)[2:], kernel, strides, dilations, n.attrs.get("pads"),
                                n.attrs.get("auto_pad", "NOTSET"))
    return correlate_taps(g, x, dy, g.shape(w), list(g.shape(n.outputs[0])[2:]), strides,
                          dilations, pads, n.attrs["group"])


def correlate_taps(g, x, dy, w_shape, y_sizes, strides, dilations, pads, group):
    """dW [M, C/group, k...] = sum over images and positions y of dY[o, y] * Xpad[g(o) i,
    y s + k d], for X [N, C, x...] padded by `pads`, dY [N, M, y...] (y_sizes its spatial dims)."""
    kernel = list(w_shape[2:])
    rank = len(kernel)
    if any(pads):
        x = g.op("Pad", x, g.ints([0, 0] + list(pads[:rank]) + [0, 0] + list(pads[rank:])))
    m, c_per_group = w_shape[:2]
    axes = list(range(2, 2 + rank))
    taps = []
    for tap in itertools.product(*[range(k) for k in kernel]):
        starts = [t * d for t, d in zip(tap, dilations)]
        ends = [b + (y - 1) * s + 1 for b, y, s in zip(starts, y_sizes, strides)]
        patch = g.op("Slice", x, g.ints(starts), g.ints(ends), g.ints(axes), g.ints(strides))
        taps.append(g.op("Reshape", patch, g.ints([0, group, c_per_group, -1])))
    stacked = g.op("Concat", *taps, axis=2) if len(taps) > 1 else taps[0]  # [N, G, K*C/G, P]
    dy_groups = g.op("Reshape", dy, g.ints([0, group, m // group, -1]))  # [N, G, M/G, P]
    products = g.op("MatMul", dy_groups, g.op("Transpose", stacked, perm=[0, 1, 3, 2]))
    summed = g.reduce_sum(products, [0], keepdims=False)  # [G, M/G, K*C/G], tap-major
    per_tap = g.op("Reshape", summed, g.ints([m, len(taps), c_per_group]))
    return g.op("Reshape", g.op("Transpose", per_tap, perm=[0, 2, 1]),
                g.ints([m, c_per_group] + kernel))


def _input_grad(g, n, dy, weight=None):
    """dX of a Conv from dY; `weight`: W's rows for dY's channels when not all of W's."""
    kernel, strides, dilations, begins, tails = _geometry(g, n)
    k_eff = [shapes.effective_kernel(k, d) for k, d in zip(kernel, dilations)]
    conv_begin = [k - 1 - b for k, b in zip(k_eff, begins)]
    conv_end = [k - 1 - t for k, t in zip(k_eff, tails)]
    group = n.attrs["group"]
    strided = any(s > 1 for s in strides)
    if min(conv_begin + conv_end) < 0 or (strided and group == 1):
        return _conv_transpose(g, n, dy, strides, dilations, begins, tails, weight)
    if strided:
        dy = _insert_zeros(g, dy, g.shape(n.inputs[1])[0], strides, n.outputs[0])
    return g.op("Conv", dy, _flipped_transposed_weight(g, n, weight), dilations=dilations,
                group=group, pads=conv_begin + conv_end)


def _seeded_classes_only(g, n, dy):
    """dY [N, k, y...] and W [k, C, k...] of the k classes some seed row selects, for a Conv
    whose output channels are class maps (dY [N, K, y...] is zero on the others, see
    augment._class_maps). SqueezeNet's 1x1 classifier Conv, 512 -> 1000 channels: its dense
    input gradient was the augmented model's costliest node (1.85 ms of 25)."""
    classes = g.seed_classes()
    return g.op("Gather", dy, classes, axis=1), g.op("Gather", n.inputs[1], classes, axis=0)


def _conv_transpose(g, n, dy, strides, dilations, begins, tails, weight=None):
    ends = [max(t, 0) for t in tails]
    output_padding = [max(-t, 0) for t in tails]
    return g.op("ConvTranspose", dy, weight or n.inputs[1], strides=strides, dilations=dilations,
                group=n.attrs["group"], pads=begins + ends, output_padding=output_padding)


def _flipped_transposed_weight(g, n, w=None):
    """W [M, C/g, k...] -> [C, M/g, k...] per group, spatially flipped; `w`: some of W's rows
    (group 1) instead of W."""
    m, c_per_group, *kernel = g.shape(n.inputs[1])
    w = w or n.inputs[1]
    group = n.attrs["group"]
    spatial = list(range(2, 2 + len(kernel)))
    if c_per_group != 1 or m != group:  # not a plain depthwise kernel: swap in/out channels
        w = g.op("Reshape", w, g.ints([group, -1, c_per_group] + kernel))  # -1: M / group
        w = g.op("Transpose", w, perm=[0, 2, 1] + [a + 1 for a in spatial])
        w = g.op("Reshape", w, g.ints([group * c_per_group, -1] + kernel))
    n_sp = len(spatial)
    return g.op("Slice", w, g.ints([-1] * n_sp), g.ints([np.iinfo(np.int64).min] * n_sp),
                g.ints(spatial), g.ints([-1] * n_sp))


def _insert_zeros(g, dy, channels, strides, y):
    """Put s-1 zeros between samples of dy (the gradient of forward output y) along each spatial
    axis (length (n-1)*s+1): a depthwise ConvTranspose with a 1x1 kernel of ones, several times
    faster in onnxruntime than padding a reshaped tensor."""
    ones = np.ones([channels, 1] + [1] * len(strides))
    return g.op("ConvTranspose", dy, g.const_like(ones, y), group=channels, strides=strides)


# ----- ConvTranspose -----------------------------------------------------------------------------
# y = ConvTranspose(x, W) is the adjoint of the Conv z -> Conv(z, W) (same strides, dilations,
# pads, groups; W [C_in, C_out/group, k...] is read as a Conv weight [M, C/group, k...]), so
# dX = Conv(dY, W) and dW is that Conv's weight gradient with dY as its input and x as its
# output gradient. output_padding only lengthens y: those positions are read by no window of x.


def _transpose_pads(g, n):
    """Explicit [begins..., ends...] pads of a ConvTranspose (from output_shape / auto_pad via
    the static output size)."""
    x, w, y = n.inputs[0], n.inputs[1], n.outputs[0]
    x_sizes, y_sizes = g.shape(x)[2:], g.shape(y)[2:]
    kernel = list(n.attrs.get("kernel_shape") or g.shape(w)[2:])
    rank = len(kernel)
    auto_pad = n.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("", "NOTSET") and not n.attrs.get("output_shape"):
        return list(n.attrs.get("pads") or [0] * (2 * rank))
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    strides = list(n.attrs.get("strides") or [1] * rank)
    dilations = list(n.attrs.get("dilations") or [1] * rank)
    adjust = list(n.attrs.get("output_padding") or [0] * rank)
    totals = [s * (i - 1) + a + shapes.effective_kernel(k, d) - o for i, o, k, s, d, a
              in zip(x_sizes, y_sizes, kernel, strides, dilations, adjust)]
    # An odd total puts the extra pad at the end for SAME_UPPER, at the start otherwise (as
    # onnxruntime does; output_shape without auto_pad follows the spec's "else" branch).
    begins = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
    return begins + [t - b for t, b in zip(totals, begins)]


def _conv_transpose_check(g, n):
    reason = _conv_check(g, n)
    if reason is None and (g.shape(n.outputs[0]) is None
                           or any(d is None for d in g.shape(n.outputs[0])[2:])):
        reason = "ConvTranspose whose output spatial size is not static"
    rank = len(g.shape(n.inputs[0]) or ()) - 2
    strides = n.attrs.get("strides") or [1] * rank
    if reason is None and any(a >= s for a, s in zip(n.attrs.get("output_padding") or [], strides)):
        reason = "ConvTranspose with output_padding not below its stride"
    if reason is None and min(_transpose_pads(g, n)) < 0:  # tf2onnx's spelling of output_padding
        reason = "ConvTranspose with negative pads"
    return reason.replace("Conv whose", "ConvTranspose whose") if reason else None


@rule("ConvTranspose", check=_conv_transpose_check)
def conv_transpose(g, n, dys, needs):
    x, w = n.inputs[:2]
    rank = g.rank(x) - 2
    strides = list(n.attrs.get("strides") or [1] * rank)
    dilations = list(n.attrs.get("dilations") or [1] * rank)
    pads = _transpose_pads(g, n)
    dy = dys[0]
    grads = [None] * len(n.inputs)
    if needs[0]:
        grads[0] = g.op("Conv", dy, w, strides=strides, dilations=dilations, pads=pads,
                        group=n.attrs["group"])
    if needs[1]:
        grads[1] = correlate_taps(g, dy, x, g.shape(w), list(g.shape(x)[2:]), strides,
                                  dilations, pads, n.attrs["group"])
    if len(needs) > 2 and needs[2]:
        grads[2] = g.reduce_sum(dys[0], [0] + list(range(2, rank + 2)), keepdims=False)
    return grads
