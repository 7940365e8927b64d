"""SWAG: Superpixels Weighted by Average Gradients (Hartley et al., WACV 2021).

One gradient pass gives a pixel map; SLIC superpixels group pixels into regions; every pixel takes
the mean of the pixel map over its region; the region map is min-max normalised to [0, 1].

Pipeline (each step a pure NumPy / scikit-image function):

    grad (H, W, C) --pixel_map--> pmap (H, W)
    image (H, W, 3), pmap --superpixels--> labels (H, W)
    pmap, labels --region_scores--> saliency (H, W) in [0, 1]

Superpixel sources (``SOURCES``):

- ``"image"``: SLIC on the RGB image (scikit-image converts it to Lab itself).
- ``"gradient"``: SLIC on the single-channel pixel map, normalised to [0, 1], so that regions follow
  what the network finds discriminative rather than colour edges.
- ``"combined"``: SLIC on the RGB channels (in [0, 1]) stacked with the normalised pixel map times
  ``gradient_weight`` (no Lab conversion).

Compactness scale. scikit-image's SLIC divides the colour distance by ``compactness`` and the
spatial distance by the grid step S, so ``compactness`` is "how many colour units weigh as much as
one grid step". Lab channels span ~100 units, hence the usual value 10 for ``"image"``. The
``"gradient"`` and ``"combined"`` inputs live in [0, 1], a range ~100x smaller, so the equivalent
balance is ~100x smaller too (0.1); with 10 there, SLIC ignores the values and returns a plain grid.

Multi-scale (``scales`` k > 1): the region map is computed on k segmentations of
``n_segments * 2**j`` regions, j = 0 .. k-1 (e.g. 50, 100, 200, 400), each normalised to [0, 1],
and averaged; regions are the first (coarsest) segmentation's.

Averaged gradients (the other reading of the paper's "average gradients"): ``average_gradient``
replaces the single gradient by its mean over noisy copies of the input (SmoothGrad) or along the
straight path from a zero input (integrated gradients' path mean; times the input this IS the
integrated-gradients attribution) before the pixel map is pooled into superpixels. The registered
entries take it as the option ``average`` (default "none": the gradient of the shared run, one
model run, meta-saliency applies); "smoothgrad" and "integrated" make ``average_samples`` extra
gradient runs instead (``grad_fn``, see swag_onnx.methods.gradients): the entries declare it
through the registry's ``needs_for`` (``swag_needs``), so the Explainer gives them a gradient
function and ``--meta`` refuses them. In tools/swag_study.py's development half, SmoothGrad
averaging was SWAG's best variant (README, "SWAG on the trusted instrument").

The defaults in ``DEFAULTS`` come with their reasons; the image source's pixel map was chosen
on the development half of tools/swag_study.py, the rest are sensible starting points that the
study's one-factor search did not improve on. ``swag()`` records the
values it actually used in ``SwagResult.params``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from scipy import ndimage
from skimage.segmentation import slic

from swag_onnx.methods.gradients import BATCH_HELP, GradFn, ig_quadrature, smoothgrad
from swag_onnx.methods.registry import Inputs, Output, alias, method
from swag_onnx.validation import BATCH, SEED, Choice, Int, Number, Optional, require

SOURCES = ("image", "gradient", "combined")
ATTRIBUTIONS = ("gradient", "gradient_x_input")
SIGNS = ("abs", "positive", "signed")
REDUCES = ("max", "sum", "l2")
AVERAGES = ("none", "smoothgrad", "integrated")
# the checks of every option (the API checks user values with them before any model run)
CHECKS = {
    "attribution": Choice(ATTRIBUTIONS), "sign": Choice(SIGNS), "reduce": Choice(REDUCES),
    "smooth_sigma": Number(0.0), "n_segments": Int(1, 1_000_000),
    "compactness": Number(0.0, low_open=True), "sigma": Number(0.0),
    "gradient_weight": Number(0.0), "clip_quantile": Number(0.0, 1.0, low_open=True),
    "top_k": Int(1),
    # 8 scales of n_segments * 2**j reach 128x n_segments: beyond any useful superpixel count
    "scales": Int(1, 8),
    "average": Choice(AVERAGES), "average_samples": Int(2, 100_000),
    "average_noise": Number(0.0),
}

_PIXEL_DEFAULTS: dict[str, Any] = {
    # Gradient x input, max over channels of |.|: measured on EfficientNet-Lite0 over 7
    # scikit-image / scikit-learn photos (tools/tune_swag.py, tools/tune_swag_results.md), it
    # beats the plain gradient on both deletion and insertion for every source (image source:
    # insertion 0.290 -> 0.301, deletion 0.254 -> 0.239; gradient source: 0.279 -> 0.295 and
    # 0.216 -> 0.196).
    "attribution": "gradient_x_input",
    "sign": "abs",
    "reduce": "max",
    # No smoothing before segmentation: region means already average the pixel noise out.
    "smooth_sigma": 0.0,
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "image": {
        **_PIXEL_DEFAULTS,
        # Chosen on the development half of tools/swag_study.py (12 photos + 12 composites,
        # EfficientNet-Lite0): the positive part of the plain gradient gained +0.123 +- 0.073
        # (paired, per photo) in (insertion - deletion) + ROAD over gradient x input's |.|; on
        # the held-out half deletion 0.171 -> 0.133 and ROAD 0.031 -> 0.063 (README, "SWAG on the
        # trusted instrument"). The other sources gained nothing from it (< 0.01).
        "attribution": "gradient",
        "sign": "positive",
        # ~100 regions on a 224 px input: regions of ~22x22 px, about the size of a ResNet's
        # effective receptive-field blob; the paper stresses that the number is tunable.
        "n_segments": 100,
        # The usual SLIC value for Lab images (scikit-image's examples and docs).
        "compactness": 10.0,
        # Light pre-smoothing so that JPEG noise and fine texture do not fragment the regions.
        "sigma": 1.0,
        "gradient_weight": 0.0,  # unused for "image"
        "clip_quantile": 1.0,  # unused for "image"
    },
    "gradient": {
        **_PIXEL_DEFAULTS,
        "n_segments": 100,
        # [0, 1] input: 10 Lab units <-> 0.1 (see the module docstring). Smaller values follow the
        # gradient more closely but give irregular regions and fewer of them than n_segments.
        "compactness": 0.1,
        # Raw gradients are pixel-noisy (checkerboards from strided convolutions): smooth more
        # than an image before clustering. With 0.1 / 3.0 the regions of a real EfficientNet-Lite0
        # gradient (224 px) follow its blobs yet stay compact; 0.03 or sigma 1 fragment them, 0.3
        # gives a near-grid. (Smoothing happens before normalising, see ``superpixels``.)
        "sigma": 3.0,
        "gradient_weight": 1.0,  # unused for "gradient" (the map is the only channel)
        # Gradient maps are heavy-tailed: a plain min-max lets a few pixels squash the rest of
        # the map to ~0 and SLIC then returns a grid; clip at the 99th percentile first.
        "clip_quantile": 0.99,
    },
    "combined": {
        **_PIXEL_DEFAULTS,
        "n_segments": 100,
        "compactness": 0.1,  # [0, 1] inputs, as for "gradient"
        # With 1 the regions fragment along gradient noise; 3 measured best of {1, 2, 3}
        # (tools/tune_swag.py: insertion 0.283 -> 0.290, deletion 0.199 -> 0.194 against 2).
        "sigma": 3.0,
        # The gradient channel counts twice as much as one RGB channel, so that a strong gradient
        # edge can outweigh a colour edge (three channels) but colour still shapes the regions.
        "gradient_weight": 2.0,
        "clip_quantile": 0.99,
    },
}


@dataclass(frozen=True)
class SwagResult:
    """What ``swag()`` returns.

    saliency: (H, W) float32 in [0, 1], each pixel its region's normalised score.
    labels: (H, W) int superpixel labels, starting at 0.
    pixel_map: (H, W) float32 pixel map the regions were scored with.
    params: every parameter used (source, pixel map and SLIC options), JSON-serialisable.
    """

    saliency: np.ndarray
    labels: np.ndarray
    pixel_map: np.ndarray
    params: dict[str, Any]


def _check_hw(name: str, array: np.ndarray, ndim: int) -> None:
    """Raise ValueError unless ``array`` has ``ndim`` dimensions (a caller bug, not user error)."""
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")


def pixel_map(
    grad: np.ndarray,
    image: np.ndarray | None = None,
    *,
    model_input: np.ndarray | None = None,
    attribution: str = "gradient",
    sign: str = "abs",
    reduce: str = "max",
    smooth_sigma: float = 0.0,
) -> np.ndarray:
    """Reduce a channels-last gradient (H, W, C) to a pixel map (H, W) float32.

    attribution: "gradient" uses v = grad; "gradient_x_input" uses v = grad * x, where x is
        ``model_input`` (H, W, C), the values the model actually saw (normalised), or, when it is
        None, ``image`` (H, W, C), correct only for models that take [0, 1] RGB.
    reduce and sign, per pixel over the C channels of v:
        "sum": s = sum_c v_c, then sign: "abs" |s|, "positive" max(s, 0), "signed" s.
        "max": "abs" max_c |v_c|, "positive" max_c max(v_c, 0), "signed" the v_c of largest |v_c|.
        "l2":  "abs" sqrt(sum_c v_c^2), "positive" sqrt(sum_c max(v_c, 0)^2),
               "signed" sign(sum_c v_c) * sqrt(sum_c v_c^2).
    smooth_sigma: standard deviation in pixels of a Gaussian applied to the (H, W) map; 0 = none.
    """
    for name, value in (("attribution", attribution), ("sign", sign), ("reduce", reduce)):
        require(CHECKS[name], name, value)
    smooth_sigma = require(CHECKS["smooth_sigma"], "smooth_sigma", smooth_sigma)
    g = np.asarray(grad, dtype=np.float32)
    _check_hw("grad", g, 3)
    if attribution == "gradient_x_input":
        x = model_input if model_input is not None else image
        if x is None:
            raise ValueError("attribution 'gradient_x_input' needs model_input (or image)")
        x = np.asarray(x, dtype=np.float32)
        if x.shape != g.shape:
            raise ValueError(f"input shape {x.shape} differs from gradient shape {g.shape}")
        v = g * x
    else:
        v = g
    if reduce == "sum":
        s = v.sum(axis=-1)
        out = np.abs(s) if sign == "abs" else np.maximum(s, 0) if sign == "positive" else s
    elif sign == "signed":
        if reduce == "max":
            idx = np.abs(v).argmax(axis=-1)[..., None]
            out = np.take_along_axis(v, idx, axis=-1)[..., 0]
        else:
            out = np.sign(v.sum(axis=-1)) * np.sqrt((v * v).sum(axis=-1))
    else:
        a = np.abs(v) if sign == "abs" else np.maximum(v, 0)
        out = a.max(axis=-1) if reduce == "max" else np.sqrt((a * a).sum(axis=-1))
    if smooth_sigma > 0:
        out = _smooth(out, smooth_sigma)
    return np.ascontiguousarray(out, dtype=np.float32)


def normalize_map(pmap: np.ndarray, clip_quantile: float = 1.0) -> np.ndarray:
    """Min-max normalise an (H, W) map to [0, 1] float32 (constant -> zeros).

    clip_quantile < 1 first clips the map at that quantile (robust to heavy-tailed gradients);
    1.0 is a plain min-max.
    """
    m = np.asarray(pmap, dtype=np.float32)
    if clip_quantile < 1.0:
        m = np.minimum(m, np.quantile(m, clip_quantile))
    lo, hi = float(m.min()), float(m.max())
    if not hi > lo:
        return np.zeros(m.shape, np.float32)
    return ((m - lo) / (hi - lo)).astype(np.float32)


def _check_image(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as float32 (H, W, 3), or raise ValueError if it is not RGB in [0, 1]."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {img.shape}")
    if img.size and (img.min() < -1e-3 or img.max() > 1 + 1e-3):
        raise ValueError("image values must lie in [0, 1] (float RGB), not e.g. 0..255")
    return np.clip(img, 0.0, 1.0)


def superpixels(
    image: np.ndarray | None,
    pmap: np.ndarray | None,
    *,
    source: str = "image",
    n_segments: int | None = None,
    compactness: float | None = None,
    sigma: float | None = None,
    gradient_weight: float | None = None,
    clip_quantile: float | None = None,
) -> np.ndarray:
    """SLIC superpixels (H, W) int64, labels from 0, connected regions.

    image: (H, W, 3) float RGB in [0, 1] (needed for "image" and "combined").
    pmap: (H, W) pixel map (needed for "gradient" and "combined"); normalised here to [0, 1]
        after clipping at ``clip_quantile``.
    source: "image", "gradient" or "combined" (see the module docstring).
    n_segments, compactness: passed to ``skimage.segmentation.slic``.
    sigma: Gaussian pre-smoothing in pixels. For "image" it is SLIC's own ``sigma``; for
        "gradient" and "combined" the map (and the image channels) are smoothed here, before the
        map is normalised, and SLIC runs with sigma=0, so the map SLIC sees always spans [0, 1].
    gradient_weight: scale of the map channel in "combined" (RGB channels span [0, 1]).
    clip_quantile: quantile the map is clipped at before min-max normalising (1.0 = none).
    None for any of them takes ``DEFAULTS[source]``.
    """
    require(Choice(SOURCES), "source", source)
    p = _resolve_slic(source, n_segments, compactness, sigma, gradient_weight, clip_quantile)
    common = dict(
        n_segments=p["n_segments"],
        compactness=p["compactness"],
        sigma=p["sigma"],
        start_label=0,
        enforce_connectivity=True,
    )
    if source in ("image", "combined"):
        if image is None:
            raise ValueError(f"source {source!r} needs the image")
        img = _check_image(image)
    if source == "image":
        labels = slic(img, channel_axis=-1, convert2lab=True, **common)
        return labels.astype(np.int64, copy=False)
    if pmap is None:
        raise ValueError(f"source {source!r} needs the pixel map")
    _check_hw("pmap", np.asarray(pmap), 2)
    # Smooth first, normalise second, then SLIC without its own smoothing: this way the map always
    # spans [0, 1] when SLIC sees it, so compactness means the same whatever sigma is.
    g = normalize_map(_smooth(np.asarray(pmap, np.float32), p["sigma"]), p["clip_quantile"])
    common["sigma"] = 0.0
    if source == "gradient":
        labels = slic(g, channel_axis=None, **common)
    else:
        if g.shape != img.shape[:2]:
            raise ValueError(f"pixel map shape {g.shape} differs from image shape {img.shape[:2]}")
        stacked = np.concatenate(
            [_smooth(img, p["sigma"]), g[..., None] * p["gradient_weight"]], axis=-1
        )
        labels = slic(stacked, channel_axis=-1, convert2lab=False, **common)
    return labels.astype(np.int64, copy=False)


def _smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing over the two spatial axes of (H, W) or (H, W, C); sigma 0 = none."""
    if sigma <= 0:
        return a
    return ndimage.gaussian_filter(a, sigma=(sigma, sigma) + (0,) * (a.ndim - 2), mode="nearest")


