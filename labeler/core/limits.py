"""Default limits on photos, written once.

``Settings`` takes its defaults from here, and so do the photo layer's own config objects, so
``labeler.photos`` never imports the settings and a changed default cannot drift between them.
"""

from __future__ import annotations

URL_TIMEOUT_SECONDS = 10.0
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000
MAX_JPEG_SCANS = 100
DECODE_SECONDS = 30.0
