"""`--ray` (swag_onnx.distributed): explain and evaluate through a local Ray runtime give the
local path's files (maps within 1e-6, the same results.csv rows and values, the same curves,
thumbnails and settings); an interrupted Ray run resumes; a killed actor loses no row; bad
input is one line."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import sys

import cv2
import numpy as np
import pytest
from skimage import data
from pathlib import Path
from typer.testing import CliRunner

from swag_onnx import distributed
from swag_onnx import evaluate as ev
from swag_onnx.cli import app, ray_flag_value

runner = CliRunner()
EVAL = ["--method", "gradient", "--method", "gradcam", "--metric", "deletion", "--metric",
        "insertion", "--step", "2240", "--no-controls"]
ACTOR = "MapWorker(MapBatches(Worker))"  # the title Ray gives an actor of the pool


@pytest.fixture(scope="module")
def ray_runtime():
    """The local Ray runtime CI starts (2 CPUs: a pool of 2 actors); `--ray` joins it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four photos (downscaled: faster) and one file that is not an image."""
    folder = tmp_path_factory.mktemp("ray_photos")
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        rgb = getattr(data, name)()
        rgb = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{name}.png"), rgb[:, :, ::-1])
    return folder


@pytest.fixture(scope="module")
def local_eval(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "eval"
    result = runner.invoke(app, ["evaluate", str(photos), "--out", str(out), *EVAL])
    assert result.exit_code == 0, result.output
    return out


def _rows(folder) -> list[tuple]:
    """results.csv rows without the timings, in file order."""
    with open(folder / "results.csv", newline="") as f:
        return [tuple(r[c] for c in ev.COLUMNS if c != "seconds") for r in csv.DictReader(f)]


def _same_folder(mine, theirs) -> None:
    """Same rows in the same order and byte-identical curves and thumbnails."""
    assert _rows(mine) == _rows(theirs)
    for sub in ("curves", "thumbs"):
        names = sorted(p.name for p in (theirs / sub).iterdir())
        assert sorted(p.name for p in (mine / sub).iterdir()) == names
        for name in names:
            assert (mine / sub / name).read_bytes() == (theirs / sub / name).read_bytes(), name
    assert ev.load_settings(mine)["settings"] == ev.load_settings(theirs)["settings"]


# ------------------------------------------------------------------------------- equality

def test_explain_through_ray_equals_local(ray_runtime, photos, tmp_path):
    (tmp_path / "in").mkdir()
    for p in photos.iterdir():
        (tmp_path / "in" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "in" / "broken.png").write_bytes(b"not a picture")
    args = ["explain", str(tmp_path / "in"), "--method", "gradient", "--method", "gradcam",
            "--method", "swag-image", "--batch-size", "2"]  # batches of 2, one with the bad file
    local = runner.invoke(app, args + ["--out", str(tmp_path / "local")])
    remote = runner.invoke(app, args + ["--ray", "--out", str(tmp_path / "ray")])
    assert local.exit_code == remote.exit_code == 1, remote.output  # the bad file is listed
    for result in (local, remote):
        assert "broken.png" in result.output and "wrote 12 explanation(s)" in result.output
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == names and len(names) == 37
    for name in names:
        mine, theirs = tmp_path / "ray" / name, tmp_path / "local" / name
        if name.endswith(".npy"):
            assert np.abs(np.load(mine) - np.load(theirs)).max() <= 1e-6, name
        elif name.endswith(".json"):
            a, b = json.loads(mine.read_text()), json.loads(theirs.read_text())
            assert a.pop("timings_ms").keys() == b.pop("timings_ms").keys() and a == b, name
    assert (tmp_path / "ray" / "index.html").read_bytes() == \
        (tmp_path / "local" / "index.html").read_bytes()


def test_evaluate_through_ray_equals_local(ray_runtime, photos, local_eval, tmp_path):
    out = tmp_path / "ray"
    result = runner.invoke(app, ["evaluate", str(photos), "--ray", "--out", str(out), *EVAL])
    assert result.exit_code == 0, result.output
    assert "4 image(s) evaluated, 0 already done" in result.output
    _same_folder(out, local_eval)
    values = [float(r[5]) for r in _rows(out)]
    assert np.abs(np.array(values) - [float(r[5]) for r in _rows(local_eval)]).max() <= 1e-6
    run = ev.load_settings(out)["runs"][-1]
    assert run["images"] == 4 and run["provider"] == "CPUExecutionProvider"
    assert (out / "summary.md").exists() and (out / "overlays.png").exists()


# ------------------------------------------------------------------------------- resuming

def test_interrupted_ray_run_resumes(ray_runtime, photos, local_eval, tmp_path):
    out = tmp_path / "cut"

    def stop_at_second_image(done, total, name):
        if done > 2:  # 2 methods per image: the first image's rows are in, the second's not
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # its Ray run is stopped when the next one starts
        distributed.evaluate([photos], ["gradient", "gradcam"], ["deletion", "insertion"], out,
                             controls=False, step=2240, progress=stop_at_second_image)
    assert {r["image"] for r in ev.read_results(out / "results.csv")} == {"astronaut"}
    result = runner.invoke(app, ["evaluate", str(photos), "--out", str(out), *EVAL, "--ray"])
    assert result.exit_code == 0, result.output
    assert "3 image(s) evaluated, 1 already done" in result.output
    _same_folder(out, local_eval)
    assert [r["images"] for r in ev.load_settings(out)["runs"]] == [3]


def test_killed_actor_loses_no_row(ray_runtime, photos, local_eval, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    answers, killed = distributed._answers, []

    def kill_at_first_answer(ray, dataset):  # the driver's side: 3 images are still to come
        for index, outcomes in answers(ray, dataset):
            if not killed:
                actors = _actor_pids()
                assert actors, "no actor process found"
                os.kill(actors[0], signal.SIGKILL)  # an actor of this test's own runtime
                killed.append(actors[0])
            yield index, outcomes

    monkeypatch.setattr(distributed, "_answers", kill_at_first_answer)
    try:
        distributed.evaluate([photos], ["gradient", "gradcam"], ["deletion", "insertion"], out,
                             controls=False, step=2240)
    except distributed.RayRunError as exc:  # allowed: one line, and the rerun completes
        assert "\n" not in str(exc)
    assert killed
    monkeypatch.undo()
    result = runner.invoke(app, ["evaluate", str(photos), "--out", str(out), *EVAL, "--ray"])
    assert result.exit_code == 0, result.output
    _same_folder(out, local_eval)  # no row lost, none twice


def _actor_pids() -> list[int]:
    """The pool's actor processes among this process's descendants (their Ray title in
    /proc/PID/cmdline; Linux, as CI)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and ACTOR in (entry / "cmdline").read_bytes().decode(
                    errors="replace") and _descends(int(entry.name), os.getpid()):
                pids.append(int(entry.name))
        except OSError:  # exited meanwhile
            continue
    return pids


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat[stat.rindex(")") + 2:].split()[1])  # the field after the state: ppid
        if pid == ancestor:
            return True
    return False


