"""The files of an `evaluate` folder: results.csv (appended, resumable) and settings.json.

``results.csv`` has the columns COLUMNS, one row per image, method and metric; rows are appended
and fsynced image by image, and a half-written last line (an interrupted run) is cut off when
the file is read. ``settings.json`` holds the settings the rows depend on; a rerun with other
settings into the same folder is refused.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from swag_onnx.errors import BadOptionError

COLUMNS = ["image", "method", "metric", "target", "label", "value", "seconds", "detail"]
RESULTS, SETTINGS = "results.csv", "settings.json"


def read_results(path: Path) -> list[dict]:
    """The rows of results.csv; a half-written last line (no newline) is cut off the file, and
    unreadable lines are skipped. A file with other columns is refused."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):  # interrupted mid-write: drop the partial line
        data = data[:data.rfind(b"\n") + 1]
        os.truncate(path, len(data))
    if not data:
        return []
    reader = csv.DictReader(io.StringIO(data.decode("utf-8", errors="replace")))
    if reader.fieldnames != COLUMNS:
        raise BadOptionError(f"{path} is not a swag-onnx evaluate results file (columns "
                             f"{reader.fieldnames}, expected {COLUMNS}); choose another --out")
    rows = []
    for row in reader:
        if None in row or any(row.get(c) is None for c in COLUMNS):
            continue
        try:
            row["value"], row["seconds"] = float(row["value"]), float(row["seconds"])
            row["target"] = int(row["target"])
        except ValueError:
            continue
        rows.append(row)
    return rows


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows (a header first when the file is new or empty), then flush and fsync."""
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if not path.exists() or path.stat().st_size == 0:
        writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(c, row[c]) for c in COLUMNS])
    with open(path, "a", encoding="utf-8", newline="") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())


def _cell(column: str, value) -> str:
    if column == "value":
        return repr(float(value))  # round-trips exactly: a resumed run equals an uninterrupted one
    if column == "seconds":
        return f"{float(value):.4f}"
    return str(value)


def load_settings(out_dir: Path) -> dict:
    """The folder's settings.json: {"settings": ..., "runs": [...]}."""
    return json.loads((Path(out_dir) / SETTINGS).read_text())


def check_settings(out_dir: Path, settings: dict) -> dict:
    """Refuse a folder written with other settings; returns the stored file (or a new one)."""
    path = out_dir / SETTINGS
    if not path.exists():
        if (out_dir / RESULTS).exists() and (out_dir / RESULTS).stat().st_size:
            raise BadOptionError(f"{out_dir} has {RESULTS} but no {SETTINGS}, so its settings "
                                 "are unknown; choose another --out")
        return {"settings": settings, "runs": []}
    try:
        stored = json.loads(path.read_text())
        previous = stored["settings"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadOptionError(f"cannot read {path} ({exc}); choose another --out") from None
    if previous != settings:
        changes = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in _diff(previous, settings))
        raise BadOptionError(f"{out_dir} holds results computed with other settings ({changes}); "
                             "rerun with the same model and options, or choose another --out")
    stored.setdefault("runs", [])
    return stored


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip("."), a, b


def jsonable(obj):
    """obj as plain JSON types (arrays -> lists, anything else -> str)."""
    return json.loads(json.dumps(obj, default=lambda v: v.tolist() if hasattr(v, "tolist")
                                 else str(v)))
