"""Structured logs: one JSON object per line, release context from `extra=` or the context, redaction."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Iterator

import pytest

from controller.adapters.http.signing import Secret
from controller.logs import configure_logging, known_secrets, release_context, remember_secret, restore_secrets


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("DEBUG", json=True, stream=out, secrets=["explicit-secret-1"])
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_required_fields(stream: io.StringIO) -> None:
    logging.getLogger("controller.test").info("tick took %.1f ms\nsecond line", 12.34)
    [entry] = _lines(stream)
    assert entry["level"] == "info" and entry["logger"] == "controller.test"
    assert entry["message"] == "tick took 12.3 ms\nsecond line"
    assert str(entry["time"]).endswith("Z") and "T" in str(entry["time"])
    assert "release" not in entry


def test_fields_from_extra(stream: io.StringIO) -> None:
    logging.getLogger("x").warning("rolled back", extra={"release": "search-v2", "namespace": "shop",
                                                          "phase": "RolledBack", "step": 2})
    [entry] = _lines(stream)
    assert (entry["release"], entry["namespace"], entry["phase"], entry["step"]) == (
        "search-v2", "shop", "RolledBack", 2)


def test_fields_from_context_and_extra_wins(stream: io.StringIO) -> None:
    log = logging.getLogger("x")
    with release_context(release="r1", namespace="ns"), release_context(phase="Progressing", step=0):
        log.info("inside")
        log.info("override", extra={"phase": "Paused"})
    log.info("outside")
    inside, override, outside = _lines(stream)
    assert (inside["release"], inside["namespace"], inside["phase"], inside["step"]) == ("r1", "ns", "Progressing", 0)
    assert override["phase"] == "Paused" and override["release"] == "r1"
    assert "release" not in outside


def test_context_is_per_thread(stream: io.StringIO) -> None:
    log = logging.getLogger("x")
    barrier = threading.Barrier(2, timeout=5)

    def work(name: str) -> None:
        with release_context(release=name):
            barrier.wait()
            log.info("tick")

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert sorted(str(e["release"]) for e in _lines(stream)) == ["a", "b"]


def test_exceptions_are_one_line_of_json(stream: io.StringIO) -> None:
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        logging.getLogger("x").exception("tick failed")
    [entry] = _lines(stream)
    assert "RuntimeError: kaput" in str(entry["exception"])
    assert len(stream.getvalue().splitlines()) == 1


def test_known_secrets_are_redacted_everywhere(stream: io.StringIO) -> None:
    secret = Secret(b"registered-by-secret-object")
    remember_secret("remembered-value-xyz")
    log = logging.getLogger("x")
    log.info("a %s b", secret.reveal().decode())
    log.info("explicit-secret-1 in the format string")
    log.info("args %s %s", "remembered-value-xyz", {"k": "explicit-secret-1"})
    try:
        raise ValueError("bad token remembered-value-xyz")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    for value in ("registered-by-secret-object", "explicit-secret-1", "remembered-value-xyz"):
        assert value not in text
    messages = [e["message"] for e in _lines(stream)]
    assert messages[:3] == ["a *** b", "*** in the format string", "args *** {'k': '***'}"]


def test_short_values_are_not_treated_as_secrets(stream: io.StringIO) -> None:
    remember_secret("ab")
    logging.getLogger("x").info("about")
    assert _lines(stream)[0]["message"] == "about"


def test_text_format_and_levels() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("warning", json=False, stream=out)
    try:
        assert configure_logging("warning", json=False, stream=out) is not handler
        assert sum(1 for h in root.handlers if h.get_name() == "stack-canary") == 1  # replaced, not added
        with release_context(release="r1"):
            logging.getLogger("x").info("hidden")
            logging.getLogger("x").warning("shown")
    finally:
        for h in [h for h in root.handlers if h.get_name() == "stack-canary"]:
            root.removeHandler(h)
        root.setLevel(level)
    assert "hidden" not in out.getvalue()
    assert out.getvalue().rstrip().endswith("x: shown [release=r1]")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING x: shown \[release=r1\]\n", out.getvalue()), \
        out.getvalue()  # UTC, marked as such, as the other views give times
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud")


def test_restore_secrets_puts_back_the_set_known_before() -> None:
    before = known_secrets()
    remember_secret("first-secret-abc")
    snapshot = known_secrets()
    remember_secret("second-secret-def")
    restore_secrets(snapshot)
    assert "first-secret-abc" in known_secrets() and "second-secret-def" not in known_secrets()
    restore_secrets(before)
    assert known_secrets() == before
