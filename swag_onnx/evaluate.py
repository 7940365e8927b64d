"""`swag-onnx evaluate`: score saliency methods with the registered metrics, resumably.

``evaluate(...)`` is the whole job (the CLI only translates options and errors): it resolves the
methods (swag_onnx.methods.registry) and metrics (swag_onnx.metrics.registry), checks every
option, matches annotations, explains every image with every method, scores the maps and writes
the report. Everything goes to one folder (see README, "Evaluate"):

- ``results.csv``: one row per image, method and metric row (per annotated class for the
  localisation metrics), columns COLUMNS (swag_onnx.results). Rows are appended image by image
  and flushed to disk (fsync), so an interrupted run keeps what it finished; a rerun into the
  same folder skips the rows already there (a half-written last line is cut off first).
- ``settings.json``: the model, method parameters and protocol of the folder's rows, written
  with the first row; a rerun with other settings is refused (mixing them would make the means
  meaningless).
- ``curves/<image>__<method>__<metric>.npy``: float64 (2, P), a curve's x and y.
- ``thumbs/<image>__<method>.png``: a small overlay of the top-1 map, for overlays.png.
- ``summary.md``, ``curves.png``, ``overlays.png``: written by swag_onnx.report at the end.

Maps are scored at the model's input resolution (``to_model_resolution``); the explained class
is the one predicted on the clean image, except for the maps a metric asks for besides it (the
least probable class for class sensitivity, each annotated class for the pointing game).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from swag_onnx import images as imgs
from swag_onnx.card import class_name, parse_target
from swag_onnx.errors import BadImageError, BadOptionError
from swag_onnx.methods import registry as method_registry
from swag_onnx.metrics import registry as metric_registry
from swag_onnx.metrics.registry import Metric, MetricInputs
from swag_onnx.results import (
    COLUMNS, RESULTS, SETTINGS, append_rows, check_settings, jsonable, load_settings,
    read_results,
)

THUMB_SIDE = 192  # longest side of a thumbnail in overlays.png
FORMAT = 2
SHARED_OPTIONS = ("seed", "batch_size")  # options of the methods and of the metrics alike
OTHER_CLASS_NEEDS = {"least_class_map": "least probable class",
                     "random_class_map": "random other class"}
# what a method may read that comes from the model (not its input): a metric that randomises the
# model's parameters applies only to methods that read one of these
MODEL_NEEDS = frozenset(method_registry.NEEDS) - {"image", "preprocess"}

__all__ = ["COLUMNS", "RESULTS", "SETTINGS", "Item", "RunReport", "Evaluation", "evaluate",
           "run", "load_settings", "items_from_paths", "match_annotations"]


@dataclass
class Item:
    """One image of the run: its name in results.csv and its file (decoded when processed)."""

    name: str
    path: Path | None = None
    rgb: np.ndarray | None = None  # instead of path (tests, tools)

    def load(self) -> np.ndarray:
        return self.rgb if self.rgb is not None else imgs.load_image(self.path)


@dataclass
class RunReport:
    """What one call of `run` did."""

    processed: int = 0  # images explained in this run (not skipped)
    skipped: int = 0  # images whose rows were all present
    unannotated: int = 0  # images with no row to compute (localisation alone, no annotations)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # the planned rows, as in results.csv


@dataclass
class Plan:
    """A checked run: methods with their parameters, metrics, the protocol, the options as
    given (recorded in settings.json) and the annotations."""

    methods: list[str]
    method_options: dict  # the method options as given (explain checks them again, cheaply)
    metrics: list[Metric]
    protocol: dict
    options: dict
    annotations: dict = field(default_factory=dict)
    meta_lr: float | None = None


@dataclass
class Evaluation:
    """What `evaluate` did: the run's report, the files written and the problems met."""

    report: RunReport
    methods: list[str]
    metrics: list[str]  # the metric rows (road writes road, road-morf and road-lerf)
    written: list[Path]
    problems: list[str]


# ------------------------------------------------------------------------------- planning

