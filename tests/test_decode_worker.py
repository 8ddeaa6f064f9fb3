"""labeler.photos.decode_worker: WebP, HEIF/AVIF and TIFF decode in a child process that is killed
at
the time budget or on a stop request, and whose crash fails only the photo. Every image is
generated here; slow and crashing decoders are stand-ins run in the child (``scripted_decode``).
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from labeler.photos import decode_worker
from labeler.photos.decode_worker import DecodeWorker, WorkerPool, decode_in_child
from labeler.photos.decoding import (
    ISOLATED_FORMATS,
    Cancelled,
    DecodeLimits,
    ImageError,
    decode_image,
)

LIMITS = DecodeLimits()
SLOW, CRASH, WHO = b"slow", b"crash", b"who"
# A stand-in for a decoder stuck in C: long enough that only a kill ends a test in time, short
# enough that a broken kill fails the test instead of hanging it.
STUCK_SECONDS = 60.0


def scripted_decode(
    data: bytes, limits: DecodeLimits, target_size: tuple[int, int] | None
) -> np.ndarray:
    """Runs in the child: stuck for SLOW, dies for CRASH, its pid (after a pause) for WHO, and
    the real decode for anything else."""
    if data == SLOW:
        time.sleep(STUCK_SECONDS)
        raise ImageError("the stuck decode was not stopped")
    if data == CRASH:
        os._exit(3)
    if data == WHO:
        time.sleep(1.0)  # long enough for the other caller to need a child of its own
        return np.array([os.getpid()])
    return decode_in_child(data, limits, target_size)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def picture(width: int = 96, height: int = 64) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], -1).astype(np.uint8)
    return Image.fromarray(arr)


def heic() -> bytes:
    pillow_heif = pytest.importorskip("pillow_heif")
    buf = io.BytesIO()
    pillow_heif.from_pillow(picture()).save(buf, quality=90)
    return buf.getvalue()


def avif() -> bytes:
    Image.init()
    if "AVIF" not in Image.SAVE:
        pytest.skip("this Pillow has no AVIF support")
    return encode(picture(), "AVIF", quality=90)


PHOTOS = {
    "webp lossy": lambda: encode(picture(), "WEBP", quality=80),
    "webp lossless": lambda: encode(picture().convert("RGBA"), "WEBP", lossless=True),
    "tiff raw": lambda: encode(picture(), "TIFF"),
    "tiff deflate": lambda: encode(picture(), "TIFF", compression="tiff_deflate"),
    "tiff jpeg": lambda: encode(picture(), "TIFF", compression="jpeg"),
    "avif": avif,
    "heic": heic,
}


def webp() -> bytes:
    return PHOTOS["webp lossy"]()


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def worker() -> Iterator[DecodeWorker]:
    shared = DecodeWorker(scripted_decode)
    yield shared
    shared.close()


# --- same pixels as in-process ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_worker_decodes_like_in_process(worker: DecodeWorker, name: str) -> None:
    data = PHOTOS[name]()
    expected = decode_image(data, isolate=False)
    assert expected.shape == (64, 96, 3)
    np.testing.assert_array_equal(worker.decode(data, LIMITS), expected)


def test_decode_image_sends_webp_and_tiff_to_a_child() -> None:
    for data in (webp(), PHOTOS["tiff jpeg"]()):
        np.testing.assert_array_equal(decode_image(data), decode_image(data, isolate=False))


def test_the_child_leaves_the_time_budget_to_the_parent() -> None:
    # Run here, not in a child: a budget that would stop any in-process decode at once.
    out = decode_in_child(webp(), DecodeLimits(decode_seconds=1e-9), None)
    assert out.shape == (64, 96, 3)
    with pytest.raises(ImageError, match="over the limit of 1000"):
        decode_in_child(webp(), DecodeLimits(max_pixels=1000), None)


def test_decoder_reasons_come_back_as_image_errors(worker: DecodeWorker) -> None:
    data = webp()
    data = data[: len(data) * 6 // 10]
    with pytest.raises(ImageError) as here:
        decode_image(data, isolate=False)
    with pytest.raises(ImageError) as there:
        worker.decode(data, LIMITS)
    assert str(there.value) == str(here.value)
    assert "corrupt or truncated" in str(there.value)


# --- which formats go to the worker ----------------------------------------------------------


class RecordingPool:
    """Stands in for the child pool: records what decode_image hands over."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def decode(self, data: bytes, limits: DecodeLimits, **kwargs: Any) -> np.ndarray:
        self.calls.append({"limits": limits, **kwargs})
        return np.zeros((1, 1, 3), np.uint8)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> RecordingPool:
    pool = RecordingPool()
    monkeypatch.setattr(decode_worker, "_POOL", pool)
    return pool


