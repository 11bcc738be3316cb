"""The demo's console on a terminal: a log line clears the live count-down line first, so neither overwrites
the other (before, `next analysis in  0.9s2026-12-07 ... WARNING ...` ran together)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from demo.harness import Console

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
