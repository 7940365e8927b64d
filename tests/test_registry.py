"""The method and metric registries: every method and metric reached through every front door
(Explainer, `swag-onnx explain`, `swag-onnx evaluate`, the listings), and the golden maps of the
methods that existed before the registry (tests/golden, made by tests/golden/make_golden.py)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from swag_onnx import Explainer
from swag_onnx.methods import METHODS
from swag_onnx.metrics.registry import METRICS

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
import make_golden  # noqa: E402

SMALL_LAYER = "/_blocks.1/_swish/Clip_output_0"  # 96 channels: ScoreCAM in 96 model runs
# One line per method: the quick parameters its table-driven checks use ("layer": the layer).
QUICK = {
    "swag-image": {}, "swag-gradient": {}, "swag-combined": {},
    "gradcam": {}, "gradcam++": {}, "normgrad": {}, "normgrad-selective": {},
    "gradient": {}, "gradient-x-input": {},
    "integrated-gradients": {"steps": 3}, "smoothgrad": {"samples": 2},
    "lime": {"samples": 12}, "rise": {"masks": 8}, "xrai": {"steps": 2},
    "hirescam": {}, "xgradcam": {}, "layercam": {}, "eigencam": {}, "eigengradcam": {},
    "scorecam": {"layer": SMALL_LAYER}, "ablationcam": {},
    "random": {}, "center": {},
}


@pytest.fixture(scope="module")
def explainer():
    return Explainer()


def test_every_method_has_a_quick_case():
    assert set(QUICK) == set(METHODS)


def _close(old, new, path="") -> None:
    """new holds every key of old with the same value (floats to 1e-6)."""
    if isinstance(old, dict):
        for key, value in old.items():
            assert key in new, f"{path}{key} missing"
            _close(value, new[key], f"{path}{key}.")
    elif isinstance(old, list):
        assert len(old) == len(new), path
        for k, (a, b) in enumerate(zip(old, new)):
            _close(a, b, f"{path}{k}.")
    elif isinstance(old, float):
        assert new == pytest.approx(old, abs=1e-6), path
    else:
        assert old == new, path


def test_golden_maps_and_records(explainer):
    """Every method that existed before the registry gives the same map (1e-5: exact
    reformulations of the backward graph, e.g. masks onnxruntime keeps in its blocked layout,
    reorder float32 sums by a few ulps), the same regions and the same record (every recorded
    value kept; records may hold more now)."""
    stored = np.load(GOLDEN / "methods.npz")
    records = json.loads((GOLDEN / "methods.json").read_text())
    found = make_golden.records_and_maps(explainer)
    assert set(found) == set(records)
    for key, (record, saliency, labels) in found.items():
        np.testing.assert_allclose(saliency, stored[f"{key}/saliency"], atol=1e-5, err_msg=key)
        if f"{key}/labels" in stored:
            np.testing.assert_array_equal(labels, stored[f"{key}/labels"], err_msg=key)
        else:
            assert labels is None, key
        _close(json.loads(json.dumps(record, default=float)), record)  # JSON-able
        _close(records[key], json.loads(json.dumps(record, default=float)), f"{key}: ")


# ------------------------------------------------------------------ every method, every door

@pytest.mark.parametrize("name", sorted(QUICK))
def test_method_through_the_api(explainer, name):
    params = dict(QUICK[name])
    if "layer" in params:
        explainer = Explainer(layers=[params.pop("layer")])
    result, = explainer.explain([make_golden.photo()], method=name, **params)
    assert result.method == name and result.saliency.shape == make_golden.photo().shape[:2]
    assert result.saliency.dtype == np.float32 and np.isfinite(result.saliency).all()
    assert result.saliency.min() >= 0 and result.saliency.max() == pytest.approx(1.0)
    entry = METHODS[name]
    assert set(entry.params) <= set(result.params)  # every parameter used is recorded
    assert (result.labels is not None) == (entry.regions is not None)


def _cli_options(name):
    return [arg for key, value in QUICK[name].items()
            for arg in ("--" + key.replace("_", "-"), str(value))]


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory):
    import cv2

    path = tmp_path_factory.mktemp("registry") / "cat.png"
    cv2.imwrite(str(path), make_golden.photo()[:, :, ::-1])
    return path


@pytest.mark.parametrize("name", sorted(QUICK))
def test_method_through_the_cli(photo_file, tmp_path, name):
    from typer.testing import CliRunner

    from swag_onnx.cli import app

    runner = CliRunner()
    out = tmp_path / "explain"
    done = runner.invoke(app, ["explain", str(photo_file), "--method", name, "--out", str(out)]
                         + _cli_options(name))
    assert done.exit_code == 0, done.output
    assert {p.name for p in out.iterdir()} == {f"cat.{name}.{e}" for e in ("png", "npy", "json")
                                              } | {"index.html"}
    scored = runner.invoke(app, ["evaluate", str(photo_file), "--method", name, "--out",
                                 str(tmp_path / "eval"), "--metric", "deletion", "--step",
                                 "2240", "--no-controls"] + _cli_options(name))
    assert scored.exit_code == 0, scored.output
    from swag_onnx.results import read_results

    rows = read_results(tmp_path / "eval" / "results.csv")
    assert [(r["method"], r["metric"]) for r in rows] == [(name, "deletion")]


def test_listings_and_help_read_the_registries():
    from typer.testing import CliRunner

    from swag_onnx.cli import app

    runner = CliRunner()
    listing = runner.invoke(app, ["methods"], terminal_width=400)
    assert listing.exit_code == 0
    for name, entry in METHODS.items():
        assert name in listing.output
        for param in entry.params.values():
            assert param.option in listing.output
    metrics = runner.invoke(app, ["metrics"], terminal_width=400)
    assert metrics.exit_code == 0 and all(name in metrics.output for name in METRICS)
    def help_text(command):  # wrapped and boxed by rich: compare without the layout
        text = runner.invoke(app, [command, "--help"]).output
        return "".join(text.split()).replace("│", "")

    for command in ("explain", "evaluate"):
        assert all(name in help_text(command) for name in METHODS), command
    assert all(name in help_text("evaluate") for name in METRICS)


def test_readme_method_table_matches_the_registry():
    """The README's method table lists exactly the registered methods, each with its own
    summary (tools/method_table.py writes the table)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index("<!-- methods table -->")
    end = readme.index("<!-- end of methods table -->")
    sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
    from method_table import method_table

    assert readme[start:end].split("\n", 1)[1].strip() == method_table().strip()


