"""Experiment replay: judge recorded looks of an A/B experiment offline (`canary analyze --experiment --replay`).

A replay file is JSON: the experiment's statistics fields (those of `spec.strategy.abTest` that
`analysis.abtest.ExperimentConfig` reads, durations in seconds) and its looks, each with every variant's
counters **cumulative** since the experiment began (as a service's counters are):

    {"experiment": {"variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
                    "primaryMetric": {"kind": "proportion", "name": "click-through"},
                    "unit": "user", "alpha": 0.05, "minSamples": 1000},
     "looks": [{"t": 600,
                "variants": {"v1": {"count": 5210, "total": 498, "units": 402,
                                    "users": 402, "yy": 1410, "nn": 98212, "yn": 11034},
                             "v2": {...}}}, ...]}

Per variant: `count` (impressions; a mean metric's observations), `total` (clicks; the sum of the values),
`squares` (a mean metric's sum of squared values), `units` (users assigned, for the sample-ratio check;
optional), and the per-user sums of `unit: user`: `users`, `yy`, `nn`, `yn` (sums over users of Y_u^2, N_u^2,
Y_u N_u; docs/experiments.md, "Users as the unit"). Looks are differenced into intervals and judged in order
by `analysis.abtest.ab_update`, the code the controller runs. `main` prints one JSON line per look per file:
`file`, `t` and the result (decision, reason, winner, unit, samples, comparisons with each variant's effect
and interval, and the winner's `effect`). A bad file gets one line on stderr naming the file and the field,
exit code 2, and prints no decisions; the other files still run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from analysis.abtest import (
    ExperimentConfig,
    InvalidCounts,
    InvalidExperimentConfig,
    PerUser,
    PrimaryCounts,
    ab_initial_state,
    ab_update,
)
from analysis.replay import InvalidReplay, expand_paths

__all__ = ["Look", "load_experiment_replay", "main", "parse_experiment_replay", "replay_experiment"]

COUNTERS = ("count", "total", "squares", "units", "users", "yy", "nn", "yn")
WHOLE = ("count", "units", "users")


@dataclass(frozen=True)
class Look:
    t: float
    variants: Mapping[str, Mapping[str, float]]  # cumulative counters per variant


def _counter(raw: Mapping[str, Any], key: str, where: str) -> float | None:
    if key not in raw or raw[key] is None:
        return None
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InvalidReplay(f"{where}.{key}", f"{value!r} is not a finite number >= 0")
    if key in WHOLE and not float(value).is_integer():
        raise InvalidReplay(f"{where}.{key}", f"{value!r} is not a whole number")
    return float(value)


def _look(raw: Any, i: int, names: list[str]) -> Look:
    where = f"looks[{i}]"
    if not isinstance(raw, dict):
        raise InvalidReplay(where, "is not an object")
    t = raw.get("t")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
        raise InvalidReplay(f"{where}.t", f"{t!r} is not a time in seconds >= 0")
    variants = raw.get("variants")
    if not isinstance(variants, dict):
        raise InvalidReplay(f"{where}.variants", "is not an object of variant -> counters")
    unknown = sorted(set(variants) - set(names))
    if unknown:
        raise InvalidReplay(f"{where}.variants.{unknown[0]}", f"is not one of the experiment's variants {names}")
    out: dict[str, dict[str, float]] = {}
    for name, counters in variants.items():
        at = f"{where}.variants.{name}"
        if not isinstance(counters, dict):
            raise InvalidReplay(at, "is not an object of counters")
        extra = sorted(set(counters) - set(COUNTERS))
        if extra:
            raise InvalidReplay(f"{at}.{extra[0]}", f"is not a counter ({', '.join(COUNTERS)})")
        if "count" not in counters or "total" not in counters:
            raise InvalidReplay(at, 'needs "count" and "total"')
        out[name] = {k: v for k in COUNTERS if (v := _counter(counters, k, at)) is not None}
    return Look(float(t), out)


def parse_experiment_replay(doc: Any) -> tuple[ExperimentConfig, list[Look]]:
    """The experiment and its looks; raises InvalidReplay (or InvalidExperimentConfig) naming the field."""
    if not isinstance(doc, dict):
        raise InvalidReplay("(top level)", "is not an object")
    config = ExperimentConfig.from_dict(doc.get("experiment"), path="experiment")
    raw = doc.get("looks")
    if not isinstance(raw, list) or not raw:
        raise InvalidReplay("looks", "is not a non-empty list")
    names = [v.name for v in config.variants]
    looks = [_look(item, i, names) for i, item in enumerate(raw)]
    for i, (a, b) in enumerate(itertools.pairwise(looks), start=1):
        if b.t <= a.t:
            raise InvalidReplay(f"looks[{i}].t", f"{b.t:g} does not come after {a.t:g}")
        for name, counters in b.variants.items():
            before = a.variants.get(name, {})
            for key, value in counters.items():
                if value < before.get(key, 0.0):
                    raise InvalidReplay(f"looks[{i}].variants.{name}.{key}",
                                        f"{value:g} is below the previous look's {before[key]:g}: counters are "
                                        "cumulative")
            missing = sorted(set(before) - set(counters))
            if missing:
                raise InvalidReplay(f"looks[{i}].variants.{name}.{missing[0]}", "was in the previous look")
    return config, looks


def load_experiment_replay(path: Path) -> tuple[ExperimentConfig, list[Look]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=lambda _: math.nan)
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidReplay("(file)", f"cannot be read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidReplay("(json)", f"line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    return parse_experiment_replay(doc)


def _interval(now: Mapping[str, float], before: Mapping[str, float], kind: str) -> PrimaryCounts:
    d = {k: v - before.get(k, 0.0) for k, v in now.items()}
    units = round(d["units"]) if "units" in d else None
    per_user = (PerUser(round(d["users"]), d.get("yy", 0.0), d.get("nn", 0.0), d.get("yn", 0.0))
                if "users" in d else None)
    if kind == "mean":
        return PrimaryCounts.mean(d["total"], d.get("squares", 0.0), round(d["count"]), units=units, per_user=per_user)
    return PrimaryCounts.proportion(round(d["total"]), round(d["count"]), units=units, per_user=per_user)


def replay_experiment(config: ExperimentConfig, looks: list[Look]) -> Iterator[dict[str, Any]]:
    """The result of every look, judged in order from a fresh state."""
    state = ab_initial_state(config)
    previous: Mapping[str, Mapping[str, float]] = {}
    for look in looks:
        counts = {n: _interval(c, previous.get(n, {}), config.primary.kind) for n, c in look.variants.items()}
        state, result = ab_update(state, counts, look.t)
        previous = look.variants
        yield {"t": look.t, **result.to_dict()}


def main(argv: list[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """`canary analyze --experiment --replay FILE...|DIR`; returns the exit code."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    parser = argparse.ArgumentParser(prog="canary analyze --experiment",
                                     description="Judge recorded looks of an A/B experiment offline.")
    parser.add_argument("--experiment", action="store_true", required=True)
    parser.add_argument("--replay", nargs="+", required=True, metavar="FILE", help="replay files or directories")
    try:
        opts = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage message
        return int(exc.code or 0)
    status = 0
    for path in expand_paths(opts.replay):
        try:
            config, looks = load_experiment_replay(path)
            records = list(replay_experiment(config, looks))
        except (InvalidReplay, InvalidExperimentConfig, InvalidCounts) as exc:
            print(f"canary analyze: {path}: {exc}", file=err)
            status = 2
            continue
        for record in records:
            print(json.dumps({"file": str(path), **record}, allow_nan=False), file=out)
    return status
