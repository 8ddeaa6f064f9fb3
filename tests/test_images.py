"""labeler.photos.fetching and labeler.photos.decoding against broken, hostile and unusual input:
every image
is generated here."""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import socket
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from labeler.photos.decoding import DecodeLimits, ImageError, decode_image
from labeler.photos.fetching import LoaderConfig, detect_kind, load_bytes, load_image
from tests.helpers import serving_in_thread, without_proxies

RED = (255, 0, 0)
HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>502 Bad Gateway</h1><hr>nginx</body></html>\n"
)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def pattern(width: int = 8, height: int = 6) -> np.ndarray:
    """A small deterministic RGB picture with distinct pixels."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 30 % 256, y * 40 % 256, (x + y) * 15 % 256], axis=-1).astype(np.uint8)


def rgb_image(color: tuple[int, int, int] = RED, size: tuple[int, int] = (8, 6)) -> Image.Image:
    return Image.new("RGB", size, color)


def error_of(fn: Callable[[], Any]) -> str:
    with pytest.raises(ImageError) as info:
        fn()
    return str(info.value)


# --- empty, truncated, corrupt, not an image -------------------------------------------------


def test_empty_data_is_refused() -> None:
    assert error_of(lambda: decode_image(b"")) == "the image data is empty"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.99])
def test_truncated_images_fail_or_are_complete(fmt: str, keep: float) -> None:
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (30, 40, 3), np.uint8))
    data = encode(image.convert("P") if fmt == "GIF" else image, fmt)
    try:
        out = decode_image(data[: int(len(data) * keep)])
    except ImageError as exc:
        message = str(exc)
        assert "corrupt or truncated" in message or "not an image" in message, message
    else:  # only the trailer was cut: the picture itself is whole
        np.testing.assert_array_equal(out, decode_image(data))


def test_png_cut_at_its_end_marker_is_still_the_whole_picture() -> None:
    data = encode(Image.fromarray(pattern()), "PNG")
    assert data.endswith(b"IEND\xaeB`\x82")
    np.testing.assert_array_equal(decode_image(data[:-12]), pattern())


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize(
    ("fmt", "name"),
    [("PNG", "PNG"), ("JPEG", "JPEG"), ("GIF", "GIF"), ("TIFF", "TIFF"), ("WEBP", "WebP")],
)
def test_header_only_says_which_format_it_started_as(fmt: str, name: str) -> None:
    data = encode(Image.fromarray(pattern()), fmt)
    message = error_of(lambda: decode_image(data[:12]))
    assert "corrupt or truncated" in message, message
    if message.startswith("not an image"):  # Pillow did not even recognise the header
        assert f"it starts like a {name} file" in message, message


def test_corrupt_png_pixel_data_fails() -> None:
    data = bytearray(encode(Image.fromarray(pattern(40, 30)), "PNG"))
    start = data.index(b"IDAT") + 8
    for i in range(start, start + 16):
        data[i] ^= 0xFF
    assert "corrupt or truncated" in error_of(lambda: decode_image(bytes(data)))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize(
    "magic", [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"II*\x00", b"BM"]
)
def test_magic_number_followed_by_garbage_fails(magic: bytes) -> None:
    data = magic + bytes(range(256)) * 2
    message = error_of(lambda: decode_image(data))
    assert "corrupt or truncated" in message or "not an image" in message, message


def test_random_bytes_never_decode() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        data = rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()
        with pytest.raises(ImageError):
            decode_image(data)


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("photo.jpg", b"not really")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"Rex, 3 years old, very good boy\n", "it looks like plain text"),
        (json.dumps({"error": "not found", "status": 404}).encode(), "it looks like JSON text"),
        (b"[1, 2, 3]", "it looks like JSON text"),
        (_zip_bytes(), "it looks like a ZIP archive"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "it looks like a PDF document"),
        (HTML_PAGE, "it looks like an HTML page"),
        (b"\xef\xbb\xbf" + HTML_PAGE, "it looks like an HTML page"),
        (b"  \r\n<html><body>Service Unavailable</body></html>", "it looks like an HTML page"),
        (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE html PUBLIC '
            b'"-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/'
            b'xhtml1-strict.dtd">\n<html xmlns="http://www.w3.org/1999/xhtml"><body>403</body>',
            "it looks like an HTML page",
        ),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10"/>', "it looks like an SVG drawing"),
        (bytes([0, 1, 2, 3, 250, 251, 252]) * 10, "70 bytes of unknown format"),
    ],
    ids=[
        *("text", "json", "json-list", "zip", "pdf", "html", "html-bom", "html-ws", "xhtml"),
        *("svg", "binary"),
    ],
)
def test_not_an_image_says_what_it_looks_like(data: bytes, expected: str) -> None:
    assert error_of(lambda: decode_image(data)) == f"not an image Pillow can read ({expected})"


@pytest.mark.parametrize(
    ("fmt", "mode"), [("TGA", "RGB"), ("PPM", "RGB"), ("ICO", "RGBA"), ("PCX", "RGB")]
)
def test_non_photo_formats_are_not_tried(fmt: str, mode: str) -> None:
    # Pillow could read these, but only photo formats are accepted from the database.
    data = encode(Image.new(mode, (16, 16), (10, 20, 30)), fmt)
    assert error_of(lambda: decode_image(data)).startswith("not an image Pillow can read")


def test_eps_is_never_handed_to_ghostscript() -> None:
    data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert error_of(lambda: decode_image(data)) == (
        "not an image Pillow can read (it looks like plain text)"
    )


# --- modes and formats -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_rgb_formats_round_trip(fmt: str) -> None:
    arr = pattern()
    options = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(encode(Image.fromarray(arr), fmt, **options))
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, arr)


def test_jpeg_rgb_is_close() -> None:
    out = decode_image(encode(rgb_image(RED, (16, 16)), "JPEG", quality=95))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - RED).max() <= 6


def test_greyscale_l_becomes_three_equal_channels() -> None:
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    out = decode_image(encode(Image.fromarray(grey), "PNG"))
    assert out.shape == (6, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP"])
def test_palette_image(fmt: str) -> None:
    image = Image.new("P", (4, 3), 1)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    image.putpixel((0, 0), 2)
    out = decode_image(encode(image, fmt))
    assert out.shape == (3, 4, 3)
    assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[2, 3]) == RED


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_white(fmt: str) -> None:
    image = Image.new("P", (4, 3), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    out = decode_image(encode(image, fmt, transparency=0))
    assert tuple(out[0, 0]) == (255, 255, 255), "transparent pixels on white, not black"
    assert tuple(out[1, 1]) == RED


def test_rgba_is_composited_on_white() -> None:
    image = Image.new("RGBA", (4, 3), (255, 0, 0, 0))
    image.putpixel((1, 1), (255, 0, 0, 255))
    image.putpixel((2, 2), (255, 0, 0, 128))
    out = decode_image(encode(image, "PNG"))
    assert out.shape == (3, 4, 3)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == RED
    assert out[2, 2, 0] == 255 and abs(int(out[2, 2, 1]) - 127) <= 1


def test_la_is_composited_on_white() -> None:
    image = Image.new("LA", (4, 3), (0, 0))
    image.putpixel((1, 1), (0, 255))
    out = decode_image(encode(image, "PNG"))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (0, 0, 0)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "GIF"])
def test_one_bit_image(fmt: str) -> None:
    image = Image.new("1", (4, 3), 0)
    image.putpixel((3, 2), 1)
    out = decode_image(encode(image, fmt))
    assert out.shape == (3, 4, 3)
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[2, 3]) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greyscale_keeps_its_brightness(fmt: str) -> None:
    grey8 = (np.arange(12).reshape(3, 4) * 10 + 50).astype(np.uint16)
    image = Image.fromarray(grey8 * 257)  # the same picture at 16 bits
    data = encode(image, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = decode_image(data)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], grey8)
    np.testing.assert_array_equal(out[..., 2], grey8)


def test_16_bit_white_stays_white() -> None:
    out = decode_image(encode(Image.fromarray(np.full((3, 4), 65535, np.uint16)), "PNG"))
    assert (out == 255).all()


def test_32_bit_integer_tiff() -> None:
    small = Image.fromarray((np.arange(12).reshape(3, 4) * 20).astype(np.int32))
    assert small.mode == "I"
    out = decode_image(encode(small, "TIFF"))
    np.testing.assert_array_equal(out[..., 1], np.arange(12).reshape(3, 4) * 20)
    wide = Image.fromarray((np.arange(12).reshape(3, 4) * 5000).astype(np.int32))
    out = decode_image(encode(wide, "TIFF"))
    np.testing.assert_array_equal(
        out[..., 0], np.rint(np.arange(12).reshape(3, 4) * 5000 / 257).astype(np.uint8)
    )


def test_float_tiff() -> None:
    unit = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    unit[0, 1] = np.nan
    out = decode_image(encode(Image.fromarray(unit, mode="F"), "TIFF"))
    assert out.shape == (3, 4, 3)
    assert out[0, 0, 0] == 0 and out[2, 3, 0] == 255 and out[0, 1, 0] == 0
    assert out[1, 1, 0] == round(float(unit[1, 1]) * 255)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk(fmt: str) -> None:
    image = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # red ink
    image.putpixel((0, 0), (0, 0, 0, 255))  # black ink
    out = decode_image(encode(image, fmt, **({"quality": 95} if fmt == "JPEG" else {})))
    assert out.shape == (6, 8, 3)
    assert np.abs(out[4, 6].astype(int) - RED).max() <= 8
    assert out[0, 0].max() <= 60


@pytest.mark.parametrize(
    ("orientation", "shape", "corner"),
    [
        (1, (20, 40, 3), (0, 0)),
        (3, (20, 40, 3), (-1, -1)),
        (6, (40, 20, 3), (0, -1)),  # rotate 90° clockwise: top-left goes top-right
        (8, (40, 20, 3), (-1, 0)),  # rotate 90° counter-clockwise: top-left goes bottom-left
    ],
)
def test_exif_rotated_jpeg_is_upright(
    orientation: int, shape: tuple[int, int, int], corner: tuple[int, int]
) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:8, :8] = RED  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(encode(Image.fromarray(arr), "JPEG", exif=exif, quality=95))
    assert out.shape == shape
    y, x = (2 if corner[0] == 0 else -3), (2 if corner[1] == 0 else -3)
    assert out[y, x, 0] > 200 and out[y, x, 1:].max() < 40, out[y, x]
    others = [(2, 2), (2, -3), (-3, 2), (-3, -3)]
    others.remove((y, x))
    for oy, ox in others:
        assert out[oy, ox].max() < 40


def test_corrupt_exif_does_not_lose_the_photo() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(rgb_image(RED, (16, 8)), "JPEG", exif=exif, quality=95)
    start = data.index(b"Exif\x00\x00") + 6
    broken = data[:start] + b"XX" + data[start + 2 :]  # an unknown byte order
    out = decode_image(broken)
    assert out.shape == (8, 16, 3) and out[4, 4, 0] > 240


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_image_gives_first_frame(fmt: str) -> None:
    frames = [rgb_image(c, (6, 4)) for c in (RED, (0, 255, 0), (0, 0, 255))]
    options: dict[str, Any] = {"save_all": True, "append_images": frames[1:], "duration": 100}
    if fmt == "WEBP":
        options["lossless"] = True
    data = encode(frames[0], fmt, **options)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = decode_image(data)
    assert out.shape == (4, 6, 3)
    assert (out == RED).all()


def test_avif() -> None:
    if "AVIF" not in Image.registered_extensions().values():
        pytest.skip("this Pillow has no AVIF support")
    out = decode_image(encode(rgb_image(RED, (16, 16)), "AVIF", quality=95))
    assert out.shape == (16, 16, 3) and np.abs(out[8, 8].astype(int) - RED).max() <= 8


def test_heic() -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    buf = io.BytesIO()
    # Encoded without registering the opener: decode_image must register it by itself.
    pillow_heif.from_pillow(rgb_image(RED, (16, 16))).save(buf, quality=95)
    data = buf.getvalue()
    assert detect_kind(data) == "bytes"
    out = decode_image(data)
    assert out.shape == (16, 16, 3) and np.abs(out[8, 8].astype(int) - RED).max() <= 8


# --- decompression bombs ---------------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a huge size but holds a few bytes of (empty) pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(encode(rgb_image(RED, (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture
def pixel_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every time Pillow decodes pixels (allocates the image)."""
    calls: list[str] = []
    original = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> Any:
        calls.append(self.format or "?")
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