# One line per metric: the quick protocol options of its table-driven check.
METRIC_QUICK = {
    "deletion": ["--step", "2240"], "insertion": ["--step", "2240"],
    "sic": ["--pic-reveal", "paste", "--pic-min-score", "0"],
    "aic": ["--pic-reveal", "paste", "--pic-min-score", "0"],
    "pointing": [], "class-sensitivity": [], "road": ["--road-step", "45"], "energy": [],
    "random-logit": [], "mprt": [],
}


def test_every_metric_has_a_quick_case():
    assert set(METRIC_QUICK) == set(METRICS)


@pytest.mark.parametrize("name", sorted(METRIC_QUICK))
def test_metric_through_the_cli(photo_file, tmp_path, name):
    from typer.testing import CliRunner

    from swag_onnx.cli import app
    from swag_onnx.results import read_results

    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,class,x0,y0,x1,y1\ncat.png,tabby,60,10,160,120\n")
    out = tmp_path / "eval"
    done = CliRunner().invoke(app, ["evaluate", str(photo_file), "--method", "gradient",
                                    "--no-controls", "--metric", name, "--out", str(out), "--annotations",
                                    str(boxes)] + METRIC_QUICK[name])
    assert done.exit_code == 0, done.output
    rows = read_results(out / "results.csv")
    assert {r["metric"] for r in rows} == set(METRICS[name].rows)
    assert all(r["label"] == "tabby" for r in rows) or not METRICS[name].per_class
    summary = (out / "summary.md").read_text()
    assert all(info.title in summary for info in METRICS[name].rows.values())


@pytest.mark.parametrize("bad", [["--blur-ksize", "2"], ["--road-step", "0"],
                                 ["--baseline", "nan"], ["--blur-sigma", "-5"],
                                 ["--seed", "-1"], ["--pic-min-score", "2"]])
def test_bad_protocol_option_is_refused_before_any_map(photo_file, tmp_path, monkeypatch, bad):
    """One line, exit 2, nothing written, no model run; the corrected rerun into the same
    folder works."""
    from typer.testing import CliRunner

    from swag_onnx.cli import app
    from swag_onnx.runtime import ModelRunner

    runs = []
    real = ModelRunner.gradients
    monkeypatch.setattr(ModelRunner, "gradients",
                        lambda self, *a, **k: runs.append(1) or real(self, *a, **k))
    out = tmp_path / "eval"
    args = ["evaluate", str(photo_file), "--method", "gradient", "--metric", "insertion",
            "--out", str(out), "--step", "2240"]
    refused = CliRunner().invoke(app, args + bad)
    assert refused.exit_code == 2 and refused.output.count("error:") == 1, refused.output
    assert bad[0].lstrip("-").replace("-", "_") in refused.output and not runs
    assert not out.exists() or not any(out.iterdir())
    fixed = CliRunner().invoke(app, args)
    assert fixed.exit_code == 0, fixed.output


# ------------------------------------------------- needs that depend on parameters (needs_for)

from swag_onnx.errors import BadOptionError  # noqa: E402
from swag_onnx.methods import registry  # noqa: E402


def test_needs_for_the_defaults_are_the_declared_needs():
    for name, entry in METHODS.items():
        assert entry.needs_for() == entry.needs == entry.needs_for({}), name


