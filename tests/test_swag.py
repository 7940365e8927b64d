"""SWAG (swag_onnx.methods.swag): pixel maps, superpixels, region scores, and the whole map on
synthetic scenes where the evidence is known by construction and on a real photo."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from skimage import data, transform
from skimage.segmentation import find_boundaries

from swag_onnx.methods import (
    DEFAULTS,
    SOURCES,
    SwagResult,
    normalize_map,
    pixel_map,
    region_scores,
    superpixels,
    swag,
)

# ---------------------------------------------------------------------------------------------
# helpers


def brute_region_scores(pmap: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-pixel mean of pmap over the pixel's region, min-max normalised, by explicit loops."""
    out = np.zeros(pmap.shape, np.float64)
    for lab in np.unique(labels):
        m = labels == lab
        out[m] = pmap[m].astype(np.float64).mean()
    lo, hi = out.min(), out.max()
    return (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)


def scene(seed: int, size: int = 96):
    """Textured background, a distinct red square, a gradient large inside the square only.

    Returns image (H, W, 3) in [0, 1], grad (H, W, 3), mask (H, W) bool of the square.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    tex = 0.5 + 0.25 * np.sin(xx / 2.0) * np.cos(yy / 3.0) + 0.1 * rng.random((size, size))
    image = np.stack([0.45 * tex + 0.2, 0.5 * tex + 0.25, 0.4 * tex + 0.2], -1).astype(np.float32)
    mask = np.zeros((size, size), bool)
    mask[30:66, 37:73] = True  # off the SLIC grid on purpose
    image[mask] = [0.85, 0.15, 0.1]
    grad = rng.normal(0, 0.05, (size, size, 3)).astype(np.float32)
    grad[mask] = rng.normal(0, 1.0, (int(mask.sum()), 3))
    return image, grad, mask


def boundary_recall(labels: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the square's border pixels that lie on a superpixel boundary."""
    border = find_boundaries(mask, mode="inner")
    return float(find_boundaries(labels, mode="thick")[border].mean())


def leakage(labels: np.ndarray, mask: np.ndarray) -> float:
    """Pixels on the minority side (square / background) of their region, over the square area."""
    inside = np.bincount(labels.ravel(), weights=mask.ravel())
    total = np.bincount(labels.ravel())
    return float(np.minimum(inside, total - inside).sum() / mask.sum())


@pytest.fixture(scope="module")
def chelsea():
    """skimage's cat photo at 224x224 and a synthetic gradient concentrated on the cat's face."""
    image = transform.resize(data.chelsea(), (224, 224), anti_aliasing=True).astype(np.float32)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:224, :224]
    blob = np.exp(-(((yy - 125) / 45.0) ** 2 + ((xx - 118) / 45.0) ** 2))  # eyes, nose, muzzle
    grad = (rng.normal(0, 1, (224, 224, 3)) * (0.05 + blob[..., None])).astype(np.float32)
    face = np.zeros((224, 224), bool)
    face[70:190, 55:185] = True
    return image, grad, face


# ---------------------------------------------------------------------------------------------
# region_scores


@pytest.mark.parametrize("seed", range(5))
def test_region_scores_equal_brute_force_region_means(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 40, 2)
    labels = rng.integers(0, 25, (h, w))
    labels[labels == 3] = 30  # gaps in the label range must not matter
    pmap = rng.normal(size=(h, w)).astype(np.float32)
    got = region_scores(pmap, labels)
    assert got.dtype == np.float32 and got.shape == (h, w)
    np.testing.assert_allclose(got, brute_region_scores(pmap, labels), atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    pmap=arrays(np.float32, (7, 9), elements=st.floats(-100, 100, width=32)),
    labels=arrays(np.int64, (7, 9), elements=st.integers(0, 6)),
)
def test_region_scores_property(pmap, labels):
    got = region_scores(pmap, labels)
    np.testing.assert_allclose(got, brute_region_scores(pmap, labels), atol=1e-5)
    assert got.min() >= 0 and got.max() <= 1


