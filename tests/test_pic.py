"""Performance information curves (swag_onnx.metrics.pic) against a synthetic model.

The test image is noise (so every revealed pixel adds about the same information) and the model
only looks at an 8 x 8 "important" block: class 0's probability is a sigmoid of the fraction of
that block whose pixels are exactly the original's. Revealing the block first (the true map) must
then raise the score earlier on the information axis than a random or the inverted map.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
from scipy.interpolate import griddata

from swag_onnx.metrics import (
    PicCurves,
    aggregate_pic,
    blurred_start,
    information_content,
    interpolate_image,
    pic_curve,
    pic_curves,
    pixel_order,
    random_mask,
)
from swag_onnx.metrics import pic as pic_module

H = W = 32
BLOCK = (slice(10, 18), slice(14, 22))  # 64 pixels, 6.25 % of the image


def _noise(seed: int = 0, shape=(H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape + (3,), dtype=np.uint8)


class BlockModel:
    """Two classes; p(class 0) = sigmoid(12 (f - 0.5)), f = fraction of BLOCK equal to the
    original. Records the batches it is given."""

    def __init__(self, original: np.ndarray):
        self.original = original
        self.batches: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.uint8 and batch.shape[1:] == self.original.shape
        self.batches.append(batch.copy())
        same = np.all(batch[:, BLOCK[0], BLOCK[1]] == self.original[BLOCK], axis=-1)
        f = same.reshape(len(batch), -1).mean(axis=1)
        p = 1.0 / (1.0 + np.exp(-12.0 * (f - 0.5)))
        return np.stack([p, 1.0 - p], axis=1)


def _maps(seed: int = 1):
    true = np.zeros((H, W))
    true[BLOCK] = 1.0
    true += 0.01 * np.random.default_rng(seed).random((H, W))  # no ties
    random = np.random.default_rng(seed + 1).random((H, W))
    return true, random, -true


# ------------------------------------------------------------------------- information content

def test_information_content_flat_is_smaller_than_noise():
    flat = np.full((H, W, 3), 120, np.uint8)
    ramp = np.broadcast_to(np.arange(W, dtype=np.uint8)[None, :, None] * 8, (H, W, 3)).copy()
    noise = _noise()
    sizes = [information_content(x) for x in (flat, ramp, noise)]
    assert sizes[0] < sizes[1] < sizes[2]
    assert all(isinstance(s, int) for s in sizes)


def test_webp_quality_above_100_is_lossless():
    x = _noise(3, (24, 40))
    ok, buffer = cv2.imencode(".webp", cv2.cvtColor(x, cv2.COLOR_RGB2BGR),
                              [cv2.IMWRITE_WEBP_QUALITY, pic_module.WEBP_QUALITY])
    assert ok and pic_module.WEBP_QUALITY > 100
    back = cv2.cvtColor(cv2.imdecode(buffer, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, x)
    assert information_content(x) == buffer.size


def test_information_content_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        information_content(np.zeros((8, 8, 3), np.float32))


# ---------------------------------------------------------------------- blurred start and masks

def test_random_mask_count_and_determinism():
    m = random_mask(H, W, seed=5)
    assert m.dtype == bool and m.shape == (H, W) and m.sum() == int(H * W * 0.01)
    np.testing.assert_array_equal(m, random_mask(H, W, seed=5))
    assert not np.array_equal(m, random_mask(H, W, seed=6))
    np.testing.assert_array_equal(m, random_mask(H, W, rng=np.random.default_rng(5)))
    assert random_mask(10, 10, seed=0, fraction=0.25).sum() == 25


def test_interpolation_matches_scipy_griddata():
    x = _noise(7, (20, 27))
    known = np.random.default_rng(8).random((20, 27)) < 0.2
    got = interpolate_image(x, known)
    full = known.copy()
    full[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    expected = x.astype(np.float32) * full[..., None]
    points, queries = np.argwhere(full), np.argwhere(~full)
    for c in range(3):
        expected[..., c][tuple(queries.T)] = griddata(points, x[..., c][full], queries,
                                                      method="linear")
    np.testing.assert_array_equal(got, np.round(expected).astype(np.uint8))


def test_interpolation_reproduces_a_linear_image():
    rows, cols = np.mgrid[:H, :W]
    x = np.stack([cols * 8, rows * 4, 50 + rows + 2 * cols], axis=-1).astype(np.uint8)
    np.testing.assert_array_equal(interpolate_image(x, random_mask(H, W, seed=2)), x)


def test_interpolation_with_collinear_known_pixels():
    rows, cols = np.mgrid[:H, :W]
    x = np.stack([rows * 8, 255 - rows * 8, np.full((H, W), 9)], axis=-1).astype(np.uint8)
    known = np.zeros((H, W), bool)
    known[[0, -1]] = True  # two full rows: many collinear and cocircular points
    np.testing.assert_array_equal(interpolate_image(x, known), x)


def test_triangle_scan_covers_every_pixel_in_any_chunk_size():
    from scipy.spatial import Delaunay

    known = random_mask(H, W, seed=3, fraction=0.05)
    known[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    tri = Delaunay(np.argwhere(known).astype(np.float64))
    for chunk in (5, 1 << 19):
        seen = np.zeros(H * W, bool)
        for pixels, simplex, weights in pic_module._locate(tri, H, W, chunk=chunk):
            seen[pixels] = True
            np.testing.assert_allclose(weights.sum(axis=1), 1.0)
            assert np.all(weights >= 0)
            corners = tri.points[tri.simplices[simplex]]  # (Q, 3, 2)
            np.testing.assert_allclose(np.einsum("qv,qvd->qd", weights, corners),
                                       np.stack(np.divmod(pixels, W), axis=1), atol=1e-9)
        assert seen.all()


def test_blurred_start_keeps_the_random_pixels_and_corners():
    x = _noise()
    start = blurred_start(x, seed=4)
    keep = random_mask(H, W, seed=4)
    keep[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    np.testing.assert_array_equal(start[keep], x[keep])
    assert start.dtype == np.uint8 and start.shape == x.shape
    np.testing.assert_array_equal(start, blurred_start(x, seed=4))
    assert not np.array_equal(start, blurred_start(x, seed=9))
    # smooth: far less information than the noise it came from
    assert information_content(start) < 0.5 * information_content(x)


# ------------------------------------------------------------------------------------- curves

def test_true_map_beats_random_and_inverted():
    x = _noise()
    true, random, inverted = _maps()
    sic = {name: pic_curve(x, s, BlockModel(x), kind="sic")
           for name, s in (("true", true), ("random", random), ("inverted", inverted))}
    for r in sic.values():
        assert r.skipped is None and r.cls == 0
    assert sic["true"].auc > sic["random"].auc + 0.2
    assert sic["random"].auc > sic["inverted"].auc
    aic_true = pic_curve(x, true, BlockModel(x), kind="aic")
    aic_inverted = pic_curve(x, inverted, BlockModel(x), kind="aic")
    assert aic_true.auc > aic_inverted.auc + 0.2


def test_curve_shapes_ranges_and_monotone_points():
    x = _noise()
    result = pic_curves(x, _maps()[1], BlockModel(x))
    assert isinstance(result, PicCurves)
    for r in result:
        assert r.x.shape == r.y.shape == (pic_module.NUM_DATA_POINTS + 1,)
        np.testing.assert_allclose(r.x, np.append(np.arange(1000) / 1000, 1.0))
        assert r.y[-1] == 1.0 and np.all((r.y >= 0) & (r.y <= 1))
        assert np.all((r.points_x >= 0) & (r.points_x <= 1))
        assert np.all(np.diff(r.points_y) >= 0)  # keep_monotonous: running maximum
        assert 0.0 <= r.auc <= 1.0
        assert r.information_blurred < r.information_full
        assert len(r.thresholds) == len(r.information) == len(r.scores) == 13
    assert set(np.unique(result.aic.scores)) <= {0.0, 1.0}
    assert result.aic.score_full == 1.0 and result.aic.score_blurred == 0.0
    assert result.sic.score_full > 0.99 and result.sic.score_blurred < 0.01
    np.testing.assert_array_equal(result.sic.information, result.aic.information)


def test_without_keep_monotonous_points_are_raw_normalised_scores():
    x = _noise()
    r = pic_curve(x, _maps()[1], BlockModel(x), keep_monotonous=False)
    expected = np.clip((r.scores - r.score_blurred) / (r.score_full - r.score_blurred), 0, 1)
    np.testing.assert_allclose(r.points_y, expected)
    expected_x = np.clip((r.information - r.information_blurred)
                         / (r.information_full - r.information_blurred), 0, 1)
    np.testing.assert_allclose(r.points_x, expected_x)


def test_keep_monotonous_takes_the_running_maximum_in_threshold_order():
    script = iter([0.95, 0.05, 0.5, 0.3, 0.8])

    def scripted(batch):
        p = np.array([next(script) for _ in batch])
        return np.stack([p, 1 - p], axis=1)

    x = _noise()
    kept = pic_curve(x, _maps()[1], scripted, thresholds=(0.1, 0.2, 0.3), batch_size=2)
    np.testing.assert_allclose(kept.scores, [0.5, 0.3, 0.8])
    np.testing.assert_allclose(kept.points_y, [0.5, 0.5, 0.75 / 0.9])
    script = iter([0.95, 0.05, 0.5, 0.3, 0.8])
    raw = pic_curve(x, _maps()[1], scripted, thresholds=(0.1, 0.2, 0.3), keep_monotonous=False)
    np.testing.assert_allclose(raw.points_y, [0.5, 0.25 / 0.9, 0.75 / 0.9])
    assert raw.auc < kept.auc


def test_images_batches_and_revealed_pixels():
    x = _noise()
    saliency = _maps()[0]
    model = BlockModel(x)
    thresholds = (0.01, 0.1, 0.5)
    r = pic_curves(x, saliency, model, thresholds=thresholds, batch_size=2, seed=3)
    assert [len(b) for b in model.batches] == [2, 2, 1]  # original, start, 3 thresholds
    images = np.concatenate(model.batches)
    np.testing.assert_array_equal(images[0], x)
    start = blurred_start(x, seed=3)
    np.testing.assert_array_equal(images[1], start)
    counts = [int(np.floor(t * H * W + 0.5)) for t in thresholds]
    np.testing.assert_array_equal(r.sic.revealed, counts)
    order = pixel_order(saliency)
    for image, k in zip(images[2:], counts):
        known = random_mask(H, W, seed=3).reshape(-1)
        known[order[:k]] = True
        np.testing.assert_array_equal(image, interpolate_image(x, known.reshape(H, W)))
    # the same curves whatever the batch size
    again = pic_curves(x, saliency, BlockModel(x), thresholds=thresholds, batch_size=16, seed=3)
    np.testing.assert_array_equal(again.sic.y, r.sic.y)


def test_paste_reveal_copies_top_pixels_onto_the_start():
    x = _noise()
    saliency = _maps()[1]
    model = BlockModel(x)
    pic_curves(x, saliency, model, thresholds=(0.05, 0.2), reveal="paste", seed=1)
    images = np.concatenate(model.batches)
    start = blurred_start(x, seed=1)
    order = pixel_order(saliency)
    for image, t in zip(images[2:], (0.05, 0.2)):
        expected = start.reshape(-1, 3).copy()
        top = order[:int(np.floor(t * H * W + 0.5))]
        expected[top] = x.reshape(-1, 3)[top]
        np.testing.assert_array_equal(image.reshape(-1, 3), expected)


def test_explicit_class_and_skipped_images():
    x = _noise()
    true = _maps()[0]
    # class 1 has a low probability on the original: skipped, NaN curve, raw values kept
    r = pic_curves(x, true, BlockModel(x), 1)
    for result in r:
        assert result.cls == 1 and result.skipped is not None
        assert np.isnan(result.auc) and np.all(np.isnan(result.y))
        assert result.x.shape == (1001,) and len(result.scores) == 13
    assert "min_pred_value" in r.sic.skipped

    def constant(batch):
        return np.tile([0.9, 0.1], (len(batch), 1))

    r = pic_curves(x, true, constant)
    assert "blurred start" in r.sic.skipped and "blurred start" in r.aic.skipped
    flat = np.full((H, W, 3), 77, np.uint8)
    r = pic_curves(flat, true, BlockModel(flat))
    assert "bytes" in r.sic.skipped
    # a lower min_pred_value accepts a less confident original
    confident = pic_curve(x, true, BlockModel(x), min_pred_value=0.999)
    assert confident.skipped is not None


def test_sample_curve_interpolation_and_auc():
    x, y = pic_module._sample_curve(np.array([0.5]), np.array([0.5]), 1000)
    np.testing.assert_allclose(y, x)
    # several points at x = 0: right-continuous (last value), then linear to (1, 1)
    x, y = pic_module._sample_curve(np.array([0.0, 0.0]), np.array([0.5, 0.8]), 10)
    np.testing.assert_allclose(y, 0.8 + 0.2 * x)
    # out-of-order abscissae are sorted
    x, y = pic_module._sample_curve(np.array([0.6, 0.2]), np.array([0.7, 0.7]), 10)
    np.testing.assert_allclose(y[[0, 1, 2, 4, 6, 8, 10]], [0, 0.35, 0.7, 0.7, 0.7, 0.85, 1.0])


def test_aggregate_median_and_mean():
    x = _noise()
    true, random, _ = _maps()
    results = [pic_curve(x, s, BlockModel(x)) for s in (true, random)]
    skipped = pic_curve(x, true, BlockModel(x), 1)
    agg = aggregate_pic(results + [skipped], "mean")
    assert agg.count == 2 and agg.skipped == 1
    np.testing.assert_allclose(agg.y, (results[0].y + results[1].y) / 2)
    assert agg.auc == pytest.approx((results[0].auc + results[1].auc) / 2)
    med = aggregate_pic(results)
    np.testing.assert_allclose(med.y, agg.y)  # median of two = mean
    none = aggregate_pic([skipped])
    assert none.count == 0 and np.isnan(none.auc)


def test_argument_errors():
    x = _noise()
    s = _maps()[0]
    model = BlockModel(x)
    with pytest.raises(ValueError, match="kind"):
        pic_curve(x, s, model, kind="auc")
    with pytest.raises(ValueError, match="saliency"):
        pic_curves(x, s[:-1], model)
    with pytest.raises(ValueError, match="thresholds"):
        pic_curves(x, s, model, thresholds=(0.5, 0.1))
    with pytest.raises(ValueError, match="thresholds"):
        pic_curves(x, s, model, thresholds=(0.0, 0.1))
    with pytest.raises(ValueError, match="reveal"):
        pic_curves(x, s, model, reveal="blur")
    with pytest.raises(ValueError, match="uint8"):
        pic_curves(x.astype(np.float32), s, model)
    with pytest.raises(ValueError, match="probabilities"):
        pic_curves(x, s, lambda b: np.ones((1, 2)), batch_size=4)


def test_no_warnings_on_a_normal_run():
    x = _noise()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pic_curves(x, _maps()[2], BlockModel(x))
