"""Build a localisation benchmark with known boxes, offline: objects pasted onto backgrounds.

    python tools/make_composites.py --out composites --count 40 --seed 0
    swag-onnx evaluate composites --annotations composites/boxes.csv --metric pointing ...

Objects: the photos that ship with scikit-image and scikit-learn (``tools/eval_devset.py``'s
list) that the model classifies confidently: top-1 probability at least ``--confidence``
(default 0.3); the object's class is that top-1 class. Each object region is the tightest crop
the model still gives that class as top-1 with at least ``--confidence`` and at least the
probability of the whole photo (a region never less convincing than the photo), found by the model with
a greedy search on the photo with everything outside the candidate region set to grey (so the
region keeps its own scale and place, without its context): starting from the whole photo,
each step tries trimming one side by ``TRIM`` (10 %) of the region's size, keeps the accepted trim with the highest probability, and stops
when no trim is accepted or a side would fall below ``MIN_SIDE`` pixels.

Backgrounds: scikit-image's textures (brick, grass, gravel) and scenes (moon, Hubble deep field,
immunohistochemistry, coins, cell, retina); a random square part of one is resized to the
``--size`` canvas (default 320). A background is used for an object only when the model does not
confuse it with the object's class: its probability of that class on the bare canvas is below
``--background-max`` (default 0.01) and it is not the top-1 class; otherwise another draw.

Composite: the object region, resized so that the model sees it at the size it saw it in the
photo times a random ``SCALE_JITTER`` (0.8 .. 1.25), shrunk if needed to fit; pasted as a rectangle
at a random position inside the part of the canvas the model sees (the model card's resize and centre
crop), so the box is both inside the image and inside the model's view. The box is that
rectangle: ``x0, y0, x1, y1`` 0-based, half-open, in canvas pixels (the CSV format of
``swag_onnx.metrics.pointing.load_annotations``). The class column holds the class name, or the
class index when the model has two classes of that name (ImageNet's "crane", "maillot").

The tool prints how often the model's top-1 on the composite is the pasted object's class (the
class rate) and keeps only those composites: ``composite_NNN.png`` (N = the draw number, so gaps
show the rejected ones), ``boxes.csv`` and ``composites.json`` (every draw: object, background,
box, top-1, kept; the objects' crops and the settings). Everything is drawn from
``numpy.random.default_rng(--seed)``: the same seed and model give identical files. Writes are
atomic (swag_onnx.images helpers).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # eval_devset: the photo list

CONFIDENCE = 0.3
BACKGROUND_MAX = 0.01
SIZE = 320
TRIM = 0.1  # fraction of the crop's side trimmed per greedy step
MIN_SIDE = 32  # pixels of the photo: no object region thinner than this
FILL = 128  # grey outside a candidate region
SCALE_JITTER = (0.8, 1.25)  # object size in the composite / its size in the photo, as the
#                              model sees each (clamped to fit the model's view)
BACKGROUND_TRIES = 20
BACKGROUNDS = ("brick", "grass", "gravel", "moon", "hubble_deep_field", "immunohistochemistry",
               "coins", "cell", "retina")


@dataclass
class Obj:
    """An object region: photo name, class index and label, crop (x0, y0, x1, y1) in the photo,
    the model's probability of the class on the crop, and the crop's pixels (uint8 RGB)."""

    photo: str
    index: int
    label: str
    crop: tuple[int, int, int, int]
    probability: float
    rgb: np.ndarray
    view_scale: float  # model-input pixels per photo pixel


# --------------------------------------------------------------------------------- the model

def top1(explainer, images: list[np.ndarray]) -> list[dict]:
    """The model's top-1 {index, label, probability} of each uint8 RGB image."""
    return [p.top5[0] for p in explainer.predict(images)]


def class_probabilities(explainer, images: list[np.ndarray], index: int) -> np.ndarray:
    """Probability of class ``index`` on each image (from the top-5; 0 when not among them)."""
    return np.array([next((t["probability"] for t in p.top5 if t["index"] == index), 0.0)
                     for p in explainer.predict(images)])


# -------------------------------------------------------------------------------- the objects

