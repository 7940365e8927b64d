"""Gradient rule of Resize (nearest, linear, cubic; every coordinate transformation mode but
tf_crop_and_resize; no antialias).

For fixed sizes, Resize is linear and separable: along each resized axis, y = A x with A an
[out, in] interpolation matrix. The matrices are built here in NumPy from the op's definition
(coordinates in float32, as onnxruntime computes them) and the gradient applies their transposes,
one MatMul per resized axis: dx = A^T dy along that axis.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from swag_onnx.graph.rules import rule

COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                    "asymmetric", "tf_half_pixel_for_nn")


def source_coordinates(out_len: int, in_len: int, scale: float, mode: str) -> np.ndarray:
    """float32 [out_len]: the input coordinate each output sample reads from, by ONNX's
    coordinate_transformation_mode."""
    x = np.arange(out_len, dtype=np.float32)
    scale = np.float32(scale)
    half = np.float32(0.5)
    if mode == "half_pixel":
        return (x + half) / scale - half
    if mode == "half_pixel_symmetric":
        adjustment = np.float32(out_len) / (scale * np.float32(in_len))
        offset = np.float32(in_len) / np.float32(2) * (np.float32(1) - adjustment)
        return offset + (x + half) / scale - half
    if mode == "pytorch_half_pixel":
        return (x + half) / scale - half if out_len > 1 else np.zeros(out_len, np.float32)
    if mode == "align_corners":
        if out_len == 1:
            return np.zeros(1, np.float32)
        return x * np.float32(in_len - 1) / np.float32(out_len - 1)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + half) / scale
    raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")


def _nearest_index(coords: np.ndarray, nearest_mode: str) -> np.ndarray:
    floor = np.floor(coords)
    if nearest_mode == "floor":
        return floor
    if nearest_mode == "ceil":
        return np.ceil(coords)
    tie = (coords - floor) == np.float32(0.5)
    rounded = np.floor(coords + np.float32(0.5))
    if nearest_mode == "round_prefer_floor":
        return np.where(tie, floor, rounded)
    if nearest_mode == "round_prefer_ceil":
        return np.where(tie, floor + 1, rounded)
    raise ValueError(f"unknown nearest_mode {nearest_mode!r}")


def _cubic_weights(frac: np.ndarray, a: float) -> np.ndarray:
    """[n, 4] Keys cubic weights of taps floor - 1 .. floor + 2 at fractional offset `frac`."""
    def near(t):  # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):  # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    f = frac.astype(np.float64)
    return np.stack([far(1 + f), near(f), near(1 - f), far(2 - f)], axis=1)


def interpolation_matrix(in_len: int, out_len: int, scale: float, attrs: dict) -> np.ndarray:
    """float64 [out_len, in_len]: the 1-D Resize of a length in_len signal, y = A x, for the
    node's attributes (mode, coordinate_transformation_mode, nearest_mode, cubic_coeff_a,
    exclude_outside). An axis of scale 1 is left as it is, as onnxruntime does (whatever the
    coordinate mode: tf_half_pixel_for_nn would shift it by half a sample)."""
    if scale == 1.0 and in_len == out_len:
        return np.eye(in_len)
    coords = source_coordinates(out_len, in_len, scale,
                                attrs.get("coordinate_transformation_mode", "half_pixel"))
    mode = attrs.get("mode", "nearest")
    matrix = np.zeros((out_len, in_len))
    rows = np.arange(out_len)
    if mode == "nearest":
        index = _nearest_index(coords, attrs.get("nearest_mode", "round_prefer_floor"))
        matrix[rows, np.clip(index, 0, in_len - 1).astype(np.int64)] = 1.0
        return matrix
    if mode == "linear":
        clamped = np.clip(coords, 0, in_len - 1)
        low = np.minimum(np.floor(clamped).astype(np.int64), in_len - 1)
        high = np.minimum(low + 1, in_len - 1)
        frac = (clamped - low).astype(np.float64)
        np.add.at(matrix, (rows, low), np.where(low == high, 0.5, 1.0 - frac))
        np.add.at(matrix, (rows, high), np.where(low == high, 0.5, frac))
        return matrix
    floor = np.floor(coords)
    weights = _cubic_weights(coords - floor, float(attrs.get("cubic_coeff_a", -0.75)))
    taps = floor.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    if attrs.get("exclude_outside", 0):  # taps outside the input get no weight; renormalise
        weights = np.where((taps >= 0) & (taps < in_len), weights, 0.0)
        weights = weights / weights.sum(axis=1, keepdims=True)
    np.add.at(matrix, (np.repeat(rows, 4), np.clip(taps, 0, in_len - 1).ravel()), weights.ravel())
    return matrix


def _resized_axes(g, n) -> list[tuple[int, int, int, float]]:
    """(axis, in_len, out_len, scale) for every axis whose Resize is not the identity."""
    x_shape, y_shape = g.shape(n.inputs[0]), g.shape(n.outputs[0])
    rank = len(x_shape)
    axes = [a % rank for a in (n.attrs.get("axes") or range(rank))]
    scales = g.value(n.input(2)) if n.input(2) else None
    scales = None if scales is None or scales.size == 0 else scales.reshape(-1)
    found = []
    for i, axis in enumerate(axes):
        in_len, out_len = x_shape[axis], y_shape[axis]
        if in_len is None:  # a dynamic (batch) axis keeps its size
            continue
        scale = (float(scales[i]) if scales is not None
                 else float(np.float32(out_len) / np.float32(in_len)))
        if in_len != out_len or scale != 1.0:
            found.append((axis, in_len, out_len, scale))
    return found


def _resize_check(g, n):
    attrs = n.attrs
    if attrs.get("mode", "nearest") not in ("nearest", "linear", "cubic"):
        return f"Resize with mode={attrs.get('mode')!r}"
    if attrs.get("coordinate_transformation_mode", "half_pixel") not in COORDINATE_MODES:
        return (f"Resize with coordinate_transformation_mode="
                f"{attrs.get('coordinate_transformation_mode')!r}")
    if attrs.get("mode", "nearest") == "nearest" and \
            attrs.get("coordinate_transformation_mode") == "half_pixel_symmetric":
        # onnxruntime rounds these coordinates differently from their definition (2.0 becomes
        # 1.9999999 for scale 0.6): nearest indices would differ on exact ties
        return "Resize nearest with coordinate_transformation_mode='half_pixel_symmetric'"
    if attrs.get("antialias", 0):
        return "Resize with antialias=1"
    if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return "Resize with keep_aspect_ratio_policy other than 'stretch'"
    if n.input(2) and g.value(n.input(2)) is None:
        return "Resize with computed (non-constant) scales"
    x_shape, y_shape = g.shape(n.inputs[0]), g.shape(n.outputs[0])
    if x_shape is None or y_shape is None or len(x_shape) != len(y_shape):
        return "Resize whose input or output rank is unknown"
    if any((a is None) != (b is None) for a, b in zip(x_shape, y_shape)):
        return "Resize of an axis whose size is not static"
    return _size_disagreement(g, n, x_shape)


def _size_disagreement(g, n, x_shape) -> str | None:
    """Why the augmented graph could not load, or None: onnxruntime's kernel sizes an axis as
    floor(in * scale) in float32 (23 * 0.4347826f = 10.0f), ONNX shape inference (which
    onnxruntime also runs when it loads a model) in double (9.9999997 -> 9). The plain model
    runs (its kernels read the sizes at run time); the gradient graph holds the run-time size
    next to tensors onnxruntime infers with the other, and does not load."""
    if not n.input(2) or n.input(3):
        return None
    scales = g.value(n.input(2))
    if scales is None or scales.size == 0:
        return None
    rank = len(x_shape)
    axes = [a % rank for a in (n.attrs.get("axes") or range(rank))]
    for axis, scale in zip(axes, scales.reshape(-1).astype(np.float32)):
        size = x_shape[axis]
        if size is None:
            continue
        kernel = int(np.floor(np.float32(size) * scale))
        inferred = int(np.floor(float(size) * float(scale)))
        if kernel != inferred:
            return (f"Resize with scales {float(scale):.8g} on an axis of {size}: onnxruntime "
                    f"makes {kernel} samples where ONNX shape inference makes {inferred}, so the "
                    f"gradient graph would not load (re-export with sizes instead of scales)")
    return None


@rule("Resize", check=_resize_check)
def resize(g, n, dys, needs):
    x = n.inputs[0]
    dtype = helper.tensor_dtype_to_np_dtype(g.dtype(x) or 1)
    rank = g.rank(x)
    grad = dys[0]
    for axis, in_len, out_len, scale in _resized_axes(g, n):
        matrix = interpolation_matrix(in_len, out_len, scale, n.attrs)  # [out, in]
        grad = _apply_along(g, grad, g.const(matrix, dtype), g.const(matrix.T, dtype), axis,
                            rank)
    return [grad] + [None] * (len(n.inputs) - 1)


def _apply_along(g, t, matrix, transposed, axis, rank):
    """Contract t's `axis` (length out) with matrix [out, in]: the result has length in there."""
    if axis == rank - 1:
        return g.op("MatMul", t, matrix)
    if axis == rank - 2:
        return g.op("MatMul", transposed, t)
    perm = [a for a in range(rank) if a != axis] + [axis]
    moved = g.op("MatMul", g.op("Transpose", t, perm=perm), matrix)
    return g.op("Transpose", moved, perm=[int(i) for i in np.argsort(perm)])
