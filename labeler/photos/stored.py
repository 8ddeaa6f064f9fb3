"""Values stored in the database: what a source column value holds, and its text forms decoded.

A value is image bytes, base64 (base64url, a ``data:`` URL) or hex text, an http(s) URL, or a
file path, in a text or a binary column. Detection goes by what decodes to an image (the
signature table in :mod:`labeler.photos.decoding`) and otherwise by what the value looks like;
every refusal says what was found.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Any

from labeler.photos.decoding import SIGNATURE_BYTES, ImageError, image_format, sniff
from labeler.photos.files import exists_under

_BASE64_BODY = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
_BASE64URL_BODY = re.compile(rb"[A-Za-z0-9_-]+={0,2}")
_HEX_BODY = re.compile(rb"(?:\\x|0x)?[0-9A-Fa-f]+")
_WHITESPACE = re.compile(rb"\s+")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,15}://")
# Text whose first characters could be a file path in a binary column (no markup, one line).
_ANY_CONTROL = re.compile(r"[\x00-\x1f\x7f<>{}\[\]]")
_PATH_TEXT = re.compile(r"[^\x00-\x1f\x7f<>{}\[\]]{1,1024}")
_IMAGE_SUFFIXES = (
    *(".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"),
    *(".heic", ".heif", ".avif"),
)
_TEXT_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


# --- what a value holds -----------------------------------------------------------------------


def classify(value: Any, photo_root: Path | None) -> tuple[str, Any]:
    """What a source value holds (``bytes``, ``base64``, ``hex``, ``url`` or ``path``) and the
    value to load it from (text for a path or URL in bytes).

    Image bytes and text that decodes (base64, base64url, hex) to an image's signature win;
    then URLs; then, with a photo root, a file that exists under it (content-addressed names
    like ``ab/cd/<sha256>`` have no extension); then what the text looks like.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        head = bytes(value[:SIGNATURE_BYTES])
        if image_format(head):
            return "bytes", value
        text = _binary_as_text(value)
        if text is not None:
            kind = _classify_text(text, photo_root, from_binary=True)
            if kind is not None:
                return kind, text
        # Some databases keep base64 text in a binary column.
        if head.startswith(b"data:") or _looks_base64(bytes(value[:4096])):
            return "base64", value
        return "bytes", value
    if isinstance(value, str):
        text = _without_bom(value.strip())
        return _classify_text(text, photo_root, from_binary=False) or "path", text
    raise ImageError(f"unsupported image value of type {type(value).__name__}")


def _shaped_like_path(text: str) -> bool:
    """With a photo root, text that decodes to no image and reads like a file name is one, so
    it gets a path's reason ("does not exist", "file name too long"), not base64's.

    Only base64 has ``+`` and ``=`` padding, and a pure hex body without a folder is hex;
    corrupt base64 of any length without a ``+`` is vanishingly rare.
    """
    if "+" in text or text.endswith("=") or _ANY_CONTROL.search(text):
        return False
    return "/" in text or not _HEX_BODY.fullmatch(text.encode("ascii", "replace"))


def _classify_text(text: str, photo_root: Path | None, from_binary: bool) -> str | None:
    if _URL_SCHEME.match(text):
        return "url"
    if text[:5].lower() == "data:":
        return "base64"
    head = text[:4096].encode("ascii", "replace")
    if _encoded_format(head, "base64"):
        return "base64"
    if _encoded_format(head, "hex"):
        return "hex"
    if photo_root is not None and (exists_under(text, photo_root) or _shaped_like_path(text)):
        return "path"
    # Hex before base64: hex digits are base64 letters too, but base64 of any real content is
    # never only hex digits.
    if len(text) >= 32 and _HEX_BODY.fullmatch(head.strip()) and len(head.strip()) % 2 == 0:
        return "hex"
    if len(text) >= 64 and not _hex_path(text):
        if _looks_base64(head):
            return "base64"
        if _BASE64URL_BODY.fullmatch(_WHITESPACE.sub(b"", head)) and re.search(r"[-_]", text):
            return "base64"
    if not from_binary:
        return None  # the caller reads other text as a path
    # In a binary column only text that looks like a path is one; the rest is bytes.
    one_line = _PATH_TEXT.fullmatch(text) is not None
    if one_line and ("/" in text or text.lower().endswith(_IMAGE_SUFFIXES)):
        return "path"
    return None


