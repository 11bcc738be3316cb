"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.kmock_server import RunningEmulator, start_emulator

if TYPE_CHECKING:
    from tests.localmesh.test_proxy import LoopThread


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    """A Kubernetes API emulator (kmock, extended) on a loopback port, stopped after the test."""
    running = start_emulator()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    """An asyncio loop on a thread of its own for the in-process router tests, one per test module."""
    from tests.localmesh.test_proxy import LoopThread  # only the modules that use it pay for the router's imports

    lt = LoopThread()
    yield lt
    lt.close()
