"""The demo's console on a terminal: a log line clears the live count-down line first, so neither overwrites
the other (before, `next analysis in  0.9s2026-12-07 ... WARNING ...` ran together)."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.local.platform import SystemClock
from controller.adapters.local.state import StateDir
from controller.core.spec.release import parse_release
from controller.core.status import DecisionRecord, Phase, ReleaseStatus
from controller.reconciler import TickResult
from demo.harness import Console, demo_release, drive_release

pytestmark = pytest.mark.timeout(30)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal_log() -> Iterator[Terminal]:
    term = Terminal()
    handler = logging.StreamHandler(term)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield term
    finally:
        root.removeHandler(handler)


def test_a_log_line_clears_the_live_line_first(terminal_log: Terminal) -> None:
    console = Console(terminal_log)
    console.live("next analysis in  0.9s")
    logging.getLogger("controller.adapters.local.platform").warning("AnalysisFailed: errorRate worse on ml-infer")
    console.live("next analysis in  9.9s")
    assert terminal_log.getvalue() == ("\r\x1b[Knext analysis in  0.9s" "\r\x1b[K"
                                       "AnalysisFailed: errorRate worse on ml-infer\n" "\r\x1b[Knext analysis in  9.9s")


def test_a_closed_log_stream_beside_it_is_passed_over(terminal_log: Terminal) -> None:
    closed = io.StringIO()
    handler = logging.StreamHandler(closed)
    closed.close()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        Console(Terminal()).live("next analysis in  1.0s")
    finally:
        root.removeHandler(handler)
    assert not handler.filters


def test_off_a_terminal_the_log_is_left_alone(terminal_log: Terminal) -> None:
    Console(io.StringIO())
    logging.getLogger("x").warning("plain")
    assert terminal_log.getvalue() == "plain\n"


def test_a_closed_console_takes_its_hook_off_the_log_handlers(terminal_log: Terminal) -> None:
    """A process that runs several releases (the test suite, a notebook) does not pile up one hook per run."""
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "stream", None) is terminal_log)
    with Console(terminal_log) as console:
        console.live("next analysis in  0.9s")
        assert len(handler.filters) == 1
    assert handler.filters == []
    logging.getLogger("x").warning("after")
    assert terminal_log.getvalue().endswith("next analysis in  0.9s" "after\n")  # no longer cleared for it


def test_a_second_drive_of_the_same_release_prints_only_its_new_decisions(tmp_path: Path) -> None:
    """The A/B demo drives the release again after it plays the operator (approve or abort): the looks the first
    drive printed are not printed again, as if the experiment had looked once more at each."""
    state = StateDir(tmp_path / "state")
    spec = parse_release(demo_release(10))
    state.save_release(demo_release(10))
    looks = tuple(DecisionRecord(1000.0 + t, t, 0, 50, "inconclusive", f"look at t={t:g}", "continue")
                  for t in (10.0, 20.0))
    done = ReleaseStatus(phase=Phase.SUCCEEDED, history=(*looks, DecisionRecord(1030.0, 30.0, 0, 50, "operator",
                                                                                   "promoted", "promote")))
    state.save_status(ReleaseStatus(phase=Phase.PAUSED, history=looks))

    class Ticks:
        def tick(self, release: Any, status: ReleaseStatus, persist: Any) -> TickResult:
            return TickResult(done, True, (), (), None)

    out = io.StringIO()
    drive_release(Ticks(), state, spec, SystemClock(), threading.Event(), 10, Console(out),  # type: ignore[arg-type]
                  shown=len(looks))
    assert "look at t=" not in out.getvalue() and "promoted" in out.getvalue()
