"""`swag-onnx evaluate`: score saliency methods with the metrics of swag_onnx.metrics, resumably.

One run explains every image with every method and scores the maps; everything goes to one
folder (see README, "Evaluate"):

- ``results.csv``: one row per image, method and metric (pointing: per annotated class), columns
  COLUMNS (swag_onnx.results). Rows are appended image by image and flushed to disk (fsync) after each image, so an
  interrupted run keeps what it finished; a rerun into the same folder skips the rows already
  there (a half-written last line is cut off first).
- ``settings.json``: the model, method parameters and protocol of the folder's rows; a rerun with
  other settings is refused (mixing them would make the means meaningless).
- ``curves/<image>__<method>__<metric>.npy``: float64 (2, P), the curve's x (fraction of pixels
  changed, or information content for SIC/AIC) and y (probability, or accuracy).
- ``thumbs/<image>__<method>.png``: a small overlay of the top-1 map, for overlays.png.
- ``summary.md``, ``curves.png``, ``overlays.png``: written by swag_onnx.report at the end.

Scores: deletion/insertion/SIC/AIC use the softmax probability of the class predicted on the clean
image, which is also the class explained. Maps are scored at the model's input resolution
(``to_model_resolution``). Class sensitivity explains the least probable class too; the pointing
game explains each annotated class present in the image.
"""

from __future__ import annotations

import inspect
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from swag_onnx import images as imgs
from swag_onnx.card import class_name, parse_target
from swag_onnx.errors import BadImageError, BadOptionError
from swag_onnx.results import (  # noqa: F401  (COLUMNS, load_settings: part of this API)
    COLUMNS, RESULTS, SETTINGS, append_rows, check_settings, jsonable, load_settings,
    read_results,
)

METRICS = ("deletion", "insertion", "sic", "aic", "pointing", "class-sensitivity")
DEFAULT_METRICS = ("deletion", "insertion")
HIGHER_IS_BETTER = {"deletion": False, "insertion": True, "sic": True, "aic": True,
                    "pointing": True, "class-sensitivity": False}
CURVE_METRICS = ("deletion", "insertion", "sic", "aic")
TOP1_METRICS = ("deletion", "insertion", "sic", "aic", "class-sensitivity")
THUMB_SIDE = 192  # longest side of a thumbnail in overlays.png
FORMAT = 1


@dataclass(frozen=True)
class Protocol:
    """Every choice that changes a metric's value (batch_size only changes speed and memory).

    step: pixels per deletion/insertion step, None = round(h * w / 224); baseline: deleted pixels'
    value in the normalised input space; blur_ksize/blur_sigma: insertion's start image;
    tolerance: pointing game, pixels; seed: PIC (per image: derived from seed and the image name)
    and the stochastic methods; pic: keyword overrides of swag_onnx.metrics.pic.pic_curves.
    """

    step: int | None = None
    baseline: float = 0.0
    blur_ksize: int = 11
    blur_sigma: float = 5.0
    tolerance: int = 15
    seed: int = 0
    batch_size: int = 32
    pic: dict = field(default_factory=dict)


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
    unannotated: int = 0  # images with no row to compute (pointing alone, no annotations)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # the planned rows, as in results.csv


# ------------------------------------------------------------------------------- planning

def resolve_metrics(metrics) -> list[str]:
    names = []
    for m in metrics or DEFAULT_METRICS:
        m = m.strip().lower()
        if m not in METRICS:
            raise BadOptionError(f"unknown metric {m!r}; choose from: {', '.join(METRICS)}")
        if m not in names:
            names.append(m)
    return [m for m in METRICS if m in names]


def resolve_methods(methods) -> list[str]:
    """Method names as explain takes them ("swag" = "swag-image"), duplicates dropped."""
    from swag_onnx.explain import _method_names

    return _method_names(list(methods) or ["swag"], "image")


