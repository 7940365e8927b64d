"""The pipelined folder loop (swag_onnx.folder): the same files, in the same order, as the
sequential loop; bad images reported one line each; stages on the pool's threads; items
streamed."""

from __future__ import annotations

import json
import threading

import cv2
import numpy as np
import pytest
from skimage import data
from skimage.segmentation import find_boundaries, slic
from typer.testing import CliRunner

from swag_onnx import html
from swag_onnx import images as imgs
from swag_onnx.cli import app
from swag_onnx.errors import BadImageError, BadOptionError
from swag_onnx.evaluate import Item, items_from_paths
from swag_onnx.explain import Explainer
from swag_onnx.folder import Job, explain_folder, explain_items, write_explanation

METHODS = ["swag-image", "gradcam"]
runner = CliRunner()


def _photos() -> list[np.ndarray]:
    """Seven small, different uint8 RGB photos (crops, flips, rescales of scikit-image's)."""
    chelsea, coffee, astronaut = data.chelsea(), data.coffee(), data.astronaut()
    return [cv2.resize(chelsea, (120, 90)), cv2.resize(coffee, (100, 80))[:, ::-1],
            cv2.resize(astronaut[:300, 100:400], (96, 96)), cv2.resize(coffee[50:350], (128, 72)),
            cv2.resize(chelsea[:, 100:], (80, 110)), cv2.resize(astronaut, (90, 90))[::-1],
            cv2.resize(coffee, (64, 130))]


@pytest.fixture(scope="module")
def default():
    return Explainer()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos")
    for k, rgb in enumerate(_photos()):
        cv2.imwrite(str(path / f"p{k}.{'png' if k % 2 else 'jpg'}"), rgb[:, :, ::-1])
    return path


def sequential(explainer, items, out_dir, methods, batch_size):
    """The loop before pipelining: decode a batch, explain it, write it, in turn."""
    rows, problems, records = [], [], []
    for start in range(0, len(items), batch_size):
        chunk = []
        for item in items[start:start + batch_size]:
            try:
                chunk.append((item.name, item.load()))
            except BadImageError as exc:
                problems.append(str(exc))
        if chunk:
            results = explainer.explain([rgb for _, rgb in chunk], method=methods)
            per_image = len(results) // len(chunk)
            for k, result in enumerate(results):
                row, record = write_explanation(result, chunk[k // per_image][0], out_dir, True)
                rows.append(row)
                records.append(record)
    html.write_explain_index(out_dir, records)
    return rows, problems


def without_timings(path):
    record = json.loads(path.read_text())
    assert set(record["timings_ms"]) >= {"forward_backward", "method", "writing"}
    del record["timings_ms"]
    return record


@pytest.mark.slow
@pytest.mark.parametrize("model_slots", [1, 2])
def test_pipelined_equals_sequential(default, folder, tmp_path, model_slots):
    items, _ = items_from_paths([folder])
    expected_rows, _ = sequential(default, items, tmp_path / "seq", METHODS, batch_size=3)
    rows, problems = explain_folder(default, iter(items), tmp_path / "pipe", METHODS,
                                    batch_size=3, pool_size=2, model_slots=model_slots)
    assert problems == []
    # same rows in the same order (image, top-1, target, method); the ms column is a timing
    assert [r[:4] for r in rows] == [r[:4] for r in expected_rows]
    assert [r[0] for r in rows[::2]] == [f"p{k}" for k in range(7)]
    names = sorted(p.name for p in (tmp_path / "seq").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "pipe").iterdir())
    assert len(names) == 7 * 2 * 3 + 1
    for name in names:
        seq, pipe = tmp_path / "seq" / name, tmp_path / "pipe" / name
        if name.endswith(".json"):
            assert without_timings(pipe) == without_timings(seq), name
        else:  # .npy, overlay .png and index.html: byte for byte
            assert pipe.read_bytes() == seq.read_bytes(), name


def test_bad_image_in_the_middle_of_a_folder(folder, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("p0.jpg", "p1.png", "p3.png"):
        (photos / name).write_bytes((folder / name).read_bytes())
    (photos / "p2.jpg").write_bytes((folder / "p0.jpg").read_bytes()[:300])  # cut short
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(photos), "--out", str(out), "--method",
                                 "gradcam", "--batch-size", "2"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "p2.jpg" in errors[0] and "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"p{k}.gradcam.{e}" for k in (0, 1, 3) for e in ("png", "npy", "json")]
        + ["index.html"])
    table = result.output[:result.output.index("wrote")]
    assert table.index("p0") < table.index("p1") < table.index("p3")


def test_rerun_replaces_outputs_and_keeps_other_files(default, tmp_path):
    items = [Item("a", rgb=_photos()[0]), Item("b", rgb=_photos()[1])]
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.gradcam.npy").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    explain_folder(default, items, out, ["gradcam"], batch_size=1)
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".npy"}
    assert np.load(out / "a.gradcam.npy").shape == (90, 120)  # no resumption: recomputed
    explain_folder(default, items, out, ["gradcam"], batch_size=2)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".npy"} == first
    assert (out / "notes.txt").read_text() == "mine"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