def plan(methods, metrics, options: dict, *, annotations_path=None, items=(), meta=False,
         meta_lr=None) -> Plan:
    """Resolve and check everything a run will use (before any model run). options: method
    parameters and protocol options by name (None = default); seed and batch_size go to both."""
    chosen = method_registry.resolve(list(methods) or ["swag"], options)
    measures = metric_registry.resolve(metrics)
    protocol_names = set(metric_registry.protocol_params())
    given = {k: v for k, v in options.items() if v is not None and k != "superpixels"}
    method_given = {k: v for k, v in given.items()
                    if k not in protocol_names or k in SHARED_OPTIONS}
    taken = set().union(*(m.params for m in chosen))
    method_given = {k: v for k, v in method_given.items()
                    if k in taken or k not in SHARED_OPTIONS}
    checked = method_registry.split_params(chosen, method_given)
    protocol = metric_registry.check_protocol({k: v for k, v in given.items()
                                               if k in protocol_names})
    if meta:
        meta_lr = method_registry.check_meta(chosen, meta_lr, checked)
    annotations = {}
    if any("annotations" in m.needs for m in measures):
        names = ", ".join(m.name for m in measures if "annotations" in m.needs)
        if annotations_path is None:
            raise BadOptionError(f"--metric {names} needs --annotations FILE (boxes per image)")
        annotations = match_annotations(annotations_path, items)
    recorded = {k: v for k, v in given.items() if k not in protocol_names or k in SHARED_OPTIONS}
    if meta:
        recorded.update(meta=True, meta_lr=meta_lr)
    return Plan([m.name for m in chosen], method_given, measures, protocol, recorded,
                annotations, meta_lr if meta else None)


def check_randomisable(methods, metrics, options: dict) -> None:
    """The metrics that randomise the model (need randomised_maps, e.g. mprt) apply only to
    methods that read something from the model: BadOptionError naming the others (the control
    maps added by `evaluate` are not checked: their rows show what a map that ignores the model
    scores)."""
    measures = [m.name for m in metric_registry.resolve(metrics) if "randomised_maps" in m.needs]
    if not measures:
        return
    blind = [m.name for m in method_registry.resolve(list(methods) or ["swag"], options)
             if not m.needs & MODEL_NEEDS]
    if blind:
        raise BadOptionError(f"--metric {', '.join(measures)} randomises the model's parameters, "
                             f"but {', '.join(blind)} read(s) nothing from the model; leave "
                             f"{'it' if len(blind) == 1 else 'them'} out")


def match_annotations(path, items) -> dict:
    """{item name: {class name: boxes float (M, 4)}} for the items with annotations (matched by
    file name, else by stem; classes whose boxes are all VOC-difficult are left out, as
    swag_onnx.metrics.pointing.boxes_by_class does). Raises a SwagError for a bad file or when
    no image matches."""
    from swag_onnx.metrics.pointing import boxes_by_class, load_annotations

    if path is None:
        raise BadOptionError("--metric pointing needs --annotations FILE (boxes per image)")
    loaded = load_annotations(path)
    by_stem = {Path(k).stem: v for k, v in loaded.items()}
    matched = {}
    for item in items:
        entries = None
        if item.path is not None:
            entries = loaded.get(item.path.name, by_stem.get(item.path.stem))
        entries = entries if entries is not None else by_stem.get(item.name)
        classes = boxes_by_class(entries or [])
        if classes:
            matched[item.name] = classes
    if not matched:
        raise BadOptionError(f"no image to evaluate has annotations in {path}; annotations are "
                             "matched by file name (or file name without extension)")
    return matched


def annotated_classes(explainer, annotations: dict) -> dict[str, int]:
    """{annotated class name: class index}; an unknown name is a BadOptionError (checked before
    any work, so a run never stops half-way on it)."""
    indices, unknown = {}, []
    for classes in annotations.values():
        for name in classes:
            if name in indices or name in unknown:
                continue
            try:
                indices[name] = parse_target(explainer.card, name, explainer.num_classes)
            except BadOptionError as exc:
                unknown.append(f"{name!r} ({exc})")
    if unknown:
        raise BadOptionError("annotated class(es) not among the model's class names: "
                             + "; ".join(unknown))
    return indices


def items_from_paths(paths) -> tuple[list[Item], list[str]]:
    """Image files (folders expanded) with unique names (`unique_names`). Nothing is decoded
    here."""
    files, problems = imgs.collect_images(paths)
    return [Item(name, path) for name, path in zip(unique_names(files), files)], problems


