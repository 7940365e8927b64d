"""The `swag-onnx` command line: inspect, augment, explain, evaluate, demo.

User errors (SwagError) print one line on stderr and exit with code 2; nothing half-written.
"""

from __future__ import annotations

import contextlib
import inspect as pyinspect
import re
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand

from swag_onnx.errors import BadOptionError, SwagError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  rich_markup_mode=None,  # plain help: long method lists wrap, never truncate
                  help="Explain ONNX image classifiers with gradients computed by the model itself.")
out = Console()
err = Console(stderr=True)

LAYER_HELP = ("Tensor name of a layer whose activation and gradient are returned (repeatable); "
              "'auto' picks the last spatial feature map before global pooling (on a vision "
              "transformer, the last block's input norm, a token layer).")
SCORE_HELP = "Score (logit) tensor to differentiate; default: the input of a final Softmax, " \
             "else the model output."


@contextlib.contextmanager
def user_errors():
    """Turn a SwagError into one line on stderr and exit code 2."""
    try:
        yield
    except SwagError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None


def _error(message: str) -> None:
    """One error line on stderr, the message printed as given (no markup)."""
    err.print("[bold red]error:[/] ", end="", highlight=False)
    err.print(message, markup=False, highlight=False, soft_wrap=True)


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
    out.print(f"model        {model} (opset {info.opset})", markup=False, highlight=False)
    out.print(f"image input  {info.image_input} [{shape}] layout {info.layout}", markup=False,
              highlight=False)
    out.print(f"score        {info.score} ({info.num_classes} classes; {info.score_source})",
              markup=False, highlight=False)
    layers = info.layers if all_layers else stage_outputs(info.layers, info.layout)
    table = Table(title="candidate layers (* = auto)", title_justify="left")
    table.add_column("tensor")
    table.add_column("shape")
    for name, dims in layers:
        mark = " *" if name == info.auto_layer else ""
        table.add_row(_plain(name + mark), "x".join("N" if d is None else str(d) for d in dims))
    out.print(table)
    if info.tokens:  # vision transformers: [N, T, C] layers read as (C, h, w) grids
        tokens = Table(title="token layers (* = auto; block norms unless --all-layers)",
                       title_justify="left")
        for column in ("tensor", "shape", "grid", "leading tokens"):
            tokens.add_column(column)
        for name, layout in info.tokens.items():
            if all_layers or layout.op == "LayerNormalization" or name == info.auto_layer:
                mark = " *" if name == info.auto_layer else ""
                tokens.add_row(_plain(name + mark), "x".join("N" if d is None else str(d)
                                                     for d in layout.shape),
                               "x".join(str(d) for d in layout.grid), str(layout.offset))
        out.print(tokens)
    if info.unsupported:
        out.print(f"unsupported ({len(info.unsupported)}):", markup=False, highlight=False)
        for problem in info.unsupported:
            out.print(f"  {problem}", markup=False, highlight=False)
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
    from swag_onnx.graph import Contract, augment_model
    from swag_onnx.graph.checks import check_model, fit_to_runtime
    from swag_onnx.graph.model_io import load_model, save_model_atomic
    from swag_onnx.files import check_output_target

    output = output or Path(model.stem + ".grad.onnx")
    with user_errors():
        check_output_target(output)  # before the (slow) augmentation
        if output.exists() and output.resolve() == model.resolve():
            raise BadOptionError("the output path is the input model; choose another -o")
        source = load_model(model)
        # the copy must run on the installed onnxruntime: IR version lowered if need be; one
        # image input, an [N, K] score, not augmented already (graph.checks)
        fit_to_runtime(source, repr(str(model)))
        check_model(source, repr(str(model)), score)
        augmented = augment_model(source, layer, score, weights)
        save_model_atomic(augmented, output)
    contract = Contract.from_model(augmented)
    lines = [f"wrote {output}",
             f"  feed   swag.seed [N, {contract.num_classes}] beside {contract.image_input}",
             f"  fetch  swag.score, swag.grad.{contract.image_input}"
             + "".join(f", swag.act.{t}, swag.grad.{t}" for t in contract.layers)]
    if contract.weights:
        lines.append(f"  and    swag.wgrad.<name> for {len(contract.weights)} parameters (each "
                     "also an optional input)")
    for line in lines:  # paths and tensor names as given: no markup
        out.print(line, markup=False, highlight=False, soft_wrap=True)


# ------------------------------------------------------------------- options from the registries

