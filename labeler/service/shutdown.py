"""Turning stop signals into a stop request that work in progress honours between batches."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from labeler.core.exit_codes import EXIT_INTERRUPTED, EXIT_OK

log = logging.getLogger("labeler")

# SIGHUP (the terminal or SSH session went away) is handled like SIGTERM: left at its default it
# would kill the pass mid-batch and leave its run `running` until the next pass abandons it.
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)


class StopOnSignals:
    """While active, SIGTERM, SIGINT and SIGHUP set :attr:`stop` (and call ``on_stop``) instead
    of killing the process. Use as a context manager from the main thread."""

    def __init__(self, on_stop: Callable[[], None] | None = None, what: str = "") -> None:
        self.stop = threading.Event()
        self.received: signal.Signals | None = None
        self._on_stop = on_stop
        self._what = what or "finishing the current batch, releasing claims, then exiting"
        self._previous: dict[signal.Signals, Any] = {}

    def handle(self, signum: int, _frame: FrameType | None = None) -> None:
        sig = signal.Signals(signum)
        if self.received is None:
            self.received = sig
        log.info("%s received: %s", sig.name, self._what)
        self.stop.set()
        if self._on_stop is not None:
            self._on_stop()

    def exit_code(self) -> int:
        """What the process should exit with once the work has stopped."""
        return EXIT_INTERRUPTED if self.received == signal.SIGINT else EXIT_OK

    def __enter__(self) -> StopOnSignals:
        self._previous = {sig: signal.signal(sig, self.handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
