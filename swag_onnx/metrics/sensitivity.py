"""Class sensitivity (Rebuffi, Fong, Ji, Vedaldi, NormGrad, CVPR 2020).

For each image, a method's maps for the most and the least probable class are compared by the
Spearman rank correlation of the two flattened maps (``scipy.stats.spearmanr``: Pearson
correlation of the ranks, ties given their average rank); over images the mean and standard
deviation are reported. Lower means more class-sensitive (the map changes with the class).

Choices pinned here:

- The maps must have the same shape (bring both to one grid first) and finite values.
- A constant map has no ranking: the correlation is undefined and ``class_sensitivity`` returns
  NaN (without scipy's warning). ``summarize`` leaves NaN values out and reports how many.
- The standard deviation is the population one (``ddof = STD_DDOF = 0``, ``numpy.std``'s default).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy.stats import spearmanr

STD_DDOF = 0

__all__ = ["Summary", "class_sensitivity", "summarize"]


class Summary(tuple):
    """(mean, std) over the finite values, with ``count`` (values used) and ``skipped`` (NaN)."""

    count: int
    skipped: int

    def __new__(cls, mean: float, std: float, count: int, skipped: int):
        self = super().__new__(cls, (mean, std))
        self.count, self.skipped = count, skipped
        return self

    def __getnewargs__(self):
        return (self[0], self[1], self.count, self.skipped)

    @property
    def mean(self) -> float:
        return self[0]

    @property
    def std(self) -> float:
        return self[1]

    def __repr__(self) -> str:
        return (f"Summary(mean={self.mean!r}, std={self.std!r}, count={self.count}, "
                f"skipped={self.skipped})")


def class_sensitivity(map_most: np.ndarray, map_least: np.ndarray) -> float:
    """Spearman rank correlation of two (H, W) maps (most / least probable class), in [-1, 1];
    NaN when either map is constant."""
    a = np.asarray(map_most, dtype=np.float64)
    b = np.asarray(map_least, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two (H, W) maps of the same shape, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("the maps contain non-finite values")
    a, b = a.ravel(), b.ravel()
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(spearmanr(a, b).statistic)


def summarize(values: Iterable[float]) -> Summary:
    """(mean, std) of the values, NaN left out (Summary with .count and .skipped); (NaN, NaN)
    when no value is left."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    if np.any(np.isinf(v)):
        raise ValueError("values contain infinities")
    finite = v[~np.isnan(v)]
    if finite.size == 0:
        return Summary(math.nan, math.nan, 0, int(v.size))
    return Summary(float(finite.mean()), float(finite.std(ddof=STD_DDOF)), int(finite.size),
                   int(v.size - finite.size))
