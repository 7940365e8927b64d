"""Deletion / insertion curves (swag_onnx.metrics.insertion_deletion) against analytic models.

The main model is linear: two classes with logits (0, sum(w * x) / T), so the probability of
class 1 is sigmoid(sum_i c_i / T) with per-pixel contributions c_i = sum_channels w * x. Deleting
pixels (x -> 0) removes their c_i; inserting them (blur -> x) adds w * (x - blur). Taking the
pixels in decreasing order of those contributions is then the best order at every step, so the
true map must beat any other map (a random one, the inverted one) on both curves.
"""

from __future__ import annotations

import numpy as np
import pytest

from swag_onnx.images import Geometry
from swag_onnx.metrics import (
    auc,
    blur,
    curve_fractions,
    default_step,
    deletion_curve,
    insertion_curve,
    pixel_order,
    to_model_resolution,
)

H, W, C = 24, 20, 3


def _scene(seed: int = 0):
    """A (C, H, W) input and a (C, H, W) weight map with a strong blob and weak noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    blob = np.exp(-((yy - 8) ** 2 + (xx - 13) ** 2) / (2 * 3.0 ** 2))
    w = (blob[None] * np.array([1.0, 0.6, 0.3])[:, None, None]
         + 0.05 * rng.standard_normal((C, H, W)))
    x = rng.standard_normal((C, H, W)).astype(np.float32) + 0.5
    return x, w


class LinearModel:
    """probabilities(batch) for logits (0, sum(w * x) / T); records the batch sizes it sees."""

    def __init__(self, w: np.ndarray, temperature: float, layout: str = "CHW"):
        w = np.asarray(w, np.float64)
        self.w = w if layout == "CHW" else np.moveaxis(w, 0, -1)
        self.t = temperature
        self.sizes: list[int] = []

    def logit(self, batch: np.ndarray) -> np.ndarray:
        flat = batch.astype(np.float64).reshape(len(batch), -1)
        return (flat * self.w.ravel()).sum(axis=1) / self.t

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        s = self.logit(batch)
        p1 = 1.0 / (1.0 + np.exp(-s))
        return np.stack([1.0 - p1, p1], axis=1)


def _model(x, w, layout="CHW"):
    """A linear model scaled so that the clean input has logit +3 (class 1, p ~ 0.95)."""
    total = float((w * x).sum())
    assert total > 0, "test scene must favour class 1"
    return LinearModel(w, total / 3.0, layout)


class Recorder:
    """probabilities that returns a constant and keeps a copy of every input it was given."""

    def __init__(self):
        self.inputs: list[np.ndarray] = []

    def __call__(self, batch):
        self.inputs.extend(np.array(b) for b in batch)
        return np.tile([0.25, 0.75], (len(batch), 1))


# --------------------------------------------------------------------------------------------- auc

def test_auc_constant_one_is_one():
    assert auc(np.ones(225)) == 1.0
    assert auc(np.ones(2)) == 1.0
    assert auc(np.ones(23), curve_fractions(10, 15, 7)) == pytest.approx(1.0)


def test_auc_trapezoid():
    assert auc(np.linspace(0, 1, 101)) == pytest.approx(0.5)
    assert auc(np.array([1.0, 0.0, 0.0, 0.0, 0.0])) == pytest.approx(0.125)
    # Non-uniform abscissae: exact area under the piecewise-linear curve.
    assert auc(np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.5, 1.0])) == pytest.approx(0.75)
    assert auc(np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.9, 1.0])) == pytest.approx(0.95)
    with pytest.raises(ValueError):
        auc(np.ones(1))
    with pytest.raises(ValueError):
        auc(np.ones(3), np.array([0.0, 0.7, 0.5]))


# ------------------------------------------------------------------------------- linear model

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_true_map_beats_random_and_inverted_on_deletion(seed):
    x, w = _scene(seed)
    model = _model(x, w)
    truth = (w * x).sum(axis=0)  # contribution of each pixel, baseline 0
    rand = np.random.default_rng(100 + seed).random((H, W))
    curves = {name: deletion_curve(x, m, model, 1, step=4)
              for name, m in [("truth", truth), ("random", rand), ("inverted", -truth)]}
    aucs = {k: auc(v) for k, v in curves.items()}
    assert aucs["truth"] < aucs["random"] < aucs["inverted"]
    # The top-k contributions removed first is the best order at every single step.
    assert np.all(curves["truth"] <= curves["random"] + 1e-12)
    assert np.all(curves["truth"] <= curves["inverted"] + 1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_true_map_beats_random_and_inverted_on_insertion(seed):
    x, w = _scene(seed)
    model = _model(x, w)
    truth = (w * (x - blur(x))).sum(axis=0)  # contribution of restoring each pixel
    rand = np.random.default_rng(200 + seed).random((H, W))
    curves = {name: insertion_curve(x, m, model, 1, step=4)
              for name, m in [("truth", truth), ("random", rand), ("inverted", -truth)]}
    aucs = {k: auc(v) for k, v in curves.items()}
    assert aucs["truth"] > aucs["random"] > aucs["inverted"]
    assert np.all(curves["truth"] >= curves["random"] - 1e-12)
    assert np.all(curves["truth"] >= curves["inverted"] - 1e-12)


def test_linear_model_curve_values_are_exact():
    """Each point is sigmoid of the logit with exactly the first k*step pixels changed."""
    x, w = _scene()
    model = _model(x, w)
    contrib = (w * x).sum(axis=0).ravel()
    sal = np.random.default_rng(5).random((H, W))
    order = pixel_order(sal)
    step = 7
    curve = deletion_curve(x, sal, model, 1, step=step)
    n = H * W
    for k, value in enumerate(curve):
        removed = order[:min(k * step, n)]
        s = (contrib.sum() - contrib[removed].sum()) / model.t
        assert value == pytest.approx(1 / (1 + np.exp(-s)), abs=1e-9)


# -------------------------------------------------------------------------------------- endpoints

def test_deletion_endpoints_are_input_and_all_baseline():
    x, w = _scene()
    rec = Recorder()
    sal = np.random.default_rng(0).random((H, W))
    deletion_curve(x, sal, rec, 1, step=50)
    np.testing.assert_array_equal(rec.inputs[0], x)
    np.testing.assert_array_equal(rec.inputs[-1], np.zeros_like(x))
    # A per-channel baseline is honoured too.
    rec = Recorder()
    base = np.array([0.5, -1.0, 2.0], np.float32)[:, None, None]
    deletion_curve(x, sal, rec, 1, step=50, baseline=base)
    np.testing.assert_array_equal(rec.inputs[-1], np.broadcast_to(base, x.shape))


def test_insertion_endpoints_are_blurred_and_input():
    x, w = _scene()
    rec = Recorder()
    sal = np.random.default_rng(0).random((H, W))
    insertion_curve(x, sal, rec, 1, step=50)
    np.testing.assert_allclose(rec.inputs[0], blur(x), rtol=0, atol=0)
    np.testing.assert_array_equal(rec.inputs[-1], x)
    assert not np.allclose(rec.inputs[0], x)


def test_linear_endpoints_match_direct_probabilities():
    x, w = _scene()
    model = _model(x, w)
    sal = np.random.default_rng(1).random((H, W))
    d = deletion_curve(x, sal, model, 1)
    i = insertion_curve(x, sal, model, 1)
    clean = model(x[None])[0, 1]
    assert d[0] == pytest.approx(clean) and i[-1] == pytest.approx(clean)
    assert d[-1] == pytest.approx(0.5)  # all-zero input: logit 0
    assert i[0] == pytest.approx(model(blur(x)[None])[0, 1])


def test_blur_is_cv2_gaussian_11_sigma_5():
    import cv2

    x, _ = _scene()
    expected = np.stack([cv2.GaussianBlur(c, (11, 11), 5.0, sigmaY=5.0,
                                          borderType=cv2.BORDER_REFLECT_101) for c in x])
    np.testing.assert_array_equal(blur(x), expected)
    np.testing.assert_array_equal(blur(np.moveaxis(x, 0, -1), "HWC"), np.moveaxis(expected, 0, -1))
    # Zero padding (RISE's code) darkens the border towards 0, the interior is the same.
    z = blur(x, border="zero")
    np.testing.assert_allclose(z[:, 8:-8, 8:-8], expected[:, 8:-8, 8:-8], atol=1e-6)
    const = np.ones((1, 30, 30), np.float32)
    assert blur(const)[0, 0, 0] == pytest.approx(1.0)
    assert blur(const, border="zero")[0, 0, 0] < 0.6


# -------------------------------------------------------------------------------------- steps

def test_default_step_and_point_counts():
    assert default_step(224, 224) == 224
    assert default_step(256, 256) == round(65536 / 224)
    assert default_step(10, 10) == 1
    fr = curve_fractions(224, 224)
    assert fr.size == 225 and fr[0] == 0.0 and fr[-1] == 1.0
    assert np.allclose(np.diff(fr), 1 / 224)
    fr = curve_fractions(10, 15, 7)  # 150 px, 21 full steps and one of 3 px
    assert fr.size == 23 and fr[-1] == 1.0 and fr[-2] == pytest.approx(147 / 150)


def test_224_input_gives_225_points():
    x = np.zeros((3, 224, 224), np.float32)
    sal = np.zeros((224, 224))
    model = LinearModel(np.ones((3, 224, 224)), 1.0)
    assert deletion_curve(x, sal, model, 1).shape == (225,)
    assert insertion_curve(x, sal, model, 1).shape == (225,)
    assert sum(model.sizes) == 2 * 225
    assert max(model.sizes) == 32


@pytest.mark.parametrize("step", [1, 7, 50, H * W, 10 * H * W])
def test_each_point_changes_exactly_k_steps_of_pixels(step):
    """The input at point k has min(k*step, H*W) pixels at the baseline, all channels."""
    x = np.ones((C, H, W), np.float32)
    rec = Recorder()
    curve = deletion_curve(x, np.random.default_rng(3).random((H, W)), rec, 0, step=step)
    fr = curve_fractions(H, W, step)
    assert curve.shape == fr.shape == (len(rec.inputs),)
    for k, image in enumerate(rec.inputs):
        zero = image == 0
        assert np.all(zero == zero[:1])  # whole pixels, every channel
        assert zero[0].sum() == min(k * step, H * W)


def test_ties_broken_by_pixel_index():
    x = np.ones((1, 3, 4), np.float32)
    sal = np.array([[0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]], float)
    np.testing.assert_array_equal(pixel_order(sal), [1, 4, 7, 10, 0, 2, 3, 5, 6, 8, 9, 11])
    rec = Recorder()
    deletion_curve(x, np.zeros((3, 4)), rec, 0, step=1)  # constant map: row-major order
    for k, image in enumerate(rec.inputs):
        np.testing.assert_array_equal(image.ravel()[:k], 0)
        np.testing.assert_array_equal(image.ravel()[k:], 1)


# -------------------------------------------------------------------------------- batching, API

@pytest.mark.parametrize("curve_fn", [deletion_curve, insertion_curve])
def test_batching_gives_the_same_curves(curve_fn):
    x, w = _scene()
    model = _model(x, w)
    sal = np.random.default_rng(4).random((H, W))
    one = curve_fn(x, sal, model, 1, step=5, batch_size=1)
    points = one.size
    for bs in (2, 7, 32, points, points + 10):
        model.sizes.clear()
        np.testing.assert_allclose(curve_fn(x, sal, model, 1, step=5, batch_size=bs), one,
                                   rtol=0, atol=1e-12)
        assert max(model.sizes) <= bs  # memory bound: never more than one batch
        assert len(model.sizes) == -(-points // bs)


@pytest.mark.parametrize("curve_fn", [deletion_curve, insertion_curve])
def test_layouts_agree(curve_fn):
    x, w = _scene()
    sal = np.random.default_rng(6).random((H, W))
    chw = curve_fn(x, sal, _model(x, w, "CHW"), 1, step=9)
    hwc = curve_fn(np.moveaxis(x, 0, -1), sal, _model(x, w, "HWC"), 1, layout="HWC", step=9)
    nchw = curve_fn(x[None], sal, _model(x, w, "CHW"), 1, layout="NCHW", step=9)
    np.testing.assert_allclose(hwc, chw, atol=1e-12)
    np.testing.assert_array_equal(nchw, chw)


def test_default_class_is_the_clean_prediction():
    x, w = _scene()
    model = _model(x, w)
    sal = np.random.default_rng(7).random((H, W))
    np.testing.assert_array_equal(deletion_curve(x, sal, model, step=5),
                                  deletion_curve(x, sal, model, 1, step=5))
    np.testing.assert_array_equal(insertion_curve(x, sal, model, step=5),
                                  insertion_curve(x, sal, model, 1, step=5))
    # Negated weights: class 0 is predicted, and its probability is what the curve tracks.
    neg = LinearModel(-w, model.t)
    np.testing.assert_allclose(deletion_curve(x, sal, neg, step=5),
                               deletion_curve(x, sal, model, 1, step=5), atol=1e-12)


def test_input_is_not_modified():
    x, w = _scene()
    before = x.copy()
    sal = np.random.default_rng(8).random((H, W))
    deletion_curve(x, sal, _model(x, w), 1)
    insertion_curve(x, sal, _model(x, w), 1)
    np.testing.assert_array_equal(x, before)


def test_bad_arguments():
    x, w = _scene()
    model = _model(x, w)
    sal = np.zeros((H, W))
    with pytest.raises(ValueError, match="saliency has shape"):
        deletion_curve(x, np.zeros((H, W + 1)), model, 1)
    with pytest.raises(ValueError, match="layout"):
        deletion_curve(x, sal, model, 1, layout="CWH")
    with pytest.raises(ValueError, match="step"):
        deletion_curve(x, sal, model, 1, step=0)
    with pytest.raises(ValueError, match="batch_size"):
        insertion_curve(x, sal, model, 1, batch_size=0)
    with pytest.raises(ValueError, match="non-finite"):
        deletion_curve(x, np.full((H, W), np.nan), model, 1)
    with pytest.raises(ValueError, match="one image"):
        deletion_curve(np.zeros((2, C, H, W)), sal, model, 1)
    with pytest.raises(ValueError, match="ksize"):
        insertion_curve(x, sal, model, 1, blur_ksize=10)
    with pytest.raises(ValueError, match="expected"):
        deletion_curve(x, sal, lambda b: np.ones((1, 2)), 1, batch_size=4)


def test_to_model_resolution_inverts_the_crop():
    g = Geometry(original_size=(60, 80), resized_size=(30, 40), crop_box=(3, 5, 24, 20))
    s = np.zeros((60, 80), np.float32)
    s[:, 40:] = 1.0  # right half of the original
    m = to_model_resolution(s, g)
    assert m.shape == (24, 20)
    # Resized column c covers original columns 2c, 2c+1: right half from resized column 20,
    # i.e. crop column 15.
    np.testing.assert_array_equal(m[:, 15:], 1.0)
    np.testing.assert_array_equal(m[:, :15], 0.0)
    with pytest.raises(ValueError):
        to_model_resolution(np.zeros((10, 10)), g)
