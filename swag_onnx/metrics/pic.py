"""Performance information curves (Kapishnikov et al., XRAI, ICCV 2019): SIC and AIC.

Follows the protocol of PAIR's ``saliency`` package (``saliency/metrics/pic.py``), re-implemented:

- Images are uint8 RGB (H, W, 3) at the MODEL input resolution; the model function is
  ``probabilities(batch) -> (N, K)`` softmax probabilities with ``batch`` uint8 RGB (N, H, W, 3):
  the caller wraps its own preprocessing (normalisation, layout) inside that function.
- Information content: the size in bytes of the image compressed as lossless WebP
  (``cv2.imencode(".webp", bgr, [IMWRITE_WEBP_QUALITY, WEBP_QUALITY])``: OpenCV encodes
  losslessly for a quality above 100; the array is handed over in OpenCV's BGR order so that the
  encoder sees the RGB image). The reference uses PIL's lossless WebP with ``quality=100``
  (compression effort): absolute byte counts differ slightly, only their normalised ratios matter.
- Blurred start (the "fully blurred" image): a random ``RANDOM_MASK_FRACTION`` (1 %) of the
  pixels, ``int(H * W * fraction)`` of them drawn without replacement by
  ``numpy.random.default_rng(seed)``, plus the four corners always, keep their colour; every other
  pixel is linearly interpolated, per channel, barycentric in the Delaunay triangle of known pixels
  that contains it (what ``scipy.interpolate.griddata(method="linear")`` computes; the triangles
  are scanned directly because scipy's point location can take seconds on pixel lattices), then
  rounded (half to even, from float32 as the reference) to uint8. A pixel outside every triangle
  (never: the corners are known) would take the image's mean colour. There is no blur kernel.
- Threshold images (``reveal="interpolate"``, the reference): for each fraction ``t`` in
  ``thresholds`` the top ``k = floor(t * H * W + 0.5)`` pixels by saliency (ranked as
  ``insertion_deletion.pixel_order``: highest first, ties by the lower row-major index) join the
  random pixels as known pixels and the image is re-interpolated from all of them. The reference
  takes ``saliency >= quantile(saliency, 1 - t)`` instead: every tied pixel and, for distinct
  values, ``floor(1 + (H*W - 1) t)`` pixels (the same count or one more). ``reveal="paste"``
  is a cheaper variant (no triangulation per threshold): the top pixels are copied onto the
  blurred start.
- Scores: SIC uses the probability of class ``cls`` (default: the top-1 class on the original
  image, ties to the lower index); AIC uses 1.0 when the top-1 class (``argmax``, ties to the lower
  index) is ``cls``, else 0.0. All images of one call (original, blurred start, one per threshold)
  go through ``probabilities`` once, ``batch_size`` at a time; SIC and AIC share these passes.
- Skipped images (where the reference raises ``ComputePicMetricError``): ``PicResult.skipped``
  says why the curve is undefined: the score on the original is below ``min_pred_value``
  (``MIN_PRED_VALUE`` = 0.8, the reference default; for AIC: ``cls`` is not the top-1 class), the
  blurred start is not smaller in bytes than the original, or the score on the blurred start is
  not below the original's. ``x`` stays the grid; ``y``, the points and ``auc`` are NaN.
- Normalisation: information ``(bytes - bytes_blurred) / (bytes_full - bytes_blurred)`` and score
  ``(s - s_blurred) / (s_full - s_blurred)`` (the reference normalises the score by the blurred
  start's too, not only by the original's), both clipped to [0, 1]. With ``keep_monotonous``
  (``KEEP_MONOTONOUS`` = True, as in the paper) the score is the running maximum in threshold order.
- Curve: the points (0, 0), then one (information, score) per threshold, then (1, 1), sorted by
  information (stable, so threshold order among equal abscissae), joined by straight lines, are
  sampled at ``NUM_DATA_POINTS`` (1000) abscissae ``0, 1/1000, ..., 0.999`` plus the point (1, 1).
  At an abscissa shared by several points the value is that of the last of them (right-continuous;
  the reference's ``scipy.interpolate.interp1d`` returns NaN exactly there). AUC: trapezoid rule
  on the sampled curve. ``aggregate_pic`` takes the median (the reference default) or the mean of
  the sampled curves of the images that were not skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import cv2
import numpy as np
from scipy.spatial import Delaunay

from swag_onnx.metrics.insertion_deletion import auc, pixel_order
from swag_onnx.validation import Int, require

RgbProbabilityFn = Callable[[np.ndarray], np.ndarray]

DEFAULT_THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5,
                      0.75)  # the reference's example thresholds (fractions of pixels revealed)
RANDOM_MASK_FRACTION = 0.01  # fraction of original pixels kept in the blurred start
WEBP_QUALITY = 101  # OpenCV: > 100 means lossless WebP
NUM_DATA_POINTS = 1000  # sampled abscissae before the final point x = 1
MIN_PRED_VALUE = 0.8  # skip an image whose score on the original is lower
KEEP_MONOTONOUS = True  # score = running maximum over the thresholds
DEFAULT_BATCH_SIZE = 16
KINDS = ("sic", "aic")
REVEALS = ("interpolate", "paste")
AGGREGATIONS = ("median", "mean")
_LOCATE_CHUNK = 1 << 19  # candidate pixels per step of the triangle scan

__all__ = [
    "AggregatePic",
    "PicCurves",
    "PicResult",
    "aggregate_pic",
    "blurred_start",
    "information_content",
    "interpolate_image",
    "pic_curve",
    "pic_curves",
    "random_mask",
]


@dataclass(frozen=True)
class PicResult:
    """One performance information curve for one image and saliency map.

    kind: "sic" or "aic"; cls: the class scored; skipped: None, or why the curve is undefined.
    x, y: float64 (P,) the sampled curve (P = num_points + 1; y NaN when skipped); auc: float.
    thresholds (T,): fractions requested; revealed (T,) int: salient pixels revealed at each.
    information (T,) int: WebP bytes of each threshold image; information_blurred / _full: bytes of
    the blurred start and of the original. scores (T,): raw score of each threshold image (the
    probability of cls for SIC, 0.0/1.0 for AIC); score_blurred / score_full likewise.
    points_x, points_y (T,): normalised information and (monotone) normalised score per threshold.
    """

    kind: str
    cls: int
    x: np.ndarray
    y: np.ndarray
    auc: float
    thresholds: np.ndarray
    revealed: np.ndarray
    information: np.ndarray
    information_blurred: int
    information_full: int
    scores: np.ndarray
    score_blurred: float
    score_full: float
    points_x: np.ndarray
    points_y: np.ndarray
    skipped: str | None = None


class PicCurves(NamedTuple):
    """SIC and AIC of one image from the same forward passes."""

    sic: PicResult
    aic: PicResult


class AggregatePic(NamedTuple):
    """Aggregate curve over images: x, y (P,), auc, count of images used, skipped images."""

    x: np.ndarray
    y: np.ndarray
    auc: float
    count: int
    skipped: int


# ---------------------------------------------------------------------------------- the images

def _rgb(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image)
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {x.dtype} {x.shape}")
    if x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"the image must be at least 2 x 2 pixels, got {x.shape[:2]}")
    return x


def information_content(rgb_uint8: np.ndarray) -> int:
    """Bytes of the uint8 RGB image (H, W, 3) compressed as lossless WebP."""
    x = _rgb(rgb_uint8)
    ok, buffer = cv2.imencode(".webp", cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2BGR),
                              [cv2.IMWRITE_WEBP_QUALITY, WEBP_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode the image as WebP")
    return int(buffer.size)


def random_mask(height: int, width: int, *, seed: int | None = 0,
                rng: np.random.Generator | None = None,
                fraction: float = RANDOM_MASK_FRACTION) -> np.ndarray:
    """Bool (height, width): ``int(height * width * fraction)`` pixels drawn without replacement
    from ``rng``, or ``numpy.random.default_rng(seed)`` when rng is None."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], got {fraction!r}")
    rng = np.random.default_rng(seed) if rng is None else rng
    mask = np.zeros(height * width, bool)
    mask[rng.choice(mask.size, size=int(mask.size * fraction), replace=False)] = True
    return mask.reshape(height, width)


