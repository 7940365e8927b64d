"""Model-parameter randomisation test (MPRT; Adebayo et al., "Sanity checks for saliency maps",
NeurIPS 2018).

The model's parameters are randomised in cascade from the output down (the score layer first,
then stage after stage, then all of them), the map of the same class is recomputed at each
stage and compared with the original: a map that depends on what the model learnt changes,
one computed from the input alone (an edge detector) does not. The comparison is the Spearman
rank correlation of the absolute maps and their SSIM (structural similarity), as in the paper.

Choices pinned here:
- A randomised parameter is redrawn from a normal distribution with its tensor's own mean and
  standard deviation (a tensor with one value throughout gets std |value|, or 1 for zeros), the
  same shape and element type: the scale of each layer is kept, as the paper's
  re-initialisation keeps it, without knowing the training initialiser. The draw depends only on
  the seed and the parameter's name (numpy.random.default_rng([seed, crc32(name)])), so the
  randomised model is the same for every image, method and stage.
- Batch-norm running statistics are not parameters here (they stay the model's, frozen), while
  scale and shift (gamma, beta) are, as in the paper (graph.augment.PARAMETER_INPUTS).
- Spearman: ``scipy.stats.spearmanr`` of the flattened absolute maps (ties: average ranks). A
  constant map has no ranking: against a map that is not constant it counts as 0 (nothing of the
  original ranking is left; Grad-CAM's ReLU often zeroes a randomised model's map), and two
  constant maps count as 1 (the same map). SSIM: ``skimage.metrics.structural_similarity`` of
  the absolute maps, each min-max scaled to [0, 1] (a constant map to zeros), data_range 1,
  skimage's uniform 7x7 window (the largest odd one that fits on maps under 7 pixels a side).
"""

from __future__ import annotations

import zlib

import numpy as np
from skimage.metrics import structural_similarity

from swag_onnx.metrics.sensitivity import class_sensitivity

__all__ = ["redraw", "cascade", "similarities", "spearman", "ssim"]


def redraw(name: str, value: np.ndarray, seed: int) -> np.ndarray:
    """A random tensor like `value` (same shape and dtype): normal with value's mean and std
    (std |mean| for a constant tensor, 1 when it is all zeros), seeded by (seed, name)."""
    value = np.asarray(value)
    mean, std = float(np.mean(value, dtype=np.float64)), float(np.std(value, dtype=np.float64))
    if not std > 0:
        std = abs(mean) or 1.0
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return rng.normal(mean, std, value.shape).astype(value.dtype)


def cascade(stages: list[tuple[str, list[str]]], values: dict[str, np.ndarray],
            seed: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    """[(stage name, {parameter: redrawn value})] with each stage's overrides holding its own
    parameters and those of every stage before it (the cascade: stage 1 randomises the first
    stage, the last stage every parameter listed). values: the parameters' own values."""
    done: dict[str, np.ndarray] = {}
    steps = []
    for name, names in stages:
        done.update({p: redraw(p, values[p], seed) for p in names})
        steps.append((name, dict(done)))
    return steps


def spearman(original: np.ndarray, other: np.ndarray) -> float:
    """Spearman rank correlation of |original| and |other| (H, W); 0 when exactly one of them
    is constant, 1 when both are."""
    a, b = np.abs(np.asarray(original, np.float64)), np.abs(np.asarray(other, np.float64))
    flat = [bool(np.all(m == m.flat[0])) for m in (a, b)]
    if any(flat) and a.shape == b.shape and np.isfinite(a).all() and np.isfinite(b).all():
        return float(all(flat))
    return class_sensitivity(a, b)


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.abs(np.asarray(m, np.float64))
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def ssim(original: np.ndarray, other: np.ndarray) -> float:
    """SSIM of |original| and |other| (H, W), each min-max scaled to [0, 1]."""
    a, b = _unit(original), _unit(other)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two (H, W) maps of the same shape, got {a.shape} and {b.shape}")
    side = min(a.shape)
    if side < 3:
        raise ValueError(f"maps of shape {a.shape} are too small for SSIM (3 pixels a side)")
    window = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(a, b, data_range=1.0, win_size=window))


def similarities(original: np.ndarray, randomised: list[np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(Spearman (S,), SSIM (S,)) of each randomised map (H, W) against the original (H, W)."""
    return (np.array([spearman(original, m) for m in randomised], np.float64),
            np.array([ssim(original, m) for m in randomised], np.float64))