def unique_names(files: list[Path]) -> list[str]:
    """One output name per file: its stem; the file name when several files share the stem
    (x.jpg and x.png -> "x.jpg", "x.png"); <folder>_<file name> when that is shared too;
    then a counter. Outputs of different files never overwrite each other."""
    stems = [f.stem for f in files]
    names, taken = [], set()
    for f in files:
        name = f.stem if stems.count(f.stem) == 1 else f.name
        if name in taken:
            name = f"{f.parent.name}_{f.name}"
        base, k = name, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        names.append(name)
    return names


def _per_class_rows() -> set[str]:
    return {row for m in metric_registry.METRICS.values() if m.per_class for row in m.rows}


def row_key(row: dict) -> tuple:
    """(image, method, metric row, annotated class for the localisation metrics else "")."""
    return (row["image"], row["method"], row["metric"],
            row["label"] if row["metric"] in _per_class_rows() else "")


def planned_keys(item: Item, methods, metrics: list[Metric], classes: list[str]) -> list[tuple]:
    keys = []
    for method in methods:
        for m in metrics:
            for row in m.rows:
                keys += [(item.name, method, row, c) for c in classes] if m.per_class \
                    else [(item.name, method, row, "")]
    return keys


def settings_of(explainer, plan_: Plan) -> dict:
    """The settings a folder's rows depend on (settings.json; a rerun must match them). Every
    protocol option is recorded (so later runs may add metrics), and the method options as
    given (so later runs may add methods)."""
    from swag_onnx.runtime import file_sha256

    card = explainer.card
    return jsonable({
        "format": FORMAT,
        "model": {"file": explainer.onnx_path.name, "sha256": file_sha256(explainer.onnx_path),
                  # as asked for ("auto" resolves the same way for the same model and code):
                  # reading the resolved names would augment a model no method needs to augment
                  "layers": list(getattr(explainer.runner, "requested_layers",
                                         explainer.runner.layers)),
                  **{k: card.get(k) for k in ("layout", "input_size", "resize", "crop",
                                              "scaling", "color_order", "score")}},
        "methods": {k: v for k, v in sorted(plan_.options.items()) if k != "batch_size"},
        "protocol": {"resolution": list(card["input_size"]),
                     **{k: v for k, v in sorted(plan_.protocol.items()) if k != "batch_size"}},
    })


# ------------------------------------------------------------------------------- scoring

class Scorer:
    """The model functions the metrics need, for one Explainer."""

    def __init__(self, explainer, batch_size: int):
        self.explainer = explainer
        self.batch_size = batch_size
        self.layout = "CHW" if explainer.card["layout"] == "NCHW" else "HWC"
        self._cascades: dict[int, list] = {}

    def cascade(self, seed: int) -> list[tuple[str, dict]]:
        """[(stage name, parameter overrides)] of the cascading randomisation (swag_onnx.metrics.
        mprt.cascade), drawn once per seed: the same randomised models for every image."""
        from swag_onnx.metrics import mprt

        if seed not in self._cascades:
            runner = self.explainer.runner
            self._cascades[seed] = mprt.cascade(runner.parameter_stages(),
                                                runner.parameter_values(), seed)
        return self._cascades[seed]

    def rgb_probabilities(self, views: np.ndarray) -> np.ndarray:
        """uint8 model-view images (N, h, w, 3) -> probabilities (N, K), batch by batch."""
        b = self.batch_size
        return np.concatenate([self.explainer.probabilities(
            imgs.scale_model_view(views[i:i + b], self.explainer.card))
            for i in range(0, len(views), b)])


def _save_curve(out_dir: Path, image: str, method: str, metric: str, x, y) -> None:
    imgs.write_npy(out_dir / "curves" / f"{image}__{method}__{metric}.npy",
                   np.stack([np.asarray(x, np.float64), np.asarray(y, np.float64)]))


def _save_thumb(out_dir: Path, image: str, explanation) -> None:
    import cv2

    rgb, saliency = explanation.image, explanation.saliency
    scale = THUMB_SIDE / max(rgb.shape[:2])
    if scale < 1:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        saliency = cv2.resize(saliency, size, interpolation=cv2.INTER_AREA)
    caption = f"{image}: {explanation.target['label']} | {explanation.method}"
    imgs.write_png(out_dir / "thumbs" / f"{image}__{explanation.method}.png",
                   imgs.overlay(rgb, saliency, caption))