def _option_type(check):
    """The Python type of a validation check's values (for typer)."""
    from swag_onnx import validation as v

    if isinstance(check, v.Optional):
        return _option_type(check.check)
    return {v.Int: int, v.Number: float, v.Choice: str, v.Flag: bool}[type(check)]


def _registry_options(entries, exclude=()) -> list[pyinspect.Parameter]:
    """One --option per parameter name of the registry entries (methods or metrics), unset by
    default (the entry's own default then applies), help saying who takes it."""
    by_name: dict[str, list] = {}
    for entry in entries:
        for param in entry.params.values():
            if param.name not in exclude:
                by_name.setdefault(param.name, []).append((entry.name, param))
    options = []
    for name, uses in by_name.items():
        helps: dict[str, dict[str, list[str]]] = {}  # help -> default -> owners
        for owner, param in uses:
            default = "per source" if param.default is None else repr(param.default)
            helps.setdefault(param.help, {}).setdefault(default, []).append(owner)
        text = "; ".join(f"{h} (default " + "; ".join(f"{d}: {', '.join(who)}"
                                                      for d, who in by_default.items()) + ")"
                         for h, by_default in helps.items())
        kind = _option_type(uses[0][1].check)
        options.append(pyinspect.Parameter(
            name, pyinspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
            default=typer.Option(None, uses[0][1].option, help=text, show_default=False)))
    return options


def _with_options(*option_sets):
    """Give a command the generated options as keyword arguments (it takes **options)."""
    def decorate(command):
        signature = pyinspect.signature(command, eval_str=True)
        fixed = [p for p in signature.parameters.values()
                 if p.kind is not pyinspect.Parameter.VAR_KEYWORD]
        names = {p.name for p in fixed}
        extra = {p.name: p for options in option_sets for p in options if p.name not in names}
        command.__signature__ = signature.replace(parameters=fixed + list(extra.values()))
        return command
    return decorate


def _method_help() -> str:
    from swag_onnx.methods import ALIASES, METHODS

    return ("Method (repeatable; one model run is shared): " + ", ".join([*ALIASES, *METHODS])
            + "; `swag-onnx methods` describes them.")


def _metric_help() -> str:
    from swag_onnx.metrics.registry import DEFAULT_METRICS, METRICS

    return (f"Metric (repeatable; default {' and '.join(DEFAULT_METRICS)}): "
            + ", ".join(METRICS) + "; `swag-onnx metrics` describes them.")


def _methods():
    from swag_onnx.methods import METHODS

    return METHODS.values()


def _metrics():
    from swag_onnx.metrics.registry import METRICS

    return METRICS.values()


# Options shared by explain and evaluate, declared once.
ImagesArg = Annotated[List[Path], typer.Argument(help="Image files or folders.")]
ModelOpt = Annotated[Optional[Path], typer.Option(
    help="Model folder (model.onnx + card.json) or .onnx file; default: the embedded "
         "EfficientNet-Lite0.")]
MethodOpt = Annotated[List[str], typer.Option("--method", help=_method_help())]
LayerOpt = Annotated[List[str], typer.Option(
    "--layer", help="Layer(s) of the layer-based methods: tensor names (spatial maps, or token "
                    "layers of vision transformers; `swag-onnx inspect` lists them) or 'auto' "
                    "(default: the card's).")]
SuperpixelsOpt = Annotated[str, typer.Option(help="What `--method swag` stands for: swag-image, "
                                                  "swag-gradient or swag-combined.")]
MetaOpt = Annotated[bool, typer.Option("--meta", help=(
    "Meta-saliency: maps from the model after one SGD step on the target's cross-entropy "
    "(methods made from the shared gradient run)."))]