def interpolate_image(rgb_uint8: np.ndarray, known: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): the pixels where ``known`` (bool (H, W)) is True, and the four corners, keep
    their colour; the others are linearly interpolated from them (Delaunay, barycentric)."""
    x = _rgb(rgb_uint8)
    h, w = x.shape[:2]
    known = np.array(known, dtype=bool)
    if known.shape != (h, w):
        raise ValueError(f"known mask has shape {known.shape}, the image is {(h, w)}")
    known[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
    if known.all():
        return x.copy()
    tri = Delaunay(np.argwhere(known).astype(np.float64))
    colours = x[known].astype(np.float64)  # (n, 3), in the order of the triangulation's points
    values = np.empty((h * w, 3))
    values[:] = x.reshape(-1, 3).mean(axis=0)  # outside every triangle (never: corners known)
    for pixels, simplex, weights in _locate(tri, h, w):
        inside = ~known.reshape(-1)[pixels]
        values[pixels[inside]] = np.einsum(
            "qv,qvc->qc", weights[inside], colours[tri.simplices[simplex[inside]]])
    out = x.copy()
    # rounded from float32 as the reference (which interpolates into a float32 image)
    out[~known] = np.round(values.reshape(h, w, 3)[~known].astype(np.float32)).astype(np.uint8)
    return out


def _locate(tri: Delaunay, h: int, w: int, chunk: int = _LOCATE_CHUNK):
    """Yield (pixels, simplex, barycentric weights (Q, 3)) for the pixels (flat indices) inside
    or on each triangle of ``tri`` (vertices at integer (row, col)), scanning the triangles'
    bounding boxes ``chunk`` candidate pixels at a time. The inside test is exact (integer
    arithmetic); degenerate (zero-area) triangles are passed over."""
    v = tri.points[tri.simplices].astype(np.int64)  # (S, 3, 2) rows, cols
    e0, e1 = v[:, 0] - v[:, 2], v[:, 1] - v[:, 2]
    det = e0[:, 0] * e1[:, 1] - e0[:, 1] * e1[:, 0]
    lo = v.min(axis=1)
    extent = v.max(axis=1) - lo + 1
    sizes = np.where(det != 0, extent.prod(axis=1), 0)
    ends = np.cumsum(sizes)
    first = 0
    while first < len(sizes):
        base = ends[first - 1] if first else 0
        last = max(first + 1, int(np.searchsorted(ends, base + chunk, "right")))
        ids = np.arange(first, last)
        owner = np.repeat(ids, sizes[ids])
        k = np.arange(owner.size) - np.repeat(ends[ids] - sizes[ids] - base, sizes[ids])
        rows = lo[owner, 0] + k // extent[owner, 1]
        cols = lo[owner, 1] + k % extent[owner, 1]
        dr, dc = rows - v[owner, 2, 0], cols - v[owner, 2, 1]
        d = det[owner]
        n0 = dr * e1[owner, 1] - dc * e1[owner, 0]  # Cramer: b0 = n0 / det, b1 = n1 / det
        n1 = e0[owner, 0] * dc - e0[owner, 1] * dr
        sign = np.sign(d)
        hit = (n0 * sign >= 0) & (n1 * sign >= 0) & ((d - n0 - n1) * sign >= 0)
        b = np.stack([n0[hit], n1[hit], (d - n0 - n1)[hit]], axis=1) / d[hit, None]
        yield rows[hit] * w + cols[hit], owner[hit], b
        first = last


def blurred_start(rgb_uint8: np.ndarray, *, seed: int | None = 0,
                  rng: np.random.Generator | None = None,
                  fraction: float = RANDOM_MASK_FRACTION) -> np.ndarray:
    """The "fully blurred" start, uint8 (H, W, 3): ``interpolate_image`` from a ``random_mask``
    (seed / rng / fraction as there); deterministic given the seed."""
    x = _rgb(rgb_uint8)
    return interpolate_image(x, random_mask(*x.shape[:2], seed=seed, rng=rng, fraction=fraction))


# ---------------------------------------------------------------------------------- the curves

def _thresholds(thresholds: Sequence[float]) -> np.ndarray:
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or t.size < 1 or not np.all(np.isfinite(t)):
        raise ValueError("thresholds must be a non-empty sequence of numbers")
    if t[0] <= 0 or t[-1] > 1 or np.any(np.diff(t) <= 0):
        raise ValueError(f"thresholds must increase strictly within (0, 1], got {t.tolist()}")
    return t


def _sample_curve(px: np.ndarray, py: np.ndarray, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(0, 0) + points + (1, 1), stable-sorted by x, linear between, sampled at k / num_points
    (k < num_points) and at 1 (value 1); right-continuous where abscissae repeat."""
    xs = np.concatenate([[0.0], px, [1.0]])
    ys = np.concatenate([[0.0], py, [1.0]])
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    grid = np.arange(num_points) / num_points
    j = np.clip(np.searchsorted(xs, grid, side="right") - 1, 0, xs.size - 2)
    span = xs[j + 1] - xs[j]
    t = np.divide(grid - xs[j], span, out=np.zeros_like(grid), where=span > 0)
    return np.append(grid, 1.0), np.append(ys[j] + t * (ys[j + 1] - ys[j]), 1.0)