def method_params(methods, options: dict) -> dict:
    """The explain parameters for `methods` from the options (None = not given). seed and
    batch_size go only to methods that take them (the metrics use them too); meta / meta_lr
    (meta-saliency) only with methods it applies to; any other option that no chosen method
    takes is an error."""
    from swag_onnx.explain import META_LR, METHOD_PARAMS, SWAG_PARAMS, _check_meta

    accepted = set().union(*(SWAG_PARAMS if m.startswith("swag-") else
                             METHOD_PARAMS.get(m, set()) for m in methods))
    params = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in ("meta", "meta_lr"):  # meta-saliency: checked against the methods
            if options.get("meta"):
                params[key] = value
                _check_meta(methods, options.get("meta_lr", META_LR))
        elif key == "combine":
            from swag_onnx.methods.cam import CAM_METHODS

            if any(m in CAM_METHODS for m in methods):
                params[key] = value
        elif key in accepted:
            params[key] = value
        elif key not in ("seed", "batch_size"):
            raise BadOptionError(f"option --{key} does not apply to {', '.join(methods)}")
    return params


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
    """Image files (folders expanded) with unique names: the stem, or <folder>_<stem> when two
    files share a stem. Nothing is decoded here."""
    files, problems = imgs.collect_images(paths)
    items, names = [], set()
    for path in files:
        name = path.stem if path.stem not in names else f"{path.parent.name}_{path.stem}"
        k = 2
        while name in names:
            name, k = f"{path.stem}_{k}", k + 1
        names.add(name)
        items.append(Item(name, path))
    return items, problems


def row_key(row: dict) -> tuple:
    """(image, method, metric, annotated class for pointing else "")."""
    return (row["image"], row["method"], row["metric"],
            row["label"] if row["metric"] == "pointing" else "")


def planned_keys(item: Item, methods, metrics, classes: list[str]) -> list[tuple]:
    keys = []
    for method in methods:
        for metric in metrics:
            if metric == "pointing":
                keys += [(item.name, method, metric, c) for c in classes]
            else:
                keys.append((item.name, method, metric, ""))
    return keys


def settings_of(explainer, protocol: Protocol, method_params: dict, input_hw) -> dict:
    """The settings a folder's rows depend on (settings.json; a rerun must match them)."""
    from swag_onnx.metrics import default_step
    from swag_onnx.runtime import file_sha256

    card = explainer.card
    pic = pic_settings(protocol)
    return jsonable({
        "format": FORMAT,
        "model": {"file": explainer.onnx_path.name, "sha256": file_sha256(explainer.onnx_path),
                  "layers": list(explainer.runner.layers),
                  **{k: card.get(k) for k in ("layout", "input_size", "resize", "crop",
                                              "scaling", "color_order", "score")}},
        "methods": {k: v for k, v in sorted(method_params.items()) if k != "batch_size"},
        "protocol": {
            "score": "softmax probability of the class predicted on the clean image",
            "resolution": list(input_hw),
            "step": protocol.step if protocol.step is not None else default_step(*input_hw),
            "baseline": protocol.baseline, "blur_ksize": protocol.blur_ksize,
            "blur_sigma": protocol.blur_sigma, "blur_border": "reflect",
            "auc": "trapezoid rule over the exact fraction of pixels changed, x in [0, 1]",
            "pic": pic, "pointing_tolerance": protocol.tolerance, "seed": protocol.seed},
    })


def pic_settings(protocol: Protocol) -> dict:
    """pic_curves' keyword defaults with the run's overrides (every PIC choice, spelled out)."""
    try:
        from swag_onnx.metrics.pic import pic_curves
    except ImportError:
        return dict(protocol.pic)
    params = {name: p.default for name, p in inspect.signature(pic_curves).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY
              and name not in ("seed", "rng", "batch_size")}
    params.update(protocol.pic)
    return {k: v for k, v in params.items() if not callable(v)}


def pic_options(**options) -> dict:
    """pic_curves keyword overrides from options (None = the default), checked."""
    from swag_onnx.metrics.pic import REVEALS

    given = {k: v for k, v in options.items() if v is not None}
    if given.get("reveal", REVEALS[0]) not in REVEALS:
        raise BadOptionError(f"unknown PIC reveal {given['reveal']!r}; choose one of: "
                             + ", ".join(REVEALS))
    if not 0.0 <= given.get("min_pred_value", 0.0) <= 1.0:
        raise BadOptionError(f"the PIC minimum score must be within [0, 1], got "
                             f"{given['min_pred_value']}")
    return given


# ------------------------------------------------------------------------------- scoring

