"""LIME for images (Ribeiro et al., 2016), following the ``lime`` package's image explainer.

One input ``x`` ((C, H, W) with ``channel_axis=0`` or (H, W, C) with ``channel_axis=-1``) is
explained through

    probabilities(batch) -> (N, K) softmax probabilities

where ``batch`` has shape (N, *x.shape) and the dtype of ``x``. This module never imports a
runtime; the caller builds ``probabilities`` (e.g. from onnxruntime).

The steps are those of ``lime.lime_image.LimeImageExplainer.explain_instance`` with its defaults:

1. quickshift superpixels (kernel_size 4, max_dist 200, ratio 0.2) on ``view``, the uint8 RGB
   (H, W, 3) image the model input was made from (or caller-given ``segments``);
2. ``samples`` binary vectors z over the n segments, drawn as lime draws them
   (``RandomState(seed).randint(0, 2, samples * n)``, row 0 set to all ones), generated and scored
   ``batch_size`` at a time so memory stays bounded;
3. a switched-off segment is filled with its own per-channel mean (lime's ``hide_color=None``),
   computed in the model-input space, which equals the mean colour pushed through any per-channel
   affine preprocessing;
4. cosine distance d of each z to the all-ones vector, kernel weight sqrt(exp(-d^2 / width^2));
5. weighted ridge regression (alpha 1, with intercept, as ``sklearn.linear_model.Ridge`` with
   ``sample_weight``) of the target probability on z, solved in closed form.

The map gives every pixel the weight of its segment (positive = evidence for the target).
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Optional

import numpy as np

from swag_onnx.methods.registry import Inputs, Output, method
from swag_onnx.validation import BATCH, SEED, Int, Number, require

ProbFn = Callable[[np.ndarray], np.ndarray]
SAMPLES = Int(2, 1_000_000)
KERNEL_WIDTH = Number(0.0, low_open=True)


def quickshift_segments(
    view: np.ndarray, kernel_size: float = 4, max_dist: float = 200, ratio: float = 0.2, seed: int = 0
) -> np.ndarray:
    """Quickshift superpixels (H, W) int, labels 0..n-1, of an RGB (H, W, 3) image (lime's default)."""
    from skimage.segmentation import quickshift

    seg = quickshift(view, kernel_size=kernel_size, max_dist=max_dist, ratio=ratio, rng=seed)
    return np.unique(seg, return_inverse=True)[1].reshape(seg.shape).astype(np.int64)


def weighted_ridge(
    X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, alpha: float = 1.0
) -> tuple[np.ndarray, float]:
    """Ridge with intercept and sample weights in closed form, as sklearn's ``Ridge``.

    X (N, F), y (N,), sample_weight (N,) >= 0 -> (coef (F,), intercept). Minimises
    sum_i w_i (y_i - b - X_i . coef)^2 + alpha |coef|^2 (the intercept is not penalised):
    centre X and y on their weighted means, solve (Xc^T W Xc + alpha I) coef = Xc^T W yc,
    intercept = mean(y) - mean(X) . coef.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(sample_weight, dtype=np.float64)
    sw = w.sum()
    if not sw > 0:
        raise ValueError("sample weights must have a positive sum")
    x_mean = w @ X / sw
    y_mean = w @ y / sw
    Xc = X - x_mean
    yc = y - y_mean
    A = Xc.T @ (w[:, None] * Xc)
    A[np.diag_indices_from(A)] += alpha
    b = Xc.T @ (w * yc)
    if alpha > 0:
        coef = np.linalg.solve(A, b)
    else:
        coef = np.linalg.lstsq(A, b, rcond=None)[0]
    return coef, float(y_mean - x_mean @ coef)


def _cosine_to_ones(z: np.ndarray) -> np.ndarray:
    """Cosine distance (N,) of binary rows z (N, n) to the all-ones vector (1 for an all-zero row)."""
    on = z.sum(axis=1).astype(np.float64)
    n = z.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 - on / (np.sqrt(on) * np.sqrt(n))
    d[on == 0] = 1.0
    return np.clip(d, 0.0, 2.0)


def lime(
    x: Any,
    view: Any,
    probabilities: ProbFn,
    target: int,
    *,
    channel_axis: int = 0,
    samples: int = 1000,
    kernel_size: float = 4,
    max_dist: float = 200,
    ratio: float = 0.2,
    kernel_width: float = 0.25,
    alpha: float = 1.0,
    batch_size: int = 50,
    seed: int = 0,
    segments: Optional[np.ndarray] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LIME saliency of class ``target`` for one input ``x``.

    x: model input, (C, H, W) (``channel_axis=0``) or (H, W, C) (``channel_axis=-1``).
    view: uint8 RGB (H, W, 3) image x was made from; quickshift runs on it. Ignored (may be None)
        when ``segments`` (H, W) int is given; any labels, renumbered 0..n-1.
    probabilities: batch (N, *x.shape) -> (N, K) probabilities.
    Returns (saliency (H, W) float32 = weights[segments], segments (H, W) int64 labelled
    0..n-1, weights (n,) float64 ridge coefficients).
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if x.ndim != 3:
        raise ValueError(f"x must have 3 dimensions, got shape {x.shape}")
    if isinstance(channel_axis, bool) or channel_axis not in (0, -1, 2):
        raise ValueError(f"channel_axis must be 0 or -1, got {channel_axis!r}")
    xc = x if channel_axis == 0 else np.moveaxis(x, -1, 0)  # (C, H, W) view of x
    hw = xc.shape[1:]
    samples = require(SAMPLES, "samples", samples)
    batch_size = require(BATCH, "batch_size", batch_size)
    seed = require(SEED, "seed", seed)
    target = require(Int(0), "target", target)
    kernel_width = require(KERNEL_WIDTH, "kernel_width", kernel_width)
    alpha = require(Number(0.0), "alpha", alpha)
    if segments is None:
        kernel_size = require(Number(0.0, low_open=True), "kernel_size", kernel_size)
        max_dist = require(Number(0.0, low_open=True), "max_dist", max_dist)
        ratio = require(Number(0.0, 1.0), "ratio", ratio)
        view = np.asarray(view)
        if view.shape != (*hw, 3):
            raise ValueError(f"view must have shape {(*hw, 3)}, got {view.shape}")
        seg = quickshift_segments(view, kernel_size, max_dist, ratio, seed)
    else:
        seg = np.asarray(segments)
        if seg.shape != hw or not np.issubdtype(seg.dtype, np.integer):
            raise ValueError(f"segments must be an integer array of shape {hw}, got {seg.dtype} {seg.shape}")
        seg = np.unique(seg, return_inverse=True)[1].reshape(hw).astype(np.int64)
    n = int(seg.max()) + 1

    # Fill image: every segment replaced by its per-channel mean, in x's space.
    flat = seg.ravel()
    counts = np.bincount(flat, minlength=n).astype(np.float64)
    means = np.stack(
        [np.bincount(flat, weights=c.ravel().astype(np.float64), minlength=n) / counts for c in xc]
    )  # (C, n)
    fill_c = means[:, seg].astype(x.dtype)  # (C, H, W)
    fill = fill_c if channel_axis == 0 else np.moveaxis(fill_c, 0, -1)
    pix_axis = (slice(None), None) if channel_axis == 0 else (slice(None), Ellipsis, None)

    rng = np.random.RandomState(seed)
    z = np.empty((samples, n), dtype=np.int8)
    y = np.empty(samples, dtype=np.float64)
    done = 0
    while done < samples:
        b = min(batch_size, samples - done)
        zb = rng.randint(0, 2, b * n).reshape(b, n)  # same stream as lime's one big draw
        if done == 0:
            zb[0] = 1
        off = zb[:, seg] == 0  # (b, H, W)
        batch = np.where(off[pix_axis], fill[None], x[None])
        p = np.asarray(probabilities(batch))
        if p.ndim != 2 or p.shape[0] != b:
            raise ValueError(f"probabilities returned shape {p.shape} for a batch of {b}; expected ({b}, K)")
        if target >= p.shape[1]:
            raise ValueError(f"target {target} out of range for {p.shape[1]} classes")
        z[done : done + b] = zb
        y[done : done + b] = p[:, target]
        done += b
        if progress is not None:
            progress(done, samples)

    d = _cosine_to_ones(z)
    w = np.sqrt(np.exp(-(d**2) / kernel_width**2))
    weights, _ = weighted_ridge(z, y, w, alpha)
    return weights[seg].astype(np.float32), seg, weights


@method("lime", needs={"probabilities", "image"}, progress=True, regions="quickshift segments",
        summary="quickshift superpixels (4, 200, 0.2), random on/off samples (off = the "
        "region's mean), cosine kernel width 0.25, weighted ridge (alpha 1); positive weights",
        reference="Ribeiro et al., 2016; the lime package with the same segments and seed: "
        "weights equal to 1e-7")
def _lime(inputs: Inputs, *,
          samples: Annotated[int, SAMPLES, "lime: perturbed samples"] = 1000,
          kernel_width: Annotated[float, KERNEL_WIDTH, "lime: cosine kernel width"] = 0.25,
          batch_size: Annotated[int, BATCH, "inputs per model call (speed and memory only)"] = 50,
          seed: Annotated[int, SEED, "random seed"] = 0) -> Output:
    saliency, segments, _ = lime(inputs.x, inputs.image, inputs.probabilities, inputs.target,
                                 channel_axis=inputs.channel_axis, samples=samples,
                                 kernel_width=kernel_width, batch_size=batch_size, seed=seed,
                                 progress=inputs.progress)
    return Output(np.maximum(saliency, 0.0), segments)  # evidence for the class only
