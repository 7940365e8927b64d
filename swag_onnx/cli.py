"""The `swag-onnx` command line: inspect, augment, explain, evaluate, demo.

User errors (SwagError) print one line on stderr and exit with code 2; nothing half-written.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from swag_onnx.errors import BadImageError, BadOptionError, SwagError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Explain ONNX image classifiers with gradients computed by the model itself.")
out = Console()
err = Console(stderr=True)

LAYER_HELP = ("Tensor name of a layer whose activation and gradient are returned (repeatable); "
              "'auto' picks the last spatial feature map before global pooling.")
SCORE_HELP = "Score (logit) tensor to differentiate; default: the input of a final Softmax, " \
             "else the model output."


@contextlib.contextmanager
def user_errors():
    """Turn a SwagError into one line on stderr and exit code 2."""
    try:
        yield
    except SwagError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def inspect(
    model: Path = typer.Argument(..., help="ONNX model file."),
    score: Optional[str] = typer.Option(None, help=SCORE_HELP),
    all_layers: bool = typer.Option(False, "--all-layers", help="List every spatial tensor, "
                                    "not only the last one at each resolution."),
):
    """Print the image input and layout, the score tensor, candidate layers and unsupported ops."""
    from swag_onnx.graph import describe
    from swag_onnx.graph.analysis import stage_outputs

    with user_errors():
        info = describe(model, score)
    shape = "x".join("N" if d is None else str(d) for d in info.input_shape)
    out.print(f"model        {model} (opset {info.opset})", highlight=False)
    out.print(f"image input  {info.image_input} [{shape}] layout {info.layout}", highlight=False)
    out.print(f"score        {info.score} ({info.num_classes} classes; {info.score_source})",
              highlight=False)
    layers = info.layers if all_layers else stage_outputs(info.layers, info.layout)
    table = Table(title="candidate layers (* = auto)", title_justify="left")
    table.add_column("tensor")
    table.add_column("shape")
    for name, dims in layers:
        mark = " *" if name == info.auto_layer else ""
        table.add_row(name + mark, "x".join("N" if d is None else str(d) for d in dims))
    out.print(table)
    if info.unsupported:
        out.print(f"unsupported ({len(info.unsupported)}):", highlight=False)
        for problem in info.unsupported:
            out.print(f"  {problem}", highlight=False)
    else:
        out.print("unsupported  none: every op on the gradient path has a rule")


@app.command()
def augment(
    model: Path = typer.Argument(..., help="ONNX model file (not modified)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="Output file; default <model stem>.grad.onnx "
                                               "in the current folder."),
    layer: List[str] = typer.Option([], "--layer", help=LAYER_HELP),
    score: Optional[str] = typer.Option(None, help=SCORE_HELP),
    weights: bool = typer.Option(False, "--weights", help="Also return every parameter's "
                                 "gradient (swag.wgrad.<name>) and accept updated parameters "
                                 "as inputs (meta-saliency)."),
):
    """Write a copy of MODEL that also returns the gradient of a class score (standard ONNX ops)."""
    from swag_onnx.graph import augment as augment_file

    output = output or Path(model.stem + ".grad.onnx")
    with user_errors():
        contract = augment_file(model, output, layers=layer, score=score, weights=weights)
    out.print(f"wrote {output}", highlight=False)
    out.print(f"  feed   swag.seed [N, {contract.num_classes}] beside {contract.image_input}",
              highlight=False)
    out.print(f"  fetch  swag.score, swag.grad.{contract.image_input}"
              + "".join(f", swag.act.{t}, swag.grad.{t}" for t in contract.layers), highlight=False)
    if contract.weights:
        out.print(f"  and    swag.wgrad.<name> for {len(contract.weights)} parameters (each also "
                  "an optional input)", highlight=False)


# ------------------------------------------------------------------------------ explain / demo

def _card_overrides(input_size, layout, resize, mean, std, offset, divisor, labels) -> dict:
    """Model-card fields given on the command line (they replace the card's)."""
    scaling = None
    if mean or std:
        if len(mean) != 3 or len(std) != 3:
            raise BadOptionError("--mean and --std take three values each (one per channel)")
        scaling = {"mean": list(mean), "std": list(std)}
    elif offset is not None or divisor is not None:
        scaling = {"offset": offset or 0.0, "divisor": divisor or 1.0}
    names = None
    if labels is not None:
        try:
            names = [line.strip() for line in labels.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise BadOptionError(f"cannot read --labels {str(labels)!r}: {exc}") from None
    size = [input_size, input_size] if input_size else None
    return {"input_size": size, "layout": layout, "resize": resize,
            "crop": "center" if resize else None, "scaling": scaling, "class_names": names}


def _write_explanation(result, stem: str, out_dir: Path, boundaries: bool) -> float:
    """Write <stem>.<method>.png/.npy/.json atomically; returns the time taken (ms)."""
    from swag_onnx import images as imgs

    start = time.perf_counter()
    top = result.target
    probability = next((t["probability"] for t in result.top5 if t["index"] == top["index"]),
                       None)
    caption = f"{top['label']}" + (f" {probability:.1%}" if probability is not None else "") \
        + f" | {result.method}"
    base = str(out_dir / f"{stem}.{result.method}")
    picture = imgs.overlay(result.image, result.saliency, caption,
                           boundaries=result.labels if boundaries else None)
    imgs.write_png(base + ".png", picture)
    imgs.write_npy(base + ".npy", result.saliency.astype(np.float32))
    elapsed = (time.perf_counter() - start) * 1e3
    record = result.record()
    record["timings_ms"]["writing"] = round(elapsed, 2)
    imgs.write_json(base + ".json", record)
    return elapsed


def _summary(rows) -> None:
    table = Table(title="explanations", title_justify="left")
    for column in ("image", "top-1", "target", "method", "ms"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _progress(total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, disable=total <= 3, transient=True)


def run_explain(explainer, named_images, out_dir: Path, methods, target, params, batch_size,
                boundaries, superpixels: str = "image") -> list[tuple]:
    """Explain (stem, image) pairs in batches with every method; returns summary rows."""
    from swag_onnx.explain import PROGRESS_METHODS

    rows = []
    slow = any(m in PROGRESS_METHODS for m in methods)
    with _progress(len(named_images) + (4 if slow else 0)) as progress:
        task = progress.add_task("explaining", total=len(named_images))
        samples = {}

        def on_progress(method: str, done: int, total: int) -> None:
            if method not in samples:
                samples[method] = progress.add_task(f"{method} samples", total=total)
            progress.update(samples[method], completed=done, total=total)

        for start in range(0, len(named_images), batch_size):
            chunk = named_images[start:start + batch_size]
            results = explainer.explain([image for _, image in chunk], method=methods,
                                        superpixels=superpixels, target=target,
                                        on_progress=on_progress, **params)
            per_image = len(results) // len(chunk)
            for k, result in enumerate(results):
                stem = chunk[k // per_image][0]
                result.timings_ms["writing"] = _write_explanation(result, stem, out_dir,
                                                                  boundaries)
                best = result.top5[0]
                rows.append((stem, f"{best['label']} ({best['probability']:.1%})",
                             result.target["label"], result.method,
                             f"{sum(result.timings_ms.values()):.0f}"))
            progress.advance(task, len(chunk))
    return rows


def _load_all(paths) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """Decode every image file; bad files become one-line problems (the good ones go on)."""
    from swag_onnx import images as imgs

    files, problems = imgs.collect_images(paths)
    loaded, stems = [], set()
    for path in files:
        try:
            image = imgs.load_image(path)
        except BadImageError as exc:
            problems.append(str(exc))
            continue
        stem = path.stem if path.stem not in stems else f"{path.parent.name}_{path.stem}"
        stems.add(stem)
        loaded.append((stem, image))
    return loaded, problems


@app.command()
def explain(
    images: List[Path] = typer.Argument(..., help="Image files or folders."),
    model: Optional[Path] = typer.Option(None, help="Model folder (model.onnx + card.json) or "
                                         ".onnx file; default: the embedded EfficientNet-Lite0."),
    out_dir: Path = typer.Option(Path("swag-out"), "--out", help="Output folder."),
    method: List[str] = typer.Option(["swag"], "--method", help="swag (with --superpixels), "
                                     "swag-image, swag-gradient, swag-combined, gradcam, "
                                     "gradcam++, normgrad, normgrad-selective, gradient, "
                                     "gradient-x-input, integrated-gradients, smoothgrad, "
                                     "lime, rise, xrai; "
                                     "repeatable (one model run is shared)."),
    layer: List[str] = typer.Option([], "--layer", help="Layer(s) for gradcam, gradcam++ and "
                                    "normgrad: tensor names or 'auto' (default: the card's)."),
    combine: str = typer.Option("product", help="How several layers combine: product or sum."),
    meta: bool = typer.Option(False, "--meta", help="Meta-saliency: maps from the model after "
                              "one SGD step on the target's cross-entropy (gradcam, gradcam++, "
                              "normgrad*, gradient, gradient-x-input, swag)."),
    meta_lr: float = typer.Option(0.0025, help="--meta learning rate (negative: adversarial)."),
    steps: Optional[int] = typer.Option(None, help="integrated-gradients: path steps (64); "
                                        "xrai: steps per baseline (50)."),
    samples: Optional[int] = typer.Option(None, help="smoothgrad: noisy samples (50); lime: "
                                          "perturbed samples (1000)."),
    masks: Optional[int] = typer.Option(None, help="rise: random masks (4000)."),
    noise: Optional[float] = typer.Option(None, help="smoothgrad: noise std, fraction of the "
                                          "input range (0.15)."),
    seed: Optional[int] = typer.Option(None, help="smoothgrad, lime, rise: random seed (0)."),
    superpixels: str = typer.Option("image", help="SWAG superpixel source: image, gradient or "
                                    "combined."),
    target: Optional[str] = typer.Option(None, help="Class index or name to explain "
                                         "(case-insensitive); default: each image's top-1."),
    n_segments: Optional[int] = typer.Option(None, help="SLIC: number of superpixels."),
    compactness: Optional[float] = typer.Option(None, help="SLIC compactness."),
    sigma: Optional[float] = typer.Option(None, help="SLIC pre-smoothing."),
    gradient_weight: Optional[float] = typer.Option(None, help="Weight of the gradient channel "
                                                    "(combined)."),
    attribution: Optional[str] = typer.Option(None, help="gradient or gradient_x_input."),
    sign: Optional[str] = typer.Option(None, help="abs, positive or signed."),
    reduce: Optional[str] = typer.Option(None, help="Channel reduction: max, sum or l2."),
    smooth_sigma: Optional[float] = typer.Option(None, help="Gaussian smoothing of the pixel "
                                                 "map."),
    top_k: Optional[int] = typer.Option(None, help="Keep only the k best regions."),
    boundaries: bool = typer.Option(True, help="Draw superpixel boundaries on the overlay."),
    provider: str = typer.Option("auto", help="auto (CUDA, else CPU), cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="onnxruntime intra-op threads."),
    batch_size: int = typer.Option(8, min=1, help="Images per model run."),
    input_size: Optional[int] = typer.Option(None, help="Model input size (no card)."),
    layout: Optional[str] = typer.Option(None, help="NCHW or NHWC (no card)."),
    resize: Optional[int] = typer.Option(None, help="Resize the shorter side, then centre-crop."),
    mean: List[float] = typer.Option([], help="Per-channel mean of (pixel/255) (3 values)."),
    std: List[float] = typer.Option([], help="Per-channel std (3 values)."),
    offset: Optional[float] = typer.Option(None, help="(pixel - offset) / divisor scaling."),
    divisor: Optional[float] = typer.Option(None, help="(pixel - offset) / divisor scaling."),
    labels: Optional[Path] = typer.Option(None, help="Class names, one per line."),
):
    """Explain images (SWAG and the comparison methods): writes <stem>.<method>.png, .npy and
    .json per image and method."""
    from swag_onnx.explain import Explainer

    params = {k: v for k, v in dict(
        n_segments=n_segments, compactness=compactness, sigma=sigma,
        gradient_weight=gradient_weight, attribution=attribution, sign=sign, reduce=reduce,
        smooth_sigma=smooth_sigma, top_k=top_k, steps=steps, samples=samples, noise=noise,
        seed=seed, masks=masks).items() if v is not None}
    with user_errors():
        overrides = _card_overrides(input_size, layout, resize, mean, std, offset, divisor, labels)
        explainer = Explainer(model, card=overrides, layers=layer or None, provider=provider,
                              threads=threads)
        named, problems = _load_all(images)
        params["combine"] = combine
        if meta:
            params.update(meta=True, meta_lr=meta_lr)
        rows = run_explain(explainer, named, out_dir, method, target, params, batch_size,
                           boundaries, superpixels) if named else []
    if rows:
        _summary(rows)
        out.print(f"wrote {len(rows)} explanation(s) to {out_dir}/ (provider "
                  f"{explainer.provider})", highlight=False)
    for problem in problems:
        err.print(f"[bold red]error:[/] {problem}", highlight=False, soft_wrap=True)
    if problems or not rows:
        if not problems:
            err.print("[bold red]error:[/] no images to explain", highlight=False)
        raise typer.Exit(1 if rows else 2)


@app.command()
def evaluate(
    images: List[Path] = typer.Argument(..., help="Image files or folders."),
    method: List[str] = typer.Option(["swag"], "--method", help="Method to evaluate (names as "
                                     "in explain); repeatable."),
    metric: List[str] = typer.Option([], "--metric", help="deletion, insertion, sic, aic, "
                                     "pointing or class-sensitivity; repeatable (default: "
                                     "deletion and insertion)."),
    out_dir: Path = typer.Option(Path("swag-eval"), "--out", help="Output folder; a rerun "
                                 "into it skips the rows already computed."),
    annotations: Optional[Path] = typer.Option(None, help="Boxes for the pointing game "
                                               "(see swag_onnx.metrics.pointing)."),
    model: Optional[Path] = typer.Option(None, help="Model folder (model.onnx + card.json) or "
                                         ".onnx file; default: the embedded EfficientNet-Lite0."),
    layer: List[str] = typer.Option([], "--layer", help="Layer(s) for the layer-based methods."),
    combine: str = typer.Option("product", help="How several layers combine: product or sum."),
    meta: bool = typer.Option(False, "--meta", help="Meta-saliency: maps from the model after "
                              "one SGD step on the target's cross-entropy (gradcam, gradcam++, "
                              "normgrad*, gradient, gradient-x-input, swag)."),
    meta_lr: float = typer.Option(0.0025, help="--meta learning rate (negative: adversarial)."),
    steps: Optional[int] = typer.Option(None, help="integrated-gradients: path steps."),
    samples: Optional[int] = typer.Option(None, help="smoothgrad / lime: samples."),
    masks: Optional[int] = typer.Option(None, help="rise: random masks."),
    seed: int = typer.Option(0, help="Seed of SIC/AIC and of the stochastic methods."),
    batch_size: int = typer.Option(32, min=1, help="Inputs per model call (curves, LIME, RISE, "
                                   "...); changes speed and memory, not results."),
    step: Optional[int] = typer.Option(None, min=1, help="Deletion/insertion: pixels per step "
                                       "(default h*w/224: 224 on a 224x224 input)."),
    baseline: float = typer.Option(0.0, help="Deletion: value of deleted pixels in the "
                                   "normalised input space (0 = the mean colour)."),
    blur_ksize: int = typer.Option(11, min=1, help="Insertion: Gaussian kernel size (odd)."),
    blur_sigma: float = typer.Option(5.0, help="Insertion: Gaussian sigma."),
    tolerance: int = typer.Option(15, min=0, help="Pointing game: tolerance in pixels."),
    pic_min_score: Optional[float] = typer.Option(None, help="SIC/AIC: skip images whose "
                                                  "top-1 probability is below this (0.8)."),
    pic_reveal: Optional[str] = typer.Option(None, help="SIC/AIC: interpolate (reference) or "
                                             "paste (faster)."),
    provider: str = typer.Option("auto", help="auto (CUDA, else CPU), cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="onnxruntime intra-op threads."),
):
    """Score saliency methods (deletion, insertion, SIC, AIC, pointing game, class sensitivity):
    writes results.csv, curves/, summary.md, curves.png and overlays.png into --out."""
    from swag_onnx import evaluate as ev
    from swag_onnx import report
    from swag_onnx.explain import Explainer

    with user_errors():
        metrics = ev.resolve_metrics(metric)
        methods = ev.resolve_methods(method)
        if out_dir.exists() and not out_dir.is_dir():
            raise BadOptionError(f"--out {out_dir} is a file; pass a folder")
        if "pointing" in metrics and annotations is None:
            raise BadOptionError("--metric pointing needs --annotations FILE (boxes per image)")
        items, problems = ev.items_from_paths(images)
        if not items:
            for problem in problems:
                err.print(f"[bold red]error:[/] {problem}", highlight=False, soft_wrap=True)
            raise BadOptionError("no images to evaluate")
        boxes = ev.match_annotations(annotations, items) if "pointing" in metrics else {}
        explainer = Explainer(model, layers=layer or None, provider=provider, threads=threads)
        ev.annotated_classes(explainer, boxes)
        options = dict(steps=steps, samples=samples, masks=masks, seed=seed,
                       batch_size=batch_size, combine=combine, meta=meta or None,
                       meta_lr=meta_lr if meta else None)
        params = ev.method_params(methods, options)
        protocol = ev.Protocol(step=step, baseline=baseline, blur_ksize=blur_ksize,
                               blur_sigma=blur_sigma, tolerance=tolerance, seed=seed,
                               batch_size=batch_size,
                               pic=ev.pic_options(min_pred_value=pic_min_score,
                                                  reveal=pic_reveal))
        with _progress(len(items) * len(methods)) as progress:
            task = progress.add_task("evaluating", total=len(items) * len(methods))
            result = ev.run(explainer, items, out_dir, methods, metrics, protocol=protocol,
                            method_params=params, annotations=boxes, options=options,
                            progress=lambda n, name: progress.update(
                                task, advance=n, description=f"evaluating {name}"))
        settings = ev.load_settings(out_dir)
        written = report.write_report(out_dir, result.rows, methods, metrics,
                                      settings["settings"], settings["runs"][-1])
    stats = report.statistics(result.rows, methods, metrics)
    table = Table(title="mean over images", title_justify="left")
    table.add_column("method")
    for m in metrics:
        table.add_column(f"{m} {'↑' if ev.HIGHER_IS_BETTER[m] else '↓'}", justify="right")
    for m in methods:
        table.add_row(m, *(report._fmt(stats[m, k].mean) if (m, k) in stats else ""
                           for k in metrics))
    out.print(table)
    unannotated = f", {result.unannotated} without annotations" if result.unannotated else ""
    out.print(f"{result.processed} image(s) evaluated, {result.skipped} already done"
              f"{unannotated}; wrote "
              + ", ".join(str(p) for p in [out_dir / ev.RESULTS] + written), highlight=False)
    for problem in problems + result.problems:
        err.print(f"[bold red]error:[/] {problem}", highlight=False, soft_wrap=True)
    if problems or result.problems:
        raise typer.Exit(1)


@app.command()
def demo(out_dir: Path = typer.Option(Path("swag-demo"), "--out", help="Output folder.")):
    """Explain scikit-image's cat photo with the default model and all three SWAG variants."""
    from skimage import data

    from swag_onnx.explain import SWAG_METHODS, Explainer

    with user_errors():
        explainer = Explainer()
        rows = run_explain(explainer, [("chelsea", data.chelsea())], out_dir, list(SWAG_METHODS),
                           None, {}, 1, True)
    _summary(rows)
    out.print(f"wrote {len(rows)} explanations to {out_dir}/ (provider {explainer.provider})",
              highlight=False)


def main() -> None:
    app()
