"""Every network wait of a photo fetch inside one deadline, and stoppable.

Resolving the host name, connecting, the TLS handshake (a proxy's tunnel too), the status line,
headers and body each wait at most one step and all of them together at most two, however
slowly a server trickles; each wait is cut into short slices so that a stop request is noticed
within a fraction of a second. :class:`GuardedHTTPHandler` and :class:`GuardedHTTPSHandler`
give urllib connections that keep to a :class:`Deadline`.
"""

from __future__ import annotations

import errno
import functools
import http.client
import io
import ipaddress
import os
import selectors
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

from labeler.photos.decoding import Cancelled, ImageError

# Every network wait (resolving, connecting, TLS, reading) wakes at least this often, to notice
# a stop request.
_POLL_SECONDS = 0.2
# Host name lookups running at once. A lookup cannot be interrupted, so one that hangs keeps its
# thread until the resolver gives up; this bounds how many such threads a broken resolver can
# leave behind. A fetch that finds every slot taken waits within its own deadline.
_RESOLVER_SLOTS = threading.BoundedSemaphore(8)


class Deadline:
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
    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
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

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
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

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
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
    host: str, port: int, deadline: Deadline, source_address: tuple[str, int] | None
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


def _connect_one(sock: socket.socket, address: Any, deadline: Deadline) -> None:
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


def _handshake(tls: ssl.SSLSocket, deadline: Deadline) -> None:
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


def _resolve(host: str, port: int, deadline: Deadline) -> list[Any]:
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


class GuardedHTTPHandler(urllib.request.HTTPHandler):
    """Opens http URLs on connections that keep to ``deadline``."""

    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(_GuardedHTTPConnection, deadline=self._deadline)
        return self.do_open(connection, req)


class GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    """Opens https URLs on connections that keep to ``deadline``, the handshake included."""

    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(_GuardedHTTPSConnection, deadline=self._deadline)
        return self.do_open(connection, req, context=getattr(self, "_context", None))
