"""Pointing game (Zhang et al., EBP, 2016) as benchmarked in TorchRay (Fong, Vedaldi et al.).

Protocol (TorchRay ``benchmark/pointing_game.py`` and ``examples/attribution_benchmark.py``):

- The map is at the ORIGINAL image size (H0, W0). Its point is the argmax; ties go to the first
  maximum in row-major order (``np.argmax`` on the flattened map, as ``torch.argmax``).
- The ground truth of a class is the union of the pixels of its boxes, clipped to the image.
- Hit: some ground-truth pixel (column u, row v) lies STRICTLY within ``tolerance`` (default
  ``TOLERANCE`` = 15) pixels of the point (px, py): ``(u - px)^2 + (v - py)^2 < tolerance^2``;
  so a pixel exactly 15 px away does not count, and the point inside a box is always a hit.
- Boxes: ``(x0, y0, x1, y1)`` in original pixels, 0-based and half-open: the box covers
  columns ``x0 <= u < x1`` and rows ``y0 <= v < y1`` (for non-integer corners: every pixel the
  box touches, columns ``floor(x0) .. ceil(x1) - 1``). PASCAL VOC XML (1-based, inclusive) is
  converted on reading: ``x0 = xmin - 1, x1 = xmax`` (TorchRay's mask ``[xmin - 1, xmax]``).
- VOC "difficult" objects are kept in the ground truth, but a class whose boxes are all difficult
  is skipped (``boxes_by_class`` leaves it out), as TorchRay does.
- Accuracy: per class hits / trials; the reported number is the mean of the per-class accuracies
  over the classes that had at least one trial (TorchRay averages over the dataset's fixed class
  list, the same on VOC and COCO where every class occurs). The overall hit rate is reported too.

Annotation files (``load_annotations``), mapping an image file name (basename) to its boxes:
(a) a folder of PASCAL VOC XML files (``*.xml``, not recursive) or one such file:
``<filename>``, and per ``<object>``: ``<name>``, optional ``<difficult>``, and ``<bndbox>`` with
``xmin ymin xmax ymax``;
(b) a CSV file with a header naming the columns ``image,class,x0,y0,x1,y1`` (any order, optional
``difficult``); (c) a JSON file, either a list of objects with those keys or
``{image: [{class, x0, y0, x1, y1}, ...]}``. Errors raise ``BadInputError`` naming the file and the
CSV line, the XML object or the JSON index. XML is parsed by defusedxml with DTDs forbidden:
a DOCTYPE or ENTITY declaration is refused (no entity expansion, no external references).
"""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import defusedxml
import defusedxml.ElementTree as DET
import numpy as np

from swag_onnx.errors import BadInputError

TOLERANCE = 15  # pixels, at the original image size
CSV_COLUMNS = ("image", "class", "x0", "y0", "x1", "y1")

__all__ = [
    "Box",
    "boxes_by_class",
    "load_annotations",
    "pointing_accuracy",
    "pointing_hit",
    "saliency_point",
]


@dataclass(frozen=True)
class Box:
    """One ground-truth box: class name, corners (0-based, x1 / y1 exclusive), VOC difficult."""

    class_name: str
    x0: float
    y0: float
    x1: float
    y1: float
    difficult: bool = False

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)


# ---------------------------------------------------------------------------------------- the game

def saliency_point(saliency: np.ndarray) -> tuple[int, int]:
    """(x, y) = (column, row) of the maximum of an (H, W) map; ties: first in row-major order."""
    s = np.asarray(saliency, dtype=np.float64)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"saliency must be a non-empty (H, W) map, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("saliency contains non-finite values")
    row, col = divmod(int(np.argmax(s)), s.shape[1])
    return col, row


def box_array(boxes) -> np.ndarray:
    """(M, 4) array or sequence of Box -> float64 (M, 4), checked."""
    if len(boxes) and isinstance(boxes[0], Box):
        boxes = [b.xyxy for b in boxes]
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim == 1 and b.size == 4:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4 or not np.all(np.isfinite(b)):
        raise ValueError(f"boxes must be finite (M, 4) x0, y0, x1, y1, got shape {b.shape}")
    if np.any(b[:, 2] <= b[:, 0]) or np.any(b[:, 3] <= b[:, 1]):
        raise ValueError("boxes need x1 > x0 and y1 > y0")
    return b


