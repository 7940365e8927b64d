"""swag_onnx.images: real files in every format, preprocessing geometry, drawing, writing."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image  # tests only: to write EXIF, palette and gray+alpha files OpenCV cannot
from skimage import data
from skimage.segmentation import find_boundaries, slic

from swag_onnx import images
from swag_onnx.errors import BadImageError, BadOptionError
from swag_onnx.images import (
    Geometry, batch_preprocess, collect_images, load_image, normalize, overlay, preprocess,
    to_original, write_json, write_npy, write_png,
)

CHELSEA = data.chelsea()  # (300, 451, 3) uint8 RGB
CAMERA = data.camera()  # (512, 512) uint8 gray
CAMERA_RGB = np.dstack([CAMERA] * 3)

TORCH_CARD = {
    "input_name": "image", "layout": "NCHW", "input_size": [224, 224], "resize": 256,
    "crop": "center", "color_order": "RGB",
    "scaling": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": 1 / 255},
}
KERAS_CARD = {
    "input_name": "image", "layout": "NHWC", "input_size": [224, 224], "resize": None,
    "crop": "none", "color_order": "RGB", "scaling": {"offset": 127.0, "divisor": 128.0},
}
IDENTITY = {"offset": 0.0, "divisor": 1.0}


def card(base=TORCH_CARD, **changes):
    return {**base, **changes}


def write_bytes(path, content: bytes):
    path.write_bytes(content)
    return path


def pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def cv2_bytes(ext: str, array: np.ndarray, params=()) -> bytes:
    ok, encoded = cv2.imencode(ext, array, list(params))
    assert ok
    return encoded.tobytes()


def raises_bad_image(path) -> str:
    with pytest.raises(BadImageError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


# ---------------------------------------------------------------------------------------- loading

def test_png_and_jpeg_load_as_rgb(tmp_path):
    png = write_bytes(tmp_path / "cat.png", cv2_bytes(".png", CHELSEA[:, :, ::-1]))
    jpg = write_bytes(tmp_path / "cat.jpg", cv2_bytes(".jpg", CHELSEA[:, :, ::-1],
                                                       [cv2.IMWRITE_JPEG_QUALITY, 95]))
    loaded = load_image(png)
    assert loaded.dtype == np.uint8 and loaded.shape == CHELSEA.shape
    np.testing.assert_array_equal(loaded, CHELSEA)
    assert np.abs(load_image(str(jpg)).astype(int) - CHELSEA).mean() < 3


@pytest.mark.parametrize("ext", [".bmp", ".tiff", ".webp"])
def test_other_formats(tmp_path, ext):
    coffee = data.coffee()
    path = write_bytes(tmp_path / f"coffee{ext}", cv2_bytes(ext, coffee[:, :, ::-1]))
    loaded = load_image(path)
    assert loaded.shape == coffee.shape
    assert np.abs(loaded.astype(int) - coffee).mean() < 3


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    path = write_bytes(tmp_path / "camera.png", cv2_bytes(".png", CAMERA))
    loaded = load_image(path)
    assert loaded.shape == CAMERA.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(loaded[:, :, c], CAMERA)


def test_rgba_png_is_composited_over_white(tmp_path):
    alpha = np.zeros(CHELSEA.shape[:2], np.uint8)
    alpha[:, 150:300] = 128
    alpha[:, 300:] = 255
    bgra = np.dstack([CHELSEA[:, :, ::-1], alpha])
    loaded = load_image(write_bytes(tmp_path / "rgba.png", cv2_bytes(".png", bgra)))
    assert loaded.shape == CHELSEA.shape
    assert (loaded[:, :150] == 255).all()  # fully transparent -> white
    np.testing.assert_array_equal(loaded[:, 300:], CHELSEA[:, 300:])  # opaque -> unchanged
    half = (CHELSEA[:, 150:300].astype(float) * 128 + 255 * 127) / 255
    assert np.abs(loaded[:, 150:300] - half).max() <= 0.5 + 1e-9


def test_gray_alpha_png(tmp_path):
    gray = CAMERA[:100, :120]
    alpha = np.full(gray.shape, 255, np.uint8)
    alpha[:, :60] = 0
    la = Image.fromarray(np.dstack([gray, alpha]), "LA")
    loaded = load_image(write_bytes(tmp_path / "la.png", pil_bytes(la, "PNG")))
    assert loaded.shape == gray.shape + (3,)
    assert (loaded[:, :60] == 255).all()
    np.testing.assert_array_equal(loaded[:, 60:, 1], gray[:, 60:])


def test_palette_png(tmp_path):
    palette = Image.fromarray(CHELSEA).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    path = write_bytes(tmp_path / "palette.png", pil_bytes(palette, "PNG"))
    np.testing.assert_array_equal(load_image(path), np.asarray(palette.convert("RGB")))


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    deep = CHELSEA.astype(np.uint16) * 257 + np.uint16(100)  # 8-bit value v -> about 257 v
    path = write_bytes(tmp_path / "deep.png", cv2_bytes(".png", deep[:, :, ::-1]))
    loaded = load_image(path)
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, CHELSEA)


def test_float_tiff_is_clipped_to_unit_range(tmp_path):
    ramp = np.linspace(-0.5, 1.5, 64, dtype=np.float32)[None, :].repeat(8, 0)
    loaded = load_image(write_bytes(tmp_path / "ramp.tiff", cv2_bytes(".tiff", ramp)))
    expected = np.round(np.clip(ramp, 0, 1) * 255)
    assert np.abs(loaded[:, :, 0].astype(int) - expected).max() <= 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_matches_opencv_imread_color(tmp_path, orientation):
    content = pil_bytes(Image.fromarray(CHELSEA), "JPEG", quality=95,
                        exif=exif_with_orientation(orientation))
    loaded = load_image(write_bytes(tmp_path / "oriented.jpg", content))
    # IMREAD_COLOR applies the EXIF orientation: our IMREAD_UNCHANGED path must agree exactly.
    upright = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(loaded, upright)


@pytest.mark.parametrize("orientation, rotate", [(6, -1), (8, 1)])
def test_jpeg_exif_rotation_against_a_rotated_reference(tmp_path, orientation, rotate):
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise to be upright.
    content = pil_bytes(Image.fromarray(CHELSEA), "JPEG", quality=95,
                        exif=exif_with_orientation(orientation))
    loaded = load_image(write_bytes(tmp_path / "rotated.jpg", content))
    reference = np.rot90(CHELSEA, rotate)
    assert loaded.shape == (451, 300, 3) == reference.shape
    assert np.abs(loaded.astype(int) - reference).mean() < 3


def test_png_exif_orientation_is_applied(tmp_path):
    content = pil_bytes(Image.fromarray(CHELSEA), "PNG", exif=exif_with_orientation(8))
    loaded = load_image(write_bytes(tmp_path / "rotated.png", content))
    np.testing.assert_array_equal(loaded, np.rot90(CHELSEA, 1))


def test_old_opencv_fallback_still_applies_orientation(tmp_path, monkeypatch):
    """Without imdecodeWithMetadata (OpenCV < 4.12) OpenCV rotates itself; alpha is dropped."""
    monkeypatch.delattr(cv2, "imdecodeWithMetadata")
    content = pil_bytes(Image.fromarray(CHELSEA), "JPEG", quality=95,
                        exif=exif_with_orientation(6))
    loaded = load_image(write_bytes(tmp_path / "rotated.jpg", content))
    assert np.abs(loaded.astype(int) - np.rot90(CHELSEA, -1)).mean() < 3
    rgba = np.dstack([CHELSEA[:, :, ::-1], np.zeros(CHELSEA.shape[:2], np.uint8)])
    flat = load_image(write_bytes(tmp_path / "rgba.png", cv2_bytes(".png", rgba)))
    np.testing.assert_array_equal(flat, CHELSEA)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_files_are_bad_images(tmp_path, ext):
    content = cv2_bytes(ext, CHELSEA[:, :, ::-1])
    path = write_bytes(tmp_path / f"half{ext}", content[: len(content) // 2])
    assert "truncated" in raises_bad_image(path)


def test_text_file_named_jpg(tmp_path):
    raises_bad_image(write_bytes(tmp_path / "notes.jpg", b"just some text, not a photo\n" * 10))


def test_missing_empty_folder_unreadable(tmp_path, monkeypatch):
    assert "no such file" in raises_bad_image(tmp_path / "missing.png")
    assert "empty" in raises_bad_image(write_bytes(tmp_path / "empty.png", b""))
    assert "folder" in raises_bad_image(tmp_path)
    locked = write_bytes(tmp_path / "locked.png", cv2_bytes(".png", CAMERA))
    real_open = os.open

    def denied(name, *args, **kwargs):  # chmod 0 does not stop root (CI): fail the open itself
        if Path(name) == locked:
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, *args, **kwargs)

    # (tests/test_bad_inputs.py also reads a chmod 000 file as an unprivileged user)
    monkeypatch.setattr(os, "open", denied)
    assert "cannot read" in raises_bad_image(locked)


def fake_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (the pixel data is a stub)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"")
            + chunk(b"IEND", b""))


def test_huge_png_is_refused_from_its_header(tmp_path):
    message = raises_bad_image(write_bytes(tmp_path / "huge.png", fake_png(12_000, 12_000)))
    assert "12000x12000" in message and "limit" in message
    # above twice Pillow's MAX_IMAGE_PIXELS, Pillow itself refuses to give the size
    message = raises_bad_image(write_bytes(tmp_path / "huger.png", fake_png(16_000, 16_000)))
    assert "limit of 100,000,000" in message


def test_huge_jpeg_is_refused_from_its_header(tmp_path):
    content = bytearray(cv2_bytes(".jpg", CHELSEA[:, :, ::-1]))
    sof = content.index(b"\xff\xc0")
    content[sof + 5: sof + 9] = struct.pack(">HH", 9_000, 12_000)  # height, width
    message = raises_bad_image(write_bytes(tmp_path / "huge.jpg", bytes(content)))
    assert "12000x9000" in message


@pytest.mark.parametrize("ext, params", [
    (".png", ()), (".jpg", ()), (".bmp", ()), (".tiff", ()), (".ppm", ()), (".gif", ()),
    (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80)), (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101)),
])
def test_pixel_limit_is_read_from_the_header(tmp_path, monkeypatch, ext, params):
    """The header's size (Pillow) decides: exactly MAX_PIXELS loads, one pixel less refuses,
    and decoding is never reached for the refused file."""
    path = write_bytes(tmp_path / f"cat{ext}", cv2_bytes(ext, CHELSEA[:123, :257, ::-1], params))
    monkeypatch.setattr(images, "MAX_PIXELS", 257 * 123)
    assert load_image(path).shape == (123, 257, 3)
    monkeypatch.setattr(images, "MAX_PIXELS", 257 * 123 - 1)
    monkeypatch.setattr(images, "_decode", lambda data: pytest.fail("decoded a refused image"))
    assert "257x123" in raises_bad_image(path)


def test_side_limit_is_read_from_the_header(tmp_path, monkeypatch):
    path = write_bytes(tmp_path / "strip.png", cv2_bytes(".png", CHELSEA[:3, :, ::-1]))
    monkeypatch.setattr(images, "MAX_SIDE", 450)
    monkeypatch.setattr(images, "_decode", lambda data: pytest.fail("decoded a refused image"))
    message = raises_bad_image(path)
    assert "451x3" in message and "side" in message


def test_size_of_extended_webp_and_float_tiff(tmp_path, monkeypatch):
    rgba = np.dstack([CHELSEA[:99, :77], np.full((99, 77), 100, np.uint8)])  # alpha -> VP8X
    content = pil_bytes(Image.fromarray(rgba, "RGBA"), "WEBP", exif=exif_with_orientation(1))
    assert content[12:16] == b"VP8X"
    webp = write_bytes(tmp_path / "x.webp", content)
    # float RGB TIFF: Pillow cannot open it, its IFD gives the size
    tiff = write_bytes(tmp_path / "x.tiff", cv2_bytes(".tiff", np.ones((99, 77, 3), np.float32)))
    monkeypatch.setattr(images, "MAX_PIXELS", 77 * 99)
    assert load_image(webp).shape == load_image(tiff).shape == (99, 77, 3)
    monkeypatch.setattr(images, "MAX_PIXELS", 77 * 99 - 1)
    assert "77x99" in raises_bad_image(webp) and "77x99" in raises_bad_image(tiff)


def test_collect_images(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "sub").mkdir()
    good = write_bytes(folder / "b.PNG", cv2_bytes(".png", CAMERA[:32, :32]))
    write_bytes(folder / "a.jpeg", cv2_bytes(".jpg", CHELSEA[:32, :32]))
    write_bytes(folder / "c.jpg", b"not an image")  # listed; load_image reports it later
    write_bytes(folder / "notes.txt", b"skip me")
    write_bytes(folder / "sub" / "deep.png", cv2_bytes(".png", CAMERA[:8, :8]))
    explicit = write_bytes(tmp_path / "odd.name", cv2_bytes(".png", CAMERA[:8, :8]))
    empty = tmp_path / "empty"
    empty.mkdir()

    files, problems = collect_images([folder, str(tmp_path / "missing.jpg"), explicit, good, empty])
    assert [p.name for p in files] == ["a.jpeg", "b.PNG", "c.jpg", "odd.name"]
    assert files[3] == explicit
    assert len(problems) == 2 and all("\n" not in p for p in problems)
    assert "missing.jpg" in problems[0] and "no such" in problems[0]
    assert "empty" in problems[1] and "no images" in problems[1]
    loaded, bad = [], []
    for path in files:
        try:
            loaded.append(load_image(path))
        except BadImageError as error:
            bad.append(str(error))
    assert len(loaded) == 3 and len(bad) == 1 and "c.jpg" in bad[0]


# ---------------------------------------------------------------------------------- preprocessing

def test_geometry_of_resize_and_center_crop():
    x, geometry = preprocess(CHELSEA, TORCH_CARD)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    # torchvision Resize(256): shorter side 300 -> 256, longer 451 -> int(256 * 451 / 300) = 384.
    assert geometry == Geometry((300, 451), (256, 384), (16, 80, 224, 224))
    assert geometry.input_size == (224, 224)


def test_geometry_of_direct_resize():
    x, geometry = preprocess(CHELSEA, KERAS_CARD)
    assert x.shape == (1, 224, 224, 3) and x.dtype == np.float32
    assert geometry == Geometry((300, 451), (224, 224), (0, 0, 224, 224))


def test_layouts_hold_the_same_values():
    nchw, _ = preprocess(CHELSEA, card(layout="NCHW"))
    nhwc, _ = preprocess(CHELSEA, card(layout="NHWC"))
    assert nhwc.shape == (1, 224, 224, 3)
    np.testing.assert_array_equal(nchw, nhwc.transpose(0, 3, 1, 2))


def solid(rgb=(200, 100, 50), shape=(300, 451)):
    return np.broadcast_to(np.uint8(rgb), shape + (3,)).copy()


def test_mean_std_scaling_on_a_pixel():
    x, _ = preprocess(solid(), TORCH_CARD)
    mean, std = TORCH_CARD["scaling"]["mean"], TORCH_CARD["scaling"]["std"]
    expected = [(v / 255 - m) / s for v, m, s in zip((200, 100, 50), mean, std)]
    np.testing.assert_allclose(x[0, :, 117, 31], expected, rtol=1e-5)


def test_offset_divisor_scaling_and_bgr_on_a_pixel():
    x, _ = preprocess(solid(), KERAS_CARD)
    np.testing.assert_allclose(x[0, 5, 7], [(200 - 127) / 128, (100 - 127) / 128, (50 - 127) / 128])
    bgr, _ = preprocess(solid(), card(KERAS_CARD, color_order="BGR",
                                      scaling={"offset": [10, 20, 30], "divisor": [1, 2, 4]}))
    np.testing.assert_allclose(bgr[0, 5, 7], [(50 - 10) / 1, (100 - 20) / 2, (200 - 30) / 4])


def test_resize_shrinks_with_area_and_enlarges_linearly():
    """A fine checkerboard shrunk by INTER_AREA averages to grey (no aliasing)."""
    board = ((np.indices((448, 448)).sum(0) % 2) * 255).astype(np.uint8)
    x, _ = preprocess(np.dstack([board] * 3), card(KERAS_CARD, scaling=IDENTITY))
    assert np.abs(x - 127.5).max() < 1
    small, _ = preprocess(solid(shape=(20, 30)), card(scaling=IDENTITY))  # enlarged, constant
    np.testing.assert_allclose(small[0, :, 0, 0], [200, 100, 50])


def bright_square(shape, top, left, size):
    image = np.zeros(shape + (3,), np.uint8)
    image[top:top + size, left:left + size] = 255
    return image


@pytest.mark.parametrize("base", [TORCH_CARD, KERAS_CARD])
def test_to_original_round_trip_finds_the_square_again(base):
    """A square in the photo, located in the model input, maps back onto itself."""
    photo = bright_square((300, 451), 120, 150, 80)
    x, geometry = preprocess(photo, card(base, scaling=IDENTITY))
    seen = (x[0, 0] if base["layout"] == "NCHW" else x[0, :, :, 0]) > 127
    back = to_original(seen.astype(np.float32), geometry)
    assert back.shape == (300, 451) and back.dtype == np.float32
    found, truth = back > 0.5, photo[:, :, 0] > 0
    assert (found & truth).sum() / (found | truth).sum() > 0.9


def test_to_original_places_a_known_model_square_with_crop():
    _, geometry = preprocess(CHELSEA, TORCH_CARD)  # resized (256, 384), crop at (16, 80)
    saliency = np.zeros((224, 224), np.float32)
    saliency[100:140, 60:120] = 1
    back = to_original(saliency, geometry)
    # Resized coordinates rows 116..156, cols 140..200; to original: x 300/256, x 451/384.
    rows, cols = np.nonzero(back > 0.5)
    assert abs(rows.min() - 116 * 300 / 256) <= 1.5 and abs(rows.max() + 1 - 156 * 300 / 256) <= 1.5
    assert abs(cols.min() - 140 * 451 / 384) <= 1.5 and abs(cols.max() + 1 - 200 * 451 / 384) <= 1.5
    # Outside the crop (resized cols < 80 or >= 304, rows < 16 or >= 240) the map is 0.
    full = to_original(np.ones((224, 224), np.float32), geometry)
    assert full[:, : int(80 * 451 / 384) - 1].max() == 0
    assert full[:, int(304 * 451 / 384) + 2:].max() == 0
    assert full[: int(16 * 300 / 256) - 1].max() == 0 and full[int(240 * 300 / 256) + 2:].max() == 0
    assert full[150, 225] == 1


def test_to_original_without_crop_scales_the_square():
    _, geometry = preprocess(CHELSEA, KERAS_CARD)
    saliency = np.zeros((224, 224), np.float32)
    saliency[112:168, 56:112] = 1
    rows, cols = np.nonzero(to_original(saliency, geometry) > 0.5)
    assert abs(rows.min() - 112 * 300 / 224) <= 1.5 and abs(rows.max() + 1 - 168 * 300 / 224) <= 1.5
    assert abs(cols.min() - 56 * 451 / 224) <= 1.5 and abs(cols.max() + 1 - 112 * 451 / 224) <= 1.5
    with pytest.raises(ValueError):
        to_original(np.zeros((100, 100)), geometry)


@settings(max_examples=60, deadline=None)
@given(h0=st.integers(1, 900), w0=st.integers(1, 900), h=st.integers(8, 300),
       w=st.integers(8, 300), resize=st.one_of(st.none(), st.integers(1, 400)))
def test_geometry_always_fits(h0, w0, h, w, resize):
    recipe = images.card_recipe(card(input_size=[h, w], resize=resize,
                                 crop="none" if resize is None else "center"))
    geometry = images._geometry((h0, w0), recipe)
    top, left, ch, cw = geometry.crop_box
    hr, wr = geometry.resized_size
    assert (ch, cw) == (h, w) and 0 <= top and 0 <= left and top + h <= hr and left + w <= wr
    if resize is not None and min(hr, wr) > resize:
        assert hr >= h and wr >= w  # only grown past `resize` to make the crop fit


def test_non_square_input_and_small_resize_still_crop_inside():
    x, geometry = preprocess(CAMERA_RGB, card(input_size=[160, 320], resize=200))
    assert x.shape == (1, 3, 160, 320)
    assert geometry.resized_size == (320, 320) and geometry.crop_box == (80, 0, 160, 320)


def test_batch_preprocess_matches_single_images():
    coffee = data.coffee()
    batch, geometries = batch_preprocess([CHELSEA, coffee, CAMERA_RGB], TORCH_CARD)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32
    for k, image in enumerate([CHELSEA, coffee, CAMERA_RGB]):
        single, geometry = preprocess(image, TORCH_CARD)
        np.testing.assert_array_equal(batch[k], single[0])
        assert geometries[k] == geometry
    with pytest.raises(ValueError):
        batch_preprocess([], TORCH_CARD)


@pytest.mark.parametrize("change, field", [
    ({"layout": "CHW"}, "layout"),
    ({"input_size": [224]}, "input_size"),
    ({"input_size": [224, 0]}, "input_size"),
    ({"input_size": [224, True]}, "input_size"),
    ({"resize": "256"}, "resize"),
    ({"crop": "random"}, "crop"),
    ({"crop": "none"}, "crop"),
    ({"color_order": "rgb"}, "color_order"),
    ({"scaling": {"mean": [0.5] * 3}}, "scaling"),
    ({"scaling": {"mean": [0.5] * 3, "std": [0.5, 0, 0.5], "scale": 1}}, "scaling"),
    ({"scaling": {"offset": [1, 2], "divisor": 1}}, "scaling.offset"),
    ({"scaling": {"offset": 1, "divisor": "x"}}, "scaling.divisor"),
])
def test_bad_cards_name_the_field(change, field):
    with pytest.raises(BadOptionError, match=f"'{field}'"):
        preprocess(CHELSEA, card(**change))


def test_missing_card_field_is_named():
    for name in ("layout", "input_size", "scaling"):
        broken = {k: v for k, v in TORCH_CARD.items() if k != name}
        with pytest.raises(BadOptionError, match=f"missing field '{name}'"):
            preprocess(CHELSEA, broken)
    with pytest.raises(BadOptionError):
        preprocess(CHELSEA, ["not", "a", "card"])


def test_card_defaults():
    """A card from command-line arguments: direct resize, centre crop after a resize, RGB, 1/255."""
    minimal = {"layout": "NCHW", "input_size": [224, 224],
               "scaling": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    x, geometry = preprocess(CHELSEA, minimal)
    full = {**minimal, "resize": None, "crop": "none", "color_order": "RGB",
            "scaling": {**minimal["scaling"], "scale": 1 / 255}}
    np.testing.assert_array_equal(x, preprocess(CHELSEA, full)[0])
    assert geometry.resized_size == (224, 224)
    _, cropped = preprocess(CHELSEA, {**minimal, "resize": 256})
    assert cropped == preprocess(CHELSEA, TORCH_CARD)[1]


# -------------------------------------------------------------------------------------- drawing

def test_normalize():
    out = normalize(np.array([[2.0, 4.0], [6.0, 10.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0.25], [0.5, 1]])
    constant = normalize(np.full((3, 4), 7.0))
    assert constant.shape == (3, 4) and (constant == 0).all()
    with_nan = normalize(np.array([1.0, np.nan, 3.0, np.inf]))
    np.testing.assert_allclose(with_nan, [0, 0, 1, 0])
    assert (normalize(np.full(3, np.nan)) == 0).all()


def gaussian_map(shape, center):
    rows, cols = np.indices(shape)
    squared = (rows - center[0]) ** 2 + (cols - center[1]) ** 2
    return np.exp(-squared / (0.05 * shape[0] * shape[1]))


def test_overlay_shape_dtype_and_blend():
    saliency = gaussian_map(CHELSEA.shape[:2], (150, 300))
    out = overlay(CHELSEA, saliency, "Egyptian cat 87.1% | swag-image")
    assert out.shape == CHELSEA.shape and out.dtype == np.uint8
    # The hottest pixel gets viridis' yellow, blended half and half with the photo.
    yellow = cv2.applyColorMap(np.uint8([[255]]), cv2.COLORMAP_VIRIDIS)[0, 0, ::-1]
    expected = (CHELSEA[150, 300].astype(float) + yellow) / 2
    assert np.abs(out[150, 300] - expected).max() <= 1
    plain = overlay(CHELSEA, saliency, "", alpha=0.0)
    np.testing.assert_array_equal(plain, CHELSEA)
    with pytest.raises(BadOptionError):
        overlay(CHELSEA, saliency, "x", alpha=1.5)
    with pytest.raises(ValueError):
        overlay(CHELSEA, saliency[:100], "x")


def test_overlay_boundaries_change_exactly_the_boundary_pixels():
    saliency = gaussian_map(CHELSEA.shape[:2], (100, 100))
    labels = slic(CHELSEA, n_segments=40, start_label=0)
    without = overlay(CHELSEA, saliency, "")
    with_lines = overlay(CHELSEA, saliency, "", boundaries=labels)
    changed = (without != with_lines).any(axis=2)
    assert 0.01 < changed.mean() < 0.3
    assert np.isin(with_lines[changed], [0, 255]).all()  # white or black lines
    edges = find_boundaries(labels, mode="thick")
    assert not changed[~edges].any() and changed[edges].mean() > 0.9


@pytest.mark.parametrize("shape", [(48, 64), (300, 451), (3000, 4000)])
def test_caption_is_drawn_inside_on_a_dark_box(shape):
    photo = np.full(shape + (3,), 200, np.uint8)
    out = overlay(photo, np.zeros(shape), "Egyptian cat 87.1% | swag-image", alpha=0.0)
    dark = (out < 100).all(axis=2)
    rows, cols = np.nonzero(dark)
    assert rows.min() == 0 and cols.min() == 0  # the box starts at the top-left corner
    box = out[: rows.max() + 1, : cols.max() + 1]
    text = (box > 200).all(axis=2)
    assert text.sum() > 30  # white glyphs on the box
    # The font grows with the image: glyphs are a few percent of the width, at least 6 px tall.
    text_rows = np.nonzero(text.any(axis=1))[0]
    height = shape[0]
    assert rows.max() + 1 < height
    assert text_rows.max() - text_rows.min() >= min(6, height)
    if shape[1] >= 1000:
        assert 0.01 * shape[1] < rows.max() < 0.1 * shape[1]
    untouched = out.copy()
    untouched[: rows.max() + 1, : cols.max() + 1] = 200
    assert (untouched == 200).all()


# -------------------------------------------------------------------------------------- writing

def test_write_png_round_trip_and_no_temp_files(tmp_path):
    target = tmp_path / "new" / "folder" / "cat.png"
    write_png(target, CHELSEA)
    np.testing.assert_array_equal(load_image(target), CHELSEA)
    write_png(target, CHELSEA[::2, ::2].copy())  # overwrite
    assert load_image(target).shape == (150, 226, 3)
    assert os.listdir(target.parent) == ["cat.png"]
    assert target.stat().st_mode & 0o044  # not mkstemp's private 0600 mode (umask permitting)
    with pytest.raises(ValueError):
        write_png(tmp_path / "bad.png", CHELSEA.astype(np.float32))


def test_write_npy_and_json(tmp_path):
    saliency = gaussian_map((30, 40), (10, 10)).astype(np.float32)
    write_npy(tmp_path / "out" / "map.npy", saliency)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "map.npy"), saliency)
    write_json(tmp_path / "out" / "result.json",
               {"label": "tabby", "score": np.float32(0.5), "top": np.arange(3), "path": tmp_path})
    loaded = json.loads((tmp_path / "out" / "result.json").read_text())
    assert loaded == {"label": "tabby", "score": 0.5, "top": [0, 1, 2], "path": str(tmp_path)}
    assert sorted(os.listdir(tmp_path / "out")) == ["map.npy", "result.json"]


def test_failed_writes_leave_nothing_behind(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "result.json", {"oops": object()})
    with pytest.raises(ValueError):
        write_npy(tmp_path / "objects.npy", np.array([object()]))  # pickles refused
    assert os.listdir(tmp_path) == []


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    write_json(target, {"version": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(BadOptionError, match="cannot write the file"):
        write_json(target, {"version": 2})
    assert json.loads(target.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["result.json"]


# ------------------------------------------------------------------- extreme aspect ratios

@pytest.mark.parametrize("shape", [(3, 400), (400, 3), (20, 900), (2, 300)])
def test_crop_only_paths_match_the_full_resize(monkeypatch, shape):
    """Above _FULL_RESIZE_PIXELS only the crop is computed; it must match resize-then-crop
    (oracle: the full path, forced by a huge threshold) within warpAffine's 1/32-px weights."""
    rng = np.random.default_rng(0)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, shape + (3,), dtype=np.uint8), (5, 5), 2)
    saliency = rng.random((224, 224)).astype(np.float32)
    labels = rng.integers(0, 40, (224, 224)).astype(np.int32)
    _, geometry = preprocess(rgb, card(scaling=IDENTITY))
    monkeypatch.setattr(images, "_FULL_RESIZE_PIXELS", 2**40)
    full = (images.model_view(rgb, geometry), to_original(saliency, geometry),
            images.labels_to_original(labels, geometry))
    monkeypatch.setattr(images, "_FULL_RESIZE_PIXELS", 0)
    assert not images._materialise(geometry)
    view = images.model_view(rgb, geometry)
    assert view.shape == (224, 224, 3) and np.abs(view.astype(int) - full[0]).max() <= 1
    np.testing.assert_allclose(to_original(saliency, geometry), full[1], atol=2e-3)
    np.testing.assert_array_equal(images.labels_to_original(labels, geometry), full[2])
