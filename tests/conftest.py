"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kmock_server import RunningEmulator, start_emulator
from tests.test_router import LoopThread


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    """A Kubernetes API emulator (kmock, extended) on a loopback port, stopped after the test."""
    running = start_emulator()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    """An asyncio loop on a thread of its own for the in-process router tests, one per test module."""
    lt = LoopThread()
    yield lt
    lt.close()
