"""What `swag-onnx evaluate` writes at the end: summary.md, curves.png, overlays.png and
report.html (swag_onnx.html).

Everything is computed from results.csv and the saved curves and thumbnails (see
swag_onnx.evaluate), so a resumed run reports on all its rows without recomputing any.
"""

from __future__ import annotations

import io
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swag_onnx import html
from swag_onnx.files import atomic_write
from swag_onnx import images as imgs
from swag_onnx.metrics import registry

MAX_OVERLAY_ROWS = 12
STD_DDOF = 0  # population std, as swag_onnx.metrics.sensitivity.summarize
GRID_POINTS = 101  # mean curves are interpolated on this many x in [0, 1]


@dataclass
class Stat:
    """One method's metric over the images: mean, population std (ddof 0, as
    swag_onnx.metrics.sensitivity.summarize), count of values used, count skipped (NaN values:
    a PIC curve undefined for that image, a constant map in class sensitivity)."""

    mean: float
    std: float
    n: int
    skipped: int = 0


def higher_is_better(row: str) -> bool:
    return registry.rows_info()[row].higher_is_better


def title(row: str) -> str:
    return registry.rows_info()[row].title


def statistics(rows, methods, metrics) -> dict[tuple[str, str], Stat]:
    """{(method, metric row): Stat} over the rows: the metric's own aggregate (the pointing
    game: mean and std of the per-class accuracies, n the number of tests), else the mean and
    population std of the finite values (NaN values are counted as skipped)."""
    stats = {}
    for method in methods:
        for metric in metrics:
            mine = [r for r in rows if r["method"] == method and r["metric"] == metric]
            if not mine:
                continue
            aggregate = registry.owner(metric).aggregate
            if aggregate is not None:
                stats[method, metric] = Stat(*aggregate(mine))
                continue
            values = np.array([r["value"] for r in mine], np.float64)
            used = values[np.isfinite(values)]
            mean = float(used.mean()) if used.size else float("nan")
            std = float(used.std(ddof=STD_DDOF)) if used.size else float("nan")
            stats[method, metric] = Stat(mean, std, int(used.size), int(values.size - used.size))
    return stats


def seconds_per_image(rows, method) -> float:
    """Mean seconds of one top-1 explanation of `method` (a localisation metric's own when it
    is alone)."""
    per_class = {row for m in registry.METRICS.values() if m.per_class for row in m.rows}
    per_image = {r["image"]: r["seconds"] for r in rows
                 if r["method"] == method and r["metric"] not in per_class}
    if not per_image:
        per_image = {(r["image"], r["label"]): r["seconds"] for r in rows
                     if r["method"] == method}
    return float(np.mean(list(per_image.values()))) if per_image else float("nan")


def ranking(stats, methods, metric) -> list[tuple[str, float]]:
    """Methods with a value for `metric`, best first (ties keep the given order)."""
    scored = [(m, stats[m, metric].mean) for m in methods
              if (m, metric) in stats and np.isfinite(stats[m, metric].mean)]
    sign = -1.0 if higher_is_better(metric) else 1.0
    return sorted(scored, key=lambda mv: sign * mv[1])


def fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def protocol_lines(settings: dict, metrics) -> list[str]:
    """Every protocol choice of the chosen metrics (row names), in words."""
    p, model, methods = settings["protocol"], settings["model"], settings["methods"]
    h, w = p["resolution"]
    lines = [
        f"Model: {model['file']} (sha256 {model['sha256'][:12]}), input {h}x{w} "
        f"{model['layout']}, resize {model['resize']} then crop {model['crop']}, scaling "
        f"{model['scaling']}, layers {', '.join(model['layers'])}.",
        f"Method parameters: {methods or 'defaults'}.",
        "Seconds: one explanation of the explained class (decoding, preprocessing, model run, "
        "method, mapping to the original size), without the metrics.",
    ]
    owners = dict.fromkeys(registry.owner(row) for row in metrics)
    return lines + [m.protocol(p) for m in owners]


