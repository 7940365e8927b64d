"""Gradient methods (swag_onnx.methods.gradients): analytic models, options, parity with captum."""

import numpy as np
import pytest

from swag_onnx.methods.gradients import (
    gradient,
    gradient_x_input,
    ig_quadrature,
    integrated_gradients,
    saliency_map,
    smoothgrad,
)

SHAPE = (3, 5, 4)  # (C, H, W)


def _linear(w, b=0.25):
    """f(x) = <w, x> + b: grad_fn returning w for every sample, counting calls and batch sizes."""
    sizes = []

    def grad_fn(batch):
        sizes.append(len(batch))
        scores = (batch.astype(np.float64) * w).reshape(len(batch), -1).sum(axis=1) + b
        return scores, np.broadcast_to(w, batch.shape).copy()

    grad_fn.sizes = sizes
    return grad_fn


def _tanh_model(w):
    """f(x) = sum(tanh(w * x)), df/dx = w (1 - tanh(w x)^2)."""

    def grad_fn(batch):
        t = np.tanh(w * batch.astype(np.float64))
        return t.reshape(len(batch), -1).sum(axis=1), w * (1.0 - t * t)

    return grad_fn


def _tanh_score(w, x):
    return float(np.tanh(w * x).sum())


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    return rng.normal(size=SHAPE), rng.normal(size=SHAPE)  # x, w


# ----------------------------------------------------------------------------- analytic


def test_gradient_and_gradient_x_input_linear(data):
    x, w = data
    fn = _linear(w)
    np.testing.assert_array_equal(gradient(x, fn), w)
    np.testing.assert_array_equal(gradient_x_input(x, fn), w * x)
    np.testing.assert_allclose(gradient_x_input(x, fn, baseline=0.5), w * (x - 0.5))
    assert fn.sizes == [1, 1, 1]
    assert gradient(x.astype(np.float32), fn).dtype == np.float32


def test_ig_linear_exact(data):
    x, w = data
    baseline = np.full(SHAPE, -0.3)
    attr, info = integrated_gradients(x, _linear(w), baseline, steps=7)
    np.testing.assert_allclose(attr, w * (x - baseline), rtol=1e-12, atol=1e-14)
    assert info["delta"] == pytest.approx(float((w * (x - baseline)).sum()), rel=1e-12)
    assert info["score_baseline"] == pytest.approx(float((w * baseline).sum()) + 0.25, rel=1e-12)
    assert info["relative_error"] < 1e-12


def test_ig_quadrature_weights_sum_to_one():
    alphas, weights = ig_quadrature(9)
    assert alphas.shape == weights.shape == (9,)
    assert weights.sum() == pytest.approx(1.0, abs=1e-14)
    assert weights[0] == weights[-1] == pytest.approx(weights[1] / 2)
    alphas, _ = ig_quadrature(5)
    np.testing.assert_array_equal(alphas, [0.0, 0.25, 0.5, 0.75, 1.0])


def test_ig_completeness_nonlinear(data):
    x, w = data
    x = 2.0 * x
    fn = _tanh_model(w)
    errors = []
    for steps in (16, 64, 256):
        attr, info = integrated_gradients(x, fn, steps=steps)
        delta = _tanh_score(w, x) - _tanh_score(w, np.zeros(SHAPE))
        assert info["delta"] == pytest.approx(delta, rel=1e-12)
        assert info["attribution_sum"] == pytest.approx(float(attr.sum()), rel=1e-12)
        errors.append(info["relative_error"])
    assert errors[1] < 1e-3  # 64 steps
    assert errors[0] > errors[1] > errors[2]
    # Separable model: every element's attribution is its own exact 1-D integral tanh(w x) - 0.
    attr, _ = integrated_gradients(x, fn, steps=512)
    np.testing.assert_allclose(attr, np.tanh(w * x), atol=1e-4)


def test_ig_batch_size_independent(data):
    x, w = data
    fn = _tanh_model(w)
    a1, i1 = integrated_gradients(x, fn, baseline=0.1, steps=33, batch_size=1)
    a16, i16 = integrated_gradients(x, fn, baseline=0.1, steps=33, batch_size=16)
    np.testing.assert_allclose(a1, a16, rtol=1e-12, atol=1e-15)
    assert i1["relative_error"] == pytest.approx(i16["relative_error"], rel=1e-9, abs=1e-15)


