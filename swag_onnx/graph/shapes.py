"""Pure shape arithmetic for convolution and pooling (per spatial axis), shared by the rules.

All functions take and return plain ints or lists of ints; `pads` lists follow ONNX order
(all begins, then all ends).
"""

from __future__ import annotations

import math


def effective_kernel(kernel: int, dilation: int) -> int:
    return (kernel - 1) * dilation + 1


def explicit_pads(in_sizes, kernel, strides, dilations, pads, auto_pad: str) -> list[int]:
    """Resolve auto_pad (SAME_UPPER, SAME_LOWER, VALID, NOTSET) into explicit pads."""
    rank = len(in_sizes)
    if auto_pad in ("", "NOTSET"):
        return list(pads) if pads else [0] * (2 * rank)
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    begins, ends = [], []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = math.ceil(size / s)
        total = max(0, (out - 1) * s + effective_kernel(k, d) - size)
        small, big = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else big)
        ends.append(big if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def output_size(size: int, kernel: int, stride: int, dilation: int, pad_begin: int,
                pad_end: int, ceil_mode: bool = False) -> int:
    """Output length of a convolution or pooling window along one axis."""
    span = size + pad_begin + pad_end - effective_kernel(kernel, dilation)
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def transposed_tail(in_size: int, out_size: int, kernel: int, stride: int, dilation: int,
                    pad_begin: int) -> int:
    """How far the windows reach past the input end: the end pad that makes the transposed
    convolution of an `out_size` gradient exactly `in_size` long (negative: input tail unused)."""
    return (out_size - 1) * stride + effective_kernel(kernel, dilation) - pad_begin - in_size
