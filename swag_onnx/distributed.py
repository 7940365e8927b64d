"""`--ray`: `explain` and `evaluate` on a Ray cluster, or on a local Ray runtime.

Ray Data holds the work list: one row per unit of work (explain: a batch of `--batch-size`
images, the same batches as the local path; evaluate: one image with the rows it still misses).
`map_batches` runs it on an actor pool; each actor builds one Explainer (its own onnxruntime
sessions) from the arguments the local path uses, with one CPU (`--threads` CPUs), or one GPU
with `--provider cuda`, and runs the local path's own code on its unit (swag_onnx.explain,
swag_onnx.evaluate.evaluate_image).

Only this process (the driver) writes the output folder, unit by unit in the input order,
with the local path's writers: explain's files and index.html, evaluate's results.csv and
settings.json (swag_onnx.evaluate.run with `compute=`). The files are therefore those of a
local run (timings aside), and a rerun of evaluate skips the finished rows the same way.
Actors return evaluate's curves and thumbnails to the driver as bytes instead of writing them
into --out: the nodes of a cluster need not mount the driver's output folder, an actor that is
killed mid-image leaves no file behind, and the files are small (a curve is (2, P) float64, a
thumbnail a PNG of at most 192 pixels a side).

The actors read the images (and a --model path) at the paths given, made absolute: on a
cluster they must be on storage every node mounts at the same path; the default model ships
with the package. An actor that dies is restarted by Ray and its unit run again; the driver
keeps the first answer for each unit.

Ray is an optional extra (`pip install "swag-onnx[ray]"`), imported only here, only when
`--ray` is used. Its own output is kept off the terminal (see `_init_quietly`): a run prints
the local path's progress and summary lines, and an error as one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import socket
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from swag_onnx.errors import BadImageError, BadOptionError, SwagError
from swag_onnx.validation import Int
from swag_onnx.validation import Optional as Maybe

LOCAL = "local"  # --ray with no address: a Ray runtime started on this machine
INSTALL = 'pip install "swag-onnx[ray]"'
PROVIDERS = ("auto", "cpu", "cuda")
CONNECT_TIMEOUT_S = 5.0  # an unreachable head fails fast (ray.init itself retries for minutes)
WORKERS = Maybe(Int(1))
# Ray's C++ core writes its log lines straight to file descriptor 2, below FATAL among them an
# ERROR line for every Ray Data actor pool (ray-project/ray#53727: its constructor arguments
# are in the object store); read by the processes ray.init starts, a value the user set wins.
QUIET_ENV = {"RAY_BACKEND_LOG_LEVEL": "fatal"}
QUIET_LOGGERS = {"ray": logging.ERROR,  # start-up lines (token authentication, ...)
                 "ray.data": logging.ERROR,  # "Running Dataset", object-store size advice
                 "ray.data._internal.progress": logging.CRITICAL}  # "progress bars disabled"


class RayRunError(SwagError):
    """The Ray run stopped (a lost node, actors that keep dying); the rows written so far are
    kept, and a rerun resumes."""


# ------------------------------------------------------------------------------ connecting

def require_ray():
    """The ray module; a BadOptionError saying how to install it when it is missing."""
    try:
        import ray  # optional extra
    except ImportError:
        raise BadOptionError(f"--ray needs Ray, an optional extra: {INSTALL}") from None
    return ray


def connect(address: str | None) -> bool:
    """Join the cluster at `address` ("auto": the one `ray start` runs on this machine), or
    start a local runtime (None or "local"); a runtime already started in this process is used
    as it is. Returns whether this call started one (to shut it down after the run)."""
    ray = require_ray()
    local = address in (None, "", LOCAL)
    if not local and address != "auto":
        _probe(address)  # even when a runtime runs already: a wrong address is an error
    if ray.is_initialized():
        return False
    try:
        _init_quietly(ray, address=None if local else address,
                      include_dashboard=False if local else None)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise BadOptionError(f"--ray {address}: no Ray cluster could be joined ("
                             f"{_first_line(exc)}); start one with `ray start --head`, or omit "
                             "the address for a local runtime") from None
    return True


def _init_quietly(ray, **init) -> None:
    """ray.init(**init) printing nothing here: the "ray" loggers at ERROR, the actors' output
    left in the session's log files (log_to_driver=False: no "(pid=...)" lines), the C++ core
    at FATAL (QUIET_ENV, set for this call only); the one line in which the C++ core reports
    that level while it starts is dropped with file descriptor 2 (only during this call, and
    only when this function set the level). A failure still raises."""
    env = {name: value for name, value in QUIET_ENV.items() if name not in os.environ}
    os.environ.update(env)
    try:
        with _native_stderr_dropped() if env else contextlib.nullcontext():
            ray.init(**init, logging_level=logging.ERROR, log_to_driver=False)
    finally:
        for name in env:
            os.environ.pop(name, None)


@contextlib.contextmanager
def _native_stderr_dropped():
    """File descriptor 2 on /dev/null for the block (sys.stderr flushed first: nothing of
    Python's is lost). The runtime's processes started meanwhile write their output to the
    session's log files, not to this descriptor."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quiet_logs() -> dict:
    """QUIET_LOGGERS applied; returns the levels to put back."""
    before = {}
    for name, level in QUIET_LOGGERS.items():
        logger = logging.getLogger(name)
        before[name] = logger.level
        logger.setLevel(max(level, logger.getEffectiveLevel()))
    return before


def _probe(address: str) -> None:
    """A TCP connection to host:port of `address` (GCS or ray:// client port), so that an
    unreachable head is one error line within seconds."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]]+?)\]?:(\d+)", address)
    if match is None:
        raise BadOptionError(f"--ray {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    host, port = match.group(1), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise BadOptionError(f"--ray {address}: cannot reach a Ray cluster there ({exc}); start "
                             "one with `ray start --head`, or omit the address for a local "
                             "runtime") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# ---------------------------------------------------------------------------------- actors

@dataclass
class Cluster:
    """Where to run: address (None: a local runtime; "auto"; HOST:PORT; ray://HOST:PORT) and
    the number of actors (None: one per CPU of the cluster, `threads` CPUs each, or one per GPU
    with provider "cuda"; never more than the units of work)."""

    address: str | None = None
    workers: int | None = None

    def __post_init__(self):
        self.workers = WORKERS("--ray-workers", self.workers)


def explainer_args(model=None, card=None, layers=None, provider="auto", threads=None) -> dict:
    """The Explainer's arguments as the actors need them: the model path absolute (their
    working folder is not this one), the provider checked here rather than in every actor."""
    if provider not in PROVIDERS:
        raise BadOptionError(f"unknown provider {provider!r}; use auto, cpu or cuda")
    return {"model": None if model is None else str(Path(model).resolve()), "card": card,
            "layers": list(layers) if layers else None, "provider": provider,
            "threads": threads}


class _Failed:
    """A unit's error that stops the run (any SwagError but an undecodable image)."""

    def __init__(self, error: SwagError):
        self.error = error


class Worker:
    """A Ray Data actor: one Explainer; each call runs `job` on a batch of rows {"index",
    "task": pickled unit} and returns {"index", "result": pickled list of outcomes}."""

    def __init__(self, args: dict, job):
        from swag_onnx.explain import Explainer

        self.job, self.error = job, None
        try:
            self.explainer = Explainer(**args)
        except SwagError as exc:  # the model or an option: every unit fails with it
            self.error = exc

    def __call__(self, batch: dict) -> dict:
        results = []
        for blob in batch["task"]:
            unit = pickle.loads(blob)
            outcomes = [_Failed(self.error)] * len(unit) if self.error else \
                self.job(self.explainer, unit)
            results.append(pickle.dumps(outcomes))
        return {"index": np.asarray(batch["index"]), "result": np.array(results, dtype=object)}


def _pool(ray, args: dict, workers: int | None, units: int) -> dict:
    """map_batches' compute strategy and resources: a fixed pool of actors, no more than the
    cluster's nodes hold now (a pool waiting for an actor that cannot be placed never starts)."""
    gpu = args["provider"] == "cuda"
    cpus = args["threads"] or 1
    kind, need = ("GPU", 1) if gpu else ("CPU", cpus)
    fit = sum(int(node["Resources"].get(kind, 0) // need) for node in ray.nodes()
              if node.get("Alive"))
    if fit < 1:
        raise BadOptionError("the Ray cluster has no " + ("GPU for --provider cuda" if gpu else
                             f"node with {cpus} CPU(s) for --threads {cpus}"))
    size = min(fit if workers is None else workers, fit, units)
    return {"compute": ray.data.ActorPoolStrategy(size=size), "num_cpus": cpus,
            "num_gpus": 1 if gpu else 0}


_current = []  # the run in progress in this process (at most one)


def stream(cluster: Cluster, args: dict, job, units: list[list],
           arrived: Callable[[int], None] = lambda index: None):
    """Run job(explainer, unit) -> [outcome per element] on the actors for every unit; an
    iterator of each unit's outcomes in the order of `units`, each as soon as the units before
    it are done; arrived(index) is called as each unit's answer comes back, in the order the
    actors finish them (progress shows what is done, not only what can be written). It
    raises a SwagError a unit failed with, or RayRunError when Ray itself gives up. A run
    left unfinished (an exception in the caller) is stopped when the next starts: its actors
    would otherwise hold the CPUs the next one waits for."""
    while _current:
        _current.pop().close()
    run = _stream(cluster, args, job, units, arrived)
    _current.append(run)
    return run


def _stream(cluster: Cluster, args: dict, job, units: list[list], arrived):
    if not units:
        return
    ray = require_ray()
    args = {**args, "threads": args["threads"] or 1}  # one actor per CPU: no oversubscription
    started = connect(cluster.address)
    context = ray.data.DataContext.get_current()
    bars, context.enable_progress_bars = context.enable_progress_bars, False  # ours show
    levels = _quiet_logs()
    answers = None
    finished = []

    def finish() -> None:  # once: the actors go, the settings come back
        if not finished:
            finished.append(True)
            if answers is not None:
                answers.close()
            context.enable_progress_bars = bars
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            if started:
                ray.shutdown()

    try:
        rows = [{"index": i, "task": pickle.dumps(unit)} for i, unit in enumerate(units)]
        data = ray.data.from_items(rows, override_num_blocks=len(rows))
        done = data.map_batches(Worker, fn_constructor_kwargs={"args": args, "job": job},
                                batch_size=1, batch_format="numpy",
                                **_pool(ray, args, cluster.workers, len(units)))
        answers = _answers(ray, done)
        for index, outcomes in _in_order(answers, len(units), arrived):
            if index == len(units) - 1:
                finish()  # now, not when the caller drops this iterator
            yield outcomes
    finally:
        finish()


def _answers(ray, dataset):
    """(unit index, outcomes) as the actors finish them; Ray's own failures as RayRunError."""
    try:
        for row in dataset.iter_rows():
            yield int(row["index"]), pickle.loads(row["result"])
    except ray.exceptions.RayTaskError:  # an error in swag_onnx's code: its traceback
        raise
    except ray.exceptions.RayError as exc:
        raise RayRunError(f"the Ray run stopped ({type(exc).__name__}: {_first_line(exc)}); the "
                          "finished results are kept: rerun to complete") from None


def _in_order(answers, total: int, arrived=lambda index: None):
    """(index, outcomes) unit by unit in index order, arrived(index) as each comes; a unit
    answered twice (an actor restarted after it had answered) counts once."""
    waiting, next_index = {}, 0
    for index, outcomes in answers:
        if index < next_index or index in waiting:
            continue
        arrived(index)
        waiting[index] = outcomes
        while next_index in waiting:
            outcomes = waiting.pop(next_index)
            for outcome in outcomes:
                if isinstance(outcome, _Failed):
                    raise outcome.error
            yield next_index, outcomes
            next_index += 1
    if next_index < total:
        raise RayRunError(f"the Ray run returned {next_index} of {total} units; the finished "
                          "results are kept: rerun to complete")


# --------------------------------------------------------------------------------- explain

@dataclass
class ExplainJob:
    """explain on one batch of evaluate.Items: [Explanations of the item, or its
    BadImageError] (the local path's batch: the good images in one explain call)."""

    methods: list
    target: object
    params: dict
    superpixels: str
    meta: bool
    meta_lr: float

    def __call__(self, explainer, items: list) -> list:
        outcomes, loaded = [None] * len(items), []
        for k, item in enumerate(items):
            try:
                loaded.append((k, item.load()))
            except BadImageError as exc:
                outcomes[k] = exc
        if loaded:
            try:
                results = explainer.explain([rgb for _, rgb in loaded], method=self.methods,
                                            superpixels=self.superpixels, target=self.target,
                                            meta=self.meta, meta_lr=self.meta_lr, **self.params)
            except SwagError as exc:
                return [_Failed(exc)] * len(items)
            per_image = len(results) // len(loaded)
            for j, (k, _) in enumerate(loaded):
                outcomes[k] = results[j * per_image:(j + 1) * per_image]
        return outcomes


def run_explain(cluster: Cluster, explainer, args: dict, items, out_dir: Path, methods, target,
                params, batch_size, boundaries, superpixels: str = "image", meta: bool = False,
                meta_lr: float = 0.0025, on_items=None) -> tuple[list[tuple], list[str]]:
    """folder.explain_folder with the explanations computed by Ray actors (args:
    `explainer_args`); `explainer` (this process's, on the CPU) checks the target before any
    run, and its provider becomes the actors'. Writes the same files with the same writer;
    `on_items(count)` is called as the actors finish batches. Returns (summary rows, problems)."""
    from swag_onnx import html
    from swag_onnx.card import parse_target
    from swag_onnx.folder import write_explanation

    parse_target(explainer.card, target, explainer.num_classes)  # a bad class: before Ray
    units = [items[s:s + batch_size] for s in range(0, len(items), batch_size)]
    job = ExplainJob(list(methods), target, dict(params), superpixels, meta, meta_lr)
    rows, problems, records = [], [], []
    arrived = (lambda index: on_items(len(units[index]))) if on_items else None
    for unit, outcomes in zip(units, stream(cluster, args, job, units, arrived)):
        for item, outcome in zip(unit, outcomes):
            if isinstance(outcome, BadImageError):
                problems.append(str(outcome))
                continue
            for result in outcome:
                row, record = write_explanation(result, item.name, out_dir, boundaries)
                rows.append(row)
                records.append(record)
                explainer.provider = result.provider
    if records:
        html.write_explain_index(out_dir, records)
    return rows, problems


# -------------------------------------------------------------------------------- evaluate

@dataclass
class EvaluateJob:
    """evaluate_image on one (item, missing keys, thumbnails already in --out): [(rows, files
    {path relative to --out: bytes}, provider), or the item's BadImageError]."""

    plan: object  # evaluate.Plan

    def __call__(self, explainer, unit: list) -> list:
        from swag_onnx import evaluate as ev

        scorer = ev.Scorer(explainer, self.plan.protocol.get("batch_size", 32))
        outcomes = []
        for item, missing, thumbs in unit:
            with tempfile.TemporaryDirectory(prefix="swag-ray-") as folder:
                folder = Path(folder)
                for name in thumbs:  # evaluate_image keeps a thumbnail that exists: so must we
                    (folder / "thumbs").mkdir(exist_ok=True)
                    (folder / "thumbs" / name).touch()
                try:
                    rows = ev.evaluate_image(explainer, item, self.plan, missing, folder, scorer)
                except BadImageError as exc:
                    outcomes.append(exc)
                    continue
                except SwagError as exc:
                    outcomes.append(_Failed(exc))
                    continue
                files = {str(p.relative_to(folder)): p.read_bytes()
                         for p in sorted(folder.rglob("*")) if p.is_file() and p.stat().st_size}
                outcomes.append((rows, files, explainer.provider))
        return outcomes


class RayCompute:
    """evaluate.run's `compute` on Ray: yields each item's rows in order, after writing the
    curves and thumbnails its actor returned; `provider` is the actors' (for settings.json);
    arrived(image name, (image, method) pairs) as each item's answer comes back."""

    def __init__(self, cluster: Cluster, args: dict,
                 arrived: Callable[[str, int], None] = lambda name, pairs: None):
        self.cluster, self.args, self.provider, self.arrived = cluster, args, None, arrived

    def __call__(self, todo, plan_, out_dir: Path):
        from swag_onnx.files import atomic_write

        out_dir = Path(out_dir)
        units = [[(item, missing, _thumbs(out_dir, item.name, plan_.methods))]
                 for item, missing in todo]
        pairs = len(plan_.methods)
        for (outcome,) in stream(self.cluster, self.args, EvaluateJob(plan_), units,
                                 lambda index: self.arrived(units[index][0][0].name, pairs)):
            if isinstance(outcome, BadImageError):
                yield outcome
                continue
            rows, files, self.provider = outcome
            for name, data in files.items():
                atomic_write(out_dir / name, lambda f, data=data: f.write(data))
            yield rows


def _thumbs(out_dir: Path, image: str, methods) -> list[str]:
    return [f"{image}__{m}.png" for m in methods
            if (out_dir / "thumbs" / f"{image}__{m}.png").exists()]


class StreamedProgress:
    """evaluate's progress(done, total, description) counting the (image, method) pairs the
    actors have finished but the driver has not yet written (evaluate.run writes in input
    order and reports an image when it writes it): done + those pairs, never going back."""

    def __init__(self, progress: Callable[[int, int, str], None]):
        self.progress, self.pending = progress, Counter()
        self.done, self.total, self.shown = 0, None, 0

    def arrived(self, name: str, pairs: int) -> None:
        self.pending[name] += pairs
        self._show(name)

    def written(self, done: int, total: int, name: str) -> None:
        self.pending[name] -= min(done - self.done, self.pending[name])
        self.done, self.total = done, total
        self._show(name)

    def _show(self, name: str) -> None:
        if self.total is None:  # the total comes with evaluate.run's first report
            return
        self.shown = max(self.shown, min(self.done + sum(self.pending.values()), self.total))
        self.progress(self.shown, self.total, name)


def evaluate(images, *args, address: str | None = None, workers: int | None = None, **kwargs):
    """swag_onnx.evaluate.evaluate (same arguments, same files) with the images explained and
    scored by Ray actors: address as `Cluster`; workers: the number of actors (None: as many
    as the cluster holds). progress advances as the actors finish images."""
    from swag_onnx import evaluate as ev

    require_ray()
    cluster = Cluster(address, workers)
    names = ("model", "card", "layers", "provider", "threads")
    args_ = explainer_args(**{k: kwargs[k] for k in names if k in kwargs})
    if kwargs.get("progress") is None:
        return ev.evaluate(images, *args, compute=RayCompute(cluster, args_), **kwargs)
    shown = StreamedProgress(kwargs.pop("progress"))
    return ev.evaluate(images, *args, compute=RayCompute(cluster, args_, shown.arrived),
                       progress=shown.written, **kwargs)