def _row(image, method, metric, target, label, value, seconds, detail="") -> dict:
    return {"image": image, "method": method, "metric": metric, "target": int(target),
            "label": label, "value": float(value), "seconds": float(seconds), "detail": detail}


def _seconds(explanation) -> float:
    return sum(explanation.timings_ms.values()) / 1e3


class ImageRun:
    """One image of a run: its explanations (made once, as the metrics ask for them) and the
    inputs of the metrics."""

    def __init__(self, explainer, item: Item, plan_: Plan, scorer: Scorer):
        self.explainer, self.item, self.plan, self.scorer = explainer, item, plan_, scorer
        self.rgb = item.load()
        batch, self.geometry = imgs.preprocess(self.rgb, explainer.card)
        self.x = batch[0]
        self.view = imgs.model_view(self.rgb, self.geometry)
        self.probabilities = explainer.probabilities(batch)[0]
        self._maps: dict[tuple, object] = {}

    def explanations(self, methods: list[str], target, parameters: dict | None = None) -> dict:
        """{method: Explanation} of `target` (None = top-1), computed once per (method, target);
        with `parameters` (overrides of the model's, see Explainer.explain) computed anew."""
        todo = [m for m in methods if (m, target) not in self._maps or parameters]
        if todo:
            taken = set().union(*(method_registry.METHODS[m].params for m in todo
                                  if m in method_registry.METHODS))
            options = {k: v for k, v in self.plan.method_options.items() if k in taken}
            found = self.explainer.explain([self.rgb], method=todo, target=target,
                                           meta=self.plan.meta_lr is not None,
                                           meta_lr=self.plan.meta_lr or 0.0,
                                           parameters=parameters, **options)
            if parameters:
                return dict(zip(todo, found))
            self._maps.update({(m, target): e for m, e in zip(todo, found)})
        return {m: self._maps[m, target] for m in methods}

    def randomised_maps(self, method: str, target: int) -> Callable[[int], list]:
        """seed -> [(stage name, map (h, w) at model resolution)]: `method`'s map of `target` at
        each stage of the cascading randomisation (Scorer.cascade), computed once per seed."""
        done: dict[int, list] = {}

        def maps(seed: int) -> list[tuple[str, np.ndarray]]:
            if seed not in done:
                done[seed] = [(name, to_model(self.explanations([method], target, overrides)[
                    method], self)) for name, overrides in self.scorer.cascade(seed)]
            return done[seed]
        return maps

    def other_class(self, need: str, target: int, seed: int) -> int:
        """The class of a *_class_map need: the least probable one, or a random class other
        than the target (seeded by the protocol seed and the image name)."""
        if need == "least_class_map":
            return int(np.argmin(self.probabilities))
        rng = np.random.default_rng([seed, zlib.crc32(self.item.name.encode())])
        others = np.delete(np.arange(len(self.probabilities)), target)
        return int(rng.choice(others))

    def inputs(self, explanation, boxes=None, other_maps=None) -> MetricInputs:
        from swag_onnx.metrics import to_model_resolution

        target = explanation.target["index"]
        return MetricInputs(
            x=self.x, layout=self.scorer.layout, view=self.view,
            saliency=to_model_resolution(explanation.saliency, self.geometry),
            original=explanation.saliency, target=target,
            probabilities=self.explainer.probabilities,
            rgb_probabilities=self.scorer.rgb_probabilities, image_name=self.item.name,
            other_maps=other_maps or {}, boxes=boxes,
            randomised_maps=self.randomised_maps(explanation.method, target))


