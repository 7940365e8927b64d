"""Load and save ONNX models safely.

Loading reads regular files only (os.stat first: a FIFO, device or folder is refused without being
opened), refuses external data that points outside the model's folder (an untrusted model must not
make us read arbitrary files) and turns every failure into one BadModelError line. Saving is
atomic: a temp file in the destination folder, then a rename, so no half-written model is left;
the rename never replaces anything but a regular file (a folder, device, FIFO or socket there,
or a symlink to one, raises BadOptionError).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from swag_onnx.errors import BadModelError, BadOptionError
from swag_onnx.files import check_output_target, make_folder, umask

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
    try:
        with _open_regular(path) as file:
            # from the bytes: onnx.load(file) asks an fdopen'ed file for its path (an int)
            model = onnx.load_model_from_string(file.read())
    except BadModelError:
        raise
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


def _open_regular(path: Path):
    """Open a regular file for reading; stat first, so a FIFO or device is never opened (a FIFO
    would block); O_NONBLOCK and fstat cover a file swapped in between."""
    try:
        _require_regular(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise BadModelError(f"model file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise BadModelError(f"cannot read the model file {str(path)!r} ({exc.strerror}); check "
                            "its permissions") from None
    file = os.fdopen(fd, "rb")
    try:
        _require_regular(path, os.fstat(fd).st_mode)
    except BaseException:
        file.close()
        raise
    return file


def _require_regular(path: Path, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise BadModelError(f"model path {str(path)!r} is a folder; pass the .onnx file")
    if not stat.S_ISREG(mode):
        raise BadModelError(f"model path {str(path)!r} is not a regular file (a device, FIFO or "
                            "socket); pass the .onnx file")


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write `model` to `path` atomically (temp file + rename); big models keep weights beside it.

    Only a regular file (or a new path) is ever replaced, checked before writing and again just
    before each rename; OSErrors become one BadOptionError line naming the path.
    """
    path = Path(path)
    external = model.ByteSize() > _PROTOBUF_LIMIT
    data_path = path.parent / (path.name + ".data")
    for target in (path, data_path) if external else (path,):
        check_output_target(target)
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise BadOptionError(f"{path}: cannot write the model ({exc.strerror})") from None
    os.close(fd)
    tmp_data = Path(tmp + ".data")
    try:
        _write_and_rename(model, Path(tmp), tmp_data, path, data_path if external else None)
    except OSError as exc:
        raise BadOptionError(f"{path}: cannot write the model ({exc.strerror or exc}); check the "
                             "folder's permissions and free space") from None
    finally:
        for leftover in (Path(tmp), tmp_data):
            if leftover.exists():
                leftover.unlink()


def _write_and_rename(model, tmp: Path, tmp_data: Path, path: Path, data_path: Path | None):
    """Save to tmp (weights to tmp_data when data_path is set), then rename both into place."""
    if data_path is not None:
        onnx.save_model(
            model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
            location=tmp_data.name, size_threshold=1024,
        )
        _rename_external_location(str(tmp), tmp_data.name, data_path.name)
        check_output_target(data_path)
        os.replace(tmp_data, data_path)
    else:
        onnx.save_model(model, str(tmp))
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600 files; give the usual mode
    check_output_target(path)
    os.replace(tmp, path)


def _rename_external_location(model_file: str, old: str, new: str) -> None:
    """Point the external-data entries of a saved model from `old` to `new` (same folder)."""
    model = onnx.load(model_file, load_external_data=False)
    for tensor in _all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save_model(model, model_file)
