"""Fixtures shared by test modules in several folders: the Kubernetes API emulator, process-wide state put
back after every test, and the slots that keep the real-time tests from crowding each other out."""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

from controller.logs import known_secrets, restore_secrets
from tests.support.kmock_server import RunningEmulator, start_emulator

# Tests marked `realtime` judge live traffic (demos, crash campaigns) against real time: three of them beside each
# other on two cores starve each one's services and load of CPU, and a demo then sees a machine, not a release.
# Across the pytest-xdist workers, at most this many run at once; the others wait for a slot (their worker's
# remaining tests go to the idle workers under `--dist worksteal`). `realtime(alone=True)` takes the machine: no
# other test at all runs beside it (the A/B demos compare two versions' latency on one machine; beside
# CPU-bound tests, CI once saw the newly started arm's master-search at p50 3.4 s against 100 ms, and the latency
# guardrail rightly stopped the experiment; the local crash campaign needs every probe search answered within
# 10 s, and CI once served its load at p50 4.2 s).
REALTIME_SLOTS = int(os.environ.get("REALTIME_SLOTS", "2"))
# Their timeout covers the wait for a slot: the longest real-time test takes ~5 minutes on a busy machine.
REALTIME_TIMEOUT_S = 1200


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("realtime") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(REALTIME_TIMEOUT_S))


def _locks_folder() -> Path | None:
    """Where the workers of this pytest-xdist run keep their locks; None outside such a run."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None or REALTIME_SLOTS < 1:
        return None
    folder = Path(tempfile.gettempdir()) / f"stack-canary-realtime-{run}"
    folder.mkdir(exist_ok=True)
    return folder


def _alone(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("realtime")
    return marker is not None and bool(marker.kwargs.get("alone"))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """The machine lock around the whole test (setup, call, teardown), taken before pytest-timeout starts the
    test's clock: waiting for an `alone` test to end is no part of a test's own time."""
    folder = _locks_folder()
    if folder is None:
        yield
        return
    with _machine(folder, _alone(item)):
        yield


@pytest.fixture(autouse=True)
def _realtime_slot(request: pytest.FixtureRequest) -> Iterator[None]:
    """One of REALTIME_SLOTS exclusive file locks, held for the whole test, when it is marked `realtime` and runs
    in one of several pytest-xdist workers (the locks die with the process that holds them). A
    `realtime(alone=True)` test takes none: it holds the machine, so no other test, and no slot, is taken."""
    folder = _locks_folder()
    if request.node.get_closest_marker("realtime") is None or folder is None or _alone(request.node):
        yield
        return
    slots = [open(folder / f"slot-{i}", "a") for i in range(REALTIME_SLOTS)]  # noqa: SIM115 - closed below
    try:
        held = _take_one(slots)
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
    finally:
        for f in slots:
            f.close()


@contextmanager
def _machine(folder: Path, alone: bool) -> Iterator[None]:
    """The machine: shared by every test, exclusive for `realtime(alone=True)`. A turnstile keeps an exclusive
    taker from waiting forever while the other workers' short tests keep the shared lock taken between them:
    each taker passes the gate first, and the exclusive one holds it while it runs. Every test takes the machine
    before any slot, and an `alone` test holds it exclusively and takes no slot, so the waits cannot deadlock."""
    with open(folder / "gate", "a") as gate, open(folder / "machine", "a") as machine:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(machine, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(machine, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


def _take_one(slots: list[IO[str]]) -> IO[str]:
    """Any free slot; while all are taken, look again a moment later."""
    held = next((f for f in slots if _try_lock(f)), None)
    while held is None:
        time.sleep(0.25)
        held = next((f for f in slots if _try_lock(f)), None)
    return held


def _try_lock(f: IO[str]) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    """A Kubernetes API emulator (kmock, extended) on a loopback port, stopped after the test."""
    running = start_emulator()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _root_logger_as_it_was() -> Iterator[None]:
    """A command run in-process (`controller_main`, `main([...])`) installs its log handler on the root logger,
    writing to the test's captured stderr, and sets the level. Both are put back after the test: a handler left
    on a closed capture stream made every later log line of that worker a logging error (16,801 of them, from
    httpx at INFO, in one demo test, which then ran out of time)."""
    root = logging.getLogger()

    def ours() -> list[logging.Handler]:  # pytest adds and removes its own capture handlers around each phase
        return [h for h in root.handlers if not type(h).__module__.startswith("_pytest")]

    handlers, level = ours(), root.level
    yield
    for handler in ours():
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _secrets_forgotten_after_each_test() -> Iterator[None]:
    """The log redaction set is process-wide: what one test registers must not redact (or hide a leak in)
    the next one's lines."""
    before = known_secrets()
    yield
    restore_secrets(before)