@pytest.mark.parametrize("name, params, needs", [
    ("swag-image", {}, {"input_grad", "image"}),
    ("swag-image", {"average": "none", "average_samples": 4}, {"input_grad", "image"}),
    ("swag-image", {"average": "smoothgrad"}, {"grad_fn", "image"}),
    ("swag-gradient", {"average": "integrated", "n_segments": 50}, {"grad_fn", "image"}),
    ("swag-combined", {"average": "smoothgrad", "seed": 4}, {"grad_fn", "image"}),
    ("smoothgrad", {"samples": 3}, {"grad_fn"}),  # static needs: parameters change nothing
    ("gradcam", {}, {"layers"}),
])
def test_needs_for_parameters(name, params, needs):
    assert METHODS[name].needs_for(params) == needs


def _toy(monkeypatch, needs_for, needs=("input_grad",)):
    """Register a throw-away entry `toy` (a copy of the registry: nothing leaks) with two
    choice parameters a and b."""
    from typing import Annotated

    from swag_onnx.validation import Choice

    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))

    def run(inputs, *, a: Annotated[str, Choice(("x", "y")), "a"] = "x",
            b: Annotated[str, Choice(("x", "y")), "b"] = "x"):
        raise AssertionError("never run")

    registry.method("toy", needs=set(needs), needs_for=needs_for, meta=True, summary="toy",
                    reference="here")(run)
    return registry.METHODS["toy"]


@pytest.mark.parametrize("needs_for, message", [
    (lambda p: {"grad_fn"}, "differs from needs"),  # the defaults must give the declared needs
    (lambda p: {"input_grad", "gradients?"}, "unknown needs"),
])
def test_registration_refuses_inconsistent_needs_for(monkeypatch, needs_for, message):
    with pytest.raises(TypeError, match=message):
        _toy(monkeypatch, needs_for)


@pytest.mark.parametrize("given, culprit", [
    ({"a": "y"}, "--a y"),
    ({"a": "y", "b": "y"}, "--a y"),  # b alone changes no need: not named
    ({"b": "y"}, None),  # needs unchanged: meta applies
])
def test_check_meta_names_the_option_that_leaves_the_shared_run(monkeypatch, given, culprit):
    toy = _toy(monkeypatch, lambda p: {"input_grad"} if p["a"] == "x" else {"grad_fn"})
    if culprit is None:
        assert registry.check_meta([toy], 0.5, {"toy": given}) == 0.5
        return
    with pytest.raises(BadOptionError) as info:
        registry.check_meta([toy], 0.5, {"toy": given})
    text = str(info.value)
    assert f"--meta cannot be combined with {culprit} (toy)" in text
    assert "\n" not in text and "use --a x" in text and "--b" not in text


def test_unknown_need_at_run_time_is_a_bug(monkeypatch):
    toy = _toy(monkeypatch, lambda p: {"input_grad"} if p["a"] == "x" else {"telepathy"})
    with pytest.raises(TypeError, match="telepathy"):
        toy.needs_for({"a": "y"})


# averaged SWAG through every front door (the API, `explain`, `evaluate`), on the default model
AVERAGED = [("swag-image", "smoothgrad"), ("swag-gradient", "integrated"),
            ("swag-combined", "smoothgrad")]


@pytest.mark.parametrize("name, average", AVERAGED)
def test_averaged_swag_through_every_door(explainer, photo_file, tmp_path, name, average):
    from typer.testing import CliRunner

    from swag_onnx.cli import app
    from swag_onnx.results import read_results

    api, = explainer.explain([make_golden.photo()], method=name, average=average,
                             average_samples=2)
    plain, = explainer.explain([make_golden.photo()], method=name)
    assert api.params["average"] == average and api.params["average_samples"] == 2
    assert np.abs(api.saliency - plain.saliency).max() > 0.05
    options = ["--method", name, "--average", average, "--average-samples", "2"]
    runner = CliRunner()
    out = tmp_path / "explain"
    done = runner.invoke(app, ["explain", str(photo_file), "--out", str(out), *options])
    assert done.exit_code == 0, done.output
    record = json.loads((out / f"cat.{name}.json").read_text())
    assert record["params"]["average"] == average and record["params"]["average_samples"] == 2
    # the CLI's photo went through a PNG file: the same pixels, so the same map
    np.testing.assert_allclose(np.load(out / f"cat.{name}.npy"), api.saliency, atol=1e-5)
    scored = runner.invoke(app, ["evaluate", str(photo_file), "--out", str(tmp_path / "eval"),
                                 "--metric", "deletion", "--step", "2240", "--no-controls",
                                 *options])
    assert scored.exit_code == 0, scored.output
    rows = read_results(tmp_path / "eval" / "results.csv")
    assert [(r["method"], r["metric"]) for r in rows] == [(name, "deletion")]
