"""Fetching: from whatever the source column holds to the photo's encoded bytes.

A value is a file path under the photo root, an http(s) URL, stored bytes, or base64 or hex
text. ``auto`` detection goes by what decodes to an image (the signature table in
:mod:`labeler.photos.decoding`) and otherwise by what the value looks like, and every refusal says
what
was found. Every failure is an :class:`ImageError` whose message is the row's recorded reason;
nothing here touches the database.
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import hashlib
import http.client
import io
import ipaddress
import json
import os
import re
import selectors
import socket
import ssl
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labeler.core import limits
from labeler.core.textsafe import storable_text
from labeler.photos.decoding import (
    DEFAULT_LIMITS,
    SIGNATURE_BYTES,
    Cancelled,
    DecodeLimits,
    ImageError,
    decode_image,
    image_format,
    sniff,
)

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
_MAX_REDIRECTS = 3
_MAX_SYMLINKS = 40  # as Linux: more link expansions than this in one path is a loop
_READ_CHUNK = 64 * 1024
_PATH_PROBE_CHARS = 4096  # longer text is never tried as a file name
# Every network wait (resolving, connecting, TLS, reading) wakes at least this often, to notice
# a stop request.
_POLL_SECONDS = 0.2
# Host name lookups running at once. A lookup cannot be interrupted, so one that hangs keeps its
# thread until the resolver gives up; this bounds how many such threads a broken resolver can
# leave behind. A fetch that finds every slot taken waits within its own deadline.
_RESOLVER_SLOTS = threading.BoundedSemaphore(8)


@dataclass(frozen=True)
class LoaderConfig:
    kind: str = "auto"  # auto | path | url | bytes | base64 (auto may also find hex)
    photo_root: Path | None = None
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    # Each network operation may take this long, and the whole fetch (connecting, headers and
    # body, redirects included) at most twice as long.
    url_timeout: float = limits.URL_TIMEOUT_SECONDS
    max_bytes: int = limits.MAX_IMAGE_BYTES
    decode_limits: DecodeLimits = DEFAULT_LIMITS


def load_image(
    value: Any,
    config: LoaderConfig,
    *,
    target_size: tuple[int, int] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, str]:
    """Fetch and decode one photo; ``target_size`` (height, width) is the model input size."""
    image, kind, _ = load_photo(value, config, target_size=target_size, cancel=cancel)
    return image, kind


def load_photo(
    value: Any,
    config: LoaderConfig,
    *,
    target_size: tuple[int, int] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, str, str]:
    """:func:`load_image`, with the :func:`fingerprint` of the bytes that were decoded."""
    data, kind = load_bytes(value, config, cancel=cancel)
    image = decode_image(data, config.decode_limits, target_size=target_size, cancel=cancel)
    return image, kind, fingerprint(data)


def fingerprint(data: bytes) -> str:
    """What a photo's content is known by: the sha256 (hex) of its bytes as read (a file's,
    a URL's body, base64 or hex text decoded), computed on the bytes already in memory, so a
    photo is never read twice for it."""
    return hashlib.sha256(data).hexdigest()


def reference_of(value: Any, kind: str) -> str | None:
    """What to show staff as the photo's reference: the path or URL, none for stored bytes."""
    if kind not in ("path", "url"):
        return None
    try:
        return storable_text(_as_text(value), 1024)
    except ImageError:
        return None


# --- what a value holds -----------------------------------------------------------------------


def detect_kind(value: Any, config: LoaderConfig | None = None) -> str:
    """What a source value holds: ``bytes``, ``base64``, ``hex``, ``url`` or ``path``.

    Image bytes and text that decodes (base64, base64url, hex) to an image's signature win;
    then URLs; then, with a photo root, a file that exists under it (content-addressed names
    like ``ab/cd/<sha256>`` have no extension); then what the text looks like.
    """
    return _classify(value, config)[0]


