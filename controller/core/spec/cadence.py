"""The analysis windows' timing fields a canary strategy and an A/B experiment share: `settle` and `warmup`.

Problems are recorded on the `Reader` with the field's path, as every spec field's.
"""

from __future__ import annotations

from typing import Any

from analysis.reader import Reader


def read_settle(r: Reader, value: Any, path: str, interval: float) -> float:
    """`settle`: how long after a weight change a window may open; interval/4 (at most 30 s) unless given, and
    shorter than the interval."""
    settle = r.duration(value, path, min(interval / 4, 30.0))
    if settle >= interval:
        r.problem(path, f"{settle:g}s is not shorter than the interval ({interval:g}s)")
    return settle


def read_warmup(r: Reader, value: Any, path: str, interval: float, deadline: float, deadline_name: str) -> float:
    """`warmup`: how long new pods (or variants) serve before they are judged; one interval unless given, never
    so long that no whole interval fits before the `deadline` (a step's, or the experiment's maxDuration)."""
    warmup = r.duration(value, path, min(interval, max(0.0, deadline - interval)))
    if warmup + interval > deadline:
        r.problem(path, f"{warmup:g}s leaves no whole interval ({interval:g}s) before {deadline_name} "
                        f"({deadline:g}s)")
    return warmup