def pointing_hit(saliency: np.ndarray, boxes, tolerance: float = TOLERANCE) -> bool:
    """Whether the argmax of ``saliency`` (H0, W0), at the original image size, lies strictly
    within ``tolerance`` px of a pixel of ``boxes``: (M, 4) x0, y0, x1, y1 in original pixels
    (half-open), or a sequence of Box. No boxes (or none inside the image): False."""
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    px, py = saliency_point(saliency)
    h, w = np.shape(saliency)
    b = box_array(boxes)
    # pixel index ranges covered by each box, clipped to the image (inclusive ends)
    c0, r0 = np.maximum(np.floor(b[:, 0]), 0), np.maximum(np.floor(b[:, 1]), 0)
    c1, r1 = np.minimum(np.ceil(b[:, 2]) - 1, w - 1), np.minimum(np.ceil(b[:, 3]) - 1, h - 1)
    valid = (c0 <= c1) & (r0 <= r1)
    dx = np.maximum(np.maximum(c0 - px, px - c1), 0)[valid]  # to the nearest covered column
    dy = np.maximum(np.maximum(r0 - py, py - r1), 0)[valid]
    return bool(np.any(dx ** 2 + dy ** 2 < float(tolerance) ** 2))


def boxes_by_class(boxes: Sequence[Box]) -> dict[str, np.ndarray]:
    """{class name: float64 (M, 4) boxes} for the classes of one image to be scored: every box of
    a class (difficult ones included), leaving out a class whose boxes are all difficult."""
    out: dict[str, list] = {}
    for box in boxes:
        out.setdefault(box.class_name, []).append(box)
    return {name: np.array([b.xyxy for b in group], np.float64)
            for name, group in sorted(out.items()) if not all(b.difficult for b in group)}


def pointing_accuracy(hits: Iterable[tuple[str, bool]]) -> dict:
    """Summary of (class name, hit) pairs (a hit of None is skipped).

    Returns {"accuracy": mean of the per-class accuracies (the reported number; NaN if empty),
    "hit_rate": hits / trials over all pairs, "hits": int, "trials": int,
    "per_class": {class: accuracy}, "per_class_trials": {class: trials}}.
    """
    counts: dict[str, list[int]] = {}
    for name, hit in hits:
        if hit is None:
            continue
        c = counts.setdefault(str(name), [0, 0])
        c[0] += bool(hit)
        c[1] += 1
    per_class = {k: v[0] / v[1] for k, v in sorted(counts.items())}
    total_hits = sum(v[0] for v in counts.values())
    trials = sum(v[1] for v in counts.values())
    return {"accuracy": float(np.mean(list(per_class.values()))) if per_class else math.nan,
            "hit_rate": total_hits / trials if trials else math.nan,
            "hits": total_hits, "trials": trials, "per_class": per_class,
            "per_class_trials": {k: v[1] for k, v in sorted(counts.items())}}


# ------------------------------------------------------------------------------------- the readers