@pytest.mark.parametrize(
    ("data", "max_pixels", "expected"),
    [
        (png_header(10_000, 6_000), 50_000_000, "image declares 10000x6000 pixels, over the limit"),
        (png_header(100_000, 100_000), 50_000_000, "image is too large to decode safely"),
        (png_header(2**31 - 1, 2**31 - 1), 50_000_000, "image is too large to decode safely"),
        (jpeg_declaring(60_000, 60_000), 50_000_000, "image is too large to decode safely"),
        (jpeg_declaring(9_000, 9_000), 50_000_000, "image declares 9000x9000 pixels"),
        (encode(rgb_image(RED, (20, 20)), "PNG"), 399, "image declares 20x20 pixels"),
        (encode(rgb_image(RED, (20, 20)), "GIF"), 100, "image declares 20x20 pixels"),
    ],
    ids=["png-60M", "png-10G", "png-max", "jpeg-3.6G", "jpeg-81M", "real-png", "real-gif"],
)
def test_decompression_bombs_fail_before_decoding(
    data: bytes, max_pixels: int, expected: str, pixel_loads: list[str]
) -> None:
    t0 = time.monotonic()
    message = error_of(lambda: decode_image(data, DecodeLimits(max_pixels=max_pixels)))
    assert message.startswith(expected), message
    assert pixel_loads == [], "pixels were decoded"
    assert time.monotonic() - t0 < 2.0


