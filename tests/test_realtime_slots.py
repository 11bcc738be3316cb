"""The real-time slots of tests/conftest.py: a test takes one free slot; `realtime(alone=True)` takes the machine,
which every other test shares, for itself."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

from tests.conftest import _machine, _take_one


def test_one_slot_is_any_free_one(tmp_path: Path) -> None:
    paths = [tmp_path / f"slot-{i}" for i in range(2)]
    mine = [open(p, "a") for p in paths]  # noqa: SIM115 - closed below
    # Another test's handles (flock locks are per open file).
    theirs = [open(p, "a") for p in paths]  # noqa: SIM115 - closed below
    try:
        fcntl.flock(theirs[0], fcntl.LOCK_EX | fcntl.LOCK_NB)  # another test holds slot 0
        assert _take_one(mine) is mine[1]
    finally:
        for f in (*mine, *theirs):
            f.close()


def _holder(folder: Path, alone: bool, entered: threading.Event, leave: threading.Event) -> threading.Thread:
    def hold() -> None:
        with _machine(folder, alone):
            entered.set()
            assert leave.wait(10.0)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return thread


def _events() -> tuple[threading.Event, threading.Event]:
    return threading.Event(), threading.Event()


def test_alone_waits_for_the_running_tests_and_no_new_test_starts_beside_it(tmp_path: Path) -> None:
    (a_in, a_out), (b_in, b_out), (alone_in, alone_out), (c_in, c_out) = (_events() for _ in range(4))
    threads = [_holder(tmp_path, False, a_in, a_out), _holder(tmp_path, False, b_in, b_out)]
    assert a_in.wait(5.0) and b_in.wait(5.0)  # shared: two ordinary tests run together
    threads.append(_holder(tmp_path, True, alone_in, alone_out))
    assert not alone_in.wait(0.5)  # both still run
    a_out.set()
    assert not alone_in.wait(0.5)  # one still runs
    threads.append(_holder(tmp_path, False, c_in, c_out))
    assert not c_in.wait(0.5)  # a test arriving now waits behind the alone one, though the machine is shared
    b_out.set()
    assert alone_in.wait(5.0)
    assert not c_in.wait(0.5)  # nothing runs beside the alone test
    alone_out.set()
    assert c_in.wait(5.0)
    c_out.set()
    for thread in threads:
        thread.join(5.0)
        assert not thread.is_alive()