def _encoded_format(head: bytes, encoding: str) -> str | None:
    """The image format that base64/base64url/hex text starts with, if any."""
    compact = _WHITESPACE.sub(b"", head[:96])
    try:
        if encoding == "hex":
            for prefix in (b"\\x", b"0x"):
                compact = compact.removeprefix(prefix)
            raw = bytes.fromhex(compact[: SIGNATURE_BYTES * 2].decode("ascii"))
            return image_format(raw)
        chunk = compact[:16]
        if len(chunk) < 16:
            return None
        for altchars in (None, b"-_"):
            try:
                raw = base64.b64decode(chunk, altchars=altchars, validate=True)
            except (binascii.Error, ValueError):
                continue
            found = image_format(raw)
            if found:
                return found
    except (ValueError, UnicodeDecodeError):
        return None
    return None


def _hex_path(text: str) -> bool:
    """``ab/cd/e3b0c4...``: hex names in folders, as content-addressed stores keep files."""
    parts = text.split("/")
    return len(parts) > 1 and all(
        part and all(c in "0123456789abcdefABCDEF" for c in part) for part in parts
    )


def _looks_base64(chunk: bytes) -> bool:
    # Whitespace is dropped first so that the pattern cannot backtrack (linear time).
    return _BASE64_BODY.fullmatch(_WHITESPACE.sub(b"", chunk)) is not None


def _without_bom(text: str) -> str:
    return text[1:].lstrip() if text.startswith("\ufeff") else text


def _binary_as_text(value: bytes | bytearray | memoryview) -> str | None:
    """Text held in a binary column (UTF-8, or UTF-16 with a byte-order mark), else None."""
    head = bytes(value[:64])
    for bom, encoding in _TEXT_BOMS:
        if head.startswith(bom):
            try:
                text = bytes(value[len(bom) :]).decode(encoding).strip()
            except UnicodeDecodeError:
                return None
            # Two bytes that happen to read as a UTF-16 mark (a binary header) are not text.
            if encoding != "utf-8" and not (text.isascii() and text.isprintable()):
                return None
            return text
    if not head or not all(b >= 32 or b in (9, 10, 13) for b in head):
        return None
    try:
        return bytes(value).decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


# --- text forms to bytes ----------------------------------------------------------------------


def as_text(value: Any) -> str:
    """A path or URL column's text, from a text or a binary column."""
    if isinstance(value, str):
        return _without_bom(value.strip())
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = _binary_as_text(value)
        if text is None:
            raise ImageError("expected a path or URL but the column holds binary data")
        return _without_bom(text)
    raise ImageError(f"expected text, got {type(value).__name__}")


def decode_base64(value: Any, max_bytes: int) -> bytes:
    """Base64 or base64url text (or a ``data:`` URL) decoded, refused before decoding when the
    result would be over ``max_bytes``."""
    raw = (
        bytes(value)
        if isinstance(value, (bytes, bytearray, memoryview))
        else _without_bom(str(value)).encode("ascii", "replace")
    )
    raw = raw.removeprefix(b"\xef\xbb\xbf").strip()
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
    altchars = b"-_" if re.search(rb"[-_]", compact[:4096]) else None
    try:
        return base64.b64decode(
            compact + b"=" * (-len(compact) % 4), altchars=altchars, validate=True
        )
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"base64 text cannot be decoded: {exc}") from exc


def decode_hex(value: Any, max_bytes: int, photo_root: Path | None) -> bytes:
    """Hex text (``\\x`` or ``0x`` prefixed or not) decoded; it must decode to an image, and
    ``photo_root`` only shapes the refusal's words."""
    text = as_text(value)
    compact = re.sub(r"\s+", "", text)
    for prefix in ("\\x", "0x"):
        compact = compact.removeprefix(prefix)
    if len(compact) // 2 > max_bytes:
        raise ImageError(
            f"hex photo decodes to {len(compact) // 2} bytes, over the {max_bytes} byte limit"
        )
    try:
        data = bytes.fromhex(compact)
    except ValueError as exc:
        raise ImageError(f"hexadecimal text cannot be decoded: {exc}") from exc
    if image_format(data[:SIGNATURE_BYTES]) is None:
        where = (
            "nor names a file under the photo root"
            if photo_root is not None
            else "and no photo root (LABELER_PHOTO_ROOT) is set to read it as a file name"
        )
        raise ImageError(
            f"the column holds hexadecimal text that does not decode to an image "
            f"({sniff(data)}) {where}"
        )
    return data