def test_image_at_the_pixel_limit_is_fine() -> None:
    out = decode_image(encode(rgb_image(RED, (20, 20)), "PNG"), DecodeLimits(max_pixels=400))
    assert out.shape == (20, 20, 3)


def test_load_image_uses_the_configured_pixel_limit() -> None:
    data = encode(rgb_image(RED, (20, 20)), "PNG")
    config = LoaderConfig(decode_limits=DecodeLimits(max_pixels=100))
    assert "20x20" in error_of(lambda: load_image(data, config))


# --- base64 and detection --------------------------------------------------------------------


def test_base64_variants() -> None:
    data = encode(Image.fromarray(pattern()), "PNG")
    b64 = base64.b64encode(data).decode()
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    variants = {
        "plain": b64,
        "data-uri": "data:image/png;base64," + b64,
        "data-uri-upper": "DATA:image/png;BASE64," + b64,
        "wrapped": wrapped + "\n",
        "crlf-and-spaces": "  " + wrapped.replace("\n", "\r\n ") + "  ",
        "no-padding": b64.rstrip("="),
        "as-bytes": b64.encode(),
        "data-uri-bytes": ("data:image/png;base64," + wrapped).encode(),
    }
    for name, value in variants.items():
        assert detect_kind(value) == "base64", name
        out, kind = load_image(value, LoaderConfig())
        assert kind == "base64", name
        np.testing.assert_array_equal(out, pattern(), err_msg=name)
        out, _ = load_image(value, LoaderConfig(kind="base64"))
        np.testing.assert_array_equal(out, pattern(), err_msg=name)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("iVBORw0KGgo!!!!AAAA", "base64 text cannot be decoded"),
        ("data:image/png;base64,@@@@", "base64 text cannot be decoded"),
        ("data:image/png;base64,AAAAA", "base64 text cannot be decoded"),  # 5 characters
        ("data:image/png,%89PNG", "data: URI is not base64-encoded"),
        ("data:image/png;base64", "data: URI is not base64-encoded"),
        ("data:image/png;base64,", "the base64 photo is empty"),
        ("data:image/png;base64,ŝŝŝŝ", "base64 text cannot be decoded"),
    ],
)
def test_invalid_base64(value: str, expected: str) -> None:
    for config in (LoaderConfig(), LoaderConfig(kind="base64")):
        if config.kind == "auto" and not value.startswith("data:"):
            continue  # not recognisable as base64 at all: it would be read as a file name
        message = error_of(lambda c=config: load_bytes(value, c))
        assert message.startswith(expected), message
        assert error_of(lambda c=config: load_bytes(value.encode(), c)).startswith(expected)


