"""The image side of `explain`: load, preprocess per model card, map saliency back, draw, write.

Decisions (each a deliberate choice, tested in tests/test_images.py):

- Decoding: OpenCV (Pillow only reads headers). Files are decoded with `cv2.IMREAD_UNCHANGED`
  (keeps alpha and 16 bits), which does NOT apply the EXIF orientation, so we parse the EXIF
  block that `cv2.imdecodeWithMetadata` returns with Pillow's `Image.Exif` and rotate/flip
  ourselves; the result matches what `IMREAD_COLOR` shows. (OpenCV < 4.12 lacks that function:
  we then decode with `IMREAD_ANYCOLOR | IMREAD_ANYDEPTH`, where OpenCV applies the orientation
  but drops alpha.)
- Alpha is composited over white (transparent pixels become white, as viewers show them), not
  dropped: the colour under fully transparent pixels is often black or garbage.
- 16-bit images are scaled to 8 bits (v / 257, rounded); float images are clipped to [0, 1].
- Bounded resources; every limit below raises BadImageError (one line) before pixels are
  allocated:
  - only regular files are read (os.stat first: a FIFO, device, socket or folder is refused
    without being opened, so a FIFO cannot hang us and /dev/zero cannot fill memory);
  - MAX_FILE_BYTES (512 MiB): files above it are not read. It admits an uncompressed 8-bit RGB
    image at MAX_PIXELS (300 MB).
  - MAX_SIDE (16384) on the longer side and MAX_PIXELS (100 million) on width x height, both
    checked on the size the header declares, read by Pillow without decoding (every format
    Pillow knows; for GIF the logical screen grown to the first frame; TIFF files Pillow cannot
    open are sized from their first IFD). Files whose size cannot be read are refused. The side
    cap bounds the aspect ratio, which bounds preprocessing: a 1 x N image resized to a shorter
    side of 256 would be 256 x 256N. OpenCV gets the same caps through its
    OPENCV_IO_MAX_IMAGE_* variables (unless already set), so its own header parse is held to
    them too. The decoded size is checked again after decoding.
  - Preprocessing and mapping back never allocate the full resized image when it would be
    larger than both the original and _FULL_RESIZE_PIXELS: only the model's crop is computed.
- Resizing uses INTER_AREA when shrinking both sides (anti-aliased, close to torchvision's
  antialiased bilinear) and INTER_LINEAR otherwise.
- Colour map: viridis (perceptually uniform, readable in grey and by colour-blind viewers).

Arrays: images are uint8 RGB (H, W, 3); saliency maps are float32 (H, W).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping

import cv2
import numpy as np
from PIL import Image, TiffImagePlugin
from skimage.segmentation import find_boundaries

from swag_onnx.errors import BadImageError, BadOptionError
from swag_onnx.files import atomic_write, file_kind

MAX_PIXELS = 100_000_000  # width x height
MAX_SIDE = 16_384  # longer side; WebP's own limit is 16383, JPEG's 65500
MAX_FILE_BYTES = 512 * 2**20
# Above this many pixels (and above the original's), the resized image is not materialised.
_FULL_RESIZE_PIXELS = 2**24
for _name, _value in (("PIXELS", MAX_PIXELS), ("WIDTH", MAX_SIDE), ("HEIGHT", MAX_SIDE)):
    os.environ.setdefault(f"OPENCV_IO_MAX_IMAGE_{_name}", str(_value))  # read at first decode
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
COLORMAP = cv2.COLORMAP_VIRIDIS
_UNICODE_TEXT = int(cv2.__version__.split(".")[0]) >= 5  # OpenCV 5's putText draws any UTF-8


# ---------------------------------------------------------------------------------------- loading

def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3), EXIF orientation applied, alpha over white.

    Only regular files are read; the declared size is checked against the caps (MAX_FILE_BYTES,
    MAX_SIDE, MAX_PIXELS) before any pixel is allocated. BadImageError (one line) otherwise.
    """
    path = Path(path)
    with _open_regular(path) as file:
        width, height = _declared_size(file, path)
        _check_size(path, width, height)
        data = _read_capped(file, path)
    try:
        image, exif = _decode(data)
    except MemoryError:
        raise BadImageError(f"{path}: out of memory while decoding; downscale the image or free "
                            "memory") from None
    del data  # the file bytes are not needed for the conversions below
    if image is None or image.size == 0:
        raise BadImageError(f"{path}: not a readable image (unknown format, or a truncated or "
                            "corrupt file); check the file or re-save it as PNG or JPEG")
    _check_size(path, image.shape[1], image.shape[0])
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
        try:
            kind = "folder" if entry.is_dir() else "file" if entry.exists() else None
        except OSError as exc:  # e.g. inside a folder we may not enter
            problems.append(f"{entry}: cannot read it ({exc.strerror}); check its permissions")
            continue
        if kind == "folder":
            try:
                found = sorted(p for p in entry.iterdir()
                               if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            except OSError as exc:
                problems.append(f"{entry}: cannot list the folder ({exc.strerror})")
                continue
            if not found:
                kinds = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
                problems.append(f"{entry}: folder contains no images ({kinds})")
        elif kind == "file":
            found = [entry]  # a FIFO or device given explicitly is refused by load_image
        else:
            problems.append(f"{entry}: no such file or folder")
            continue
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files, problems


def _open_regular(path: Path) -> BinaryIO:
    """Open a regular, non-empty file of at most MAX_FILE_BYTES for reading, or BadImageError.

    os.stat comes first, so a FIFO or device is refused without being opened (opening a FIFO
    blocks until a writer appears); O_NONBLOCK and fstat cover a file swapped in meanwhile.
    """
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise BadImageError(f"{path}: no such file; check the path") from None
    except OSError as exc:
        raise BadImageError(f"{path}: cannot access the file ({exc.strerror}); check its "
                            "permissions") from None
    _check_file_stat(path, info)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read the file ({exc.strerror}); check its "
                            "permissions") from None
    file = os.fdopen(fd, "rb")
    try:
        _check_file_stat(path, os.fstat(fd))
    except BaseException:
        file.close()
        raise
    return file


