"""Model cards: the JSON file beside an exported model that says how to feed it.

Fields: model (file name), input_name, layout (NCHW|NHWC), input_size [h, w], resize (shorter side
before a centre crop, or null for a direct resize), crop ("center"|"none"), scaling
({"mean", "std", "scale"} or {"offset", "divisor"}), color_order (RGB|BGR), class_names, score,
default_layers, provenance. A model without a card gets the same information from arguments.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path, PurePath
from typing import Any, Callable

from swag_onnx.errors import BadModelError, BadOptionError

CARD_NAME = "card.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "exported_models" / "efficientnet_lite0"
# where a regular (non-editable) install puts it (pyproject.toml: data-files)
INSTALLED_MODEL_DIR = Path(sys.prefix) / "share" / "swag_onnx" / "efficientnet_lite0"
REQUIRED = ("input_size", "scaling")
NOT_NULL = ("model", "input_size", "scaling")  # the other fields may be null (= unset)
MAX_CARD_BYTES = 16 * 2**20  # a card with 100k class names is ~2 MB
MAX_INPUT_SIDE = 4096  # input_size and resize: a 3 x 4096 x 4096 float32 image is 200 MB
# command-line options that set each card field (Explainer(card=...) and the CLI overrides)
OPTIONS = {"input_size": "--input-size", "layout": "--layout", "resize": "--resize",
           "crop": "--resize", "class_names": "--labels", "score": "--score"}


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
    card fields, and stand in for a missing card. Every field is checked, then the model is
    loaded and checked against the installed onnxruntime (graph.checks) and against the card
    (input size, layout, number of class names). A model whose IR version is newer than
    onnxruntime reads, but whose opsets allow an older one, is run from a copy with the IR
    version lowered, in the augmentation cache (the returned path, same file name)."""
    onnx_path, card, card_path = _locate(Path(model) if model is not None else default_model())
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_fields(given, _option_label)
    card.update(given)
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise BadOptionError(
            f"model {str(onnx_path)!r} has no card with {', '.join(missing)}: pass "
            "--input-size and --mean/--std (or --offset/--divisor), or write a card.json "
            "(tools/export_torch.py writes one)")
    return _checked_model(onnx_path, card, given, card_path)


def _locate(target: Path) -> tuple[Path, dict, Path | None]:
    """(ONNX file, card as read and checked, card file) for a folder or an .onnx file."""
    if target.is_dir():
        card_path = target / CARD_NAME
        card = read_card(card_path) if card_path.is_file() else {}
        onnx_path = target / card.get("model", "model.onnx")
    elif target.is_file():
        onnx_path = target
        card_path = next((p for p in (target.with_suffix(".card.json"), target.parent / CARD_NAME)
                          if p.is_file()), None)
        card = read_card(card_path) if card_path else {}
        if card.get("model") and (target.parent / card["model"]).resolve() != target.resolve():
            card, card_path = {}, None  # a card beside it, but for another model file
    else:
        raise BadModelError(f"model {str(target)!r} does not exist; pass a folder with "
                            "model.onnx and card.json, or an .onnx file")
    if not onnx_path.is_file():
        raise BadModelError(f"no ONNX file {str(onnx_path)!r}; the card's \"model\" field "
                            "names the file")
    return onnx_path, card, card_path


def read_card(path: Path) -> dict:
    """A card file's JSON object, every field checked (BadModelError names the file and field)."""
    card = _read(path)
    check_fields(card, lambda key, _: f"model card {str(path)!r}: field {key!r}")
    return card


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:  # capped: a card is never big
            data = handle.read(MAX_CARD_BYTES + 1)
        if len(data) > MAX_CARD_BYTES:
            raise ValueError(f"over {MAX_CARD_BYTES // 2**20} MiB")
        card = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise BadModelError(f"cannot read model card {str(path)!r}: {reason}") from None
    if not isinstance(card, dict):
        raise BadModelError(f"model card {str(path)!r} is not a JSON object")
    return card


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _option_label(key: str, value: Any = None) -> str:
    if key == "scaling":
        return "--mean/--std" if isinstance(value, dict) and "mean" in value \
            else "--offset/--divisor"
    return OPTIONS.get(key, key)


# ------------------------------------------------------------------------------ field checks

def check_fields(card: dict, label: Callable[[str, Any], str]) -> None:
    """Check the type and range of every known field present in `card`; `label(key, value)`
    names the field in the message (a card file's field, or the option that set it)."""
    error = BadModelError if label is not _option_label else BadOptionError
    for key, check in _FIELD_CHECKS.items():
        if key in card and (card[key] is not None or key in NOT_NULL):
            expected = check(card[key])
            if expected:
                raise error(f"{label(key, card[key])} must be {expected}, got "
                            f"{_shown(card[key])}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _model_field(value: Any) -> str | None:
    if not isinstance(value, str) or not value or "\0" in value:
        return "the ONNX file's name in the card's folder (a string)"
    path = PurePath(value)
    if path.is_absolute() or ".." in path.parts:
        return "a file name inside the card's folder (not absolute, no '..')"
    return None


def _side(value: Any) -> bool:
    return _is_int(value) and 0 < value <= MAX_INPUT_SIDE


def _input_size(value: Any) -> str | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_side(v) for v in value):
        return None
    return f"[height, width], two integers from 1 to {MAX_INPUT_SIDE}"


