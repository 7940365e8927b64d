"""SWAG studied with the project's evaluation (swag_onnx.evaluate): variants on a development
half, the chosen ones against Grad-CAM, Grad-CAM++, LIME, XRAI, RISE and the controls on a
held-out half, for EfficientNet-Lite0 (the embedded default) and EfficientNet-Lite2.

    python tools/swag_study.py                                # everything, resumes by itself
    python tools/swag_study.py --limit 2 --lite2-limit 1 --work /tmp/study   # a smoke run
    python tools/swag_study.py --tables-only                  # tables from the stored rows

Images: the offline sample photos of tools/eval_devset.py (``photos()``), topped up to
``MIN_PHOTOS`` with further scikit-image samples (EXTRA_PHOTOS), split by their place in that
list (even: development, odd: held-out); the composites of tools/make_composites.py (made with
the default model, seed 0; object boxes in boxes.csv) split by draw number (even: development,
odd: held-out). Photos give the fidelity metrics, composites the localisation ones (pointing,
energy). Harder composites (HARD_SETS: smaller objects kept clear of the view's centre, so the
``center`` control misses by construction; one set with a distractor object of another class)
are scored whole, on EfficientNet-Lite0, by the held-out methods; nothing chooses on them. Their
folders keep boxes.csv and composites.json; missing PNGs are rebuilt by make_composites.py
(same seed and options: identical files).

Phase 1, development half, EfficientNet-Lite0: every SWAG variant of VARIANTS (one factor at a
time around the v0 settings of each superpixel source) on insertion, deletion, ROAD and, on
the composites, pointing and energy. The criterion is per photo (insertion - deletion) + ROAD
(LeRF - MoRF), both "higher is better" and on the same probability scale; for each source the
best variant replaces v0 when its paired mean gain exceeds one standard error of the paired
difference (else v0 stays). Phase 2, held-out half, both models: v0 and the chosen variant of
each source, the best averaged-gradient and multi-scale variants, the other methods and the
controls, on every metric. Nothing of phase 2 feeds a choice.

Cost cuts (the machine: 2 shared CPU cores), all recorded in the results: insertion/deletion
at STEP pixels per step; ROAD at ROAD_STEP percent; SIC/AIC with pasted pixels and a minimum
top-1 probability PIC_MIN; LIME LIME_SAMPLES samples, RISE RISE_MASKS masks, XRAI XRAI_STEPS
steps per baseline; LIME, XRAI and RISE are not scored on class sensitivity (it would explain
every image twice); EfficientNet-Lite2 on the first ``--lite2-limit`` held-out photos.

Runs go to ``--work`` (default ~/.cache/swag_onnx_study), one evaluate folder per (model,
half, image set, method group); a rerun skips what is stored. The tables go to
tools/swag_study_results.md (``--results``).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

MIN_PHOTOS = 20
STEP = 3584  # insertion/deletion pixels per step: 15 points per curve at 224 x 224
ROAD_STEP = 25  # ROAD removal percentages 25, 50, 75
PIC_MIN = 0.3  # EfficientNet-Lite0 rarely reaches the reference's 0.8 on these photos
LIME_SAMPLES, RISE_MASKS, XRAI_STEPS = 300, 500, 16
AVERAGE_SAMPLES = 16  # noisy copies (SmoothGrad) or path points (integrated) per image
COMPOSITES = {"count": 40, "seed": 0}
# the photos whose objects every composite set uses (the 5 of the original composites: the
# photo list has grown since, so they are named to keep that set reproducible)
OBJECT_PHOTOS = ["chelsea", "coffee", "rocket", "motorcycle", "camera"]
HARD_OPTIONS = ["--scale", "0.45", "0.65", "--avoid-center"]
HARD_SETS = {  # name -> make_composites.py options (with --seed 0 and OBJECT_PHOTOS)
    "hard": ["--count", "120", *HARD_OPTIONS],
    "distract": ["--count", "160", *HARD_OPTIONS, "--distractors", "1", "--keep", "top5"],
}
LITE2 = "efficientnet_lite2"

# the settings before this study (swag_onnx.methods.swag.DEFAULTS as tuned by tools/tune_swag.py),
# written out so that the tables do not move when DEFAULTS change
V0 = {
    "image": dict(attribution="gradient_x_input", sign="abs", reduce="max", n_segments=100,
                  compactness=10.0, sigma=1.0),
    "gradient": dict(attribution="gradient_x_input", sign="abs", reduce="max", n_segments=100,
                     compactness=0.1, sigma=3.0, clip_quantile=0.99),
    "combined": dict(attribution="gradient_x_input", sign="abs", reduce="max", n_segments=100,
                     compactness=0.1, sigma=3.0, gradient_weight=2.0, clip_quantile=0.99),
}
# one factor at a time around V0: name suffix -> changed options
FACTORS = {
    "n50": dict(n_segments=50), "n200": dict(n_segments=200), "n400": dict(n_segments=400),
    "ms50-400": dict(n_segments=50, scales=4),
    "grad-abs": dict(attribution="gradient"), "grad-pos": dict(attribution="gradient",
                                                               sign="positive"),
    "grad-signed": dict(attribution="gradient", sign="signed"),
    "gxi-pos": dict(sign="positive"), "gxi-signed": dict(sign="signed"),
    "smoothgrad": dict(average="smoothgrad"), "integrated": dict(average="integrated"),
}
SOURCE_FACTORS = {"image": list(FACTORS),
                  "gradient": ["n200", "grad-abs"], "combined": ["n200", "grad-abs"]}
# SWAG on the held-out half whatever the development half says (the choice adds to them)
HELD_OUT_SWAG = [("image", None), ("gradient", None), ("combined", None), ("image", "ms50-400"),
                 ("image", "smoothgrad"), ("image", "integrated")]
OTHERS = ["gradcam", "gradcam++"]  # cheap: every metric
SLOW = ["lime", "xrai", "rise"]  # expensive: no class sensitivity
DEV_METRICS = ["insertion", "deletion", "road"]
TEST_METRICS = ["insertion", "deletion", "road", "sic", "aic", "class-sensitivity"]
LOCAL_METRICS = ["pointing", "energy"]
HIGHER = {"insertion": True, "deletion": False, "road": True, "road-morf": False,
          "road-lerf": True, "sic": True, "aic": True, "class-sensitivity": False,
          "pointing": True, "energy": True, "mprt": False}


# ---------------------------------------------------------------------------- variants

def variant_name(source: str, factor: str | None) -> str:
    return f"swag-{source}@{factor or 'v0'}"


def variant_options(source: str, factor: str | None) -> dict:
    options = {**V0[source], **(FACTORS[factor] if factor else {})}
    if options.get("average"):
        options["average_samples"] = AVERAGE_SAMPLES
    return options


def register_variant(name: str, source: str, options: dict) -> None:
    """A study-only registry entry: the shipped ``swag-<source>`` entry with fixed `options`
    (its needs for them: averaged variants read grad_fn, the others the shared gradient run)."""
    from swag_onnx.methods.registry import METHODS, method

    if name in METHODS:
        return
    shipped = METHODS[f"swag-{source}"]
    fixed = shipped.check(options)

    def run(inputs):  # no annotations: the registry reads keyword-only ones only
        return shipped.run(inputs, **fixed)

    run.__name__ = "_" + name.replace("-", "_").replace("@", "_")
    method(name, needs=shipped.needs_for(fixed), summary=f"SWAG ({source}) with {options}",
           reference="tools/swag_study.py")(run)


def register_all(chosen: dict | None = None) -> None:
    for source, factors in SOURCE_FACTORS.items():
        for factor in [None, *factors]:
            register_variant(variant_name(source, factor), source,
                             variant_options(source, factor))


# ---------------------------------------------------------------------------- images

def extra_photos() -> list[tuple[str, np.ndarray]]:
    """More offline scikit-image samples (RGB uint8), used only to reach MIN_PHOTOS."""
    from skimage import data

    def rgb(a):
        a = np.asarray(a)
        a = a[..., :3] if a.ndim == 3 else np.stack([a] * 3, -1)
        return np.ascontiguousarray(a, np.uint8)

    return [(n, rgb(f())) for n, f in [
        ("motorcycle_right", lambda: data.stereo_motorcycle()[1]), ("coins", data.coins),
        ("retina", data.retina), ("clock", data.clock), ("colorwheel", data.colorwheel),
        ("page", data.page), ("logo", data.logo), ("moon", data.moon), ("cell", data.cell)]]


def photo_halves(work: Path) -> tuple[list[Path], list[Path]]:
    """(development, held-out) photo files: even and odd places in the photo list."""
    from eval_devset import photos

    from swag_onnx import images as imgs

    found = photos()
    names = {n for n, _ in found}
    found += [p for p in extra_photos() if p[0] not in names][:max(0, MIN_PHOTOS - len(found))]
    paths = []
    for name, rgb in found:
        path = work / "photos" / f"{name}.png"
        if not path.exists():
            imgs.write_png(path, rgb)
        paths.append(path)
    return paths[0::2], paths[1::2]


def composite_halves(work: Path) -> tuple[list[Path], list[Path], Path]:
    """(development, held-out) composites (even / odd draw numbers) and boxes.csv."""
    folder = work / "composites"
    if not (folder / "boxes.csv").exists():
        subprocess.run([sys.executable, str(TOOLS / "make_composites.py"), "--out", str(folder),
                        "--count", str(COMPOSITES["count"]), "--seed", str(COMPOSITES["seed"]),
                        *[a for n in OBJECT_PHOTOS for a in ("--photo", n)]], check=True)
    files = sorted(folder.glob("composite_*.png"))
    draw = lambda p: int(p.stem.split("_")[1])  # noqa: E731
    return ([p for p in files if draw(p) % 2 == 0], [p for p in files if draw(p) % 2 == 1],
            folder / "boxes.csv")


def hard_composites(work: Path, name: str) -> tuple[list[Path], Path]:
    """The kept composites of HARD_SETS[name] (all of them) and their boxes.csv, built by
    make_composites.py into WORK/composites_<name> when an image listed there is missing."""
    from swag_onnx.metrics.pointing import load_annotations

    folder = work / f"composites_{name}"
    boxes = folder / "boxes.csv"
    listed = sorted(load_annotations(boxes)) if boxes.exists() else []
    if not TABLES_ONLY and (not listed or not all((folder / n).exists() for n in listed)):
        photos = [a for n in OBJECT_PHOTOS for a in ("--photo", n)]
        subprocess.run([sys.executable, str(TOOLS / "make_composites.py"), "--out", str(folder),
                        "--seed", "0", *photos, *HARD_SETS[name]], check=True)
        listed = sorted(load_annotations(boxes))
    return [folder / n for n in listed], boxes


# ---------------------------------------------------------------------------- runs

def run_group(out: Path, images, methods, metrics, model, *, controls, annotations=None,
              **options) -> list[dict]:
    """One resumable evaluate folder; returns its rows (the wanted ones). With TABLES_ONLY set,
    the rows stored there (of these methods), without any model run."""
    from swag_onnx.evaluate import evaluate
    from swag_onnx.results import RESULTS, read_results

    if TABLES_ONLY:
        wanted = set(methods) | ({"random", "center"} if controls else set())
        stored = read_results(out / RESULTS) if (out / RESULTS).exists() else []
        return [r for r in stored if r["method"] in wanted]

    start = time.perf_counter()
    result = evaluate([str(p) for p in images], methods=methods, metrics=metrics,
                      out_dir=out, model=model, annotations=annotations, controls=controls,
                      provider="cpu", **options)
    print(f"{out.name}: {result.report.processed} images in "
          f"{time.perf_counter() - start:.0f} s ({result.report.skipped} stored)", flush=True)
    for problem in result.problems:
        print(f"  problem: {problem}", flush=True)
    return result.report.rows


TABLES_ONLY = False  # --tables-only
PROTOCOL = dict(step=STEP, road_step=ROAD_STEP, pic_reveal="paste", pic_min_score=PIC_MIN)


def dev_phase(work: Path, photos, composites, boxes) -> list[dict]:
    methods = [variant_name(s, f) for s, fs in SOURCE_FACTORS.items() for f in [None, *fs]]
    rows = run_group(work / "runs" / "lite0-dev-photos", photos, methods, DEV_METRICS, None,
                     controls=True, **PROTOCOL)
    rows += run_group(work / "runs" / "lite0-dev-composites", composites, methods,
                      LOCAL_METRICS, None, controls=True, annotations=boxes)
    return rows


def test_phase(work: Path, tag: str, model, photos, composites, boxes, swag_methods,
               extra_metrics=(), slow: bool = True) -> list[dict]:
    """Held-out rows of one model: SWAG and the cheap methods on every metric, the composites,
    then (slow) LIME, XRAI and RISE."""
    runs = work / "runs"
    fast = swag_methods + OTHERS
    slow_options = dict(samples=LIME_SAMPLES, masks=RISE_MASKS, steps=XRAI_STEPS)
    rows = run_group(runs / f"{tag}-test-photos", photos, fast,
                     TEST_METRICS + list(extra_metrics), model, controls=True, **PROTOCOL)
    rows += run_group(runs / f"{tag}-test-composites", composites, fast, LOCAL_METRICS,
                      model, controls=True, annotations=boxes)
    if slow:
        rows += run_group(runs / f"{tag}-test-composites-slow", composites, SLOW,
                          LOCAL_METRICS, model, controls=False, annotations=boxes,
                          **slow_options)
        rows += run_group(runs / f"{tag}-test-photos-slow", photos, SLOW,
                          [m for m in TEST_METRICS if m != "class-sensitivity"], model,
                          controls=False, **slow_options, **PROTOCOL)
    return rows


def hard_phase(work: Path, tag: str, model, name: str, swag_methods) -> list[dict]:
    """Pointing and energy on one harder composite set: the held-out methods, the controls, then
    LIME, XRAI and RISE."""
    composites, boxes = hard_composites(work, name)
    runs = work / "runs"
    slow_options = dict(samples=LIME_SAMPLES, masks=RISE_MASKS, steps=XRAI_STEPS)
    rows = run_group(runs / f"{tag}-{name}-composites", composites, swag_methods + OTHERS,
                     LOCAL_METRICS, model, controls=True, annotations=boxes)
    return rows + run_group(runs / f"{tag}-{name}-composites-slow", composites, SLOW,
                            LOCAL_METRICS, model, controls=False, annotations=boxes,
                            **slow_options)


# ---------------------------------------------------------------------------- statistics

def values(rows, method: str, metric: str) -> dict[tuple, float]:
    """{(image, label): value} of the finite rows of one method and metric row."""
    out = {}
    for r in rows:
        if r["method"] == method and r["metric"] == metric:
            v = float(r["value"])
            if math.isfinite(v):
                out[(r["image"], r["label"] if metric in ("pointing", "energy") else "")] = v
    return out


def mean_se(xs) -> tuple[float, float, int]:
    xs = np.asarray(list(xs), np.float64)
    if xs.size == 0:
        return math.nan, math.nan, 0
    se = xs.std(ddof=1) / math.sqrt(xs.size) if xs.size > 1 else math.nan
    return float(xs.mean()), float(se), int(xs.size)


def criterion(rows, method: str) -> dict[str, float]:
    """Per photo: (insertion - deletion) + ROAD."""
    ins, dele, road = (values(rows, method, m) for m in ("insertion", "deletion", "road"))
    return {k[0]: ins[k] - dele[k] + road[k] for k in ins if k in dele and k in road}


def paired(a: dict, b: dict) -> tuple[float, float, int]:
    keys = sorted(set(a) & set(b))
    return mean_se(a[k] - b[k] for k in keys)


def choose(rows) -> tuple[dict[str, str | None], list[str]]:
    """Per source, the factor whose paired gain over v0 on the criterion exceeds one standard
    error and is the largest (None: v0 stays); and the lines that say why."""
    chosen, lines = {}, []
    for source, factors in SOURCE_FACTORS.items():
        base = criterion(rows, variant_name(source, None))
        best, best_gain = None, 0.0
        for f in factors:
            gain, se, n = paired(criterion(rows, variant_name(source, f)), base)
            lines.append(f"| {source} | {f} | {gain:+.4f} | {se:.4f} | {n} |")
            if math.isfinite(gain) and gain > best_gain and gain > (se if math.isfinite(se)
                                                                    else math.inf):
                best, best_gain = f, gain
        chosen[source] = best
    return chosen, lines


def seconds_per_image(rows, method: str) -> float:
    per = {}
    for r in rows:
        if r["method"] == method:
            per[r["image"]] = float(r["seconds"])
    return float(np.mean(list(per.values()))) if per else math.nan


def table(rows, methods, metrics, title: str) -> list[str]:
    """Markdown: mean +- s.e. (n) per method and metric row, and seconds per image."""
    head = "| method | " + " | ".join(f"{m} {'↑' if HIGHER.get(m, True) else '↓'}"
                                      for m in metrics) + " | s / image |"
    lines = [f"**{title}**", "", head, "|---|" + "---:|" * (len(metrics) + 1)]
    for method in methods:
        cells = []
        for m in metrics:
            mean, se, n = mean_se(values(rows, method, m).values())
            cells.append("" if n == 0 else f"{mean:.3f} ± {se:.3f} ({n})")
        if any(cells):
            lines.append(f"| {method} | " + " | ".join(cells)
                         + f" | {seconds_per_image(rows, method):.2f} |")
    return lines + [""]


# ---------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "swag_onnx_study")
    parser.add_argument("--results", type=Path, default=TOOLS / "swag_study_results.md")
    parser.add_argument("--lite2", type=Path, default=None,
                        help="EfficientNet-Lite2 model folder (default WORK/efficientnet_lite2, "
                             "exported with tools/export_torch.py when missing)")
    parser.add_argument("--limit", type=int, default=None, help="photos per half (smoke runs)")
    parser.add_argument("--lite2-limit", type=int, default=6,
                        help="held-out photos and composites for EfficientNet-Lite2")
    parser.add_argument("--skip-lite2", action="store_true")
    parser.add_argument("--mprt", action="store_true",
                        help="score MPRT too (EfficientNet-Lite0 held-out photos)")
    parser.add_argument("--skip-hard", action="store_true",
                        help="leave out the harder composite sets (HARD_SETS)")
    parser.add_argument("--tables-only", action="store_true",
                        help="no model runs: tables from the stored rows")
    args = parser.parse_args(argv)
    work = args.work.expanduser()
    start = time.perf_counter()
    register_all()
    dev_photos, test_photos = photo_halves(work)
    dev_comp, test_comp, boxes = composite_halves(work)
    if args.limit:
        dev_photos, test_photos = dev_photos[:args.limit], test_photos[:args.limit]
        dev_comp, test_comp = dev_comp[:args.limit], test_comp[:args.limit]
    lite2 = (args.lite2 or work / LITE2).expanduser()
    if not (args.skip_lite2 or args.tables_only) and not (lite2 / "model.onnx").exists():
        subprocess.run([sys.executable, str(TOOLS / "export_torch.py"), "--model", LITE2,
                        "--out", str(lite2)], check=True)

    from swag_onnx.metrics.registry import METRICS

    extra = ["mprt"] if args.mprt and "mprt" in METRICS else []
    # Order: the held-out comparison of the fixed SWAG set first (it does not depend on the
    # choice), then the development half, then the chosen variants added to the held-out
    # folders (an evaluate folder takes more methods later). Choices read development rows only.
    fixed = [variant_name(s, f) for s, f in HELD_OUT_SWAG]
    global TABLES_ONLY
    TABLES_ONLY = args.tables_only
    if not args.tables_only:
        test_phase(work, "lite0", None, test_photos, test_comp, boxes, fixed, extra)
    dev_rows = dev_phase(work, dev_photos, dev_comp, boxes)
    chosen, choice_lines = choose(dev_rows)
    swag_test = fixed + [n for n in (variant_name(s, f) for s, f in chosen.items() if f)
                         if n not in fixed]
    test0 = test_phase(work, "lite0", None, test_photos, test_comp, boxes, swag_test, extra)
    test2 = [] if args.skip_lite2 else test_phase(
        work, "lite2", str(lite2), test_photos[:args.lite2_limit],
        test_comp[:args.lite2_limit], boxes, swag_test)
    models = [("lite0", None)] + ([] if args.skip_lite2 else [("lite2", str(lite2))])
    hard = {} if args.skip_hard else {
        (tag, name): hard_phase(work, tag, model, name, swag_test)
        for tag, model in models for name in HARD_SETS}
    write_results(args, work, time.perf_counter() - start, dev_photos, test_photos, dev_comp,
                  test_comp, dev_rows, chosen, choice_lines, swag_test, test0, test2, extra)
    if hard:
        with open(args.results, "a") as f:
            f.write("\n".join(hard_lines(work, hard, swag_test)) + "\n")
    return 0


def write_results(args, work, seconds, dev_photos, test_photos, dev_comp, test_comp, dev_rows,
                  chosen, choice_lines, swag_test, test0, test2, extra) -> None:
    dev_methods = [variant_name(s, f) for s, fs in SOURCE_FACTORS.items() for f in [None, *fs]]
    dev_methods += ["random", "center"]
    methods = swag_test + OTHERS + SLOW + ["random", "center"]
    fidelity = ["insertion", "deletion", "road", "road-morf", "road-lerf", "sic", "aic",
                "class-sensitivity", *extra]
    names = lambda ps: ", ".join(p.stem for p in ps)  # noqa: E731
    runs = sorted((work / "runs").glob("*/settings.json"))
    run_seconds = {p.parent.name: sum(r["seconds"] for r in json.loads(p.read_text())["runs"])
                   for p in runs}
    lines = [
        "# SWAG study (generated by tools/swag_study.py)", "",
        f"Command: `python tools/swag_study.py{' --limit %d' % args.limit if args.limit else ''}`"
        + ("; tables regenerated from the stored rows (`--tables-only`)" if args.tables_only
           else f"; this invocation {seconds / 60:.1f} min")
        + "; model time stored per folder: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in run_seconds.items())
        + f" (total {sum(run_seconds.values()) / 60:.1f} min, 2 shared CPU cores).", "",
        f"Development photos ({len(dev_photos)}): {names(dev_photos)}.",
        f"Held-out photos ({len(test_photos)}): {names(test_photos)}.",
        f"Development composites ({len(dev_comp)}): {names(dev_comp)}; held-out composites "
        f"({len(test_comp)}): {names(test_comp)} (tools/make_composites.py, seed "
        f"{COMPOSITES['seed']}, {COMPOSITES['count']} draws; even draws development).", "",
        f"Protocol cuts: insertion/deletion step {STEP} px ({224 * 224 // STEP + 1} points); "
        f"ROAD step {ROAD_STEP}%; SIC/AIC pasted pixels, images with top-1 probability >= "
        f"{PIC_MIN}; LIME {LIME_SAMPLES} samples, RISE {RISE_MASKS} masks, XRAI {XRAI_STEPS} "
        f"steps per baseline; LIME, XRAI and RISE not scored on class sensitivity; averaged "
        f"SWAG variants {AVERAGE_SAMPLES} gradients per image. Values: mean ± standard error "
        "(n); s / image: mean explanation time (shared run included) on this machine.", "",
        "SWAG variants: `swag-<source>@v0` are the settings before this study "
        f"({json.dumps(V0)}); `@<factor>` changes one factor: "
        + "; ".join(f"`{k}` {v}" for k, v in FACTORS.items()) + ".", "",
        "## Development half (EfficientNet-Lite0): choosing SWAG's settings", "",
        *table(dev_rows, dev_methods, ["insertion", "deletion", "road", "pointing", "energy"],
               "Development photos and composites"),
        "Criterion per photo: (insertion - deletion) + ROAD; gain over v0, paired:", "",
        "| source | factor | gain | s.e. | n |", "|---|---|---:|---:|---:|", *choice_lines, "",
        "Chosen (gain > one s.e., largest): "
        + ", ".join(f"{s}: {f or 'v0 stays'}" for s, f in chosen.items()) + ".", "",
        "## Held-out half: EfficientNet-Lite0", "",
        *table(test0, methods, fidelity, "Held-out photos"),
        *table(test0, methods, ["pointing", "energy"], "Held-out composites"),
    ]
    if test2:
        lines += ["## Held-out half: EfficientNet-Lite2 (first "
                  f"{args.lite2_limit} held-out photos and composites)", "",
                  *table(test2, methods, fidelity, "Held-out photos"),
                  *table(test2, methods, ["pointing", "energy"], "Held-out composites")]
    args.results.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.results}", flush=True)


def hard_lines(work: Path, hard: dict, swag_test) -> list[str]:
    """The results section of the harder composite sets: how each was made, its class rate,
    and pointing / energy per method."""
    methods = swag_test + OTHERS + SLOW + ["random", "center"]
    lines = ["## Harder composites (every kept composite)", "",
             "Made by `tools/make_composites.py --seed 0 "
             + " ".join(f"--photo {n}" for n in OBJECT_PHOTOS) + " OPTIONS` (the objects of the "
             "composites above). `--scale 0.45 0.65`: the object's longer side is 45-65 % of the "
             "model view's side (the composites above: its size in the photo, 63-100 %); "
             "`--avoid-center`: no box pixel within the pointing tolerance (15 px) + 1 of the "
             "view's centre, so the `center` control cannot score; `--distractors 1`: another "
             "object of another class pasted at least 15 px clear of the target box. Pointing "
             "and energy explain the class of boxes.csv (the target), not the top-1. The "
             "composites were kept by EfficientNet-Lite0's prediction; EfficientNet-Lite2 "
             "explains the same target on the same composites (its own top-1 may differ). The "
             "composites above, for comparison: "
             + _box_share(json.loads((work / "composites" / "composites.json").read_text())), ""]
    names = {"lite0": "EfficientNet-Lite0", "lite2": "EfficientNet-Lite2"}
    for name in HARD_SETS:
        summary = json.loads((work / f"composites_{name}" / "composites.json").read_text())
        lines += [f"### `{name}`: `{' '.join(HARD_SETS[name])}`", "",
                  f"Draws with a composite: {summary['made']}; target class top-1 "
                  f"(EfficientNet-Lite0): {summary['top1']} ({summary['class_rate']:.1%}), in "
                  f"the top-5: {summary['top5']} ({summary['top5_rate']:.1%}); kept "
                  f"({summary['keep']}): {summary['kept']}. " + _box_share(summary).capitalize(),
                  ""]
        for (tag, set_name), rows in hard.items():
            if set_name == name and rows:
                missing = [m for m in methods if not any(r["method"] == m for r in rows)]
                lines += [*table(rows, methods, ["pointing", "energy"],
                                 f"Composites `{name}`, {names[tag]}"),
                          *([f"Not run here (cost): {', '.join(missing)}.", ""] if missing
                            else []),
                          *paired_lines(rows, methods)]
    return lines


def _box_share(summary: dict) -> str:
    """The kept boxes' mean share of the canvas (a uniform map's energy) and of the view."""
    x0, y0, x1, y1 = summary["visible_region"]
    areas = [(d["box"][2] - d["box"][0]) * (d["box"][3] - d["box"][1])
             for d in summary["draws"] if d.get("kept")]
    if not areas:
        return ""
    return (f"boxes cover {np.mean(areas) / summary['size'] ** 2:.1%} of the canvas on average "
            f"({np.mean(areas) / ((x1 - x0) * (y1 - y0)):.1%} of the model's view).")


def paired_lines(rows, methods) -> list[str]:
    """Energy of each method minus that of each of PAIRED_WITH, paired per composite."""
    out = ["Energy minus another method's, paired per composite (mean ± s.e. (n)):", "",
           "| method | " + " | ".join(f"− {c}" for c in PAIRED_WITH) + " |",
           "|---|" + "---:|" * len(PAIRED_WITH)]
    others = {c: values(rows, c, "energy") for c in PAIRED_WITH}
    for method in methods:
        mine = values(rows, method, "energy")
        if mine and method not in ("random", "center"):
            cells = [paired(mine, others[c]) if c != method else (math.nan, math.nan, 0)
                     for c in PAIRED_WITH]
            out.append(f"| {method} | " + " | ".join(
                "" if n == 0 else f"{m:+.3f} ± {se:.3f} ({n})" for m, se, n in cells) + " |")
    return out + [""]


PAIRED_WITH = ("random", "center", "gradcam")


if __name__ == "__main__":
    sys.exit(main())
