"""XRAI (Kapishnikov et al., ICCV 2019): integrated gradients summed up over image regions.

The steps and defaults are those of PAIR's ``saliency`` package (``saliency.core.XRAI``, the
authors' reference, "full" algorithm):

1. attribution: integrated gradients from a black and from a white baseline, averaged
   (``gradients.integrated_gradients(..., baselines=[black, white])``; the reference uses the
   input's minimum and maximum value, i.e. black and white for a natural image), reduced to
   (H, W) by the maximum over the channels;
2. regions: Felzenszwalb segments of the image at scales 50, 100, 150, 250, 500 and 1200
   (sigma 0.8, min_size 150), computed on the image min-max scaled to [-1, 1] and resized to
   224 x 224 (bicubic, as the reference, then nearest back), every segment dilated by a disk of
   radius 5 so regions overlap across scales;
3. greedy cover: repeatedly add the region with the highest mean attribution over its pixels not
   yet covered (regions adding fewer than 50 new pixels are dropped; ties go to the earlier
   region, smaller scale first), until no region is left; each pixel takes the gain of the region
   that covered it, pixels no region covered take their own mean attribution.

The cover runs on a sparse region x pixel matrix whose counts are updated as pixels get covered,
so it costs O(total region area) instead of the reference's O(regions^2 x pixels).
Pure NumPy / SciPy / scikit-image / OpenCV: the model is reached through ``grad_fn`` as in
``swag_onnx.methods.gradients``.
"""

from __future__ import annotations

from typing import Annotated, Any

import cv2
import numpy as np
from scipy import ndimage, sparse

from swag_onnx.methods.gradients import GradFn, integrated_gradients
from swag_onnx.methods.registry import Inputs, Output, method
from swag_onnx.validation import BATCH, Int, require

FELZENSZWALB_SCALES = (50, 100, 150, 250, 500, 1200)
FELZENSZWALB_SIGMA = 0.8
FELZENSZWALB_MIN_SIZE = 150
SEGMENTATION_SIZE = (224, 224)
DILATION_RADIUS = 5
MIN_PIXEL_DIFF = 50
DEFAULT_STEPS = 50  # IG steps per baseline (the reference's default is 100)
STEPS = Int(2, 100_000)


def segment_masks(image: np.ndarray, dilation_radius: int = DILATION_RADIUS) -> sparse.csr_matrix:
    """Felzenszwalb regions of an (H, W, C) image at all scales, dilated: a sparse boolean
    (regions, H*W) matrix, rows in scale order then label order (the reference's order)."""
    from skimage.segmentation import felzenszwalb
    from skimage.transform import resize

    image = np.asarray(image, dtype=np.float64)
    lo, hi = image.min(), image.max()
    scaled = (image - lo) / (hi - lo if hi > lo else 1.0) * 2.0 - 1.0
    small = resize(scaled, SEGMENTATION_SIZE, order=3, mode="constant", preserve_range=True,
                   anti_aliasing=True)
    kernel = _disk(dilation_radius)
    rows = []
    for scale in FELZENSZWALB_SCALES:
        labels = felzenszwalb(small, scale=scale, sigma=FELZENSZWALB_SIGMA,
                              min_size=FELZENSZWALB_MIN_SIZE)
        labels = resize(labels, image.shape[:2], order=0, preserve_range=True, mode="constant",
                        anti_aliasing=False).astype(np.int64)
        rows += _dilated_regions(labels, kernel, dilation_radius)
    indptr = np.cumsum([0] + [r.size for r in rows])
    data = np.ones(indptr[-1], dtype=bool)
    return sparse.csr_matrix((data, np.concatenate(rows), indptr),
                             shape=(len(rows), image.shape[0] * image.shape[1]))


def _disk(radius: int) -> np.ndarray:
    """uint8 (2r+1, 2r+1) disk footprint (skimage.morphology.disk)."""
    from skimage.morphology import disk

    return disk(radius).astype(np.uint8)


def _dilated_regions(labels: np.ndarray, kernel: np.ndarray, radius: int) -> list[np.ndarray]:
    """Sorted flat pixel indices of each label's region dilated by ``kernel`` (labels 0..L-1;
    labels absent from the map are skipped), each dilated within its bounding box + radius."""
    height, width = labels.shape
    regions = []
    for label, box in enumerate(ndimage.find_objects(labels + 1)):
        if box is None:
            continue
        top, left = max(box[0].start - radius, 0), max(box[1].start - radius, 0)
        bottom, right = min(box[0].stop + radius, height), min(box[1].stop + radius, width)
        crop = (labels[top:bottom, left:right] == label).astype(np.uint8)
        ys, xs = np.nonzero(cv2.dilate(crop, kernel))
        regions.append(np.sort((ys + top) * width + xs + left))
    return regions