def _result(kind, cls, raw, info, thresholds, revealed, min_pred_value, keep_monotonous,
            num_points) -> PicResult:
    """raw / info: (T + 2,) scores and bytes of [original, blurred, threshold images...]."""
    s_full, s_blur, scores = float(raw[0]), float(raw[1]), raw[2:]
    b_full, b_blur, sizes = int(info[0]), int(info[1]), info[2:]
    skipped = None
    if s_full < min_pred_value:
        skipped = (f"score on the original image {s_full:.4g} is below min_pred_value "
                   f"{min_pred_value:g}")
    elif b_blur >= b_full:
        skipped = (f"the blurred start ({b_blur} bytes) is not smaller than the original "
                   f"({b_full} bytes)")
    elif s_blur >= s_full:
        skipped = (f"score on the blurred start {s_blur:.4g} is not below the original's "
                   f"{s_full:.4g}")
    grid = np.append(np.arange(num_points) / num_points, 1.0)
    nan = np.full(len(scores), np.nan)
    if skipped is None:
        px = np.clip((sizes - b_blur) / (b_full - b_blur), 0.0, 1.0)
        py = np.clip((scores - s_blur) / (s_full - s_blur), 0.0, 1.0)
        if keep_monotonous:
            py = np.maximum.accumulate(py)
        x, y = _sample_curve(px, py, num_points)
        area = auc(y, x)
    else:
        px, py, x, y, area = nan, nan.copy(), grid, np.full(grid.size, np.nan), float("nan")
    return PicResult(kind=kind, cls=cls, x=x, y=y, auc=area, thresholds=thresholds.copy(),
                     revealed=revealed.copy(), information=np.asarray(sizes, np.int64),
                     information_blurred=b_blur, information_full=b_full,
                     scores=np.asarray(scores, np.float64), score_blurred=s_blur,
                     score_full=s_full, points_x=px, points_y=py, skipped=skipped)


