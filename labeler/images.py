"""Image loading: from whatever the source column holds to an RGB uint8 array.

Every failure is an :class:`ImageError` whose message is the row's recorded reason; nothing
here touches the database.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_BASE64_TEXT = re.compile(rb"^[A-Za-z0-9+/\s]+={0,2}\s*$")
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG",
    b"GIF8",
    b"RIFF",  # WebP
    b"BM",
    b"II*\x00",
    b"MM\x00*",  # TIFF
)
_MAX_REDIRECTS = 3
# How the magic numbers above look once base64-encoded (JPEG, PNG, GIF, WebP/RIFF, BMP, TIFF).
_BASE64_MAGIC = ("/9j/", "iVBORw0KGgo", "R0lGOD", "UklGR", "Qk", "SUkqAA", "TU0AKg")


class ImageError(Exception):
    """This photo cannot be used; the message says why and is stored as the row's error."""


@dataclass(frozen=True)
class LoaderConfig:
    kind: str = "auto"  # auto | path | url | bytes | base64
    photo_root: Path | None = None
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    url_timeout: float = 10.0
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000


def detect_kind(value: Any) -> str:
    """Guess what a source value holds: ``bytes``, ``base64``, ``url`` or ``path``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        head = bytes(value[:16])
        if head.startswith(_MAGIC) or head[4:12] in (b"ftypheic", b"ftypmif1", b"ftypavif"):
            return "bytes"
        # Some databases keep base64 text in a binary column.
        if head.startswith(b"data:") or _BASE64_TEXT.match(bytes(value[:4096])):
            return "base64"
        return "bytes"
    if isinstance(value, str):
        text = value.strip()
        lowered = text[:16].lower()
        if lowered.startswith(("http://", "https://")) or "://" in text[:12]:
            return "url"
        if lowered.startswith("data:"):
            return "base64"
        if text.startswith(_BASE64_MAGIC) and _BASE64_TEXT.match(
            text[:4096].encode("ascii", "replace")
        ):
            return "base64"
        # Paths have a file extension; base64 text has no '.', '-' or '_' at all.
        if len(text) >= 64 and _BASE64_TEXT.match(text[:4096].encode("ascii", "replace")):
            return "base64"
        return "path"
    raise ImageError(f"unsupported image value of type {type(value).__name__}")


def reference_of(value: Any, kind: str) -> str | None:
    """What to show staff as the photo's reference: the path or URL, none for stored bytes."""
    if kind in ("path", "url") and isinstance(value, str):
        return value[:1024]
    return None


def load_bytes(value: Any, config: LoaderConfig) -> tuple[bytes, str]:
    """Return the encoded image bytes a source value points to, and the kind it was."""
    if value is None:
        raise ImageError("the image column is NULL")
    if isinstance(value, (str, bytes, bytearray, memoryview)) and len(value) == 0:
        raise ImageError("the image column is empty")
    kind = detect_kind(value) if config.kind == "auto" else config.kind
    if kind == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ImageError("image_kind is bytes but the column holds text")
        data = bytes(value)
    elif kind == "base64":
        data = _decode_base64(value)
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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image declares {width}x{height} pixels, over the limit of {max_pixels}"
                )
            image.seek(0)  # animated formats: the first frame
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return _to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"not an image Pillow can read ({_sniff(data)})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"image data is corrupt or truncated: {exc}") from exc
    except MemoryError as exc:
        raise ImageError("image is too large to decode in memory") from exc


def load_image(value: Any, config: LoaderConfig) -> tuple[np.ndarray, str]:
    data, kind = load_bytes(value, config)
    return decode_image(data, config.max_pixels), kind


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and float greyscale: scale to 8 bits rather than clip everything to white.
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
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


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ImageError("expected a path or URL but the column holds binary data") from exc
    raise ImageError(f"expected text, got {type(value).__name__}")


def _decode_base64(value: Any) -> bytes:
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
    compact = re.sub(rb"\s+", b"", raw)
    try:
        return base64.b64decode(compact + b"=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"base64 text cannot be decoded: {exc}") from exc


def _read_path(text: str, config: LoaderConfig) -> bytes:
    if config.photo_root is None:
        raise ImageError("the photo is a file path but no photo root (LABELER_PHOTO_ROOT) is set")
    if "\x00" in text:
        raise ImageError("photo path contains a NUL byte")
    relative = Path(text)
    if relative.is_absolute():
        raise ImageError("photo path is absolute; paths must be relative to the photo root")
    root = config.photo_root.resolve()
    target = (root / relative).resolve()
    # resolve() follows symlinks, so a link pointing outside the root is caught here too.
    if not target.is_relative_to(root):
        raise ImageError("photo path leads outside the photo root")
    if not target.is_file():
        raise ImageError(f"photo file {text!r} does not exist under the photo root")
    size = target.stat().st_size
    if size > config.max_bytes:
        raise ImageError(f"photo file is {size} bytes, over the {config.max_bytes} byte limit")
    try:
        return target.read_bytes()
    except OSError as exc:
        raise ImageError(f"photo file cannot be read: {exc.strerror}") from exc


class _AllowListRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, config: LoaderConfig) -> None:
        self.config = config
        self.count = 0

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.count += 1
        if self.count > _MAX_REDIRECTS:
            raise ImageError(f"photo URL redirects more than {_MAX_REDIRECTS} times")
        _check_url(newurl, self.config)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _check_url(url: str, config: LoaderConfig) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ImageError(f"photo URL scheme {parts.scheme!r} is not allowed (http or https only)")
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
    try:
        with opener.open(request, timeout=config.url_timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > config.max_bytes:
                raise ImageError(
                    f"photo URL serves {declared} bytes, over the {config.max_bytes} byte limit"
                )
            data = response.read(config.max_bytes + 1)
    except ImageError:
        raise
    except urllib.error.HTTPError as exc:
        raise ImageError(f"photo URL answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ImageError(f"photo URL cannot be fetched: {reason}") from exc
    if len(data) > config.max_bytes:
        raise ImageError(f"photo URL serves more than the {config.max_bytes} byte limit")
    return data


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "it looks like an HTML page"
    if head.startswith(b"{") or head.startswith(b"["):
        return "it looks like JSON text"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in data[:64]):
        return "it looks like plain text"
    return f"{len(data)} bytes of unknown format"
