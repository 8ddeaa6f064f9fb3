"""Decoding in a child process that can be stopped, for decoders that cannot be interrupted.

``labeler.photos.decoding`` stops streaming decoders (JPEG, PNG, GIF, BMP) between input chunks. The
WebP, HEIF/AVIF and libtiff decoders take the whole file and decode it in one C call, so neither
the time budget nor a stop request can reach them in-process: a hostile TIFF of JPEG tiles with
thousands of scans would run for minutes. Those formats are decoded here, in a child process
the caller kills when the budget runs out or a stop is requested. A decoder that crashes
(segfault, out of memory) takes only the child with it; the next photo gets a fresh one.

Children are started with "spawn": the parent runs TensorFlow/ONNX Runtime threads, which make
a forked child unsafe. Each child is started on first use and kept for the next photos. As
with any spawned child, a script that decodes such photos needs the ``if __name__ ==
"__main__":`` guard (the child imports the main module; ``python -m`` packages and the
``labeler`` command are fine).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any, Protocol

import numpy as np

from labeler.photos.decoding import Cancelled, DecodeLimits, ImageError, decode_image

# How often a waiting parent looks at the stop request and the clock.
_POLL_SECONDS = 0.05
# Starting a child (a fresh interpreter importing numpy and Pillow) is not the photo's time.
_START_SECONDS = 120.0
_READY = "ready"


class ChildDecode(Protocol):
    """What a child runs per photo: a top-level (picklable) function, no budget of its own."""

    def __call__(
        self, data: bytes, limits: DecodeLimits, target_size: tuple[int, int] | None
    ) -> np.ndarray: ...


def decode_in_child(
    data: bytes, limits: DecodeLimits, target_size: tuple[int, int] | None
) -> np.ndarray:
    """The child's decode: ``decode_image`` in-process; the parent enforces time and stops."""
    return decode_image(
        data, replace(limits, decode_seconds=None), target_size=target_size, isolate=False
    )


