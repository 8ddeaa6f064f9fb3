"""labeler.photos.decoding: bounded work (scan count, time budget, stop requests) and reduced-scale
JPEG decoding. Every hostile input is generated here."""

from __future__ import annotations

import io
import re
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from labeler.model.preprocessing import resize
from labeler.photos.decoding import (
    MAX_JPEG_SCANS,
    SIGNATURES,
    Cancelled,
    DecodeLimits,
    ImageError,
    decode_image,
    image_format,
    jpeg_scan_count,
)

RED = (255, 0, 0)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def scans_of(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each SOS segment with its entropy-coded data, by walking the markers."""
    pos, found = 2, []
    while data[pos + 1] != 0xD9:
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        end = pos + 2 + length
        if data[pos + 1] == 0xDA:
            match = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]").search(data, end)
            assert match is not None
            end = match.start()
            found.append((pos, end))
        pos = end
    return found


def many_scan_jpeg(copies: int, size: int = 512) -> bytes:
    """A valid progressive JPEG whose last (refinement) scan is repeated ``copies`` times.

    libjpeg accepts the repeats (a warning) and walks every block once per scan: the file stays
    small while decoding costs ``copies`` passes over the image.
    """
    data = encode(Image.new("RGB", (size, size), (120, 130, 140)), "JPEG", progressive=True)
    start, end = scans_of(data)[-1]
    return data[:end] + data[start:end] * copies + data[end:]


def test_normal_jpegs_have_few_scans() -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 80, 3), np.uint8))
    assert jpeg_scan_count(encode(image, "JPEG")) == 1
    assert jpeg_scan_count(encode(image, "JPEG", progressive=True)) == 10
    assert jpeg_scan_count(encode(image.convert("L"), "JPEG", progressive=True)) == 6


def test_scan_count_skips_segments_that_hold_marker_bytes() -> None:
    data = encode(Image.new("RGB", (16, 16), RED), "JPEG")
    # An APP segment whose body holds SOS and EOI byte pairs (as an EXIF thumbnail does).
    body = b"\xff\xda\x00\x04xx\xff\xd9" * 50
    app = b"\xff\xe5" + struct.pack(">H", len(body) + 2) + body
    assert jpeg_scan_count(data[:2] + app + data[2:]) == 1


def test_scan_count_stops_counting_above_the_limit() -> None:
    assert jpeg_scan_count(many_scan_jpeg(500, size=16), stop_above=20) == 21


def test_many_scan_jpeg_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = many_scan_jpeg(3000)
    assert len(data) < 100_000  # small file, minutes of work at photo sizes
    loads: list[str] = []
    original = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> Any:
        loads.append(self.format or "?")
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert str(info.value) == (
        f"JPEG has more than {MAX_JPEG_SCANS} scans (photos have about 10); "
        "refused as too slow to decode"
    )
    assert loads == []


def test_jpeg_at_the_scan_limit_decodes() -> None:
    data = many_scan_jpeg(MAX_JPEG_SCANS - 10, size=32)
    assert jpeg_scan_count(data) == MAX_JPEG_SCANS
    assert decode_image(data).shape == (32, 32, 3)


@pytest.fixture
def loading(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once Pillow starts decoding pixels (after the header was read and checked)."""
    started = threading.Event()
    original = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> Any:
        started.set()
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return started


class StepClock:
    """A clock that stands still until ``started`` is set, then advances ``step`` per reading."""

    def __init__(self, step: float, started: threading.Event) -> None:
        self.now, self.step, self.started = 0.0, step, started
        self.readings_while_loading = 0

    def __call__(self) -> float:
        if self.started.is_set():
            self.now += self.step
            self.readings_while_loading += 1
        return self.now


def noisy_png(side: int = 256) -> bytes:
    pixels = np.random.default_rng(2).integers(0, 256, (side, side, 3), np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


def test_time_budget_stops_a_decode_between_chunks(loading: threading.Event) -> None:
    data = noisy_png()
    assert len(data) > 4 * 16 * 1024  # several chunks of input
    clock = StepClock(0.3, loading)
    with pytest.raises(ImageError) as info:
        decode_image(data, DecodeLimits(decode_seconds=1.0), clock=clock)
    assert str(info.value) == "photo took longer than 1 s to decode"
    assert clock.readings_while_loading == 4  # stopped at the 4th chunk, not at the end


def test_generous_budget_and_no_budget_decode(loading: threading.Event) -> None:
    data = noisy_png()
    full = decode_image(data, DecodeLimits(decode_seconds=None))
    clock = StepClock(1.0, loading)
    np.testing.assert_array_equal(
        decode_image(data, DecodeLimits(decode_seconds=1e6), clock=clock), full
    )
    assert clock.readings_while_loading > 4


def test_stop_request_raises_cancelled_not_an_image_error(loading: threading.Event) -> None:
    with pytest.raises(Cancelled):
        decode_image(noisy_png(), cancel=loading.is_set)  # asked to stop once pixels are read
    assert not issubclass(Cancelled, ImageError)


def test_stop_request_from_another_thread_ends_a_slow_decode() -> None:
    # Slow on purpose: many scans, with the scan limit raised for this test only.
    data = many_scan_jpeg(4000, size=1024)
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    try:
        with pytest.raises(Cancelled):
            limits = DecodeLimits(max_jpeg_scans=10_000, decode_seconds=None)
            decode_image(data, limits, cancel=stop.is_set)
    finally:
        timer.cancel()


# --- the signature table ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("JPEG", "JPEG"),
        ("PNG", "PNG"),
        ("GIF", "GIF"),
        ("WEBP", "WebP"),
        ("BMP", "BMP"),
        ("TIFF", "TIFF"),
    ],
)
def test_signature_table_knows_every_photo_format(fmt: str, name: str) -> None:
    assert image_format(encode(Image.new("RGB", (4, 4)), fmt)[:12]) == name


