"""labeler.photos.fetching against servers that misbehave before the body (one runs on 127.0.0.1 in
the test), and labeler.core.textsafe for the text they send back."""

from __future__ import annotations

import io
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from labeler.core.textsafe import storable_text
from labeler.photos.decoding import Cancelled, ImageError
from labeler.photos.fetching import LoaderConfig, load_bytes, load_image
from tests.helpers import serving_in_thread, without_proxies

URL_TIMEOUT = 0.5  # each network wait; the whole fetch gets twice this
PAUSE = URL_TIMEOUT / 3  # under the per-wait timeout, so only the total deadline can cut
LIMIT = URL_TIMEOUT * 4  # generous bound on how long a refused fetch may take here


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), (255, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stopping = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(socketserver.StreamRequestHandler):
    """Speaks just enough HTTP to misbehave: reads the request head, then acts on the path."""

    server: _Server

    def _trickle(self, data: bytes) -> bool:
        for i in range(len(data)):
            if self.server.stopping.wait(PAUSE):
                return False
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
        return True

    def handle(self) -> None:
        with suppress(OSError):
            request_line = self.rfile.readline(8192).decode("latin-1")
            while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                pass
            path = request_line.split(" ")[1] if " " in request_line else "/"
            self._route(path)

    def _route(self, path: str) -> None:
        stopping = self.server.stopping
        if path == "/ok":
            body = png()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        elif path == "/trickle-status":
            while self._trickle(b"HTTP/1.1 200 OK\r\n"):
                pass
        elif path == "/trickle-headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            while self._trickle(b"X-Slow: yes\r\n"):
                pass
        elif path == "/continue-forever":
            while not stopping.wait(PAUSE):
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.wfile.flush()
        elif path == "/silent":
            stopping.wait(30)
        elif path == "/nul-reason":
            self.wfile.write(b"HTTP/1.1 404 Not\x00Found\x7f\r\nContent-Length: 0\r\n\r\n")
        elif path == "/long-reason":
            reason = b"Gone " + b"\xe2\x80\x94" * 5000  # long, and not ASCII
            self.wfile.write(b"HTTP/1.1 410 " + reason + b"\r\nContent-Length: 0\r\n\r\n")


@contextmanager
def serving() -> Iterator[_Server]:
    with serving_in_thread(_Server()) as server:
        yield server


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    without_proxies(monkeypatch)
    with serving() as running:
        yield running


def config(timeout: float = URL_TIMEOUT) -> LoaderConfig:
    return LoaderConfig(allowed_hosts=frozenset({"127.0.0.1"}), url_timeout=timeout)


def timed_error(fn: Callable[[], Any]) -> tuple[str, float]:
    t0 = time.monotonic()
    with pytest.raises(ImageError) as info:
        fn()
    return str(info.value), time.monotonic() - t0


def test_a_well_behaved_server_still_works(server: _Server) -> None:
    out, kind = load_image(f"http://127.0.0.1:{server.port}/ok", config())
    assert kind == "url" and out.shape == (4, 6, 3)
    assert (out == (255, 0, 0)).all()


@pytest.mark.parametrize("path", ["/trickle-status", "/trickle-headers", "/continue-forever"])
def test_deadline_covers_status_line_and_headers(server: _Server, path: str) -> None:
    url = f"http://127.0.0.1:{server.port}{path}"
    message, took = timed_error(lambda: load_bytes(url, config()))
    assert message == f"photo URL did not finish downloading within {2 * URL_TIMEOUT:g} s"
    assert took < LIMIT


def test_silent_server_times_out_per_wait(server: _Server) -> None:
    message, took = timed_error(
        lambda: load_bytes(f"http://127.0.0.1:{server.port}/silent", config())
    )
    assert message == f"photo URL timed out (no answer within {URL_TIMEOUT:g} s)"
    assert took < LIMIT


def test_stop_request_ends_a_fetch_long_before_its_deadline(server: _Server) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(Cancelled):
            load_bytes(
                f"http://127.0.0.1:{server.port}/continue-forever",
                config(timeout=30),
                cancel=stop.is_set,
            )
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 5  # the deadline alone would be 60 s


def test_reason_phrase_with_nul_and_control_bytes_is_storable(server: _Server) -> None:
    message, _ = timed_error(
        lambda: load_bytes(f"http://127.0.0.1:{server.port}/nul-reason", config())
    )
    assert message == "photo URL answered HTTP 404 Not Found"


def test_long_reason_phrase_is_capped(server: _Server) -> None:
    message, _ = timed_error(
        lambda: load_bytes(f"http://127.0.0.1:{server.port}/long-reason", config())
    )
    assert message.startswith("photo URL answered HTTP 410 Gone")
    assert len(message) <= 1000 and message.endswith("...")
    message.encode("utf-8")  # valid UTF-8: no lone surrogates


def test_server_that_never_accepts_is_cut() -> None:
    # A listening socket that never accepts: the connection completes in the kernel's
    # backlog and the request is sent, but no answer ever comes.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        message, took = timed_error(lambda: load_bytes(f"http://127.0.0.1:{port}/", config()))
    assert "photo URL" in message and ("timed out" in message or "did not finish" in message)
    assert took < LIMIT


# --- storable text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain reason", "plain reason"),
        ("Not\x00Found", "Not Found"),
        ("a\r\nb\tc", "a b c"),
        ("bell\x07\x1b[31mred", "bell [31mred"),
        ("c1\x85\x9bcontrol", "c1 control"),
        ("line\u2028sep", "line sep"),
        ("lone \udc80 surrogate", "lone \ufffd surrogate"),
        ("non\ufffecharacter\ufdd0", "non\ufffdcharacter\ufffd"),
        ("  padded\x00 ", "padded"),
        (b"bytes \xff\xfe here", "bytes \ufffd\ufffd here"),
        (b"nul\x00byte", "nul byte"),
        (404, "404"),
        ("éèà 日本 🐕", "éèà 日本 🐕"),
    ],
)
def test_storable_text(text: object, expected: str) -> None:
    assert storable_text(text, 100) == expected


