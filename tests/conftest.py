"""Fixtures shared by test modules in several folders: the Kubernetes API emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.kmock_server import RunningEmulator, start_emulator


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    """A Kubernetes API emulator (kmock, extended) on a loopback port, stopped after the test."""
    running = start_emulator()
    yield running
    running.stop()