def xrai_regions(attribution: np.ndarray, masks: sparse.spmatrix,
                 min_pixel_diff: int = MIN_PIXEL_DIFF) -> tuple[np.ndarray, np.ndarray]:
    """Greedy region cover of an (H, W) attribution by the (regions, H*W) boolean ``masks``.

    Returns (saliency float64 (H, W): the gain of the region that covered each pixel, ranks
    int32 (H, W): 1 for the pixels of the highest-gain region, 2 for the next, ...; the pixels
    no region covered come last).
    """
    attr = np.asarray(attribution, dtype=np.float64)
    flat = attr.ravel()
    csr = sparse.csr_matrix(masks, dtype=np.float64)
    csc = csr.tocsc()
    counts = np.asarray(csr.sum(axis=1)).ravel()
    sums = csr @ flat
    alive = np.ones(csr.shape[0], dtype=bool)
    uncovered = np.ones(flat.size, dtype=bool)
    saliency = np.full(flat.size, -np.inf)
    trace = []  # (gain, newly covered pixel indices)
    while True:
        alive &= counts >= min_pixel_diff
        if not alive.any():
            break
        gains = np.where(alive, sums / np.maximum(counts, 1), -np.inf)
        best = int(np.argmax(gains))
        new = csr.indices[csr.indptr[best]:csr.indptr[best + 1]]
        new = new[uncovered[new]]
        saliency[new] = gains[best]
        trace.append((gains[best], new))
        uncovered[new] = False
        alive[best] = False
        covered_now = csc[:, new]
        counts -= np.asarray(covered_now.sum(axis=1)).ravel()
        sums -= covered_now @ flat[new]
    if uncovered.any():
        saliency[uncovered] = flat[uncovered].mean()
    ranks = np.zeros(flat.size, dtype=np.int32)
    order = sorted(range(len(trace)), key=lambda i: -trace[i][0])  # stable, like the reference
    for rank, i in enumerate(order, start=1):
        ranks[trace[i][1]] = rank
    ranks[uncovered] = len(trace) + 1
    return saliency.reshape(attr.shape), ranks.reshape(attr.shape)


def xrai(x: np.ndarray, grad_fn: GradFn, image: np.ndarray, baselines: list[Any], *,
         channel_axis: int = 0, steps: int = DEFAULT_STEPS, batch_size: int = 16,
         segments: sparse.spmatrix | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """XRAI map of one model input.

    x: the model input (C, H, W) (``channel_axis=0``) or (H, W, C) (``channel_axis=-1``).
    grad_fn: batch (N, *x.shape) -> (target scores (N,), input gradients (N, *x.shape)).
    image: the (H, W, 3) image x was made from, segmented for the regions (any value range).
    baselines: the IG baselines in the model-input space (black and white images).
    steps: IG points per baseline (trapezoid rule), ``batch_size`` per ``grad_fn`` call.
    segments: precomputed (regions, H*W) masks (default ``segment_masks(image)``).
    Returns (saliency float32 (H, W), region ranks int32 (H, W), info: IG completeness and calls).
    """
    require(STEPS, "steps", steps)
    attribution, info = integrated_gradients(x, grad_fn, baselines=baselines, steps=steps,
                                             batch_size=batch_size)
    attr = np.asarray(attribution).max(axis=channel_axis)
    masks = segment_masks(image) if segments is None else segments
    saliency, ranks = xrai_regions(attr, masks)
    summary = {k: info[k] for k in ("relative_error", "calls", "steps")}
    return saliency.astype(np.float32), ranks, {**summary, "regions": int(masks.shape[0])}


@method("xrai", needs={"grad_fn", "image", "preprocess"}, progress=True,
        regions="region ranks (1 = added first)",
        summary="integrated gradients from a black and a white image, max over channels; "
        "Felzenszwalb regions at scales 50-1200 (sigma 0.8, min size 150, on the image resized "
        "to 224), dilated by a radius-5 disk; greedy cover by the highest mean attribution",
        reference="Kapishnikov et al., ICCV 2019; PAIR's saliency package fed our attribution: "
        "identical map and region ranking")
def _xrai(inputs: Inputs, *,
          steps: Annotated[int, STEPS, "xrai: integrated-gradients steps per baseline"]
          = DEFAULT_STEPS,
          batch_size: Annotated[int, BATCH, "inputs per model call (speed and memory only)"]
          = 16) -> Output:
    black, white = (inputs.preprocess(np.full_like(inputs.image, value)) for value in (0, 255))
    grad_fn = inputs.grad_fn
    if inputs.progress is not None:
        grad_fn = _counting(grad_fn, inputs.progress, 2 * steps)
    saliency, ranks, info = xrai(inputs.x, grad_fn, inputs.image, [black, white],
                                 channel_axis=inputs.channel_axis, steps=steps,
                                 batch_size=batch_size)
    return Output(saliency, ranks, info)


def _counting(grad_fn: GradFn, progress, total: int) -> GradFn:
    """grad_fn that reports progress(inputs done, total) after each batch."""
    done = 0

    def counted(batch):
        nonlocal done
        result = grad_fn(batch)
        done += len(batch)
        progress(min(done, total), total)
        return result
    return counted