def test_storable_text_caps_the_length() -> None:
    out = storable_text("x" * 5000, 50)
    assert len(out) == 50 and out.endswith("...")
    assert storable_text("y" * 50, 50) == "y" * 50


def test_storable_text_is_bounded_on_huge_input() -> None:
    out = storable_text("\x00" * 10_000_000 + "tail", 20)
    assert out == ""  # only control characters within what is kept


def test_storable_text_needs_room_for_the_ellipsis() -> None:
    with pytest.raises(ValueError, match="limit must be at least 4"):
        storable_text("abc", 3)


def test_image_errors_are_always_storable() -> None:
    assert str(ImageError("photo file 'a\x00b\nc' is odd")) == "photo file 'a b c' is odd"
    assert len(str(ImageError("z" * 5000))) == 1000


def test_hostile_reasons_are_storable_end_to_end(tmp_path: Path) -> None:
    # A file name with control characters and an undecodable byte, as the reason shows it.
    name = "dir\x1b/rex\x7f\udcff.png"
    with pytest.raises(ImageError) as info:
        load_bytes(name, LoaderConfig(photo_root=tmp_path))
    message = str(info.value)
    assert message.startswith("photo file ") and "does not exist" in message
    assert message.isprintable()
    message.encode("utf-8")


# --- name resolution, connecting and TLS within the deadline ---------------------------------

BOUND = 10.0  # generous limit on a fetch that must end early, so that a failure cannot hang