class Recorded(Item):
    """An Item noting which thread decodes it and how many items were taken so far."""

    log: list = []

    def load(self):
        self.log.append((self.name, threading.current_thread().name))
        return super().load()


class Spy:
    """An Explainer that notes the thread of each explain call."""

    def __init__(self, explainer):
        self.explainer, self.threads = explainer, []

    def explain(self, images, **kwargs):
        self.threads.append(threading.current_thread().name)
        return self.explainer.explain(images, **kwargs)


def test_stages_run_on_the_pool_threads(default, tmp_path):
    Recorded.log = []
    spy = Spy(default)
    items = [Recorded(f"i{k}", rgb=rgb) for k, rgb in enumerate(_photos()[:4])]
    rows, _ = explain_folder(spy, items, tmp_path, ["gradcam"], batch_size=2)
    assert [r[0] for r in rows] == ["i0", "i1", "i2", "i3"]
    assert sorted(name for name, _ in Recorded.log) == ["i0", "i1", "i2", "i3"]
    assert all(thread.startswith("swag-io") for _, thread in Recorded.log)  # not the caller's
    assert len(spy.threads) == 2 and all(t.startswith("swag-model") for t in spy.threads)


def test_items_are_streamed_a_few_batches_ahead(default, tmp_path):
    taken = []

    def items():
        for k in range(20):
            taken.append(k)
            yield Item(f"i{k}", rgb=np.full((32, 32, 3), 6 * k, np.uint8))

    outcomes = explain_items(default, items(), tmp_path, Job(["gradient"], boundaries=False),
                             batch_size=2, model_slots=2)
    first = next(outcomes)
    assert first.name == "i0" and first.problem is None
    assert len(taken) <= (2 + 2) * 2  # the model slots, one batch decoding, one being taken
    rest = list(outcomes)
    assert [o.name for o in rest] == [f"i{k}" for k in range(1, 20)] and len(taken) == 20


def test_a_write_error_is_raised_in_order(default, tmp_path):
    (tmp_path / "i2.gradient.png").mkdir()  # a folder where a file goes
    items = [Item(f"i{k}", rgb=rgb) for k, rgb in enumerate(_photos()[:6])]
    outcomes = explain_items(default, items, tmp_path, Job(["gradient"]), batch_size=1)
    assert [next(outcomes).name for _ in range(2)] == ["i0", "i1"]
    with pytest.raises(BadOptionError, match="i2.gradient.png"):
        next(outcomes)


# ------------------------------------------------------------------ the overlay's fast paths

@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 2), (7, 13), (64, 41)])
@pytest.mark.parametrize("count", [1, 2, 5, 400])
def test_thick_boundaries_are_find_boundaries(shape, count):
    """OpenCV's uint16 morphology marks exactly scikit-image's thick boundaries, the image
    border included."""
    labels = np.random.default_rng(count).integers(0, count, shape)
    np.testing.assert_array_equal(imgs.thick_boundaries(labels),
                                  find_boundaries(labels, mode="thick"))


