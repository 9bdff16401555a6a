"""Stopping a run from outside: SIGTERM handled like SIGINT."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like SIGINT's KeyboardInterrupt, so that the run stops
    the same way: the manifest written, the lease released, the summary printed."""


@dataclass
class Stop:
    """The signal that stopped the run (None: none did). Libraries on the way (Ray's wait) may
    re-raise the interrupt as a plain KeyboardInterrupt, so the signal is recorded here."""

    signum: int | None = None

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell reports it: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + (self.signum or signal.SIGINT)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[Stop]:
    """While inside, SIGTERM raises ``Terminated`` in the main thread (Ray's own handler, or the
    default, would end the process without the summary, the manifest or the lease's release);
    the ``Stop`` yielded says which signal came."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # only the main thread may set a handler; a job run from a thread keeps the default
        return

    def on_term(signum: int, frame: Any) -> None:
        stop.signum = signum
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)
