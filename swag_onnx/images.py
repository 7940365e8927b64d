"""The image side of `explain`: load, preprocess per model card, map saliency back, draw, write.

Decisions (each a deliberate choice, tested in tests/test_images.py):

- Decoding: OpenCV only. Files are decoded with `cv2.IMREAD_UNCHANGED` (keeps alpha and 16 bits),
  which does NOT apply the EXIF orientation, so we read the EXIF block that
  `cv2.imdecodeWithMetadata` returns and rotate/flip ourselves; the result matches what
  `IMREAD_COLOR` shows. (OpenCV < 4.12 lacks that function: we then decode with
  `IMREAD_ANYCOLOR | IMREAD_ANYDEPTH`, where OpenCV applies the orientation but drops alpha.)
- Alpha is composited over white (transparent pixels become white, as viewers show them), not
  dropped: the colour under fully transparent pixels is often black or garbage.
- 16-bit images are scaled to 8 bits (v / 257, rounded); float images are clipped to [0, 1].
- Large images are refused, not shrunk: the width and height are read from the PNG, JPEG, BMP,
  WebP or TIFF header before decoding, and anything above MAX_PIXELS raises BadImageError without
  allocating pixels. Other formats are checked after decoding (OpenCV caps those at 2**30).
- Resizing uses INTER_AREA when shrinking both sides (anti-aliased, close to torchvision's
  antialiased bilinear) and INTER_LINEAR otherwise.
- Colour map: viridis (perceptually uniform, readable in grey and by colour-blind viewers).

Arrays: images are uint8 RGB (H, W, 3); saliency maps are float32 (H, W).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import struct
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping

import cv2
import numpy as np
from skimage.segmentation import find_boundaries

from swag_onnx.errors import BadImageError, BadOptionError

MAX_PIXELS = 100_000_000
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
COLORMAP = cv2.COLORMAP_VIRIDIS
_UNICODE_TEXT = int(cv2.__version__.split(".")[0]) >= 5  # OpenCV 5's putText draws any UTF-8


# ---------------------------------------------------------------------------------------- loading

def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3), EXIF orientation applied, alpha over white."""
    path = Path(path)
    data = _read_bytes(path)
    size = _header_size(data)
    if size is not None:
        _check_pixels(path, *size)
    image, exif = _decode(data)
    if image is None or image.size == 0:
        raise BadImageError(f"{path}: not a readable image (unknown format, or a truncated or "
                            "corrupt file); check the file or re-save it as PNG or JPEG")
    _check_pixels(path, image.shape[1], image.shape[0])
    return _to_rgb8(_orient(image, _exif_orientation(exif)), path)


def collect_images(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand folders (not recursively) to their image files, sorted; keep explicit files as given.

    Returns (files, problems): problems are one-line messages for missing paths and folders
    without images; one bad path does not stop the others. Duplicates are kept once.
    """
    files: list[Path] = []
    problems: list[str] = []
    seen: set[Path] = set()
    for entry in map(Path, paths):
        if entry.is_dir():
            try:
                found = sorted(p for p in entry.iterdir()
                               if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            except OSError as exc:
                problems.append(f"{entry}: cannot list the folder ({exc.strerror})")
                continue
            if not found:
                kinds = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
                problems.append(f"{entry}: folder contains no images ({kinds})")
        elif entry.exists():
            found = [entry]
        else:
            problems.append(f"{entry}: no such file or folder")
            continue
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files, problems


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise BadImageError(f"{path}: is a folder, not an image file; pass the image files in it")
    if not path.exists():
        raise BadImageError(f"{path}: no such file; check the path")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read the file ({exc.strerror}); check its "
                            "permissions") from None
    if not data:
        raise BadImageError(f"{path}: empty file (0 bytes); re-export or re-download the image")
    return data


def _check_pixels(path: Path, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise BadImageError(f"{path}: {width}x{height} is {width * height:,} pixels, over the "
                            f"limit of {MAX_PIXELS:,}; downscale the image first")


@contextlib.contextmanager
def _quiet_opencv():
    """Silence OpenCV's own log lines while decoding: failures become one BadImageError line."""
    logging = cv2.utils.logging
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(level)


def _decode(data: bytes) -> tuple[np.ndarray | None, bytes]:
    """Decode file bytes -> (raw OpenCV array (H, W[, C]) BGR[A] or None, EXIF bytes or b"")."""
    buf = np.frombuffer(data, np.uint8)
    try:
        with _quiet_opencv():
            if hasattr(cv2, "imdecodeWithMetadata"):
                image, kinds, blobs = cv2.imdecodeWithMetadata(buf, cv2.IMREAD_UNCHANGED)
                exif = [bytes(np.asarray(b).ravel()) for k, b in zip(kinds, blobs)
                        if k == cv2.IMAGE_METADATA_EXIF]
                return image, exif[0] if exif else b""
            return cv2.imdecode(buf, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH), b""
    except cv2.error:
        return None, b""


# Orientation tag value -> the transform that makes the image upright (TIFF/EXIF spec, tag 0x0112).
_ORIENTATIONS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a.swapaxes(0, 1)[:, ::-1],
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: a.swapaxes(0, 1)[::-1],
}


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    transform = _ORIENTATIONS.get(orientation)
    return image if transform is None else np.ascontiguousarray(transform(image))