@pytest.mark.parametrize("offset", [-1, -70_000, 65_530, 2**40])
def test_thick_boundaries_of_shifted_labels(offset):
    """Negative labels (outside the crop: -1) and labels past uint16 wrap around in the cast
    but stay apart: the same boundaries."""
    labels = np.random.default_rng(1).integers(0, 9, (30, 20)) + offset
    np.testing.assert_array_equal(imgs.thick_boundaries(labels),
                                  find_boundaries(labels, mode="thick"))


def test_thick_boundaries_of_a_wide_label_range_fall_back():
    labels = np.random.default_rng(2).integers(0, 2, (25, 30)) * 2**16  # equal in uint16
    assert (labels == 2**16).any() and (labels == 0).any()
    np.testing.assert_array_equal(imgs.thick_boundaries(labels),
                                  find_boundaries(labels, mode="thick"))


def test_thick_boundaries_of_slic_regions():
    photo = data.astronaut()[::2, ::2]
    labels = slic(photo, n_segments=150, start_label=0)
    labels[:, :20] = -1  # as labels_to_original marks pixels outside the crop
    edges = imgs.thick_boundaries(labels)
    assert 0.05 < edges.mean() < 0.5
    np.testing.assert_array_equal(edges, find_boundaries(labels, mode="thick"))


def test_written_overlay_png_is_the_overlay_exactly(default, tmp_path):
    """The fast PNG settings are lossless: the file decodes to the overlay's pixels."""
    photo = _photos()[0]
    result = default.explain([photo], method="swag-image")[0]
    write_explanation(result, "cat", tmp_path, True)
    probability = next(t["probability"] for t in result.top5
                       if t["index"] == result.target["index"])
    caption = f"{result.target['label']} {probability:.1%} | swag-image"
    expected = imgs.overlay(photo, result.saliency, caption, boundaries=result.labels)
    written = cv2.imread(str(tmp_path / "cat.swag-image.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written[:, :, ::-1], expected)
    assert (written[:, :, ::-1] != photo).any()  # a real overlay, not the photo


SPINNING = "session.intra_op.allow_spinning"


@pytest.mark.parametrize("spinning, entry", [(True, "1"), (False, "0")])
def test_spinning_reaches_every_session(spinning, entry):
    """Explainer(spinning=...) sets onnxruntime's worker spinning on the plain and gradient
    sessions (spinning off: the folder loop's other threads get the cores)."""
    runner = Explainer(spinning=spinning).runner
    for session in (runner.plain, runner.gradient):
        assert session.get_session_options().get_session_config_entry(SPINNING) == entry


def test_workers_stop_spinning_when_a_run_ends():
    """Every session of a runner (plain, gradient, baked MPRT ones) stops its workers'
    spinning when a run ends: spinning idle workers of one session slowed the next run of the
    other (predict then explain: 1.6x, tools/bench_spinning.py)."""
    runner = Explainer().runner
    parameters = runner.parameter_values()
    name = next(iter(parameters))
    runner.scores(np.zeros((1, 3, 224, 224), np.float32), {name: parameters[name] * 0.5})
    sessions = [runner.plain, runner.gradient, *runner._baked.values()]
    assert len(sessions) == 3
    for session in sessions:
        options = session.get_session_options()
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"


def test_cli_explain_runs_without_spinning(tmp_path, monkeypatch):
    """`swag-onnx explain` runs the pipelined loop: its sessions do not spin."""
    import swag_onnx.explain as explain_module

    seen = []
    real = explain_module.ModelRunner

    def recording(*args, **kwargs):
        seen.append(kwargs.get("spinning", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(explain_module, "ModelRunner", recording)
    path = tmp_path / "cat.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR))
    result = CliRunner().invoke(app, ["explain", str(path), "--out", str(tmp_path / "o"),
                                      "--method", "gradcam"])
    assert result.exit_code == 0, result.output
    assert seen == [False]
