"""ROAD (swag_onnx.metrics.road) against pytorch-grad-cam's implementation and analytic cases.

Parity: pytorch_grad_cam.metrics.road's NoisyLinearImputer, ROADMostRelevantFirst and
ROADLeastRelevantFirst (noise switched off on both sides: torch's and NumPy's generators differ)
on the same maps and the same model function. grad-cam's percentile q removes the top (100 - q)
percent, so our p is compared with its 100 - p; the maps have distinct values and n * p / 100 is
an integer, where both remove exactly the same pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics import road as gradcam_road
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from swag_onnx.metrics.road import (
    NEIGHBOURS,
    PERCENTAGES,
    check_percentages,
    noisy_linear_impute,
    removal_mask,
    removed_count,
    road_curves,
    road_scores,
)

C, H, W = 3, 20, 30  # n = 600: every default percentage removes a whole number of pixels


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(C, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5),
    ).double().eval()


def _probabilities(net):
    """The model function of swag_onnx.metrics: float32 batch -> softmax (N, K)."""
    def probabilities(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(net(torch.from_numpy(np.asarray(batch, np.float64))), 1).numpy()
    return probabilities


class _Float32Input(torch.nn.Module):
    """The same network fed grad-cam's float32 tensors."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.double())


def _scene(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((C, H, W)).astype(np.float32)
    saliency = rng.permutation(H * W).reshape(H, W).astype(np.float32) / (H * W)  # distinct
    return x, saliency


def _gradcam(metric_class, q: int, x: np.ndarray, saliency: np.ndarray, net, target: int):
    """grad-cam's (score, imputed image) for one percentile q, noise off."""
    metric = metric_class(percentile=q)
    metric.perturbation.imputer.noise = 0.0
    score, images = metric(torch.from_numpy(x[None]), saliency[None],
                           [ClassifierOutputSoftmaxTarget(target)], _Float32Input(net),
                           return_visualization=True, return_diff=False)
    return float(score[0]), images[0].numpy()


# -------------------------------------------------------------------------------------- parity

def test_parity_with_pytorch_grad_cam_images_and_scores():
    x, saliency = _scene()
    net = _net()
    target = 2
    p, morf, lerf = road_curves(x, saliency, _probabilities(net), target, noise=0.0)
    np.testing.assert_array_equal(p, PERCENTAGES)
    worst_image = worst_score = 0.0
    for i, pct in enumerate(PERCENTAGES):
        for most, curve, cls in ((True, morf, gradcam_road.ROADMostRelevantFirst),
                                 (False, lerf, gradcam_road.ROADLeastRelevantFirst)):
            ref_score, ref_image = _gradcam(cls, 100 - pct, x, saliency, net, target)
            ours = noisy_linear_impute(x, removal_mask(saliency, pct, most_relevant=most), 0.0)
            assert np.count_nonzero(np.any(ours != x, axis=0)) > 0.9 * removed_count(H * W, pct)
            worst_image = max(worst_image, float(np.abs(ours - ref_image).max()))
            worst_score = max(worst_score, abs(curve[i] - ref_score))
    assert worst_image < 1e-4, worst_image
    assert worst_score < 1e-4, worst_score


def test_parity_with_grad_cam_road_combined(monkeypatch):
    """grad-cam's ROADCombined = (mean LeRF - mean MoRF) / 2 on differences from the clean score:
    half of our road, over the symmetric default percentages (its q set = our 100 - p set)."""
    defaults = gradcam_road.NoisyLinearImputer.__init__.__defaults__
    monkeypatch.setattr(gradcam_road.NoisyLinearImputer.__init__, "__defaults__",
                        (0.0,) + defaults[1:])
    x, saliency = _scene(1)
    net = _net(1)
    target = 4
    _, morf, lerf = road_curves(x, saliency, _probabilities(net), target, noise=0.0)
    ref = gradcam_road.ROADCombined(percentiles=list(PERCENTAGES))(
        torch.from_numpy(x[None]), saliency[None], [ClassifierOutputSoftmaxTarget(target)],
        _Float32Input(net))
    assert abs(road_scores(morf, lerf)["road"] / 2 - float(ref[0])) < 1e-4


def test_imputer_parity_on_the_image_border_and_hwc_layout():
    """A mask touching the border and corners (neighbours outside the image), NHWC input."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((C, H, W)).astype(np.float32)
    mask = np.zeros((H, W), bool)
    mask[:4, :] = True
    mask[:, -3:] = True
    mask[H - 1, 0] = True
    ref = gradcam_road.NoisyLinearImputer(noise=0.0)(torch.from_numpy(x),
                                                     torch.from_numpy((~mask).astype(np.float32)))
    ours = noisy_linear_impute(np.moveaxis(x, 0, -1)[None], mask, 0.0, layout="NHWC")
    assert ours.shape == (H, W, C)
    assert np.abs(np.moveaxis(ours, -1, 0) - ref.numpy()).max() < 1e-5


# --------------------------------------------------------------------------- imputation: analytic

def test_imputed_pixels_are_the_weighted_mean_of_their_neighbours():
    """The defining equations, checked pixel by pixel with explicit loops (float64 residual)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 9, 11)).astype(np.float32)
    mask = rng.random((9, 11)) < 0.6
    out = noisy_linear_impute(x, mask, 0.0).astype(np.float64)
    worst = 0.0
    for r, c in zip(*np.nonzero(mask)):
        num, den = np.zeros(2), 0.0
        for dy, dx, weight in NEIGHBOURS:
            if 0 <= r + dy < 9 and 0 <= c + dx < 11:
                num += weight * out[:, r + dy, c + dx]
                den += weight
        worst = max(worst, float(np.abs(out[:, r, c] - num / den).max()))
    assert worst < 1e-5
    np.testing.assert_array_equal(out[:, ~mask], x[:, ~mask])  # kept pixels untouched


