"""Image loading: from whatever the source column holds to an RGB uint8 array.

Every failure is an :class:`ImageError` whose message is the row's recorded reason; nothing
here touches the database.
"""

from __future__ import annotations

import base64
import binascii
import functools
import http.client
import io
import json
import os
import re
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_BASE64_BODY = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
_WHITESPACE = re.compile(rb"\s+")
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG",
    b"GIF8",
    b"RIFF",  # WebP
    b"BM",
    b"II*\x00",
    b"MM\x00*",  # TIFF
)
# ISO-BMFF brands of HEIF/HEIC and AVIF files (bytes 4-12 of the file).
_FTYP = (b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypmif1", b"ftypmsf1", b"ftypavif")
_MAX_REDIRECTS = 3
# How the magic numbers above look once base64-encoded (JPEG, PNG, GIF, WebP/RIFF, BMP, TIFF).
_BASE64_MAGIC = ("/9j/", "iVBORw0KGgo", "R0lGOD", "UklGR", "Qk", "SUkqAA", "TU0AKg")
# The only formats Pillow may try: photo formats. Anything else (EPS, which runs Ghostscript;
# formats without a magic number that random bytes can pass for) is refused unread.
_PHOTO_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", "AVIF")
_READ_CHUNK = 64 * 1024


class ImageError(Exception):
    """This photo cannot be used; the message says why and is stored as the row's error."""


@dataclass(frozen=True)
class LoaderConfig:
    kind: str = "auto"  # auto | path | url | bytes | base64
    photo_root: Path | None = None
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    # Each network operation may take this long, and the whole download at most twice as long.
    url_timeout: float = 10.0
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000


def detect_kind(value: Any) -> str:
    """Guess what a source value holds: ``bytes``, ``base64``, ``url`` or ``path``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        head = bytes(value[:16])
        if head.startswith(_MAGIC) or head[4:12] in _FTYP:
            return "bytes"
        # Some databases keep base64 text in a binary column.
        if head.startswith(b"data:") or _looks_base64(bytes(value[:4096])):
            return "base64"
        return "bytes"
    if isinstance(value, str):
        text = value.strip()
        lowered = text[:16].lower()
        if lowered.startswith(("http://", "https://")) or "://" in text[:12]:
            return "url"
        if lowered.startswith("data:"):
            return "base64"
        head = text[:4096].encode("ascii", "replace")
        if text.startswith(_BASE64_MAGIC) and _looks_base64(head):
            return "base64"
        # Paths have a file extension; base64 text has no '.', '-' or '_' at all.
        if len(text) >= 64 and _looks_base64(head):
            return "base64"
        return "path"
    raise ImageError(f"unsupported image value of type {type(value).__name__}")


def _looks_base64(chunk: bytes) -> bool:
    # Whitespace is dropped first so that the pattern cannot backtrack (linear time).
    return _BASE64_BODY.fullmatch(_WHITESPACE.sub(b"", chunk)) is not None


def reference_of(value: Any, kind: str) -> str | None:
    """What to show staff as the photo's reference: the path or URL, none for stored bytes."""
    if kind in ("path", "url") and isinstance(value, str):
        return value[:1024]
    return None


def load_bytes(value: Any, config: LoaderConfig) -> tuple[bytes, str]:
    """Return the encoded image bytes a source value points to, and the kind it was."""
    if value is None:
        raise ImageError("the image column is NULL")
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        if len(value) == 0:
            raise ImageError("the image column is empty")
        if len(value) <= 4096 and not (
            value.strip() if isinstance(value, str) else bytes(value).strip()
        ):
            raise ImageError("the image column is empty (only whitespace)")
    kind = detect_kind(value) if config.kind == "auto" else config.kind
    if kind == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ImageError("image_kind is bytes but the column holds text")
        data = bytes(value)
    elif kind == "base64":
        data = _decode_base64(value, config.max_bytes)
    elif kind == "url":
        data = _fetch_url(_as_text(value), config)
    elif kind == "path":
        data = _read_path(_as_text(value), config)
    else:
        raise ImageError(f"unknown image kind {kind!r}")
    if len(data) > config.max_bytes:
        raise ImageError(f"photo is {len(data)} bytes, over the {config.max_bytes} byte limit")
    if not data:
        raise ImageError(f"the {kind} photo is empty")
    return data, kind


def decode_image(data: bytes, max_pixels: int = 50_000_000) -> np.ndarray:
    """Decode encoded bytes into an upright HxWx3 uint8 RGB array."""
    if not data:
        raise ImageError("the image data is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Opening reads only the header: the size is checked before any pixel is decoded.
            image: Image.Image = Image.open(io.BytesIO(data), formats=_photo_formats())
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image declares {width}x{height} pixels, over the limit of {max_pixels}"
                )
            image.seek(0)  # animated formats: the first frame
            image.load()
            return _to_rgb(_upright(image))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"not an image Pillow can read ({_sniff(data)})") from exc
    except MemoryError as exc:
        raise ImageError("image is too large to decode in memory") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"image data is corrupt or truncated: {exc}") from exc
    except Exception as exc:  # decoders fed hostile bytes raise all sorts (struct.error, ...)
        raise ImageError(
            f"image data is corrupt or truncated: {type(exc).__name__}: {exc}"
        ) from exc


