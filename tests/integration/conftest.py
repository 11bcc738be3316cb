"""Fixtures of the integration tests: the invariant checker, on for every state and checked at teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.invariants import InvariantChecker
from tests.support.kmock_server import RunningEmulator


@pytest.fixture
def invariants(emulator: RunningEmulator) -> Iterator[InvariantChecker]:
    """Every rule on, attached before the test writes anything; the test fails at teardown if any state
    broke a rule or a rule was switched off and hit (`InvariantChecker.assert_clean`)."""
    checker = InvariantChecker().attach(emulator)
    yield checker
    checker.assert_clean()
