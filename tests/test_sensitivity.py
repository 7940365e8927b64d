"""Class sensitivity (swag_onnx.metrics.sensitivity): Spearman correlation of two maps."""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest

from swag_onnx.metrics import class_sensitivity, summarize


def test_hand_computed_spearman():
    # ranks 1 2 3 4 against 2 1 4 3: sum d^2 = 4, rho = 1 - 6 * 4 / (4 * 15) = 0.6
    assert class_sensitivity([[1, 2], [3, 4]], [[2, 1], [4, 3]]) == pytest.approx(0.6)
    # ties take their average rank: (1, 2.5, 2.5, 4) against (1, 2, 3, 4)
    assert class_sensitivity([[1, 2], [2, 3]], [[10, 20], [30, 40]]) == pytest.approx(
        4.5 / math.sqrt(4.5 * 5.0))


def test_rank_invariance_and_extremes():
    a = np.random.default_rng(0).random((12, 9))
    assert class_sensitivity(a, np.exp(3 * a)) == pytest.approx(1.0)
    assert class_sensitivity(a, -a) == pytest.approx(-1.0)
    b = np.random.default_rng(1).random((12, 9))
    assert abs(class_sensitivity(a, b)) < 0.3


def test_constant_map_is_nan_without_warnings():
    a = np.random.default_rng(0).random((5, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(class_sensitivity(a, np.zeros((5, 5))))
        assert math.isnan(class_sensitivity(np.ones((5, 5)), a))
        assert math.isnan(class_sensitivity(np.ones((5, 5)), np.ones((5, 5))))


def test_bad_maps():
    with pytest.raises(ValueError, match="same shape"):
        class_sensitivity(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="non-finite"):
        class_sensitivity(np.full((2, 2), np.nan), np.zeros((2, 2)))


def test_summarize_ignores_nan_and_counts():
    mean, std = summarize([0.2, float("nan"), 0.4])
    assert (mean, std) == pytest.approx((0.3, 0.1))
    s = summarize(np.array([0.2, np.nan, 0.4]))
    assert (s.mean, s.std, s.count, s.skipped) == pytest.approx((0.3, 0.1, 2, 1))
    assert pickle.loads(pickle.dumps(s)).count == 2
    empty = summarize([math.nan, math.nan])
    assert math.isnan(empty.mean) and math.isnan(empty.std) and empty.count == 0
    assert summarize([]).skipped == 0
    with pytest.raises(ValueError, match="infinit"):
        summarize([1.0, math.inf])