def _resolve_slic(source, n_segments, compactness, sigma, gradient_weight, clip_quantile):
    """Fill None SLIC parameters from DEFAULTS[source] and validate them; return a dict."""
    given = {"n_segments": n_segments, "compactness": compactness, "sigma": sigma,
             "gradient_weight": gradient_weight, "clip_quantile": clip_quantile}
    return {name: require(CHECKS[name], name, DEFAULTS[source][name] if value is None else value)
            for name, value in given.items()}


def region_scores(
    pmap: np.ndarray, labels: np.ndarray, *, top_k: int | None = None
) -> np.ndarray:
    """Region-level map (H, W) float32 in [0, 1] from a pixel map (H, W) and labels (H, W).

    Each pixel takes the mean of ``pmap`` over its region (mean, so large regions are not
    favoured); the map is then min-max normalised over the regions (constant -> zeros).
    top_k: keep only the k highest-scoring regions (ties broken by lower label), others set to 0.
    """
    p = np.asarray(pmap, dtype=np.float64)
    lab = np.asarray(labels)
    if p.shape != lab.shape or p.ndim != 2:
        raise ValueError(f"pmap {p.shape} and labels {lab.shape} must be the same (H, W) shape")
    if not np.issubdtype(lab.dtype, np.integer) or (lab.size and lab.min() < 0):
        raise ValueError("labels must be non-negative integers")
    top_k = require(Optional(CHECKS["top_k"]), "top_k", top_k)
    flat = lab.ravel()
    counts = np.bincount(flat)
    sums = np.bincount(flat, weights=p.ravel(), minlength=counts.size)
    present = counts > 0
    means = np.zeros(counts.size)
    means[present] = sums[present] / counts[present]
    lo, hi = means[present].min(), means[present].max()
    scores = (means - lo) / (hi - lo) if hi > lo else np.zeros_like(means)
    if top_k is not None:
        ids = np.flatnonzero(present)
        order = ids[np.argsort(-means[ids], kind="stable")]
        keep = np.zeros(counts.size, bool)
        keep[order[:top_k]] = True
        scores = np.where(keep, scores, 0.0)
    return scores[lab].astype(np.float32)


