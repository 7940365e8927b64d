"""Self-contained HTML pages: `evaluate`'s report.html and `explain`'s index.html.

Each page is one file that opens from disk in any browser: inline CSS, a small inline script
(sorting and filters), curves as inline SVG, images referenced relative to the page (thumbs/...,
the PNGs beside it). A Content-Security-Policy forbids every network request. Every string that
comes from the user (image names, class names, method names, settings) goes through html.escape;
file names in links also through urllib.parse.quote.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np

from swag_onnx.methods import METHODS

def fmt(value, digits: int = 3) -> str:
    """swag_onnx.report.fmt (imported late: report imports this module)."""
    from swag_onnx.report import fmt as report_fmt

    return report_fmt(value, digits)


# control maps (registry entries flagged control): a real method should beat them
CONTROLS = tuple(name for name, m in METHODS.items() if m.control)
# Tableau 10: distinct, readable on white; methods beyond 10 reuse them with dashes
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
CONTROL_COLOUR = "#555555"
PLOT_W, PLOT_H, MARGIN = 420, 260, 46  # SVG size and left/bottom margin (axis labels), px


# ------------------------------------------------------------------------------- the pages

def write_evaluation_page(out_dir: Path, rows: list[dict], methods: list[str],
                          metrics: list[str], settings: dict, run_info: dict,
                          metric_info: dict[str, dict], controls=CONTROLS) -> Path:
    """Write out_dir/report.html and return its path.

    rows: results.csv rows (swag_onnx.results.COLUMNS); settings, run_info: as
    swag_onnx.report.write_report takes them; metric_info: {metric: {"title": str,
    "higher_is_better": bool}} (optional: "x_label", "y_label" name the curve axes;
    "per_class": True for a metric with one row per annotated class, as the pointing game);
    controls: method names that are control maps. Reads out_dir/thumbs/<image>__<method>.png (shown
    relative to the page) and out_dir/curves/<image>__<method>__<metric>.npy, float64 (2, P).
    """
    from swag_onnx import report

    out_dir = Path(out_dir)
    missing = [m for m in metrics if m not in metric_info]
    if missing:
        raise ValueError(f"metric_info has no entry for {missing}")
    stats = report.statistics(rows, methods, metrics)
    flags = control_flags(stats, methods, metrics, metric_info, controls)
    images = list(dict.fromkeys(r["image"] for r in rows))
    body = [
        "<h1>swag-onnx evaluate</h1>",
        f"<p>{len(images)} image(s), {len(methods)} method(s), {len(rows)} result row(s). "
        "Mean ± std over the images (population std); ↑ higher is better, ↓ lower is better. "
        "Click a column header to sort.</p>",
        _filters(methods, metrics, metric_info),
        _flag_section(flags, metric_info, controls, methods),
        _summary_table(rows, stats, methods, metrics, metric_info, flags, controls),
        _curve_section(out_dir, rows, stats, methods, metrics, metric_info, controls),
        _gallery(out_dir, rows, images, methods, metrics, metric_info),
        _protocol_section(out_dir, settings, run_info, metrics),
    ]
    return _write_page(out_dir / "report.html", "swag-onnx evaluate", "\n".join(body))


def write_explain_index(out_dir: Path, records: list[dict]) -> Path:
    """Write out_dir/index.html, a gallery of what `explain` wrote, and return its path.

    records: one per (image, method): {"stem", "method", "png" (file name relative to out_dir),
    "target": {"index", "label"}, "top5": [{"index", "label", "probability"}, ...]}.
    """
    out_dir = Path(out_dir)
    for record in records:
        absent = {"stem", "method", "png", "target", "top5"} - set(record)
        if absent:
            raise ValueError(f"explain record without {sorted(absent)}: {record!r}")
    methods = list(dict.fromkeys(r["method"] for r in records))
    stems = list(dict.fromkeys(r["stem"] for r in records))
    sections = [_explained_image(out_dir, stem, [r for r in records if r["stem"] == stem])
                for stem in stems]
    body = [
        "<h1>swag-onnx explain</h1>",
        f"<p>{len(stems)} image(s), {len(methods)} method(s), {len(records)} map(s). Each "
        "picture links to the full-size PNG; the .npy (float32 map) and .json (record) of the "
        "same name lie beside it.</p>",
        _filters(methods, [], {}),
        *sections,
    ]
    return _write_page(out_dir / "index.html", "swag-onnx explain", "\n".join(body))


# ------------------------------------------------------------------------------- controls

def control_flags(stats: dict, methods, metrics, metric_info: dict,
                  controls=CONTROLS) -> dict[str, dict[str, list[str]]]:
    """{metric: {control: [real methods it beats]}} for the metrics on which some control's
    mean is strictly better than some real method's (such a metric does not separate methods
    on this model). stats: swag_onnx.report.statistics; NaN means are left out."""
    real = [m for m in methods if m not in controls]
    flags = {}
    for metric in metrics:
        sign = 1.0 if metric_info[metric]["higher_is_better"] else -1.0
        beaten = {}
        for control in (c for c in methods if c in controls):
            mine = _mean(stats, control, metric)
            if mine is None:
                continue
            losers = [m for m in real if (theirs := _mean(stats, m, metric)) is not None
                      and sign * (mine - theirs) > 0]
            if losers:
                beaten[control] = losers
        if beaten:
            flags[metric] = beaten
    return flags


def _mean(stats: dict, method: str, metric: str) -> float | None:
    s = stats.get((method, metric))
    return s.mean if s is not None and np.isfinite(s.mean) else None


def _flag_section(flags: dict, metric_info: dict, controls, methods) -> str:
    present = [c for c in methods if c in controls]
    if not present:
        return ("<section id='controls'><h2>Controls</h2><p>No control map ("
                + ", ".join(escape(c) for c in controls) + ") was evaluated, so no metric was "
                "checked against one.</p></section>")
    if not flags:
        return ("<section id='controls'><h2>Controls</h2><p class='ok'>Every real method beats "
                "the control maps (" + ", ".join(escape(c) for c in present) + ") on every "
                "metric.</p></section>")
    items = []
    for metric, beaten in flags.items():
        who = "; ".join(f"{escape(c)} beats {', '.join(escape(m) for m in losers)}"
                        for c, losers in beaten.items())
        items.append(f"<li class='flag' data-metric='{escape(metric)}'>⚑ <b>"
                     f"{escape(metric_info[metric]['title'])}</b>: this metric does not separate "
                     f"methods on this model ({who}).</li>")
    return "<section id='controls'><h2>Controls</h2><ul>" + "".join(items) + "</ul></section>"


# ---------------------------------------------------------------------------- summary table

def _summary_table(rows, stats, methods, metrics, metric_info, flags, controls) -> str:
    from swag_onnx.report import seconds_per_image

    head = ["<th data-type='text'><button type='button'>method</button></th>"]
    for metric in metrics:
        info = metric_info[metric]
        flag = " ⚑" if metric in flags else ""
        head.append(f"<th data-type='num' data-metric='{escape(metric)}' data-higher="
                    f"'{int(info['higher_is_better'])}'{' data-flagged=1' if flag else ''}>"
                    f"<button type='button'>{escape(info['title'])} "
                    f"{'↑' if info['higher_is_better'] else '↓'}{flag}</button></th>")
    head.append("<th data-type='num' data-higher='0'><button type='button'>s / explanation"
                "</button></th>")
    best = {m: _best(stats, methods, m, metric_info, controls) for m in metrics}
    body = []
    for method in methods:
        kind = " class='control'" if method in controls else ""
        tag = " <span class='tag'>control</span>" if method in controls else ""
        cells = [f"<td data-sort='{escape(method)}'>{escape(method)}{tag}</td>"]
        cells += [_stat_cell(stats.get((method, m)), m, best[m] == method) for m in metrics]
        seconds = seconds_per_image(rows, method)
        cells.append(f"<td data-sort='{_sort_key(seconds)}'>{fmt(seconds)}</td>")
        body.append(f"<tr data-method='{escape(method)}'{kind}>" + "".join(cells) + "</tr>")
    return ("<section id='summary'><h2>Summary</h2><table class='sortable' id='summary-table'>"
            f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            "<p class='note'>Bold: the best real method per metric. n: values used; skipped: "
            "images without a value (e.g. a PIC curve undefined for that image). Pointing: mean "
            "and std of the per-class accuracies, n tests.</p></section>")


def _best(stats, methods, metric, metric_info, controls) -> str | None:
    sign = -1.0 if metric_info[metric]["higher_is_better"] else 1.0
    scored = [(sign * v, m) for m in methods if m not in controls
              and (v := _mean(stats, m, metric)) is not None]
    return min(scored)[1] if scored else None


def _stat_cell(stat, metric: str, best: bool) -> str:
    if stat is None:
        return f"<td data-metric='{escape(metric)}' data-sort=''></td>"
    skipped = f", {stat.skipped} skipped" if stat.skipped else ""
    text = f"{fmt(stat.mean)} ± {fmt(stat.std)}"
    text = f"<b>{text}</b>" if best else text
    return (f"<td data-metric='{escape(metric)}' data-sort='{_sort_key(stat.mean)}'>{text} "
            f"<small>n={stat.n}{skipped}</small></td>")


def _sort_key(value: float) -> str:
    return repr(float(value)) if value is not None and np.isfinite(value) else ""


# --------------------------------------------------------------------------------- curves

def _curve_section(out_dir, rows, stats, methods, metrics, metric_info, controls) -> str:
    from swag_onnx.report import mean_curve

    figures = []
    for metric in metrics:
        curves = {}
        for method in methods:
            images = dict.fromkeys(r["image"] for r in rows
                                   if r["method"] == method and r["metric"] == metric)
            curve = mean_curve([out_dir / "curves" / f"{i}__{method}__{metric}.npy"
                                for i in images])
            if curve is not None:
                curves[method] = curve
        if curves:
            figures.append(_curve_figure(metric, curves, stats, methods, metric_info, controls))
    if not figures:
        return ""
    return ("<section id='curves'><h2>Mean curves</h2><p class='note'>Each curve is the mean "
            "over the images of the saved curves, interpolated on 101 points in [0, 1]; the "
            "legend gives the mean AUC. Dashed grey: control maps.</p><div class='panels'>"
            + "".join(figures) + "</div></section>")


def _curve_figure(metric, curves: dict, stats, methods, metric_info, controls) -> str:
    """One <figure> with an inline SVG: the mean curve (GRID_POINTS,) of each method."""
    info = metric_info[metric]
    values = np.concatenate(list(curves.values()))
    low, high = min(0.0, float(values.min())), max(1.0, float(values.max()))
    lines, legend = [], []
    for k, method in enumerate(methods):
        if method not in curves:
            continue
        style = _line_style(k, method in controls)
        auc = fmt(_mean(stats, method, metric))
        points = _svg_points(curves[method], low, high)
        lines.append(f"<polyline data-method='{escape(method)}' points='{points}' {style}>"
                     f"<title>{escape(method)}: mean AUC {auc}</title></polyline>")
        legend.append(f"<li data-method='{escape(method)}'><svg width='22' height='8' "
                      f"aria-hidden='true'><line x1='0' y1='4' x2='22' y2='4' {style}/></svg> "
                      f"{escape(method)} ({auc})</li>")
    better = "higher" if info["higher_is_better"] else "lower"
    title = f"{info['title']} (AUC {better} is better)"
    svg = (f"<svg viewBox='0 0 {PLOT_W} {PLOT_H}' width='{PLOT_W}' height='{PLOT_H}' "
           f"role='img' aria-label='{escape(title)}'>"
           + _axes(low, high, info.get("x_label", "x (see the protocol)"),
                   info.get("y_label", "score"))
           + "".join(lines) + "</svg>")
    return (f"<figure data-metric='{escape(metric)}'><figcaption>{escape(title)}</figcaption>"
            f"{svg}<ul class='legend'>{''.join(legend)}</ul></figure>")


def _line_style(k: int, control: bool) -> str:
    if control:
        return f"stroke='{CONTROL_COLOUR}' stroke-width='1.5' stroke-dasharray='5 3' fill='none'"
    dash = "" if k < len(PALETTE) else " stroke-dasharray='2 2'"
    return f"stroke='{PALETTE[k % len(PALETTE)]}' stroke-width='2' fill='none'{dash}"


def _scale(low: float, high: float):
    """Maps of data x in [0, 1] and y in [low, high] to SVG pixel coordinates."""
    width, height = PLOT_W - MARGIN - 10, PLOT_H - MARGIN - 10
    return (lambda x: MARGIN + x * width,
            lambda y: 10 + (high - y) / (high - low) * height)


def _svg_points(curve: np.ndarray, low: float, high: float) -> str:
    sx, sy = _scale(low, high)
    grid = np.linspace(0.0, 1.0, curve.size)
    return " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(grid, curve))


def _axes(low: float, high: float, x_label: str, y_label: str) -> str:
    sx, sy = _scale(low, high)
    parts = [f"<rect x='{MARGIN}' y='10' width='{PLOT_W - MARGIN - 10}' "
             f"height='{PLOT_H - MARGIN - 10}' fill='none' stroke='#999'/>"]
    for t in np.linspace(0.0, 1.0, 6):
        parts.append(f"<line x1='{sx(t):.1f}' y1='10' x2='{sx(t):.1f}' y2='{sy(low):.1f}' "
                     "stroke='#eee'/>"
                     f"<text x='{sx(t):.1f}' y='{sy(low) + 14:.1f}' class='tick' "
                     f"text-anchor='middle'>{t:.1f}</text>")
    for t in np.linspace(low, high, 6):
        parts.append(f"<line x1='{MARGIN}' y1='{sy(t):.1f}' x2='{sx(1):.1f}' y2='{sy(t):.1f}' "
                     "stroke='#eee'/>"
                     f"<text x='{MARGIN - 4}' y='{sy(t) + 4:.1f}' class='tick' "
                     f"text-anchor='end'>{t:.2g}</text>")
    parts.append(f"<text x='{(MARGIN + PLOT_W) / 2:.0f}' y='{PLOT_H - 6}' class='label' "
                 f"text-anchor='middle'>{escape(x_label)}</text>"
                 f"<text transform='translate(12 {(PLOT_H - MARGIN) / 2:.0f}) rotate(-90)' "
                 f"class='label' text-anchor='middle'>{escape(y_label)}</text>")
    return "".join(parts)


# -------------------------------------------------------------------------------- gallery

def _gallery(out_dir, rows, images, methods, metrics, metric_info) -> str:
    head = "<th>image</th>" + "".join(f"<th data-method='{escape(m)}'>{escape(m)}</th>"
                                       for m in methods)
    by_cell: dict[tuple, list] = {}  # grouped once: a scan per cell is quadratic in the rows
    for r in rows:
        by_cell.setdefault((r["image"], r["method"]), []).append(r)
    body = []
    for image in images:
        cells = [f"<th scope='row'>{escape(image)}</th>"]
        for method in methods:
            mine = by_cell.get((image, method), [])
            cells.append(f"<td data-method='{escape(method)}'>"
                         + _gallery_cell(out_dir, image, method, mine, metrics, metric_info)
                         + "</td>")
        body.append(f"<tr data-image='{escape(image)}'>" + "".join(cells) + "</tr>")
    return ("<section id='gallery'><h2>Images × methods</h2><p class='note'>The top-1 map over "
            "each image, the class explained with its probability on the clean image (the "
            "first point of the deletion curve, else the last of the insertion curve), and the "
            "image's metric values.</p><div class='scroll'><table class='gallery'><thead><tr>"
            f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div></section>")


def _gallery_cell(out_dir: Path, image: str, method: str, rows, metrics, metric_info) -> str:
    thumb = f"thumbs/{image}__{method}.png"
    parts = []
    if (out_dir / thumb).is_file():
        parts.append(f"<img src='{escape(quote(thumb))}' alt='{escape(method)} on "
                     f"{escape(image)}'>")
    else:
        parts.append("<p class='missing'>no map</p>")
    per_class = {m for m in metrics if metric_info[m].get("per_class")}
    top1 = next((r for r in rows if r["metric"] not in per_class), None)
    if top1 is not None:
        probability = clean_probability(out_dir, image, method)
        share = f" ({probability:.1%})" if probability is not None else ""
        parts.append(f"<p class='cls'>{escape(str(top1['label']))}{share}</p>")
    values = []
    for metric in metrics:
        for r in (r for r in rows if r["metric"] == metric):
            name, value = metric_info[metric]["title"], fmt(r["value"])
            note = f" title='{escape(str(r['detail']))}'" if r.get("detail") else ""
            if metric in per_class:  # a row per annotated class; its detail: hit or miss
                name, value = f"{name} ({r['label']})", r.get("detail") or value
                note = ""
            values.append(f"<li data-metric='{escape(metric)}'{note}>{escape(name)}: "
                          f"{escape(str(value))}</li>")
    return "".join(parts) + f"<ul class='values'>{''.join(values)}</ul>"


def clean_probability(out_dir: Path, image: str, method: str) -> float | None:
    """Probability of the explained class on the clean image: point 0 of the saved deletion
    curve (no pixel deleted yet), else the last point of the insertion curve (every pixel
    restored); None without either."""
    for metric, k in (("deletion", 0), ("insertion", -1)):
        path = Path(out_dir) / "curves" / f"{image}__{method}__{metric}.npy"
        if path.is_file():
            return float(np.load(path, allow_pickle=False)[1, k])
    return None


# ------------------------------------------------------------------------------- protocol

def _protocol_section(out_dir: Path, settings: dict, run_info: dict, metrics) -> str:
    from swag_onnx.report import benchmark_line, protocol_lines

    lines = "".join(f"<li>{escape(line)}</li>" for line in protocol_lines(settings, metrics))
    files = [name for name in ("results.csv", "settings.json", "summary.md", "curves.png",
                               "overlays.png") if (out_dir / name).is_file()]
    links = ", ".join(f"<a href='{escape(quote(f))}'>{escape(f)}</a>" for f in files)
    return ("<section id='protocol'><h2>Protocol</h2>"
            f"<ul>{lines}</ul><h3>Benchmark</h3><p>{escape(benchmark_line(run_info))}</p>"
            + (f"<p>Files: {links}</p>" if links else "") + "</section>")


# ---------------------------------------------------------------------------- explain page

def _explained_image(out_dir: Path, stem: str, records: list[dict]) -> str:
    """One image of `explain`: its top-5 (the model's, shared by every method) and its maps."""
    target = records[0]["target"]["index"]
    top5 = "".join(
        f"<tr{' class=target' if t['index'] == target else ''}><td>{k}</td>"
        f"<td>{escape(str(t['label']))}</td><td>{int(t['index'])}</td>"
        f"<td>{float(t['probability']):.1%}</td></tr>"
        for k, t in enumerate(records[0]["top5"], start=1))
    figures = "".join(_explained_map(out_dir, r) for r in records)
    return (f"<section class='image' data-stem='{escape(stem)}'><h2>{escape(stem)}</h2>"
            f"<div class='explained'><div class='maps'>{figures}</div>"
            "<table class='top5'><caption>top-5 classes</caption><thead><tr><th>#</th>"
            "<th>class</th><th>index</th><th>probability</th></tr></thead>"
            f"<tbody>{top5}</tbody></table></div></section>")


def _explained_map(out_dir: Path, record: dict) -> str:
    target = record["target"]
    probability = next((t["probability"] for t in record["top5"]
                        if t["index"] == target["index"]), None)
    share = f" ({probability:.1%})" if probability is not None else ""
    png, method = str(record["png"]), escape(str(record["method"]))
    if (out_dir / png).is_file():
        picture = (f"<a href='{escape(quote(png))}'><img src='{escape(quote(png))}' "
                   f"alt='{method} on {escape(str(record['stem']))}'></a>")
    else:
        picture = f"<p class='missing'>{escape(png)} is missing</p>"
    return (f"<figure data-method='{escape(str(record['method']))}'>{picture}<figcaption><b>"
            f"{method}</b>: {escape(str(target['label']))}{share}</figcaption></figure>")


# ----------------------------------------------------------------------------- page shell

def _filters(methods, metrics, metric_info) -> str:
    """Checkboxes; unticking one hides every element whose data-method / data-metric is it."""
    def boxes(kind: str, names, titles) -> str:
        return "".join(f"<label><input type='checkbox' checked data-filter='{kind}' "
                       f"value='{escape(n)}'> {escape(titles(n))}</label>" for n in names)

    parts = [f"<fieldset><legend>Methods</legend>{boxes('method', methods, str)}</fieldset>"]
    if metrics:
        parts.append("<fieldset><legend>Metrics</legend>"
                     f"{boxes('metric', metrics, lambda m: metric_info[m]['title'])}</fieldset>")
    return "<nav class='filters'>" + "".join(parts) + "</nav>"


# Why a CSP: the page must never reach the network (images are local files, no fonts, no CDN).
_CSP = ("default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")
_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}}
h1{{margin-top:0}} .note{{color:#555;font-size:12px}}
table{{border-collapse:collapse}}
th,td{{border:1px solid #ddd;padding:4px 8px;vertical-align:top}}
thead th{{background:#f3f3f3}}
th button{{font:inherit;border:0;background:none;cursor:pointer}}
th[aria-sort=ascending] button::after{{content:" ▲"}}
th[aria-sort=descending] button::after{{content:" ▼"}}
#summary-table td{{text-align:right}} #summary-table td:first-child{{text-align:left}}
tr.control{{background:#f7f7f7;color:#555}}
.tag{{font-size:11px;border:1px solid #999;border-radius:3px;padding:0 3px}}
.flag{{color:#a40}} .ok{{color:#262}}
.filters{{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}}
.filters label{{margin-right:.8em;white-space:nowrap}}
.panels{{display:flex;flex-wrap:wrap;gap:1.5em}} figure{{margin:0}} figcaption{{font-weight:600}}
.tick{{font-size:10px;fill:#555}} .label{{font-size:11px;fill:#333}}
.legend{{list-style:none;padding:0;margin:4px 0;font-size:12px;max-width:{plot_w}px}}
.scroll{{overflow-x:auto}} .gallery img,.maps img{{max-width:192px;display:block}}
.values{{list-style:none;padding:0;margin:0;font-size:12px}} .cls{{margin:2px 0;font-weight:600}}
.explained{{display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start;margin-bottom:2em}}
.maps{{display:flex;flex-wrap:wrap;gap:1em}}
.top5 td{{text-align:right}} .top5 td:nth-child(2){{text-align:left}}
.top5 caption{{font-weight:600;text-align:left}}
.top5 tr.target{{font-weight:600}} .missing{{color:#a00}}
.off{{display:none !important}}
</style></head><body>
"""

_SCRIPT = """<script>
"use strict";
// Sorting: a header's first click puts the best values first (text: A to Z), the next reverses.
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th[data-type]").forEach(function (th) {
    th.querySelector("button").addEventListener("click", function () {
      var col = th.cellIndex, text = th.dataset.type === "text";
      var up = th.getAttribute("aria-sort") ? th.getAttribute("aria-sort") !== "ascending"
                                            : (text || th.dataset.higher !== "1");
      table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
        if (x === "" || y === "") { return (x === "") - (y === ""); }  // no value: last
        var d = text ? x.localeCompare(y) : parseFloat(x) - parseFloat(y);
        return up ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
// Filters: an unticked method (metric) hides every element carrying it in data-method (-metric).
function applyFilters() {
  ["method", "metric"].forEach(function (kind) {
    var off = {};
    document.querySelectorAll("input[data-filter='" + kind + "']").forEach(function (box) {
      if (!box.checked) { off[box.value] = true; }
    });
    document.querySelectorAll("[data-" + kind + "]").forEach(function (el) {
      el.classList.toggle("off", off[el.dataset[kind]] === true);
    });
  });
}
document.querySelectorAll("input[data-filter]").forEach(function (box) {
  box.addEventListener("change", applyFilters);
});
applyFilters();
</script>
"""


def _write_page(path: Path, title: str, body: str) -> Path:
    page = (_HEAD.format(csp=_CSP, title=escape(title), plot_w=PLOT_W) + body + "\n" + _SCRIPT
            + "</body></html>\n")
    _write_text(path, page)
    return path


def _write_text(path: Path, text: str) -> None:
    """Write UTF-8 text via a temp file in the same folder and os.replace (no partial page)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