def _trims(box: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
    """The boxes with one side moved in by TRIM of that dimension (sides >= MIN_SIDE)."""
    x0, y0, x1, y1 = box
    dx, dy = max(1, round(TRIM * (x1 - x0))), max(1, round(TRIM * (y1 - y0)))
    out = []
    if x1 - x0 - dx >= MIN_SIDE:
        out += [(x0 + dx, y0, x1, y1), (x0, y0, x1 - dx, y1)]
    if y1 - y0 - dy >= MIN_SIDE:
        out += [(x0, y0 + dy, x1, y1), (x0, y0, x1, y1 - dy)]
    return out


def masked(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The photo with everything outside box (x0, y0, x1, y1) set to mid-grey: the region seen
    at its own scale and place, without the context around it."""
    x0, y0, x1, y1 = box
    out = np.full_like(rgb, FILL)
    out[y0:y1, x0:x1] = rgb[y0:y1, x0:x1]
    return out


def tightest_crop(explainer, rgb: np.ndarray, index: int, confidence: float
                  ) -> tuple[tuple[int, int, int, int], float]:
    """Greedy search for the smallest crop (x0, y0, x1, y1) of ``rgb`` whose top-1 is ``index``
    with probability >= max(confidence, the photo's) (module docstring); returns it and that
    probability."""
    h, w = rgb.shape[:2]
    box, best = (0, 0, w, h), float(class_probabilities(explainer, [rgb], index)[0])
    floor = max(confidence, best)  # a region never less convincing than the whole photo
    while True:
        candidates = _trims(box)
        if not candidates:
            return box, best
        tops = top1(explainer, [masked(rgb, c) for c in candidates])
        accepted = [(t["probability"], c) for t, c in zip(tops, candidates)
                    if t["index"] == index and t["probability"] >= floor]
        if not accepted:
            return box, best
        best, box = max(accepted, key=lambda a: a[0])


def find_objects(explainer, photos, confidence: float, log) -> list[Obj]:
    """The photos whose top-1 probability is >= confidence, each with its tightest crop."""
    objects = []
    for (name, rgb), top in zip(photos, top1(explainer, [rgb for _, rgb in photos])):
        if top["probability"] < confidence:
            log(f"  {name}: top-1 {top['label']!r} {top['probability']:.3f} < {confidence}: "
                "not used")
            continue
        (x0, y0, x1, y1), p = tightest_crop(explainer, rgb, top["index"], confidence)
        area = (x1 - x0) * (y1 - y0) / (rgb.shape[0] * rgb.shape[1])
        log(f"  {name}: {top['label']!r} {top['probability']:.3f}; crop {x0},{y0},{x1},{y1} "
            f"({area:.0%} of the photo) {p:.3f}")
        objects.append(Obj(name, int(top["index"]), top["label"], (x0, y0, x1, y1), p,
                           np.ascontiguousarray(rgb[y0:y1, x0:x1]),
                           view_scale(explainer.card, rgb.shape[:2])))
    return objects


# ---------------------------------------------------------------------------- the backgrounds

def backgrounds() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 RGB) of the offline textures and scenes of scikit-image."""
    from skimage import data

    out = []
    for name in BACKGROUNDS:
        image = getattr(data, name)()
        out.append((name, np.ascontiguousarray(
            np.stack([image] * 3, -1) if image.ndim == 2 else image[:, :, :3], np.uint8)))
    return out


def _canvas(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    """A random square part (half to all of the shorter side) of ``image``, resized to size."""
    h, w = image.shape[:2]
    side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    part = image[top:top + side, left:left + side]
    shrink = side >= size
    return cv2.resize(part, (size, size),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def visible_region(card, size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the canvas pixels wholly inside the model's view (resize + crop)."""
    from swag_onnx.images import preprocess

    geometry = preprocess(np.zeros((size, size, 3), np.uint8), card)[1]
    (hr, wr), (h0, w0) = geometry.resized_size, geometry.original_size
    top, left, h, w = geometry.crop_box
    return (math.ceil(left * w0 / wr), math.ceil(top * h0 / hr),
            math.floor((left + w) * w0 / wr), math.floor((top + h) * h0 / hr))


# ------------------------------------------------------------------------------ the composites

def view_scale(card, shape: tuple[int, int]) -> float:
    """Model-input pixels per image pixel for an image of this (H, W) (the card's resize)."""
    from swag_onnx.images import preprocess

    geometry = preprocess(np.zeros(tuple(shape) + (3,), np.uint8), card)[1]
    return geometry.resized_size[0] / geometry.original_size[0]


def _paste(rng, canvas: np.ndarray, obj: Obj, region, canvas_scale: float
           ) -> tuple[np.ndarray, tuple]:
    """The canvas with the object resized and pasted at a random place inside region; the box.
    Size: as the model saw it in the photo times SCALE_JITTER, shrunk to fit the region."""
    rx0, ry0, rx1, ry1 = region
    oh, ow = obj.rgb.shape[:2]
    scale = rng.uniform(*SCALE_JITTER) * obj.view_scale / canvas_scale
    scale = min(scale, (rx1 - rx0) / ow, (ry1 - ry0) / oh)
    nw, nh = max(1, round(ow * scale)), max(1, round(oh * scale))
    x0 = int(rng.integers(rx0, rx1 - nw + 1))
    y0 = int(rng.integers(ry0, ry1 - nh + 1))
    out = canvas.copy()
    out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(
        obj.rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return out, (x0, y0, x0 + nw, y0 + nh)


def _background_for(explainer, rng, scenes, obj: Obj, size: int, threshold: float):
    """A (name, canvas) that the model does not confuse with the object's class, or None."""
    for _ in range(BACKGROUND_TRIES):
        name, image = scenes[int(rng.integers(len(scenes)))]
        canvas = _canvas(rng, image, size)
        top = explainer.predict([canvas])[0].top5
        p = next((t["probability"] for t in top if t["index"] == obj.index), 0.0)
        if top[0]["index"] != obj.index and p < threshold:
            return name, canvas
    return None


def class_column(card, index: int) -> str:
    """The class name for the CSV, or the index when the name is not unique in the model."""
    names = list(card.get("class_names") or [])
    if index < len(names) and sum(n.lower() == names[index].lower() for n in names) == 1:
        return names[index]
    return str(index)


def make(explainer, out: Path, count: int, seed: int, *, size: int = SIZE,
         confidence: float = CONFIDENCE, background_max: float = BACKGROUND_MAX,
         photo_names=None, log=print) -> dict:
    """Build the composites into ``out`` (module docstring); returns the summary written to
    composites.json."""
    from eval_devset import photos as devset_photos

    from swag_onnx import images as imgs

    photos = [(n, p) for n, p in devset_photos() if not photo_names or n in photo_names]
    log(f"objects (top-1 probability >= {confidence}, tightest confident crop):")
    objects = find_objects(explainer, photos, confidence, log)
    if not objects:
        raise SystemExit("no photo is classified confidently enough; lower --confidence")
    rng = np.random.default_rng(seed)
    scenes, region = backgrounds(), visible_region(explainer.card, size)
    canvas_scale = view_scale(explainer.card, (size, size))
    draws, rows = [], []
    for i in range(count):
        obj = objects[int(rng.integers(len(objects)))]
        chosen = _background_for(explainer, rng, scenes, obj, size, background_max)
        if chosen is None:
            draws.append({"draw": i, "object": obj.photo, "kept": False,
                          "reason": "no background without the class"})
            continue
        composite, box = _paste(rng, chosen[1], obj, region, canvas_scale)
        top = top1(explainer, [composite])[0]
        kept = top["index"] == obj.index
        draws.append({"draw": i, "object": obj.photo, "class": obj.label,
                      "background": chosen[0], "box": box, "top1": top, "kept": kept})
        if kept:
            name = f"composite_{i:03d}.png"
            imgs.write_png(out / name, composite)
            rows.append([name, class_column(explainer.card, obj.index), *box])
    made = sum("top1" in d for d in draws)
    kept = len(rows)
    summary = {"seed": seed, "size": size, "confidence": confidence,
               "background_max": background_max, "visible_region": region,
               "objects": [{"photo": o.photo, "class": o.label, "index": o.index,
                            "crop": o.crop, "probability": round(o.probability, 4)}
                           for o in objects],
               "made": made, "kept": kept, "class_rate": kept / made if made else math.nan,
               "draws": draws}
    _write_csv(out / "boxes.csv", rows)
    imgs.write_json(out / "composites.json", summary)
    log(f"class rate: {kept}/{made} composites have the pasted object's class as top-1 "
        f"({summary['class_rate']:.1%}); kept those in {out}")
    return summary


def _write_csv(path: Path, rows) -> None:
    from swag_onnx.files import atomic_write

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "class", "x0", "y0", "x1", "y1"])
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--count", type=int, default=40, help="composites to draw (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None,
                        help="model folder or .onnx file (default: the embedded model)")
    parser.add_argument("--size", type=int, default=SIZE, help="canvas side in pixels")
    parser.add_argument("--confidence", type=float, default=CONFIDENCE,
                        help="least top-1 probability of an object photo and of its crop")
    parser.add_argument("--background-max", type=float, default=BACKGROUND_MAX,
                        help="most probability of the object's class on the bare background")
    parser.add_argument("--photo", action="append", default=None,
                        help="use only these photos (repeatable), e.g. coffee")
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 2 * MIN_SIDE or not 0 < args.confidence <= 1:
        parser.error("--count must be >= 1, --size >= 64, --confidence in (0, 1]")
    from swag_onnx import Explainer
    from swag_onnx.errors import SwagError

    try:
        explainer = Explainer(args.model)
        make(explainer, args.out, args.count, args.seed, size=args.size,
             confidence=args.confidence, background_max=args.background_max,
             photo_names=args.photo)
    except SwagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