def _serve(conn: Connection, decode: ChildDecode) -> None:
    """The child's loop: one request in, one ``(ok, array or reason)`` out, until EOF."""
    # Ctrl-C and a closed terminal reach the whole process group; the parent handles them
    # (it stops its work, then this child). SIGTERM keeps its default: it ends the child.
    for name in ("SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    conn.send(_READY)
    while True:
        try:
            data, args = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or is gone
            return
        try:
            reply: tuple[bool, Any] = (True, decode(data, *args))
        except ImageError as exc:
            reply = (False, str(exc))
        except Exception as exc:  # a custom decode; decode_image itself raises ImageError only
            reply = (False, f"the decoder failed: {type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


def _exit_with_parent(parent: int) -> None:
    """End this child once its parent is gone (killed outright, so no EOF is read while a
    long decode runs)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


class DecodeWorker:
    """One child process that decodes photos; a call that runs too long or is stopped kills it.

    Thread-safe: calls take turns (one photo at a time per child); see :class:`WorkerPool`
    for one child per concurrent caller.
    """

    def __init__(
        self, decode: ChildDecode = decode_in_child, start_seconds: float = _START_SECONDS
    ) -> None:
        self._decode = decode
        self._start_seconds = start_seconds
        self._lock = threading.Lock()
        self._process: SpawnProcess | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        """The running child's process id, None before the first photo or after a kill."""
        process = self._process
        try:
            return process.pid if process is not None and process.is_alive() else None
        except ValueError:  # closed by another thread meanwhile
            return None

    def decode(
        self,
        data: bytes,
        limits: DecodeLimits,
        *,
        target_size: tuple[int, int] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Decode ``data`` in the child; same arguments and errors as ``decode_image``."""
        while not self._lock.acquire(timeout=_POLL_SECONDS):
            if cancel is not None and cancel():  # waiting for a turn is not the photo's time
                raise Cancelled("decoding stopped on request")
        try:
            conn = self._request(data, (limits, target_size), cancel)
            return self._reply(conn, limits.decode_seconds, cancel)
        finally:
            self._lock.release()

    def close(self) -> None:
        """End the child (a decode running in another thread then fails)."""
        self._end(graceful=True)

    # -- the child's life ------------------------------------------------------------------

    def _request(
        self, data: bytes, args: tuple[Any, ...], cancel: Callable[[], bool] | None
    ) -> Connection:
        """Send one photo; a child that died between photos (not this photo's fault) is
        replaced once."""
        conn = self._ensure_started(cancel)
        if _sent(conn, (data, args)):
            return conn
        self._end(graceful=True)
        conn = self._ensure_started(cancel)
        if not _sent(conn, (data, args)):
            code = self._end(graceful=True)
            raise ImageError(f"the decoder crashed on this photo (exit code {code})")
        return conn

    def _ensure_started(self, cancel: Callable[[], bool] | None) -> Connection:
        if self._process is not None and self._conn is not None and self._process.is_alive():
            return self._conn
        self.close()
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_serve,
            args=(child_end, self._decode),
            name="labeler-decoder",
            daemon=True,  # killed when the parent exits normally; EOF ends it otherwise
        )
        try:
            process.start()
        except OSError as exc:
            parent_end.close()
            raise ImageError(f"could not start the decoder process: {exc}") from exc
        finally:
            child_end.close()  # only the child holds it now, so its death reads as EOF
        self._process, self._conn = process, parent_end
        self._wait_ready(parent_end, cancel)
        return parent_end

    def _wait_ready(self, conn: Connection, cancel: Callable[[], bool] | None) -> None:
        deadline = time.monotonic() + self._start_seconds
        while not conn.poll(_POLL_SECONDS):
            self._check_cancel(cancel)
            if time.monotonic() > deadline:
                self._end(graceful=False)
                raise ImageError(f"the decoder process did not start in {self._start_seconds:g} s")
        try:
            if conn.recv() == _READY:
                return
        except (EOFError, OSError):
            pass
        code = self._end(graceful=True)
        raise ImageError(f"the decoder process failed to start (exit code {code})")

    def _reply(
        self, conn: Connection, time_budget: float | None, cancel: Callable[[], bool] | None
    ) -> np.ndarray:
        deadline = None if time_budget is None else time.monotonic() + time_budget
        while not conn.poll(_POLL_SECONDS):  # true on a reply and on EOF (the child died)
            self._check_cancel(cancel)
            if deadline is not None and time.monotonic() > deadline:
                self._end(graceful=False)
                raise ImageError(f"photo took longer than {time_budget:g} s to decode")
        try:
            ok, value = conn.recv()
        except (EOFError, OSError):
            code = self._end(graceful=True)
            # A stop signal sent to the whole process group may end the child first.
            if cancel is not None and cancel():
                raise Cancelled("decoding stopped on request") from None
            raise ImageError(f"the decoder crashed on this photo (exit code {code})") from None
        if not ok:
            raise ImageError(value)
        return np.asarray(value)

    def _check_cancel(self, cancel: Callable[[], bool] | None) -> None:
        if cancel is not None and cancel():
            self._end(graceful=False)
            raise Cancelled("decoding stopped on request")

    def _end(self, graceful: bool) -> int | None:
        """Stop the child (the next photo starts a fresh one); returns its exit code.

        ``graceful``: an idle child is given a moment to exit on EOF (and a dead one to be
        reaped, so its exit code is known); a busy one is killed at once.
        """
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is None:
            return None
        if graceful:
            process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join(5.0)
        code = process.exitcode
        process.close()
        return code


def _sent(conn: Connection, message: object) -> bool:
    try:
        conn.send(message)
    except OSError:  # the child is gone (broken pipe)
        return False
    return True


class WorkerPool:
    """Child decoders shared by threads: each call takes an idle one or starts another.

    The number of children is the most calls ever made at once (the decode threads), so WebP
    photos decode as much in parallel as JPEGs do.
    """

    def __init__(self, decode: ChildDecode = decode_in_child) -> None:
        self._decode = decode
        self._lock = threading.Lock()
        self._idle: list[DecodeWorker] = []
        self._all: list[DecodeWorker] = []

    def decode(self, data: bytes, limits: DecodeLimits, **kwargs: Any) -> np.ndarray:
        """``DecodeWorker.decode`` on a worker no other thread is using."""
        with self._lock:
            if self._idle:
                worker = self._idle.pop()
            else:
                worker = DecodeWorker(self._decode)
                self._all.append(worker)
        try:
            return worker.decode(data, limits, **kwargs)
        finally:
            with self._lock:
                self._idle.append(worker)

    def close(self) -> None:
        with self._lock:
            workers = list(self._all)
        for worker in workers:
            worker.close()


_POOL = WorkerPool()
# Before multiprocessing's own exit handler (registered earlier, so run later).
atexit.register(_POOL.close)


def decode_isolated(
    data: bytes,
    limits: DecodeLimits,
    *,
    target_size: tuple[int, int] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Decode ``data`` in a child process that is killed at ``limits.decode_seconds`` or on
    ``cancel``.

    Raises :class:`ImageError` (the photo's reason, the budget, or a crash with the child's
    exit code) or :class:`Cancelled`.
    """
    return _POOL.decode(data, limits, target_size=target_size, cancel=cancel)
