"""Layer-based maps (swag_onnx.methods.cam): analytic checks and parity with pytorch-grad-cam."""

import numpy as np
import pytest

from swag_onnx.methods.cam import (
    combine_layers,
    gradcam,
    gradcam_plus_plus,
    gradient_x_activation,
    normalize,
    normgrad,
    normgrad_selective,
    upsample,
)


@pytest.fixture
def act_grad():
    rng = np.random.default_rng(0)
    return rng.normal(size=(5, 4, 6)), rng.normal(size=(5, 4, 6))


def test_normgrad_matches_loops(act_grad):
    act, grad = act_grad
    k, h, w = act.shape
    want = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            na = np.sqrt(sum(act[c, i, j] ** 2 for c in range(k)))
            ng = np.sqrt(sum(grad[c, i, j] ** 2 for c in range(k)))
            want[i, j] = na * ng
    np.testing.assert_allclose(normgrad(act, grad), want, rtol=1e-12)
    # Frobenius norm of the outer product A_u G_u^T, at one location
    np.testing.assert_allclose(
        normgrad(act, grad)[1, 2], np.linalg.norm(np.outer(act[:, 1, 2], grad[:, 1, 2])), rtol=1e-12
    )


def test_normgrad_selective_matches_loops(act_grad):
    act, grad = act_grad
    k, h, w = act.shape
    want = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            terms = [max(act[c, i, j] * grad[c, i, j], 0.0) ** 2 for c in range(k)]
            want[i, j] = np.sqrt(sum(terms))
    np.testing.assert_allclose(normgrad_selective(act, grad), want, rtol=1e-12)


def test_gradient_x_activation(act_grad):
    act, grad = act_grad
    want = np.einsum("khw,khw->hw", act, grad)
    np.testing.assert_allclose(gradient_x_activation(act, grad), want)


def test_gradcam_hand_case():
    act = np.stack([np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[4.0, 0.0], [0.0, 1.0]])])
    grad = np.stack([np.full((2, 2), 0.5), np.array([[-2.0, -2.0], [-2.0, 2.0]])])  # means 0.5, -1
    # 0.5 * A0 - 1 * A1 = [[0.5-4, 1-0], [1.5-0, 2-1]] -> ReLU
    np.testing.assert_allclose(gradcam(act, grad), [[0.0, 1.0], [1.5, 1.0]])


def test_gradcam_plus_plus_hand_case_and_zero_gradient():
    act = np.stack([np.array([[1.0, 3.0]]), np.array([[2.0, 2.0]])])  # sums 4, 4
    grad = np.stack([np.array([[1.0, 0.0]]), np.array([[-1.0, 0.5]])])
    # alpha = 1 / (2 + S G) where G != 0: channel 0 -> [1/6, 0]; channel 1 -> [-1/2, 1/4]
    # w_0 = 1/6 * 1 = 1/6; w_1 = 1/4 * 0.5 = 1/8 -> map = ReLU(A0/6 + A1/8)
    np.testing.assert_allclose(gradcam_plus_plus(act, grad), [[1 / 6 + 2 / 8, 3 / 6 + 2 / 8]])
    zero = gradcam_plus_plus(np.ones((3, 4, 4)), np.zeros((3, 4, 4)))
    assert np.all(np.isfinite(zero)) and np.all(zero == 0)


def test_maps_are_nonnegative_and_shaped(act_grad):
    act, grad = act_grad
    from swag_onnx.methods.layer_maps import LAYER_MAPS

    for name, (fn, _, _) in LAYER_MAPS.items():
        if name.startswith("eigen"):  # a projection: signed by design
            continue
        m = fn(act, grad)
        assert m.shape == (4, 6), name
        assert np.all(m >= 0) and np.all(np.isfinite(m)), name


def test_shape_mismatch():
    with pytest.raises(ValueError):
        gradcam(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)))


def test_upsample_and_normalize():
    m = np.arange(12.0).reshape(3, 4)
    up = upsample(m, (30, 20))
    assert up.shape == (30, 20)
    assert up.min() >= 0 and up.max() <= 11
    n = normalize(m)
    assert n.min() == 0 and n.max() == 1
    assert np.all(normalize(np.full((3, 3), 7.0)) == 0)


def test_combine_layers():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])  # normalised: [[0, 1/3], [2/3, 1]]
    b = np.array([[5.0, 5.0], [4.0, 6.0]])  # normalised: [[.5, .5], [0, 1]]
    na, nb = normalize(a), normalize(b)
    np.testing.assert_allclose(combine_layers([a, b], (2, 2), "product"), normalize(na * nb))
    np.testing.assert_allclose(combine_layers([a, b], (2, 2), "sum"), normalize(na + nb))
    out = combine_layers([a, np.ones((7, 7)) * np.arange(7.0)], (14, 14), "sum")
    assert out.shape == (14, 14) and out.min() == 0 and out.max() == 1


def test_combine_layers_bad_options():
    maps = [np.eye(3), np.eye(3)]
    with pytest.raises(ValueError):
        combine_layers(maps, (3, 3), mode="mean")
    with pytest.raises(ValueError):
        combine_layers([], (3, 3))


def _pearson(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def resnet_case():
    import torch
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    store = {}

    def hook(module, inputs, output):
        output.retain_grad()
        store["a"] = output

    handle = model.layer4.register_forward_hook(hook)
    try:
        logits = model(x)
        c = int(logits[0].argmax())
        logits[0, c].backward()
    finally:
        handle.remove()
    act = store["a"][0].detach().numpy()
    grad = store["a"].grad[0].numpy()
    assert act.shape == (512, 7, 7)
    return model, x, c, act, grad


def _reference(cls, model, x, c):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with cls(model=model, target_layers=[model.layer4]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])[0]


def test_gradcam_parity_with_pytorch_grad_cam(resnet_case):
    from pytorch_grad_cam import GradCAM

    model, x, c, act, grad = resnet_case
    ref = _reference(GradCAM, model, x, c)
    ours = normalize(upsample(gradcam(act, grad), (224, 224)))
    assert ref.shape == ours.shape == (224, 224)
    assert _pearson(ours, ref) >= 0.99
    # min-max scaling and bilinear resizing commute up to the final rescale: equal maps
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_gradcam_plus_plus_parity_with_pytorch_grad_cam(resnet_case):
    from pytorch_grad_cam import GradCAMPlusPlus

    model, x, c, act, grad = resnet_case
    ref = _reference(GradCAMPlusPlus, model, x, c)
    # The paper's Eq. 19 (ours): close to the library's map, but not equal.
    paper = normalize(upsample(gradcam_plus_plus(act, grad), (224, 224)))
    assert _pearson(paper, ref) >= 0.99
    # The library adds eps = 1e-6 to the denominator: with it, the maps agree exactly.
    lib = normalize(upsample(gradcam_plus_plus(act, grad, eps=1e-6), (224, 224)))
    assert _pearson(lib, ref) >= 0.999999
    np.testing.assert_allclose(lib, ref, atol=1e-4)