def test_signature_table_does_not_take_text_for_images() -> None:
    for text in (b"BMW is a car", b"RIFF....AVI LIST", b"GIF", b"", b"<html>"):
        assert image_format(text) is None, text
    assert {s.name for s in SIGNATURES} >= {"JPEG", "PNG", "GIF", "WebP", "BMP", "TIFF", "HEIF"}


# --- reduced-scale JPEG decoding -------------------------------------------------------------


def photo(width: int, height: int) -> np.ndarray:
    """A smooth picture with a red block in the stored top-left corner."""
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    arr = arr.astype(np.uint8)
    arr[: height // 5, : width // 5] = RED
    return arr


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_large_jpeg_is_decoded_at_the_smallest_scale_that_covers_the_target() -> None:
    data = encode(Image.fromarray(photo(1600, 1200)), "JPEG", quality=92)
    full = decode_image(data)
    small = decode_image(data, target_size=(224, 224))
    assert full.shape == (1200, 1600, 3)
    assert small.shape == (300, 400, 3)  # 1/4: 1/8 would be 150 px high, under 224
    assert psnr(resize(small, (224, 224)), resize(full, (224, 224))) > 35


@pytest.mark.parametrize(("target", "shape"), [((224, 224), (400, 225, 3)), ((224, 600), None)])
def test_reduced_scale_keeps_exif_orientation(
    target: tuple[int, int], shape: tuple[int, int, int] | None
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait (rotated 90° clockwise)
    data = encode(Image.fromarray(photo(1600, 900)), "JPEG", exif=exif, quality=92)
    out = decode_image(data, target_size=target)
    height, width = out.shape[:2]
    assert height >= target[0] and width >= target[1]
    assert height > width  # upright: portrait
    if shape is not None:
        assert out.shape == shape
    # The stored top-left corner is now the top-right one.
    assert out[2, -3, 0] > 200 and out[2, -3, 1:].max() < 60
    assert out[-3, 2, 0] < 200 or out[-3, 2, 1] > 60


def test_small_jpeg_and_other_formats_are_decoded_whole() -> None:
    arr = photo(300, 200)
    assert decode_image(encode(Image.fromarray(arr), "JPEG"), target_size=(224, 224)).shape == (
        200,
        300,
        3,
    )
    png = encode(Image.fromarray(photo(1600, 1200)), "PNG")
    np.testing.assert_array_equal(decode_image(png, target_size=(224, 224)), photo(1600, 1200))


def test_pixel_limit_applies_to_the_declared_size_not_the_reduced_one() -> None:
    data = encode(Image.fromarray(photo(1600, 1200)), "JPEG")
    with pytest.raises(ImageError, match="image declares 1600x1200 pixels"):
        decode_image(data, DecodeLimits(max_pixels=1_000_000), target_size=(224, 224))


# --- training decodes with the same decoder --------------------------------------------------


@pytest.fixture
def rotated_jpeg(tmp_path: Path) -> Iterator[Path]:
    exif = Image.Exif()
    exif[0x0112] = 8
    path = tmp_path / "rotated.jpg"
    path.write_bytes(encode(Image.fromarray(photo(64, 32)), "JPEG", exif=exif, quality=95))
    yield path


def test_training_reads_photos_upright_like_serving(rotated_jpeg: Path) -> None:
    from training.data import read_rgb

    served = decode_image(rotated_jpeg.read_bytes())
    assert served.shape == (64, 32, 3)
    np.testing.assert_array_equal(read_rgb(rotated_jpeg), served)
