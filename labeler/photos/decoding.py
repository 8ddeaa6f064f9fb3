"""Decoding: encoded photo bytes to an upright RGB uint8 array, with bounded work.

Serving (``labeler.photos.fetching``) and training (``training.data``) both decode here, so a photo
looks the same to the model in both. Work is bounded three ways before and while decoding: the
declared pixel count (decompression bombs), the number of JPEG scans (a small progressive JPEG
with thousands of scans costs minutes), and a time budget checked between input chunks.
Formats whose decoder takes the whole file in one call (WebP, HEIF/AVIF, TIFF) cannot be stopped
between chunks: they are decoded in a child process that is killed at the budget or on a stop
request (``labeler.photos.decode_worker``). JPEG photos larger than the model input are decoded at a
reduced scale (DCT scaling).
"""

from __future__ import annotations

import functools
import io
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from labeler.core.limits import DECODE_SECONDS, MAX_IMAGE_PIXELS, MAX_JPEG_SCANS
from labeler.core.textsafe import storable_text

# Input is fed to the decoder in chunks this large, so a budget or a stop request is noticed
# after at most one chunk's work (Pillow's default is 64 KiB).
_DECODE_CHUNK = 16 * 1024
_ORIENTATION = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# The only formats Pillow may try: photo formats. Anything else (EPS, which runs Ghostscript;
# formats without a magic number that random bytes can pass for) is refused unread.
_PHOTO_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", "AVIF")
# Formats Pillow hands whole to a C decoder in one call (WebP, libheif, libavif, and libtiff for
# every compressed TIFF), which no budget or stop request can interrupt in-process: they are
# decoded in a child process that can be killed. The others stream through _BudgetedInput.
ISOLATED_FORMATS = frozenset({"WEBP", "HEIF", "AVIF", "TIFF"})