def test_base64_of_garbage_fails_in_the_decoder() -> None:
    value = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20).decode()
    assert "corrupt or truncated" in error_of(lambda: load_image(value, LoaderConfig()))


def test_base64_of_html_says_html() -> None:
    value = base64.b64encode(HTML_PAGE * 2).decode()
    message = error_of(lambda: load_image(value, LoaderConfig(kind="base64")))
    assert message == "not an image Pillow can read (it looks like an HTML page)"


def test_oversized_base64_is_refused_before_decoding() -> None:
    value = "data:image/png;base64," + "A" * 4000
    message = error_of(lambda: load_bytes(value, LoaderConfig(max_bytes=1000)))
    assert message == "base64 photo decodes to about 3000 bytes, over the 1000 byte limit"


def test_detect_kind() -> None:
    png = encode(rgb_image(), "PNG")
    b64 = base64.b64encode(png).decode()
    cases: list[tuple[Any, str]] = [
        (png, "bytes"),
        (bytearray(png), "bytes"),
        (memoryview(png), "bytes"),
        (encode(rgb_image(), "JPEG"), "bytes"),
        (b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00", "bytes"),
        (b"\x00\x00\x00\x1cftypheix\x00\x00\x00\x00", "bytes"),
        (HTML_PAGE, "bytes"),
        (bytes(range(256)), "bytes"),
        (b64.encode(), "base64"),
        (b"data:image/png;base64,AAAA", "base64"),
        (b64, "base64"),
        ("  " + b64 + "\n", "base64"),
        ("data:image/jpeg;base64,/9j/", "base64"),
        ("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2", "base64"),
        ("http://photos.example.org/rex.jpg", "url"),
        ("HTTPS://photos.example.org/rex.jpg", "url"),
        ("ftp://photos.example.org/rex.jpg", "url"),
        ("file:///etc/passwd", "url"),
        ("dogs/2024/rex.jpg", "path"),
        ("rex.jpg", "path"),
        ("../../etc/passwd", "path"),
        ("/etc/passwd", "path"),
        ("QUJD", "path"),  # too short to be told from a file name
    ]
    for value, expected in cases:
        assert detect_kind(value) == expected, (value[:40], expected)
    for value in (12, 1.5, ["a"], {"a": 1}):
        assert error_of(lambda v=value: detect_kind(v)).startswith("unsupported image value")


def test_detection_is_linear_on_whitespace() -> None:
    value = b" " * 4095 + b"!" + b" " * 100_000
    t0 = time.monotonic()
    for _ in range(20):
        assert detect_kind(value) == "bytes"
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "the image column is NULL"),
        ("", "the image column is empty"),
        (b"", "the image column is empty"),
        (bytearray(), "the image column is empty"),
        ("   \n\t", "the image column is empty (only whitespace)"),
        (b" \r\n", "the image column is empty (only whitespace)"),
        (42, "unsupported image value of type int"),
    ],
)
def test_null_and_empty_values(value: Any, expected: str) -> None:
    assert error_of(lambda: load_image(value, LoaderConfig())) == expected