def test_region_scores_range_and_constant():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, (20, 20))
    got = region_scores(rng.random((20, 20)).astype(np.float32) * 7 - 3, labels)
    assert got.min() == 0.0 and got.max() == pytest.approx(1.0)
    assert np.all(region_scores(np.full((20, 20), 4.2, np.float32), labels) == 0)
    assert np.all(region_scores(rng.random((20, 20)), np.zeros((20, 20), int)) == 0)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_top_k_keeps_exactly_k_regions(k):
    rng = np.random.default_rng(k)
    labels = rng.integers(0, 12, (30, 30))
    pmap = rng.random((30, 30)).astype(np.float32)
    full = region_scores(pmap, labels)
    got = region_scores(pmap, labels, top_k=k)
    kept = np.unique(labels[got > 0])
    assert kept.size == k
    means = np.array([pmap[labels == i].mean() for i in range(12)])
    assert set(kept) == set(np.argsort(-means)[:k])
    np.testing.assert_array_equal(got[got > 0], full[got > 0])  # kept regions keep their score
    assert np.array_equal(region_scores(pmap, labels, top_k=100), full)  # k >= #regions: all


# ---------------------------------------------------------------------------------------------
# pixel_map


def expected_pixel_map(v: np.ndarray, sign: str, reduce: str) -> np.ndarray:
    """The documented formulas, written out per pixel."""
    h, w, _ = v.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            c = v[i, j].astype(np.float64)
            if reduce == "sum":
                s = c.sum()
                out[i, j] = {"abs": abs(s), "positive": max(s, 0.0), "signed": s}[sign]
            elif reduce == "max":
                if sign == "abs":
                    out[i, j] = np.abs(c).max()
                elif sign == "positive":
                    out[i, j] = max(c.max(), 0.0)
                else:
                    out[i, j] = c[np.argmax(np.abs(c))]
            else:
                if sign == "abs":
                    out[i, j] = np.sqrt((c**2).sum())
                elif sign == "positive":
                    out[i, j] = np.sqrt((np.maximum(c, 0) ** 2).sum())
                else:
                    out[i, j] = np.sign(c.sum()) * np.sqrt((c**2).sum())
    return out


@pytest.mark.parametrize("attribution", ["gradient", "gradient_x_input"])
@pytest.mark.parametrize("sign", ["abs", "positive", "signed"])
@pytest.mark.parametrize("reduce", ["max", "sum", "l2"])
def test_pixel_map_formulas(attribution, sign, reduce):
    rng = np.random.default_rng(0)
    grad = rng.normal(size=(6, 7, 3)).astype(np.float32)
    image = rng.random((6, 7, 3)).astype(np.float32)
    model_input = ((image - 0.45) / 0.225).astype(np.float32)
    got = pixel_map(grad, image, model_input=model_input, attribution=attribution, sign=sign,
                    reduce=reduce)
    v = grad * model_input if attribution == "gradient_x_input" else grad
    assert got.shape == (6, 7) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected_pixel_map(v, sign, reduce), rtol=1e-5, atol=1e-6)


def test_pixel_map_x_input_uses_model_input_not_image():
    rng = np.random.default_rng(2)
    grad = rng.normal(size=(5, 5, 3)).astype(np.float32)
    image = rng.random((5, 5, 3)).astype(np.float32)
    x = rng.normal(size=(5, 5, 3)).astype(np.float32)
    got = pixel_map(grad, image, model_input=x, attribution="gradient_x_input", reduce="sum")
    np.testing.assert_allclose(got, np.abs((grad * x).sum(-1)), rtol=1e-5)
    fallback = pixel_map(grad, image, attribution="gradient_x_input", reduce="sum")
    np.testing.assert_allclose(fallback, np.abs((grad * image).sum(-1)), rtol=1e-5)
    with pytest.raises(ValueError):
        pixel_map(grad, attribution="gradient_x_input")


def test_pixel_map_smoothing_and_single_channel():
    rng = np.random.default_rng(3)
    grad = rng.normal(size=(20, 24, 3)).astype(np.float32)
    got = pixel_map(grad, smooth_sigma=1.5)
    want = ndimage.gaussian_filter(np.abs(grad).max(-1), 1.5, mode="nearest")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    gray = pixel_map(grad[..., :1], sign="signed")  # a one-channel (grayscale) model
    np.testing.assert_array_equal(gray, grad[..., 0])


