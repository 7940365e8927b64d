"""Explaining many images, pipelined: `explain_folder(explainer, items, out_dir, methods)`.

Three stages overlap on a thread pool sized to the cores: decoding (each item's `load`, on the
pool), the explainer (the shared model run and the per-image methods, e.g. SLIC, on at most
`model_slots` threads; onnxruntime, OpenCV and scikit-image's SLIC release the GIL) and writing
(overlay PNG, .npy and .json of each explanation, on the pool). While batch k is in the model,
batch k+1 is being decoded and batch k-1 written. At most `model_slots + 2` batches are in
flight: the items are streamed (an iterator is fine) and memory does not grow with the folder.

The files and the order of the outcomes are those of the sequential loop: each image's maps
come from the same `Explainer.explain` call on the same batch, and outcomes are yielded in item
order. An image that cannot be decoded gives one problem line and the others continue; any
other error (a refused output path, a bad option) stops the run and is raised in order.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from swag_onnx import images as imgs
from swag_onnx.errors import BadImageError
from swag_onnx.explain import META_LR

__all__ = ["Outcome", "explain_folder", "explain_items", "write_explanation", "write_files",
           "workers"]


@dataclass
class Outcome:
    """What became of one item: its summary rows and index.html records (one per method), or
    the line saying why it could not be decoded."""

    name: str
    rows: list[tuple] = field(default_factory=list)  # (image, top-1, target, method, ms)
    records: list[dict] = field(default_factory=list)  # index.html entries
    problem: str | None = None


@dataclass
class Job:
    """What to compute for every batch (Explainer.explain's arguments) and how to write it."""

    methods: list
    target: object = None
    params: dict = field(default_factory=dict)
    superpixels: str = "image"
    meta: bool = False
    meta_lr: float = META_LR
    boundaries: bool = True
    on_progress: Callable | None = None  # (method, done, total) of the slow methods


# ----------------------------------------------------------------------------------- writing

def write_files(result, stem: str, out_dir: Path, boundaries: bool) -> float:
    """Write <stem>.<method>.png, .npy and .json of one Explanation atomically (the json's
    timings_ms include "writing"); returns the time taken (ms)."""
    start = time.perf_counter()
    top = result.target
    probability = next((t["probability"] for t in result.top5 if t["index"] == top["index"]),
                       None)
    caption = f"{top['label']}" + (f" {probability:.1%}" if probability is not None else "") \
        + f" | {result.method}"
    base = str(Path(out_dir) / f"{stem}.{result.method}")
    picture = imgs.overlay(result.image, result.saliency, caption,
                           boundaries=result.labels if boundaries else None)
    imgs.write_png(base + ".png", picture)
    imgs.write_npy(base + ".npy", np.asarray(result.saliency, np.float32))  # no copy if float32
    elapsed = (time.perf_counter() - start) * 1e3
    record = result.record()
    record["timings_ms"]["writing"] = round(elapsed, 2)
    imgs.write_json(base + ".json", record)
    return elapsed


def write_explanation(result, stem: str, out_dir: Path, boundaries: bool) -> tuple[tuple, dict]:
    """Write one Explanation's files (`write_files`), record the time in its timings_ms and
    return (summary row (image, top-1, target, method, ms), index.html record)."""
    result.timings_ms["writing"] = write_files(result, stem, out_dir, boundaries)
    best = result.top5[0]
    row = (stem, f"{best['label']} ({best['probability']:.1%})", result.target["label"],
           result.method, f"{sum(result.timings_ms.values()):.0f}")
    record = {"stem": stem, "method": result.method, "png": f"{stem}.{result.method}.png",
              "target": result.target, "top5": result.top5}
    return row, record


# ---------------------------------------------------------------------------------- pipeline

def workers() -> int:
    """Threads of the decode/write pool: the cores this process may use (at least 2, so that
    reading and writing files still overlap the model on one core)."""
    from swag_onnx.runtime import _cores

    return max(2, _cores())


def _decode(item) -> np.ndarray | BadImageError:
    """An item's uint8 RGB (H, W, 3), or the BadImageError saying why it cannot be read."""
    try:
        return item.load()
    except BadImageError as exc:
        return exc


def _write_all(results, stems: list[str], out_dir: Path, boundaries: bool) -> list:
    """[(row, record)] of one image's explanations, written in method order."""
    return [write_explanation(r, s, out_dir, boundaries) for r, s in zip(results, stems)]


def _model_stage(explainer, job: Job, batch: list, decoding: list[Future], pool,
                 out_dir: Path) -> list[Outcome | Future]:
    """Runs on a model thread: waits for the batch's decodes, explains the good images in one
    call and hands each image's writing to the pool. Returns per item an Outcome (a problem) or
    the Future of its [(row, record)]."""
    decoded = [f.result() for f in decoding]
    good = [(k, rgb) for k, rgb in enumerate(decoded) if not isinstance(rgb, BadImageError)]
    outcomes: list = [Outcome(item.name, problem=str(rgb)) if isinstance(rgb, BadImageError)
                      else None for item, rgb in zip(batch, decoded)]
    if good:
        results = explainer.explain(
            [rgb for _, rgb in good], method=job.methods, superpixels=job.superpixels,
            target=job.target, on_progress=job.on_progress, meta=job.meta,
            meta_lr=job.meta_lr, **job.params)
        per_image = len(results) // len(good)
        for j, (k, _) in enumerate(good):
            mine = results[j * per_image:(j + 1) * per_image]
            outcomes[k] = pool.submit(_write_all, mine, [batch[k].name] * per_image, out_dir,
                                      job.boundaries)
    return outcomes


def _collect(batch: list, staged: Future) -> list[Outcome]:
    """The finished Outcomes of one batch, in item order (errors raised here, in order)."""
    outcomes = []
    for item, outcome in zip(batch, staged.result()):
        if isinstance(outcome, Future):
            pairs = outcome.result()
            outcome = Outcome(item.name, [row for row, _ in pairs], [rec for _, rec in pairs])
        outcomes.append(outcome)
    return outcomes


def explain_items(explainer, items: Iterable, out_dir: Path, job: Job, batch_size: int = 8,
                  pool_size: int | None = None, model_slots: int = 2) -> Iterator[Outcome]:
    """Explain evaluate.Items (anything with .name and .load()) in batches of `batch_size`,
    pipelined (module docstring), and yield one Outcome per item, in item order, once its files
    are written. pool_size: decode/write threads (default `workers()`); model_slots: explain
    calls in flight at once (2: one batch's per-image methods overlap the next batch's model
    run; 1: the model stage is sequential)."""
    if batch_size < 1 or model_slots < 1:
        raise ValueError(f"batch_size and model_slots must be >= 1, got {batch_size}, "
                         f"{model_slots}")
    batches = _chunks(items, batch_size)
    with ThreadPoolExecutor(pool_size or workers(), thread_name_prefix="swag-io") as pool, \
            ThreadPoolExecutor(model_slots, thread_name_prefix="swag-model") as models:
        in_flight: deque = deque()  # (batch, Future of its staged outcomes)
        try:
            for batch in batches:
                decoding = [pool.submit(_decode, item) for item in batch]
                in_flight.append((batch, models.submit(_model_stage, explainer, job, batch,
                                                       decoding, pool, Path(out_dir))))
                # keep the model threads busy plus one batch decoding ahead
                while len(in_flight) > model_slots + 1:
                    yield from _collect(*in_flight.popleft())
            while in_flight:
                yield from _collect(*in_flight.popleft())
        finally:  # an error or an abandoned iterator: drop the work not started yet
            pool.shutdown(wait=False, cancel_futures=True)
            models.shutdown(wait=False, cancel_futures=True)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def explain_folder(explainer, items: Iterable, out_dir: Path, methods, *, target=None,
                   params: dict | None = None, batch_size: int = 8, boundaries: bool = True,
                   superpixels: str = "image", meta: bool = False, meta_lr: float = META_LR,
                   on_progress: Callable | None = None,
                   on_item: Callable[[Outcome], None] | None = None,
                   pool_size: int | None = None, model_slots: int = 2
                   ) -> tuple[list[tuple], list[str]]:
    """Explain the items with every method, write <name>.<method>.png/.npy/.json per item and
    method into out_dir and index.html (a gallery of this run's maps); existing files of the
    same names are replaced. Returns (summary rows, problems: one line per image that could
    not be decoded). on_progress(method, done, total): the slow methods' progress; on_item:
    called with each Outcome, in order, as soon as its files are written."""
    job = Job(list(methods) if not isinstance(methods, str) else [methods], target,
              dict(params or {}), superpixels, meta, meta_lr, boundaries, on_progress)
    rows, problems, records = [], [], []
    for outcome in explain_items(explainer, items, out_dir, job, batch_size, pool_size,
                                 model_slots):
        if outcome.problem is not None:
            problems.append(outcome.problem)
        rows += outcome.rows
        records += outcome.records
        if on_item is not None:
            on_item(outcome)
    if records:
        from swag_onnx import html

        html.write_explain_index(out_dir, records)
    return rows, problems
