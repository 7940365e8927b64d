"""Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018), as pinned in docs/METHODS.md.

Everything happens at the MODEL input resolution, on the preprocessed (normalised) input:

- Ranking: pixels are ranked by saliency, highest first, ties broken by the flat (row-major)
  pixel index: ``np.argsort(-saliency.ravel(), kind="stable")``. A map at another resolution must
  first be brought to the model input grid (``to_model_resolution`` undoes the original-size
  mapping of ``swag_onnx.images.to_original``).
- Deletion: starts from the input and sets the top pixels, all channels, to ``baseline``
  (default 0.0: zero in the normalised input space, i.e. the normalisation's mean colour).
- Insertion: starts from a blurred copy of the input and restores the top pixels from the input.
  The blur is ``cv2.GaussianBlur`` on each channel, kernel ``blur_ksize`` x ``blur_ksize``
  (default 11), standard deviation ``blur_sigma`` (default 5.0) in both directions, border
  ``cv2.BORDER_REFLECT_101`` (``blur_border="reflect"``). RISE's reference code zero-pads its
  convolution instead (``blur_border="zero"``), which darkens a 5 px frame towards the baseline.
- Steps: ``step`` pixels per step; default ``round(H * W / 224)`` (224 on a 224 x 224 input), so a
  curve has ``ceil(H * W / step) + 1`` points: 0, step, 2 step, ... pixels changed, the last point
  being all pixels changed (the last step may be shorter).
- Score at each point: the probability of class ``cls`` from the model function, by default the
  class predicted on the clean input (one extra forward pass to find it).
- AUC: trapezoid rule, x axis normalised to [0, 1]; by default the points are equally spaced (as
  in RISE), or pass ``x=curve_fractions(...)`` for the exact fraction of pixels changed.

The model is a function ``probabilities(batch) -> (N, K)`` softmax probabilities, ``batch`` being
float32 in the model's input layout: (N, C, H, W) for ``layout="CHW"``, (N, H, W, C) for
``"HWC"``. Perturbed inputs are built and scored ``batch_size`` at a time, so memory stays at one
batch whatever the number of steps. Pure NumPy (plus OpenCV for the blur): no onnxruntime here.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from swag_onnx.validation import Int, require

ProbabilityFn = Callable[[np.ndarray], np.ndarray]

LAYOUTS = ("CHW", "HWC")
STEPS_PER_CURVE = 224  # RISE: 224 pixels per step on a 224 x 224 input
DEFAULT_BATCH_SIZE = 32
BLUR_KSIZE = 11
BLUR_SIGMA = 5.0
BLUR_BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "zero": cv2.BORDER_CONSTANT}

__all__ = [
    "auc",
    "blur",
    "curve_fractions",
    "default_step",
    "deletion_curve",
    "insertion_curve",
    "pixel_order",
    "to_model_resolution",
]


# ---------------------------------------------------------------------------------------- helpers

def _layout(layout: str) -> str:
    """"CHW"/"HWC", also accepting a model card's "NCHW"/"NHWC"."""
    name = {"NCHW": "CHW", "NHWC": "HWC"}.get(layout, layout)
    if name not in LAYOUTS:
        raise ValueError(f"layout must be 'CHW' or 'HWC' (or 'NCHW'/'NHWC'), got {layout!r}")
    return name


def one_image(model_input: np.ndarray, layout: str) -> tuple[np.ndarray, str]:
    """One model input, (C, H, W) / (H, W, C) or with a leading batch axis of 1 -> float32 copy."""
    x = np.asarray(model_input)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"model_input must be one image (C, H, W) or (H, W, C) (optionally with "
                         f"a batch axis of 1), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("model_input contains non-finite values")
    return np.array(x, dtype=np.float32), _layout(layout)


def spatial_size(x: np.ndarray, layout: str) -> tuple[int, int]:
    return (x.shape[1], x.shape[2]) if layout == "CHW" else (x.shape[0], x.shape[1])


def _flat(x: np.ndarray, layout: str) -> np.ndarray:
    """A (C, H*W) or (H*W, C) view of one image (pixel axis indexable by flat pixel index)."""
    c = x.shape[0] if layout == "CHW" else x.shape[2]
    return x.reshape(c, -1) if layout == "CHW" else x.reshape(-1, c)


def default_step(height: int, width: int, steps: int = STEPS_PER_CURVE) -> int:
    """Pixels per step: ``round(height * width / steps)``, at least 1 (224 on 224 x 224)."""
    return max(1, int(round(height * width / steps)))