def test_kind_mismatch() -> None:
    assert error_of(lambda: load_bytes("abc", LoaderConfig(kind="bytes"))) == (
        "image_kind is bytes but the column holds text"
    )
    assert error_of(lambda: load_bytes(b"\xff\xfe\x00x", LoaderConfig(kind="path"))) == (
        "expected a path or URL but the column holds binary data"
    )
    assert error_of(lambda: load_bytes(b"x", LoaderConfig(kind="nonsense"))) == (
        "unknown image kind 'nonsense'"
    )


def test_stored_bytes_over_the_limit() -> None:
    data = encode(Image.fromarray(pattern(40, 30)), "PNG")
    message = error_of(lambda: load_bytes(data, LoaderConfig(max_bytes=100)))
    assert message == f"photo is {len(data)} bytes, over the 100 byte limit"


# --- paths -----------------------------------------------------------------------------------


@pytest.fixture
def photo_root(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "rex.png").write_bytes(encode(Image.fromarray(pattern()), "PNG"))
    # A perfectly valid image outside the root: reading it would be the escape.
    (tmp_path / "secret.png").write_bytes(encode(rgb_image((1, 2, 3)), "PNG"))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.png").write_bytes(encode(rgb_image((1, 2, 3)), "PNG"))
    return root


def test_path_inside_root(photo_root: Path) -> None:
    config = LoaderConfig(photo_root=photo_root)
    for value in ("rex.png", "  rex.png\n", "sub/../rex.png", "./rex.png", b"rex.png"):
        out, kind = load_image(
            value, replace(config, kind="path") if isinstance(value, bytes) else config
        )
        assert kind == "path"
        np.testing.assert_array_equal(out, pattern())


