"""Whether a process is still running, and waiting (with a deadline) for it to go or for a condition to hold."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def alive(pid: int) -> bool:
    """Running: a zombie (exited, waiting for its parent's reaping) or a dying process is not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(condition: Callable[[], object], within: float) -> bool:
    """Whether `condition()` became true within `within` seconds (polled every 50 ms)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def gone(pid: int, within: float = 10.0) -> bool:
    """Whether process `pid` stopped running within `within` seconds."""
    return wait_until(lambda: not alive(pid), within)
