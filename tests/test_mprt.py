"""The model-parameter randomisation test (MPRT, Adebayo et al. 2018): the redrawn parameters
reach onnxruntime (logits and maps against NumPy on the redrawn weights) and never leak, the
stages of the cascade on a toy network, known answers (a map of the input alone keeps
correlation 1, gradient x input on a linear model decorrelates), Grad-CAM on the default model,
the evaluate/CLI path and its bad input."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from skimage import data, filters
from typer.testing import CliRunner

from swag_onnx import Explainer
from swag_onnx import evaluate as ev
from swag_onnx.cli import app
from swag_onnx.metrics import mprt
from swag_onnx.metrics.registry import METRICS, MetricInputs
from swag_onnx.runtime import file_sha256

SIZE, K = 16, 4
runner = CliRunner()


def _save(tmp_path, name, nodes, inits) -> object:
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", K])],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k)
                     for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """y = W flatten(x) + b, x in [-1, 1] (scaling offset 127.5, divisor 127.5)."""
    rng = np.random.default_rng(1)
    inits = {"W": rng.standard_normal((K, 3 * SIZE * SIZE)), "b": rng.standard_normal(K)}
    nodes = [helper.make_node("Identity", ["x"], ["xi"]),  # a spatial layer (Grad-CAM's)
             helper.make_node("Flatten", ["xi"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "W", "b"], ["y"], transB=1)]
    path = _save(tmp_path_factory.mktemp("mprt"), "linear", nodes, inits)
    card = {"input_size": [SIZE, SIZE], "resize": None, "layout": "NCHW",
            "scaling": {"offset": 127.5, "divisor": 127.5}}
    return path, card, inits


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    """conv -> relu (16x16) -> conv stride 2 -> relu (8x8) -> global average pool -> Gemm."""
    rng = np.random.default_rng(2)
    inits = {"c1w": rng.standard_normal((6, 3, 3, 3)) * 0.3, "c1b": rng.standard_normal(6) * 0.1,
             "c2w": rng.standard_normal((8, 6, 3, 3)) * 0.3, "c2b": rng.standard_normal(8) * 0.1,
             "fw": rng.standard_normal((K, 8)), "fb": rng.standard_normal(K) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "c2w", "c2b"], ["c2"], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "fw", "fb"], ["y"], transB=1)]
    path = _save(tmp_path_factory.mktemp("mprt"), "convnet", nodes, inits)
    card = {"input_size": [SIZE, SIZE], "resize": None, "layout": "NCHW",
            "scaling": {"offset": 0, "divisor": 255}}
    return path, card, inits


def _photo(seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def test_redraw_keeps_scale_and_is_seeded():
    value = np.random.default_rng(0).normal(0.3, 2.0, (64, 32)).astype(np.float32)
    drawn = mprt.redraw("w", value, 5)
    assert drawn.dtype == np.float32 and drawn.shape == value.shape
    # 2048 draws: the mean within 4.5 standard errors (2 / sqrt(2048) = 0.044), the std 5%
    assert drawn.mean() == pytest.approx(value.mean(), abs=0.2)
    assert drawn.std() == pytest.approx(value.std(), rel=0.05)
    assert abs(np.corrcoef(drawn.ravel(), value.ravel())[0, 1]) < 0.1
    np.testing.assert_array_equal(drawn, mprt.redraw("w", value, 5))
    assert not np.array_equal(drawn, mprt.redraw("w", value, 6))
    assert not np.array_equal(drawn, mprt.redraw("v", value, 5))
    assert mprt.redraw("ones", np.ones(100), 0).std() == pytest.approx(1.0, 0.2)
    steps = mprt.cascade([("a", ["w"]), ("b", ["v"])], {"w": value, "v": value}, 5)
    assert [n for n, _ in steps] == ["a", "b"] and set(steps[1][1]) == {"w", "v"}
    np.testing.assert_array_equal(steps[1][1]["w"], drawn)


def test_spearman_and_ssim_definitions():
    rng = np.random.default_rng(0)
    a = rng.random((12, 12))
    assert mprt.spearman(a, -a) == pytest.approx(1.0)  # absolute maps
    assert mprt.spearman(a, 2 * a + 1) == pytest.approx(1.0)
    assert mprt.spearman(a, np.zeros_like(a)) == 0.0
    assert mprt.spearman(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert mprt.ssim(a, 3 * a) == pytest.approx(1.0)
    assert mprt.ssim(a, rng.random((12, 12))) < 0.3


def test_randomised_parameters_reach_onnxruntime_and_never_leak(linear):
    path, card, inits = linear
    digest = file_sha256(path)
    explainer = Explainer(path, card=card)
    assert explainer.runner.parameter_stages() == [("score", ["W", "b"])]
    (_, overrides), = mprt.cascade(explainer.runner.parameter_stages(),
                                   explainer.runner.parameter_values(), 3)
    photo = _photo()
    x = (photo.astype(np.float32).transpose(2, 0, 1)[None] - 127.5) / 127.5
    own = explainer.scores(x)
    np.testing.assert_allclose(own, x.reshape(1, -1) @ inits["W"].T + inits["b"], rtol=1e-4,
                               atol=1e-4)
    drawn = explainer.scores(x, parameters=overrides)
    np.testing.assert_allclose(drawn, x.reshape(1, -1) @ overrides["W"].T + overrides["b"],
                               rtol=1e-4, atol=1e-4)
    before, = explainer.explain([photo], method="gradient-x-input")
    target = before.target["index"]
    after, = explainer.explain([photo], method="gradient-x-input", target=target,
                               parameters=overrides)
    # the map of the randomised model, by hand: max over channels of |W'_target * x|
    expected = np.abs(overrides["W"][target].reshape(3, SIZE, SIZE) * x[0]).max(0)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(after.saliency, expected, atol=1e-5)
    again, = explainer.explain([photo], method="gradient-x-input")
    np.testing.assert_array_equal(again.saliency, before.saliency)
    np.testing.assert_array_equal(explainer.scores(x), own)
    assert file_sha256(path) == digest


def test_gradient_x_input_on_a_linear_model_decorrelates(linear):
    """|x| = 1 everywhere (a 0/255 image, scaled to -1/+1): the map is max_c |W_target,c|, and
    independent redrawn weights give Spearman ~0 (std 1/sqrt(255) under independence)."""
    path, card, _ = linear
    explainer = Explainer(path, card=card)
    photo = np.where(np.random.default_rng(4).random((SIZE, SIZE, 3)) < 0.5, 0, 255
                     ).astype(np.uint8)
    values = []
    for seed in range(3):
        (_, overrides), = mprt.cascade(explainer.runner.parameter_stages(),
                                       explainer.runner.parameter_values(), seed)
        before, = explainer.explain([photo], method="gradient-x-input")
        after, = explainer.explain([photo], method="gradient-x-input",
                                   target=before.target["index"], parameters=overrides)
        values.append(mprt.spearman(before.saliency, after.saliency))
    assert max(abs(v) for v in values) < 0.25, values


def test_stages_from_the_output_down(convnet):
    path, card, _ = convnet
    explainer = Explainer(path, card=card)
    assert explainer.runner.parameter_stages() == [("score", ["fw", "fb"]),
                                                   ("r2", ["c2w", "c2b"]), ("all", ["c1w", "c1b"])]


def test_every_model_function_sees_the_randomised_model(convnet):
    """The shared run, the score function (Score-CAM, LIME, RISE) and the layer head (AblationCAM)
    all run the randomised model: the head fed the randomised activation gives the randomised
    logits."""
    path, card, _ = convnet
    explainer = Explainer(path, card=card, layers=["r1"])
    run = explainer.runner
    overrides = mprt.cascade(run.parameter_stages(), run.parameter_values(), 0)[-1][1]
    x = (_photo(1).astype(np.float32).transpose(2, 0, 1)[None]) / 255
    seed = np.zeros((1, K), np.float32)
    own, drawn = run.gradients(x, seed), run.gradients(x, seed, overrides)
    assert not np.allclose(own.scores, drawn.scores)
    np.testing.assert_allclose(run.scores(x, overrides), drawn.scores, rtol=1e-5, atol=1e-5)
    for outputs, parameters in ((own, None), (drawn, overrides)):
        head = run.layer_scores("r1", outputs.activations["r1"], x, parameters)
        np.testing.assert_allclose(head, outputs.scores, rtol=1e-5, atol=1e-5)
    for method in ("ablationcam", "scorecam", "rise"):
        params = {"masks": 8} if method == "rise" else {}
        base, = explainer.explain([_photo(1)], method=method, **params)
        other, = explainer.explain([_photo(1)], method=method, target=base.target["index"],
                                   parameters=overrides, **params)
        assert not np.allclose(base.saliency, other.saliency), method


def test_randomised_scores_run_on_baked_sessions_kept_per_parameter_set(convnet, monkeypatch):
    """Scores with replaced parameters run on plain sessions with the values written into the
    weights (fed to the weights-augmented model they are 13-17x slower): equal to the fed
    model's scores, one session per parameter set reused across calls, at most BAKED_SESSIONS
    kept, and the fed model when the original graph lacks a parameter (folded int8 weights),
    found once per runner."""
    from swag_onnx import runtime

    path, card, _ = convnet
    run = Explainer(path, card=card).runner
    stages = mprt.cascade(run.parameter_stages(), run.parameter_values(), 0)
    assert len(stages) >= 2
    built = []
    real = runtime._baked_session
    monkeypatch.setattr(runtime, "_baked_session", lambda *a: built.append(1) or real(*a))
    x = (_photo(2).astype(np.float32).transpose(2, 0, 1)[None]) / 255
    seed = np.zeros((1, K), np.float32)
    for _ in range(2):
        for _, overrides in stages:
            np.testing.assert_allclose(run.scores(x, overrides),
                                       run.gradients(x, seed, overrides).scores,
                                       rtol=1e-5, atol=1e-5)
    assert len(built) == len(stages)
    monkeypatch.setattr(runtime.ModelRunner, "BAKED_SESSIONS", 1)
    run.scores(x, stages[0][1])
    assert len(run._baked) == 1
    refused = []
    monkeypatch.setattr(runtime, "_baked_session", lambda *a: refused.append(1))
    for scale in (2, 3):  # the model is tried once: whether it bakes depends on names only
        scaled = {name: value / scale for name, value in stages[-1][1].items()}
        np.testing.assert_allclose(run.scores(x, scaled), run.gradients(x, seed, scaled).scores,
                                   rtol=1e-5, atol=1e-5)
    assert len(refused) == 1


def _inputs(saliency, maps) -> MetricInputs:
    return MetricInputs(x=np.zeros((3, SIZE, SIZE), np.float32), layout="CHW",
                        view=np.zeros((SIZE, SIZE, 3), np.uint8), saliency=saliency,
                        original=saliency, target=0, probabilities=None,
                        rgb_probabilities=None, image_name="x", randomised_maps=maps)


def test_a_map_of_the_input_alone_keeps_correlation_one(convnet):
    """An edge map (Sobel of the image) is the same whatever the parameters: MPRT 1 at every
    stage of the toy network's real cascade, SSIM 1."""
    path, card, _ = convnet
    explainer = Explainer(path, card=card)
    image = data.camera()[::16, ::16][:SIZE, :SIZE].astype(np.float64)
    stages = mprt.cascade(explainer.runner.parameter_stages(),
                          explainer.runner.parameter_values(), 0)
    seen = []

    def maps(seed):
        seen.append(seed)
        return [(name, filters.sobel(image)) for name, _ in stages]

    values = METRICS["mprt"].run(_inputs(filters.sobel(image), maps), seed=7)
    assert seen == [7] and [v.row for v in values] == ["mprt", "mprt-ssim"]
    assert values[0].value == pytest.approx(1.0) and values[1].value == pytest.approx(1.0)
    x, y = values[0].curve
    np.testing.assert_allclose(x, [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(y, 1.0)
    assert "score 1.000; r2 1.000; all 1.000" in values[0].note


def test_evaluate_rows_curves_and_controls(convnet, tmp_path):
    """Through `evaluate`: the gradient map decorrelates, the control maps (which ignore the
    model) score exactly 1; curves are written for each row."""
    path, card, _ = convnet
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(2):
        cv2.imwrite(str(folder / f"p{k}.png"), _photo(k))
    out = tmp_path / "out"
    result = ev.evaluate([folder], ["gradient"], ["mprt"], out, model=path, card=card)
    assert not result.problems
    rows = list(csv.DictReader(open(out / "results.csv")))
    values = {(r["image"], r["method"], r["metric"]): float(r["value"]) for r in rows}
    assert len(values) == 2 * 3 * 2
    for image in ("p0", "p1"):
        for control in ("random", "center"):
            assert values[image, control, "mprt"] == pytest.approx(1.0)
            assert values[image, control, "mprt-ssim"] == pytest.approx(1.0)
        assert values[image, "gradient", "mprt"] < 0.5
        curve = np.load(out / "curves" / f"{image}__gradient__mprt.npy")
        assert curve.shape == (2, 4) and curve[1, 0] == 1.0
    assert (out / "curves" / "p0__gradient__mprt-ssim.npy").exists()


def test_mprt_for_a_method_that_needs_no_model_is_refused(tmp_path):
    photo = tmp_path / "cat.png"
    cv2.imwrite(str(photo), data.chelsea()[:, :, ::-1])
    out = tmp_path / "out"
    done = runner.invoke(app, ["evaluate", str(photo), "--metric", "mprt", "--method", "center",
                               "--out", str(out)])
    assert done.exit_code == 2
    assert len(done.output.strip().splitlines()) == 1 and "center" in done.output
    assert "mprt" in done.output and not out.exists()


def test_metrics_listing_names_mprt():
    done = runner.invoke(app, ["metrics"])
    assert done.exit_code == 0 and "mprt" in done.output


@pytest.mark.slow
def test_gradcam_fails_to_survive_randomisation_on_the_default_model(tmp_path):
    """Adebayo et al. report Grad-CAM's rank correlation near 0 after cascading randomisation:
    below 0.5 on two photos, through the CLI."""
    for name, rgb in (("chelsea", data.chelsea()), ("coffee", data.coffee())):
        cv2.imwrite(str(tmp_path / f"{name}.png"), rgb[:, :, ::-1])
    out = tmp_path / "out"
    done = runner.invoke(app, ["evaluate", str(tmp_path / "chelsea.png"),
                               str(tmp_path / "coffee.png"), "--metric", "mprt", "--method",
                               "gradcam", "--no-controls", "--out", str(out)])
    assert done.exit_code == 0, done.output
    rows = [r for r in csv.DictReader(open(out / "results.csv")) if r["metric"] == "mprt"]
    assert len(rows) == 2 and all(float(r["value"]) < 0.5 for r in rows), rows
