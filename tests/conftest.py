"""Fixtures shared by test modules in several folders: the Kubernetes API emulator, and process-wide state
put back after every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.logs import known_secrets, restore_secrets
from tests.support.kmock_server import RunningEmulator, start_emulator


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    """A Kubernetes API emulator (kmock, extended) on a loopback port, stopped after the test."""
    running = start_emulator()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _secrets_forgotten_after_each_test() -> Iterator[None]:
    """The log redaction set is process-wide: what one test registers must not redact (or hide a leak in)
    the next one's lines."""
    before = known_secrets()
    yield
    restore_secrets(before)