def test_a_linear_image_is_imputed_exactly_away_from_the_border():
    yy, xx = np.mgrid[:H, :W]
    x = np.stack([0.3 * yy - 0.2 * xx + 1.0, 0.1 * xx, -0.05 * yy]).astype(np.float32)
    mask = np.zeros((H, W), bool)
    mask[3:15, 4:25] = True  # a large hole, one pixel or more from the border
    np.testing.assert_allclose(noisy_linear_impute(x, mask, 0.0), x, atol=1e-4)


def test_imputation_commutes_with_affine_normalisation():
    x, saliency = _scene(5)
    mask = removal_mask(saliency, 70)
    scale, shift = np.array([2.0, 0.5, 4.0])[:, None, None], np.array([0.1, -3, 1])[:, None, None]
    np.testing.assert_allclose(noisy_linear_impute(x * scale + shift, mask, 0.0),
                               noisy_linear_impute(x, mask, 0.0) * scale + shift, atol=1e-4)


def test_noise_is_gaussian_with_the_given_std_per_channel_on_removed_pixels_only():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((C, 60, 60)).astype(np.float32)
    mask = rng.random((60, 60)) < 0.5
    sigma = np.array([0.01, 0.1, 1.0])
    z = (noisy_linear_impute(x, mask, sigma, np.random.default_rng(0))
         - noisy_linear_impute(x, mask, 0.0)) / sigma[:, None, None]
    np.testing.assert_array_equal(z[:, ~mask], 0)
    removed = z[:, mask]  # (C, m), m ~ 1800
    assert np.all(np.abs(removed.mean(axis=1)) < 0.1)
    assert np.all(np.abs(removed.std(axis=1) - 1) < 0.06)


def test_removal_masks_count_order_and_complement():
    _, saliency = _scene(7)
    order = np.argsort(-saliency.ravel())
    for p in PERCENTAGES:
        k = removed_count(H * W, p)
        morf, lerf = removal_mask(saliency, p), removal_mask(saliency, p, most_relevant=False)
        assert k == H * W * p // 100 and morf.sum() == lerf.sum() == k
        np.testing.assert_array_equal(np.flatnonzero(morf), np.sort(order[:k]))
        np.testing.assert_array_equal(lerf, ~removal_mask(saliency, 100 - p))
    assert removed_count(50176, 10) == 5017  # floor, as the authors' int(n * p)


