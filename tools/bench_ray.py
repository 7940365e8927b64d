"""Benchmark `evaluate --ray`: images per minute locally and through a local Ray runtime with 1
and with 2 actors, and the fixed cost of `--ray` on a short run.

The job is the issue's: 4 methods (gradient, gradient-x-input, gradcam, swag), deletion and
insertion, 40 images (the offline dev-set photos of tools/eval_devset.py, with flipped and
cropped copies to reach the count), default model, no control maps. Every configuration starts
from an empty folder and is timed from the call to the end (Ray's start-up, actors building
their sessions and the report included). The Ray runs' results.csv must hold the local run's
rows and values exactly, timings aside (bitwise: the actors run onnxruntime on one thread and the
local run on all cores, which changes no bit of this job's values, maps or thumbnails); the
last column says "yes", or how many rows differ and by how much. The actors import swag_onnx
from disk when they start: when its sources changed during the benchmark (another checkout's
edit; a new augmentation code builds a new augmented model, whose gradients may differ in the
last bits) the column says so, and the comparison does not measure --ray. The fixed cost is the
difference of the wall times of `swag-onnx evaluate` on 5 images with and without `--ray`, each
run as its own process (imports included).

    python tools/bench_ray.py                         # the issue's job (slow on 2 cores)
    python tools/bench_ray.py --images 40 --step 1120  # coarser deletion/insertion steps
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

METHODS = ["gradient", "gradient-x-input", "gradcam", "swag"]
METRICS = ["deletion", "insertion"]


def write_images(folder: Path, count: int) -> list[Path]:
    """`count` PNG files: the dev-set photos, then their mirror images, centre crops (80 %)
    and mirrored crops."""
    from eval_devset import photos

    from swag_onnx import images as imgs

    base = photos()
    variants = [("", lambda a: a), ("flip", lambda a: a[:, ::-1]),
                ("crop", _crop), ("flipcrop", lambda a: _crop(a[:, ::-1]))]
    paths = []
    for suffix, make in variants:
        for name, rgb in base:
            if len(paths) == count:
                return paths
            path = folder / f"{name}{'-' + suffix if suffix else ''}.png"
            imgs.write_png(path, np.ascontiguousarray(make(rgb)))
            paths.append(path)
    if len(paths) < count:
        raise SystemExit(f"only {len(paths)} images can be made; ask for fewer")
    return paths


def _crop(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    dy, dx = h // 10, w // 10
    return rgb[dy:h - dy, dx:w - dx]


def timed_evaluate(images: Path, out: Path, workers: int | None, options: dict) -> float:
    """Seconds of one evaluate call (workers None: the local path)."""
    from swag_onnx import distributed
    from swag_onnx import evaluate as ev

    start = time.perf_counter()
    if workers is None:
        ev.evaluate([images], METHODS, METRICS, out, controls=False, **options)
    else:
        distributed.evaluate([images], METHODS, METRICS, out, controls=False, workers=workers,
                             **options)
    return time.perf_counter() - start


def rows(out: Path) -> list[tuple]:
    """results.csv without the timings."""
    with open(out / "results.csv", newline="") as f:
        return [tuple(v for k, v in r.items() if k != "seconds") for r in csv.DictReader(f)]


VALUE = 5  # the value's place in a row of `rows` (image, method, metric, target, label, value)


def agreement(found: list[tuple], reference: list[tuple]) -> str:
    """"yes" when the rows are those of the reference, in its order, with the same values
    written; else what differs: other keys or labels, or how many values and by how much."""
    if found == reference:
        return "yes"
    keys = [[v for i, v in enumerate(r) if i != VALUE] for r in found]
    if keys != [[v for i, v in enumerate(r) if i != VALUE] for r in reference]:
        return f"NO: other rows ({len(found)} rows, {len(reference)} locally)"
    values = np.array([[float(a[VALUE]), float(b[VALUE])] for a, b in zip(found, reference)])
    differ = values[:, 0] != values[:, 1]
    return (f"NO: {differ.sum()} of {len(found)} values differ, max abs "
            f"{np.abs(values[:, 0] - values[:, 1]).max():.2g}")


def sources() -> str:
    """sha256 of swag_onnx's Python sources (the code the actors import when they start)."""
    import swag_onnx

    digest = hashlib.sha256()
    for path in sorted(Path(swag_onnx.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cli_seconds(images: list[Path], out: Path, extra: list[str], options: list[str]) -> float:
    """Wall seconds of `swag-onnx evaluate` as its own process."""
    command = [sys.executable, "-c", "from swag_onnx.cli import main; main()", "evaluate",
               *map(str, images), "--out",
               str(out), "--no-controls", *options, *extra]
    for m in METHODS:
        command += ["--method", m]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--short", type=int, default=5, help="images of the --ray cost run")
    parser.add_argument("--step", type=int, default=None, help="deletion/insertion pixels "
                        "per step (default: the metrics' default)")
    args = parser.parse_args()
    options = {} if args.step is None else {"step": args.step}
    flags = [] if args.step is None else ["--step", str(args.step)]
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        paths = write_images(tmp / "images", args.images)
        print(f"{len(paths)} images, methods {', '.join(METHODS)}, metrics "
              f"{', '.join(METRICS)}, step {args.step or 'default'}", flush=True)
        print("| run | seconds | images per minute | same rows as local |")
        print("|---|---|---|---|")
        reference, code = None, sources()
        for label, workers in (("local", None), ("Ray, 1 worker", 1), ("Ray, 2 workers", 2)):
            out = tmp / label.replace(" ", "").replace(",", "")
            seconds = timed_evaluate(tmp / "images", out, workers, options)
            found = rows(out)
            reference = reference or found
            same = agreement(found, reference)
            if sources() != code:
                same += " (swag_onnx's sources changed since the local run: not comparable)"
            print(f"| {label} | {seconds:.1f} | {len(paths) * 60 / seconds:.1f} | {same} |",
                  flush=True)
        short = paths[:args.short]
        local = cli_seconds(short, tmp / "short-local", [], flags)
        ray = cli_seconds(short, tmp / "short-ray", ["--ray"], flags)
        print(f"\n`swag-onnx evaluate` on {len(short)} images: {local:.1f} s locally, "
              f"{ray:.1f} s with --ray: a fixed cost of {ray - local:.1f} s", flush=True)


if __name__ == "__main__":
    main()