# ------------------------------------------------------------------------------ bad input

def test_ray_without_the_extra_is_one_line(photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    for command in (["explain"], ["evaluate", "--no-controls"]):
        out = tmp_path / command[0]
        result = runner.invoke(app, [*command, str(photos / "coffee.png"), "--out", str(out),
                                     "--ray"])
        assert result.exit_code == 2, result.output
        assert 'pip install "swag-onnx[ray]"' in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
        assert not out.exists()


def test_unreachable_address_is_one_line(photos, tmp_path):
    port = _closed_port()
    result = runner.invoke(app, ["evaluate", str(photos / "coffee.png"), "--out",
                                 str(tmp_path / "o"), "--no-controls", "--ray",
                                 f"127.0.0.1:{port}"])
    assert result.exit_code == 2, result.output
    assert f"--ray 127.0.0.1:{port}: cannot reach a Ray cluster there" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "results.csv").exists()


def test_ray_takes_an_optional_address():
    """`--ray` alone is a local runtime, and what follows it stays an image unless it is an
    address."""
    for args, expected in ((["a.png", "--ray"], ["a.png", "--ray=local"]),
                           (["--ray", "photos/"], ["--ray=local", "photos/"]),
                           (["--ray", "--threads", "2"], ["--ray=local", "--threads", "2"]),
                           (["--ray", "auto", "a.png"], ["--ray", "auto", "a.png"]),
                           (["--ray", "10.0.0.5:6379"], ["--ray", "10.0.0.5:6379"]),
                           (["--ray", "ray://head:10001"], ["--ray", "ray://head:10001"]),
                           (["--ray=x:1", "a.png"], ["--ray=x:1", "a.png"]),
                           (["--", "--ray"], ["--", "--ray"])):
        assert ray_flag_value(args) == expected


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
