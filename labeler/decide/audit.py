"""Audit sampling: which confident results go to staff anyway, so that their decisions measure
the precision of the auto-labels on this shelter's own photos. Pure functions.

The draw is a hash of (model version, photo id) rather than a random number generator:

* It is independent of the photo's content and of the model's answer, which is all an unbiased
  sample needs: an audit row is as likely to be right or wrong as any other auto-label.
* It is reproducible. A batch that is retried after a crash, a second worker, or a re-run of
  the same model makes the same choice for the same photo, so audits cannot pile up (or be
  dodged) by retries, and a test needs no seeded generator.
* A new model version draws a fresh, independent sample, because its errors are new.
"""

from __future__ import annotations

import hashlib

DEFAULT_AUDIT_SHARE = 0.02

_SCALE = float(1 << 64)


def audit_draw(photo_id: str, model_version: str) -> float:
    """A uniform number in [0, 1), fixed for one photo and one model version."""
    digest = hashlib.sha256(f"{model_version}\x00{photo_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def should_audit(draw: float, share: float) -> bool:
    """True for a share ``share`` of uniform draws; ``share`` 0 disables auditing."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"audit share must be between 0 and 1, not {share}")
    return draw < share


def is_audit(photo_id: str, model_version: str, share: float) -> bool:
    """Whether this photo's result, if confident, goes to staff as an audit."""
    return share > 0.0 and should_audit(audit_draw(photo_id, model_version), share)
