"""XRAI: the greedy region cover on hand-made regions, parity with PAIR's saliency package fed
with our integrated gradients on the default model, and the explain / CLI path."""

import cv2
import numpy as np
import pytest
from scipy import sparse
from skimage import data
from typer.testing import CliRunner

from swag_onnx.cli import app
from swag_onnx.methods.xrai import segment_masks, xrai, xrai_regions


def _masks(*regions, shape=(20, 20)):
    """Boolean (H, W) regions -> sparse (R, H*W)."""
    return sparse.csr_matrix(np.array([r.ravel() for r in regions]), shape=(len(regions),
                                                                             shape[0] * shape[1]))


def test_greedy_cover_takes_the_densest_new_pixels_first():
    attr = np.zeros((20, 20))
    attr[:10, :10] = 1.0  # top-left quadrant is what matters
    attr[10:, 10:] = 0.5
    left = np.zeros((20, 20), bool)
    left[:, :10] = True  # mean 0.5
    top_left = np.zeros((20, 20), bool)
    top_left[:10, :10] = True  # mean 1.0
    bottom_right = np.zeros((20, 20), bool)
    bottom_right[10:, 10:] = True  # mean 0.5
    tiny = np.zeros((20, 20), bool)
    tiny[15:18, 0:3] = True  # 9 pixels < 50: dropped, never covers anything
    saliency, ranks = xrai_regions(attr, _masks(left, tiny, top_left, bottom_right))
    assert np.all(saliency[:10, :10] == 1.0) and np.all(ranks[:10, :10] == 1)
    # after top-left, `left` adds only its bottom half (mean 0) and loses to bottom-right (0.5)
    assert np.all(saliency[10:, 10:] == 0.5) and np.all(ranks[10:, 10:] == 2)
    assert np.all(saliency[10:, :10] == 0.0) and np.all(ranks[10:, :10] == 3)
    # the top-right quadrant no region covers: its own mean attribution, ranked last
    assert np.all(saliency[:10, 10:] == 0.0) and np.all(ranks[:10, 10:] == 4)


def test_equal_gains_go_to_the_earlier_region():
    attr = np.ones((20, 20))
    a = np.zeros((20, 20), bool)
    a[:, :10] = True
    b = ~a
    _, ranks = xrai_regions(attr, _masks(b, a))
    assert np.all(ranks[:, 10:] == 1) and np.all(ranks[:, :10] == 2)


def test_segments_match_the_reference():
    from saliency.core import xrai as reference

    image = cv2.resize(data.coffee(), (160, 120)).astype(np.float32)  # not 224: resize path
    ours = segment_masks(image).toarray()
    theirs = np.array([m.ravel() for m in reference._get_segments_felzenszwalb(image) if m.any()])
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)


@pytest.fixture(scope="module")
def explainer():
    from swag_onnx.explain import Explainer

    return Explainer()


def test_parity_with_pair_xrai_on_our_integrated_gradients(explainer):
    """PAIR's XRAI given our IG attribution (channels last) and the same image gives the same map
    and the same region ranking."""
    from saliency.core import XRAI, XRAIParameters

    from swag_onnx import images as imgs
    from swag_onnx.methods.gradients import integrated_gradients

    rgb = data.chelsea()
    batch, (geometry,) = imgs.batch_preprocess([rgb], explainer.card)
    x, view = batch[0], imgs.model_view(rgb, geometry)
    target = int(explainer.predict([rgb])[0].top5[0]["index"])
    attribution, _ = integrated_gradients(x, explainer._grad_fn(target), steps=16,
                                          baselines=_black_white(explainer))
    masks = segment_masks(view)
    ours, ranks = xrai_regions(attribution.max(axis=0), masks)
    reference = XRAI().GetMaskWithDetails(
        view.astype(np.float64), None, base_attribution=attribution.transpose(1, 2, 0),
        extra_parameters=XRAIParameters(return_xrai_segments=True))
    np.testing.assert_allclose(ours, reference.attribution_mask, rtol=1e-6, atol=1e-9)
    assert np.array_equal(ranks, reference.segments)
    assert len(np.unique(ranks)) > 10  # a real ranking, not one region


def test_xrai_function_uses_black_and_white_baselines():
    """On a linear model the IG of each baseline is (x - b) * w exactly: the map is the cover of
    max_c mean_b (x - b) * w."""
    rng = np.random.default_rng(0)
    x = rng.random((3, 24, 24)).astype(np.float32)
    w = rng.standard_normal((3, 24, 24)).astype(np.float32)

    def grad_fn(batch):
        return (batch * w).reshape(len(batch), -1).sum(1), np.broadcast_to(w, batch.shape).copy()

    black, white = np.zeros_like(x), np.ones_like(x)
    image = (x.transpose(1, 2, 0) * 255).astype(np.uint8)
    saliency, ranks, info = xrai(x, grad_fn, image, [black, white], steps=4)
    expected_attr = (((x - black) + (x - white)) / 2 * w).max(axis=0)
    expected, expected_ranks = xrai_regions(expected_attr, segment_masks(image))
    np.testing.assert_allclose(saliency, expected, rtol=1e-5, atol=1e-6)
    assert np.array_equal(ranks, expected_ranks)
    assert info["relative_error"] < 1e-5 and info["calls"] == 2


def test_explain_cli_xrai(tmp_path):
    image = tmp_path / "cat.png"
    cv2.imwrite(str(image), cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["explain", str(image), "--method", "xrai", "--steps", "4",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    saliency = np.load(out / "cat.xrai.npy")
    assert saliency.shape == data.chelsea().shape[:2]
    assert saliency.min() == 0.0 and saliency.max() == 1.0
    bad = CliRunner().invoke(app, ["explain", str(image), "--method", "xrai", "--steps", "1",
                                   "--out", str(out)])
    assert bad.exit_code == 2 and "steps" in bad.output


def _black_white(explainer):
    """A black and a white image in the model-input space (XRAI's baselines)."""
    from swag_onnx import images as imgs

    height, width = explainer.card["input_size"]
    return [imgs.preprocess(np.full((height, width, 3), value, np.uint8), explainer.card)[0][0]
            for value in (0, 255)]