def bounded(fn: Callable[[], Any]) -> BaseException | None:
    """Run ``fn`` on a thread and return what it raised (None if nothing); fail if it is still
    running after BOUND seconds."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the test to check
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(BOUND)
    assert not thread.is_alive(), f"the fetch was still running after {BOUND:g} s"
    return raised[0] if raised else None


@contextmanager
def hanging_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """``socket.getaddrinfo`` that blocks until the test ends; yields the hosts looked up."""
    release = threading.Event()
    looked_up: list[str] = []

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(host)
        release.wait(60)
        raise socket.gaierror(socket.EAI_AGAIN, "the test resolver gave up")

    without_proxies(monkeypatch)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        yield looked_up
        assert not release.is_set()  # the lookups were still hanging when the fetch ended
    finally:
        release.set()


def named_host_config(host: str, timeout: float = URL_TIMEOUT) -> LoaderConfig:
    return LoaderConfig(allowed_hosts=frozenset({host}), url_timeout=timeout)


def stop_after(seconds: float) -> tuple[threading.Event, threading.Timer]:
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    return stop, timer


def test_hanging_resolver_fails_the_photo_with_a_clear_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with hanging_resolver(monkeypatch) as looked_up:
        raised = bounded(
            lambda: load_bytes("http://photos.example/rex.jpg", named_host_config("photos.example"))
        )
    assert isinstance(raised, ImageError)
    assert str(raised) == f"could not resolve host photos.example within {URL_TIMEOUT:g} s"
    assert looked_up == ["photos.example"]


def test_resolver_errors_are_still_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    without_proxies(monkeypatch)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(ImageError) as info:
        load_bytes("http://nowhere.example/rex.jpg", named_host_config("nowhere.example"))
    assert str(info.value) == "photo URL cannot be fetched: [Errno -2] Name or service not known"


def test_host_outside_the_allow_list_is_refused_before_any_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with (
        hanging_resolver(monkeypatch) as looked_up,
        pytest.raises(ImageError, match="is not in the allow-list"),
    ):
        load_bytes("http://elsewhere.example/rex.jpg", named_host_config("photos.example"))
    assert looked_up == []


def test_stop_request_ends_a_hanging_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    with hanging_resolver(monkeypatch) as looked_up:
        stop, timer = stop_after(0.2)
        try:
            raised = bounded(  # the lookup alone could take 30 s, the deadline 60 s
                lambda: load_bytes(
                    "http://photos.example/rex.jpg",
                    named_host_config("photos.example", timeout=30),
                    cancel=stop.is_set,
                )
            )
        finally:
            timer.cancel()
    assert isinstance(raised, Cancelled)
    assert looked_up == ["photos.example"]


@contextmanager
def full_backlog() -> Iterator[int]:
    """A port whose listener never accepts and whose backlog is full: Linux drops new SYNs, so
    a connect to it stays pending (retrying) instead of completing or being refused."""
    import selectors

    with socket.socket() as listener, selectors.DefaultSelector() as selector:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers: list[socket.socket] = []
        try:
            for _ in range(8):
                filler = socket.socket()
                fillers.append(filler)
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                selector.register(filler, selectors.EVENT_WRITE)
                pending = not selector.select(0.3)
                selector.unregister(filler)
                if pending:
                    break
            else:
                pytest.fail("could not fill the listener's backlog")
            yield port
        finally:
            for filler in fillers:
                filler.close()


def test_stop_request_ends_a_pending_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    without_proxies(monkeypatch)
    with full_backlog() as port:
        stop, timer = stop_after(0.2)
        try:
            raised = bounded(  # the connect alone could take 30 s, the deadline 60 s
                lambda: load_bytes(
                    f"http://127.0.0.1:{port}/", config(timeout=30), cancel=stop.is_set
                )
            )
        finally:
            timer.cancel()
    assert isinstance(raised, Cancelled)


def test_pending_connect_times_out_per_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    without_proxies(monkeypatch)
    with full_backlog() as port:
        raised = bounded(lambda: load_bytes(f"http://127.0.0.1:{port}/", config()))
    assert isinstance(raised, ImageError)
    assert str(raised) == f"photo URL timed out (no answer within {URL_TIMEOUT:g} s)"


def test_stop_request_ends_a_tls_handshake(monkeypatch: pytest.MonkeyPatch) -> None:
    # The connection completes in the kernel's backlog, but no server hello ever comes.
    without_proxies(monkeypatch)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        stop, timer = stop_after(0.2)
        try:
            raised = bounded(
                lambda: load_bytes(
                    f"https://127.0.0.1:{port}/", config(timeout=30), cancel=stop.is_set
                )
            )
        finally:
            timer.cancel()
    assert isinstance(raised, Cancelled)


def test_a_host_name_is_resolved_and_fetched(server: _Server) -> None:
    # The real resolver: localhost may come first as ::1, where nothing listens, and then as
    # 127.0.0.1, which must be tried next.
    out, kind = load_image(f"http://localhost:{server.port}/ok", named_host_config("localhost"))
    assert kind == "url" and out.shape == (4, 6, 3)


class _TLSServer(_Server):
    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self.context = context

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        return self.context.wrap_socket(sock, server_side=True), address


@pytest.fixture
def tls_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[_Server, ssl.SSLContext]]:
    """A TLS server on 127.0.0.1 with a certificate for that address, and a client context
    that trusts it (used wherever http.client makes its default context)."""
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed to make the test certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    request += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [openssl, *request, *files],
        check=True,
        capture_output=True,
        timeout=60,
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(ssl, "_create_default_https_context", lambda: client_context)
    without_proxies(monkeypatch)
    with serving_in_thread(_TLSServer(server_context)) as running:
        yield running, client_context


def test_https_fetch_works(tls_server: tuple[_Server, ssl.SSLContext]) -> None:
    server, _ = tls_server
    out, kind = load_image(f"https://127.0.0.1:{server.port}/ok", config())
    assert kind == "url" and (out == (255, 0, 0)).all()


def test_https_certificate_must_name_the_host(tls_server: tuple[_Server, ssl.SSLContext]) -> None:
    server, _ = tls_server  # the certificate names 127.0.0.1, not localhost
    with pytest.raises(ImageError) as info:
        load_bytes(f"https://localhost:{server.port}/ok", named_host_config("localhost"))
    assert "certificate verify failed" in str(info.value)
