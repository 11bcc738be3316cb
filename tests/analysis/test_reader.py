"""The one reader of input: both ways to meet a problem, both wordings, and each check's message."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from analysis.reader import CONFIG_WORDING, Reader


class Refused(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")


def test_collects_every_problem_and_raises_them_at_once() -> None:
    r = Reader()
    d = r.fields({"a": "x", "zz": 1}, "spec", ("a", "b"))
    assert r.integer(d.get("a"), "spec.a", 0, default=3) == 3
    assert r.integer(d.get("b"), "spec.b", 0, default=3) == 3
    assert r.problems == ["spec.zz: is not a known field (known: a, b)", "spec.a: must be a whole number, not str"]
    with pytest.raises(ExceptionGroup) as info:
        r.raise_if_problems(lambda problems: ExceptionGroup("spec", [ValueError(p) for p in problems]))
    assert len(info.value.exceptions) == 2
    Reader().raise_if_problems(lambda problems: ValueError(problems))  # nothing collected: nothing raised


def test_fails_fast_with_the_callers_exception() -> None:
    r = Reader(fail=Refused, wording=CONFIG_WORDING)
    with pytest.raises(Refused, match=r"^cfg\.zz: unknown field \(known: a\)$"):
        r.fields({"zz": 1, "a": "x"}, "cfg", ("a",))
    assert r.problems == []


@pytest.mark.parametrize(("read", "message"), [
    (lambda r: r.mapping([], "p"), "p: must be a mapping, not list"),
    (lambda r: r.mapping(None, "p"), "p: is required"),
    (lambda r: r.items([], "p", "names"), "p: must be a non-empty list of names"),
    (lambda r: r.string("Bad", "p", re.compile("[a-z]+"), what="lower case"), "p: 'Bad' is not lower case"),
    (lambda r: r.string("ok\n", "p", re.compile("[a-z]+$")), "p: 'ok\\n' is not valid"),
    (lambda r: r.optional_string(5, "p"), "p: must be a string, not int"),
    (lambda r: r.integer(120, "p", 1, 100), "p: 120 is above 100"),
    (lambda r: r.integer(-1, "p", 0), "p: -1 is below 0"),
    (lambda r: r.integer(11, "p", 0, 10, what="between 0 and 10"), "p: 11 is not between 0 and 10"),
    (lambda r: r.integer(True, "p", 0), "p: must be a whole number, not bool"),
    (lambda r: r.number(1.5, "p", 0, 1), "p: 1.5 is not in (0, 1)"),
    (lambda r: r.number(-1, "p", 0, math.inf, open_low=False), "p: -1 is not in [0, inf)"),
    (lambda r: r.number(0, "p", 0, math.inf, what="positive"), "p: 0 is not positive"),
    (lambda r: r.number(math.nan, "p", 0, 1), "p: nan is not a finite number"),
    (lambda r: r.boolean("yes", "p"), "p: must be true or false, not str"),
    (lambda r: r.duration("soon", "p"), "p: 'soon' is not a duration (e.g. 30s, 2m, 500ms or seconds)"),
    (lambda r: r.duration(math.inf, "p"), "p: inf is not a duration (e.g. 30s, 2m, 500ms or seconds)"),
    (lambda r: r.duration("100ms", "p", low=1.0), "p: '100ms' is shorter than 1s"),
    (lambda r: r.duration("-10s", "p", low=1.0), "p: '-10s' is negative: a duration of at least 1s"),
    (lambda r: r.duration(" -2m", "p"), "p: ' -2m' is negative: a duration of at least 0s"),
    (lambda r: r.duration("--2m", "p"), "p: '--2m' is not a duration (e.g. 30s, 2m, 500ms or seconds)"),
    (lambda r: r.choice("panic", "p", ("hold", "rollback")), "p: 'panic' is not one of hold, rollback"),
    (lambda r: r.subset(["a", "x"], "p", ("a", "b")), "p[1]: 'x' is not one of a, b"),
])
def test_each_check_names_the_path(read: Any, message: str) -> None:
    r = Reader()
    read(r)
    assert r.problems == [message]


def test_config_wording() -> None:
    r = Reader(wording=CONFIG_WORDING)
    r.mapping([], "p")
    r.integer(-1, "q", 0)
    assert r.problems == ["p: [] is not an object", "q: -1 is less than 0"]


def test_values_and_defaults() -> None:
    r = Reader()
    assert r.duration("2m", "p") == 120 and r.duration("1.5h", "p") == 5400 and r.duration(None, "p", 7.0) == 7
    assert r.subset(["a", "b", "a"], "p", ("a", "b")) == ("a", "b")
    assert r.string(None, "p", default="x") == "x" and r.boolean(None, "p", default=True) is True
    assert r.optional_number(None, "p", 0, 1) is None and r.number(1, "p", 0, 1, open_high=False) == 1.0
    assert r.mapping(None, "p", required=False) == {} and r.problems == []