# ------------------------------------------------------------------------ curves: linear model

class _LinearModel:
    """Two classes, logits (0, sum(w * x) / T); records the batch sizes it sees."""

    def __init__(self, w: np.ndarray, temperature: float):
        self.w, self.t, self.sizes = w, temperature, []

    def __call__(self, batch):
        self.sizes.append(len(batch))
        s = (np.asarray(batch, np.float64) * self.w).reshape(len(batch), -1).sum(1) / self.t
        p1 = 1 / (1 + np.exp(-s))
        return np.stack([1 - p1, p1], axis=1)


def _linear_scene():
    """Evidence in the IMAGE (a bright blob on a dark noisy background) and near-uniform
    weights: removing the blob and imputing it from the background removes the evidence."""
    rng = np.random.default_rng(8)
    yy, xx = np.mgrid[:H, :W]
    blob = np.exp(-((yy - 7) ** 2 + (xx - 19) ** 2) / (2 * 3.0 ** 2))
    x = (3 * blob + 0.1 * rng.standard_normal((C, H, W))).astype(np.float32)
    w = 1 + 0.1 * rng.standard_normal((C, H, W))
    model = _LinearModel(w, temperature=float((w * x).sum()) / 2)
    return x, (w * x).sum(0), model  # true attribution: per-pixel contribution


def test_linear_model_true_attribution_beats_random_and_inverted():
    x, truth, model = _linear_scene()
    random_map = np.random.default_rng(9).random((H, W))
    road = {name: road_scores(*road_curves(x, s, model, 1)[1:])
            for name, s in (("true", truth), ("random", random_map), ("inverted", -truth))}
    assert road["true"]["road"] > road["random"]["road"] + 0.05
    assert road["random"]["road"] > road["inverted"]["road"] + 0.05
    assert road["true"]["road-morf"] < road["random"]["road-morf"] < road["inverted"]["road-morf"]
    assert road["true"]["road-lerf"] > road["random"]["road-lerf"] > road["inverted"]["road-lerf"]


def test_batch_size_independence_and_memory_bound():
    x, truth, model = _linear_scene()
    reference = road_curves(x, truth, model, 1, batch_size=64, noise=0.05)
    for batch_size in (1, 5, 7):
        model.sizes.clear()
        got = road_curves(x, truth, model, 1, batch_size=batch_size, noise=0.05)
        for a, b in zip(got, reference):
            np.testing.assert_array_equal(a, b)
        assert max(model.sizes) == batch_size and sum(model.sizes) == 2 * len(PERCENTAGES)


def test_seed_reproducibility():
    x, truth, model = _linear_scene()
    first = road_curves(x, truth, model, 1, noise=0.5, seed=3)
    again = road_curves(x, truth, model, 1, noise=0.5, seed=3)
    other = road_curves(x, truth, model, 1, noise=0.5, seed=4)
    np.testing.assert_array_equal(first[1], again[1])
    np.testing.assert_array_equal(first[2], again[2])
    assert np.any(first[1] != other[1]) and np.any(first[2] != other[2])
    quiet = [road_curves(x, truth, model, 1, noise=0.0, seed=s)[1] for s in (3, 4)]
    np.testing.assert_array_equal(*quiet)


def test_layouts_agree_and_default_target_is_the_prediction():
    x, saliency = _scene(10)
    net = _net(2)
    probabilities = _probabilities(net)
    predicted = int(probabilities(x[None])[0].argmax())
    chw = road_curves(x, saliency, probabilities, None, noise=0.02, percentages=(25, 50))
    explicit = road_curves(x, saliency, probabilities, predicted, noise=0.02, percentages=(25, 50))
    hwc = road_curves(np.moveaxis(x, 0, -1), saliency,
                      lambda b: probabilities(np.moveaxis(b, -1, 1)), predicted,
                      layout="HWC", noise=0.02, percentages=(25, 50))
    for a, b, c in zip(chw, explicit, hwc):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, atol=1e-12)


