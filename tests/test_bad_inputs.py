"""Bad inputs of every kind: one BadImageError / BadOptionError / BadModelError / BadInputError
line, never a traceback, a hang, a blow-up of memory, or a half-written or replaced file.

Images go through the public `load_image` and the `swag-onnx explain` CLI; output paths through
the atomic writers (images and ONNX models); annotation files through `load_annotations`.
Hypothesis fuzzes image decoding in a child process under an address-space limit, so a
blow-up fails the test instead of taking the machine down.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import zlib
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image
from typer.testing import CliRunner

from swag_onnx import card as card_module
from swag_onnx import images
from swag_onnx.card import MAX_CARD_BYTES
from swag_onnx.cli import app
from swag_onnx.errors import BadImageError, BadInputError, BadModelError, BadOptionError
from swag_onnx.graph import checks
from swag_onnx.graph.checks import runtime_limits
from swag_onnx.graph.model_io import load_model, save_model_atomic
from swag_onnx.metrics.pointing import load_annotations

RGB = np.dstack([*np.meshgrid(np.arange(40, dtype=np.uint8) * 6, np.arange(30, dtype=np.uint8) * 8),
                 np.full((30, 40), 128, np.uint8)])  # (30, 40, 3): a smooth, valid picture
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
EXT = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tiff",
       "WEBP": ".webp"}


def encoded(fmt: str, rgb: np.ndarray = RGB) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt)
    return buffer.getvalue()


@contextmanager
def no_hang(seconds: int = 20):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""
    def expired(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------- files with a bad header

def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose (valid, CRC-correct) IHDR claims width x height, with no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def gif_declaring(width: int, height: int) -> bytes:
    """A 29-byte GIF: logical screen width x height, one 1x1 frame."""
    return (b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00"
            + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00" + b"\x02\x02D\x01\x00;")


def gif_frame_beyond(width: int, height: int) -> bytes:
    """A GIF with a 1x1 screen whose first frame is width x height (grows the canvas)."""
    return (b"GIF89a\x01\x00\x01\x00\x00\x00\x00" + b"," + struct.pack("<HHHH", 0, 0, width, height)
            + b"\x00\x02\x02D\x01\x00;")


def bmp_declaring(width: int, height: int) -> bytes:
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(header) + 16, 0, 0, 54) + header + bytes(16)


def tiff_declaring(width: int, height: int) -> bytes:
    """A little-endian TIFF whose first IFD says width x height, 8-bit RGB, one tiny strip."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 2), (273, 4, 1, 8), (277, 3, 1, 3), (278, 4, 1, height),
               (279, 4, 1, 3)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in entries)
    return b"II*\x00" + struct.pack("<I", 12) + b"\x01\x02\x03\x00" + ifd + b"\x00" * 4


def webp_declaring(width: int, height: int) -> bytes:
    """An extended (VP8X) WebP header with a canvas of width x height and nothing else."""
    vp8x = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_lossless_declaring(width: int, height: int) -> bytes:
    """A real lossless (VP8L) WebP whose header is patched to width x height (14 bits each)."""
    buffer = io.BytesIO()
    Image.fromarray(RGB).save(buffer, "WEBP", lossless=True)
    content = bytearray(buffer.getvalue())
    assert content[12:16] == b"VP8L"
    flags = struct.unpack_from("<I", content, 21)[0] & ~(2**28 - 1)  # alpha and version bits
    struct.pack_into("<I", content, 21, (width - 1) | (height - 1) << 14 | flags)
    return bytes(content)