def _classify(value: Any, config: LoaderConfig | None) -> tuple[str, Any]:
    """The detected kind and the value to load it from (text for a path or URL in bytes)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        head = bytes(value[:SIGNATURE_BYTES])
        if image_format(head):
            return "bytes", value
        text = _binary_as_text(value)
        if text is not None:
            kind = _classify_text(text, config, from_binary=True)
            if kind is not None:
                return kind, text
        # Some databases keep base64 text in a binary column.
        if head.startswith(b"data:") or _looks_base64(bytes(value[:4096])):
            return "base64", value
        return "bytes", value
    if isinstance(value, str):
        text = _without_bom(value.strip())
        return _classify_text(text, config, from_binary=False) or "path", text
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


def _classify_text(text: str, config: LoaderConfig | None, from_binary: bool) -> str | None:
    if _URL_SCHEME.match(text):
        return "url"
    if text[:5].lower() == "data:":
        return "base64"
    head = text[:4096].encode("ascii", "replace")
    if _encoded_format(head, "base64"):
        return "base64"
    if _encoded_format(head, "hex"):
        return "hex"
    if (
        config is not None
        and config.photo_root is not None
        and (_exists_under(text, config) or _shaped_like_path(text))
    ):
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


# --- value to bytes ---------------------------------------------------------------------------


def load_bytes(
    value: Any, config: LoaderConfig, *, cancel: Callable[[], bool] | None = None
) -> tuple[bytes, str]:
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
    if config.kind == "auto":
        kind, value = _classify(value, config)
    else:
        kind = config.kind
    if kind == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ImageError("image_kind is bytes but the column holds text")
        data = bytes(value)
    elif kind == "base64":
        data = _decode_base64(value, config.max_bytes)
    elif kind == "hex":
        data = _decode_hex(value, config)
    elif kind == "url":
        data = _fetch_url(_as_text(value), config, cancel)
    elif kind == "path":
        data = _read_path(_as_text(value), config)
    else:
        raise ImageError(f"unknown image kind {kind!r}")
    if len(data) > config.max_bytes:
        raise ImageError(f"photo is {len(data)} bytes, over the {config.max_bytes} byte limit")
    if not data:
        raise ImageError(f"the {kind} photo is empty")
    return data, kind


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return _without_bom(value.strip())
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = _binary_as_text(value)
        if text is None:
            raise ImageError("expected a path or URL but the column holds binary data")
        return _without_bom(text)
    raise ImageError(f"expected text, got {type(value).__name__}")


def _decode_base64(value: Any, max_bytes: int) -> bytes:
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


def _decode_hex(value: Any, config: LoaderConfig) -> bytes:
    text = _as_text(value)
    compact = re.sub(r"\s+", "", text)
    for prefix in ("\\x", "0x"):
        compact = compact.removeprefix(prefix)
    if len(compact) // 2 > config.max_bytes:
        raise ImageError(
            f"hex photo decodes to {len(compact) // 2} bytes, "
            f"over the {config.max_bytes} byte limit"
        )
    try:
        data = bytes.fromhex(compact)
    except ValueError as exc:
        raise ImageError(f"hexadecimal text cannot be decoded: {exc}") from exc
    if image_format(data[:SIGNATURE_BYTES]) is None:
        where = (
            "nor names a file under the photo root"
            if config.photo_root is not None
            else "and no photo root (LABELER_PHOTO_ROOT) is set to read it as a file name"
        )
        raise ImageError(
            f"the column holds hexadecimal text that does not decode to an image "
            f"({sniff(data)}) {where}"
        )
    return data


# --- files ------------------------------------------------------------------------------------


def _refuse_text(text: str) -> None:
    """A path or URL column that holds a whole document (an error page, JSON) says so."""
    what = None
    if text.startswith("<"):
        what = sniff(text.encode("utf-8", "replace"))
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
        if not re.search(r"[/\\.]", text):  # no folder, no extension: say what it is
            raise ImageError(
                f"the column holds text ({text[:40]!r}) that is not an image URL, base64 or hex, "
                "and no photo root (LABELER_PHOTO_ROOT) is set to read it as a file name"
            )
        raise ImageError("the photo is a file path but no photo root (LABELER_PHOTO_ROOT) is set")
    if "\x00" in text:
        raise ImageError("photo path contains a NUL byte")
    if Path(text).is_absolute():
        raise ImageError("photo path is absolute; paths must be relative to the photo root")
    fd = open_under_root(config.photo_root, text)
    try:
        return _read_regular(fd, config.max_bytes, repr(text[:200]))
    finally:
        os.close(fd)


def _exists_under(text: str, config: LoaderConfig) -> bool:
    if (
        config.photo_root is None
        or len(text) > _PATH_PROBE_CHARS
        or "\x00" in text
        or "\n" in text
        or Path(text).is_absolute()
    ):
        return False
    try:
        os.close(open_under_root(config.photo_root, text))
    except ImageError:
        return False
    return True


_O_PATH = getattr(os, "O_PATH", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# O_PATH opens without side effects (a device, a FIFO); elsewhere O_NONBLOCK keeps a FIFO
# from blocking the open.
_WALK_FLAGS = (_O_PATH or (os.O_RDONLY | _O_NONBLOCK)) | _O_NOFOLLOW | _O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC


def _path_hint(text: str) -> str:
    """What a path that was never going to be found under the root looks like."""
    if text.lower().startswith("file:"):
        return " (a file: URL; store the path relative to LABELER_PHOTO_ROOT)"
    if re.match(r"[A-Za-z]:[\\/]", text) or "\\" in text:
        return " (a Windows path; store it relative to LABELER_PHOTO_ROOT, with / between folders)"
    return ""


def open_under_root(root: Path, relative: str) -> int:
    """Open the regular file ``relative`` names under ``root``; return a read-only fd.

    Each component is opened relative to the directory already opened, without following
    links; a symlink is read and expanded here, and may lead anywhere inside the root (an
    absolute target must start with the root) but never out of it. Because every step works on
    opened directories, swapping a checked directory for a link cannot redirect the open.
    """
    shown = repr(relative[:200])
    roots = {os.path.normpath(os.path.abspath(root)), os.path.realpath(root)}
    try:
        root_fd = os.open(root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"the photo root cannot be opened: {exc.strerror}") from exc
    dirs = [root_fd]
    pending = list(reversed(relative.split("/")))
    links = 0
    try:
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if len(dirs) == 1:
                    raise ImageError("photo path leads outside the photo root")
                os.close(dirs.pop())
                continue
            more = any(part not in ("", ".") for part in pending)
            target = _link_target(name, dirs[-1])
            if target is not None:
                links += 1
                if links > _MAX_SYMLINKS:
                    raise ImageError(f"photo path {shown} cannot be resolved (symlink loop)")
                if target.startswith("/"):
                    target = _inside(target, roots)
                    while len(dirs) > 1:
                        os.close(dirs.pop())
                pending.extend(reversed(target.split("/")))
                continue
            fd = os.open(name, _WALK_FLAGS, dir_fd=dirs[-1])
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode) and more:
                dirs.append(fd)
                continue
            os.close(fd)
            if more:  # a file used as a folder
                raise ImageError(f"photo file {shown} does not exist under the photo root")
            if not stat.S_ISREG(info.st_mode):
                raise ImageError(f"photo path {shown} is not a regular file")
            read_fd = os.open(name, _READ_FLAGS, dir_fd=dirs[-1])
            opened = os.fstat(read_fd)
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                os.close(read_fd)
                raise ImageError(f"photo file {shown} changed while it was being opened")
            return read_fd
        raise ImageError(f"photo path {shown} is not a regular file")
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ImageError(
            f"photo file {shown} does not exist under the photo root{_path_hint(relative)}"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component became a link after it was checked
            raise ImageError(f"photo file {shown} changed while it was being opened") from exc
        raise ImageError(f"photo file {shown} cannot be read: {exc.strerror}") from exc
    finally:
        for fd in dirs:
            os.close(fd)


def _link_target(name: str, dir_fd: int) -> str | None:
    """The target of ``name`` in ``dir_fd`` if it is a symlink, else None."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
            return None  # not a link (or missing: the open says so)
        raise