def test_road_scores_are_means():
    scores = road_scores([0.2, 0.4, 0.0], [0.9, 0.5, 0.7])
    assert scores == pytest.approx({"road": 0.5, "road-morf": 0.2, "road-lerf": 0.7})


# ----------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("bad", [(0, 50), (50, 100), (-10,), (float("nan"),), (), ("ten",)])
def test_percentages_outside_open_interval_are_refused(bad):
    with pytest.raises(ValueError, match="ROAD"):
        check_percentages(bad)
    x, saliency = _scene()
    with pytest.raises(ValueError, match="ROAD"):
        road_curves(x, saliency, _probabilities(_net()), 0, percentages=bad)


def test_caller_bugs_raise_value_error():
    x, saliency = _scene()
    probabilities = _probabilities(_net())
    with pytest.raises(ValueError, match="model input resolution"):
        road_curves(x, saliency[:, :-1], probabilities, 0)
    with pytest.raises(ValueError, match="batch_size"):
        road_curves(x, saliency, probabilities, 0, batch_size=0)
    with pytest.raises(ValueError, match="every pixel"):
        noisy_linear_impute(x, np.ones((H, W), bool), 0.0)
    with pytest.raises(ValueError, match="rng"):
        noisy_linear_impute(x, removal_mask(saliency, 50), 0.01)
    with pytest.raises(ValueError, match="noise"):
        noisy_linear_impute(x, removal_mask(saliency, 50), [0.1, 0.2], np.random.default_rng())
    with pytest.raises(ValueError, match="noise"):
        noisy_linear_impute(x, removal_mask(saliency, 50), -1.0, np.random.default_rng())
    np.testing.assert_array_equal(noisy_linear_impute(x, np.zeros((H, W), bool), 0.0), x)


# ----------------------------------------------------------------------- the default ONNX model

@pytest.mark.slow
def test_parity_on_the_default_model_at_224():
    """EfficientNet-Lite0 (embedded) on chelsea, a 224 x 224 map with distinct values; grad-cam
    runs the same ONNX model through a torch wrapper. p = 25, 50, 75 remove whole pixel counts."""
    from skimage import data

    from swag_onnx import Explainer
    from swag_onnx.images import preprocess

    explainer = Explainer()
    x = preprocess(data.chelsea(), explainer.card)[0][0]
    yy, xx = np.mgrid[:224, :224]
    smooth = -((yy - 90.0) ** 2 + (xx - 120.0) ** 2) + 1e-3 * (yy * 224 + xx)
    saliency = (np.argsort(np.argsort(smooth.ravel())).reshape(224, 224) / 224 ** 2)
    saliency = saliency.astype(np.float32)

    class OnnxAsTorch(torch.nn.Module):
        def forward(self, batch):
            return torch.from_numpy(np.log(explainer.probabilities(batch.numpy())))

    target = int(explainer.probabilities(x[None])[0].argmax())
    percentages = (25, 50, 75)
    _, morf, lerf = road_curves(x, saliency, explainer.probabilities, target, noise=0.0,
                                percentages=percentages)
    for i, pct in enumerate(percentages):
        for most, curve, cls in ((True, morf, gradcam_road.ROADMostRelevantFirst),
                                 (False, lerf, gradcam_road.ROADLeastRelevantFirst)):
            metric = cls(percentile=100 - pct)
            metric.perturbation.imputer.noise = 0.0
            score, images = metric(torch.from_numpy(x[None]), saliency[None],
                                   [ClassifierOutputSoftmaxTarget(target)], OnnxAsTorch(),
                                   return_visualization=True, return_diff=False)
            ours = noisy_linear_impute(x, removal_mask(saliency, pct, most_relevant=most), 0.0)
            assert np.abs(ours - images[0].numpy()).max() < 1e-4
            assert abs(curve[i] - float(score[0])) < 1e-4