class ImageError(Exception):
    """This photo cannot be used; the message says why and is stored as the row's error.

    The message is made storable (no control characters, valid UTF-8, bounded length) here, so
    every reason built from outside text (file names, HTTP reasons, decoder messages) is safe.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(storable_text(message, 1000))


class Cancelled(Exception):
    """Decoding or fetching stopped because the caller asked (e.g. the pass is shutting down).

    Not an :class:`ImageError`: the photo is not at fault and its row must not be failed.
    """


@dataclass(frozen=True)
class DecodeLimits:
    """How much work decoding one photo may cost: the three bounds of the module docstring.

    One value travels from the settings (``LoaderConfig``) through every decode, the child
    process's included, so a bound cannot be dropped on the way. The defaults are the settings'
    defaults.
    """

    # Width times height as the header declares them, checked before any pixel is decoded
    # (decompression bombs).
    max_pixels: int = MAX_IMAGE_PIXELS  # LABELER_MAX_IMAGE_PIXELS
    # Real progressive JPEGs have about 10 scans (libjpeg's default script), sequential ones
    # 1-3. Each scan costs a pass over every block of the image, so the count bounds the work.
    max_jpeg_scans: int = MAX_JPEG_SCANS  # LABELER_MAX_JPEG_SCANS
    # Seconds one photo may take, checked between input chunks (see _BudgetedInput); None: no
    # budget.
    decode_seconds: float | None = DECODE_SECONDS  # LABELER_DECODE_SECONDS


DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True)
class Signature:
    """How an image file starts: ``magic`` at ``offset`` (and ``then`` at ``then_at``)."""

    name: str
    magic: bytes
    offset: int = 0
    then: bytes = b""
    then_at: int = 0

    def matches(self, head: bytes) -> bool:
        end = self.offset + len(self.magic)
        if head[self.offset : end] != self.magic:
            return False
        return not self.then or head[self.then_at : self.then_at + len(self.then)] == self.then


# The one table of image file signatures: kind detection, base64/hex detection and the
# "what is it" part of a refusal all read it.
SIGNATURES: tuple[Signature, ...] = (
    Signature("JPEG", b"\xff\xd8\xff"),
    Signature("PNG", b"\x89PNG"),
    Signature("GIF", b"GIF8"),
    Signature("WebP", b"RIFF", then=b"WEBP", then_at=8),
    Signature("BMP", b"BM", then=b"\x00\x00\x00\x00", then_at=6),  # the reserved field
    Signature("TIFF", b"II*\x00"),
    Signature("TIFF", b"MM\x00*"),
    *(
        Signature("HEIF" if brand != b"avif" else "AVIF", b"ftyp" + brand, offset=4)
        for brand in (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif")
    ),
)
SIGNATURE_BYTES = 12  # the longest prefix any signature needs


def image_format(head: bytes) -> str | None:
    """The image format ``head`` (the first bytes of a file) starts like, or None."""
    for signature in SIGNATURES:
        if signature.matches(head):
            return signature.name
    return None


def sniff(data: bytes) -> str:
    """Say what ``data`` looks like, for a refusal: '(it looks like an HTML page)'."""
    name = image_format(data[:SIGNATURE_BYTES])
    if name in ("HEIF", "AVIF"):
        return "it starts like a HEIF/AVIF file but is corrupt, truncated or unsupported"
    if name:
        return f"it starts like a {name} file but is corrupt or truncated"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")) or any(
        tag in head for tag in (b"<html", b"<!doctype html", b"<head", b"<body")
    ):
        return "it looks like an HTML page"
    if b"<svg" in head:
        return "it looks like an SVG drawing"
    if head.startswith(b"<?xml"):
        return "it looks like an XML document"
    if head.startswith(b"%pdf"):
        return "it looks like a PDF document"
    if head.startswith(b"pk\x03\x04"):
        return "it looks like a ZIP archive"
    if head.startswith((b"{", b"[")):
        return "it looks like JSON text"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in data[:64]):
        return "it looks like plain text"
    return f"{len(data)} bytes of unknown format"


# A marker that ends entropy-coded data: 0xFF followed by neither a stuffed zero, a restart
# marker (RST0-7) nor another 0xFF (fill).
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_SOS, _EOI = 0xDA, 0xD9


def jpeg_scan_count(data: bytes, stop_above: int = MAX_JPEG_SCANS) -> int:
    """How many scans (SOS segments) the first image of a JPEG has, counting to ``stop_above + 1``.

    Walks the marker segments by their lengths (so a thumbnail inside EXIF is not counted)
    and skips entropy-coded data the way libjpeg finds the next marker. Linear in the size.
    """
    pos, scans, size = 2, 0, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF or data[pos + 1] in (0x00, 0xFF) or 0xD0 <= data[pos + 1] <= 0xD7:
            found = _JPEG_MARKER.search(data, pos + 1)
            if found is None:
                break
            pos = found.start()
            continue
        marker = data[pos + 1]
        if marker == _EOI:
            break
        if marker == 0x01:  # TEM: no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            break  # the decoder refuses this itself
        pos += 2 + length
        if marker == _SOS:
            scans += 1
            if scans > stop_above:
                break
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans


class _BudgetedInput(io.BytesIO):
    """Encoded bytes that refuse to be read past a deadline or after a stop request.

    Pillow pulls input in chunks while it decodes; a refused read ends the decode between two
    chunks, so no decoder runs on for long after its budget.
    """

    def __init__(
        self,
        data: bytes,
        deadline: float | None,
        cancel: Callable[[], bool] | None,
        clock: Callable[[], float],
        budget: float | None,
    ) -> None:
        super().__init__(data)
        self._deadline, self._cancel, self._clock, self._budget = deadline, cancel, clock, budget

    def read(self, size: int | None = -1, /) -> bytes:
        if self._cancel is not None and self._cancel():
            raise Cancelled("decoding stopped on request")
        if self._deadline is not None and self._clock() > self._deadline:
            raise ImageError(f"photo took longer than {self._budget:g} s to decode")
        return super().read(size)


def decode_image(
    data: bytes,
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    target_size: tuple[int, int] | None = None,
    cancel: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    isolate: bool = True,
) -> np.ndarray:
    """Decode encoded bytes into an upright HxWx3 uint8 RGB array, within ``limits``.

    ``target_size`` (height, width): the size the caller will resize to (the model input). A
    JPEG at least twice as large on both sides is decoded at 1/2, 1/4 or 1/8 scale, the
    smallest that still covers it once upright. The time budget and ``cancel`` are checked
    between input chunks; ``cancel`` returning true raises :class:`Cancelled`. With
    ``isolate``, the formats in :data:`ISOLATED_FORMATS` are decoded in a child process killed
    at the budget or on ``cancel`` (the budget then runs on the real clock, not ``clock``);
    without, they are decoded here and cannot be interrupted.
    """
    if not data:
        raise ImageError("the image data is empty")
    max_scans, time_budget = limits.max_jpeg_scans, limits.decode_seconds
    if image_format(data[:SIGNATURE_BYTES]) == "JPEG":
        scans = jpeg_scan_count(data, max_scans)
        if scans > max_scans:
            raise ImageError(
                f"JPEG has more than {max_scans} scans (photos have about 10); "
                "refused as too slow to decode"
            )
    deadline = None if time_budget is None else clock() + time_budget
    source = _BudgetedInput(data, deadline, cancel, clock, time_budget)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Opening reads only the header: the size is checked before any pixel is decoded.
            image: Image.Image = Image.open(source, formats=_photo_formats())
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ImageError(
                    f"image declares {width}x{height} pixels, over the limit of {limits.max_pixels}"
                )
            if isolate and image.format in ISOLATED_FORMATS:
                return _decode_isolated(data, limits, target_size, cancel)
            image.seek(0)  # animated formats: the first frame
            drafted = _draft(image, target_size)
            image.decodermaxblock = _DECODE_CHUNK  # type: ignore[attr-defined]
            image.load()
            upright = _upright(image)
            if drafted and target_size and not _covers(upright.size, target_size):
                # Never smaller than asked: should a reduced decode fall short (an orientation
                # read differently), decode again at full scale.
                return decode_image(data, limits, cancel=cancel, clock=clock)
            return _to_rgb(upright)
    except (ImageError, Cancelled):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"not an image Pillow can read ({sniff(data)})") from exc
    except MemoryError as exc:
        raise ImageError("image is too large to decode in memory") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"image data is corrupt or truncated: {exc}") from exc
    except Exception as exc:  # decoders fed hostile bytes raise all sorts (struct.error, ...)
        raise ImageError(
            f"image data is corrupt or truncated: {type(exc).__name__}: {exc}"
        ) from exc


def _decode_isolated(
    data: bytes,
    limits: DecodeLimits,
    target_size: tuple[int, int] | None,
    cancel: Callable[[], bool] | None,
) -> np.ndarray:
    # Imported here: decode_worker imports this module (and the child imports it again).
    from labeler.photos.decode_worker import decode_isolated

    return decode_isolated(data, limits, target_size=target_size, cancel=cancel)


def _draft(image: Image.Image, target_size: tuple[int, int] | None) -> bool:
    """Ask a JPEG decoder for the smallest DCT scale that still covers ``target_size``.

    The target is upright (height, width); the draft works on the stored orientation, so a
    photo turned a quarter by EXIF asks for the swapped size. Returns whether it scaled.
    """
    if target_size is None or image.format not in ("JPEG", "MPO"):
        return False
    height, width = target_size
    if _orientation(image) in _QUARTER_TURNS:
        height, width = width, height
    before = image.size
    image.draft("RGB", (max(1, width), max(1, height)))
    return image.size != before


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION, 1))
    except Exception:  # corrupt EXIF: used as stored, like _upright does
        return 1


def _covers(size: tuple[int, int], target_size: tuple[int, int]) -> bool:
    width, height = size
    return width >= target_size[1] and height >= target_size[0]


@functools.cache
def _photo_formats() -> tuple[str, ...]:
    try:  # HEIC/HEIF (iPhone photos) when the optional pillow-heif is installed
        import pillow_heif

        pillow_heif.register_heif_opener()
    except Exception:  # noqa: S110 - optional: without it HEIC photos fail with a clear reason
        pass
    Image.init()
    return tuple(name for name in _PHOTO_FORMATS if name in Image.OPEN)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a photo with unreadable EXIF is used as stored."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:
        return image


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = _grey_to_8bit(np.asarray(image, dtype=np.float64), mode)
        return np.repeat(grey[..., np.newaxis], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError("image has no pixels")
    return rgb


def _grey_to_8bit(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit and float greyscale to 8 bits, keeping the photo's own brightness.

    16-bit images use their full range (65535 is white). 32-bit and float images have no
    fixed range: values within 0..1 (float), 0..255 or 0..65535 are read as that range, and
    anything else is stretched from its minimum to its maximum.
    """
    if arr.size == 0:
        raise ImageError("image has no pixels")
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if mode.startswith("I;16") or (lo >= 0 and 255 < hi <= 65535):
        scaled = arr / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1.0:
        scaled = arr * 255.0
    elif lo >= 0 and hi <= 255:
        scaled = arr
    elif hi > lo:
        scaled = (arr - lo) / (hi - lo) * 255.0
    else:
        scaled = arr
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