def _number(value, where: str, field: str) -> float:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise BadInputError(f"{where}: {field} is not a number: {value!r}")
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise BadInputError(f"{where}: {field} is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise BadInputError(f"{where}: {field} is not finite: {value!r}")
    return number


def _flag(value, where: str) -> bool:
    text = str(value).strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise BadInputError(f"{where}: difficult must be 0/1 or true/false, got {value!r}")


def _box(name, x0, y0, x1, y1, difficult, where: str) -> Box:
    name = "" if name is None else str(name).strip()
    if not name:
        raise BadInputError(f"{where}: the class name is missing or empty")
    coords = [_number(v, where, f) for v, f in zip((x0, y0, x1, y1), ("x0", "y0", "x1", "y1"))]
    if coords[2] <= coords[0]:
        raise BadInputError(f"{where}: x1 ({coords[2]:g}) must be greater than x0 ({coords[0]:g})")
    if coords[3] <= coords[1]:
        raise BadInputError(f"{where}: y1 ({coords[3]:g}) must be greater than y0 ({coords[1]:g})")
    return Box(name, *coords, difficult=_flag(difficult, where))


def _image_key(value, where: str) -> str:
    text = "" if value is None else str(value).strip()
    key = text.replace("\\", "/").rsplit("/", 1)[-1]
    if not key:
        raise BadInputError(f"{where}: the image name is missing or empty")
    return key


def _read_xml(path: Path, out: dict[str, list[Box]]) -> None:
    try:
        root = DET.fromstring(path.read_bytes(), forbid_dtd=True, forbid_entities=True,
                              forbid_external=True)
    except defusedxml.DefusedXmlException:
        raise BadInputError(f"{path}: DOCTYPE/ENTITY declarations are not accepted in annotations "
                            "(remove the <!DOCTYPE ...> block)") from None
    except ET.ParseError as exc:
        raise BadInputError(f"{path} line {exc.position[0]}: not well-formed XML ({exc})") from None
    if root.tag != "annotation":
        raise BadInputError(f"{path}: the root element is <{root.tag}>, expected <annotation>")
    key = _image_key(root.findtext("filename"), f"{path}: <filename>")
    boxes = out.setdefault(key, [])
    for i, obj in enumerate(root.findall("object"), start=1):
        where = f"{path}: <object> #{i}"
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise BadInputError(f"{where}: no <bndbox>")
        values = {}
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = bndbox.findtext(tag)
            if text is None:
                raise BadInputError(f"{where}: <bndbox> has no <{tag}>")
            values[tag] = _number(text, where, f"<bndbox>/<{tag}>")
        if values["xmax"] < values["xmin"] or values["ymax"] < values["ymin"]:
            raise BadInputError(f"{where}: <bndbox> has xmax < xmin or ymax < ymin")
        # VOC: 1-based inclusive -> 0-based half-open
        boxes.append(_box(obj.findtext("name"), values["xmin"] - 1, values["ymin"] - 1,
                          values["xmax"], values["ymax"], obj.findtext("difficult") or "0", where))


def _read_csv(path: Path, out: dict[str, list[Box]]) -> None:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise BadInputError(f"{path}: empty file, expected a header {','.join(CSV_COLUMNS)}")
        names = [h.strip().lower() for h in header]
        missing = [c for c in CSV_COLUMNS if c not in names]
        if missing:
            raise BadInputError(f"{path} line {reader.line_num}: missing column(s) "
                                f"{', '.join(missing)} (the header must name "
                                f"{','.join(CSV_COLUMNS)})")
        index = {c: names.index(c) for c in CSV_COLUMNS + ("difficult",) if c in names}
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            where = f"{path} line {reader.line_num}"
            if len(row) != len(names):
                raise BadInputError(f"{where}: {len(row)} fields, the header has {len(names)}")
            get = {c: row[i] for c, i in index.items()}
            out.setdefault(_image_key(get["image"], where), []).append(
                _box(get["class"], get["x0"], get["y0"], get["x1"], get["y1"],
                     get.get("difficult", "0"), where))


def _json_box(item, where: str, keys: tuple[str, ...]) -> Box:
    if not isinstance(item, dict):
        raise BadInputError(f"{where}: expected an object with keys {', '.join(keys)}")
    missing = [k for k in keys if k not in item]
    if missing:
        raise BadInputError(f"{where}: missing key(s) {', '.join(missing)}")
    return _box(item["class"], item["x0"], item["y0"], item["x1"], item["y1"],
                item.get("difficult", False), where)


def _read_json(path: Path, out: dict[str, list[Box]]) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, list):
        for i, item in enumerate(data):
            where = f"{path} [{i}]"
            box = _json_box(item, where, CSV_COLUMNS)
            out.setdefault(_image_key(item["image"], where), []).append(box)
    elif isinstance(data, dict):
        for image, items in data.items():
            where = f"{path} [{image!r}]"
            if not isinstance(items, list):
                raise BadInputError(f"{where}: expected a list of boxes")
            boxes = out.setdefault(_image_key(image, where), [])
            boxes.extend(_json_box(item, f"{where}[{i}]", CSV_COLUMNS[1:])
                         for i, item in enumerate(items))
    else:
        raise BadInputError(f"{path}: expected a list of boxes or an object {{image: [boxes]}}")


def load_annotations(path) -> dict[str, list[Box]]:
    """{image file name (basename): [Box, ...]} from a folder of VOC XML files, one XML file, one
    CSV file or one JSON file (see the module docstring); BadInputError when missing/malformed."""
    path = Path(path)
    out: dict[str, list[Box]] = {}
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
            if not files:
                raise BadInputError(f"{path}: no .xml annotation files in this folder")
            for file in files:
                _read_xml(file, out)
        elif not path.is_file():
            raise BadInputError(f"{path}: annotation file or folder not found")
        elif path.suffix.lower() == ".xml":
            _read_xml(path, out)
        elif path.suffix.lower() == ".csv":
            _read_csv(path, out)
        elif path.suffix.lower() == ".json":
            _read_json(path, out)
        else:
            raise BadInputError(f"{path}: unknown annotation format (expected a folder of .xml "
                                "files, or a .xml, .csv or .json file)")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: cannot read annotations ({exc})") from None
    return out