def swag(
    grad: np.ndarray,
    image: np.ndarray,
    *,
    model_input: np.ndarray | None = None,
    source: str = "image",
    attribution: str | None = None,
    sign: str | None = None,
    reduce: str | None = None,
    smooth_sigma: float | None = None,
    n_segments: int | None = None,
    compactness: float | None = None,
    sigma: float | None = None,
    gradient_weight: float | None = None,
    clip_quantile: float | None = None,
    top_k: int | None = None,
    scales: int = 1,
) -> SwagResult:
    """The SWAG map of one image.

    grad: (H, W, C) float gradient of the class score w.r.t. the model input, channels-last.
    image: (H, W, 3) float RGB in [0, 1] at the same resolution.
    model_input: (H, W, C) values the model saw, for attribution="gradient_x_input".
    Any option left None takes ``DEFAULTS[source]``: pixel-map options (attribution, sign,
    reduce, smooth_sigma) see ``pixel_map``; SLIC options (n_segments, compactness, sigma,
    gradient_weight, clip_quantile) see ``superpixels``; top_k see ``region_scores`` (None keeps
    every region, else k per segmentation). scales k: the mean of the region maps of k
    segmentations with n_segments * 2**j regions (j = 0 .. k-1); labels are the first one's.
    Returns a SwagResult: saliency (H, W) float32 in [0, 1], labels, the pixel map,
    and params (every value used, the unused ones of a source included, plus
    ``used_model_input``).
    """
    require(Choice(SOURCES), "source", source)
    d = DEFAULTS[source]
    pix = {
        "attribution": d["attribution"] if attribution is None else attribution,
        "sign": d["sign"] if sign is None else sign,
        "reduce": d["reduce"] if reduce is None else reduce,
        "smooth_sigma": d["smooth_sigma"] if smooth_sigma is None else smooth_sigma,
    }
    g = np.asarray(grad)
    img = _check_image(image)
    _check_hw("grad", g, 3)
    if g.shape[:2] != img.shape[:2]:
        raise ValueError(f"gradient {g.shape[:2]} and image {img.shape[:2]} sizes differ")
    slic_p = _resolve_slic(source, n_segments, compactness, sigma, gradient_weight, clip_quantile)
    scales = require(CHECKS["scales"], "scales", scales)
    pmap = pixel_map(g, img, model_input=model_input, **pix)
    counts = [slic_p["n_segments"] * 2**j for j in range(scales)]
    maps, first = [], None
    for count in counts:
        labels = superpixels(img, pmap, source=source, **{**slic_p, "n_segments": count})
        maps.append(region_scores(pmap, labels, top_k=top_k))
        first = labels if first is None else first
    saliency = maps[0] if scales == 1 else np.mean(maps, axis=0, dtype=np.float64)
    params = {
        "source": source,
        **pix,
        "smooth_sigma": float(pix["smooth_sigma"]),
        **slic_p,
        "top_k": None if top_k is None else int(top_k),
        "scales": scales,
        "segment_counts": counts,
        "used_model_input": bool(model_input is not None),
    }
    return SwagResult(saliency=saliency.astype(np.float32), labels=first, pixel_map=pmap,
                      params=params)