def jpeg_declaring(width: int, height: int) -> bytes:
    content = bytearray(encoded("JPEG"))
    sof = content.index(b"\xff\xc0")
    content[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(content)


def ppm_declaring(width: int, height: int) -> bytes:
    return f"P6\n{width} {height}\n255\n".encode() + bytes(12)


def strip_png(width: int, height: int) -> bytes:
    """A real, tiny (deflate) PNG of width x height: the 1 x 60000 case of the issue."""
    return encoded("PNG", np.zeros((height, width, 3), np.uint8))


# Each case: (builder(tmp_path) -> path, fragment the one-line message must contain).
def write(name: str, content: bytes):
    def build(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(content)
        return path
    return build


def truncated(fmt: str):
    content = encoded(fmt)
    return write(f"cut{EXT[fmt]}", content[: max(8, len(content) // 3)])


def fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "photo.jpg")
    return tmp / "photo.jpg"


def folder(tmp: Path) -> Path:
    (tmp / "x.png").mkdir()
    return tmp / "x.png"


def unix_socket(tmp: Path) -> Path:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp / "s.png"))
    server.close()
    return tmp / "s.png"


def link_to(target: str, name: str = "link.png"):
    def build(tmp: Path) -> Path:
        (tmp / name).symlink_to(target)
        return tmp / name
    return build


def under_a_file(tmp: Path) -> Path:
    (tmp / "plain.png").write_bytes(encoded("PNG"))
    return tmp / "plain.png" / "inner.png"


def sparse_over_file_limit(tmp: Path) -> Path:
    path = tmp / "big.png"
    with open(path, "wb") as f:  # sparse: no disk used, refused from its size before reading
        f.write(png_declaring(10, 10))
        f.truncate(images.MAX_FILE_BYTES + 1)
    return path


IMAGE_CASES = {
    "zero-bytes": (write("empty.png", b""), "empty file"),
    **{f"truncated-{fmt.lower()}": (truncated(fmt), "not a readable image") for fmt in FORMATS},
    "header-only-png": (write("head.png", encoded("PNG")[:33]), "not a readable image"),
    "text-named-jpg": (write("notes.jpg", b"just some text, not a photo\n" * 20),
                       "not a readable image"),
    "text-named-png": (write("notes.png", b"<html>not an image</html>"), "not a readable image"),
    "random-bytes": (write("noise.webp", bytes(np.random.default_rng(1).integers(
        0, 256, 4096, dtype=np.uint8))), "not a readable image"),
    "png-bad-crc": (write("crc.png", png_declaring(30, 40)[:29] + b"\0\0\0\0"),
                    "not a readable image"),
    "huge-png": (write("huge.png", png_declaring(12_000, 12_000)), "12000x12000"),
    "giant-png": (write("giant.png", png_declaring(2**31 - 1, 2**31 - 1)), "limit"),
    "huge-gif-canvas": (write("huge.gif", gif_declaring(32_000, 32_000)), "limit"),
    "gif-frame-beyond-canvas": (write("frame.gif", gif_frame_beyond(12_000, 12_000)),
                                "12000x12000"),
    "huge-bmp": (write("huge.bmp", bmp_declaring(12_000, 9_000)), "12000x9000"),
    "huge-bmp-negative-height": (write("down.bmp", bmp_declaring(12_000, -9_000)), "12000x9000"),
    "huge-tiff": (write("huge.tiff", tiff_declaring(12_000, 9_000)), "12000x9000"),
    "huge-webp-lossless": (write("huge.webp", webp_lossless_declaring(12_000, 9_000)),
                           "12000x9000"),
    "huge-webp-canvas": (write("canvas.webp", webp_declaring(2**24, 2**24)), "limit"),
    "huge-jpeg": (write("huge.jpg", jpeg_declaring(12_000, 9_000)), "12000x9000"),
    "huge-ppm": (write("huge.ppm", ppm_declaring(12_000, 9_000)), "12000x9000"),
    "strip-1x60000-png": (write("strip.png", strip_png(60_000, 1)), "60000x1"),
    "strip-60000x1-png": (write("column.png", strip_png(1, 60_000)), "1x60000"),
    "strip-gif": (write("strip.gif", gif_declaring(60_000, 1)), "60000x1"),
    "strip-jpeg": (write("strip.jpg", jpeg_declaring(20_000, 8)), "20000x8"),
    "strip-bmp": (write("strip.bmp", bmp_declaring(20_000, 1)), "20000x1"),
    "strip-tiff": (write("strip.tiff", tiff_declaring(1, 70_000)), "1x70000"),
    "fifo-photo-jpg": (fifo, "FIFO"),
    "dev-zero": (lambda tmp: Path("/dev/zero"), "character device"),
    "dev-null": (lambda tmp: Path("/dev/null"), "character device"),
    "link-to-dev-zero": (link_to("/dev/zero"), "character device"),
    "folder-named-png": (folder, "is a folder"),
    "socket-named-png": (unix_socket, "socket"),
    "missing": (lambda tmp: tmp / "missing.jpg", "no such file"),
    "dangling-link": (link_to("/no/such/target.png"), "no such file"),
    "path-under-a-file": (under_a_file, "no such file"),
    "file-over-byte-limit": (sparse_over_file_limit, "over the limit"),
}


@pytest.mark.parametrize("build, fragment", IMAGE_CASES.values(), ids=IMAGE_CASES.keys())
def test_bad_image_is_one_line(tmp_path, build, fragment):
    path = build(tmp_path)
    with no_hang(), pytest.raises(BadImageError) as info:
        images.load_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and fragment in message, message


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_extension_still_loads(tmp_path, fmt):
    """The content decides, not the name: a valid file named .jpg (or a JPEG named .png)."""
    path = tmp_path / ("photo.png" if fmt == "JPEG" else "photo.jpg")
    path.write_bytes(encoded(fmt))
    loaded = images.load_image(path)
    assert loaded.shape == RGB.shape and loaded.dtype == np.uint8
    assert np.abs(loaded.astype(int) - RGB).mean() < 8  # JPEG, WebP and GIF are lossy


def test_unreadable_file_as_an_unprivileged_user(tmp_path):
    """chmod 000 does not stop root (CI), so the read runs in a child that drops to `nobody`
    (when we are root) on a file in a folder that user may enter."""
    shared = Path(tempfile.mkdtemp(prefix="swag-perm-"))
    try:
        shared.chmod(0o755)
        locked = shared / "locked.png"
        locked.write_bytes(encoded("PNG"))
        locked.chmod(0)
        read, written = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: report the message (or "loaded") through the pipe
            os.close(read)
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                images.load_image(locked)
                answer = "loaded"
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                answer = f"{type(exc).__name__}: {exc}"
            os.write(written, answer.encode())
            os._exit(0)
        os.close(written)
        with os.fdopen(read) as pipe:
            answer = pipe.read()
        os.waitpid(pid, 0)
    finally:
        locked.chmod(0o600)
        locked.unlink()
        shared.rmdir()
    assert answer.startswith("BadImageError:") and "cannot read" in answer, answer
    assert "Permission denied" in answer and "\n" not in answer


def test_largest_strip_under_the_caps_stays_small():
    """1 x MAX_SIDE loads; preprocessing (resize 256 would be 256 x 4.2M) stays bounded."""
    path = Path(tempfile.mkdtemp()) / "strip.png"
    path.write_bytes(strip_png(images.MAX_SIDE, 1))
    code = f"""
        import resource, numpy as np
        from swag_onnx import images
        card = {{"layout": "NCHW", "input_size": [224, 224], "resize": 256,
                "scaling": {{"mean": [0.5] * 3, "std": [0.25] * 3}}}}
        # VmHWM: this process's own peak (ru_maxrss keeps the forking parent's across exec)
        before = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
        rgb = images.load_image({str(path)!r})
        x, g = images.preprocess(rgb, card)
        back = images.to_original(np.ones((224, 224), np.float32), g)
        labels = images.labels_to_original(np.zeros((224, 224), np.int32), g)
        assert x.shape == (1, 3, 224, 224) and back.shape == labels.shape == (1, {images.MAX_SIDE})
        print((int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) - before) // 1024)
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)
    path.unlink()
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) < 200  # MiB of peak growth (the full resize: 3 GiB)


# ------------------------------------------------------------------------------ output paths

def make_target(kind: str, tmp: Path) -> Path:
    """An output path that must not be replaced: kind names what is already there."""
    target = tmp / "out" / "result.png"
    target.parent.mkdir()
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "socket":
        target = unix_socket(target.parent)
    elif kind == "link-to-folder":
        (tmp / "elsewhere").mkdir()
        target.symlink_to(tmp / "elsewhere")
    elif kind == "link-to-device":
        target.symlink_to("/dev/null")
    elif kind == "link-to-fifo":
        os.mkfifo(tmp / "pipe")
        target.symlink_to(tmp / "pipe")
    elif kind == "under-a-file":
        (tmp / "out" / "file.png").write_bytes(b"keep me")
        target = tmp / "out" / "file.png" / "result.png"
    elif kind == "deep-under-a-file":
        (tmp / "out" / "file.png").write_bytes(b"keep me")
        target = tmp / "out" / "file.png" / "a" / "b" / "result.png"
    return target


def snapshot(folder: Path) -> dict:
    """What a folder holds (names, kinds, file contents): must not change on a refused write."""
    return {str(p.relative_to(folder)): (stat.S_IFMT(p.lstat().st_mode),
                                         p.read_bytes() if p.is_file() and not p.is_symlink()
                                         else None)
            for p in sorted(folder.rglob("*"))}


TARGET_KINDS = ["folder", "fifo", "socket", "link-to-folder", "link-to-device", "link-to-fifo",
                "under-a-file", "deep-under-a-file"]
WRITERS = {
    "png": lambda path: images.write_png(path, RGB),
    "npy": lambda path: images.write_npy(path, RGB),
    "json": lambda path: images.write_json(path, {"a": 1}),
}


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_writers_never_replace_what_is_not_a_regular_file(tmp_path, kind, writer):
    target = make_target(kind, tmp_path)
    before = snapshot(tmp_path)
    with no_hang(), pytest.raises(BadOptionError) as info:
        writer(target)
    message = str(info.value)
    assert "\n" not in message and ("file" in message or "folder" in message), message
    assert str(target) in message or str(target.parent) in message or "file.png" in message
    assert snapshot(tmp_path) == before  # nothing replaced, no temp file left


@pytest.mark.parametrize("kind", ["new", "file", "link-to-file", "dangling-link"])
def test_writers_replace_regular_files_and_links_to_them(tmp_path, kind):
    target = tmp_path / "result.json"
    other = tmp_path / "other.json"
    if kind == "file":
        target.write_text("old")
    elif kind == "link-to-file":
        other.write_text("old")
        target.symlink_to(other)
    elif kind == "dangling-link":
        target.symlink_to(tmp_path / "nowhere.json")
    images.write_json(target, {"a": 1})
    assert target.is_file() and not target.is_symlink() and target.read_text() == '{\n  "a": 1\n}\n'
    if kind == "link-to-file":
        assert other.read_text() == "old"  # the link is replaced, not what it pointed to
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["result.json"] + (["other.json"] if kind == "link-to-file" else []))


def tiny_model() -> onnx.ModelProto:
    """image (1, 3, 4, 4) -> logits (1, 2): a graph load_model accepts."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 3], np.ones(6, np.float32))
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1)],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime 1.20 reads
    return model


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_model_writer_never_replaces_what_is_not_a_regular_file(tmp_path, kind):
    target = make_target(kind, tmp_path)
    before = snapshot(tmp_path)
    with no_hang(), pytest.raises(BadOptionError) as info:
        save_model_atomic(tiny_model(), target)
    assert "\n" not in str(info.value)
    assert snapshot(tmp_path) == before


