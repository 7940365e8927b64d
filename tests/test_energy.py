"""Energy-based pointing game (swag_onnx.metrics.energy): hand-computed cases and a brute-force
oracle that decides pixel coverage from the box geometry itself (pixel [u, u+1) x [v, v+1)
touches the box [x0, x1) x [y0, y1)), not from the floor/ceil rule under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swag_onnx.metrics.energy import box_mask, energy_in_boxes
from swag_onnx.metrics.pointing import Box, load_annotations, pointing_hit


def _oracle(saliency: np.ndarray, boxes) -> float:
    h, w = saliency.shape
    inside = 0.0
    for v in range(h):
        for u in range(w):
            if any(u + 1 > x0 and u < x1 and v + 1 > y0 and v < y1 for x0, y0, x1, y1 in boxes):
                inside += saliency[v, u]
    total = saliency.sum()
    return math.nan if total == 0 else inside / total


def test_hand_computed_share():
    s = np.zeros((4, 5))
    s[1, 1], s[1, 2], s[3, 4] = 2.0, 1.0, 1.0
    assert energy_in_boxes(s, [[1, 1, 3, 2]]) == pytest.approx(0.75)  # columns 1-2, row 1
    assert energy_in_boxes(s, [[1, 1, 2, 2]]) == pytest.approx(0.5)   # half-open: column 1 only
    assert energy_in_boxes(s, [[0, 0, 5, 4]]) == 1.0
    assert energy_in_boxes(s, np.zeros((0, 4))) == 0.0


def test_overlapping_boxes_count_once_and_disjoint_ones_add():
    s = np.random.default_rng(0).random((30, 40))
    a, b = [2, 3, 20, 15], [10, 8, 35, 28]
    union = energy_in_boxes(s, [a, b])
    assert union == pytest.approx(_oracle(s, [a, b]))
    assert union < energy_in_boxes(s, [a]) + energy_in_boxes(s, [b])  # the overlap once
    left, right = [0, 0, 20, 30], [20, 0, 40, 30]
    assert energy_in_boxes(s, [left]) + energy_in_boxes(s, [right]) == pytest.approx(1.0)


def test_fractional_corners_and_boxes_outside_the_image():
    s = np.arange(1, 13, dtype=float).reshape(3, 4)
    # x 0.5..1.2 touches columns 0 and 1; y 1.0..1.5 touches row 1 only
    assert energy_in_boxes(s, [[0.5, 1.0, 1.2, 1.5]]) == pytest.approx((5 + 6) / 78)
    assert energy_in_boxes(s, [[-10, -10, 1, 1]]) == pytest.approx(1 / 78)  # clipped
    assert energy_in_boxes(s, [[4, 0, 9, 3]]) == 0.0  # entirely right of the image


@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 4))
def test_matches_the_brute_force_oracle(seed, count):
    rng = np.random.default_rng(seed)
    s = rng.random((9, 13)) * (rng.random((9, 13)) < 0.7)
    corners = rng.uniform(-3, 16, size=(count, 2, 2))
    boxes = [[min(c[0]), min(c[1]), max(c[0]) + 0.25, max(c[1]) + 0.25] for c in corners]
    got = energy_in_boxes(s, boxes)
    want = _oracle(s, boxes)
    assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)
    assert math.isnan(got) or 0.0 <= got <= 1.0


def test_consistent_with_the_pointing_games_box_reading(tmp_path):
    """Boxes read from CSV (pointing.Box) give the same share as raw arrays, and a point mass
    inside the box is both a pointing hit at tolerance 1 (distance 0) and energy 1."""
    csv = tmp_path / "boxes.csv"
    csv.write_text("image,class,x0,y0,x1,y1\na.png,cat,3,2,7,6\n")
    boxes = load_annotations(csv)["a.png"]
    assert isinstance(boxes[0], Box)
    s = np.zeros((10, 10))
    s[5, 6] = 1.0  # column 6 < x1 = 7: inside
    assert energy_in_boxes(s, boxes) == 1.0 and pointing_hit(s, boxes, tolerance=1)
    s[5, 6], s[5, 7] = 0.0, 1.0  # column 7 = x1: outside (half-open)
    assert energy_in_boxes(s, boxes) == 0.0 and not pointing_hit(s, boxes, tolerance=1)
    np.testing.assert_array_equal(box_mask((10, 10), boxes), box_mask((10, 10), [[3, 2, 7, 6]]))


def test_zero_map_is_nan_and_bad_maps_raise():
    assert math.isnan(energy_in_boxes(np.zeros((5, 5)), [[0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="non-negative"):
        energy_in_boxes(np.full((5, 5), -0.1), [[0, 0, 2, 2]])
    with pytest.raises(ValueError, match="non-finite"):
        energy_in_boxes(np.full((5, 5), np.nan), [[0, 0, 2, 2]])
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        energy_in_boxes(np.zeros((2, 5, 5)), [[0, 0, 2, 2]])
    with pytest.raises(ValueError, match="x1 > x0"):
        energy_in_boxes(np.ones((5, 5)), [[3, 0, 2, 2]])