def test_symlink_inside_root_is_allowed(photo_root: Path) -> None:
    (photo_root / "sub" / "alias.png").symlink_to(photo_root / "rex.png")
    out, _ = load_image("sub/alias.png", LoaderConfig(photo_root=photo_root))
    np.testing.assert_array_equal(out, pattern())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("../secret.png", "photo path leads outside the photo root"),
        ("sub/../../secret.png", "photo path leads outside the photo root"),
        ("../outside/x.png", "photo path leads outside the photo root"),
        ("link-out.png", "photo path leads outside the photo root"),
        ("linkdir/x.png", "photo path leads outside the photo root"),
        ("SECRET_ABS", "photo path is absolute; paths must be relative to the photo root"),
        ("missing.png", "photo file 'missing.png' does not exist under the photo root"),
        ("rex.png/x.png", "photo file 'rex.png/x.png' does not exist under the photo root"),
        ("dangling.png", "photo file 'dangling.png' does not exist under the photo root"),
        ("rex.png\x00.txt", "photo path contains a NUL byte"),
        ("sub\\rex.png", "photo file 'sub\\\\rex.png' does not exist under the photo root (a Wi"),
        (
            "C:\\photos\\rex.png",
            "photo file 'C:\\\\photos\\\\rex.png' does not exist under the photo root (a Windows",
        ),
        ("file:///photos/rex.png", "photo URL scheme 'file' is not allowed"),
        ("sub", "photo path 'sub' is not a regular file"),
        ("fifo", "photo path 'fifo' is not a regular file"),
        ("loop1", "photo path 'loop1' cannot be resolved"),
        ("x" * 300 + ".png", "photo file 'xxxxxxxx"),
        ("<html><body>404</body></html>", "expected a photo path but the column holds text (it"),
        ('{"file": "rex.png"}', "expected a photo path but the column holds text (it looks"),
        ("rex.png\nrex.png", "expected a photo path but the column holds text (it holds"),
    ],
)
def test_bad_paths(photo_root: Path, value: str, expected: str) -> None:
    outside = photo_root.parent
    (photo_root / "link-out.png").symlink_to(outside / "secret.png")
    (photo_root / "linkdir").symlink_to(outside / "outside")
    (photo_root / "dangling.png").symlink_to(photo_root / "gone.png")
    (photo_root / "loop1").symlink_to(photo_root / "loop2")
    (photo_root / "loop2").symlink_to(photo_root / "loop1")
    os.mkfifo(photo_root / "fifo")
    if value == "SECRET_ABS":
        value = str(outside / "secret.png")
    t0 = time.monotonic()
    message = error_of(lambda: load_image(value, LoaderConfig(photo_root=photo_root)))
    assert message.startswith(expected), message
    assert time.monotonic() - t0 < 2.0


def test_path_over_max_bytes(photo_root: Path) -> None:
    size = (photo_root / "rex.png").stat().st_size
    message = error_of(
        lambda: load_image("rex.png", LoaderConfig(photo_root=photo_root, max_bytes=50))
    )
    assert message == f"photo file is {size} bytes, over the 50 byte limit"


def test_path_without_photo_root() -> None:
    assert error_of(lambda: load_image("rex.png", LoaderConfig())) == (
        "the photo is a file path but no photo root (LABELER_PHOTO_ROOT) is set"
    )


def test_html_file_on_disk(photo_root: Path) -> None:
    (photo_root / "rex.jpg").write_bytes(HTML_PAGE)
    message = error_of(lambda: load_image("rex.jpg", LoaderConfig(photo_root=photo_root)))
    assert message == "not an image Pillow can read (it looks like an HTML page)"


# --- URLs ------------------------------------------------------------------------------------

