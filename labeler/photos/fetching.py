"""Fetching: from whatever the source column holds to the photo's encoded bytes, and on to its
decoded RGB array.

The entry points callers use: :func:`load_photo` (and :func:`load_image`) with a
:class:`LoaderConfig`, :func:`load_bytes`, :func:`detect_kind`, :func:`fingerprint` and
:func:`reference_of`. How a value is told and its text forms decoded lives in
:mod:`labeler.photos.stored`, reading files under the photo root in :mod:`labeler.photos.files`,
fetching URLs in :mod:`labeler.photos.urls`. Every failure is an :class:`ImageError` whose
message is the row's recorded reason; nothing here touches the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labeler.core import limits
from labeler.core.textsafe import storable_text
from labeler.photos.decoding import DEFAULT_LIMITS, DecodeLimits, ImageError, decode_image
from labeler.photos.files import read_path
from labeler.photos.stored import as_text, classify, decode_base64, decode_hex
from labeler.photos.urls import fetch_url


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
        return storable_text(as_text(value), 1024)
    except ImageError:
        return None


def detect_kind(value: Any, config: LoaderConfig | None = None) -> str:
    """What a source value holds: ``bytes``, ``base64``, ``hex``, ``url`` or ``path`` (the
    order of the tests is :func:`labeler.photos.stored.classify`'s)."""
    return classify(value, None if config is None else config.photo_root)[0]


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
        kind, value = classify(value, config.photo_root)
    else:
        kind = config.kind
    if kind == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ImageError("image_kind is bytes but the column holds text")
        data = bytes(value)
    elif kind == "base64":
        data = decode_base64(value, config.max_bytes)
    elif kind == "hex":
        data = decode_hex(value, config.max_bytes, config.photo_root)
    elif kind == "url":
        data = fetch_url(
            as_text(value),
            allowed_hosts=config.allowed_hosts,
            timeout=config.url_timeout,
            max_bytes=config.max_bytes,
            cancel=cancel,
        )
    elif kind == "path":
        data = read_path(as_text(value), config.photo_root, config.max_bytes)
    else:
        raise ImageError(f"unknown image kind {kind!r}")
    if len(data) > config.max_bytes:
        raise ImageError(f"photo is {len(data)} bytes, over the {config.max_bytes} byte limit")
    if not data:
        raise ImageError(f"the {kind} photo is empty")
    return data, kind