def average_gradient(x: np.ndarray, grad_fn: GradFn, *, average: str, samples: int = 16,
                     noise: float = 0.15, seed: int = 0, batch_size: int = 16) -> np.ndarray:
    """The gradient of the class score averaged before pooling; shaped like ``x`` (any layout).

    "smoothgrad": mean gradient over ``samples`` copies x + N(0, (noise * (max x - min x))^2),
    exactly ``swag_onnx.methods.gradients.smoothgrad`` (same seed, same noise).
    "integrated": mean gradient along the straight path from 0 to x, sum_k w_k grad(a_k x), with
    the trapezoid nodes and weights of ``ig_quadrature(samples)`` (a_0 = 0 ... a_{n-1} = 1); x
    times it is the integrated-gradients attribution from a zero baseline.
    grad_fn: batch (N, *x.shape) -> (scores (N,), gradients (N, *x.shape)).
    """
    require(Choice(AVERAGES[1:]), "average", average)
    samples = require(CHECKS["average_samples"], "average_samples", samples)
    batch_size = require(BATCH, "batch_size", batch_size)
    x = np.asarray(x)
    if average == "smoothgrad":
        return smoothgrad(x, grad_fn, samples=samples,
                          noise=require(CHECKS["average_noise"], "average_noise", noise),
                          batch_size=batch_size, seed=require(SEED, "seed", seed))
    alphas, weights = ig_quadrature(samples)
    total = np.zeros(x.shape, np.float64)
    x64 = x.astype(np.float64)
    for start in range(0, samples, batch_size):
        a = alphas[start:start + batch_size]
        batch = (a.reshape((-1,) + (1,) * x.ndim) * x64[None]).astype(np.float32)
        grads = np.asarray(grad_fn(batch)[1], np.float64)
        if grads.shape != batch.shape:
            raise ValueError(f"grad_fn returned gradients {grads.shape} for a batch {batch.shape}")
        total += np.tensordot(weights[start:start + batch_size], grads, axes=1)
    return total.astype(np.float32)