def evaluate_image(explainer, item: Item, plan_: Plan, missing: set, out_dir: Path,
                   scorer: Scorer, advance: Callable[[int], None] = lambda n: None) -> list[dict]:
    """Explain one image and compute its missing rows (keys in `missing`); writes its curves and
    thumbnails, and returns the rows (results.csv order)."""
    run_ = ImageRun(explainer, item, plan_, scorer)
    classes = plan_.annotations.get(item.name, {})
    rows: dict[tuple, dict] = {}

    def wanted(method: str, m: Metric, label: str = "") -> bool:
        return any((item.name, method, row, label) in missing for row in m.rows)

    top1 = [x for x in plan_.methods
            if any(wanted(x, m) for m in plan_.metrics if not m.per_class)]
    for method, explanation in run_.explanations(top1, None).items():
        other_maps = {}
        for need in OTHER_CLASS_NEEDS:
            if any(need in m.needs and wanted(method, m) for m in plan_.metrics):
                cls = run_.other_class(need, explanation.target["index"],
                                       plan_.protocol.get("seed", 0))
                other = run_.explanations([method], cls)[method]
                other_maps[need] = (to_model(other, run_), f"{OTHER_CLASS_NEEDS[need]} {cls} "
                                    f"({class_name(explainer.card, cls)}), "
                                    f"{_seconds(other):.3f} s")
        inputs = run_.inputs(explanation, other_maps=other_maps)
        for m in plan_.metrics:
            if not m.per_class and wanted(method, m):
                _score(m, inputs, explanation, rows, out_dir, item.name, method, plan_)
        _save_thumb(out_dir, item.name, explanation)
        advance(1)
    for label, boxes in sorted(classes.items()):
        todo = [x for x in plan_.methods
                if any(m.per_class and wanted(x, m, label) for m in plan_.metrics)]
        if not todo:
            continue
        index = parse_target(explainer.card, label, explainer.num_classes)
        for method, explanation in run_.explanations(todo, index).items():
            inputs = run_.inputs(explanation, boxes=boxes)
            for m in plan_.metrics:
                if m.per_class and wanted(method, m, label):
                    _score(m, inputs, explanation, rows, out_dir, item.name, method, plan_,
                           label)
            if not (out_dir / "thumbs" / f"{item.name}__{method}.png").exists():
                _save_thumb(out_dir, item.name, explanation)  # localisation alone: its first map
    order = planned_keys(item, plan_.methods, plan_.metrics, sorted(classes))
    return [rows[k] for k in order if k in rows]


def to_model(explanation, run_: ImageRun) -> np.ndarray:
    from swag_onnx.metrics import to_model_resolution

    return to_model_resolution(explanation.saliency, run_.geometry)


def _score(m: Metric, inputs: MetricInputs, explanation, rows: dict, out_dir: Path, image: str,
           method: str, plan_: Plan, label: str = "") -> None:
    """Run one metric on one map; its rows go into `rows`, its curves to out_dir/curves."""
    protocol = {k: plan_.protocol[k] for k in m.params}
    target = explanation.target
    for value in m.run(inputs, **protocol):
        if value.curve is not None and np.all(np.isfinite(value.curve[1])):
            _save_curve(out_dir, image, method, value.row, *value.curve)
        rows[(image, method, value.row, label)] = _row(
            image, method, value.row, target["index"], label or target["label"], value.value,
            _seconds(explanation), value.note)


# ----------------------------------------------------------------------------------- the run