def _channels(value: Any, nonzero: bool) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return len(values) in (1, 3) and all(_is_number(v) and (v != 0 or not nonzero)
                                         for v in values)


def _scaling(value: Any) -> str | None:
    expected = ('{"mean": m, "std": s[, "scale": k]} or {"offset": o, "divisor": d}, each a '
                "finite number or 3 of them, std, scale and divisor not 0")
    if not isinstance(value, dict):
        return expected
    if {"mean", "std"} <= value.keys():
        parts = {"mean": False, "std": True, "scale": True}
    elif {"offset", "divisor"} <= value.keys():
        parts = {"offset": False, "divisor": True}
    else:
        return expected
    ok = all(_channels(value[k], nonzero) for k, nonzero in parts.items() if k in value)
    return None if ok else expected


def _class_names(value: Any) -> str | None:
    expected = "a list of class names (non-empty strings without control characters)"
    if not isinstance(value, list):
        return expected
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name.strip() or not name.isprintable():
            return expected + f"; entry {i} is {_shown(name)}"
    return None


def _choice(*choices: str) -> Callable[[Any], str | None]:
    return lambda value: None if value in choices else "one of " + ", ".join(choices)


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "a tensor name (a non-empty string)"


def _text_list(value: Any) -> str | None:
    ok = isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)
    return None if ok else "a list of tensor names (or 'auto')"


_FIELD_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "model": _model_field,
    "input_name": _text,
    "layout": _choice("NCHW", "NHWC"),
    "input_size": _input_size,
    "resize": lambda v: None if _side(v) else f"an integer from 1 to {MAX_INPUT_SIDE} or null",
    "crop": _choice("center", "none"),
    "scaling": _scaling,
    "color_order": _choice("RGB", "BGR"),
    "class_names": _class_names,
    "score": _text,
    "default_layers": _text_list,
}


# ------------------------------------------------------------------- the card against the model

def _checked_model(onnx_path: Path, card: dict, given: dict,
                   card_path: Path | None) -> tuple[Path, dict]:
    """Load the model, check it (graph.checks) and the card against it; the path to run."""
    from swag_onnx.graph import checks
    from swag_onnx.graph.model_io import load_model

    model = load_model(onnx_path)
    lowered = checks.fit_to_runtime(model, repr(str(onnx_path)))
    facts = checks.check_model(model, repr(str(onnx_path)), card.get("score"))

    def label(key: str) -> str:
        if key in given:
            return _option_label(key)
        return f"the card {str(card_path)!r}: {key}" if card_path else key

    def error(key: str) -> type:
        return BadOptionError if key in given else BadModelError

    _against_model(card, facts, label, error)
    return (_runnable_copy(onnx_path, model) if lowered else onnx_path), card


def _against_model(card: dict, facts, label, error) -> None:
    """input_name, layout, input_size and the number of class names against the model;
    label(key) names the field or option, error(key) is the error type for it."""
    shape = facts.image_shape
    if card.get("input_name") not in (None, facts.image_input):
        raise error("input_name")(f"{label('input_name')} {card['input_name']!r} is not the "
                                  f"model's image input {facts.image_input!r}")
    dims = "x".join("N" if d is None else str(d) for d in shape or ())
    if shape is not None and len(shape) == 4:
        layout = card.get("layout") or _guess_layout(shape)
        channels = shape[1] if layout == "NCHW" else shape[3]
        if channels is not None and channels != 3:
            raise error("layout")(
                f"{label('layout')} {layout} reads the channels from axis "
                f"{1 if layout == 'NCHW' else 3} of the model's image input "
                f"{facts.image_input!r} ({dims}), which has {channels}; swag_onnx feeds 3 "
                f"(RGB) channels: use layout {'NHWC' if layout == 'NCHW' else 'NCHW'} if "
                "the model takes RGB")
        spatial = tuple(shape[2:]) if layout == "NCHW" else tuple(shape[1:3])
        size = tuple(card["input_size"])
        if any(d is not None and d != s for d, s in zip(spatial, size)):
            want = [d if d is not None else s for d, s in zip(spatial, size)]
            raise error("input_size")(
                f"{label('input_size')} {list(size)} differs from the model's image input "
                f"{facts.image_input!r} ({dims}, {layout}): use {want}")
    names = card.get("class_names")
    if names is not None and facts.num_classes is not None and len(names) != facts.num_classes:
        raise error("class_names")(
            f"{label('class_names')} has {len(names)} class names, the model scores "
            f"{facts.num_classes} classes ({facts.score!r}); give one name per class")


def _guess_layout(shape: tuple) -> str:
    """Channels on the axis of size 3 (the card's layout is unset: the model's guess)."""
    return "NHWC" if shape[3] == 3 and shape[1] != 3 else "NCHW"


def _runnable_copy(onnx_path: Path, model) -> Path:
    """The model (IR version lowered in memory) saved once in the cache, same file name."""
    from swag_onnx.graph.model_io import save_model_atomic
    from swag_onnx.runtime import cache_dir, file_sha256

    target = cache_dir() / "runnable" / file_sha256(onnx_path)[:24] / onnx_path.name
    if not target.is_file():
        save_model_atomic(model, target)
    return target


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