# ---------------------------------------------------------------------------------------------
# superpixels


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("n_segments", [50, 150])
def test_superpixels_shape_and_count(source, n_segments):
    image, grad, _ = scene(0, size=128)
    labels = superpixels(image, pixel_map(grad), source=source, n_segments=n_segments)
    assert labels.shape == (128, 128) and np.issubdtype(labels.dtype, np.integer)
    assert labels.min() == 0
    n = np.unique(labels).size
    assert 0.6 * n_segments <= n <= 1.3 * n_segments, n


def test_gradient_superpixels_follow_the_gradient():
    """The square's border coincides with label boundaries much better than for a gradient-blind
    segmentation (same SLIC, constant map: a grid), and fewer pixels leak across it."""
    for seed in range(3):
        image, grad, mask = scene(seed)
        follow = superpixels(image, pixel_map(grad), source="gradient")
        blind = superpixels(image, np.zeros(mask.shape, np.float32), source="gradient")
        assert boundary_recall(follow, mask) > boundary_recall(blind, mask) + 0.3
        assert leakage(follow, mask) < 0.5 * leakage(blind, mask)


# ---------------------------------------------------------------------------------------------
# swag


@pytest.mark.parametrize("source", SOURCES)
def test_saliency_mass_lies_in_the_evidence_square(source):
    for seed in range(2):
        image, grad, mask = scene(seed)
        result = swag(grad, image, source=source)
        s = result.saliency
        share = s[mask].sum() / s.sum()
        uniform = mask.mean()  # what a constant map would give (~0.14)
        assert share >= 0.7 and share > uniform + 0.3, (source, seed, share)