def test_model_writer_writes_a_model_that_loads(tmp_path):
    target = tmp_path / "sub" / "tiny.onnx"
    save_model_atomic(tiny_model(), target)
    assert [n.op_type for n in load_model(target).graph.node] == ["GlobalAveragePool", "Flatten",
                                                                  "Gemm"]
    assert os.listdir(target.parent) == ["tiny.onnx"]


MODEL_CASES = {
    "fifo": (lambda tmp: (os.mkfifo(tmp / "m.onnx"), tmp / "m.onnx")[1], "not a regular file"),
    "dev-zero": (lambda tmp: Path("/dev/zero"), "not a regular file"),
    "folder": (lambda tmp: (tmp / "m.onnx").mkdir() or tmp / "m.onnx", "is a folder"),
    "missing": (lambda tmp: tmp / "m.onnx", "does not exist"),
    "garbage": (write("m.onnx", b"\xff" * 100), "not a readable ONNX model"),
    "empty": (write("m.onnx", b""), "ONNX model"),
}


@pytest.mark.parametrize("build, fragment", MODEL_CASES.values(), ids=MODEL_CASES.keys())
def test_bad_model_files_are_one_line(tmp_path, build, fragment):
    with no_hang(), pytest.raises(BadModelError) as info:
        load_model(build(tmp_path))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_augment_to_a_device_leaves_it_alone(tmp_path):
    """The issue's `swag-onnx augment model.onnx -o /dev/null` (here a link to it: a bug in the
    check would then replace the link, not the machine's /dev/null)."""
    model = tmp_path / "tiny.onnx"
    onnx.save_model(tiny_model(), model)
    (tmp_path / "null").symlink_to("/dev/null")
    result = CliRunner().invoke(app, ["augment", str(model), "-o", str(tmp_path / "null")])
    assert result.exit_code == 2, result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert (tmp_path / "null").is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert sorted(os.listdir(tmp_path)) == ["null", "tiny.onnx"]


# ------------------------------------------------------------------------------ the CLI

runner = CliRunner()


def explain(args: list[str]):
    with no_hang(120):
        return runner.invoke(app, ["explain", "--method", "gradient"] + args)


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


CLI_IMAGE_CASES = {k: IMAGE_CASES[k] for k in (
    "fifo-photo-jpg", "dev-zero", "folder-named-png", "huge-gif-canvas", "strip-1x60000-png",
    "text-named-jpg", "truncated-png", "zero-bytes", "file-over-byte-limit")}
CLI_IMAGE_CASES["folder-named-png"] = (folder, "folder contains no images")  # a folder argument


