"""Model cards: the JSON file beside an exported model that says how to feed it.

Fields: model (file name), input_name, layout (NCHW|NHWC), input_size [h, w], resize (shorter side
before a centre crop, or null for a direct resize), crop ("center"|"none"), scaling
({"mean", "std", "scale"} or {"offset", "divisor"}), color_order (RGB|BGR), class_names, score,
default_layers, provenance. A model without a card gets the same information from arguments.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from swag_onnx.errors import BadModelError, BadOptionError

CARD_NAME = "card.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "exported_models" / "efficientnet_lite0"
# where a regular (non-editable) install puts it (pyproject.toml: data-files)
INSTALLED_MODEL_DIR = Path(sys.prefix) / "share" / "swag_onnx" / "efficientnet_lite0"
REQUIRED = ("input_size", "scaling")


def default_model() -> Path:
    """The embedded default model (EfficientNet-Lite0, ImageNet): the source tree's
    exported_models/ (editable install), else the installed copy."""
    for folder in (DEFAULT_MODEL_DIR, INSTALLED_MODEL_DIR):
        if (folder / CARD_NAME).is_file():
            return folder
    raise BadModelError(f"the default model is missing from {str(DEFAULT_MODEL_DIR)!r} and "
                        f"{str(INSTALLED_MODEL_DIR)!r}; pass --model")


def resolve(model: str | Path | None, overrides: dict | None = None) -> tuple[Path, dict]:
    """(ONNX file, card) for a model folder or .onnx file; `overrides` (non-None values) replace
    card fields, and stand in for a missing card."""
    target = Path(model) if model is not None else default_model()
    if target.is_dir():
        card_path = target / CARD_NAME
        card = _read(card_path) if card_path.is_file() else {}
        onnx_path = target / card.get("model", "model.onnx")
    elif target.is_file():
        onnx_path = target
        card_path = next((p for p in (target.with_suffix(".card.json"), target.parent / CARD_NAME)
                          if p.is_file()), None)
        card = _read(card_path) if card_path else {}
        if card.get("model") and (target.parent / card["model"]).resolve() != target.resolve():
            card = {}  # a card beside it, but for another model file
    else:
        raise BadModelError(f"model {str(target)!r} does not exist; pass a folder with "
                            "model.onnx and card.json, or an .onnx file")
    if not onnx_path.is_file():
        raise BadModelError(f"no ONNX file {str(onnx_path)!r}; the card's \"model\" field "
                            "names the file")
    card.update({k: v for k, v in (overrides or {}).items() if v is not None})
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise BadOptionError(
            f"model {str(onnx_path)!r} has no card with {', '.join(missing)}: pass "
            "--input-size and --mean/--std (or --offset/--divisor), or write a card.json "
            "(tools/export_torch.py writes one)")
    return onnx_path, card


def _read(path: Path) -> dict:
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadModelError(f"cannot read model card {str(path)!r}: {exc}") from None
    if not isinstance(card, dict):
        raise BadModelError(f"model card {str(path)!r} is not a JSON object")
    return card


def class_name(card: dict, index: int) -> str:
    names = card.get("class_names") or []
    return names[index] if index < len(names) else f"class {index}"


def parse_target(card: dict, target: str | int | None, num_classes: int) -> int | None:
    """A class index from an index or a (case-insensitive) class name; None = top-1."""
    if target is None or target == "":
        return None
    text = str(target).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < num_classes:
            raise BadOptionError(f"class index {index} is out of range 0..{num_classes - 1}")
        return index
    names = [n.lower() for n in card.get("class_names") or []]
    if text.lower() in names:
        return names.index(text.lower())
    close = [n for n in card.get("class_names") or [] if text.lower() in n.lower()][:5]
    hint = f"; did you mean: {', '.join(close)}" if close else ""
    raise BadOptionError(f"unknown class {text!r}{hint}")
