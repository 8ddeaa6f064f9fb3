"""Photo URLs: the allow-list, redirects to allowed hosts only, the byte limit, and a reason for
every way a fetch fails.

Only http(s) URLs whose host is in the allow-list (LABELER_URL_ALLOWED_HOSTS) are fetched, and
at most 3 redirects, each checked before it is followed. The body is read in chunks and cut off
past ``max_bytes``; every network wait keeps to one deadline (:mod:`labeler.photos.network`).
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from labeler.photos.decoding import Cancelled, ImageError
from labeler.photos.network import Deadline, GuardedHTTPHandler, GuardedHTTPSHandler

_MAX_REDIRECTS = 3
_READ_CHUNK = 64 * 1024


class _AllowListRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, allowed_hosts: frozenset[str]) -> None:
        self.allowed_hosts = allowed_hosts
        self.count = 0

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.count += 1
        try:
            if self.count > _MAX_REDIRECTS:
                raise ImageError(f"photo URL redirects more than {_MAX_REDIRECTS} times")
            check_url(newurl, self.allowed_hosts)
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
                check_url(urllib.parse.urljoin(req.full_url, location.strip()), self.allowed_hosts)
            except ImageError:
                fp.close()
                raise
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def check_url(url: str, allowed_hosts: frozenset[str]) -> None:
    """Refuse a URL this labeler must not fetch, saying which rule it breaks."""
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
    if host not in allowed_hosts:
        raise ImageError(
            f"photo URL host {host!r} is not in the allow-list (LABELER_URL_ALLOWED_HOSTS)"
        )


def fetch_url(
    url: str,
    *,
    allowed_hosts: frozenset[str],
    timeout: float,
    max_bytes: int,
    cancel: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> bytes:
    """The body ``url`` serves: each network wait at most ``timeout`` seconds, the whole fetch
    at most twice that, and at most ``max_bytes``."""
    check_url(url, allowed_hosts)
    deadline = Deadline(timeout, cancel, clock)
    opener = urllib.request.build_opener(
        _AllowListRedirects(allowed_hosts),
        GuardedHTTPHandler(deadline),
        GuardedHTTPSHandler(deadline),
    )
    request = urllib.request.Request(url, headers={"User-Agent": "labeler/0.1"})  # noqa: S310
    chunks: list[bytes] = []
    total = 0
    try:
        with opener.open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ImageError(
                    f"photo URL serves {declared} bytes, over the {max_bytes} byte limit"
                )
            read = getattr(response, "read1", response.read)
            while True:
                chunk = read(_READ_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise ImageError(f"photo URL serves more than the {max_bytes} byte limit")
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
            raise ImageError(f"photo URL timed out (no answer within {timeout:g} s)") from exc
        if isinstance(exc, http.client.HTTPException) and not isinstance(exc, OSError):
            raise ImageError(
                f"photo URL sent a malformed HTTP response ({type(exc).__name__})"
            ) from exc
        raise ImageError(f"photo URL cannot be fetched: {reason}") from exc
    return b"".join(chunks)
