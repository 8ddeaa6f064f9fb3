"""Compatibility module: photo handling now lives in :mod:`labeler.fetching` (a source value
to encoded bytes) and :mod:`labeler.decoding` (bytes to an upright RGB array).

Import from those modules in new code; these names stay until every caller has moved.
"""

from __future__ import annotations

from labeler.decoding import (
    MAX_JPEG_SCANS,
    Cancelled,
    ImageError,
    decode_image,
    image_format,
    jpeg_scan_count,
    sniff,
)
from labeler.fetching import (
    LoaderConfig,
    detect_kind,
    load_bytes,
    load_image,
    open_under_root,
    read_photo_file,
    reference_of,
)

__all__ = [
    "MAX_JPEG_SCANS",
    "Cancelled",
    "ImageError",
    "LoaderConfig",
    "decode_image",
    "detect_kind",
    "image_format",
    "jpeg_scan_count",
    "load_bytes",
    "load_image",
    "open_under_root",
    "read_photo_file",
    "reference_of",
    "sniff",
]
