"""Fixtures of the in-process local mesh tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.localmesh.harness import LoopThread


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    """An asyncio loop on a thread of its own for the in-process router tests, one per test module."""
    lt = LoopThread()
    yield lt
    lt.close()
