"""The real-time slots of tests/conftest.py: a test takes one free slot; `realtime(alone=True)` waits for all."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

from tests.conftest import _take_all, _take_one


def test_one_slot_is_any_free_one_and_alone_waits_until_every_slot_is_free(tmp_path: Path) -> None:
    paths = [tmp_path / f"slot-{i}" for i in range(2)]
    mine = [open(p, "a") for p in paths]  # noqa: SIM115 - closed below
    # Another test's handles (flock locks are per open file).
    theirs = [open(p, "a") for p in paths]  # noqa: SIM115 - closed below
    try:
        fcntl.flock(theirs[0], fcntl.LOCK_EX | fcntl.LOCK_NB)  # another test holds slot 0
        assert _take_one(mine) is mine[1]
        fcntl.flock(mine[1], fcntl.LOCK_UN)
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (_take_all(mine), done.set()), daemon=True)
        waiter.start()
        assert not done.wait(1.0)  # slot 0 is still taken: an `alone` test does not start
        fcntl.flock(theirs[0], fcntl.LOCK_UN)
        assert done.wait(5.0)
        for f in theirs:  # now it holds both: nobody else gets one
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise AssertionError(f"{f.name} was free while the alone test held every slot")
            except BlockingIOError:
                pass
    finally:
        for f in (*mine, *theirs):
            f.close()