@pytest.mark.parametrize("build, fragment", CLI_IMAGE_CASES.values(), ids=CLI_IMAGE_CASES.keys())
def test_explain_of_one_bad_image(tmp_path, build, fragment):
    out = tmp_path / "results"
    path = build(tmp_path)
    result = explain([str(path), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.output, lines
    assert not out.exists()


@pytest.fixture(scope="module")
def good_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.png"
    path.write_bytes(encoded("PNG", cv2.resize(RGB, (120, 90))))
    return path


def test_explain_folder_with_fifo_and_device_link(tmp_path, good_png):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "good.png").write_bytes(good_png.read_bytes())
    fifo(photos)
    (photos / "zero.png").symlink_to("/dev/zero")
    out = tmp_path / "results"
    result = explain([str(photos), str(photos / "zero.png"), "--out", str(out)])
    # a folder listing skips what is not a regular file; the explicit device is refused
    assert result.exit_code == 1, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and "zero.png" in lines[0] and "character device" in lines[0]
    written = {p.name for p in out.iterdir()}
    assert {f"good.gradient.{e}" for e in ("json", "npy", "png")} <= written
    assert not [name for name in written if name.startswith(("zero", "photo"))]


OUT_CASES = ["out-is-a-file", "out-under-a-file", "target-is-a-folder", "target-is-a-fifo",
             "target-links-to-a-folder", "target-links-to-a-device"]


@pytest.mark.parametrize("case", OUT_CASES)
def test_explain_refuses_bad_output_targets(tmp_path, good_png, case):
    out = tmp_path / "results"
    target = out / "good.gradient.png"
    if case in ("out-is-a-file", "out-under-a-file"):
        out.write_bytes(b"keep me")
        if case == "out-under-a-file":
            out = out / "sub"
    else:
        out.mkdir()
        (tmp_path / "elsewhere").mkdir()
        {"target-is-a-folder": lambda: target.mkdir(),
         "target-is-a-fifo": lambda: os.mkfifo(target),
         "target-links-to-a-folder": lambda: target.symlink_to(tmp_path / "elsewhere"),
         "target-links-to-a-device": lambda: target.symlink_to("/dev/null")}[case]()
    before = snapshot(tmp_path)
    result = explain([str(good_png), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------- annotations

XML_BOX = ("<annotation><filename>a.jpg</filename><object><name>cat</name><bndbox><xmin>1</xmin>"
           "<ymin>1</ymin><xmax>{xmax}</xmax><ymax>5</ymax></bndbox></object></annotation>")
ANNOTATION_CASES = {
    "xml-entity-bomb": ("a.xml", '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">'
                        '<!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;">]><annotation>&y;</annotation>',
                        "DOCTYPE/ENTITY"),
    "xml-external-entity": ("a.xml", '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM '
                            '"file:///etc/passwd">]><annotation>&e;</annotation>',
                            "DOCTYPE/ENTITY"),
    "xml-doctype-only": ("a.xml", "<!DOCTYPE annotation><annotation/>", "DOCTYPE/ENTITY"),
    "xml-external-dtd": ("a.xml", '<!DOCTYPE a SYSTEM "http://example.com/a.dtd"><annotation/>',
                         "DOCTYPE/ENTITY"),
    "xml-malformed": ("a.xml", "<annotation><object></annotation>", "not well-formed"),
    "xml-not-xml": ("a.xml", "just text", "not well-formed"),
    "xml-bad-number": ("a.xml", XML_BOX.format(xmax="ten"), "<object> #1"),
    "xml-infinite": ("a.xml", XML_BOX.format(xmax="inf"), "not finite"),
    "xml-wrong-root": ("a.xml", "<voc/>", "expected <annotation>"),
    "csv-bad-number": ("a.csv", "image,class,x0,y0,x1,y1\na.jpg,cat,0,0,ten,5\n",
                       "line 2: x1 is not a number"),
    "csv-nan": ("a.csv", "image,class,x0,y0,x1,y1\na.jpg,cat,0,0,nan,5\n", "not finite"),
    "csv-short-row": ("a.csv", "image,class,x0,y0,x1,y1\na.jpg,cat,0\n", "line 2: 3 fields"),
    "csv-missing-column": ("a.csv", "image,class,x0\n", "missing column"),
    "csv-not-utf8": ("a.csv", b"image,class,x0,y0,x1,y1\n\xff\xfe,cat,0,0,1,1\n", "cannot read"),
    "json-bad": ("a.json", "[{", "not valid JSON"),
    "json-bad-number": ("a.json", '[{"image": "a.jpg", "class": "cat", "x0": 0, "y0": 0, '
                        '"x1": "ten", "y1": 5}]', "[0]: x1 is not a number"),
}


@pytest.mark.parametrize("name, content, fragment", ANNOTATION_CASES.values(),
                         ids=ANNOTATION_CASES.keys())
def test_bad_annotation_file_names_file_and_place(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with no_hang(), pytest.raises(BadInputError) as info:
        load_annotations(path)
    message = str(info.value)
    assert str(path) in message and fragment in message and "\n" not in message, message


def test_annotation_fifo_is_refused_without_hanging(tmp_path):
    os.mkfifo(tmp_path / "boxes.csv")
    with no_hang(), pytest.raises(BadInputError) as info:
        load_annotations(tmp_path / "boxes.csv")
    assert "boxes.csv" in str(info.value)


# ------------------------------------------------------------------------------------ fuzzing

FUZZ_CHILD = """
import os, resource, signal, sys
sys.path.insert(0, {tests!r})
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
import test_bad_inputs as t
from swag_onnx import images
from swag_onnx.errors import BadImageError

def vm_bytes():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize"))

limit = vm_bytes() + {extra}
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
path = {path!r}
seeds = {{fmt: t.encoded(fmt) for fmt in t.FORMATS}}

def check(content):
    with open(path, "wb") as f:
        f.write(content)
    signal.alarm(20)
    try:
        image = images.load_image(path)
    except BadImageError as exc:
        assert "\\n" not in str(exc) and "out of memory" not in str(exc), str(exc)
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    finally:
        signal.alarm(0)

common = settings(max_examples={examples}, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))

@common
@given(st.sampled_from(t.FORMATS), st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)),
                                           min_size=1, max_size=6),
       st.one_of(st.none(), st.integers(1, 4096)))
def mutated(fmt, edits, cut):
    content = bytearray(seeds[fmt])
    for offset, value in edits:
        if offset < len(content):
            content[offset] = value
    check(bytes(content[:cut]))

@common
@given(st.sampled_from([b"", b"\\x89PNG\\r\\n\\x1a\\n", b"\\xff\\xd8\\xff", b"GIF89a", b"BM",
                        b"II*\\x00", b"MM\\x00*", b"RIFF\\x00\\x00\\x00\\x00WEBPVP8",
                        b"P6\\n"]), st.binary(min_size=1, max_size=600))
def random_bytes(magic, tail):
    check(magic + tail)

{which}()
# VmHWM: this process's own peak (ru_maxrss keeps the forking parent's across exec)
print("peak-rss-mib", int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) // 1024)
"""


@pytest.mark.parametrize("which, examples", [("mutated", 300), ("random_bytes", 300)])
def test_fuzz_image_decoding_under_a_memory_limit(tmp_path, which, examples):
    """load_image on mutated headers of valid PNG/JPEG/GIF/BMP/TIFF/WebP files and on random
    bytes: a uint8 (H, W, 3) array or one BadImageError line, in a child limited to 3 GiB more
    address space than it starts with and to 1.5 GiB of peak resident memory."""
    code = FUZZ_CHILD.format(tests=str(Path(__file__).parent), extra=3 * 2**30,
                             path=str(tmp_path / "fuzz.img"), examples=examples, which=which)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    peak = int(done.stdout.split("peak-rss-mib")[-1])
    assert peak < 1536, peak


# ------------------------------------------------------------------------------------ models
# A small classifier (Conv -> Relu -> pool -> Gemm -> Softmax on 3 x 16 x 16 images, 5 classes)
# and variants of it that swag_onnx must refuse (or, for a too-new IR version, fix) at load time.

SIDE = 16
CARD = {"input_size": [SIDE, SIDE], "scaling": {"mean": [0.5] * 3, "std": [0.25] * 3},
        "class_names": ["a", "b", "c", "d", "e"]}


def classifier(ir: int = 8, opset: int = 17, second_input: str | None = None,
               custom: bool = False, map_output: bool = False) -> onnx.ModelProto:
    """The small classifier; second_input "image" adds a second image input, "mask" an int64
    input; custom adds an op of domain my.domain; map_output makes the output a [N, 5, h, w]
    map (a segmentation head)."""
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3],
                                rng.normal(size=108).astype(np.float32)),
             helper.make_tensor("fc", TensorProto.FLOAT, [5, 4],
                                rng.normal(size=20).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["image", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"])]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIDE, SIDE])]
    last = "relu"
    if second_input == "image":
        inputs.append(helper.make_tensor_value_info("image2", TensorProto.FLOAT,
                                                    ["N", 3, SIDE, SIDE]))
        nodes += [helper.make_node("Conv", ["image2", "w"], ["conv2"], pads=[1, 1, 1, 1]),
                  helper.make_node("Add", ["relu", "conv2"], ["both"])]
        last = "both"
    elif second_input == "mask":
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT64, ["N"]))
        nodes += [helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["relu", "maskf"], ["masked"])]
        last = "masked"
    if custom:
        nodes.append(helper.make_node("MyOp", [last], ["custom"], domain="my.domain"))
        last = "custom"
    if map_output:
        inits.append(helper.make_tensor("w2", TensorProto.FLOAT, [5, 4, 1, 1],
                                        np.ones(20, np.float32)))
        nodes.append(helper.make_node("Conv", [last, "w2"], ["logits"]))
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                 ["N", 5, SIDE, SIDE])]
    else:
        nodes += [helper.make_node("GlobalAveragePool", [last], ["pooled"]),
                  helper.make_node("Flatten", ["pooled"], ["flat"]),
                  helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1),
                  helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
        outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 5])]
    imports = [helper.make_opsetid("", opset)]
    if custom:
        imports.append(helper.make_opsetid("my.domain", 1))
    model = helper.make_model(helper.make_graph(nodes, "classifier", inputs, outputs, inits),
                              opset_imports=imports)
    model.ir_version = ir
    return model


