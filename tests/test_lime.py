"""LIME: closed-form ridge, a toy model with one decisive segment, parity with the lime package."""

import numpy as np
import pytest

from swag_onnx.methods.lime import lime, quickshift_segments, weighted_ridge


def _grid_segments(h, w, cell):
    rows, cols = np.indices((h, w)) // cell
    return rows * ((w + cell - 1) // cell) + cols


def _segment_texture_classifier(segments, k=5, seed=1, scale=30.0):
    """Softmax of a fixed random linear model on per-segment colour std (channels last).

    Mean-filling a segment sets its std to 0, so every segment matters (per-segment mean colours
    would not do: they are invariant to LIME's mean fill).
    """
    n = int(segments.max()) + 1
    flat = segments.ravel()
    counts = np.bincount(flat, minlength=n)
    W = np.random.RandomState(seed).randn(n * 3, k) * scale

    def probabilities(batch):
        batch = np.asarray(batch, dtype=np.float64)
        feats = []
        for img in batch:
            f = []
            for c in range(3):
                v = img[..., c].ravel()
                m = np.bincount(flat, v, n) / counts
                f.append(np.sqrt(np.bincount(flat, (v - m[flat]) ** 2, n) / counts))  # two-pass: exact 0 for a fill
            feats.append(np.stack(f, 1).ravel())
        logits = np.asarray(feats) @ W
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return probabilities


def test_weighted_ridge_matches_sklearn():
    from sklearn.linear_model import Ridge
    rs = np.random.RandomState(0)
    X = rs.randint(0, 2, (200, 15)).astype(float)
    y = rs.rand(200)
    w = rs.rand(200)
    for alpha in (1.0, 0.01):
        coef, intercept = weighted_ridge(X, y, w, alpha)
        ref = Ridge(alpha=alpha, fit_intercept=True).fit(X, y, sample_weight=w)
        np.testing.assert_allclose(coef, ref.coef_, rtol=1e-9, atol=1e-10)
        assert intercept == pytest.approx(ref.intercept_, abs=1e-10)


def test_decisive_segment_gets_largest_weight():
    rs = np.random.RandomState(0)
    x = rs.rand(3, 32, 32).astype(np.float32)  # channels first
    seg = _grid_segments(32, 32, 8)  # 16 segments
    key = 6
    sel = seg == key
    ref_mean = x[:, sel].mean()

    def probabilities(batch):
        # visible iff the segment still has its texture (std > 0); the fill is constant.
        visible = batch[:, :, sel].std(axis=2).max(axis=1) > 1e-3
        assert np.allclose(batch[~visible][:, :, sel].mean(axis=(1, 2)), ref_mean, atol=1e-5)
        p = np.where(visible, 0.9, 0.1)
        return np.stack([1 - p, p], 1)

    calls = []
    sal, segs, weights = lime(
        x, None, probabilities, 1, segments=seg, samples=300, progress=lambda d, t: calls.append((d, t))
    )
    assert sal.shape == (32, 32) and sal.dtype == np.float32
    assert weights.shape == (16,)
    assert int(np.argmax(weights)) == key
    assert weights[key] > 0.5 and np.all(np.abs(np.delete(weights, key)) < 0.1)
    np.testing.assert_array_equal(sal, weights[segs].astype(np.float32))
    assert calls[-1] == (300, 300) and len(calls) == 6


def test_parity_with_lime_package():
    from lime import lime_image
    from skimage import data
    from skimage.transform import resize

    view = (resize(data.chelsea(), (128, 128), anti_aliasing=True) * 255).round().astype(np.uint8)
    x = view / 255.0  # channels last, float64
    seg = quickshift_segments(view, 4, 200, 0.2, seed=0)
    probabilities = _segment_texture_classifier(seg)
    target = int(np.argmax(probabilities(x[None])[0]))

    sal, segs, ours = lime(x, view, probabilities, target, channel_axis=-1, samples=1000, seed=0)
    np.testing.assert_array_equal(segs, seg)

    explainer = lime_image.LimeImageExplainer(kernel_width=0.25, random_state=0)
    exp = explainer.explain_instance(
        x, probabilities, labels=(target,), top_labels=None, hide_color=None, num_samples=1000,
        batch_size=50, segmentation_fn=lambda image: seg, random_seed=0,  # no extra draw
    )
    theirs = np.zeros(int(seg.max()) + 1)
    for f, wt in exp.local_exp[target]:
        theirs[f] = wt
    assert set(np.argsort(ours)[-5:]) == set(np.argsort(theirs)[-5:])
    # same draws, same data: only rounding differs
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-9)


def test_reproducible_and_batch_size_independent():
    rs = np.random.RandomState(2)
    x = rs.rand(24, 24, 3)
    seg = _grid_segments(24, 24, 6)
    probabilities = _segment_texture_classifier(seg, k=3, scale=3.0)
    a = lime(x, None, probabilities, 0, channel_axis=-1, segments=seg, samples=120, batch_size=7, seed=3)
    b = lime(x, None, probabilities, 0, channel_axis=-1, segments=seg, samples=120, batch_size=120, seed=3)
    c = lime(x, None, probabilities, 0, channel_axis=-1, segments=seg, samples=120, batch_size=50, seed=4)
    np.testing.assert_allclose(a[2], b[2], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[2], c[2])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"samples": 1},
        {"samples": 10.5},
        {"batch_size": 0},
        {"kernel_width": 0},
        {"kernel_width": "wide"},
        {"alpha": -1},
        {"seed": -1},
        {"channel_axis": 1},
        {"kernel_size": 0},
        {"ratio": 2},
        {"segments": np.zeros((5, 5), dtype=int)},
        {"target": 7},
        {"target": -1},
    ],
)
def test_bad_options(kwargs):
    x = np.random.RandomState(0).rand(3, 16, 16)
    view = np.zeros((16, 16, 3), np.uint8)
    kwargs = {"target": 0, **kwargs}
    target = kwargs.pop("target")

    def probabilities(batch):
        return np.full((len(batch), 2), 0.5)

    with pytest.raises(ValueError):
        lime(x, view, probabilities, target, samples=kwargs.pop("samples", 10), **kwargs)
