"""`swag-onnx evaluate`: results.csv / settings.json / curves / summary / plots, resuming an
interrupted run, refusing other settings, bad input; the run and the ranking on a linear toy
model whose best map is known."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from skimage import data
from typer.testing import CliRunner

from swag_onnx import evaluate as ev
from swag_onnx import images as imgs
from swag_onnx import report
from swag_onnx.cli import app
from swag_onnx.errors import BadOptionError
from swag_onnx.metrics import registry as metric_registry

runner = CliRunner()
METHODS = ["gradient", "gradcam", "swag"]
RESOLVED = ["gradient", "gradcam", "swag-image"]
ALL_METRICS = ["deletion", "insertion", "sic", "aic", "class-sensitivity", "pointing"]
ANNOTATIONS = "image,class,x0,y0,x1,y1\nchelsea.png,tabby,140,20,330,250\n" \
              "coffee.png,espresso,100,50,500,300\ncoffee.png,cup,60,20,560,380\n"
FAST = ["--step", "2240", "--pic-reveal", "paste", "--pic-min-score", "0.3", "--no-controls"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_photos")
    for name, rgb in (("astronaut", data.astronaut()), ("chelsea", data.chelsea()),
                      ("coffee", data.coffee())):
        cv2.imwrite(str(folder / f"{name}.png"), rgb[:, :, ::-1])
    (folder / "boxes.csv").write_text(ANNOTATIONS)
    return folder


def _args(photos, out, metrics=ALL_METRICS, methods=METHODS, extra=FAST):
    args = ["evaluate", str(photos), "--out", str(out), "--annotations",
            str(photos / "boxes.csv")]
    for m in methods:
        args += ["--method", m]
    for m in metrics:
        args += ["--metric", m]
    return args + list(extra)


@pytest.fixture(scope="module")
def full_run(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    result = runner.invoke(app, _args(photos, out))
    assert result.exit_code == 0, result.output
    return out


def _values(path: Path) -> dict:
    rows = ev.read_results(path)
    keys = [ev.row_key(r) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate rows"
    return {ev.row_key(r): (r["value"], r["target"], r["label"]) for r in rows}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (np.isnan(a[k][0]) and np.isnan(b[k][0])) or a[k] == b[k] for k in a)


# ------------------------------------------------------------------------------------ the CLI

def test_cli_writes_every_output(full_run):
    with open(full_run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ev.COLUMNS
    # 3 images x 3 methods x 5 top-1 metrics, + pointing: chelsea (tabby), coffee (espresso, cup)
    assert len(rows) == 3 * 3 * 5 + 3 * 3
    assert {r["method"] for r in rows} == set(RESOLVED)
    assert [r["image"] for r in rows] == sorted(r["image"] for r in rows)  # image by image
    pointing = [r for r in rows if r["metric"] == "pointing"]
    assert sorted({(r["image"], r["label"]) for r in pointing}) == [
        ("chelsea", "tabby"), ("coffee", "cup"), ("coffee", "espresso")]
    assert {r["target"] for r in pointing} == {"281", "967", "968"}
    assert all(r["value"] in ("0.0", "1.0") and r["detail"] in ("hit", "miss") for r in pointing)
    coffee = [r for r in rows if r["image"] == "coffee" and r["metric"] == "deletion"]
    assert {r["target"] for r in coffee} == {"967"} and {r["label"] for r in coffee} == {"espresso"}
    for r in rows:
        value = float(r["value"])
        assert float(r["seconds"]) > 0
        if r["metric"] in ("deletion", "insertion", "aic"):
            assert 0.0 <= value <= 1.0
        if r["metric"] == "class-sensitivity" and not np.isnan(value):
            assert -1.0 <= value <= 1.0 and "least probable class" in r["detail"]
    # coffee's espresso is confident (0.96 > --pic-min-score 0.3): SIC is defined
    assert all(np.isfinite(float(r["value"])) for r in rows
               if r["image"] == "coffee" and r["metric"] == "sic")
    for r in rows:  # every finite curve metric has its raw curve
        if metric_registry.owner(r["metric"]).curves and np.isfinite(float(r["value"])):
            curve = np.load(full_run / "curves" / f"{r['image']}__{r['method']}__{r['metric']}.npy")
            assert curve.shape[0] == 2 and curve[0, 0] == 0.0 and curve[0, -1] == 1.0
    delete = np.load(full_run / "curves" / "coffee__gradient__deletion.npy")
    assert delete.shape == (2, 224 * 224 // 2240 + 2)  # 22.4 steps -> 23 steps + the start

    summary = (full_run / "summary.md").read_text()
    for text in RESOLVED + ["deletion AUC ↓", "insertion AUC ↑", "SIC AUC ↑", "AIC AUC ↑",
                            "pointing accuracy ↑", "class sensitivity ↓", "## Ranking",
                            "lower = more class-sensitive", "kernel 11, sigma 5.0",
                            "2240 pixels per step", "within 15 px", "below 0.3",
                            "('paste')", "images per minute", "s / explanation",
                            "softmax probability of the class predicted on the clean image"]:
        assert text in summary, text
    settings = ev.load_settings(full_run)
    assert settings["settings"]["protocol"]["step"] == 2240
    assert settings["runs"][-1]["images"] == 3
    for name in ("curves.png", "overlays.png"):
        picture = imgs.load_image(full_run / name)
        assert picture.shape[0] > 100 and picture.shape[1] > 300
    grid = imgs.load_image(full_run / "overlays.png")
    assert grid.shape[1] == 3 * 192  # one column per method
    assert (full_run / "overlays.png").stat().st_size < 2_000_000


def test_resume_after_interruption_equals_uninterrupted_run(photos, full_run, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(full_run, out)
    lines = (out / "results.csv").read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith("coffee,")]
    assert len(kept) < len(lines)
    kept[-1] = kept[-1][:len(kept[-1]) // 2]  # the last line was being written
    (out / "results.csv").write_text("".join(kept))
    for curve in (out / "curves").glob("coffee__*"):
        curve.unlink()
    result = runner.invoke(app, _args(photos, out))
    assert result.exit_code == 0, result.output
    assert "2 image(s) evaluated, 1 already done" in result.output
    assert _same(_values(out / "results.csv"), _values(full_run / "results.csv"))
    assert (out / "curves" / "coffee__gradcam__insertion.npy").exists()
    again = runner.invoke(app, _args(photos, out))  # nothing left to do
    assert again.exit_code == 0 and "0 image(s) evaluated, 3 already done" in again.output
    assert "every row already computed" in (out / "summary.md").read_text()


def test_interrupted_run_keeps_finished_images(photos, full_run, tmp_path, monkeypatch):
    from swag_onnx.explain import Explainer

    explainer = Explainer()
    items, _ = ev.items_from_paths([photos])
    options = {"step": 2240, "pic_reveal": "paste", "pic_min_score": 0.3}  # as full_run's
    plan = ev.plan(["gradient"], ["deletion", "insertion"], options)
    out = tmp_path / "cut"
    real = ev.evaluate_image
    calls = []

    def evaluate_image(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "evaluate_image", evaluate_image)
    with pytest.raises(KeyboardInterrupt):
        ev.run(explainer, items, out, plan)
    assert {r["image"] for r in ev.read_results(out / "results.csv")} == {"astronaut"}
    monkeypatch.setattr(ev, "evaluate_image", real)
    report_ = ev.run(explainer, items, out, plan)
    assert (report_.processed, report_.skipped) == (2, 1) and len(report_.rows) == 6
    # The settings of full_run (another method/metric subset): the same values.
    assert ev.load_settings(out)["settings"] == ev.load_settings(full_run)["settings"]
    mine, full = _values(out / "results.csv"), _values(full_run / "results.csv")
    assert _same(mine, {k: full[k] for k in mine})
    # A later run may add a method: only its rows are computed.
    more = ev.plan(["gradient", "gradient-x-input"], ["deletion", "insertion"], options)
    report_ = ev.run(explainer, items, out, more)
    assert report_.processed == 3 and len(report_.rows) == 12
    assert _same({k: v for k, v in _values(out / "results.csv").items() if k in mine}, mine)


def test_rerun_with_other_settings_is_refused(photos, full_run, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(full_run, out)
    before = (out / "results.csv").read_bytes()
    extra = ["--step", "1120", "--pic-reveal", "paste", "--pic-min-score", "0.3", "--no-controls"]
    result = runner.invoke(app, _args(photos, out, extra=extra))
    assert result.exit_code == 2, result.output
    assert "other settings" in result.output and "protocol.step: 2240 -> 1120" in result.output
    assert "Traceback" not in result.output and (out / "results.csv").read_bytes() == before


@pytest.mark.parametrize("case,message", [
    ("no-images", "no images to evaluate"),
    ("unknown-metric", "unknown metric 'accuracy'"),
    ("pointing-without-annotations", "needs --annotations"),
    ("bad-annotations", "missing column"),
    ("unknown-class", "not among the model's class names"),
    ("out-is-a-file", "is a file"),
    ("unknown-method", "unknown method"),
    ("option-for-no-method", "steps do not apply"),
    ("meta-with-lime", "--meta applies to"),
])
def test_bad_input_is_one_line_and_exit_code_2(photos, tmp_path, case, message):
    image = str(photos / "coffee.png")
    out = tmp_path / "o"
    args = ["evaluate", image, "--out", str(out), "--method", "gradient", "--no-controls"]
    if case == "no-images":
        (tmp_path / "empty").mkdir()
        args[1] = str(tmp_path / "empty")
    elif case == "unknown-metric":
        args += ["--metric", "accuracy"]
    elif case == "pointing-without-annotations":
        args += ["--metric", "pointing"]
    elif case in ("bad-annotations", "unknown-class"):
        path = tmp_path / "boxes.csv"
        path.write_text("image,label,x0,y0,x1,y1\n" if case == "bad-annotations" else
                        "image,class,x0,y0,x1,y1\ncoffee.png,unicorn,1,1,9,9\n")
        args += ["--metric", "pointing", "--annotations", str(path)]
    elif case == "out-is-a-file":
        out.write_text("not a folder")
    elif case == "unknown-method":
        args += ["--method", "magic"]
    elif case == "option-for-no-method":
        args += ["--steps", "8"]
    elif case == "meta-with-lime":
        args += ["--method", "lime", "--meta"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.is_dir() or not any(out.iterdir())


# ------------------------------------------------------------------------- results.csv itself

def test_results_file_repairs_a_half_written_line(tmp_path):
    path = tmp_path / "results.csv"
    rows = [ev._row("a", "m", "deletion", 3, "cat, tabby", 0.1 + 0.2, 0.5),
            ev._row("a", "m", "sic", 3, "cat, tabby", float("nan"), 0.5, "skipped: low")]
    ev.append_rows(path, rows)
    with open(path, "a") as f:
        f.write("b,m,deletion,4,dog,0.12")  # interrupted mid-line
    back = ev.read_results(path)
    assert [ev.row_key(r) for r in back] == [("a", "m", "deletion", ""), ("a", "m", "sic", "")]
    assert back[0]["value"] == 0.1 + 0.2 and np.isnan(back[1]["value"])  # exact round trip
    assert back[0]["label"] == "cat, tabby" and back[1]["detail"] == "skipped: low"
    assert path.read_text().endswith("skipped: low\n")  # the partial line is gone
    ev.append_rows(path, [ev._row("b", "m", "deletion", 4, "dog", 0.5, 0.1)])
    assert len(ev.read_results(path)) == 3
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(BadOptionError, match="not a swag-onnx evaluate results file"):
        ev.read_results(other)


def test_scale_model_view_matches_preprocess():
    rgb = data.chelsea()
    for card in ({"layout": "NCHW", "input_size": [224, 224], "resize": 256,
                  "scaling": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}},
                 {"layout": "NHWC", "input_size": [96, 128], "color_order": "BGR",
                  "scaling": {"offset": 127, "divisor": 128}}):
        x, geometry = imgs.preprocess(rgb, card)
        view = imgs.model_view(rgb, geometry)
        np.testing.assert_array_equal(imgs.scale_model_view(view, card), x)
        np.testing.assert_array_equal(imgs.scale_model_view(np.stack([view] * 2), card)[1], x[0])
        with pytest.raises(ValueError, match="model input"):
            imgs.scale_model_view(rgb, card)


# ------------------------------------------------------------ a linear toy model, end to end

SIZE = 16


class ToyExplainer:
    """A 2-class linear model on 16x16 images with known best maps, behind the Explainer API.

    logit_1 = sum(w * x) / T, logit_0 = 0; x = pixel / 255 (NCHW). Methods: "oracle" (class 1:
    the per-pixel contribution w * x summed over channels, i.e. the exact best order for deletion
    and insertion; class 0: its negative), "inverted" (the oracle reversed), "noise" (a random
    map per class), "constant-order" (the same map whatever the class).
    """

    def __init__(self, tmp_path: Path):
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:SIZE, :SIZE]
        blob = np.exp(-((yy - 5) ** 2 + (xx - 10) ** 2) / 8.0)
        self.w = blob[None] * np.array([1.0, 0.5, 0.25])[:, None, None] \
            + 0.02 * rng.standard_normal((3, SIZE, SIZE))
        self.card = {"layout": "NCHW", "input_size": [SIZE, SIZE], "resize": None,
                     "scaling": {"offset": 0, "divisor": 255}, "class_names": ["zero", "one"]}
        self.onnx_path = tmp_path / "toy.onnx"
        self.onnx_path.write_bytes(b"toy model")
        self.runner = SimpleNamespace(layers=[])
        self.provider = "toy"
        self.num_classes = 2

    def logits(self, batch):
        s = (batch.astype(np.float64) * self.w).reshape(len(batch), -1).sum(1) / 6.0
        return np.stack([np.zeros_like(s), s], axis=1)

    def probabilities(self, batch):
        z = self.logits(batch)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def explain(self, images, method, target=None, **params):
        rgb = images[0]
        x, _ = imgs.preprocess(rgb, self.card)
        cls = int(self.probabilities(x)[0].argmax()) if target is None else int(target)
        contribution = (self.w * x[0]).sum(0)
        maps = {"oracle": contribution if cls == 1 else -contribution,
                "inverted": -contribution if cls == 1 else contribution,
                "noise": np.random.default_rng(cls).random((SIZE, SIZE)),
                "constant-order": contribution}
        return [SimpleNamespace(saliency=imgs.normalize(maps[m]), method=m, image=rgb,
                                target={"index": cls, "label": self.card["class_names"][cls]},
                                timings_ms={"method": 1.0}) for m in method]


def _toy_items(n=4):
    rng = np.random.default_rng(1)
    return [ev.Item(f"toy{i}", rgb=(rng.random((SIZE, SIZE, 3)) * 155 + 100).astype(np.uint8))
            for i in range(n)]


def test_toy_model_ranks_the_oracle_first(tmp_path):
    toy = ToyExplainer(tmp_path)
    methods = ["noise", "oracle", "inverted", "constant-order"]
    metrics = ["deletion", "insertion", "class-sensitivity"]
    plan = ev.Plan(methods, {}, metric_registry.resolve(metrics),
                   metric_registry.check_protocol({"step": 8, "batch_size": 7}), {})
    result = ev.run(toy, _toy_items(), tmp_path / "out", plan)
    assert result.processed == 4 and len(result.rows) == 4 * 4 * 3
    stats = report.statistics(result.rows, methods, metrics)
    # The oracle order is the best order for a linear model at every step (strictly better
    # than a reversed or random order), so it wins deletion and insertion; inverted loses both.
    for metric in ("deletion", "insertion"):
        order = [m for m, _ in report.ranking(stats, methods, metric)]
        assert order[0] == "oracle" and order[-1] == "inverted", (metric, order)
    # Class sensitivity: the oracle map of class 0 is the negated map of class 1 -> -1; the
    # map that ignores the class -> +1; independent random maps -> about 0.
    assert stats["oracle", "class-sensitivity"].mean == pytest.approx(-1.0)
    assert stats["constant-order", "class-sensitivity"].mean == pytest.approx(1.0)
    assert abs(stats["noise", "class-sensitivity"].mean) < 0.3
    assert [m for m, _ in report.ranking(stats, methods, "class-sensitivity")] == [
        "oracle", "inverted", "noise", "constant-order"]  # oracle and inverted tie (-1)
    settings = ev.load_settings(tmp_path / "out")
    written = report.write_report(tmp_path / "out", result.rows, methods, metrics,
                                  settings["settings"], settings["runs"][-1])
    assert [p.name for p in written] == ["summary.md", "curves.png", "overlays.png",
                                         "report.html"]
    text = written[0].read_text()
    assert "deletion AUC (lower is better): 1. oracle" in text
    assert "insertion AUC (higher is better): 1. oracle" in text
    assert "class sensitivity (lower is better): 1. oracle (-1.000)" in text


def test_statistics_and_ranking_by_hand():
    def row(image, method, metric, value, label=""):
        return ev._row(image, method, metric, 0, label, value, 1.0)

    rows = [row("a", "m1", "deletion", 0.2), row("b", "m1", "deletion", 0.4),
            row("a", "m2", "deletion", 0.1), row("b", "m2", "deletion", 0.1),
            row("a", "m1", "sic", float("nan")), row("b", "m1", "sic", 0.5),
            row("a", "m2", "sic", 0.7), row("b", "m2", "sic", 0.3),
            row("a", "m1", "pointing", 1.0, "cat"), row("b", "m1", "pointing", 0.0, "cat"),
            row("b", "m1", "pointing", 1.0, "dog"),
            row("a", "m2", "pointing", 0.0, "cat"), row("b", "m2", "pointing", 1.0, "dog")]
    stats = report.statistics(rows, ["m1", "m2"], ["deletion", "sic", "pointing"])
    assert stats["m1", "deletion"] == report.Stat(pytest.approx(0.3), pytest.approx(0.1), 2, 0)
    assert stats["m1", "sic"] == report.Stat(0.5, 0.0, 1, 1)  # NaN: skipped, not averaged
    assert stats["m1", "pointing"].mean == pytest.approx(0.75)  # mean of cat 0.5 and dog 1.0
    assert stats["m2", "pointing"].mean == pytest.approx(0.5) and stats["m2", "pointing"].n == 2
    assert report.ranking(stats, ["m1", "m2"], "deletion") == [("m2", 0.1),
                                                                ("m1", pytest.approx(0.3))]
    assert [m for m, _ in report.ranking(stats, ["m1", "m2"], "sic")] == ["m1", "m2"]
    assert [m for m, _ in report.ranking(stats, ["m1", "m2"], "pointing")] == ["m1", "m2"]


def test_plan_resolves_and_checks_everything_before_any_run():
    resolve = metric_registry.resolve
    assert [m.name for m in resolve([])] == ["deletion", "insertion"]
    assert [m.name for m in resolve(["AIC", "deletion", "aic"])] == ["deletion", "aic"]
    with pytest.raises(BadOptionError, match="unknown metric"):
        resolve(["iou"])
    plan = ev.plan(["swag", "gradcam", "swag-image"], [], {})
    assert plan.methods == ["swag-image", "gradcam"]
    options = {"seed": 3, "batch_size": 8, "combine": "sum", "steps": None}
    with pytest.raises(BadOptionError, match="combine do not apply to gradient"):
        ev.plan(["gradient"], [], options)
    both = ev.plan(["rise", "gradcam"], [], options)  # seed, batch_size: methods and metrics
    assert both.method_options == {"seed": 3, "batch_size": 8, "combine": "sum"}
    assert both.protocol["batch_size"] == 8 and both.protocol["seed"] == 3
    with pytest.raises(BadOptionError, match="masks do not apply"):
        ev.plan(["gradient"], [], {"masks": 10})
    with pytest.raises(BadOptionError, match="blur_ksize must be an odd integer"):
        ev.plan(["gradient"], ["deletion"], {"blur_ksize": 2})
    assert ev.plan(["normgrad"], [], {}, meta=True, meta_lr=-0.01).options == {
        "meta": True, "meta_lr": -0.01}
    with pytest.raises(BadOptionError, match="not to rise"):
        ev.plan(["normgrad", "rise"], [], {}, meta=True, meta_lr=0.1)


def test_meta_saliency_is_evaluated_and_recorded(photos, tmp_path):
    out = tmp_path / "meta"
    args = ["evaluate", str(photos / "coffee.png"), "--out", str(out), "--method", "normgrad",
            "--step", "2240", "--no-controls"]
    plain = runner.invoke(app, args[:3] + [str(tmp_path / "plain")] + args[4:])
    result = runner.invoke(app, args + ["--meta"])
    assert plain.exit_code == 0 and result.exit_code == 0, result.output
    settings = ev.load_settings(out)["settings"]
    assert settings["methods"]["meta"] is True and settings["methods"]["meta_lr"] == 0.0025
    values = [[r["value"] for r in ev.read_results(folder / "results.csv")]
              for folder in (tmp_path / "plain", out)]
    assert values[0] != values[1]  # the step changes the map, hence the curves


def test_controls_are_evaluated_and_flagged(photos, tmp_path):
    """By default random and center are scored beside the methods; summary.md says on which
    metric a control beats a real method (or that none does)."""
    out = tmp_path / "controls"
    result = runner.invoke(app, ["evaluate", str(photos / "coffee.png"), "--method", "gradcam",
                                 "--out", str(out), "--step", "2240"])
    assert result.exit_code == 0, result.output
    rows = ev.read_results(out / "results.csv")
    assert {r["method"] for r in rows} == {"gradcam", "random", "center"}
    stats = report.statistics(rows, ["gradcam", "random", "center"], ["deletion", "insertion"])
    summary = (out / "summary.md").read_text()
    assert "## Controls" in summary
    beaten = [metric for metric, sign in (("deletion", -1), ("insertion", 1))
              if any(sign * (stats[c, metric].mean - stats["gradcam", metric].mean) > 0
                     for c in ("random", "center"))]
    for metric in beaten:
        assert f"{report.title(metric)}: " in summary and "does not separate" in summary
    if not beaten:
        assert "Every real method beats the controls" in summary


def test_random_logit_on_a_model_whose_classes_use_opposite_evidence(tmp_path):
    """Two classes, so the random other class is the other one: the oracle's maps of the two
    classes are opposite (Spearman -1), a map that ignores the class scores +1."""
    toy = ToyExplainer(tmp_path)
    methods = ["oracle", "constant-order", "noise"]
    plan = ev.Plan(methods, {}, metric_registry.resolve(["random-logit"]),
                   metric_registry.check_protocol({}), {})
    result = ev.run(toy, _toy_items(3), tmp_path / "out", plan)
    stats = report.statistics(result.rows, methods, ["random-logit"])
    assert stats["oracle", "random-logit"].mean == pytest.approx(-1.0)
    assert stats["constant-order", "random-logit"].mean == pytest.approx(1.0)
    assert abs(stats["noise", "random-logit"].mean) < 0.3
    assert all("random other class" in r["detail"] for r in result.rows)
