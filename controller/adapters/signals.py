"""SIGTERM and SIGINT as a `threading.Event`, set without running any locking code inside a signal handler.

A handler that calls `Event.set()` can deadlock the process: Python runs handlers in the main thread between two
bytecodes, which may be inside `Event.wait()` while the main thread holds the event's own lock; `set()` then waits
for that lock forever. A process stuck that way ignores every later SIGTERM too, and only SIGKILL ends it (a mesh
router left serving after its supervisor died, a controller pod killed at the end of its grace period).

Here the Python handler does nothing. The interpreter's C-level handler writes the signal's number into a pipe
(`signal.set_wakeup_fd`) whatever thread the kernel picked, and a daemon thread reading that pipe sets the event.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _nothing(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the pipe carries the signal; replacing the default action keeps the process."""


def _relay(read_fd: int, wanted: frozenset[int], stop: threading.Event) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:  # the pipe was closed under us: the context is over
            return
        if not data:
            return
        if wanted.intersection(data):
            stop.set()


@contextmanager
def stop_on_signals(signals: Sequence[signal.Signals] = STOP_SIGNALS) -> Iterator[threading.Event]:
    """An event set when one of `signals` arrives; the previous handlers and wakeup fd come back on exit.

    Main thread only (as `signal.signal` itself)."""
    stop = threading.Event()
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # the C handler must never block on a full pipe
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {s: signal.signal(s, _nothing) for s in signals}
    relay = threading.Thread(target=_relay, args=(read_fd, frozenset(int(s) for s in signals), stop),
                             name="stop-on-signals", daemon=True)
    relay.start()
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(previous_fd, warn_on_full_buffer=False)
        os.close(write_fd)  # the relay reads end-of-file and returns
        relay.join(timeout=5)
        os.close(read_fd)