GOOD_PNG = encode(Image.fromarray(pattern()), "PNG")
URL_TIMEOUT = 0.5
MAX_BYTES = 200_000


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: list[str] = []
        self.stopping = threading.Event()
        self.sent: dict[str, int] = {}

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str, code: int = 302) -> None:
        self._send(code, b"", {"Location": location})

    def _drip(self, headers: dict[str, str], pause: float, limit: int) -> None:
        """Headers at once, then one byte every ``pause`` seconds (each under the timeout)."""
        self.send_response(200 if "Location" not in headers else 302)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.flush()
        for _ in range(limit):
            if self.server.stopping.wait(pause):
                return
            self.wfile.write(b"x")
            self.wfile.flush()

    def do_GET(self) -> None:
        server = self.server
        server.hits.append(self.path)
        port = server.port
        with suppress(BrokenPipeError, ConnectionResetError):
            self._route(port)

    def _route(self, port: int) -> None:
        path = self.path
        if path == "/rex.png":
            self._send(200, GOOD_PNG, {"Content-Type": "image/png"})
        elif path == "/error-page":
            self._send(200, HTML_PAGE, {"Content-Type": "text/html"})
        elif path == "/slow":
            self.server.stopping.wait(URL_TIMEOUT * 6)
            self._send(200, GOOD_PNG)
        elif path == "/drip":
            self._drip({"Content-Length": "1000"}, URL_TIMEOUT / 3, 1000)
        elif path == "/drip-redirect":
            self._drip({"Location": "/rex.png", "Content-Length": "1000"}, URL_TIMEOUT / 3, 60)
        elif path == "/huge-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            self.wfile.write(b"\0" * 1000)
        elif path == "/huge-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            # A small send buffer: what the server manages to send then measures what the
            # client read, not what the kernel absorbed (loopback buffers grow to 4 MB).
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            sent = 0
            block = b"\0" * 16384
            while sent < 20 * MAX_BYTES and not self.server.stopping.is_set():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                sent += len(block)
                self.server.sent[path] = sent
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/bad-chunks":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"zz\r\nnot a chunk\r\n")
        elif path == "/not-http":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")
            self.close_connection = True
        elif path == "/redirect-ok":
            self._redirect("/rex.png")
        elif path == "/redirect-absolute":
            self._redirect(f"http://127.0.0.1:{port}/rex.png", 301)
        elif path == "/redirect-307":
            self._redirect("/redirect-ok", 307)
        elif path == "/redirect-localhost":
            self._redirect(f"http://localhost:{port}/rex.png")
        elif path == "/redirect-file":
            self._redirect("file:///etc/passwd")
        elif path == "/redirect-ftp":
            self._redirect(f"ftp://127.0.0.1:{port}/rex.png")
        elif path == "/loop":
            self._redirect("/loop")
        elif path.startswith("/chain/"):
            n = int(path.rsplit("/", 1)[1])
            self._redirect(f"/chain/{n + 1}")
        elif path == "/500":
            self._send(500, b"<html><body>Internal Server Error</body></html>")
        else:
            self._send(404, b"<html><body>Not Found</body></html>")


@contextmanager
def serving() -> Iterator[_Server]:
    with serving_in_thread(_Server()) as server:
        yield server


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    without_proxies(monkeypatch)
    with serving() as running:
        yield running


def url_config(*hosts: str) -> LoaderConfig:
    return LoaderConfig(
        allowed_hosts=frozenset(hosts or ("127.0.0.1",)),
        url_timeout=URL_TIMEOUT,
        max_bytes=MAX_BYTES,
    )


def test_url_from_allowed_host(server: _Server) -> None:
    url = f"http://127.0.0.1:{server.port}/rex.png"
    assert detect_kind(url) == "url"
    out, kind = load_image(url, url_config())
    assert kind == "url"
    np.testing.assert_array_equal(out, pattern())
    assert server.hits == ["/rex.png"]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://photos.example.org./a.jpg", "photos.example.org"),
        ("http://PHOTOS.example.org/a.jpg", "photos.example.org."),
    ],
)
def test_a_fully_qualified_host_is_the_same_host(url: str, allowed: str) -> None:
    from labeler.config.settings import Settings
    from labeler.photos.urls import check_url

    settings = Settings.model_validate({"database_url": "sqlite://", "url_allowed_hosts": allowed})
    config = LoaderConfig(allowed_hosts=frozenset(settings.url_allowed_hosts))
    check_url(url, config.allowed_hosts)  # allowed: no exception
    with pytest.raises(ImageError, match="not in the allow-list"):
        check_url("http://photos.example.org.evil.test/a.jpg", config.allowed_hosts)


@pytest.mark.parametrize(
    "path", ["/redirect-ok", "/redirect-absolute", "/redirect-307"], ids=lambda p: p[1:]
)
def test_url_redirect_within_allowed_hosts(server: _Server, path: str) -> None:
    out, _ = load_image(f"http://127.0.0.1:{server.port}{path}", url_config())
    np.testing.assert_array_equal(out, pattern())
    assert server.hits[-1] == "/rex.png"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://localhost:{port}/rex.png", "photo URL host 'localhost' is not in the allow-list"),
        ("http://LOCALHOST:{port}/rex.png", "photo URL host 'localhost' is not in the allow-list"),
        ("http://127.0.0.2:{port}/rex.png", "photo URL host '127.0.0.2' is not in the allow-list"),
        ("http://[::1]:{port}/rex.png", "photo URL host '::1' is not in the allow-list"),
        ("file:///etc/passwd", "photo URL scheme 'file' is not allowed (http or https only)"),
        ("ftp://127.0.0.1:{port}/rex.png", "photo URL scheme 'ftp' is not allowed"),
        ("gopher://127.0.0.1:{port}/", "photo URL scheme 'gopher' is not allowed"),
        ("http://localhost@127.0.0.1:{port}/rex.png", "photo URL must not contain a user name"),
        ("http://127.0.0.1:{port}\\@localhost/rex.png", "photo URL must not contain a user name"),
        ("http:///rex.png", "photo URL has no host"),
        ("http://[::1/rex.png", "photo URL is malformed"),
        ("http://127.0.0.1:port/rex.png", "photo URL is malformed"),
    ],
)
def test_url_refused_without_a_request(server: _Server, url: str, expected: str) -> None:
    message = error_of(lambda: load_image(url.format(port=server.port), url_config()))
    assert message.startswith(expected), message
    assert server.hits == []


