"""Build a localisation benchmark with known boxes, offline: objects pasted onto backgrounds.

    python tools/make_composites.py --out composites --count 40 --seed 0
    swag-onnx evaluate composites --annotations composites/boxes.csv --metric pointing ...
    python tools/make_composites.py --out hard --count 120 --scale 0.45 0.65 --avoid-center

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

Harder composites (all off by default, so the defaults draw exactly what they drew before):

- ``--scale LO HI``: the object's longer side is a uniform draw in [LO, HI] times the shorter
  side of the model's view (e.g. ``--scale 0.25 0.45``), instead of its size in the photo.
- ``--avoid-center``: the box keeps its pixels at least ``TOLERANCE`` (the pointing game's
  15 px) plus one pixel away from the centre of the model's view, so a map that peaks at the
  centre (the ``center`` control) misses by construction.
- ``--distractors N``: N other objects, of N classes other than the target's and each other's,
  are pasted by the same size rule inside the model's view, each at least ``TOLERANCE`` pixels
  clear of the target box and of each other (so a map peaking on a distractor misses the target
  box). ``boxes.csv`` keeps the target's box only; composites.json lists the distractors.
  Positions are redrawn up to ``PLACE_TRIES`` times; a draw with no room is rejected.

On the default model (EfficientNet-Lite0) these objects are rarely recognised below about half
the view on these backgrounds: with the study's 5 objects, ``--scale 0.25 0.45 --avoid-center``
had the object's class as top-1 in 0 of 16 composites, ``--scale 0.45 0.65 --avoid-center`` in
17 of 107 (15.9 %; 120 draws, seed 0), and with ``--distractors 1`` in 5 of 92 (16 in the
top-5). Draw more (``--count``) to keep enough.

``swag-onnx evaluate --annotations boxes.csv`` explains, for pointing and energy, the class of
the CSV's class column (swag_onnx.evaluate: "each annotated class for the pointing game"), not
the top-1; the other metrics explain the top-1. ``--keep top1`` (default) keeps the composites
whose top-1 is the pasted object's class; ``--keep top5`` those where it is among the model's
top-5 (useful with distractors, which compete for the top-1). Both rates are printed and stored.

The tool prints how often the model's top-1 on the composite is the pasted object's class (the
class rate) and keeps only those composites (or, with ``--keep top5``, those with the class in
the top-5): ``composite_NNN.png`` (N = the draw number, so gaps
show the rejected ones), ``boxes.csv`` and ``composites.json`` (every draw: object, background,
box, top-1, its rank in the top-5, kept; the objects' crops and the settings). Everything is drawn
from ``numpy.random.default_rng(--seed)``: the same seed, model, photos and options give
identical files (the harder options draw nothing when off). The photo list of eval_devset.py grew
from 11 to 24 photos after the study's composites were made, which adds objects (clock, moon,
text, logo, motorcycle-right) and so changes the draws: that set (seed 0, 40 draws) is rebuilt
byte for byte with ``--photo chelsea --photo coffee --photo rocket --photo motorcycle --photo
camera``. Writes are atomic (swag_onnx.images helpers).
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

from swag_onnx.metrics.pointing import TOLERANCE

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
PLACE_TRIES = 200  # random positions tried for a box under --avoid-center / --distractors
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


@dataclass(frozen=True)
class Layout:
    """The harder-composite options (module docstring): scale range (fraction of the view's
    shorter side, or None: the photo's size times SCALE_JITTER), avoid the centre, distractors."""

    scale: tuple[float, float] | None = None
    avoid_center: bool = False
    distractors: int = 0


def _object_size(rng, obj: Obj, region, canvas_scale: float, layout: Layout
                 ) -> tuple[tuple[int, int], bool]:
    """((width, height) in canvas pixels of the pasted object (module docstring), fitting
    region (x0, y0, x1, y1); whether that shrinks the object's crop)."""
    rx0, ry0, rx1, ry1 = region
    oh, ow = obj.rgb.shape[:2]
    if layout.scale is None:
        scale = rng.uniform(*SCALE_JITTER) * obj.view_scale / canvas_scale
    else:
        scale = rng.uniform(*layout.scale) * min(rx1 - rx0, ry1 - ry0) / max(oh, ow)
    scale = min(scale, (rx1 - rx0) / ow, (ry1 - ry0) / oh)
    return (max(1, round(ow * scale)), max(1, round(oh * scale))), scale < 1


def box_near_point(box, point, tolerance: float) -> bool:
    """Whether a pixel of the half-open box (x0, y0, x1, y1) lies within ``tolerance`` px
    (Euclidean, inclusive) of point (x, y): the pointing game's rule, with a margin."""
    x0, y0, x1, y1 = box
    dx = max(x0 - point[0], point[0] - (x1 - 1), 0)
    dy = max(y0 - point[1], point[1] - (y1 - 1), 0)
    return dx * dx + dy * dy <= tolerance * tolerance


def boxes_clear(a, b, gap: float) -> bool:
    """Whether boxes a and b (x0, y0, x1, y1, half-open) are at least ``gap`` px apart along x
    or along y (a distractor never within the pointing tolerance of the target's box)."""
    return (a[2] - 1 + gap < b[0] or b[2] - 1 + gap < a[0]
            or a[3] - 1 + gap < b[1] or b[3] - 1 + gap < a[1])


def _place(rng, region, size: tuple[int, int], allowed) -> tuple | None:
    """A random box of this (width, height) inside region that ``allowed(box)`` accepts (up to
    PLACE_TRIES draws; the first draw is the only one without constraints), or None."""
    rx0, ry0, rx1, ry1 = region
    nw, nh = size
    for _ in range(PLACE_TRIES):
        x0 = int(rng.integers(rx0, rx1 - nw + 1))
        y0 = int(rng.integers(ry0, ry1 - nh + 1))
        box = (x0, y0, x0 + nw, y0 + nh)
        if allowed(box):
            return box
    return None


def _paste(canvas: np.ndarray, obj: Obj, box, shrink: bool) -> np.ndarray:
    """The canvas with the object resized into box (x0, y0, x1, y1) (a copy)."""
    x0, y0, x1, y1 = box
    out = canvas.copy()
    out[y0:y1, x0:x1] = cv2.resize(obj.rgb, (x1 - x0, y1 - y0),
                                   interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out


def _layout(rng, canvas, obj: Obj, objects: list[Obj], region, canvas_scale: float,
            layout: Layout):
    """(composite, target box, [distractor dicts]) or (None, reason, []) when no room."""
    centre = ((region[0] + region[2] - 1) / 2, (region[1] + region[3] - 1) / 2)
    allowed = ((lambda b: not box_near_point(b, centre, TOLERANCE + 1)) if layout.avoid_center
               else (lambda b: True))
    size, shrink = _object_size(rng, obj, region, canvas_scale, layout)
    box = _place(rng, region, size, allowed)
    if box is None:
        return None, "no room away from the centre", []
    composite, taken, placed = _paste(canvas, obj, box, shrink), [box], []
    for other in _distractor_objects(rng, obj, objects, layout.distractors):
        size, shrink = _object_size(rng, other, region, canvas_scale, layout)
        where = _place(rng, region, size,
                       lambda b: all(boxes_clear(b, t, TOLERANCE) for t in taken))
        if where is None:
            return None, "no room for the distractors", []
        composite = _paste(composite, other, where, shrink)
        taken.append(where)
        placed.append({"object": other.photo, "class": other.label, "index": other.index,
                       "box": where})
    return composite, box, placed


def _distractor_objects(rng, obj: Obj, objects: list[Obj], n: int) -> list[Obj]:
    """n objects of distinct classes other than obj's (one per class, drawn at random)."""
    if n == 0:
        return []
    by_class = {}
    for o in objects:
        if o.index != obj.index:
            by_class.setdefault(o.index, []).append(o)
    classes = sorted(by_class)
    picked = rng.permutation(len(classes))[:n]
    return [by_class[classes[i]][int(rng.integers(len(by_class[classes[i]])))] for i in picked]


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
         photo_names=None, layout: Layout = Layout(), keep: str = "top1", log=print) -> dict:
    """Build the composites into ``out`` (module docstring); returns the summary written to
    composites.json."""
    from eval_devset import photos as devset_photos

    from swag_onnx import images as imgs
    from swag_onnx.errors import BadOptionError

    photos = [(n, p) for n, p in devset_photos() if not photo_names or n in photo_names]
    log(f"objects (top-1 probability >= {confidence}, tightest confident crop):")
    objects = find_objects(explainer, photos, confidence, log)
    if not objects:
        raise SystemExit("no photo is classified confidently enough; lower --confidence")
    if layout.distractors > len({o.index for o in objects}) - 1:
        raise BadOptionError(f"--distractors {layout.distractors}: only "
                             f"{len({o.index for o in objects})} object classes found")
    rng = np.random.default_rng(seed)
    scenes, region = backgrounds(), visible_region(explainer.card, size)
    canvas_scale = view_scale(explainer.card, (size, size))
    draws, rows = [], []
    for i in range(count):
        obj = objects[int(rng.integers(len(objects)))]
        draw = _draw(explainer, rng, scenes, obj, objects, region, canvas_scale, size,
                     background_max, layout, keep)
        composite = draw.pop("composite", None)
        draws.append({"draw": i, "object": obj.photo, **draw})
        if draw["kept"]:
            name = f"composite_{i:03d}.png"
            imgs.write_png(out / name, composite)
            rows.append([name, class_column(explainer.card, obj.index), *draw["box"]])
    summary = _summary(seed, size, confidence, background_max, region, objects, layout, keep,
                       draws)
    _write_csv(out / "boxes.csv", rows)
    imgs.write_json(out / "composites.json", summary)
    log(f"class rate: {summary['top1']}/{summary['made']} composites have the pasted object's "
        f"class as top-1 ({summary['class_rate']:.1%}), {summary['top5']} among the top-5 "
        f"({summary['top5_rate']:.1%}); kept {summary['kept']} ({keep}) in {out}")
    return summary


def _draw(explainer, rng, scenes, obj: Obj, objects, region, canvas_scale, size,
          background_max, layout: Layout, keep: str) -> dict:
    """One draw: its composites.json entry, with "composite" (uint8 RGB) when one was made."""
    chosen = _background_for(explainer, rng, scenes, obj, size, background_max)
    if chosen is None:
        return {"kept": False, "reason": "no background without the class"}
    composite, box, distractors = _layout(rng, chosen[1], obj, objects, region, canvas_scale,
                                          layout)
    if composite is None:
        return {"class": obj.label, "background": chosen[0], "kept": False, "reason": box}
    top5 = explainer.predict([composite])[0].top5
    rank = next((k for k, t in enumerate(top5) if t["index"] == obj.index), None)
    kept = rank == 0 if keep == "top1" else rank is not None
    entry = {"class": obj.label, "background": chosen[0], "box": box, "top1": top5[0],
             "rank": rank, "kept": kept, "composite": composite}
    if layout.distractors:
        entry["distractors"] = distractors
    return entry


def _summary(seed, size, confidence, background_max, region, objects, layout: Layout, keep,
             draws) -> dict:
    """composites.json: settings, objects, counts and rates, every draw."""
    made = [d for d in draws if "top1" in d]
    top1_count = sum(d["rank"] == 0 for d in made)
    top5_count = sum(d["rank"] is not None for d in made)
    rate = lambda k: k / len(made) if made else math.nan  # noqa: E731
    return {"seed": seed, "size": size, "confidence": confidence,
            "background_max": background_max, "visible_region": region,
            "scale": list(layout.scale) if layout.scale else None,
            "avoid_center": layout.avoid_center, "distractors": layout.distractors,
            "keep": keep,
            "objects": [{"photo": o.photo, "class": o.label, "index": o.index,
                         "crop": o.crop, "probability": round(o.probability, 4)}
                        for o in objects],
            "made": len(made), "kept": sum(d["kept"] for d in draws),
            "top1": top1_count, "top5": top5_count,
            "class_rate": rate(top1_count), "top5_rate": rate(top5_count), "draws": draws}


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
    parser.add_argument("--scale", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                        help="object's longer side: a uniform draw in [LO, HI] times the "
                             "model view's side (default: its size in the photo)")
    parser.add_argument("--avoid-center", action="store_true",
                        help="boxes keep clear of the model view's centre (pointing tolerance)")
    parser.add_argument("--distractors", type=int, default=0,
                        help="other objects (other classes) pasted clear of the target box")
    parser.add_argument("--keep", choices=("top1", "top5"), default="top1",
                        help="keep composites whose top-1 is the object's class (default) or "
                             "whose top-5 contains it")
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 2 * MIN_SIDE or not 0 < args.confidence <= 1:
        parser.error("--count must be >= 1, --size >= 64, --confidence in (0, 1]")
    if args.scale and not 0 < args.scale[0] <= args.scale[1] <= 1:
        parser.error("--scale LO HI needs 0 < LO <= HI <= 1")
    if args.distractors < 0:
        parser.error("--distractors must be >= 0")
    from swag_onnx import Explainer
    from swag_onnx.errors import SwagError

    layout = Layout(tuple(args.scale) if args.scale else None, args.avoid_center,
                    args.distractors)
    try:
        explainer = Explainer(args.model)
        make(explainer, args.out, args.count, args.seed, size=args.size,
             confidence=args.confidence, background_max=args.background_max,
             photo_names=args.photo, layout=layout, keep=args.keep)
    except SwagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