def _exif_orientation(exif: bytes) -> int:
    """The Orientation tag (1..8) of an EXIF block (TIFF structure), 1 when absent or unreadable."""
    if exif.startswith(b"Exif\x00\x00"):
        exif = exif[6:]
    return _tiff_tags(exif, {0x0112}).get(0x0112, 1)


def _tiff_tags(data: bytes, wanted: set[int]) -> dict[int, int]:
    """SHORT/LONG values of the `wanted` tags in the first IFD of TIFF-structured bytes."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return {}
    order = "<" if data[:2] == b"II" else ">"
    found = {}
    try:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        for k in range(count):
            tag, kind, _, value = struct.unpack_from(order + "HHI4s", data, ifd + 2 + 12 * k)
            if tag in wanted and kind in (3, 4):  # 3: SHORT, 4: LONG
                found[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), value)[0]
    except struct.error:
        pass
    return found


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP, WebP or TIFF header; None for other or odd files."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack_from(">II", data, 16)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM":
            fmt = "<HH" if struct.unpack_from("<I", data, 14)[0] == 12 else "<ii"
            width, height = struct.unpack_from(fmt, data, 18)
            return abs(width), abs(height)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        tags = _tiff_tags(data, {256, 257})  # ImageWidth, ImageLength
        if len(tags) == 2:
            return tags[256], tags[257]
    except struct.error:
        pass
    return None


_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT, JPG, DAC)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            i += 2
        elif marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        elif marker == 0xDA:  # start of scan before any frame header: not a JPEG we know
            return None
        else:
            i += 2 + struct.unpack_from(">H", data, i + 2)[0]
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L":
        bits = struct.unpack_from("<I", data, 21)[0]
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None


def _to_rgb8(image: np.ndarray, path: Path) -> np.ndarray:
    """Raw OpenCV array (H, W[, C]) gray/GA/BGR/BGRA, 8/16-bit/float -> uint8 RGB (H, W, 3)."""
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype.kind == "f":
        image = (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise BadImageError(f"{path}: unsupported pixel type {image.dtype}; convert the image "
                            "to 8-bit RGB")
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels not in (1, 2, 3, 4):
        raise BadImageError(f"{path}: {channels} channels is not a photo; convert it to RGB")
    color = image[:, :, :1] if channels <= 2 else image[:, :, 2::-1]  # gray or BGR -> RGB
    color = np.broadcast_to(color, image.shape[:2] + (3,))
    if channels in (2, 4):
        alpha = image[:, :, -1:]
        if alpha.min() < 255:
            a = alpha.astype(np.uint16)
            color = (color * a + 255 * (255 - a) + 127) // 255  # over white, rounded
    return np.ascontiguousarray(color, dtype=np.uint8)


# ---------------------------------------------------------------------------------- preprocessing

@dataclass(frozen=True)
class Geometry:
    """How an original image maps to the model input: resize, then crop.

    original_size (H0, W0) -> resized_size (Hr, Wr) -> crop_box (top, left, h, w) in the resized
    image, where (h, w) is the model input size.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]

    @property
    def input_size(self) -> tuple[int, int]:
        """(h, w) of the model input."""
        return self.crop_box[2], self.crop_box[3]


@dataclass(frozen=True)
class _Recipe:
    """A validated model card: x = (pixel in model channel order - offset) / divisor."""

    layout: str
    size: tuple[int, int]
    resize: int | None
    bgr: bool
    offset: np.ndarray  # (3,) float32
    divisor: np.ndarray  # (3,) float32


def preprocess(rgb: np.ndarray, card: Mapping[str, Any]) -> tuple[np.ndarray, Geometry]:
    """uint8 RGB (H0, W0, 3) -> model input float32 (1, 3, h, w) or (1, h, w, 3), and its Geometry.

    Card fields (see swag_onnx.card): layout "NCHW"/"NHWC"; input_size [h, w]; scaling
    {"mean", "std", "scale"} meaning (pixel * scale - mean) / std (scale defaults to 1/255), or
    {"offset", "divisor"} meaning (pixel - offset) / divisor, a number or one per channel in the
    model's colour order; optional: resize N (shorter side to N, then a centre crop of
    input_size: crop "center") or null, the default (straight to input_size: crop "none");
    color_order "RGB" (default) or "BGR" of the model input.
    """
    return _preprocess(rgb, _recipe(card))