def model_folder(tmp: Path, model: onnx.ModelProto | None = None, card: dict | None = None,
                 name: str = "net") -> Path:
    """A folder with model.onnx and card.json (`card` replaces CARD; a str is written as is)."""
    folder = tmp / name
    folder.mkdir()
    onnx.save_model(model or classifier(), folder / "model.onnx")
    text = card if isinstance(card, str) else json.dumps(CARD if card is None else card)
    (folder / "card.json").write_text(text)
    return folder


@pytest.fixture(scope="module")
def small_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small") / "small.png"
    path.write_bytes(encoded("PNG"))
    return path


def cli(args: list[str], env: dict | None = None):
    with no_hang(180):
        return runner.invoke(app, args, env=env)


def assert_one_error(result, fragment: str, code: int = 2) -> str:
    """Exit `code`, exactly one error line containing `fragment`, no traceback."""
    lines = error_lines(result)
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert "Traceback" not in result.output and result.exception is None \
        or isinstance(result.exception, SystemExit), result.output
    return lines[0]


def explain_model(folder: Path, image: Path, out: Path, *options: str):
    return cli(["explain", str(image), "--model", str(folder), "--method", "gradient",
                "--out", str(out), *options])


MAX_IR, MAX_OPSET = runtime_limits()
BAD_MODELS = {
    "custom-domain-op": (dict(custom=True), "custom domain 'my.domain'"),
    "two-image-inputs": (dict(second_input="image"), "takes 2 inputs ('image', 'image2')"),
    "image-and-mask-inputs": (dict(second_input="mask"), "takes 2 inputs ('image', 'mask')"),
    "4d-score-output": (dict(map_output=True), "has shape Nx5x16x16, not one score per class"),
    "opset-beyond-runtime": (dict(opset=MAX_OPSET + 1, ir=MAX_IR),
                             f"opset {MAX_OPSET + 1}, onnxruntime"),
}


@pytest.mark.parametrize("command", ["explain", "augment"])
@pytest.mark.parametrize("kwargs, fragment", BAD_MODELS.values(), ids=BAD_MODELS.keys())
def test_unusable_model_is_one_line(tmp_path, small_png, command, kwargs, fragment):
    if kwargs.get("opset", 0) > onnx.defs.onnx_opset_version():
        pytest.fail("onnx knows no opset beyond onnxruntime's: build this case another way")
    folder = model_folder(tmp_path, classifier(**kwargs))
    before = snapshot(tmp_path)
    if command == "explain":
        result = explain_model(folder, small_png, tmp_path / "out")
    else:
        result = cli(["augment", str(folder / "model.onnx"), "-o", str(tmp_path / "aug.onnx")])
    assert_one_error(result, fragment)
    assert snapshot(tmp_path) == before  # model untouched, nothing written


def test_ir_version_newer_than_runtime_is_lowered_in_the_cached_copy(tmp_path, small_png):
    """onnx 1.23 saves IR 14, onnxruntime 1.31 reads up to 13: explain runs on a copy in the
    cache with the IR version lowered, the user's file is not touched; augment writes IR 13."""
    folder = model_folder(tmp_path, classifier(ir=MAX_IR + 1))
    original = (folder / "model.onnx").read_bytes()
    result = explain_model(folder, small_png, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (folder / "model.onnx").read_bytes() == original
    copies = list((Path(os.environ["SWAG_ONNX_CACHE"]) / "runnable").rglob("model.onnx"))
    assert copies and all(onnx.load(c).ir_version <= MAX_IR for c in copies)
    result = cli(["augment", str(folder / "model.onnx"), "-o", str(tmp_path / "aug.onnx")])
    assert result.exit_code == 0, result.output
    assert onnx.load(tmp_path / "aug.onnx").ir_version == MAX_IR


def test_ir_version_that_the_opsets_need_is_one_line(monkeypatch):
    """Against a runtime that reads up to IR 8 (monkeypatched limits): opset 19 came with IR 9,
    so an IR-9 model of opset 19 is refused naming both versions; one of opset 17 (IR 8) is
    lowered to 8."""
    monkeypatch.setattr(checks, "runtime_limits", lambda: (8, 30))
    model = classifier(ir=9, opset=19)
    with pytest.raises(BadModelError) as info:
        checks.fit_to_runtime(model, "'m.onnx'")
    assert "IR version 9 (its opsets need at least 9)" in str(info.value)
    assert "reads up to IR version 8" in str(info.value) and model.ir_version == 9
    lowered = classifier(ir=9, opset=17)
    assert checks.fit_to_runtime(lowered, "'m.onnx'") and lowered.ir_version == 8


def test_runtime_limits_are_what_onnxruntime_loads():
    """The probed limits load; one more IR version (or opset, where onnx knows it) does not."""
    import onnxruntime as ort

    def loads(model):
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - any onnxruntime refusal
            return False
        return True

    assert loads(classifier(ir=MAX_IR, opset=MAX_OPSET))
    assert not loads(classifier(ir=MAX_IR + 1, opset=17)) or MAX_IR == onnx.IR_VERSION
    assert not loads(classifier(ir=MAX_IR, opset=MAX_OPSET + 1)) \
        or MAX_OPSET == onnx.defs.onnx_opset_version()


def test_already_augmented_model(tmp_path, small_png):
    source = tmp_path / "m.onnx"
    onnx.save_model(classifier(), source)
    assert cli(["augment", str(source), "-o", str(tmp_path / "aug.onnx")]).exit_code == 0
    before = snapshot(tmp_path)
    assert_one_error(cli(["augment", str(tmp_path / "aug.onnx"), "-o", str(tmp_path / "x.onnx")]),
                     "already augmented by swag_onnx")
    (tmp_path / "aug.card.json").write_text(json.dumps(CARD))
    assert_one_error(explain_model(tmp_path / "aug.onnx", small_png, tmp_path / "out"),
                     "already augmented by swag_onnx")
    assert snapshot(tmp_path) == {**before, "aug.card.json": snapshot(tmp_path)["aug.card.json"]}


@pytest.mark.parametrize("score, fragment", [
    ("image", "score tensor 'image' is a model input"),
    ("w", "score tensor 'w' is a model input"),
    ("conv", "score tensor 'conv' has shape Nx4x16x16"),
    ("nowhere", "score tensor 'nowhere' is not in the model"),
])
def test_augment_score_that_is_not_a_score(tmp_path, score, fragment):
    """--score naming the image input was accepted ('16 classes' of a picture's columns)."""
    source = tmp_path / "m.onnx"
    onnx.save_model(classifier(), source)
    result = cli(["augment", str(source), "--score", score, "-o", str(tmp_path / "a.onnx")])
    assert_one_error(result, fragment)
    assert not (tmp_path / "a.onnx").exists()


def test_session_failure_is_one_line():
    """What onnxruntime itself refuses (here an IR version past any) is one BadModelError
    line, without onnxruntime's C++ source location."""
    from swag_onnx.runtime import _session

    model = classifier()
    model.ir_version = 99
    with pytest.raises(BadModelError) as info:
        _session(model.SerializeToString(), "cpu", None)
    message = str(info.value)
    assert "cannot load the model" in message and "IR version" in message, message
    assert "\n" not in message and ".cc:" not in message


def test_model_path_with_markup_characters(tmp_path):
    """rich markup in a path ([/] closes a tag) was a MarkupError; [final] disappeared."""
    (tmp_path / "[").mkdir()  # the paths hold "[/b]", a closing tag
    source = tmp_path / "[" / "b]net[final].onnx"
    onnx.save_model(classifier(), source)
    result = cli(["augment", str(source), "-o", str(tmp_path / "[" / "b]out[final].onnx")])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / '[' / 'b]out[final].onnx'}" in result.output
    result = cli(["augment", str(source), "-o", str(tmp_path / "[" / "no" / "b]x.onnx"),
                  "--layer", "[/b]"])
    assert "layer '[/b]' is not" in assert_one_error(result, "[/b]")


