"""The `swag-onnx` command line: inspect and augment ONNX image classifiers.

User errors (SwagError) print one line on stderr and exit with code 2; nothing half-written.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from swag_onnx.errors import SwagError

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
):
    """Write a copy of MODEL that also returns the gradient of a class score (standard ONNX ops)."""
    from swag_onnx.graph import augment as augment_file

    output = output or Path(model.stem + ".grad.onnx")
    with user_errors():
        contract = augment_file(model, output, layers=layer, score=score)
    out.print(f"wrote {output}", highlight=False)
    out.print(f"  feed   swag.seed [N, {contract.num_classes}] beside {contract.image_input}",
              highlight=False)
    out.print(f"  fetch  swag.score, swag.grad.{contract.image_input}"
              + "".join(f", swag.act.{t}, swag.grad.{t}" for t in contract.layers), highlight=False)


def main() -> None:
    app()