def _check_file_stat(path: Path, info: os.stat_result) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise BadImageError(f"{path}: is a folder, not an image file; pass the image files in it")
    if not stat.S_ISREG(info.st_mode):
        raise BadImageError(f"{path}: is {file_kind(info.st_mode)}, not a regular file; pass an "
                            "image file")
    if info.st_size == 0:
        raise BadImageError(f"{path}: empty file (0 bytes); re-export or re-download the image")
    if info.st_size > MAX_FILE_BYTES:
        raise BadImageError(f"{path}: {info.st_size:,} bytes, over the limit of "
                            f"{MAX_FILE_BYTES:,}; re-save the image compressed (PNG or JPEG)")


def _read_capped(file: BinaryIO, path: Path) -> bytes:
    """All the bytes of an open file, refusing one that grew past MAX_FILE_BYTES meanwhile."""
    try:
        file.seek(0)
        data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read the file ({exc.strerror}); check the "
                            "file") from None
    if not data:
        raise BadImageError(f"{path}: empty file (0 bytes); re-export or re-download the image")
    if len(data) > MAX_FILE_BYTES:
        raise BadImageError(f"{path}: over the limit of {MAX_FILE_BYTES:,} bytes; re-save the "
                            "image compressed (PNG or JPEG)")
    return data