# ------------------------------------------------------------------------------------- cards

CARD_CASES = {
    "model-not-a-string": ({"model": 123}, "field 'model' must be the ONNX file's name"),
    "model-null": ({"model": None}, "field 'model' must be"),
    "model-absolute": ({"model": "/etc/passwd"}, "not absolute, no '..'"),
    "model-escapes": ({"model": "../net/model.onnx"}, "not absolute, no '..'"),
    "input-size-not-list": ({"input_size": 224}, "field 'input_size' must be [height, width]"),
    "input-size-zero": ({"input_size": [0, 16]}, "field 'input_size' must be"),
    "input-size-bool": ({"input_size": [True, 16]}, "field 'input_size' must be"),
    "input-size-huge": ({"input_size": [100_000, 100_000]}, "from 1 to 4096"),
    "input-size-differs": ({"input_size": [224, 224]}, "differs from the model's image input"),
    "layout-unknown": ({"layout": "CHW"}, "field 'layout' must be one of NCHW, NHWC"),
    "layout-differs": ({"layout": "NHWC"}, "use layout NCHW"),
    "class-names-too-few": ({"class_names": ["a", "b"]}, "has 2 class names, the model scores 5"),
    "class-names-not-strings": ({"class_names": [1, 2, 3, 4, 5]}, "entry 0 is 1"),
    "class-names-string": ({"class_names": "abcde"}, "must be a list of class names"),
    "class-names-control": ({"class_names": ["a", "b\x00", "c", "d", "e"]}, "entry 1"),
    "class-names-empty-name": ({"class_names": ["a", "", "c", "d", "e"]}, "entry 1"),
    "scaling-keys": ({"scaling": {"mean": 0.5}}, "field 'scaling' must be"),
    "scaling-zero-std": ({"scaling": {"mean": [0.5] * 3, "std": [0.2, 0, 0.2]}}, "not 0"),
    "scaling-zero-divisor": ({"scaling": {"offset": 0, "divisor": 0}}, "not 0"),
    "scaling-two-values": ({"scaling": {"offset": [1, 2], "divisor": 1}}, "3 of them"),
    "scaling-string": ({"scaling": "imagenet"}, "field 'scaling' must be"),
    "resize-zero": ({"resize": 0}, "field 'resize' must be"),
    "crop-unknown": ({"crop": "middle"}, "field 'crop' must be one of center, none"),
    "color-order-unknown": ({"color_order": "GBR"}, "field 'color_order'"),
    "score-image-input": ({"score": "image"}, "score tensor 'image' is a model input"),
    "score-not-string": ({"score": 3}, "field 'score' must be a tensor name"),
    "default-layers-string": ({"default_layers": "auto"}, "field 'default_layers'"),
    "input-name-differs": ({"input_name": "pixels"}, "is not the model's image input 'image'"),
}


@pytest.mark.parametrize("change, fragment", CARD_CASES.values(), ids=CARD_CASES.keys())
def test_bad_card_is_one_line(tmp_path, small_png, change, fragment):
    folder = model_folder(tmp_path, card={**CARD, **change})
    before = snapshot(tmp_path)
    assert_one_error(explain_model(folder, small_png, tmp_path / "out"), fragment)
    assert snapshot(tmp_path) == before


CARD_TEXTS = {
    "not-json": ("{input_size: [16, 16]", "cannot read model card"),
    "nan-constant": ('{"input_size": [16, 16], "scaling": {"offset": NaN, "divisor": 1}}',
                     "NaN is not a number JSON allows"),
    "array": ("[1, 2, 3]", "is not a JSON object"),
    "deeply-nested": ("[" * 100_000 + "]" * 100_000, "cannot read model card"),
    "not-utf8": (b'{"class_names": ["\xff"]}', "cannot read model card"),
}