def load_image(value: Any, config: LoaderConfig) -> tuple[np.ndarray, str]:
    data, kind = load_bytes(value, config)
    return decode_image(data, config.max_pixels), kind


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


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ImageError("expected a path or URL but the column holds binary data") from exc
    raise ImageError(f"expected text, got {type(value).__name__}")


def _decode_base64(value: Any, max_bytes: int) -> bytes:
    raw = (
        bytes(value)
        if isinstance(value, (bytes, bytearray, memoryview))
        else str(value).encode("ascii", "replace")
    )
    raw = raw.strip()
    if raw[:5].lower() == b"data:":
        header, sep, payload = raw.partition(b",")
        if not sep or b";base64" not in header.lower():
            raise ImageError("data: URI is not base64-encoded")
        raw = payload
    compact = _WHITESPACE.sub(b"", raw)
    if len(compact) // 4 * 3 > max_bytes + 3:
        raise ImageError(
            f"base64 photo decodes to about {len(compact) // 4 * 3} bytes, "
            f"over the {max_bytes} byte limit"
        )
    try:
        return base64.b64decode(compact + b"=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"base64 text cannot be decoded: {exc}") from exc


def _refuse_text(text: str) -> None:
    """A path or URL column that holds a whole document (an error page, JSON) says so."""
    what = None
    if text.startswith("<"):
        what = _sniff(text.encode("utf-8", "replace"))
    elif text.startswith(("{", "[")):
        try:
            json.loads(text)
            what = "it looks like JSON text"
        except ValueError:
            pass
    elif "\n" in text:
        what = "it holds several lines of text"
    if what:
        raise ImageError(f"expected a photo path but the column holds text ({what})")


def _read_path(text: str, config: LoaderConfig) -> bytes:
    _refuse_text(text)
    if config.photo_root is None:
        raise ImageError("the photo is a file path but no photo root (LABELER_PHOTO_ROOT) is set")
    if "\x00" in text:
        raise ImageError("photo path contains a NUL byte")
    shown = repr(text[:200])
    relative = Path(text)
    if relative.is_absolute():
        raise ImageError("photo path is absolute; paths must be relative to the photo root")
    try:
        root = config.photo_root.resolve()
        target = (root / relative).resolve()
    except RuntimeError as exc:  # a symlink loop (Python < 3.13)
        raise ImageError(f"photo path {shown} cannot be resolved (symlink loop)") from exc
    except OSError as exc:
        raise ImageError(f"photo path {shown} cannot be resolved: {exc.strerror}") from exc
    # resolve() follows symlinks, so a link pointing outside the root is caught here too.
    if not target.is_relative_to(root):
        raise ImageError("photo path leads outside the photo root")
    # O_NOFOLLOW: the resolved file cannot be swapped for a link between the check and the
    # read; O_NONBLOCK: a FIFO cannot hang the pass.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(target, flags)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ImageError(f"photo file {shown} does not exist under the photo root") from exc
    except OSError as exc:
        raise ImageError(f"photo file {shown} cannot be read: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"photo path {shown} is not a regular file")
        if info.st_size > config.max_bytes:
            raise ImageError(
                f"photo file is {info.st_size} bytes, over the {config.max_bytes} byte limit"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(config.max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"photo file {shown} cannot be read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > config.max_bytes:
        raise ImageError(f"photo file is over the {config.max_bytes} byte limit")
    return data


class _AllowListRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, config: LoaderConfig) -> None:
        self.config = config
        self.count = 0

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.count += 1
        try:
            if self.count > _MAX_REDIRECTS:
                raise ImageError(f"photo URL redirects more than {_MAX_REDIRECTS} times")
            _check_url(newurl, self.config)
        except ImageError:
            fp.close()
            raise
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            # urllib would read the redirect's whole body before following it: unbounded.
            fp.close()
        return new

    def http_error_302(self, req, fp, code, msg, headers):
        # Check the target before urllib does, so that the reason names the rule it broke.
        location = headers.get("location") or headers.get("uri")
        if location:
            try:
                _check_url(urllib.parse.urljoin(req.full_url, location.strip()), self.config)
            except ImageError:
                fp.close()
                raise
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _check_url(url: str, config: LoaderConfig) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ImageError(f"photo URL is malformed: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise ImageError(f"photo URL scheme {parts.scheme!r} is not allowed (http or https only)")
    if "@" in parts.netloc or "\\" in parts.netloc:
        # urllib and urlsplit disagree on such hosts: refuse rather than guess.
        raise ImageError("photo URL must not contain a user name, password or backslash")
    host = (parts.hostname or "").lower()
    if not host:
        raise ImageError("photo URL has no host")
    if host not in config.allowed_hosts:
        raise ImageError(
            f"photo URL host {host!r} is not in the allow-list (LABELER_URL_ALLOWED_HOSTS)"
        )


def _fetch_url(url: str, config: LoaderConfig) -> bytes:
    _check_url(url, config)
    opener = urllib.request.build_opener(_AllowListRedirects(config))
    request = urllib.request.Request(url, headers={"User-Agent": "labeler/0.1"})  # noqa: S310
    started = time.monotonic()
    # Per-operation timeouts alone let a server that trickles a byte at a time hold the pass.
    deadline = started + 2 * config.url_timeout
    chunks: list[bytes] = []
    total = 0
    try:
        with opener.open(request, timeout=config.url_timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > config.max_bytes:
                raise ImageError(
                    f"photo URL serves {declared} bytes, over the {config.max_bytes} byte limit"
                )
            read = getattr(response, "read1", response.read)
            while True:
                if time.monotonic() > deadline:
                    raise ImageError(
                        f"photo URL did not finish downloading within {2 * config.url_timeout:g} s"
                    )
                chunk = read(_READ_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > config.max_bytes:
                    raise ImageError(
                        f"photo URL serves more than the {config.max_bytes} byte limit"
                    )
                chunks.append(chunk)
    except ImageError:
        raise
    except urllib.error.HTTPError as exc:
        exc.close()
        raise ImageError(f"photo URL answered HTTP {exc.code} {exc.reason}".rstrip()) from exc
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise ImageError(
                f"photo URL timed out (no answer within {config.url_timeout:g} s)"
            ) from exc
        if isinstance(exc, http.client.HTTPException) and not isinstance(exc, OSError):
            raise ImageError(
                f"photo URL sent a malformed HTTP response ({type(exc).__name__})"
            ) from exc
        raise ImageError(f"photo URL cannot be fetched: {reason}") from exc
    return b"".join(chunks)


_MAGIC_NAMES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG", "PNG"),
    (b"GIF8", "GIF"),
    (b"RIFF", "WebP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniff(data: bytes) -> str:
    for magic, name in _MAGIC_NAMES:
        if data.startswith(magic):
            return f"it starts like a {name} file but is corrupt or truncated"
    if data[4:12] in _FTYP:
        return "it starts like a HEIF/AVIF file but is corrupt, truncated or unsupported"
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