def _inside(target: str, roots: set[str]) -> str:
    """An absolute link target as a path relative to the photo root, if it is inside."""
    for root in roots:
        if target == root or target.startswith(root.rstrip("/") + "/"):
            return target[len(root) :]
    raise ImageError("photo path leads outside the photo root")


def _read_regular(fd: int, max_bytes: int, shown: str) -> bytes:
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"photo path {shown} is not a regular file")
        if info.st_size > max_bytes:
            raise ImageError(f"photo file is {info.st_size} bytes, over the {max_bytes} byte limit")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"photo file {shown} cannot be read: {exc.strerror}") from exc
    if len(data) > max_bytes:
        raise ImageError(f"photo file is over the {max_bytes} byte limit")
    return data


_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_photo_file(path: str | Path, max_bytes: int) -> bytes:
    """Read a photo file named on the command line: regular files only, at most ``max_bytes``.

    The type is checked on a handle that cannot block or trigger a device before reading, so
    a FIFO or a device is refused instead of hanging or reading without end.
    """
    try:
        probe = os.open(path, (_O_PATH or (os.O_RDONLY | _O_NONBLOCK)) | _O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"cannot open: {exc.strerror}") from exc
    try:
        info = os.fstat(probe)
    finally:
        os.close(probe)
    for test, what in _FILE_TYPES:
        if test(info.st_mode):
            raise ImageError(f"not a regular file ({what})")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError("not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"cannot open: {exc.strerror}") from exc
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise ImageError("the file changed while it was being opened")
        return _read_regular(fd, max_bytes, repr(str(path)[:200]))
    finally:
        os.close(fd)


# --- URLs -------------------------------------------------------------------------------------


class _Deadline:
    """The one time limit of a fetch: each network wait at most ``step`` seconds, all of them
    (connecting, TLS, status line, headers, body, redirects) until ``ends``."""

    def __init__(
        self, step: float, cancel: Callable[[], bool] | None, clock: Callable[[], float]
    ) -> None:
        self.step, self.cancel, self.clock = step, cancel, clock
        self.total = 2 * step
        self.ends = clock() + self.total

    def expired(self) -> ImageError:
        return ImageError(f"photo URL did not finish downloading within {self.total:g} s")

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("photo download stopped on request")

    def check(self) -> float:
        """Seconds left (never more than one step); raises once the fetch must stop."""
        self.check_cancel()
        left = self.ends - self.clock()
        if left <= 0:
            raise self.expired()
        return min(self.step, left)

    def wait_until(self, ends: float, attempt: Callable[[float], bool]) -> bool:
        """Call ``attempt(seconds)`` (a wait of at most that long that says whether it is done)
        in short slices until it is done (True) or ``ends`` or the deadline passes (False), so
        that a stop request is noticed within one slice."""
        ends = min(ends, self.ends)
        while True:
            self.check_cancel()
            left = ends - self.clock()
            if left <= 0:
                return False
            if attempt(max(0.001, min(left, _POLL_SECONDS))):
                return True

    def recv_into(self, sock: socket.socket, buffer: Any) -> int:
        started = self.clock()
        while True:
            left = self.check()
            waited = self.clock() - started
            if waited >= self.step:
                raise TimeoutError("timed out")
            sock.settimeout(max(0.001, min(left, self.step - waited, _POLL_SECONDS)))
            try:
                return sock.recv_into(buffer)
            except TimeoutError:
                continue


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        super().__init__()
        self._sock, self._deadline = sock, deadline
        # Holds the socket open while the response is read, as socket.makefile does.
        self._ref = sock.makefile("rb", buffering=0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._deadline.recv_into(self._sock, buffer)

    def close(self) -> None:
        if not self.closed:
            self._ref.close()
        super().close()


class _DeadlineSocket:
    """A connected socket whose every read and write counts against the fetch's deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock, self._deadline = sock, deadline

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._sock.settimeout(self._deadline.check())
        self._sock.sendall(data, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _GuardedHTTPConnection(http.client.HTTPConnection):
    """Connects within the fetch's deadline: name lookup, TCP connect and a proxy's tunnel each
    wait at most one step, and all of them notice a stop request within a slice."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        self.sock = _DeadlineSocket(self._open(), self._deadline)

    def _open(self) -> socket.socket:
        """What ``HTTPConnection.connect`` does, with every wait inside the deadline."""
        source = getattr(self, "source_address", None)  # not in typeshed's stub
        raw = _connect(self.host, self.port, self._deadline, source)
        self.sock = raw  # from here on close() closes it, whatever fails next
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            if exc.errno != errno.ENOPROTOOPT:
                raise
        if getattr(self, "_tunnel_host", None):
            # An https URL through a proxy: its answer to CONNECT is read within the deadline.
            self.sock = _DeadlineSocket(raw, self._deadline)
            self._tunnel()  # type: ignore[attr-defined]
            self.sock = raw
        return raw


class _GuardedHTTPSConnection(_GuardedHTTPConnection, http.client.HTTPSConnection):
    def connect(self) -> None:
        raw = self._open()
        context: ssl.SSLContext = self._context  # type: ignore[attr-defined]
        server_hostname = getattr(self, "_tunnel_host", None) or self.host
        tls = context.wrap_socket(
            raw, server_hostname=server_hostname, do_handshake_on_connect=False
        )
        self.sock = tls
        _handshake(tls, self._deadline)
        self.sock = _DeadlineSocket(tls, self._deadline)


def _connect(
    host: str, port: int, deadline: _Deadline, source_address: tuple[str, int] | None
) -> socket.socket:
    """``socket.create_connection`` within the deadline: each address in turn, as it does."""
    errors: list[OSError] = []
    for family, kind, proto, _, address in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            if source_address:
                sock.bind(source_address)
            _connect_one(sock, address, deadline)
        except OSError as exc:  # refused, unreachable or timed out: try the next address
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        sock.settimeout(deadline.check())
        return sock
    if errors:
        raise errors[0]
    raise OSError(f"host {host} has no address")


def _connect_one(sock: socket.socket, address: Any, deadline: _Deadline) -> None:
    """A non-blocking connect, waited for in slices (a blocking one cannot be interrupted)."""
    ends = deadline.clock() + deadline.check()
    sock.setblocking(False)
    code = sock.connect_ex(address)
    if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
        raise OSError(code, os.strerror(code))
    if code != 0:
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_WRITE)
            if not deadline.wait_until(ends, lambda seconds: bool(selector.select(seconds))):
                raise TimeoutError("timed out")
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, os.strerror(code))