@pytest.mark.parametrize("text, fragment", CARD_TEXTS.values(), ids=CARD_TEXTS.keys())
def test_unreadable_card_is_one_line(tmp_path, small_png, text, fragment):
    folder = model_folder(tmp_path)
    (folder / "card.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_one_error(explain_model(folder, small_png, tmp_path / "out"), fragment)


def test_oversized_card_is_refused_before_reading(tmp_path):
    folder = model_folder(tmp_path)
    with open(folder / "card.json", "wb") as f:  # sparse: refused after MAX_CARD_BYTES + 1
        f.truncate(MAX_CARD_BYTES + 10)
    with pytest.raises(BadModelError, match="over 16 MiB"):
        card_module.resolve(folder)


def test_good_card_still_resolves(tmp_path):
    folder = model_folder(tmp_path)
    path, card = card_module.resolve(folder)
    assert path == folder / "model.onnx" and card["class_names"] == CARD["class_names"]


# ------------------------------------------------------------------------------------ options

OPTION_CASES = {
    "input-size-differs": (["--input-size", "64"], "--input-size [64, 64] differs"),
    "input-size-huge": (["--input-size", "100000"], "--input-size must be"),
    "layout-differs": (["--layout", "NHWC"], "--layout NHWC reads the channels from axis 3"),
    "layout-unknown": (["--layout", "HWC"], "--layout must be one of NCHW, NHWC"),
    "resize-negative": (["--resize", "-3"], "--resize must be"),
    "divisor-zero": (["--offset", "0", "--divisor", "0"], "--offset/--divisor must be"),
    "offset-nan": (["--offset", "nan", "--divisor", "1"], "'offset': nan"),
    "mean-nan": (["--mean", "nan", "--mean", "0.5", "--mean", "0.5", "--std", "1", "--std", "1",
                  "--std", "1"], "'mean': [nan, 0.5, 0.5]"),
    "std-zero": (["--mean", "0", "--mean", "0", "--mean", "0", "--std", "0", "--std", "1",
                  "--std", "1"], "--mean/--std must be"),
    "mean-two-values": (["--mean", "0", "--mean", "0", "--std", "1", "--std", "1"],
                        "three values each"),
    "seed-negative": (["--method", "rise", "--seed", "-1"], "seed must be an integer >= 0"),
    "threads-zero": (["--threads", "0"], "--threads must be an integer >= 1"),
    "threads-negative": (["--threads", "-4"], "--threads must be an integer >= 1"),
    "target-out-of-range": (["--target", "7"], "class index 7 is out of range 0..4"),
    "target-markup": (["--target", "[/]x"], "unknown class '[/]x'"),
    "provider-unknown": (["--provider", "tpu"], "unknown provider 'tpu'"),
    "unknown-layer": (["--method", "gradcam", "--layer", "nowhere"], "'nowhere'"),
}


@pytest.mark.parametrize("options, fragment", OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_bad_option_is_one_line(tmp_path, small_png, options, fragment):
    folder = model_folder(tmp_path)
    before = snapshot(tmp_path)
    assert_one_error(explain_model(folder, small_png, tmp_path / "out", *options), fragment)
    assert snapshot(tmp_path) == before


LABEL_FILES = {
    "binary": (b"\x00\x01\xff\xfe\x80 not text", "cannot read --labels"),
    "binary-valid-utf8": (b"a\nb\x00\x01\nc\nd\ne\n", "--labels must be a list of class names"),
    "too-few": (b"cat\ndog\n", "--labels has 2 class names, the model scores 5"),
    "too-many": ("\n".join("abcdefg").encode(), "--labels has 7 class names"),
}


@pytest.mark.parametrize("content, fragment", LABEL_FILES.values(), ids=LABEL_FILES.keys())
def test_bad_labels_file(tmp_path, small_png, content, fragment):
    folder = model_folder(tmp_path)
    (tmp_path / "labels.txt").write_bytes(content)
    result = explain_model(folder, small_png, tmp_path / "out", "--labels",
                           str(tmp_path / "labels.txt"))
    assert_one_error(result, fragment)


def test_labels_folder_and_missing(tmp_path, small_png):
    folder = model_folder(tmp_path)
    for labels in (tmp_path, tmp_path / "missing.txt"):
        result = explain_model(folder, small_png, tmp_path / "out", "--labels", str(labels))
        assert_one_error(result, "cannot read --labels")


def test_threads_capped_at_the_cores_said_once(tmp_path, small_png):
    from swag_onnx.runtime import _cores

    folder = model_folder(tmp_path)
    many = _cores() + 7
    result = explain_model(folder, small_png, tmp_path / "out", "--threads", str(many))
    assert result.exit_code == 0, result.output
    note = f"--threads {many} capped at this machine's {_cores()} cores"
    assert result.output.count(note) == 1, result.output


def test_image_name_with_markup_characters(tmp_path):
    """`cat [final].jpg` was reported as `cat .jpg`: the name appears as given."""
    folder = model_folder(tmp_path)
    (tmp_path / "[").mkdir()  # the path holds "[/cat [final]", a closing tag
    photo = tmp_path / "[" / "cat [final].png"
    photo.write_bytes(b"not an image")
    result = explain_model(folder, photo, tmp_path / "out")
    assert "[/cat [final].png" in assert_one_error(result, "not a readable image")
    photo.write_bytes(encoded("PNG"))
    result = explain_model(folder, photo, tmp_path / "out")
    assert result.exit_code == 0 and "cat [final]" in result.output, result.output


# --------------------------------------------------------------------------- output locations

def test_out_is_a_file_or_under_a_file(tmp_path, small_png):
    folder = model_folder(tmp_path)
    (tmp_path / "taken").write_text("keep me")
    for out in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        before = snapshot(tmp_path)
        assert_one_error(explain_model(folder, small_png, out), "taken")
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_cache_variable_pointing_at_a_file(tmp_path, small_png, kind):
    folder = model_folder(tmp_path)
    (tmp_path / "cachefile").write_text("keep me")
    cache = tmp_path / "cachefile" / ("sub" if kind == "under-a-file" else "")
    before = snapshot(tmp_path)
    result = cli(["explain", str(small_png), "--model", str(folder), "--method", "gradient",
                  "--out", str(tmp_path / "out")], env={"SWAG_ONNX_CACHE": str(cache)})
    assert "SWAG_ONNX_CACHE" in assert_one_error(result, "cachefile")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["existing-folder", "under-a-file", "the-input-itself"])
def test_augment_output_that_cannot_be_written(tmp_path, case):
    source = tmp_path / "m.onnx"
    onnx.save_model(classifier(), source)
    (tmp_path / "folder").mkdir()
    output = {"existing-folder": tmp_path / "folder", "under-a-file": source / "x.onnx",
              "the-input-itself": source}[case]
    before = snapshot(tmp_path)
    result = cli(["augment", str(source), "-o", str(output)])
    assert_one_error(result, {"existing-folder": "is a folder", "under-a-file": "m.onnx",
                              "the-input-itself": "the input model"}[case])
    assert snapshot(tmp_path) == before


def test_read_only_output_folder_as_an_unprivileged_user(tmp_path, small_png):
    """Root writes into a 0555 folder, so the run into it is made in a forked child that drops
    to `nobody` (when we are root), after a first run as ourselves has loaded every module and
    filled the cache: one error line, exit 2, the folder still empty."""
    shared = Path(tempfile.mkdtemp(prefix="swag-ro-"))
    try:
        shared.chmod(0o755)
        folder = model_folder(shared)
        small = shared / "small.png"
        small.write_bytes(small_png.read_bytes())
        env = {"SWAG_ONNX_CACHE": str(shared / "cache")}
        warm = cli(["explain", str(small), "--model", str(folder), "--method", "gradient",
                    "--out", str(shared / "warm")], env=env)
        assert warm.exit_code == 0, warm.output
        subprocess.run(["chmod", "-R", "a+rX", str(shared)], check=True)
        subprocess.run(["chmod", "-R", "a+rwX", str(shared / "cache")], check=True)
        (shared / "locked").mkdir(mode=0o555)
        read, written = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: report exit code and output through the pipe
            os.close(read)
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                result = cli(["explain", str(small), "--model", str(folder), "--method",
                              "gradient", "--out", str(shared / "locked")], env=env)
                answer = f"{result.exit_code}\n{result.output}{result.exception!r}"
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                answer = f"-1\n{type(exc).__name__}: {exc}"
            os.write(written, answer.encode())
            os._exit(0)
        os.close(written)
        with os.fdopen(read) as pipe:
            code, output = pipe.read().split("\n", 1)
        os.waitpid(pid, 0)
        lines = [line for line in output.splitlines() if line.startswith("error:")]
        assert code == "2" and len(lines) == 1 and "locked" in lines[0], output
        assert "Traceback" not in output and not list((shared / "locked").iterdir())
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(shared)], check=True)
        subprocess.run(["rm", "-rf", str(shared)], check=True)