class Scorer:
    """Scores one image's maps: the model functions the metrics need, for one Explainer."""

    def __init__(self, explainer, protocol: Protocol):
        self.explainer = explainer
        self.protocol = protocol
        self.layout = explainer.card["layout"]

    def probabilities_of_rgb(self, views: np.ndarray) -> np.ndarray:
        """uint8 model-view images (N, h, w, 3) -> probabilities (N, K), batch by batch."""
        b = self.protocol.batch_size
        return np.concatenate([self.explainer.probabilities(
            imgs.scale_model_view(views[i:i + b], self.explainer.card))
            for i in range(0, len(views), b)])

    def curves(self, metric_set, x, view, saliency, cls, image_name) -> dict:
        """{metric: (x, y, auc, note)} for the curve metrics in metric_set (saliency: model
        grid); a skipped PIC curve has NaN y and auc and the reason as its note."""
        from swag_onnx.metrics import (auc, curve_fractions, default_step, deletion_curve,
                                       insertion_curve)

        p = self.protocol
        out = {}
        h, w = saliency.shape
        step = p.step if p.step is not None else default_step(h, w)
        common = dict(layout=self.layout, step=step, batch_size=p.batch_size)
        xs = curve_fractions(h, w, step)
        if "deletion" in metric_set:
            y = deletion_curve(x, saliency, self.explainer.probabilities, cls,
                               baseline=p.baseline, **common)
            out["deletion"] = (xs, y, auc(y, xs), "")
        if "insertion" in metric_set:
            y = insertion_curve(x, saliency, self.explainer.probabilities, cls,
                                blur_ksize=p.blur_ksize, blur_sigma=p.blur_sigma, **common)
            out["insertion"] = (xs, y, auc(y, xs), "")
        if {"sic", "aic"} & set(metric_set):
            from swag_onnx.metrics.pic import pic_curves

            seed = (p.seed * 1_000_003 + zlib.crc32(image_name.encode())) % 2 ** 32
            result = pic_curves(view, saliency, self.probabilities_of_rgb, cls, seed=seed,
                                batch_size=p.batch_size, **p.pic)
            for name in ("sic", "aic"):
                if name in metric_set:
                    curve = getattr(result, name)
                    note = f"skipped: {curve.skipped}" if curve.skipped else ""
                    out[name] = (np.asarray(curve.x, np.float64), np.asarray(curve.y, np.float64),
                                 float(curve.auc), note)
        return out


def _seconds(explanation) -> float:
    return sum(explanation.timings_ms.values()) / 1e3


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


def evaluate_image(explainer, item: Item, methods, metrics, missing: set, out_dir: Path,
                   protocol: Protocol, method_params: dict, annotations: dict,
                   advance: Callable[[int], None] = lambda n: None) -> list[dict]:
    """Explain one image and compute its missing rows (keys in `missing`); writes its curves and
    thumbnails, and returns the rows (results.csv order)."""
    from swag_onnx.metrics import to_model_resolution

    scorer = Scorer(explainer, protocol)
    card = explainer.card
    rgb = item.load()
    batch, geometry = imgs.preprocess(rgb, card)
    x = batch[0]
    probabilities = explainer.probabilities(batch)[0]
    least = int(np.argmin(probabilities))
    top1_methods = [m for m in methods
                    if any((item.name, m, t, "") in missing for t in TOP1_METRICS)]
    main = dict(zip(top1_methods, explainer.explain([rgb], method=top1_methods, **method_params))
                ) if top1_methods else {}
    contrast_methods = [m for m in top1_methods
                        if (item.name, m, "class-sensitivity", "") in missing]
    contrast = dict(zip(contrast_methods, explainer.explain(
        [rgb], method=contrast_methods, target=least, **method_params))) \
        if contrast_methods else {}
    view = imgs.model_view(rgb, geometry)
    rows: dict[tuple, dict] = {}
    for method, result in main.items():
        cls, label = result.target["index"], result.target["label"]
        seconds = _seconds(result)
        saliency = to_model_resolution(result.saliency, geometry)
        wanted = [t for t in TOP1_METRICS if (item.name, method, t, "") in missing]
        for metric, (cx, cy, area, note) in scorer.curves(wanted, x, view, saliency, cls,
                                                          item.name).items():
            if np.all(np.isfinite(cy)):
                _save_curve(out_dir, item.name, method, metric, cx, cy)
            rows[(item.name, method, metric, "")] = _row(item.name, method, metric, cls, label,
                                                        area, seconds, note)
        if method in contrast:
            from swag_onnx.metrics.sensitivity import class_sensitivity

            other = contrast[method]
            value = class_sensitivity(saliency, to_model_resolution(other.saliency, geometry))
            rows[(item.name, method, "class-sensitivity", "")] = _row(
                item.name, method, "class-sensitivity", cls, label, value, seconds,
                f"least probable class {least} ({class_name(card, least)}), "
                f"{_seconds(other):.3f} s")
        _save_thumb(out_dir, item.name, result)
        advance(1)
    if "pointing" in metrics:
        rows.update(_pointing(explainer, item, rgb, methods, missing, out_dir, protocol,
                              method_params, annotations))
    order = planned_keys(item, methods, metrics, sorted(annotations.get(item.name, {})))
    return [rows[k] for k in order if k in rows]


