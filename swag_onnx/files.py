"""Safe file access shared by every writer of swag_onnx: only new paths and regular files are
ever replaced, and every write is atomic.

An output path is either new or a regular file (or a symlink to one): a folder, device, FIFO or
socket there is refused with one BadOptionError line, checked before writing and again just
before the rename, so `-o /dev/null` run as root can never replace the device. OSErrors (no
permission, disk full, a path under a file) become one line naming the path.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from swag_onnx.errors import BadOptionError


def file_kind(mode: int) -> str:
    """What a non-regular st_mode is, in words."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Write via a temp file in the destination folder and os.replace; no partial file is left.

    The rename only ever replaces a regular file (or a symlink to one) or creates a new path: a
    folder, device, FIFO or socket there (or a symlink to one) raises BadOptionError, checked
    before writing and again just before the rename. OSErrors (no permission, disk full) become
    BadOptionError naming the path; errors of `write` itself (caller bugs) pass through.
    """
    path = Path(path)
    check_output_target(path)
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600 files; give the usual mode
        check_output_target(path)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise write_error(path, exc) from None
    except BaseException:
        _remove(tmp)
        raise


def check_output_target(path: str | os.PathLike) -> None:
    """BadOptionError unless `path` is absent or a regular file (symlinks followed)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # a new path (or a dangling symlink, replaced by the file); folders: make_folder
    except OSError as exc:
        raise write_error(Path(path), exc) from None
    if not stat.S_ISREG(mode):
        raise BadOptionError(f"{path}: exists and is {file_kind(mode)}, not a regular file; "
                             "choose another output path")


def make_folder(folder: Path) -> None:
    """mkdir -p, with one BadOptionError line when a part of the path is a file (or no access)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise BadOptionError(f"{folder}: cannot be a folder, a part of this path is a file; "
                             "choose another output folder") from None
    except OSError as exc:
        raise BadOptionError(f"{folder}: cannot create the output folder ({exc.strerror}); "
                             "choose another output folder") from None


def write_error(path: Path, exc: OSError) -> BadOptionError:
    return BadOptionError(f"{path}: cannot write the file ({exc.strerror or exc}); check the "
                          "folder's permissions and free space, or choose another path")


def _remove(tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)


@functools.cache
def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