def test_ig_batches_bounded(data):
    x, w = data
    fn = _linear(w)
    _, info = integrated_gradients(x, fn, steps=40, batch_size=16)
    assert fn.sizes == [16, 16, 8] and info["calls"] == 3


def test_ig_several_baselines(data):
    x, w = data
    fn = _tanh_model(w)
    black, white = np.zeros(SHAPE), np.ones(SHAPE)
    a_black, _ = integrated_gradients(x, fn, black)
    a_white, _ = integrated_gradients(x, fn, white)
    attr, info = integrated_gradients(x, fn, baselines=[black, 1.0])
    np.testing.assert_allclose(attr, (a_black + a_white) / 2, rtol=1e-12)
    assert len(info["per_baseline"]) == 2
    mean_b = (_tanh_score(w, black) + _tanh_score(w, white)) / 2
    assert info["score_baseline"] == pytest.approx(mean_b, rel=1e-12)
    assert info["relative_error"] < 1e-3


def test_smoothgrad(data):
    x, w = data
    fn = _tanh_model(w)
    a = smoothgrad(x, fn, samples=20, seed=3)
    np.testing.assert_array_equal(a, smoothgrad(x, fn, samples=20, seed=3))
    assert not np.allclose(a, smoothgrad(x, fn, samples=20, seed=4))
    np.testing.assert_allclose(a, smoothgrad(x, fn, samples=20, seed=3, batch_size=1), rtol=1e-12)
    # No noise: the plain method.
    np.testing.assert_allclose(smoothgrad(x, fn, samples=3, noise=0.0), gradient(x, fn))
    # Linear model: noise does not change the gradient.
    lin = _linear(w)
    np.testing.assert_allclose(smoothgrad(x, lin, samples=7), w)
    assert lin.sizes == [7]


def test_saliency_map():
    a = np.array([[[1.0, -2.0]], [[-3.0, 0.5]], [[2.0, 2.0]]])  # (C=3, H=1, W=2)
    np.testing.assert_array_equal(saliency_map(a, 0), [[3.0, 2.0]])
    np.testing.assert_array_equal(saliency_map(a, 0, "sum"), [[0.0, 0.5]])
    np.testing.assert_array_equal(saliency_map(a, 0, "sum_abs"), [[6.0, 4.5]])
    np.testing.assert_allclose(saliency_map(a, 0, "l2"), [[np.sqrt(14.0), np.sqrt(8.25)]])
    hwc = np.moveaxis(a, 0, -1)
    for reduce in ("max_abs", "sum", "sum_abs", "l2"):
        np.testing.assert_array_equal(saliency_map(hwc, -1, reduce), saliency_map(a, 0, reduce))
        assert saliency_map(hwc, 2, reduce).shape == (1, 2)


@pytest.mark.parametrize(
    "call",
    [
        lambda x, fn: saliency_map(x, 0, reduce="max"),
        lambda x, fn: saliency_map(x, 3),
        lambda x, fn: integrated_gradients(x, fn, steps=1),
        lambda x, fn: integrated_gradients(x, fn, steps=2.5),
        lambda x, fn: integrated_gradients(x, fn, batch_size=0),
        lambda x, fn: integrated_gradients(x, fn, baseline=0.0, baselines=[1.0]),
        lambda x, fn: integrated_gradients(x, fn, baselines=[]),
        lambda x, fn: integrated_gradients(x, fn, baseline=np.zeros((2, 2))),
        lambda x, fn: gradient_x_input(x, fn, baseline=np.nan),
        lambda x, fn: smoothgrad(x, fn, samples=0),
        lambda x, fn: smoothgrad(x, fn, noise=-0.1),
        lambda x, fn: smoothgrad(x, fn, noise="much"),
        lambda x, fn: smoothgrad(x, fn, batch_size=True),
        lambda x, fn: smoothgrad(x, fn, seed=1.5),
    ],
)
def test_bad_options(data, call):
    """A bad value reaching a pure function is a caller bug: ValueError (the API checks user
    options before, with swag_onnx.validation)."""
    x, w = data
    with pytest.raises(ValueError):
        call(x, _linear(w))


# ----------------------------------------------------------------------------- captum parity