def summary_markdown(rows, methods, metrics, settings: dict, run_info: dict) -> str:
    """summary.md: means and stds, time, rankings, the protocol and a benchmark line."""
    stats = statistics(rows, methods, metrics)
    images = sorted({r["image"] for r in rows})
    arrows = {m: "↑" if higher_is_better(m) else "↓" for m in metrics}
    lines = ["# swag-onnx evaluate", "",
             f"{len(images)} image(s), {len(methods)} method(s), {len(rows)} result row(s). "
             "Mean ± std over the images (population std, ddof 0); ↑ higher is better, "
             "↓ lower is better.", "",
             "| method | " + " | ".join(f"{title(m)} {arrows[m]}" for m in metrics)
             + " | s / explanation |",
             "|---|" + "---:|" * (len(metrics) + 1)]
    for method in methods:
        cells = []
        for metric in metrics:
            s = stats.get((method, metric))
            skipped = f", {s.skipped} skipped" if s is not None and s.skipped else ""
            cells.append("" if s is None else f"{fmt(s.mean)} ± {fmt(s.std)} (n={s.n}{skipped})")
        lines.append(f"| {method} | " + " | ".join(cells)
                     + f" | {fmt(seconds_per_image(rows, method), 3)} |")
    lines += ["", "## Ranking", ""]
    for metric in metrics:
        order = ranking(stats, methods, metric)
        if not order:
            continue
        direction = "higher is better" if higher_is_better(metric) else "lower is better"
        places = [1 + sum(1 for _, w in order if fmt(w) != fmt(v) and
                          (w > v if higher_is_better(metric) else w < v)) for _, v in order]
        lines.append(f"- {title(metric)} ({direction}): "
                     + ", ".join(f"{k}. {m} ({fmt(v)})" for k, (m, v) in zip(places, order)))
    lines += _per_class_lines(rows, methods, metrics)
    lines += _control_lines(stats, methods, metrics)
    lines += ["", "## Protocol", ""] + [f"- {line}" for line in protocol_lines(settings, metrics)]
    lines += ["", "## Benchmark", "", "- " + benchmark_line(run_info)]
    return "\n".join(lines) + "\n"


def _control_lines(stats, methods, metrics) -> list[str]:
    """The metrics on which a control map (random, center) beats a real method."""
    flags = html.control_flags(stats, methods, metrics, metric_info(metrics))
    present = [m for m in methods if m in html.CONTROLS]
    if not present:
        return []
    lines = ["", "## Controls", ""]
    for metric, beaten in flags.items():
        who = "; ".join(f"{control} beats {', '.join(losers)}"
                        for control, losers in beaten.items())
        lines.append(f"- {title(metric)}: {who}. This metric does not separate methods on "
                     "this model.")
    if not flags:
        lines.append(f"- Every real method beats the controls ({', '.join(present)}) on every "
                     "metric.")
    return lines


def _per_class_lines(rows, methods, metrics) -> list[str]:
    """Per-class means of the localisation metrics (one row per annotated class)."""
    lines = []
    for metric in metrics:
        if not registry.owner(metric).per_class:
            continue
        lines += ["", f"## {title(metric)} per class", ""]
        for method in methods:
            by_class: dict[str, list[float]] = {}
            for r in rows:
                if r["method"] == method and r["metric"] == metric:
                    by_class.setdefault(r["label"], []).append(r["value"])
            if by_class:
                lines.append(f"- {method}: " + ", ".join(
                    f"{k} {fmt(float(np.nanmean(v)), 2)}" for k, v in sorted(by_class.items())))
    return lines


def benchmark_line(run_info: dict) -> str:
    """Images per minute of this run (explanations and all metrics) on this machine."""
    machine = (f"{platform.machine()} {platform.processor() or ''}".strip()
               + f", {os.cpu_count()} CPU core(s), provider {run_info.get('provider', '?')}")
    n, seconds = run_info.get("images", 0), run_info.get("seconds", 0.0)
    if not n:
        return (f"this run found every row already computed ({machine}); see settings.json "
                "'runs' for earlier runs' times")
    rate = n / seconds * 60 if seconds > 0 else float("inf")
    return (f"{rate:.2f} images per minute ({n} image(s) x {len(run_info.get('methods', []))} "
            f"method(s), all chosen metrics, in {seconds:.1f} s) on {machine}")


# ----------------------------------------------------------------------------------- plots

def mean_curve(files) -> np.ndarray | None:
    """Mean of saved (2, P) curves on GRID_POINTS x in [0, 1] (linear interpolation)."""
    grid = np.linspace(0.0, 1.0, GRID_POINTS)
    ys = []
    for f in files:
        if Path(f).exists():
            x, y = np.load(f, allow_pickle=False)
            ys.append(np.interp(grid, x, y))
    return np.mean(ys, axis=0) if ys else None


