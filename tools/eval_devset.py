"""Evaluate saliency methods on a small offline dev set of sample photos (no network).

Writes 24 sample photos that ship with the libraries (no download): scikit-image's astronaut,
chelsea, coffee, rocket, motorcycle (left view of stereo_motorcycle), camera (grey, as RGB),
hubble (hubble_deep_field), immunohistochemistry and brick (grey), scikit-learn's china and
flower (sklearn.datasets.load_sample_images), then scikit-image's retina, clock, coins, moon,
page, text, grass, gravel, horse (a silhouette), logo (its RGB), colorwheel, cell and
motorcycle-right (right view of stereo_motorcycle), as PNG files into
``--images`` (default ./devset-images), then runs ``swag-onnx evaluate`` on them with the default
model, every method (``--method`` to choose) and the metrics deletion, insertion, sic, aic and
class-sensitivity, into ``--out`` (default ./devset-eval). A rerun resumes where the last one
stopped (see swag_onnx.evaluate).

    python tools/eval_devset.py                                   # everything (slow: LIME, RISE)
    python tools/eval_devset.py --limit 2 --method gradient --method gradcam --out /tmp/dev
    python tools/eval_devset.py -- --step 448 --pic-reveal paste  # more evaluate options after --
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

METRICS = ("deletion", "insertion", "sic", "aic", "class-sensitivity")


def photos() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 RGB) of the offline sample photos (24 with scikit-learn installed), in a
    fixed order (see the module docstring)."""
    from skimage import data

    found = [("astronaut", data.astronaut()), ("chelsea", data.chelsea()),
             ("coffee", data.coffee()), ("rocket", data.rocket()),
             ("motorcycle", data.stereo_motorcycle()[0]), ("camera", data.camera()),
             ("hubble", data.hubble_deep_field()),
             ("immunohistochemistry", data.immunohistochemistry()), ("brick", data.brick())]
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        print("scikit-learn is not installed: its sample photos (china, flower) are left out",
              file=sys.stderr)
    else:
        sample = load_sample_images()
        found += [(Path(f).stem, np.ascontiguousarray(i, np.uint8))
                  for f, i in zip(sample.filenames, sample.images)]
    # added later, so that --limit N keeps choosing the same first photos
    found += [(name, getattr(data, name)()) for name in (
        "retina", "clock", "coins", "moon", "page", "text", "grass", "gravel")]
    found += [("horse", np.where(data.horse(), 255, 0).astype(np.uint8)), ("logo", data.logo()),
              ("colorwheel", data.colorwheel()), ("cell", data.cell()),
              ("motorcycle-right", data.stereo_motorcycle()[1])]
    return [(name, rgb[:, :, :3] if rgb.ndim == 3 else np.stack([rgb] * 3, -1))
            for name, rgb in found]


def write_photos(folder: Path, limit: int | None = None) -> list[Path]:
    from swag_onnx import images as imgs

    paths = []
    for name, rgb in photos()[:limit]:
        path = folder / f"{name}.png"
        if not path.exists():
            imgs.write_png(path, np.ascontiguousarray(rgb, np.uint8))
        paths.append(path)
    return paths


def main(argv=None) -> int:
    from swag_onnx.cli import app
    from swag_onnx.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("devset-images"))
    parser.add_argument("--out", type=Path, default=Path("devset-eval"))
    parser.add_argument("--method", action="append", help=f"default: all of {METHODS}")
    parser.add_argument("--metric", action="append", help=f"default: {METRICS}")
    parser.add_argument("--limit", type=int, help="only the first N photos")
    parser.add_argument("extra", nargs="*", help="more swag-onnx evaluate options (after --)")
    args = parser.parse_args(argv)
    paths = write_photos(args.images, args.limit)
    print(f"{len(paths)} photos in {args.images}/", file=sys.stderr)
    command = ["evaluate", *map(str, paths), "--out", str(args.out)]
    for method in args.method or METHODS:
        command += ["--method", method]
    for metric in args.metric or METRICS:
        command += ["--metric", metric]
    try:
        app(command + list(args.extra), prog_name="swag-onnx")
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