def _handshake(tls: ssl.SSLSocket, deadline: _Deadline) -> None:
    """The TLS handshake in slices; OpenSSL resumes it where a timed-out slice left it."""

    def attempt(seconds: float) -> bool:
        tls.settimeout(seconds)
        try:
            tls.do_handshake()
        except TimeoutError:
            return False
        return True

    if not deadline.wait_until(deadline.clock() + deadline.check(), attempt):
        raise TimeoutError("TLS handshake timed out")


class _Lookup:
    """One ``getaddrinfo`` on a daemon thread, which may outlive the fetch if the resolver hangs."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.done = threading.Event()
        self.addresses: list[Any] = []
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.addresses = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)
        except Exception as exc:  # raised again in the fetch (a bad IDNA name too)
            self.error = exc
        finally:
            _RESOLVER_SLOTS.release()
            self.done.set()


def _resolve(host: str, port: int, deadline: _Deadline) -> list[Any]:
    """The addresses of ``host``, looked up within the deadline (one step at most).

    The allow-list was checked on the URL's host name before; this only finds where it is.
    """
    if _is_ip_address(host):  # no lookup: answered at once, without the resolver
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    limit = deadline.check()
    ends = deadline.clock() + limit
    if not deadline.wait_until(ends, lambda seconds: _RESOLVER_SLOTS.acquire(timeout=seconds)):
        raise _unresolved(host, limit, " (earlier lookups are still waiting for the resolver)")
    lookup = _Lookup(host, port)
    try:
        threading.Thread(target=lookup.run, name=f"resolve {host}", daemon=True).start()
    except BaseException:
        _RESOLVER_SLOTS.release()
        raise
    if not deadline.wait_until(ends, lookup.done.wait):
        raise _unresolved(host, limit)
    if lookup.error is not None:
        raise lookup.error
    return lookup.addresses


def _unresolved(host: str, limit: float, why: str = "") -> ImageError:
    return ImageError(f"could not resolve host {host} within {round(limit, 2):g} s{why}")


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(_GuardedHTTPConnection, deadline=self._deadline)
        return self.do_open(connection, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(_GuardedHTTPSConnection, deadline=self._deadline)
        return self.do_open(connection, req, context=getattr(self, "_context", None))


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
    # Fully qualified ("photos.example.org.") or not, it is one name: matched without the dot.
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise ImageError("photo URL has no host")
    if host not in config.allowed_hosts:
        raise ImageError(
            f"photo URL host {host!r} is not in the allow-list (LABELER_URL_ALLOWED_HOSTS)"
        )


def _fetch_url(
    url: str,
    config: LoaderConfig,
    cancel: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> bytes:
    _check_url(url, config)
    deadline = _Deadline(config.url_timeout, cancel, clock)
    opener = urllib.request.build_opener(
        _AllowListRedirects(config), _GuardedHTTPHandler(deadline), _GuardedHTTPSHandler(deadline)
    )
    request = urllib.request.Request(url, headers={"User-Agent": "labeler/0.1"})  # noqa: S310
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
                chunk = read(_READ_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > config.max_bytes:
                    raise ImageError(
                        f"photo URL serves more than the {config.max_bytes} byte limit"
                    )
                chunks.append(chunk)
    except (ImageError, Cancelled):
        raise
    except urllib.error.HTTPError as exc:
        exc.close()
        raise ImageError(f"photo URL answered HTTP {exc.code} {exc.reason}".rstrip()) from exc
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (ImageError, Cancelled)):
            raise reason from exc
        if isinstance(reason, TimeoutError):
            if clock() >= deadline.ends:
                raise deadline.expired() from exc
            raise ImageError(
                f"photo URL timed out (no answer within {config.url_timeout:g} s)"
            ) from exc
        if isinstance(exc, http.client.HTTPException) and not isinstance(exc, OSError):
            raise ImageError(
                f"photo URL sent a malformed HTTP response ({type(exc).__name__})"
            ) from exc
        raise ImageError(f"photo URL cannot be fetched: {reason}") from exc
    return b"".join(chunks)
