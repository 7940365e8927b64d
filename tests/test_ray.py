"""`--ray` (swag_onnx.distributed): explain and evaluate through a local Ray runtime give the
local path's files (maps within 1e-6, the same results.csv rows and values, the same curves,
thumbnails and settings); an interrupted Ray run resumes; a killed actor loses no row; bad
input is one line; the actor pool asks Ray for what --ray-workers and --provider say; progress
follows the actors; a command-line run prints nothing of Ray's."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from skimage import data
from pathlib import Path
from typer.testing import CliRunner

from swag_onnx import distributed
from swag_onnx import evaluate as ev
from swag_onnx.cli import app, ray_flag_value
from swag_onnx.errors import BadOptionError

runner = CliRunner()
EVAL = ["--method", "gradient", "--method", "gradcam", "--metric", "deletion", "--metric",
        "insertion", "--step", "2240", "--no-controls"]
ACTOR = "MapWorker(MapBatches(Worker))"  # the title Ray gives an actor of the pool


def _sources() -> str:
    """sha256 of swag_onnx's Python sources: the code an actor imports when it starts."""
    digest = hashlib.sha256()
    for path in sorted(Path(distributed.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


IMPORTED = _sources()  # the code this process, and so every local run here, imported


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
    """Same rows in the same order and byte-identical curves and thumbnails: bitwise, though the
    actors run onnxruntime on one thread and the local run on all cores (the thread count
    changes no bit of these values, maps and thumbnails: measured). The actors import swag_onnx
    when they start: a difference found after its sources changed since this process imported
    them (an edit during the test run; new augmentation code gives gradients that may differ
    in the last bits) is reported as that."""
    try:
        _same_files(mine, theirs)
    except AssertionError as exc:
        if _sources() != IMPORTED:
            raise AssertionError(f"{exc}\nswag_onnx's sources changed since this test process "
                                 "imported them: the actors may have run other code") from None
        raise


def _same_files(mine, theirs) -> None:
    assert _rows(mine) == _rows(theirs)
    for sub in ("curves", "thumbs"):
        names = sorted(p.name for p in (theirs / sub).iterdir())
        assert sorted(p.name for p in (mine / sub).iterdir()) == names
        for name in names:
            assert (mine / sub / name).read_bytes() == (theirs / sub / name).read_bytes(), name
    assert ev.load_settings(mine)["settings"] == ev.load_settings(theirs)["settings"]


# ------------------------------------------------------------------------------- equality

def test_explain_through_ray_equals_local(ray_runtime, photos, tmp_path, monkeypatch):
    pools = _spy_on_pools(monkeypatch)
    (tmp_path / "in").mkdir()
    for p in photos.iterdir():
        (tmp_path / "in" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "in" / "broken.png").write_bytes(b"not a picture")
    args = ["explain", str(tmp_path / "in"), "--method", "gradient", "--method", "gradcam",
            "--method", "swag-image", "--batch-size", "2"]  # batches of 2, one with the bad file
    local = runner.invoke(app, args + ["--out", str(tmp_path / "local")])
    remote = runner.invoke(app, args + ["--ray", "--ray-workers", "1", "--out",
                                        str(tmp_path / "ray")])
    assert local.exit_code == remote.exit_code == 1, remote.output  # the bad file is listed
    assert [p["compute"].max_size for p in pools] == [1]  # --ray-workers 1 of 2 CPUs
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


def test_evaluate_through_ray_equals_local(ray_runtime, photos, local_eval, tmp_path,
                                           monkeypatch):
    pools = _spy_on_pools(monkeypatch)
    out = tmp_path / "ray"
    result = runner.invoke(app, ["evaluate", str(photos), "--ray", "--out", str(out), *EVAL])
    assert result.exit_code == 0, result.output
    assert [(p["compute"].max_size, p["num_cpus"], p["num_gpus"]) for p in pools] == [(2, 1, 0)]
    assert "4 image(s) evaluated, 0 already done" in result.output
    _same_folder(out, local_eval)
    values = [float(r[5]) for r in _rows(out)]
    assert np.abs(np.array(values) - [float(r[5]) for r in _rows(local_eval)]).max() <= 1e-6
    run = ev.load_settings(out)["runs"][-1]
    assert run["images"] == 4 and run["provider"] == "CPUExecutionProvider"
    assert (out / "summary.md").exists() and (out / "overlays.png").exists()


def _spy_on_pools(monkeypatch) -> list[dict]:
    """The map_batches arguments distributed._pool returns, run by run."""
    pools, pool = [], distributed._pool

    def spy(*args):
        pools.append(pool(*args))
        return pools[-1]

    monkeypatch.setattr(distributed, "_pool", spy)
    return pools


# ------------------------------------------------------------------------------- resuming

def test_interrupted_ray_run_resumes(ray_runtime, photos, local_eval, tmp_path):
    out = tmp_path / "cut"

    def stop_at_second_image(done, total, name):
        # reported as the actors finish it, or when it is written (the first report waits
        # for the first image written): raised before its rows are written
        if name != "astronaut":
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


# -------------------------------------------------------------------- workers and resources

def _nodes(*resources, dead=()) -> SimpleNamespace:
    """A stand-in for the ray module as _pool reads it: nodes() (a dead node among them when
    asked) and the real ray.data."""
    import ray

    nodes = [{"Alive": True, "Resources": r} for r in resources]
    nodes += [{"Alive": False, "Resources": r} for r in dead]
    return SimpleNamespace(nodes=lambda: nodes, data=ray.data)


def _asked(pool: dict) -> tuple:
    return pool["compute"].min_size, pool["compute"].max_size, pool["num_cpus"], \
        pool["num_gpus"]


def test_pool_asks_one_cpu_or_one_gpu_per_actor():
    cpu = {"provider": "cpu", "threads": 1}
    two_cpus = {"provider": "auto", "threads": 2}
    cuda = {"provider": "cuda", "threads": 1}
    cluster = _nodes({"CPU": 3.0}, {"CPU": 2.0, "GPU": 2.0}, dead=[{"CPU": 64.0, "GPU": 8.0}])
    assert _asked(distributed._pool(cluster, cpu, None, 40)) == (5, 5, 1, 0)
    assert _asked(distributed._pool(cluster, two_cpus, None, 40)) == (2, 2, 2, 0)  # 1 + 1
    assert _asked(distributed._pool(cluster, cuda, None, 40)) == (2, 2, 1, 1)
    assert _asked(distributed._pool(cluster, cuda, 1, 40)) == (1, 1, 1, 1)  # --ray-workers 1
    assert _asked(distributed._pool(cluster, cpu, 9, 40))[:2] == (5, 5)  # no more than fit
    assert _asked(distributed._pool(cluster, cpu, None, 3))[:2] == (3, 3)  # nor than units
    with pytest.raises(BadOptionError, match="no GPU for --provider cuda"):
        distributed._pool(_nodes({"CPU": 16.0}, dead=[{"GPU": 1.0}]), cuda, None, 4)
    with pytest.raises(BadOptionError, match="no node with 4 CPU"):
        distributed._pool(cluster, {"provider": "cpu", "threads": 4}, None, 4)


def test_cuda_on_a_cluster_without_gpus_is_one_line(ray_runtime, photos, tmp_path):
    """Refused before any actor is asked for: Ray would wait for a GPU forever."""
    for command in (["explain"], ["evaluate", "--no-controls"]):
        out = tmp_path / command[0]
        start = time.perf_counter()
        result = runner.invoke(app, [*command, str(photos / "coffee.png"), "--out", str(out),
                                     "--ray", "--provider", "cuda"])
        assert time.perf_counter() - start < 60
        assert result.exit_code == 2, result.output
        assert "the Ray cluster has no GPU for --provider cuda" in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not (out / "results.csv").exists() and not list(out.glob("*.npy"))


def test_ray_workers_is_checked_before_any_run(photos, tmp_path):
    for command in (["explain"], ["evaluate", "--no-controls"]):
        for extra, message in ((["--ray", "--ray-workers", "0"],
                                "--ray-workers must be an integer >= 1, got 0"),
                               (["--ray-workers", "2"], "--ray-workers needs --ray")):
            out = tmp_path / command[0]
            result = runner.invoke(app, [*command, str(photos / "coffee.png"), "--out",
                                         str(out), *extra])
            assert result.exit_code == 2, result.output
            assert message in result.output and len(result.output.strip().splitlines()) == 1
            assert not out.exists()
    with pytest.raises(BadOptionError, match="--ray-workers must be"):
        distributed.evaluate([photos], workers=-1)


# ---------------------------------------------------------------------------------- progress

def test_units_are_reported_as_they_arrive_and_given_in_order():
    arrivals = []
    answers = [(2, ["c"]), (0, ["a"]), (2, ["c again"]), (1, ["b"]), (0, ["a again"])]
    given = list(distributed._in_order(iter(answers), 3, arrivals.append))
    assert arrivals == [2, 0, 1]  # a repeated answer (a restarted actor) counts once
    assert given == [(0, ["a"]), (1, ["b"]), (2, ["c"])]


def test_evaluate_progress_counts_finished_images_before_they_are_written():
    seen = []
    shown = distributed.StreamedProgress(lambda done, total, name: seen.append((done, name)))
    shown.arrived("b", 2)  # before evaluate.run's first report: the total is not known yet
    shown.written(2, 8, "skipped")  # an image done in an earlier run
    shown.arrived("a", 2)
    shown.written(4, 8, "a")  # "a" written: it was counted already
    shown.arrived("c", 2)
    shown.written(6, 8, "b")
    shown.written(8, 8, "c")
    assert seen == [(4, "skipped"), (6, "a"), (6, "a"), (8, "c"), (8, "b"), (8, "c")]


def test_evaluate_progress_follows_the_actors(ray_runtime, photos, tmp_path):
    seen = []
    distributed.evaluate([photos], ["gradient", "gradcam"], ["deletion"], tmp_path / "o",
                         controls=False, step=2240,
                         progress=lambda done, total, name: seen.append((done, total)))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert seen[-1] == (8, 8) and len(seen) >= 4


# --------------------------------------------------------------------------------- quietness

OUR_LINES = re.compile(r"explanations\s*|[┏┃┡│└].*"  # the summary table
                       r"|wrote 2 explanation\(s\) to .+ \(provider CPUExecutionProvider\)")


@pytest.mark.slow
def test_a_ray_run_prints_only_our_lines(photos, tmp_path):
    """A command-line run (its own process and Ray runtime, as a user's): the summary table
    and the "wrote" line, nothing of Ray's (no start-up lines, progress bars, C++ core log
    lines or "(pid=...)" lines of the actors)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["COLUMNS"] = "300"  # the "wrote" line on one line
    done = subprocess.run([sys.executable, "-c", "from swag_onnx.cli import main; main()",
                           "explain", str(photos / "coffee.png"), str(photos / "rocket.png"),
                           "--method", "gradient", "--ray", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert [line for line in lines if not OUR_LINES.fullmatch(line)] == [], done.stdout
    assert len(lines) == 8  # title, 3 header lines, 2 rows, bottom rule, "wrote"