def test_nothing_written_outside_out_and_the_cache(tmp_path, small_png):
    """onnxruntime writes ~/.cache/Microsoft/DeveloperTools at import unless
    ORT_DISABLE_TELEMETRY is set before; importing swag_onnx sets it. A whole explain run with
    an empty HOME leaves HOME empty."""
    folder = model_folder(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), SWAG_ONNX_CACHE=str(tmp_path / "cache"))
    code = ("import sys; from swag_onnx.cli import app; sys.argv = ['swag-onnx', 'explain', "
            f"{str(small_png)!r}, '--model', {str(folder)!r}, '--method', 'gradient', "
            f"'--out', {str(tmp_path / 'out')!r}]; app()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert list(home.rglob("*")) == []
    assert (tmp_path / "out" / "small.gradient.png").is_file()


# ------------------------------------------------------------------------------------ evaluate

def evaluate_cli(folder: Path, images: list[Path], out: Path, *options: str):
    return cli(["evaluate", *map(str, images), "--model", str(folder), "--method", "gradient",
                "--out", str(out), *options])


@pytest.mark.parametrize("options, fragment", [
    (["--baseline", "nan"], "baseline must be a finite number, got nan"),
    (["--baseline", "inf"], "baseline must be a finite number"),
    (["--blur-sigma", "-5"], "blur_sigma must be a finite number > 0.0, got -5.0"),
    (["--metric", "nowhere"], "nowhere"),
    (["--seed", "-1"], "seed must be an integer >= 0"),
], ids=["baseline-nan", "baseline-inf", "blur-sigma-negative", "unknown-metric", "seed"])
def test_evaluate_bad_option_writes_nothing(tmp_path, small_png, options, fragment):
    folder = model_folder(tmp_path)
    assert_one_error(evaluate_cli(folder, [small_png], tmp_path / "eval", *options), fragment)
    assert not (tmp_path / "eval").exists()


# --------------------------------------------------------------------------- fuzzing the card

CARD_FUZZ_CHILD = """
import json, resource, signal, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from hypothesis import HealthCheck, given, settings, strategies as st
import onnx
import test_bad_inputs as t
from swag_onnx import card as cards
from swag_onnx.errors import SwagError

def vm_bytes():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize"))

cards.resolve(t.model_folder(Path({tmp!r}), name="warm"))  # onnxruntime probed before the limit
limit = vm_bytes() + {extra}
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
folder = t.model_folder(Path({tmp!r}))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=False), st.text(max_size=20), st.sampled_from(
                        ["NCHW", "NHWC", "center", "none", "RGB", "BGR", "image", "logits",
                         "model.onnx", "auto", "../model.onnx", "/dev/zero"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.sampled_from(
        ["mean", "std", "scale", "offset", "divisor", "x"]), inner, max_size=4)), max_leaves=20)
fields = st.sampled_from(["model", "input_name", "layout", "input_size", "resize", "crop",
                          "scaling", "color_order", "class_names", "score", "default_layers",
                          "provenance"])

def check(text):
    (folder / "card.json").write_bytes(text)
    signal.alarm(20)
    try:
        path, card = cards.resolve(folder)
    except SwagError as exc:
        assert "\\n" not in str(exc), str(exc)
    else:
        assert path.is_file() and isinstance(card, dict)
    finally:
        signal.alarm(0)

common = settings(max_examples={examples}, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))

@common
@given(st.dictionaries(fields, values, max_size=8))
def mutated(changes):
    check(json.dumps({{**t.CARD, **changes}}).encode())

@common
@given(st.binary(max_size=300), st.sampled_from([b"", b"{{", b"[", b'{{"input_size": ']))
def raw(tail, head):
    check(head + tail)

{which}()
# VmHWM: this process's own peak (ru_maxrss keeps the forking parent's across exec)
print("peak-rss-mib", int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) // 1024)
"""


@pytest.mark.parametrize("which, examples", [("mutated", 300), ("raw", 150)])
def test_fuzz_card_parsing_under_a_memory_limit(tmp_path, which, examples):
    """card.resolve on the small model with cards whose fields hold random JSON values (and
    on random bytes): a checked card or one SwagError line, in a child limited to 2 GiB more
    address space than it starts with and to 1 GiB of peak resident memory."""
    code = CARD_FUZZ_CHILD.format(tests=str(Path(__file__).parent), tmp=str(tmp_path),
                                  extra=2 * 2**30, examples=examples, which=which)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    peak = int(done.stdout.split("peak-rss-mib")[-1])
    assert peak < 1024, peak


def test_evaluate_only_undecodable_images_claims_no_file(tmp_path):
    """It printed 'wrote .../results.csv' and there was none: every file it says it wrote
    exists, and the run exits 2 with one error line per image."""
    folder = model_folder(tmp_path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = evaluate_cli(folder, [bad], tmp_path / "eval")
    assert_one_error(result, "not a readable image")
    text = " ".join(result.output.split())  # rich wraps long lines at the console width
    claimed = re.search(r"; wrote (.+?)(?= error:|$)", text)
    for path in claimed.group(1).split(", ") if claimed else []:
        assert Path(path).exists(), f"claims {path}, which is not there: {text}"