def run(explainer, items: list[Item], out_dir: Path, plan_: Plan,
        progress: Callable[[int, str], None] | None = None, compute=None) -> RunReport:
    """Evaluate `items` x methods x metrics of `plan_` into out_dir, skipping rows already
    there. progress(n, description): n more (image, method) pairs done. Raises BadOptionError
    for a folder with other settings (before any model run).
    compute: another executor (swag_onnx.distributed): compute(todo, plan_, out_dir) with todo
    the [(item, missing keys)] to do yields, in todo order, each item's rows (its curves and
    thumbnails written first) or its BadImageError; this function still writes every row."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadOptionError(f"--out {out_dir} is a file; pass a folder")
    stored = check_settings(out_dir, settings_of(explainer, plan_))
    results = out_dir / RESULTS
    done = {row_key(r) for r in read_results(results)}
    scorer = Scorer(explainer, plan_.protocol.get("batch_size", 32))
    report = RunReport()
    start = time.perf_counter()
    n = len(plan_.methods)
    tell = progress or (lambda count, name: None)
    outcomes = None
    if compute is not None:
        todo = [(item, set(keys) - done) for item in items
                for keys in [planned_keys(item, plan_.methods, plan_.metrics,
                                          sorted(plan_.annotations.get(item.name, {})))]
                if keys and set(keys) - done]
        outcomes = iter(compute(todo, plan_, out_dir))
    for item in items:
        keys = planned_keys(item, plan_.methods, plan_.metrics,
                            sorted(plan_.annotations.get(item.name, {})))
        missing = set(keys) - done
        if not keys or not missing:
            report.unannotated += not keys
            report.skipped += bool(keys)
            tell(n, item.name)
            continue
        advanced = [0]

        def advance(count: int, name: str = item.name) -> None:
            advanced[0] += count
            tell(count, name)

        try:
            rows = evaluate_image(explainer, item, plan_, missing, out_dir, scorer, advance) \
                if outcomes is None else _raised(next(outcomes))
        except BadImageError as exc:
            report.problems.append(str(exc))
            continue
        finally:
            advance(n - advanced[0])
        if not (out_dir / SETTINGS).exists():  # with the first row, never before
            imgs.write_json(out_dir / SETTINGS, stored)
        append_rows(results, rows)
        done.update(row_key(r) for r in rows)
        report.processed += 1
    report.seconds = time.perf_counter() - start
    wanted = {k for item in items
              for k in planned_keys(item, plan_.methods, plan_.metrics,
                                    sorted(plan_.annotations.get(item.name, {})))}
    report.rows = [r for r in read_results(results) if row_key(r) in wanted]
    if (out_dir / SETTINGS).exists():
        stored["runs"].append({"images": report.processed, "skipped": report.skipped,
                               "seconds": round(report.seconds, 3),
                               "provider": getattr(compute, "provider", None)
                               or explainer.provider, "methods": list(plan_.methods),
                               "metrics": [m.name for m in plan_.metrics],
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        imgs.write_json(out_dir / SETTINGS, stored)
    return report


def _raised(outcome):
    """A computed item's rows, or its error raised."""
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def evaluate(images, methods=("swag",), metrics=(), out_dir="swag-eval", *, model=None,
             annotations=None, layers=None, provider: str = "auto", threads: int | None = None,
             card: dict | None = None, meta: bool = False, meta_lr: float | None = None,
             controls: bool = True, progress: Callable[[int, int, str], None] | None = None,
             compute=None, **options) -> Evaluation:
    """The whole `swag-onnx evaluate` job: check, explain, score, report.

    images: files or folders; methods/metrics: names (defaults swag; deletion and insertion);
    options: method parameters and protocol options by name (None = default; `swag-onnx
    methods` and `swag-onnx metrics` list them). Everything is checked before the first model
    run. controls: the control maps (registry entries flagged control: random, center) are
    evaluated beside the methods, so that the report can flag metrics that do not separate
    methods on this model. progress(done, total, description) is called as (image, method)
    pairs finish. compute: see `run` (the model then runs there: this process reads it on the
    CPU only, for its settings and class names).
    Raises a SwagError for a user error; images that cannot be decoded are listed in
    `problems` (the rest are evaluated).
    """
    from swag_onnx import report as reports
    from swag_onnx.explain import Explainer

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadOptionError(f"--out {out_dir} is a file; pass a folder")
    items, problems = items_from_paths(images)
    if not items:
        raise BadOptionError("no images to evaluate" + (": " + "; ".join(problems)
                                                         if problems else ""))
    methods = list(methods) or ["swag"]
    check_randomisable(methods, metrics, options)  # the user's methods, before the controls
    if controls:
        methods += [name for name, m in method_registry.METHODS.items()
                    if m.control and name not in methods]
    plan_ = plan(methods, metrics, options, annotations_path=annotations, items=items,
                 meta=meta, meta_lr=meta_lr)
    explainer = Explainer(model, card=card, layers=layers or None,
                          provider=provider if compute is None else "cpu", threads=threads)
    annotated_classes(explainer, plan_.annotations)
    total = len(items) * len(plan_.methods)
    done = [0]

    def tell(n: int, name: str) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total, name)

    result = run(explainer, items, out_dir, plan_, tell, compute)
    rows = [row for m in plan_.metrics for row in m.rows]  # results.csv's metric column
    written = []
    if (out_dir / SETTINGS).exists():
        stored = load_settings(out_dir)
        written = reports.write_report(out_dir, result.rows, plan_.methods, rows,
                                       stored["settings"], stored["runs"][-1])
    elif not result.problems:
        problems.append("nothing was evaluated")
    return Evaluation(result, plan_.methods, rows, written, problems + result.problems)