# ---------------------------------------------------------------------------------- registry

def run_swag(inputs: Inputs, source: str, *, average: str = "none", average_samples: int = 16,
             average_noise: float = 0.15, seed: int = 0, batch_size: int = 16,
             **options) -> Output:
    """SWAG of one image from the registry's Inputs: ``inputs.input_grad`` (average "none") or
    ``average_gradient`` through ``inputs.grad_fn``; options: those of ``swag``."""
    channels_last = (lambda a: a) if inputs.channel_axis == -1 else \
        (lambda a: a.transpose(1, 2, 0))
    if average == "none":
        grad = inputs.input_grad
    else:
        if inputs.grad_fn is None:
            raise ValueError(f"average {average!r} needs an entry that declares grad_fn")
        grad = average_gradient(inputs.x, inputs.grad_fn, average=average,
                                samples=average_samples, noise=average_noise, seed=seed,
                                batch_size=batch_size)
    result = swag(channels_last(grad), inputs.image.astype(np.float32) / 255.0,
                  model_input=channels_last(inputs.x), source=source, **options)
    info = result.params if average == "none" else {
        **result.params, "average": average, "average_samples": average_samples,
        **({"average_noise": average_noise, "seed": seed} if average == "smoothgrad" else {})}
    return Output(result.saliency, result.labels, info)