def pic_curves(rgb_uint8: np.ndarray, saliency: np.ndarray, probabilities: RgbProbabilityFn,
               cls: int | None = None, *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
               batch_size: int = DEFAULT_BATCH_SIZE, seed: int | None = 0,
               rng: np.random.Generator | None = None,
               mask_fraction: float = RANDOM_MASK_FRACTION, reveal: str = "interpolate",
               min_pred_value: float = MIN_PRED_VALUE, keep_monotonous: bool = KEEP_MONOTONOUS,
               num_points: int = NUM_DATA_POINTS) -> PicCurves:
    """SIC and AIC of one image from one set of forward passes (see the module docstring).

    rgb_uint8: uint8 RGB (H, W, 3) at the model input resolution. saliency: (H, W) map on the same
    grid, higher = more important. probabilities: uint8 RGB batch (N, H, W, 3) -> (N, K) softmax
    probabilities (the caller's preprocessing inside). cls: class index; None = top-1 class on
    the original (taken from the first batch, no extra pass). thresholds: increasing fractions
    in (0, 1]. batch_size: images per model call (T + 2 images in all, at most batch_size held).
    seed / rng / mask_fraction: the blurred start's random pixels (``random_mask``); use the same
    seed for every method on one image. reveal: "interpolate" (reference) or "paste".
    min_pred_value, keep_monotonous, num_points: see the module docstring.
    Returns PicCurves(sic, aic).
    """
    x = _rgb(rgb_uint8)
    h, w = x.shape[:2]
    order = pixel_order(saliency)
    if np.shape(saliency) != (h, w):
        raise ValueError(f"saliency has shape {np.shape(saliency)}, the image is {(h, w)}")
    if reveal not in REVEALS:
        raise ValueError(f"reveal must be one of {', '.join(REVEALS)}, got {reveal!r}")
    t = _thresholds(thresholds)
    batch_size = require(Int(1), "batch_size", batch_size)
    num_points = require(Int(1), "num_points", num_points)
    revealed = np.minimum(np.floor(t * h * w + 0.5).astype(np.int64), h * w)
    known = random_mask(h, w, seed=seed, rng=rng, fraction=mask_fraction)
    start = interpolate_image(x, known)

    def image(i: int) -> np.ndarray:  # 0: original, 1: blurred start, 2...: thresholds
        if i < 2:
            return x if i == 0 else start
        top = order[:revealed[i - 2]]
        if reveal == "paste":
            out = start.copy()
            out.reshape(-1, 3)[top] = x.reshape(-1, 3)[top]
            return out
        mask = known.copy()
        mask.reshape(-1)[top] = True
        return interpolate_image(x, mask)

    total = t.size + 2
    probs_cls, top1, info = np.empty(total), np.empty(total, np.int64), np.empty(total, np.int64)
    done = 0
    while done < total:
        batch = np.stack([image(i) for i in range(done, min(total, done + batch_size))])
        info[done:done + len(batch)] = [information_content(b) for b in batch]
        probs = np.asarray(probabilities(batch), dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != len(batch) or not np.all(np.isfinite(probs)):
            raise ValueError(f"probabilities returned {probs.shape} (or non-finite values) for a "
                             f"batch of {len(batch)}; expected finite (N, K)")
        if done == 0 and cls is None:
            cls = int(probs[0].argmax())
        if not 0 <= int(cls) < probs.shape[1]:
            raise ValueError(f"class {cls} is outside the model's {probs.shape[1]} classes")
        probs_cls[done:done + len(batch)] = probs[:, int(cls)]
        top1[done:done + len(batch)] = probs.argmax(axis=1)
        done += len(batch)
    cls = int(cls)
    common = (t, revealed, min_pred_value, keep_monotonous, num_points)
    return PicCurves(sic=_result("sic", cls, probs_cls, info, *common),
                     aic=_result("aic", cls, (top1 == cls).astype(np.float64), info, *common))


def pic_curve(rgb_uint8: np.ndarray, saliency: np.ndarray, probabilities: RgbProbabilityFn,
              cls: int | None = None, *, kind: str = "sic",
              thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
              batch_size: int = DEFAULT_BATCH_SIZE, seed: int | None = 0,
              rng: np.random.Generator | None = None,
              mask_fraction: float = RANDOM_MASK_FRACTION, reveal: str = "interpolate",
              min_pred_value: float = MIN_PRED_VALUE, keep_monotonous: bool = KEEP_MONOTONOUS,
              num_points: int = NUM_DATA_POINTS) -> PicResult:
    """One curve, ``kind`` "sic" (softmax) or "aic" (accuracy); arguments as ``pic_curves``
    (computing both costs the same forward passes: prefer ``pic_curves`` when both are wanted)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    both = pic_curves(rgb_uint8, saliency, probabilities, cls, thresholds=thresholds,
                      batch_size=batch_size, seed=seed, rng=rng, mask_fraction=mask_fraction,
                      reveal=reveal, min_pred_value=min_pred_value,
                      keep_monotonous=keep_monotonous, num_points=num_points)
    return getattr(both, kind)


def aggregate_pic(results: Sequence[PicResult], method: str = "median") -> AggregatePic:
    """Pointwise median (reference default) or mean of the sampled curves of the results that
    were not skipped, and its trapezoid AUC; NaN curve and AUC when none is usable."""
    if method not in AGGREGATIONS:
        raise ValueError(f"method must be one of {', '.join(AGGREGATIONS)}, got {method!r}")
    results = list(results)
    if not results:
        raise ValueError("no results to aggregate")
    grid = results[0].x
    if any(r.x.shape != grid.shape or not np.array_equal(r.x, grid) for r in results):
        raise ValueError("the results were sampled at different abscissae (num_points)")
    used = [r.y for r in results if r.skipped is None]
    if not used:
        return AggregatePic(grid, np.full(grid.shape, np.nan), float("nan"), 0, len(results))
    y = (np.median if method == "median" else np.mean)(np.stack(used), axis=0)
    return AggregatePic(grid, y, auc(y, grid), len(used), len(results) - len(used))
