"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das, Saenko, BMVC 2018).

Explains ONE input ``x`` in the model's layout, (C, H, W) with ``channel_axis=0`` or (H, W, C)
with ``channel_axis=-1``, and reaches the model only through

    probabilities(batch) -> (N, K) softmax probabilities

where ``batch`` has shape (N, *x.shape) and dtype of ``x``. This module never imports a runtime.

Mask i: a ``grid`` x ``grid`` binary grid, each cell on with probability ``p``; cell size
(cell_h, cell_w) = (ceil(H / grid), ceil(W / grid)); the grid is upsampled bilinearly
(cv2.resize, INTER_LINEAR) to ((grid + 1) * cell_h, (grid + 1) * cell_w) and an H x W window
is cropped at a random shift in [0, cell_h) x [0, cell_w) (the reference implementation's
"random shift"). The masked input is ``x * M_i`` on all channels (zero in the normalised space
is the dataset's mean colour), and

    map = sum_i probabilities(x * M_i)[target] * M_i / (masks * p)       (H, W) float32.

Masks are generated and consumed ``batch_size`` at a time, so memory is bounded by
``batch_size`` inputs whatever ``masks`` is. The random numbers are drawn per mask in mask order
(grid cells, then the two shifts) from ``numpy.random.default_rng(seed)``, so the map depends
on ``seed`` but not on ``batch_size``. Sums are accumulated in float64.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable, Optional

import cv2
import numpy as np

from swag_onnx.methods.registry import Inputs, Output, method
from swag_onnx.validation import BATCH, SEED, Int, Number, require

ProbFn = Callable[[np.ndarray], np.ndarray]
MASKS = Int(1, 10_000_000)
GRID = Int(1, 1024)
PROBABILITY = Number(0.0, 1.0, low_open=True, high_open=True)


def _spatial_shape(x: np.ndarray, channel_axis: Any) -> tuple[int, int]:
    """(H, W) of a 3-D ``x`` whose channels are on ``channel_axis`` (0 or -1)."""
    if x.ndim != 3:
        raise ValueError(f"x must be one image of 3 dimensions, got shape {x.shape}")
    if isinstance(channel_axis, bool) or channel_axis not in (0, -1, 2):
        raise ValueError(f"channel_axis must be 0 or -1, got {channel_axis!r}")
    if channel_axis == 0:
        return int(x.shape[1]), int(x.shape[2])
    return int(x.shape[0]), int(x.shape[1])


def generate_masks(
    rng: np.random.Generator, count: int, height: int, width: int, grid: int, p: float
) -> np.ndarray:
    """``count`` RISE masks (count, height, width) float32 in [0, 1], drawn from ``rng``.

    Per mask, in order: grid x grid uniforms (cell on where < p), then the row shift in
    [0, cell_h), then the column shift in [0, cell_w). Drawing mask by mask makes a sequence of
    calls with any split of ``count`` give the same masks.
    """
    cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
    up_h, up_w = (grid + 1) * cell_h, (grid + 1) * cell_w
    out = np.empty((count, height, width), np.float32)
    for i in range(count):
        cells = (rng.random((grid, grid)) < p).astype(np.float32)
        dy = int(rng.integers(0, cell_h))
        dx = int(rng.integers(0, cell_w))
        up = cv2.resize(cells, (up_w, up_h), interpolation=cv2.INTER_LINEAR)
        out[i] = up[dy : dy + height, dx : dx + width]
    return out


def rise(
    x: np.ndarray,
    probabilities: ProbFn,
    target: int,
    *,
    channel_axis: int = 0,
    masks: int = 4000,
    grid: int = 7,
    p: float = 0.5,
    batch_size: int = 64,
    seed: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
) -> np.ndarray:
    """RISE saliency map (H, W) float32 of class ``target`` for one image ``x``.

    x: (C, H, W) (``channel_axis=0``) or (H, W, C) (``channel_axis=-1``), preprocessed.
    probabilities: batch (N, *x.shape) -> (N, K) softmax probabilities; called with at most
        ``batch_size`` images at a time.
    masks: number of random masks N; grid: cells per side s; p: probability a cell is on.
    seed: seed of ``numpy.random.default_rng``; the map does not depend on ``batch_size``.
    progress: optional ``progress(done, total)`` called after each batch.
    """
    x = np.asarray(x)
    height, width = _spatial_shape(x, channel_axis)
    masks = require(MASKS, "masks", masks)
    grid = require(GRID, "grid", grid)
    batch_size = require(BATCH, "batch_size", batch_size)
    seed = require(SEED, "seed", seed)
    p = require(PROBABILITY, "p", p)
    target = require(Int(0), "target", target)

    rng = np.random.default_rng(seed)
    total = np.zeros((height, width), np.float64)
    done = 0
    while done < masks:
        count = min(batch_size, masks - done)
        m = generate_masks(rng, count, height, width, grid, p)
        mb = m[:, None, :, :] if channel_axis == 0 else m[:, :, :, None]
        batch = (x[None] * mb).astype(x.dtype, copy=False)
        probs = np.asarray(probabilities(batch))
        if probs.ndim != 2 or probs.shape[0] != count:
            raise ValueError(
                f"probabilities must return shape ({count}, K), got {probs.shape}"
            )
        if not 0 <= target < probs.shape[1]:
            raise ValueError(f"target {target} out of range for {probs.shape[1]} classes")
        scores = probs[:, target].astype(np.float64)
        total += np.tensordot(scores, m.astype(np.float64), axes=1)
        done += count
        if progress is not None:
            progress(done, masks)
    return (total / (masks * p)).astype(np.float32)


@method("rise", needs={"probabilities"}, progress=True,
        summary="random 7x7 grids (p 0.5), bilinear with a random shift, batched (memory "
        "bounded)", reference="Petsiuk et al., BMVC 2018; toy model with known evidence, "
        "batch-size independence")
def _rise(inputs: Inputs, *,
          masks: Annotated[int, MASKS, "rise: random masks"] = 4000,
          grid: Annotated[int, GRID, "rise: grid cells per side"] = 7,
          p: Annotated[float, PROBABILITY, "rise: probability that a cell is on"] = 0.5,
          batch_size: Annotated[int, BATCH, "inputs per model call (speed and memory only)"] = 64,
          seed: Annotated[int, SEED, "random seed"] = 0) -> Output:
    return Output(rise(inputs.x, inputs.probabilities, inputs.target,
                       channel_axis=inputs.channel_axis, masks=masks, grid=grid, p=p,
                       batch_size=batch_size, seed=seed, progress=inputs.progress))