@pytest.mark.parametrize(
    ("fmt", "isolated"),
    [
        ("WEBP", True),
        ("TIFF", True),
        ("AVIF", True),
        ("JPEG", False),
        ("PNG", False),
        ("GIF", False),
        ("BMP", False),
    ],
)
def test_only_uninterruptible_formats_go_to_the_worker(
    recording: RecordingPool, fmt: str, isolated: bool
) -> None:
    data = avif() if fmt == "AVIF" else encode(picture(), fmt)
    stop = threading.Event()
    limits = DecodeLimits(max_pixels=10_000, decode_seconds=7.0)
    out = decode_image(data, limits, target_size=(32, 32), cancel=stop.is_set)
    assert (out.shape == (1, 1, 3)) is isolated
    expected = {
        "limits": DecodeLimits(max_pixels=10_000, max_jpeg_scans=100, decode_seconds=7.0),
        "target_size": (32, 32),
        "cancel": stop.is_set,
    }
    assert recording.calls == ([expected] if isolated else [])
    assert (fmt in ISOLATED_FORMATS) is isolated


def test_heic_goes_to_the_worker(recording: RecordingPool) -> None:
    decode_image(heic())
    assert len(recording.calls) == 1


def test_isolation_can_be_turned_off(recording: RecordingPool) -> None:
    assert decode_image(webp(), isolate=False).shape == (64, 96, 3)
    assert recording.calls == []


def test_pixel_limit_is_checked_before_the_worker(recording: RecordingPool) -> None:
    with pytest.raises(ImageError, match="image declares 96x64 pixels, over the limit of 1000"):
        decode_image(webp(), DecodeLimits(max_pixels=1000))
    assert recording.calls == []


# --- budget, stop requests and crashes -------------------------------------------------------


def test_stuck_decode_is_killed_at_the_budget_and_the_next_photo_decodes(
    worker: DecodeWorker,
) -> None:
    data = webp()
    expected = worker.decode(data, LIMITS)
    stuck = worker.pid
    assert stuck is not None
    with pytest.raises(ImageError) as info:
        worker.decode(SLOW, DecodeLimits(decode_seconds=0.5))
    assert str(info.value) == "photo took longer than 0.5 s to decode"
    assert worker.pid is None and not is_running(stuck)
    np.testing.assert_array_equal(worker.decode(data, LIMITS), expected)
    assert worker.pid not in (None, stuck)  # a fresh child


def test_stop_request_kills_a_stuck_decode(worker: DecodeWorker) -> None:
    worker.decode(webp(), LIMITS)  # the child is up: the stop lands mid-decode
    stuck = worker.pid
    assert stuck is not None
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    try:
        with pytest.raises(Cancelled):
            worker.decode(SLOW, DecodeLimits(decode_seconds=None), cancel=stop.is_set)
    finally:
        timer.cancel()
    assert not is_running(stuck)


def test_crashing_decoder_fails_the_photo_with_its_exit_code(worker: DecodeWorker) -> None:
    with pytest.raises(ImageError) as info:
        worker.decode(CRASH, LIMITS)
    assert str(info.value) == "the decoder crashed on this photo (exit code 3)"
    assert worker.decode(webp(), LIMITS).shape == (64, 96, 3)


def test_child_that_died_between_photos_is_replaced(worker: DecodeWorker) -> None:
    worker.decode(webp(), LIMITS)
    idle = worker.pid
    assert idle is not None
    os.kill(idle, 9)
    deadline = time.monotonic() + 60  # only against a hang: the kill lands at once
    while worker.pid is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.decode(webp(), LIMITS).shape == (64, 96, 3)  # not this photo's fault
    assert worker.pid not in (None, idle)


def test_close_ends_the_child() -> None:
    own = DecodeWorker()
    own.decode(webp(), LIMITS)
    pid = own.pid
    assert pid is not None
    own.close()
    assert own.pid is None and not is_running(pid)


def test_pool_gives_concurrent_callers_their_own_child() -> None:
    pool = WorkerPool(scripted_decode)
    together = threading.Barrier(2)
    pids: list[int] = []

    def call() -> None:
        together.wait()
        pids.append(int(pool.decode(WHO, LIMITS)[0]))

    threads = [threading.Thread(target=call) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(set(pids)) == 2
        pids.append(int(pool.decode(WHO, LIMITS)[0]))
        assert len(set(pids)) == 2  # idle children are reused
    finally:
        pool.close()