def plot_curves(path: Path, out_dir: Path, rows, methods, metrics) -> bool:
    """curves.png: one panel per curve metric, the mean curve of each method, AUCs in the
    legend. Returns False when there is no curve metric."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    panels = [m for m in metrics if registry.owner(m).curves]
    if not panels:
        return False
    stats = statistics(rows, methods, panels)
    columns = 2 if len(panels) > 2 else len(panels)
    grid_rows = -(-len(panels) // columns)
    fig = Figure(figsize=(4.6 * columns, 3.8 * grid_rows), dpi=100, layout="constrained")
    axes = fig.subplots(grid_rows, columns, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    grid = np.linspace(0.0, 1.0, GRID_POINTS)
    for ax, metric in zip(axes, panels):
        for k, method in enumerate(methods):
            images = sorted({r["image"] for r in rows
                             if r["method"] == method and r["metric"] == metric})
            curve = mean_curve([out_dir / "curves" / f"{i}__{method}__{metric}.npy"
                                for i in images])
            if curve is None:
                continue
            ax.plot(grid, curve, label=f"{method} ({fmt(stats[method, metric].mean)})",
                    color=colormaps["tab20"](k % 20), linestyle="-" if k < 20 else "--",
                    linewidth=2.0 if method.startswith("swag") else 1.2)  # SWAG stands out
        better = "higher" if higher_is_better(metric) else "lower"
        ax.set_title(f"{metric} (AUC {better} is better)")
        xlabel, ylabel = registry.owner(metric).curves
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7, title="method (mean AUC)", title_fontsize=7)
        else:
            ax.text(0.5, 0.5, "no curve: every image skipped\n(see the summary)",
                    ha="center", va="center", fontsize=9, transform=ax.transAxes)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return True


def overlay_grid(path: Path, out_dir: Path, images, methods, max_rows: int = MAX_OVERLAY_ROWS,
                 cell: int = 192) -> bool:
    """overlays.png: images (rows, the first max_rows) x methods (columns), from the thumbnails
    (longest side `cell` px), each centred in a `cell`-wide column on white."""
    import cv2

    rows = []
    for image in list(images)[:max_rows]:
        thumbs = []
        for method in methods:
            thumb_path = out_dir / "thumbs" / f"{image}__{method}.png"
            thumb = imgs.load_image(thumb_path) if thumb_path.exists() else None
            if thumb is not None and max(thumb.shape[:2]) > cell:
                scale = cell / max(thumb.shape[:2])
                thumb = cv2.resize(thumb, (max(1, round(thumb.shape[1] * scale)),
                                           max(1, round(thumb.shape[0] * scale))),
                                   interpolation=cv2.INTER_AREA)
            thumbs.append(thumb)
        height = max((t.shape[0] for t in thumbs if t is not None), default=0)
        if not height:
            continue
        row = np.full((height + 4, cell * len(methods), 3), 255, np.uint8)
        for k, thumb in enumerate(thumbs):
            if thumb is not None:
                h, w = thumb.shape[:2]
                top, left = (height - h) // 2 + 2, k * cell + (cell - w) // 2
                row[top:top + h, left:left + w] = thumb
        rows.append(row)
    if not rows:
        return False
    imgs.write_png(path, np.concatenate(rows, axis=0))
    return True


def write_report(out_dir: Path, rows, methods, metrics, settings: dict, run_info: dict) -> list:
    """summary.md, curves.png (when a curve metric was computed) and overlays.png; returns the
    paths written."""
    out_dir = Path(out_dir)
    text = summary_markdown(rows, methods, metrics, settings, run_info)
    written = [out_dir / "summary.md"]
    atomic_write(written[0], lambda f: f.write(text.encode("utf-8")))
    if plot_curves(out_dir / "curves.png", out_dir, rows, methods, metrics):
        written.append(out_dir / "curves.png")
    images = list(dict.fromkeys(r["image"] for r in rows))
    if overlay_grid(out_dir / "overlays.png", out_dir, images, methods):
        written.append(out_dir / "overlays.png")
    written.append(html.write_evaluation_page(out_dir, rows, methods, metrics, settings, run_info,
                                              metric_info(metrics)))
    return written


def metric_info(metrics) -> dict[str, dict]:
    """The registry's facts about each metric row, as the HTML page takes them."""
    info = {}
    for row in metrics:
        owner = registry.owner(row)
        info[row] = {"title": title(row), "higher_is_better": higher_is_better(row),
                     "per_class": owner.per_class}
        if owner.curves:
            info[row].update(x_label=owner.curves[0], y_label=owner.curves[1])
    return info