def test_url_with_empty_allow_list(server: _Server) -> None:
    config = replace(url_config(), allowed_hosts=frozenset())
    message = error_of(lambda: load_image(f"http://127.0.0.1:{server.port}/rex.png", config))
    assert "is not in the allow-list (LABELER_URL_ALLOWED_HOSTS)" in message
    assert server.hits == []


@pytest.mark.parametrize(
    ("path", "expected", "hits"),
    [
        ("/redirect-localhost", "photo URL host 'localhost' is not in the allow-list", 1),
        ("/redirect-file", "photo URL scheme 'file' is not allowed", 1),
        ("/redirect-ftp", "photo URL scheme 'ftp' is not allowed", 1),
        ("/loop", "photo URL redirects more than 3 times", 4),
        ("/chain/0", "photo URL redirects more than 3 times", 4),
    ],
)
def test_url_bad_redirects(server: _Server, path: str, expected: str, hits: int) -> None:
    message = error_of(lambda: load_image(f"http://127.0.0.1:{server.port}{path}", url_config()))
    assert message.startswith(expected), message
    assert len(server.hits) == hits and "/rex.png" not in server.hits


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/404", "photo URL answered HTTP 404 Not Found"),
        ("/500", "photo URL answered HTTP 500 Internal Server Error"),
        ("/error-page", "not an image Pillow can read (it looks like an HTML page)"),
        ("/huge-declared", f"photo URL serves {10**12} bytes, over the {MAX_BYTES} byte limit"),
        ("/huge-chunked", f"photo URL serves more than the {MAX_BYTES} byte limit"),
        ("/bad-chunks", "photo URL sent a malformed HTTP response (IncompleteRead)"),
        ("/not-http", "photo URL sent a malformed HTTP response (BadStatusLine)"),
    ],
)
def test_url_bad_answers(server: _Server, path: str, expected: str) -> None:
    t0 = time.monotonic()
    message = error_of(lambda: load_image(f"http://127.0.0.1:{server.port}{path}", url_config()))
    assert message == expected
    assert time.monotonic() - t0 < 2.0
    if path == "/huge-chunked":
        assert server.sent[path] < 20 * MAX_BYTES, "the client kept reading"


def test_url_slow_server_times_out(server: _Server) -> None:
    t0 = time.monotonic()
    message = error_of(lambda: load_image(f"http://127.0.0.1:{server.port}/slow", url_config()))
    assert message == f"photo URL timed out (no answer within {URL_TIMEOUT:g} s)"
    assert time.monotonic() - t0 < URL_TIMEOUT * 3


def test_url_trickling_server_hits_the_deadline(server: _Server) -> None:
    t0 = time.monotonic()
    message = error_of(lambda: load_image(f"http://127.0.0.1:{server.port}/drip", url_config()))
    assert message == f"photo URL did not finish downloading within {2 * URL_TIMEOUT:g} s"
    assert time.monotonic() - t0 < URL_TIMEOUT * 4


def test_url_redirect_body_is_not_read(server: _Server) -> None:
    # The redirect trickles a body for 60 x 0.17 s; following it must not wait for that.
    t0 = time.monotonic()
    out, _ = load_image(f"http://127.0.0.1:{server.port}/drip-redirect", url_config())
    np.testing.assert_array_equal(out, pattern())
    assert time.monotonic() - t0 < URL_TIMEOUT * 3


def test_url_to_a_closed_port() -> None:
    with serving() as stopped:
        port = stopped.port
    message = error_of(lambda: load_image(f"http://127.0.0.1:{port}/rex.png", url_config()))
    assert message.startswith("photo URL cannot be fetched: "), message
    assert "refused" in message.lower(), message
