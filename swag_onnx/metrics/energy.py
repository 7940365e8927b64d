"""Energy-based pointing game (Wang et al., Score-CAM, CVPR Workshops 2020, Sec. 5.2).

Score-CAM's localisation measure: instead of only the map's maximum (the pointing game), count
how much of the map's energy falls inside the object's bounding box(es):

    proportion = sum_{(u, v) in boxes} L(u, v) / sum_{(u, v)} L(u, v)

- The map is at the ORIGINAL image size (H0, W0), non-negative (the maps of ``explain`` are in
  [0, 1]); a map with a negative value is a caller bug (ValueError).
- Boxes as ``swag_onnx.metrics.pointing`` reads them: ``(x0, y0, x1, y1)`` 0-based, half-open,
  covering columns ``floor(x0) .. ceil(x1) - 1`` and rows ``floor(y0) .. ceil(y1) - 1``, clipped
  to the image. Several boxes of a class count as their union: a pixel inside two boxes counts
  once (Score-CAM binarises the image with the class's boxes, then sums the masked map).
- A map with zero total mass has no energy to place: NaN (left out of means by the caller).
"""

from __future__ import annotations

import math

import numpy as np

from swag_onnx.metrics.pointing import box_array

__all__ = ["box_mask", "energy_in_boxes"]


def box_mask(shape: tuple[int, int], boxes) -> np.ndarray:
    """bool (H, W): True on the pixels covered by any of ``boxes`` ((M, 4) x0, y0, x1, y1 or a
    sequence of pointing.Box), with the pointing game's coverage rule, clipped to the image."""
    h, w = (int(v) for v in shape)
    b = box_array(boxes)
    mask = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in b:
        c0, r0 = max(math.floor(x0), 0), max(math.floor(y0), 0)
        c1, r1 = min(math.ceil(x1), w), min(math.ceil(y1), h)  # exclusive ends
        if c0 < c1 and r0 < r1:
            mask[r0:r1, c0:c1] = True
    return mask


def energy_in_boxes(saliency: np.ndarray, boxes) -> float:
    """Share of the mass of ``saliency`` (H0, W0) at the original size, non-negative, inside the
    union of ``boxes`` ((M, 4) x0, y0, x1, y1 in original pixels, or pointing.Box): a float in
    [0, 1]; NaN when the map sums to 0; 0.0 when no box covers a pixel of the image."""
    s = np.asarray(saliency, dtype=np.float64)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"saliency must be a non-empty (H, W) map, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("saliency contains non-finite values")
    if np.any(s < 0):
        raise ValueError("saliency must be non-negative for the energy-based pointing game "
                         f"(minimum {s.min():g})")
    total = s.sum()
    if total == 0:
        return math.nan
    inside = s[box_mask(s.shape, boxes)].sum()
    return float(min(inside / total, 1.0))  # min: summation order may leave 1 + 1 ulp