MetaLrOpt = Annotated[float, typer.Option(help="--meta learning rate (negative: adversarial).")]
ProviderOpt = Annotated[str, typer.Option(help="auto (CUDA, else CPU), cpu or cuda.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="onnxruntime intra-op threads.")]
RayOpt = Annotated[Optional[str], typer.Option(
    "--ray", metavar="[ADDRESS]",
    help="Run on Ray (the optional extra swag-onnx[ray]): with no value, a local Ray runtime; "
         "'auto' or HOST:PORT (ray://HOST:PORT) joins a cluster. One actor per CPU (per GPU "
         "with --provider cuda); the output files are the local run's.")]
RayWorkersOpt = Annotated[Optional[int], typer.Option(
    "--ray-workers", metavar="N",
    help="With --ray: the number of actors (default: as many as the cluster holds now, one per "
         "CPU, or per GPU with --provider cuda; never more).")]


def ray_cluster(ray: str | None, workers: int | None):
    """distributed.Cluster of --ray and --ray-workers (None without --ray); BadOptionError for
    --ray-workers without --ray, or not a positive integer."""
    from swag_onnx import distributed

    if ray is None:
        if workers is not None:
            raise BadOptionError("--ray-workers needs --ray (it sets the number of Ray actors)")
        return None
    return distributed.Cluster(ray, workers)


def ray_flag_value(args: list[str]) -> list[str]:
    """--ray not followed by 'auto', 'local' or an address (HOST:PORT, ray://HOST:PORT) becomes
    --ray=local (a local runtime), so that `--ray photos/` keeps photos/ as an image."""
    args = list(args)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        following = args[i + 1] if i + 1 < len(args) else ""
        if arg == "--ray" and not re.fullmatch(r"auto|local|(ray://)?\S+:\d+", following):
            args[i] = "--ray=local"
    return args


class RayCommand(TyperCommand):
    """A command whose --ray takes an optional value (typer options cannot)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, ray_flag_value(args))


# ------------------------------------------------------------------------------ explain / demo

def _card_overrides(input_size, layout, resize, mean, std, offset, divisor, labels) -> dict:
    """Model-card fields given on the command line (they replace the card's)."""
    scaling = None
    if mean or std:
        if len(mean) != 3 or len(std) != 3:
            raise BadOptionError("--mean and --std take three values each (one per channel)")
        scaling = {"mean": list(mean), "std": list(std)}
    elif offset is not None or divisor is not None:
        scaling = {"offset": 0.0 if offset is None else offset,
                   "divisor": 1.0 if divisor is None else divisor}
    names = None
    if labels is not None:
        try:
            names = [line.strip() for line in labels.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise BadOptionError(f"cannot read --labels {str(labels)!r} as text ({exc}); pass "
                                 "a text file with one class name per line") from None
    size = None if input_size is None else [input_size, input_size]
    return {"input_size": size, "layout": layout, "resize": resize,
            "crop": "center" if resize else None, "scaling": scaling, "class_names": names}


def _summary(rows) -> None:
    table = Table(title="explanations", title_justify="left")
    for column in ("image", "top-1", "target", "method", "ms"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(_plain(cell) for cell in row))
    out.print(table)


def _plain(text: str):
    """User text as a rich Text (printed as given, markup characters included)."""
    from rich.text import Text

    return Text(str(text))


def _progress(total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, disable=total <= 3, transient=True)


def run_explain(explainer, items, out_dir: Path, methods, target, params, batch_size,
                boundaries, superpixels: str = "image", meta: bool = False,
                meta_lr: float = 0.0025) -> tuple[list[tuple], list[str]]:
    """swag_onnx.folder.explain_folder (pipelined: decoding, model runs and writing overlap)
    with progress bars; returns (summary rows, problems: images that could not be decoded)."""
    from swag_onnx.explain import plan
    from swag_onnx.folder import explain_folder

    slow = any(entry.progress for entry, _ in plan(methods, params, superpixels))
    with _progress(len(items) + (4 if slow else 0)) as progress:
        task = progress.add_task("explaining", total=len(items))
        samples = {}

        def on_progress(method: str, done: int, total: int) -> None:
            if method not in samples:
                samples[method] = progress.add_task(f"{method} samples", total=total)
            progress.update(samples[method], completed=done, total=total)

        return explain_folder(explainer, items, out_dir, methods, target=target, params=params,
                              batch_size=batch_size, boundaries=boundaries,
                              superpixels=superpixels, meta=meta, meta_lr=meta_lr,
                              on_progress=on_progress,
                              on_item=lambda _: progress.advance(task))


def _check_out(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise BadOptionError(f"--out {str(out_dir)!r} exists and is not a folder; pass a folder")


@app.command(cls=RayCommand)
@_with_options(_registry_options(_methods(), exclude=("batch_size",)))
def explain(
    images: ImagesArg,
    model: ModelOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("swag-out"),
    method: MethodOpt = ["swag"],  # noqa: B006  (typer reads it, never mutated)
    layer: LayerOpt = [],  # noqa: B006
    superpixels: SuperpixelsOpt = "image",
    meta: MetaOpt = False,
    meta_lr: MetaLrOpt = 0.0025,
    target: Annotated[Optional[str], typer.Option(help="Class index or name to explain "
                                                  "(case-insensitive); default: each image's "
                                                  "top-1.")] = None,
    boundaries: Annotated[bool, typer.Option(help="Draw region boundaries on the overlay.")]
    = True,
    provider: ProviderOpt = "auto",
    threads: ThreadsOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model run.")] = 8,
    input_size: Annotated[Optional[int], typer.Option(help="Model input size (no card).")]
    = None,
    layout: Annotated[Optional[str], typer.Option(help="NCHW or NHWC (no card).")] = None,
    resize: Annotated[Optional[int], typer.Option(help="Resize the shorter side, then "
                                                  "centre-crop.")] = None,
    mean: Annotated[List[float], typer.Option(help="Per-channel mean of (pixel/255) (3 "
                                              "values).")] = [],  # noqa: B006
    std: Annotated[List[float], typer.Option(help="Per-channel std (3 values).")]
    = [],  # noqa: B006
    offset: Annotated[Optional[float], typer.Option(help="(pixel - offset) / divisor "
                                                    "scaling.")] = None,
    divisor: Annotated[Optional[float], typer.Option(help="(pixel - offset) / divisor "
                                                     "scaling.")] = None,
    labels: Annotated[Optional[Path], typer.Option(help="Class names, one per line.")] = None,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
    **options,
):
    """Explain images: writes <name>.<method>.png, .npy and .json per image and method."""
    from swag_onnx.evaluate import items_from_paths
    from swag_onnx.explain import Explainer, plan
    from swag_onnx.methods.registry import check_meta

    params = {k: v for k, v in options.items() if v is not None}
    with user_errors():
        _check_out(out_dir)
        cluster = ray_cluster(ray, ray_workers)
        planned = plan(method, params, superpixels)  # every option checked before any run
        if meta:
            check_meta([entry for entry, _ in planned], meta_lr, {e.name: c for e, c in planned})
        overrides = _card_overrides(input_size, layout, resize, mean, std, offset, divisor, labels)
        if ray is not None:  # the model runs on Ray actors: here it is only read, on the CPU
            from swag_onnx import distributed

            distributed.require_ray()
            args = distributed.explainer_args(model, overrides, layer, provider, threads)
        explainer = Explainer(model, card=overrides, layers=layer or None,  # spinning: the
                              provider=provider if ray is None else "cpu", threads=threads,
                              spinning=False)  # folder loop runs two model threads and SLIC
        items, problems = items_from_paths(images)
        if ray is not None and items:
            with _progress(len(items)) as progress:
                task = progress.add_task("explaining (Ray)", total=len(items))
                rows, bad = distributed.run_explain(
                    cluster, explainer, args, items, out_dir, method, target, params,
                    batch_size, boundaries, superpixels, meta, meta_lr,
                    on_items=lambda count: progress.advance(task, count))
        else:
            rows, bad = run_explain(explainer, items, out_dir, method, target, params,
                                    batch_size, boundaries, superpixels, meta,
                                    meta_lr) if items else ([], [])
    problems += bad
    if rows:
        _summary(rows)
        out.print(f"wrote {len(rows)} explanation(s) to {out_dir}/ (provider "
                  f"{explainer.provider})", markup=False, highlight=False)
    for problem in problems:
        _error(problem)
    if problems or not rows:
        if not problems:
            _error("no images to explain")
        raise typer.Exit(1 if rows else 2)


# ------------------------------------------------------------------------------- evaluate

@app.command(cls=RayCommand)
@_with_options(_registry_options(_methods()), _registry_options(_metrics()))
def evaluate(
    images: ImagesArg,
    method: MethodOpt = ["swag"],  # noqa: B006
    metric: Annotated[List[str], typer.Option("--metric", help=_metric_help())]
    = [],  # noqa: B006
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder; a rerun into it skips "
                                          "the rows already computed.")] = Path("swag-eval"),
    annotations: Annotated[Optional[Path], typer.Option(
        help="Boxes for the localisation metrics (see swag_onnx.metrics.pointing).")] = None,
    model: ModelOpt = None,
    layer: LayerOpt = [],  # noqa: B006
    superpixels: SuperpixelsOpt = "image",
    meta: MetaOpt = False,
    meta_lr: MetaLrOpt = 0.0025,
    controls: Annotated[bool, typer.Option(help="Evaluate the control maps (random, center) "
                                           "beside the methods; the report flags every metric "
                                           "on which a control beats a real method.")] = True,
    provider: ProviderOpt = "auto",
    threads: ThreadsOpt = None,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
    **options,
):
    """Score saliency methods with the registered metrics: writes results.csv, curves/,
    summary.md, curves.png and overlays.png into --out."""
    with user_errors():
        cluster = ray_cluster(ray, ray_workers)
    if cluster is None:
        from swag_onnx.evaluate import evaluate as run_evaluation
    else:  # the same job, the images explained and scored by Ray actors
        import functools

        from swag_onnx import distributed

        run_evaluation = functools.partial(distributed.evaluate, address=cluster.address,
                                           workers=cluster.workers)
    from swag_onnx.report import fmt, higher_is_better, statistics

    with user_errors(), _progress(10) as progress:
        task = progress.add_task("evaluating", total=None)
        result = run_evaluation(
            images, method, metric, out_dir, model=model, annotations=annotations,
            layers=layer, provider=provider, threads=threads, meta=meta, meta_lr=meta_lr,
            controls=controls, superpixels=superpixels,
            progress=lambda done, total, name: progress.update(
                task, completed=done, total=total, description=f"evaluating {name}"),
            **options)
    report = result.report
    if report.rows:
        stats = statistics(report.rows, result.methods, result.metrics)
        table = Table(title="mean over images", title_justify="left")
        table.add_column("method")
        for m in result.metrics:
            table.add_column(f"{m} {'↑' if higher_is_better(m) else '↓'}", justify="right")
        for m in result.methods:
            table.add_row(_plain(m), *(fmt(stats[m, k].mean) if (m, k) in stats else ""
                                       for k in result.metrics))
        out.print(table)
    unannotated = f", {report.unannotated} without annotations" if report.unannotated else ""
    files = [p for p in [Path(out_dir) / "results.csv"] + result.written if p.exists()]
    out.print(f"{report.processed} image(s) evaluated, {report.skipped} already done"
              f"{unannotated}" + ("; wrote " + ", ".join(map(str, files)) if files else ""),
              markup=False, highlight=False)
    for problem in result.problems:
        _error(problem)
    if result.problems:
        raise typer.Exit(1 if report.rows else 2)


# ------------------------------------------------------------------------------- listings

def _print(text: str) -> None:
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def _params_lines(params) -> list[str]:
    return [f"    {p.option}: {p.describe()}" for p in params.values()] or ["    none"]


@app.command()
def methods():
    """List every saliency method: what it computes, what it needs from the model, its
    options and defaults, its flags and its reference."""
    from swag_onnx.methods import ALIASES, METHODS

    for m in METHODS.values():
        flags = [f for f, on in (("--meta applies", m.meta), ("reports progress", m.progress),
                                 ("control map", m.control)) if on]
        if m.regions:
            flags.append(f"regions: {m.regions}")
        _print(f"{m.name}" + (f"  [{'; '.join(flags)}]" if flags else ""))
        _print(f"  {m.summary}")
        _print(f"  needs: {m.needs_text() or 'nothing from the model beyond its prediction'}")
        _print("  options:")
        for line in _params_lines(m.params):
            _print(line)
        _print(f"  reference: {m.reference}")
    _print("aliases: " + ", ".join(f"{a} = swag-<--superpixels>" for a in ALIASES))


@app.command()
def metrics():
    """List every evaluation metric: its rows and their direction, what it needs, its
    protocol options and defaults."""
    from swag_onnx.metrics.registry import METRICS, NEEDS

    for m in METRICS.values():
        _print(m.name + ("  [one row per annotated class]" if m.per_class else ""))
        _print("  rows: " + ", ".join(f"{row} ({info.title}, "
                                      f"{'higher' if info.higher_is_better else 'lower'} is "
                                      "better)" for row, info in m.rows.items()))
        _print("  needs: " + "; ".join(NEEDS[n] for n in sorted(m.needs)))
        _print("  options:")
        for line in _params_lines(m.params):
            _print(line)
        _print(f"  reference: {m.reference}")


@app.command()
def demo(out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")]
         = Path("swag-demo")):
    """Explain scikit-image's cat photo with the default model and all three SWAG variants."""
    from skimage import data

    from swag_onnx.evaluate import Item
    from swag_onnx.explain import Explainer
    from swag_onnx.methods.swag import SOURCES

    with user_errors():
        _check_out(out_dir)
        explainer = Explainer()
        rows, _ = run_explain(explainer, [Item("chelsea", rgb=data.chelsea())], out_dir,
                              [f"swag-{s}" for s in SOURCES], None, {}, 1, True)
    _summary(rows)
    out.print(f"wrote {len(rows)} explanations to {out_dir}/ (provider {explainer.provider})",
              markup=False, highlight=False)


def main() -> None:
    app()