def _declared_size(file: BinaryIO, path: Path) -> tuple[int, int]:
    """(width, height) declared by the file's header, read by Pillow without decoding pixels.

    For GIF, Pillow's size is the logical screen grown to the first frame's extent: the canvas
    a decoder allocates. TIFF files Pillow cannot open (float RGB, ...) are sized from their
    first IFD, read with Pillow's TIFF tag parser. Unknown formats raise BadImageError.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning: MAX_PIXELS decides
        try:
            with Image.open(file) as opened:
                return opened.size
        except Image.DecompressionBombError:
            raise BadImageError(f"{path}: declares far more pixels than the limit of "
                                f"{MAX_PIXELS:,}; downscale the image first") from None
        except Exception:  # Pillow raises many unrelated types on garbage; all mean "unknown"
            size = _tiff_size(file)
    if size is None:
        raise BadImageError(f"{path}: not a readable image (unknown format, or a truncated or "
                            "corrupt file); check the file or re-save it as PNG or JPEG")
    return size


def _tiff_size(file: BinaryIO) -> tuple[int, int] | None:
    """(ImageWidth, ImageLength) of the first IFD of a TIFF file, or None."""
    try:
        file.seek(0)
        header = file.read(8)
        if header[:4] not in (b"II*\x00", b"MM\x00*"):
            return None
        ifd = TiffImagePlugin.ImageFileDirectory_v2(header)
        file.seek(ifd.next)
        ifd.load(file)
        width, height = ifd.get(256), ifd.get(257)  # ImageWidth, ImageLength
    except Exception:  # a damaged IFD: Pillow raises struct, value and OS errors
        return None
    if not all(isinstance(v, int) and v > 0 for v in (width, height)):
        return None
    return width, height


def _check_size(path: Path, width: int, height: int) -> None:
    """BadImageError when width x height breaks MAX_SIDE or MAX_PIXELS."""
    if max(width, height) > MAX_SIDE:
        raise BadImageError(f"{path}: {width}x{height} has a side over the limit of {MAX_SIDE:,} "
                            "pixels; downscale or crop the image first")
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
    except cv2.error as exc:
        if "alloc" in str(exc).lower() or "memory" in str(exc).lower():
            raise MemoryError("out of memory while decoding the image") from None
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
    """The Orientation tag (1..8) of the EXIF block OpenCV returned (parsed by Pillow); 1 when
    absent or unreadable."""
    if not exif:
        return 1
    tags = Image.Exif()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about damaged IFDs
        try:
            tags.load(exif)
            value = tags.get(0x0112, 1)
        except Exception:  # a damaged EXIF block: keep the image as stored
            return 1
    return value if isinstance(value, int) and value in _ORIENTATIONS else 1


def _to_rgb8(image: np.ndarray, path: Path) -> np.ndarray:
    """Raw OpenCV array (H, W[, C]) gray/GA/BGR/BGRA, 8/16-bit/float -> uint8 RGB (H, W, 3)."""
    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=1 / 257)  # round(v / 257), exact for all v
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
    if channels in (2, 4) and image[:, :, -1].min() < 255:
        return _over_white(color, image[:, :, -1:])
    return np.ascontiguousarray(color, dtype=np.uint8)


def _over_white(color: np.ndarray, alpha: np.ndarray, rows: int = 512) -> np.ndarray:
    """uint8 colour (H, W, 3) with uint8 alpha (H, W, 1) over white, rounded: uint8 (H, W, 3).

    Done in blocks of `rows` rows, so the uint16 temporaries stay small on huge images.
    """
    out = np.empty(color.shape, np.uint8)
    for top in range(0, color.shape[0], rows):
        a = alpha[top:top + rows].astype(np.uint16)
        out[top:top + rows] = (color[top:top + rows] * a + 255 * (255 - a) + 127) // 255
    return out


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
    return _preprocess(rgb, card_recipe(card))


def batch_preprocess(images: Iterable[np.ndarray], card: Mapping[str, Any]
                     ) -> tuple[np.ndarray, list[Geometry]]:
    """Several uint8 RGB images -> float32 (N, 3, h, w) or (N, h, w, 3), and N Geometry."""
    recipe = card_recipe(card)
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
    if not _materialise(geometry):
        return _uncrop_warp(saliency, geometry)
    full = np.zeros(geometry.resized_size, np.float32)
    full[top:top + h, left:left + w] = saliency
    height, width = geometry.original_size
    if full.shape != (height, width):
        full = cv2.resize(full, (width, height), interpolation=cv2.INTER_LINEAR)
    return full


def _materialise(geometry: Geometry) -> bool:
    """Whether the full resized image is small enough to allocate: no larger than the original,
    or at most _FULL_RESIZE_PIXELS. Only upscaling an extreme aspect ratio fails this."""
    (hr, wr), (h0, w0) = geometry.resized_size, geometry.original_size
    return hr * wr <= max(h0 * w0, _FULL_RESIZE_PIXELS)


def _crop_warp(image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The crop of the INTER_LINEAR-resized image, computed alone: (h, w[, C]) like `image`.

    Same sampling as cv2.resize (pixel centres: src = (dst + 0.5) * scale - 0.5, edges
    replicated); warpAffine's 1/32-pixel weights differ from resize's by about one grey level.
    """
    top, left, h, w = geometry.crop_box
    (hr, wr), (h0, w0) = geometry.resized_size, geometry.original_size
    sx, sy = w0 / wr, h0 / hr
    matrix = np.float64([[sx, 0, (left + 0.5) * sx - 0.5], [0, sy, (top + 0.5) * sy - 0.5]])
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _uncrop_warp(saliency: np.ndarray, geometry: Geometry) -> np.ndarray:
    """to_original without the full resized map: float32 (H0, W0).

    The (h, w) map gets a one-pixel ring of zeros where the crop is inside the resized image
    (outside the crop is 0) and of its own edge where the crop reaches the border (cv2.resize
    replicates borders), then warpAffine samples it at the original pixel centres.
    """
    top, left, h, w = geometry.crop_box
    (hr, wr), (h0, w0) = geometry.resized_size, geometry.original_size
    pads = [(1, 1), (1, 1)]
    padded = np.pad(saliency, pads, mode="edge")
    inner = [top > 0, top + h < hr, left > 0, left + w < wr]
    for side, (axis, end) in zip(inner, [(0, 0), (0, -1), (1, 0), (1, -1)]):
        if side:
            np.moveaxis(padded, axis, 0)[end] = 0.0
    sx, sy = wr / w0, hr / h0
    matrix = np.float64([[sx, 0, 0.5 * sx - 0.5 - left + 1], [0, sy, 0.5 * sy - 0.5 - top + 1]])
    return cv2.warpAffine(padded, matrix, (w0, h0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def model_view(rgb: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The part of uint8 RGB (H0, W0, 3) the model sees, resized and cropped: uint8 (h, w, 3)."""
    top, left, h, w = geometry.crop_box
    if not _materialise(geometry):
        return _crop_warp(np.asarray(rgb), geometry)
    return _resize(rgb, geometry.resized_size)[top:top + h, left:left + w]


def scale_model_view(views: np.ndarray, card: Mapping[str, Any]) -> np.ndarray:
    """Model-view images, uint8 RGB (N, h, w, 3) or (h, w, 3) already at the model input size
    (see model_view), -> float32 model input (N, 3, h, w) or (N, h, w, 3): the colour order,
    scaling and layout of `preprocess`, without resizing or cropping again."""
    recipe = card_recipe(card)
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
    height, width = geometry.original_size
    if not _materialise(geometry):
        return _uncrop_nearest(np.asarray(labels_hw, np.int32), geometry)
    full = np.full(geometry.resized_size, -1, np.int32)
    full[top:top + h, left:left + w] = labels_hw
    return cv2.resize(full, (width, height), interpolation=cv2.INTER_NEAREST)


def _uncrop_nearest(labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """labels_to_original without the full resized map, with cv2's INTER_NEAREST indices
    (source index floor(dst * src_size / dst_size), clamped): int32 (H0, W0)."""
    top, left, h, w = geometry.crop_box
    (hr, wr), (h0, w0) = geometry.resized_size, geometry.original_size
    rows = np.minimum(np.floor(np.arange(h0) * (1.0 / (h0 / hr))).astype(np.int64), hr - 1) - top
    cols = np.minimum(np.floor(np.arange(w0) * (1.0 / (w0 / wr))).astype(np.int64), wr - 1) - left
    out = np.full((h0, w0), -1, np.int32)
    r_in, c_in = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
    out[np.ix_(r_in, c_in)] = labels[np.ix_(rows[r_in], cols[c_in])]
    return out


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


def card_recipe(card: Mapping[str, Any]) -> _Recipe:
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
        edges = thick_boundaries(np.asarray(boundaries))
        grow = max(shape[1], shape[0]) // 1500  # keep lines visible on very large images
        if grow:
            edges = cv2.dilate(edges.astype(np.uint8), np.ones((grow + 1, grow + 1), np.uint8)) > 0
        # White on dark pixels, black on bright ones: visible on every part of the colour map.
        # Flat indices: gathering by index is ~2x faster than by a boolean (H, W) mask.
        pixels, where = out.reshape(-1, 3), np.flatnonzero(edges)
        luma = pixels[where].astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
        pixels[where] = np.where(luma < 128, 255, 0).astype(np.uint8)[:, None]
    _draw_caption(out, caption)
    return out


_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def thick_boundaries(labels: np.ndarray) -> np.ndarray:
    """bool (H, W): pixels with a 4-neighbour of another label, i.e. exactly
    skimage.segmentation.find_boundaries(labels, mode="thick").

    labels: int (H, W), any values (labels_to_original marks pixels outside the crop -1).
    find_boundaries compares the grey dilation and erosion (cross footprint) of scipy.ndimage;
    OpenCV's are ~10x faster but have no 32/64-bit integer morphology. The result only depends
    on which neighbours are equal, and the cast to uint16 (modulo 2**16) keeps labels apart when
    max - min < 2**16 (every segmentation here); other label sets go through scikit-image. The
    image border is handled alike: outside pixels never count.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    if labels.size and np.issubdtype(labels.dtype, np.integer) \
            and int(labels.max()) - int(labels.min()) < 2**16:
        small = labels.astype(np.uint16)
        return cv2.dilate(small, _CROSS) != cv2.erode(small, _CROSS)
    return find_boundaries(labels, mode="thick")


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

# zlib level 1, run-length matching and libpng's "Up" filter on every row (lossless, like any
# PNG). On bench_folder's overlays (~450 kB raw): 7.0 ms and 201 kB per image, against 11.8 ms
# and 199 kB for level 1 with libpng's adaptive choice among all five filters per row (level
# 0: 4.9 ms, 440 kB). An older OpenCV without IMWRITE_PNG_FILTER keeps the adaptive choice.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1,
              cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE] + \
    ([cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP] if hasattr(cv2, "IMWRITE_PNG_FILTER")
     else [])


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write uint8 RGB (H, W, 3) or gray (H, W) as PNG, atomically."""
    image = np.asarray(rgb)
    if image.dtype != np.uint8 or image.shape[2:] not in ((), (3,)) or image.ndim not in (2, 3):
        raise ValueError(f"write_png needs uint8 (H, W, 3) or (H, W), got {image.dtype} "
                         f"{image.shape}")
    ok, encoded = cv2.imencode(".png", image if image.ndim == 2 else image[:, :, ::-1],
                               PNG_PARAMS)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {image.shape} as PNG")
    atomic_write(path, lambda f: f.write(encoded.tobytes()))


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as .npy (no pickles), atomically."""
    atomic_write(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write obj as indented JSON (NumPy scalars and arrays allowed), atomically."""
    atomic_write(path, lambda f: f.write(
        (json.dumps(obj, indent=2, default=_json_default) + "\n").encode("utf-8")))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")