@pytest.mark.parametrize("source", SOURCES)
def test_swag_result_and_determinism(source):
    image, grad, _ = scene(5)
    a = swag(grad, image, source=source)
    b = swag(grad.copy(), image.copy(), source=source)
    assert isinstance(a, SwagResult)
    for name in ("saliency", "labels", "pixel_map"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.params == b.params
    assert a.saliency.dtype == np.float32 and a.pixel_map.dtype == np.float32
    assert a.saliency.min() == 0 and a.saliency.max() == pytest.approx(1)
    assert json.loads(json.dumps(a.params)) == a.params
    for key, value in DEFAULTS[source].items():
        assert a.params[key] == value
    assert a.params["source"] == source and a.params["top_k"] is None
    explicit = swag(grad, image, source=source, **DEFAULTS[source])
    assert np.array_equal(explicit.saliency, a.saliency)


def test_swag_options_reach_the_steps():
    image, grad, _ = scene(6)
    r = swag(grad, image, source="combined", n_segments=60, compactness=0.2, sigma=1.0,
             gradient_weight=3.0, attribution="gradient", reduce="l2", smooth_sigma=1.0, top_k=5)
    pm = pixel_map(grad, reduce="l2", smooth_sigma=1.0)
    labels = superpixels(image, pm, source="combined", n_segments=60, compactness=0.2,
                         sigma=1.0, gradient_weight=3.0)
    np.testing.assert_array_equal(r.pixel_map, pm)
    np.testing.assert_array_equal(r.labels, labels)
    np.testing.assert_array_equal(r.saliency, region_scores(pm, labels, top_k=5))
    assert np.unique(r.labels[r.saliency > 0]).size == 5
    assert r.params["n_segments"] == 60 and r.params["gradient_weight"] == 3.0


@pytest.mark.parametrize("source", SOURCES)
def test_real_photo(chelsea, source):
    image, grad, face = chelsea
    r = swag(grad, image, source=source)
    assert r.saliency.shape == (224, 224) and r.labels.shape == (224, 224)
    assert r.saliency.min() >= 0 and r.saliency.max() <= 1
    assert r.saliency[face].mean() > 2 * r.saliency[~face].mean()


def test_normalize_map():
    m = np.arange(100, dtype=np.float32).reshape(10, 10)
    np.testing.assert_allclose(normalize_map(m), m / 99)
    clipped = normalize_map(m, clip_quantile=0.5)
    assert clipped.max() == 1 and (clipped == 1).sum() == 50
    assert np.all(normalize_map(np.ones((3, 3))) == 0)


# ---------------------------------------------------------------------------------------------
# bad options


@pytest.mark.parametrize(
    "kwargs",
    [
        {"source": "lab"},
        {"attribution": "integrated"},
        {"sign": "negative"},
        {"reduce": "mean"},
        {"n_segments": 0},
        {"n_segments": 10.5},
        {"compactness": 0},
        {"compactness": "high"},
        {"sigma": -1},
        {"smooth_sigma": float("nan")},
        {"gradient_weight": -2},
        {"clip_quantile": 1.5},
        {"top_k": 0},
        {"top_k": True},
    ],
)
def test_bad_options_raise_one_line(kwargs):
    image, grad, _ = scene(0, size=32)
    with pytest.raises(ValueError) as info:
        swag(grad, image, **kwargs)
    assert "\n" not in str(info.value) and str(info.value)


def test_bad_options_in_the_steps():
    with pytest.raises(ValueError, match="unknown source 'slic'"):
        superpixels(np.zeros((8, 8, 3)), None, source="slic")
    with pytest.raises(ValueError, match="reduce"):
        pixel_map(np.zeros((4, 4, 3)), reduce="median")
    with pytest.raises(ValueError, match="top_k"):
        region_scores(np.zeros((4, 4)), np.zeros((4, 4), int), top_k=-1)


def test_methods_never_import_onnxruntime():
    code = ("import sys, swag_onnx.methods; "
            "print('onnxruntime' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------
# multi-scale and averaged gradients (issue 11): oracles are the single-scale maps and the
# registry's own smoothgrad / integrated-gradients methods, or closed forms on a toy model

from swag_onnx.errors import BadOptionError  # noqa: E402
from swag_onnx.methods import METHODS  # noqa: E402
from swag_onnx.methods.registry import Inputs  # noqa: E402
from swag_onnx.methods.swag import average_gradient, run_swag  # noqa: E402


def quadratic_model(size: int = 40, seed: int = 0):
    """S(x) = sum(w x^2) + sum(v x) on a (3, size, size) input, its exact gradient 2 w x + v
    (so the path mean of the gradient from 0 is w x + v), and a scene image (uint8)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (3, size, size))
    v = rng.normal(0, 1, (3, size, size))
    image, _, _ = scene(seed, size)
    x = (image.transpose(2, 0, 1) - 0.5).astype(np.float32) * 2

    def grad_fn(batch):
        b = np.asarray(batch, np.float64)
        return (w * b * b + v * b).sum(axis=(1, 2, 3)), 2 * w * b + v

    return x, grad_fn, (w, v), (image * 255).round().astype(np.uint8)


def test_multiscale_is_the_mean_of_the_single_scale_maps():
    image, grad, _ = scene(3)
    result = swag(grad, image, n_segments=20, scales=3)
    singles = [swag(grad, image, n_segments=n) for n in (20, 40, 80)]
    np.testing.assert_allclose(result.saliency, np.mean([s.saliency for s in singles], 0),
                               atol=1e-6)
    np.testing.assert_array_equal(result.labels, singles[0].labels)
    assert result.params["segment_counts"] == [20, 40, 80] and result.params["scales"] == 3
    # one scale is exactly the old map
    np.testing.assert_array_equal(swag(grad, image, n_segments=20, scales=1).saliency,
                                  singles[0].saliency)


def test_integrated_average_is_the_exact_path_mean():
    x, grad_fn, (w, v), _ = quadratic_model()
    # the gradient is linear along the path: the trapezoid rule is exact for any node count
    for samples in (2, 5):
        np.testing.assert_allclose(
            average_gradient(x, grad_fn, average="integrated", samples=samples, batch_size=3),
            w * x + v, rtol=1e-5, atol=1e-5)


def test_smoothgrad_average_of_a_linear_model_is_its_gradient():
    x, _, (_, v), _ = quadratic_model()
    linear = lambda b: ((v * b).sum(axis=(1, 2, 3)), np.broadcast_to(v, b.shape))  # noqa: E731
    np.testing.assert_allclose(average_gradient(x, linear, average="smoothgrad", samples=4,
                                                noise=0.3), v, rtol=1e-6)


@pytest.mark.parametrize("average, other, attribution, other_params", [
    ("smoothgrad", "smoothgrad", "gradient", dict(samples=6, noise=0.2, batch_size=4, seed=7)),
    ("integrated", "integrated-gradients", "gradient_x_input",
     dict(steps=6, batch_size=4, baseline=0.0)),
])
def test_averaged_swag_pools_the_registry_method_map(average, other, attribution, other_params):
    """SWAG with averaged gradients = the region means (over SWAG's own superpixels) of the map
    of the registry's smoothgrad / integrated-gradients method with the same samples and seed
    (both maps: max over channels of |.|)."""
    x, grad_fn, _, image = quadratic_model(seed=1)
    inputs = Inputs(x=x, channel_axis=0, target=0, image=image, grad_fn=grad_fn)
    extra = dict(average_noise=other_params["noise"], seed=other_params["seed"]) \
        if average == "smoothgrad" else {}
    out = run_swag(inputs, "image", average=average, average_samples=6, batch_size=2,
                   attribution=attribution, sign="abs", reduce="max", n_segments=30, **extra)
    reference = METHODS[other].run(inputs, **other_params).saliency
    np.testing.assert_allclose(out.saliency, brute_region_scores(reference, out.regions),
                               atol=1e-5)
    assert out.info["average"] == average and out.info["average_samples"] == 6


def test_averaged_swag_needs_a_gradient_function():
    x, _, _, image = quadratic_model()
    inputs = Inputs(x=x, channel_axis=0, target=0, image=image)
    with pytest.raises(ValueError, match="grad_fn"):
        run_swag(inputs, "image", average="smoothgrad")


@pytest.mark.parametrize("kwargs", [{"average": "mean"}, {"samples": 1}, {"noise": -0.1},
                                    {"samples": 2.5}])
def test_bad_average_options_raise_one_line(kwargs):
    x, grad_fn, _, _ = quadratic_model()
    kwargs = {"average": "smoothgrad", **kwargs}
    with pytest.raises(ValueError) as info:
        average_gradient(x, grad_fn, **kwargs)
    assert "\n" not in str(info.value) and str(info.value)


@pytest.mark.parametrize("value", [0, 9, 1.5, "2", True])
def test_bad_scales_refused_before_any_model_run(value):
    from swag_onnx.explain import plan

    with pytest.raises(BadOptionError) as info:
        plan("swag", {"scales": value})
    assert "scales" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError):
        swag(*scene(0, size=32)[:2], scales=value)


def test_scales_through_the_cli_is_one_line(tmp_path):
    import cv2

    path = tmp_path / "x.png"
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    run = subprocess.run([sys.executable, "-c", "from swag_onnx.cli import main; main()",
                          "explain", str(path),
                          "--scales", "0", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "scales" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# --average through the registry and the Explainer (issue 11): a ReLU network built here, its
# input gradient written out in NumPy, is the oracle; the averaged gradient is recomputed from
# it at the same noisy inputs (same seed) or path points, then pooled by SWAG's own steps.

MLP_SIZE, MLP_HIDDEN, MLP_CLASSES = 24, 12, 3


@pytest.fixture(scope="module")
def relu_mlp(tmp_path_factory):
    """(path, card, weights): y = W2 relu(W1 flatten(x) + b1) + b2 on (N, 3, 24, 24) inputs in
    [-1, 1]; biases large enough that the ReLU pattern changes along the noise and the path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    weights = {"W1": rng.standard_normal((MLP_HIDDEN, 3 * MLP_SIZE ** 2)) * 0.05,
               "b1": rng.standard_normal(MLP_HIDDEN) * 0.5,
               "W2": rng.standard_normal((MLP_CLASSES, MLP_HIDDEN)),
               "b2": rng.standard_normal(MLP_CLASSES) * 0.1}
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    nodes = [helper.make_node("Identity", ["x"], ["xi"]),  # a spatial layer for "auto"
             helper.make_node("Flatten", ["xi"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "W1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1)]
    shape = ["N", 3, MLP_SIZE, MLP_SIZE]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", MLP_CLASSES])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("swag_average") / "mlp.onnx"
    onnx.save(model, str(path))
    card = {"input_size": [MLP_SIZE, MLP_SIZE], "resize": None, "layout": "NCHW",
            "scaling": {"offset": 127.5, "divisor": 127.5}}
    return path, card, {k: v.astype(np.float64) for k, v in weights.items()}


def mlp_gradient(weights, x: np.ndarray, target: int) -> np.ndarray:
    """dy_target/dx (3, S, S) of the ReLU network at x (3, S, S), in float64."""
    h = weights["W1"] @ x.astype(np.float64).ravel() + weights["b1"]
    return (weights["W1"].T @ (weights["W2"][target] * (h > 0))).reshape(x.shape)


def oracle_average(weights, x, target, average, samples, noise, seed) -> np.ndarray:
    """The gradient SWAG should pool, without swag_onnx's code: at x; the mean at x + sigma e_i
    (e_i: numpy's default_rng(seed) normals in sample order, sigma = noise * (max x - min x));
    or the trapezoid mean along a x, a = 0, 1/(n-1), ..., 1 (ends weighted 1/2)."""
    if average == "none":
        return mlp_gradient(weights, x, target)
    if average == "smoothgrad":
        sigma = noise * float(x.max() - x.min())
        e = np.random.default_rng(seed).standard_normal((samples, *x.shape))
        noisy = (x[None].astype(np.float64) + sigma * e).astype(np.float32)  # what ran
        return np.mean([mlp_gradient(weights, n, target) for n in noisy], axis=0)
    path = [mlp_gradient(weights, (a * x.astype(np.float64)).astype(np.float32), target)
            for a in np.arange(samples) / (samples - 1)]
    weight = np.ones(samples)
    weight[[0, -1]] = 0.5
    return np.tensordot(weight / (samples - 1), np.array(path), axes=1)


def _photo(size: int) -> np.ndarray:
    small = transform.resize(data.chelsea()[:, 50:350], (size, size), anti_aliasing=True)
    return (small * 255).round().astype(np.uint8)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("average", ["none", "smoothgrad", "integrated"])
def test_explainer_average_equals_pooled_numpy_average(relu_mlp, monkeypatch, source, average):
    """swag-<source> --average <average> through the Explainer = SWAG's pooling of the
    oracle's averaged gradient: the same superpixels and the same map (1e-5); the Explainer
    fills what needs_for declares: one shared gradient run for "none", else no shared run and
    ceil(samples / batch_size) gradient runs."""
    from swag_onnx import Explainer
    from swag_onnx.runtime import ModelRunner

    path, card, weights = relu_mlp
    samples, noise, seed, batch = 5, 0.2, 3, 2
    runs = []
    real = ModelRunner.gradients
    monkeypatch.setattr(ModelRunner, "gradients",
                        lambda self, b, *a, **k: runs.append(len(b)) or real(self, b, *a, **k))
    image = _photo(MLP_SIZE)
    result, = Explainer(path, card=card).explain(
        [image], method="swag", superpixels=source, average=average, average_samples=samples,
        average_noise=noise, seed=seed, batch_size=batch, n_segments=12)
    assert runs == ([1] if average == "none" else [2, 2, 1])
    x = ((image.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)
    grad = oracle_average(weights, x, result.target["index"], average, samples, noise, seed)
    hwc = lambda a: a.transpose(1, 2, 0)  # noqa: E731
    expected = swag(hwc(grad), image / 255.0, model_input=hwc(x), source=source, n_segments=12)
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_allclose(result.saliency, expected.saliency, atol=1e-5)
    assert result.params["average"] == average
    if average != "none":  # the averaging changed the map: the test can tell them apart
        plain = swag(hwc(mlp_gradient(weights, x, result.target["index"])), image / 255.0,
                     model_input=hwc(x), source=source, n_segments=12)
        assert np.abs(plain.saliency - expected.saliency).max() > 0.05


def test_average_none_given_or_not_is_the_same_map(relu_mlp):
    """The averaging options leave the default map alone (average none ignores them)."""
    from swag_onnx import Explainer

    path, card, _ = relu_mlp
    explainer = Explainer(path, card=card)
    image = _photo(MLP_SIZE)
    for source in SOURCES:
        plain, = explainer.explain([image], method=f"swag-{source}")
        given, = explainer.explain([image], method=f"swag-{source}", average="none",
                                   average_samples=7, average_noise=0.5, seed=9)
        np.testing.assert_array_equal(plain.saliency, given.saliency)
        np.testing.assert_array_equal(plain.labels, given.labels)


@pytest.mark.parametrize("option, value", [("average", "mean"), ("average_samples", 1),
                                           ("average_noise", -0.1), ("average_samples", 2.5),
                                           ("seed", -1)])
def test_bad_average_options_refused_before_any_model_run(option, value):
    from swag_onnx.explain import plan

    with pytest.raises(BadOptionError) as info:
        plan("swag", {"average": "smoothgrad", option: value})
    assert option in str(info.value) and "\n" not in str(info.value)