@pytest.fixture(scope="module")
def resnet():
    import torch
    from torchvision import models
    torch.manual_seed(0)
    model = models.resnet18(weights=None).eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        c = int(model(x).argmax(dim=1))

    def grad_fn(batch):
        inp = torch.from_numpy(np.ascontiguousarray(batch)).requires_grad_(True)
        scores = model(inp)[:, c]
        (grads,) = torch.autograd.grad(scores.sum(), inp)
        return scores.detach().numpy(), grads.numpy()

    return model, x, c, grad_fn


def _rel(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_captum_saliency(resnet):
    from captum import attr
    model, x, c, grad_fn = resnet
    ref = attr.Saliency(model).attribute(x, target=c, abs=False).detach().numpy()[0]
    ours = gradient(x.numpy()[0], grad_fn)
    assert ours.dtype == np.float32
    print(f"saliency: rel {_rel(ours, ref):.2e}")
    assert _rel(ours, ref) <= 1e-3


def _captum_ig(model, x, c, baseline, steps, method):
    """captum's IG, rescaled by the sum of its step sizes, and its float32 path points (steps, ...).

    Our weights sum to 1; captum's trapezoid weights (1/n, ends halved) sum to (n - 1)/n, so its
    trapezoid attributions are the integral times (n - 1)/n (its other rules sum to 1).
    """
    import torch
    from captum.attr import IntegratedGradients
    from captum.attr._utils.approximation_methods import approximation_parameters

    ref = IntegratedGradients(model).attribute(
        x, baselines=baseline, target=c, n_steps=steps, method=method, internal_batch_size=16
    ).detach().numpy()[0]
    step_sizes, alphas = approximation_parameters(method)
    points = torch.cat([baseline + a * (x - baseline) for a in alphas(steps)]).numpy()
    return ref / sum(step_sizes(steps)), points


def test_captum_integrated_gradients(resnet):
    """Same quadrature rule, same path points: agreement to float rounding of the sums.

    A ReLU network's gradient jumps at kinks, and on resnet18 moving a path point by one float32
    ulp (numpy's float64 linspace vs torch's float32 linspace give alphas an ulp apart) changes
    some per-step gradients by a few percent. So the test's grad_fn maps each point we ask for
    onto captum's own float32 point when one lies within 1e-6 (points captum does not evaluate,
    the ends added for completeness, are left as they are); the next test measures the
    unsnapped difference.
    """
    import torch

    model, x, c, grad_fn = resnet
    baseline, steps = torch.full_like(x, 0.25), 32
    ref, points = _captum_ig(model, x, c, baseline, steps, "riemann_trapezoid")
    flat = points.reshape(len(points), -1).astype(np.float64)
    snapped = []

    def snapping_grad_fn(batch):
        batch = batch.copy()
        for i, row in enumerate(batch):
            dist = np.abs(flat - row.reshape(1, -1)).max(axis=1)
            if dist.min() <= 1e-6:
                batch[i] = points[dist.argmin()]
                snapped.append(int(dist.argmin()))
        return grad_fn(batch)

    ours, info = integrated_gradients(x.numpy()[0], snapping_grad_fn, baseline=0.25, steps=steps)
    assert sorted(snapped) == list(range(steps))
    print(f"trapezoid: rel {_rel(ours, ref):.2e}, completeness {info['relative_error']:.2e}")
    assert _rel(ours, ref) <= 1e-5, _rel(ours, ref)
    with torch.no_grad():
        assert info["score_x"] == pytest.approx(float(model(x)[0, c]), rel=1e-5)
        assert info["score_baseline"] == pytest.approx(float(model(baseline)[0, c]), rel=1e-5)


def test_captum_integrated_gradients_unsnapped(resnet):
    """Path points an ulp apart: the kinks make the difference ~1e-3, not ~1e-6."""
    import torch

    model, x, c, grad_fn = resnet
    baseline, steps = torch.full_like(x, 0.25), 32
    ref, _ = _captum_ig(model, x, c, baseline, steps, "riemann_trapezoid")
    ours, _ = integrated_gradients(x.numpy()[0], grad_fn, baseline=0.25, steps=steps)
    print(f"unsnapped: rel {_rel(ours, ref):.2e}")
    assert _rel(ours, ref) <= 1e-2, _rel(ours, ref)