def curve_fractions(height: int, width: int, step: int | None = None) -> np.ndarray:
    """Fraction of pixels changed at each point of a curve, float64 (ceil(H*W/step) + 1,).

    Point k has ``min(k * step, H * W)`` pixels changed; starts at 0.0 and ends at 1.0.
    """
    n = height * width
    step = default_step(height, width) if step is None else require(Int(1), "step", step)
    points = -(-n // step) + 1
    return np.minimum(np.arange(points) * step, n) / n


def pixel_order(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices (H*W,) int64, most salient first; ties by lower (row-major) index."""
    s = np.asarray(saliency, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"saliency must be an (H, W) map, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("saliency contains non-finite values")
    return np.argsort(-s.ravel(), kind="stable")


def to_model_resolution(saliency: np.ndarray, geometry) -> np.ndarray:
    """A map at the original image size (H0, W0) -> float32 (h, w) on the model input grid.

    ``geometry`` is the ``swag_onnx.images.Geometry`` of the image (original_size, resized_size,
    crop_box): the map is resized to the resized size (cv2.resize, INTER_AREA when shrinking both
    sides, INTER_LINEAR otherwise, as the image itself), then cropped like the image.
    """
    s = np.asarray(saliency, dtype=np.float32)
    if s.shape != tuple(geometry.original_size):
        raise ValueError(f"saliency has shape {s.shape}, the image is {geometry.original_size}")
    (hr, wr), (h0, w0) = geometry.resized_size, s.shape
    if (hr, wr) != (h0, w0):
        shrink = hr <= h0 and wr <= w0
        s = cv2.resize(s, (wr, hr), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    top, left, h, w = geometry.crop_box
    return np.ascontiguousarray(s[top:top + h, left:left + w])


def blur(model_input: np.ndarray, layout: str = "CHW", *, ksize: int = BLUR_KSIZE,
         sigma: float = BLUR_SIGMA, border: str = "reflect") -> np.ndarray:
    """Gaussian blur of one model input, each channel alone: float32, same shape and layout.

    ksize: odd kernel side (default 11); sigma: standard deviation in pixels (default 5.0);
    border: "reflect" (cv2.BORDER_REFLECT_101, default) or "zero" (zero padding, as RISE's code).
    """
    x, layout = one_image(model_input, layout)
    ksize = require(Int(1), "ksize", ksize)
    if ksize % 2 == 0:
        raise ValueError(f"ksize must be odd, got {ksize}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if border not in BLUR_BORDERS:
        raise ValueError(f"border must be one of {', '.join(BLUR_BORDERS)}, got {border!r}")
    planes = x if layout == "CHW" else np.moveaxis(x, -1, 0)
    out = np.stack([cv2.GaussianBlur(np.ascontiguousarray(p), (ksize, ksize), sigmaX=float(sigma),
                                     sigmaY=float(sigma), borderType=BLUR_BORDERS[border])
                    for p in planes])
    return out if layout == "CHW" else np.ascontiguousarray(np.moveaxis(out, 0, -1))


def auc(curve: np.ndarray, x: np.ndarray | None = None) -> float:
    """Area under a curve (P,) by the trapezoid rule, x axis in [0, 1].

    x: None for P equally spaced points 0, 1/(P-1), ..., 1 (RISE); or the abscissae (P,) in
    [0, 1], e.g. ``curve_fractions(H, W, step)`` when the last step is shorter than the others.
    A constant curve of 1 has AUC 1.0.
    """
    y = np.asarray(curve, dtype=np.float64)
    if y.ndim != 1 or y.size < 2:
        raise ValueError(f"curve must be 1-D with at least 2 points, got shape {y.shape}")
    if x is None:
        return float((y.sum() - (y[0] + y[-1]) / 2) / (y.size - 1))
    xs = np.asarray(x, dtype=np.float64)
    if xs.shape != y.shape:
        raise ValueError(f"x {xs.shape} and curve {y.shape} must have the same shape")
    if np.any(np.diff(xs) < 0) or xs[0] < 0 or xs[-1] > 1:
        raise ValueError("x must be non-decreasing within [0, 1]")
    return float(np.sum((xs[1:] - xs[:-1]) * (y[1:] + y[:-1]) / 2))


# -------------------------------------------------------------------------------------- the curves

def _predicted_class(x: np.ndarray, probabilities: ProbabilityFn) -> int:
    return int(np.asarray(probabilities(x[None]))[0].argmax())


def _curve(start: np.ndarray, finish: np.ndarray, order: np.ndarray, probabilities: ProbabilityFn,
           cls: int, layout: str, step: int, batch_size: int) -> np.ndarray:
    """Probabilities of ``cls`` as the pixels in ``order`` go from ``start`` to ``finish``,
    ``step`` pixels per point; one batch of at most ``batch_size`` inputs in memory."""
    n = order.size
    points = -(-n // step) + 1
    current = start.copy()
    cur, fin = _flat(current, layout), _flat(finish, layout)
    buffer = np.empty((min(batch_size, points),) + start.shape, np.float32)
    curve = np.empty(points, np.float64)
    done = 0  # points scored so far
    while done < points:
        count = min(batch_size, points - done)
        for j in range(count):
            k = done + j
            if k > 0:
                idx = order[(k - 1) * step:k * step]
                if layout == "CHW":
                    cur[:, idx] = fin[:, idx]
                else:
                    cur[idx] = fin[idx]
            buffer[j] = current
        probs = np.asarray(probabilities(buffer[:count]))
        if probs.ndim != 2 or probs.shape[0] != count:
            raise ValueError(f"probabilities returned shape {probs.shape} for a batch of {count}; "
                             "expected (N, K)")
        curve[done:done + count] = probs[:, cls]
        done += count
    return curve


def _prepare(model_input, saliency, layout, step, batch_size):
    x, layout = one_image(model_input, layout)
    h, w = spatial_size(x, layout)
    order = pixel_order(saliency)
    if np.shape(saliency) != (h, w):
        raise ValueError(f"saliency has shape {np.shape(saliency)}, the model input is {(h, w)}; "
                         "bring it to the model input resolution first (to_model_resolution)")
    step = default_step(h, w) if step is None else require(Int(1), "step", step)
    return x, layout, order, step, require(Int(1), "batch_size", batch_size)


def deletion_curve(model_input: np.ndarray, saliency: np.ndarray, probabilities: ProbabilityFn,
                   cls: int | None = None, *, layout: str = "CHW", step: int | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE,
                   baseline: float | np.ndarray = 0.0) -> np.ndarray:
    """Deletion curve: probability of ``cls`` as the most salient pixels are set to ``baseline``.

    model_input: one preprocessed input, (C, H, W) for layout "CHW" or (H, W, C) for "HWC"
        (a leading batch axis of 1 is accepted; "NCHW"/"NHWC" are accepted as layouts).
    saliency: (H, W) map at the model input resolution (higher = more important).
    probabilities: model function, batch (N, C, H, W) or (N, H, W, C) float32 -> (N, K).
    cls: class index; None = the class predicted on ``model_input`` (one extra forward pass).
    step: pixels per step; None = round(H * W / 224). batch_size: inputs per model call.
    baseline: value of deleted pixels in the normalised input space: a number (default 0.0) or
        an array broadcastable to the input (e.g. per channel (C, 1, 1) for "CHW").
    Returns float64 (ceil(H*W/step) + 1,): point 0 is the clean input, the last the all-baseline
    input.
    """
    x, layout, order, step, batch_size = _prepare(model_input, saliency, layout, step, batch_size)
    finish = np.ascontiguousarray(np.broadcast_to(np.asarray(baseline, np.float32), x.shape))
    if cls is None:
        cls = _predicted_class(x, probabilities)
    return _curve(x, finish, order, probabilities, int(cls), layout, step, batch_size)


def insertion_curve(model_input: np.ndarray, saliency: np.ndarray, probabilities: ProbabilityFn,
                    cls: int | None = None, *, layout: str = "CHW", step: int | None = None,
                    batch_size: int = DEFAULT_BATCH_SIZE, blur_ksize: int = BLUR_KSIZE,
                    blur_sigma: float = BLUR_SIGMA, blur_border: str = "reflect") -> np.ndarray:
    """Insertion curve: probability of ``cls`` as the most salient pixels are restored, from a
    blurred copy of the input (``blur`` with blur_ksize, blur_sigma, blur_border) to the input.

    Arguments as ``deletion_curve``. Returns float64 (ceil(H*W/step) + 1,): point 0 is the
    blurred input, the last the clean input.
    """
    x, layout, order, step, batch_size = _prepare(model_input, saliency, layout, step, batch_size)
    start = blur(x, layout, ksize=blur_ksize, sigma=blur_sigma, border=blur_border)
    if cls is None:
        cls = _predicted_class(x, probabilities)
    return _curve(start, x, order, probabilities, int(cls), layout, step, batch_size)