def _pointing(explainer, item, rgb, methods, missing, out_dir, protocol, method_params,
              annotations):
    from swag_onnx.metrics.pointing import pointing_hit

    rows = {}
    for label, boxes in sorted(annotations.get(item.name, {}).items()):
        todo = [m for m in methods if (item.name, m, "pointing", label) in missing]
        if not todo:
            continue
        index = parse_target(explainer.card, label, explainer.num_classes)
        for method, result in zip(todo, explainer.explain([rgb], method=todo, target=index,
                                                          **method_params)):
            hit = bool(pointing_hit(result.saliency, boxes, tolerance=protocol.tolerance))
            if not (out_dir / "thumbs" / f"{item.name}__{method}.png").exists():
                _save_thumb(out_dir, item.name, result)  # pointing alone: its first map
            rows[(item.name, method, "pointing", label)] = _row(
                item.name, method, "pointing", index, label, float(hit), _seconds(result),
                "hit" if hit else "miss")
    return rows


# ----------------------------------------------------------------------------------- the run

def run(explainer, items: list[Item], out_dir: Path, methods, metrics, *, protocol: Protocol,
        method_params: dict | None = None, annotations: dict | None = None,
        options: dict | None = None,
        progress: Callable[[int, str], None] | None = None) -> RunReport:
    """Evaluate `items` x `methods` x `metrics` into out_dir, skipping rows already there.

    methods: resolved names (see explain.METHODS); metrics: see resolve_metrics; method_params:
    what explain receives (see method_params); options: the method options as given, recorded in
    settings.json (default method_params; recording the options rather than what the chosen
    methods take lets a later run add methods to the folder); annotations: {image name:
    {class name: boxes (M, 4)}} (pointing); progress(n, description): n more (image, method)
    pairs done. Raises BadOptionError for a folder with other settings.
    """
    method_params = dict(method_params or {})
    annotations = annotations or {}
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadOptionError(f"--out {out_dir} is a file; pass a folder")
    input_hw = tuple(explainer.card["input_size"])
    recorded = method_params if options is None else options
    settings = settings_of(explainer, protocol, {k: v for k, v in recorded.items()
                                                 if v is not None}, input_hw)
    stored = check_settings(out_dir, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    imgs.write_json(out_dir / SETTINGS, stored)
    results = out_dir / RESULTS
    done = {row_key(r) for r in read_results(results)}
    report = RunReport()
    start = time.perf_counter()
    for item in items:
        keys = planned_keys(item, methods, metrics, sorted(annotations.get(item.name, {})))
        missing = set(keys) - done
        if not keys:  # pointing alone, and the image has no annotations
            report.unannotated += 1
            if progress is not None:
                progress(len(methods), item.name)
            continue
        if not missing:
            report.skipped += 1
            if progress is not None:
                progress(len(methods), item.name)
            continue
        advanced = [0]

        def advance(n: int, name: str = item.name) -> None:
            advanced[0] += n
            if progress is not None:
                progress(n, name)

        try:
            rows = evaluate_image(explainer, item, methods, metrics, missing, out_dir, protocol,
                                  method_params, annotations, advance)
        except BadImageError as exc:
            report.problems.append(str(exc))
            continue
        finally:
            advance(len(methods) - advanced[0])
        append_rows(results, rows)
        done.update(row_key(r) for r in rows)
        report.processed += 1
    report.seconds = time.perf_counter() - start
    wanted = {k for item in items
              for k in planned_keys(item, methods, metrics,
                                    sorted(annotations.get(item.name, {})))}
    report.rows = [r for r in read_results(results) if row_key(r) in wanted]
    stored["runs"].append({"images": report.processed, "skipped": report.skipped,
                           "seconds": round(report.seconds, 3), "provider": explainer.provider,
                           "methods": list(methods), "metrics": list(metrics),
                           "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    imgs.write_json(out_dir / SETTINGS, stored)
    return report

