"""Load and save ONNX models safely.

Loading refuses external data that points outside the model's folder (an untrusted model must not
make us read arbitrary files) and turns every failure into one BadModelError line. Saving is
atomic: a temp file in the destination folder, then a rename, so no half-written model is left.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from swag_onnx.errors import BadModelError

# Protobuf cannot serialise a single message above 2 GiB; bigger models keep weights outside.
_PROTOBUF_LIMIT = 2**31 - 2**20


def _check_external_data(model: onnx.ModelProto, folder: Path) -> None:
    root = folder.resolve()
    for tensor in _all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        target = (root / location).resolve()
        if root != target and root not in target.parents:
            raise BadModelError(
                f"tensor {tensor.name!r} points to external data {location!r} outside the model's "
                f"folder {str(root)!r}; keep the data files beside the model"
            )
        if not target.is_file():
            raise BadModelError(
                f"tensor {tensor.name!r} needs external data file {str(target)!r}, which is missing"
            )


def _all_tensors(model: onnx.ModelProto):
    yield from onnx.external_data_helper._get_all_tensors(model)


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX model (with its external data, if any) or raise BadModelError."""
    path = Path(path)
    if not path.exists():
        raise BadModelError(f"model file {str(path)!r} does not exist")
    if not path.is_file():
        raise BadModelError(f"model path {str(path)!r} is not a file; pass the .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types on garbage
        raise BadModelError(
            f"{str(path)!r} is not a readable ONNX model ({type(exc).__name__}); "
            "pass a .onnx file exported from PyTorch or TensorFlow"
        ) from None
    if not model.graph.node or not model.graph.output:
        raise BadModelError(f"{str(path)!r} is not an ONNX model with a graph (no nodes or outputs)")
    _check_external_data(model, path.parent)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise BadModelError(f"cannot read the external data of {str(path)!r}: {exc}") from None
    return model


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write `model` to `path` atomically (temp file + rename); big models keep weights beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > _PROTOBUF_LIMIT
    data_name = path.name + ".data"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_data = Path(tmp + ".data")
    try:
        if external:
            onnx.save_model(
                model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                location=tmp_data.name, size_threshold=1024,
            )
            _rename_external_location(tmp, tmp_data.name, data_name)
            os.replace(tmp_data, path.parent / data_name)
        else:
            onnx.save_model(model, tmp)
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    finally:
        for leftover in (Path(tmp), tmp_data):
            if leftover.exists():
                leftover.unlink()


def _rename_external_location(model_file: str, old: str, new: str) -> None:
    """Point the external-data entries of a saved model from `old` to `new` (same folder)."""
    model = onnx.load(model_file, load_external_data=False)
    for tensor in _all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save_model(model, model_file)