def swag_needs(params: dict[str, Any]) -> frozenset[str]:
    """What a SWAG entry reads with `params`: the shared run's gradient, or, averaged, a
    gradient function (extra runs); the image always (SLIC, pixel maps)."""
    gradient = "input_grad" if params["average"] == "none" else "grad_fn"
    return frozenset({gradient, "image"})


PER_SOURCE = "per source, see swag_onnx.methods.swag.DEFAULTS"
SWAG_SUMMARY = {
    "image": "SWAG: mean pixel map over SLIC superpixels of the photo (Lab)",
    "gradient": "SWAG: mean pixel map over SLIC superpixels of the gradient map",
    "combined": "SWAG: mean pixel map over SLIC superpixels of the photo and the gradient map",
}


def _register(source: str) -> None:
    def run(inputs: Inputs, *,
            attribution: Annotated[Any, Optional(CHECKS["attribution"]), "SWAG pixel map: "
                                   "gradient or gradient_x_input"] = None,
            sign: Annotated[Any, Optional(CHECKS["sign"]), "SWAG: abs, positive or signed"]
            = None,
            reduce: Annotated[Any, Optional(CHECKS["reduce"]), "SWAG channel reduction: max, "
                              "sum or l2"] = None,
            smooth_sigma: Annotated[Any, Optional(CHECKS["smooth_sigma"]), "SWAG: Gaussian "
                                    "smoothing of the pixel map"] = None,
            n_segments: Annotated[Any, Optional(CHECKS["n_segments"]), "SLIC: number of "
                                  "superpixels"] = None,
            compactness: Annotated[Any, Optional(CHECKS["compactness"]), "SLIC compactness"]
            = None,
            sigma: Annotated[Any, Optional(CHECKS["sigma"]), "SLIC pre-smoothing"] = None,
            gradient_weight: Annotated[Any, Optional(CHECKS["gradient_weight"]), "weight of "
                                       "the gradient channel (combined)"] = None,
            clip_quantile: Annotated[Any, Optional(CHECKS["clip_quantile"]), "quantile the "
                                     "gradient map is clipped at before SLIC"] = None,
            top_k: Annotated[Any, Optional(CHECKS["top_k"]), "keep only the k best regions"]
            = None,
            scales: Annotated[int, CHECKS["scales"], "SWAG multi-scale: average the region maps "
                              "of this many segmentations, n_segments x 1, 2, 4, ..."] = 1,
            average: Annotated[str, CHECKS["average"], "SWAG: average the gradient before "
                               "pooling: none (the one gradient run), smoothgrad (noisy copies) "
                               "or integrated (path from a zero input); the last two make "
                               "--average-samples gradient runs and exclude --meta"] = "none",
            average_samples: Annotated[int, CHECKS["average_samples"], "SWAG --average: noisy "
                                       "copies or path points"] = 16,
            average_noise: Annotated[float, CHECKS["average_noise"], "SWAG --average "
                                     "smoothgrad: noise std, fraction of the input range"]
            = 0.15,
            seed: Annotated[int, SEED, "random seed"] = 0,
            batch_size: Annotated[int, BATCH, BATCH_HELP] = 16,
            ) -> Output:
        return run_swag(inputs, source, attribution=attribution, sign=sign, reduce=reduce,
                        smooth_sigma=smooth_sigma, n_segments=n_segments,
                        compactness=compactness, sigma=sigma, gradient_weight=gradient_weight,
                        clip_quantile=clip_quantile, top_k=top_k, scales=scales,
                        average=average, average_samples=average_samples,
                        average_noise=average_noise, seed=seed, batch_size=batch_size)

    run.__name__ = f"_swag_{source}"
    method(f"swag-{source}", needs={"input_grad", "image"}, needs_for=swag_needs, meta=True,
           regions="SLIC superpixels", summary=SWAG_SUMMARY[source],
           reference="Hartley et al., WACV 2021 (this project's reading: README, SWAG)")(run)


for _source in SOURCES:
    _register(_source)
alias("swag", lambda options: f"swag-{Choice(SOURCES)('superpixels', options.get('superpixels', 'image'))}")