def batch_preprocess(images: Iterable[np.ndarray], card: Mapping[str, Any]
                     ) -> tuple[np.ndarray, list[Geometry]]:
    """Several uint8 RGB images -> float32 (N, 3, h, w) or (N, h, w, 3), and N Geometry."""
    recipe = _recipe(card)
    results = [_preprocess(rgb, recipe) for rgb in images]
    if not results:
        raise ValueError("batch_preprocess needs at least one image")
    return np.concatenate([x for x, _ in results]), [g for _, g in results]


def to_original(saliency_hw: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A map (h, w) at model input resolution -> float32 (H0, W0) on the original image.

    The crop is undone (outside the crop: 0), then the resize (cv2.resize, INTER_LINEAR).
    """
    saliency = np.asarray(saliency_hw, dtype=np.float32)
    top, left, h, w = geometry.crop_box
    if saliency.shape != (h, w):
        raise ValueError(f"saliency map has shape {saliency.shape}, the model input is {(h, w)}")
    full = np.zeros(geometry.resized_size, np.float32)
    full[top:top + h, left:left + w] = saliency
    height, width = geometry.original_size
    if full.shape != (height, width):
        full = cv2.resize(full, (width, height), interpolation=cv2.INTER_LINEAR)
    return full


def model_view(rgb: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The part of uint8 RGB (H0, W0, 3) the model sees, resized and cropped: uint8 (h, w, 3)."""
    top, left, h, w = geometry.crop_box
    return _resize(rgb, geometry.resized_size)[top:top + h, left:left + w]


def scale_model_view(views: np.ndarray, card: Mapping[str, Any]) -> np.ndarray:
    """Model-view images, uint8 RGB (N, h, w, 3) or (h, w, 3) already at the model input size
    (see model_view), -> float32 model input (N, 3, h, w) or (N, h, w, 3): the colour order,
    scaling and layout of `preprocess`, without resizing or cropping again."""
    recipe = _recipe(card)
    v = np.asarray(views)
    if v.ndim == 3:
        v = v[None]
    if v.ndim != 4 or v.shape[3] != 3 or v.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images (N, h, w, 3), got {v.dtype} {v.shape}")
    if v.shape[1:3] != recipe.size:
        raise ValueError(f"images are {v.shape[1:3]}, the model input is {recipe.size}; "
                         "use model_view (or preprocess) first")
    return _scale(v, recipe)


def _scale(views: np.ndarray, recipe: _Recipe) -> np.ndarray:
    """uint8 RGB (N, h, w, 3) -> float32 model input: colour order, (v - offset) / divisor
    (computed in float64, in place on a contiguous copy in the model's layout), layout."""
    if recipe.bgr:
        views = views[..., ::-1]
    if recipe.layout == "NCHW":
        x = np.ascontiguousarray(views.transpose(0, 3, 1, 2)).astype(np.float64)
        per_channel = (1, 3, 1, 1)
    else:
        x = views.astype(np.float64)
        per_channel = (1, 1, 1, 3)
    x -= recipe.offset.reshape(per_channel)
    x /= recipe.divisor.reshape(per_channel)
    return x.astype(np.float32)


def labels_to_original(labels_hw: np.ndarray, geometry: Geometry) -> np.ndarray:
    """An int label map (h, w) at model input resolution -> int32 (H0, W0), nearest neighbour;
    outside the crop: -1."""
    top, left, h, w = geometry.crop_box
    full = np.full(geometry.resized_size, -1, np.int32)
    full[top:top + h, left:left + w] = labels_hw
    height, width = geometry.original_size
    return cv2.resize(full, (width, height), interpolation=cv2.INTER_NEAREST)


def _preprocess(rgb: np.ndarray, recipe: _Recipe) -> tuple[np.ndarray, Geometry]:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {rgb.dtype} {rgb.shape}")
    geometry = _geometry(rgb.shape[:2], recipe)
    return _scale(model_view(rgb, geometry)[None], recipe), geometry


def _geometry(original: tuple[int, int], recipe: _Recipe) -> Geometry:
    (h0, w0), (h, w) = original, recipe.size
    if recipe.resize is None:
        return Geometry((h0, w0), (h, w), (0, 0, h, w))
    short = recipe.resize  # torchvision Resize(int): shorter side -> N, longer side truncated
    hr, wr = (short, int(short * w0 / h0)) if h0 <= w0 else (int(short * h0 / w0), short)
    if hr < h or wr < w:  # the crop would not fit (resize < input size): cover it instead
        s = max(h / h0, w / w0)
        hr, wr = max(h, round(h0 * s)), max(w, round(w0 * s))
    top, left = int(round((hr - h) / 2.0)), int(round((wr - w) / 2.0))  # torchvision CenterCrop
    return Geometry((h0, w0), (hr, wr), (top, left, h, w))


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to size (h, w): INTER_AREA when both sides shrink, INTER_LINEAR otherwise."""
    (h, w), (h0, w0) = size, image.shape[:2]
    if (h, w) == (h0, w0):
        return image
    shrink = h <= h0 and w <= w0
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _recipe(card: Mapping[str, Any]) -> _Recipe:
    """Validate the card fields preprocessing uses; BadOptionError names the bad field.

    layout, input_size and scaling are required; resize, crop and color_order have defaults,
    since a card may be built from command-line arguments alone.
    """
    if not isinstance(card, Mapping):
        raise BadOptionError(f"model card must be a JSON object, got {type(card).__name__}")

    def field(name: str) -> Any:
        if name not in card:
            raise BadOptionError(f"model card: missing field {name!r}")
        return card[name]

    def bad(name: str, expected: str) -> BadOptionError:
        return BadOptionError(f"model card: field {name!r} must be {expected}, "
                              f"got {card.get(name)!r}")

    layout = field("layout")
    if layout not in ("NCHW", "NHWC"):
        raise bad("layout", "'NCHW' or 'NHWC'")
    size = field("input_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(_is_pos_int(v) for v in size)):
        raise bad("input_size", "[height, width] (two positive integers)")
    resize = card.get("resize")
    if resize is not None and not _is_pos_int(resize):
        raise bad("resize", "a positive integer (shorter side) or null")
    crop = card.get("crop", "none" if resize is None else "center")
    if crop not in ("center", "none"):
        raise bad("crop", "'center' or 'none'")
    if resize is not None and crop == "none":
        raise BadOptionError(f"model card: 'resize' {resize} needs 'crop' 'center' (resize the "
                             "shorter side, then crop); use 'resize' null to resize to input_size")
    order = card.get("color_order", "RGB")
    if order not in ("RGB", "BGR"):
        raise bad("color_order", "'RGB' or 'BGR'")
    scaling = field("scaling")
    if isinstance(scaling, Mapping) and {"mean", "std"} <= scaling.keys():
        scale = _channels(scaling, "scale") if "scale" in scaling else np.full(3, 1 / 255)
        offset, divisor = _channels(scaling, "mean") / scale, _channels(scaling, "std") / scale
    elif isinstance(scaling, Mapping) and {"offset", "divisor"} <= scaling.keys():
        offset, divisor = _channels(scaling, "offset"), _channels(scaling, "divisor")
    else:
        raise bad("scaling", '{"mean", "std"[, "scale"]} or {"offset", "divisor"}')
    if not np.all(np.isfinite(offset)) or not np.all(np.isfinite(divisor)) or np.any(divisor == 0):
        raise bad("scaling", "finite values with a non-zero std/scale/divisor")
    return _Recipe(layout, (int(size[0]), int(size[1])), None if resize is None else int(resize),
                   order == "BGR", offset.astype(np.float32), divisor.astype(np.float32))


def _is_pos_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _channels(scaling: Mapping[str, Any], key: str) -> np.ndarray:
    """A scaling entry (a number, or one per channel) as float64 (3,)."""
    value = scaling[key]
    values = value if isinstance(value, (list, tuple)) else [value]
    if len(values) not in (1, 3) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise BadOptionError(f"model card: field 'scaling.{key}' must be a number or 3 numbers, "
                             f"got {value!r}")
    return np.broadcast_to(np.asarray(values, np.float64), (3,))


# -------------------------------------------------------------------------------------- drawing

def normalize(saliency: np.ndarray) -> np.ndarray:
    """Min-max scale a map to float32 [0, 1], same shape; a constant map becomes all zeros.

    Non-finite values count as the smallest finite value.
    """
    m = np.asarray(saliency, dtype=np.float32)
    finite = np.isfinite(m)
    if not finite.all():
        m = np.where(finite, m, m[finite].min() if finite.any() else 0.0)
    if m.size == 0:
        return m.copy()
    low, high = float(m.min()), float(m.max())
    if high - low <= 0.0 or not np.isfinite(high - low):
        return np.zeros_like(m)
    return ((m - low) / (high - low)).astype(np.float32)


def overlay(rgb: np.ndarray, saliency: np.ndarray, caption: str,
            boundaries: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
    """Blend a viridis-coloured map on a photo, with superpixel lines and a caption.

    rgb: uint8 (H, W, 3); saliency: (H, W), min-max normalised here; boundaries: int labels (H, W)
    or None; alpha: weight of the colour map in [0, 1]. Returns uint8 RGB (H, W, 3).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {rgb.dtype} {rgb.shape}")
    shape = rgb.shape[:2]
    if np.shape(saliency) != shape:
        raise ValueError(f"saliency has shape {np.shape(saliency)}, the image is {shape}; "
                         "map it with to_original first")
    if not 0.0 <= alpha <= 1.0:
        raise BadOptionError(f"overlay alpha must be in [0, 1], got {alpha}")
    heat = cv2.applyColorMap(np.round(normalize(saliency) * 255).astype(np.uint8), COLORMAP)
    out = cv2.addWeighted(rgb, 1.0 - alpha, heat[:, :, ::-1], alpha, 0.0)
    if boundaries is not None:
        if np.shape(boundaries) != shape:
            raise ValueError(f"boundaries have shape {np.shape(boundaries)}, the image is {shape}")
        edges = find_boundaries(np.asarray(boundaries), mode="thick")
        grow = max(shape[1], shape[0]) // 1500  # keep lines visible on very large images
        if grow:
            edges = cv2.dilate(edges.astype(np.uint8), np.ones((grow + 1, grow + 1), np.uint8)) > 0
        # White on dark pixels, black on bright ones: visible on every part of the colour map.
        luma = out[edges].astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
        out[edges] = np.where(luma[:, None] < 128, 255, 0).astype(np.uint8)
    _draw_caption(out, caption)
    return out


def _draw_caption(image: np.ndarray, caption: str) -> None:
    """Write `caption` in white on a dark box at the top left, wrapped to the image width."""
    text = caption.strip()
    if not _UNICODE_TEXT:  # OpenCV 4's Hershey fonts are ASCII only: drop accents and the rest
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().strip()
    if not text:
        return
    height, width = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.35, width / 1000)
    thickness = max(1, round(scale * 1.5))
    pad = max(2, round(6 * scale))
    lines = _wrap(text, lambda s: cv2.getTextSize(s, font, scale, thickness)[0][0], width - 2 * pad)
    (_, text_h), baseline = cv2.getTextSize("Ag", font, scale, thickness)
    line_h = text_h + baseline + pad // 2
    text_w = max(cv2.getTextSize(s, font, scale, thickness)[0][0] for s in lines)
    box_w = min(width, text_w + 2 * pad)
    box_h = min(height, len(lines) * line_h + pad)
    image[:box_h, :box_w] = (image[:box_h, :box_w] * 0.3).astype(np.uint8)
    for k, line in enumerate(lines):
        y = pad + text_h + k * line_h
        cv2.putText(image, line, (pad, y), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def _wrap(text: str, measure: Callable[[str], int], limit: int) -> list[str]:
    """Greedy word wrap so that each line measures <= limit (a word wider than that is split)."""
    lines: list[str] = []
    for word in text.split():
        while len(word) > 1 and measure(word) > limit:
            cut = next(k for k in range(len(word) - 1, 0, -1)
                       if k == 1 or measure(word[:k]) <= limit)
            lines.append(word[:cut])
            word = word[cut:]
        if lines and measure(f"{lines[-1]} {word}") <= limit:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


# -------------------------------------------------------------------------------------- writing

def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write uint8 RGB (H, W, 3) or gray (H, W) as PNG, atomically."""
    image = np.asarray(rgb)
    if image.dtype != np.uint8 or image.shape[2:] not in ((), (3,)) or image.ndim not in (2, 3):
        raise ValueError(f"write_png needs uint8 (H, W, 3) or (H, W), got {image.dtype} "
                         f"{image.shape}")
    # Compression level 1: files ~10% larger than the default 3, encoding ~30% faster.
    ok, encoded = cv2.imencode(".png", image if image.ndim == 2 else image[:, :, ::-1],
                               [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {image.shape} as PNG")
    _atomic_write(path, lambda f: f.write(encoded.tobytes()))


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as .npy (no pickles), atomically."""
    _atomic_write(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write obj as indented JSON (NumPy scalars and arrays allowed), atomically."""
    _atomic_write(path, lambda f: f.write(
        (json.dumps(obj, indent=2, default=_json_default) + "\n").encode("utf-8")))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Write via a temp file in the destination folder and os.replace; no partial file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
