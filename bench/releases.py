"""Release benchmark: whole canary releases under the controller's default schedule, in every world.

bench/judges.py measures a judge on fixed weight schedules. A release is more than that: the controller
moves the weight on the judge's verdicts, a step waits for enough canary requests, errors hold, a step
without a pass holds at its weight, and promotion needs a `pass` at the last step. This benchmark plays
that loop interval by interval with the REAL judge object (`analysis.sequential.SequentialJudge`: what the
judge does is what is measured) on the traffic of bench/worlds.py, and counts per world x scenario x rate
how many releases were promoted, rolled back or still undecided at the horizon, and when.

The schedule (`Schedule`, mirroring controller/core/spec/release.py's defaults and
controller/core/machine/phases.py's `_act_on_verdict`): steps 10, 20, 30, 40, 50% (stepWeight 10,
maxWeight 50), one 60 s interval per look. `fail` rolls back; `error` holds, and `rollbackAfterErrors` (3)
in a row roll back; `pass` advances once the step has seen `minCanaryRequests` (50) canary requests, and
on the last step promotes; before the last step an inconclusive verdict whose only gap is safety not yet
shown (the judge's `safetyPending`) also advances; a step without a pass after `stepDeadline` (10)
intervals follows `onInconclusive` (`hold`: it stays at that step and keeps looking). The first `--warmup`
minutes after each weight change (`strategy.canary.warmup`, by default one interval) are served but not judged,
unless the judge's last verdict told the canary's pods apart (`podWarmup`: it had per-pod counts, the worlds'
default): then the minutes after a weight change are judged and the judge leaves the step's new pods out for
`--warmup` minutes (the controller opens that window after `settle`), so only the release's first minutes wait.
Before the release the judge is given `--history` minutes of the stable version's own traffic
(`analysis.historyIntervals`, by default 30; `SequentialJudge.prime`), drawn from the same world. Minutes count
intervals from the first canary window, warm-up minutes included (scale-ups and settling are not counted).

    python -m bench.releases                 # the full table (about 10-15 min on 2 cores)
    python -m bench.releases --quick         # a smaller look (under 2 min)
    python -m bench.releases --worlds independent,real --scenarios aa,err2 --reps 50
    python -m bench.releases --worlds real --scenarios aa --warmup 3   # steps' first 3 minutes not judged
    python -m bench.releases --warmup 0 --history 0    # every minute judged, nothing learnt before the release
    python -m bench.releases --scenarios aa,err2 --analysis '{"errorRatioTolerance": 1.25}'  # another analysis

Prints a table and writes bench/results/releases.json (releases_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from analysis.config import AnalysisConfig
from analysis.judges import Decision, Judge
from analysis.observations import IntervalObservation, Verdict, VersionCounts
from analysis.sequential import SequentialJudge
from bench.worlds import SCENARIOS, WORLD_NAMES, IntArray, Minute, Traffic, parameters

SERVICE = "search"
RATES: tuple[int, ...] = (5, 20, 50)
HORIZON = 240
# A canary twice beyond a margin should be rolled back within this many minutes (the summary's
# rolledBackByMinute30Pct).
ROLLBACK_BY_MINUTE = 30
REPS = 100
# --quick: the idealised world and the real one, fewer releases per cell.
QUICK_WORLDS: tuple[str, ...] = ("independent", "real")
QUICK_REPS = 20


@dataclass(frozen=True)
class Schedule:
    """The canary strategy and policies that decide what a verdict does; defaults are the spec's."""

    steps: tuple[int, ...] = (10, 20, 30, 40, 50)
    min_canary_requests: int = 50
    step_deadline: int = 10  # intervals at a step without a pass before `on_inconclusive` applies
    on_inconclusive: str = "hold"  # or "rollback", "continue"
    rollback_after_errors: int = 3
    advance_when_safety_pending: bool = True  # an inconclusive "no harm seen, safety not yet shown" advances
    warmup: int = 1  # intervals after each weight change whose traffic is not judged (`strategy.canary.warmup`)
    history: int = 30  # intervals of the stable version alone before the release (`analysis.historyIntervals`)


class Outcome(StrEnum):
    """Where a release ended by the horizon."""

    PROMOTED = "promoted"
    ROLLED_BACK = "rolledBack"
    UNDECIDED = "undecided"


@dataclass
class Release:
    """One replication's controller status, and what it did at each interval."""

    step: int = 0
    warming: int = 0  # minutes of the step's warm-up still to pass before its traffic is judged
    step_intervals: int = 0
    step_canary_requests: int = 0
    consecutive_errors: int = 0
    outcome: Outcome = Outcome.UNDECIDED
    decided_at: int | None = None  # the interval (1-based minute) of the promotion or rollback
    cause: str = ""  # what decided: pass, fail, errors, inconclusive, continue
    # The last verdict's interval told the canary's pods apart (the judge's `podWarmup`): a step's new pods are
    # left out by the judge while they warm up, so the step's first minute is judged (the rest of its pods').
    pod_warmup: bool = False
    served: int = 0  # canary requests served until the decision, warm-up minutes included: the users exposed
    actions: list[tuple[int, str, str]] = field(default_factory=list)  # (weight, verdict, action) per interval


class TrafficSource(Protocol):
    """What `run_releases` reads traffic from: bench.worlds.Traffic, or a test's fake."""

    def minute(self, weight: npt.ArrayLike) -> Minute:
        """The next interval of every replication at its canary weight (percent, (reps,))."""


def act(schedule: Schedule, release: Release, verdict: Verdict, safety_pending: bool, canary_requests: int) -> str:
    """The controller's answer to one interval's verdict (phases.py `_act_on_verdict`); returns the action."""
    weight = schedule.steps[release.step]
    release.step_intervals += 1
    release.step_canary_requests += canary_requests
    action = _action(schedule, release, verdict, safety_pending)
    release.actions.append((weight, verdict.value, action))
    return action


def _action(schedule: Schedule, release: Release, verdict: Verdict, safety_pending: bool) -> str:
    interval = len(release.actions) + 1
    if verdict is Verdict.FAIL:
        return _decide(release, Outcome.ROLLED_BACK, "fail", interval)
    if verdict is Verdict.ERROR:
        release.consecutive_errors += 1
        if release.consecutive_errors >= schedule.rollback_after_errors:
            return _decide(release, Outcome.ROLLED_BACK, "errors", interval)
        return "hold"
    release.consecutive_errors = 0
    enough = release.step_canary_requests >= schedule.min_canary_requests
    if verdict is Verdict.PASS and enough:
        return _advance(schedule, release, "pass", interval)
    last = release.step + 1 >= len(schedule.steps)
    if safety_pending and enough and schedule.advance_when_safety_pending and not last:
        _enter(release, release.step + 1, schedule.warmup)
        return "next step (no harm seen)"
    if release.step_intervals < schedule.step_deadline:
        return "wait"
    if schedule.on_inconclusive == "rollback":
        return _decide(release, Outcome.ROLLED_BACK, "inconclusive", interval)
    if schedule.on_inconclusive == "continue":
        return _advance(schedule, release, "continue", interval)
    return "hold"


def _enter(release: Release, step: int, warmup: int) -> None:
    release.step, release.step_intervals, release.step_canary_requests = step, 0, 0
    release.warming = 0 if release.pod_warmup else warmup


def _advance(schedule: Schedule, release: Release, cause: str, interval: int) -> str:
    if release.step + 1 < len(schedule.steps):
        _enter(release, release.step + 1, schedule.warmup)
        return "next step"
    return _decide(release, Outcome.PROMOTED, cause, interval)


def _decide(release: Release, outcome: Outcome, cause: str, interval: int) -> str:
    release.outcome, release.cause, release.decided_at = outcome, cause, interval
    return "promote" if outcome is Outcome.PROMOTED else "roll back"


def observation(minute: Minute, rep: int, t: int, weight: float, pods: bool = True) -> IntervalObservation:
    """Replication `rep`'s interval t (0-based) as the judge reads it: per pod too (pods "b0".."b9" of the
    baseline, "c0".. of the canary, those that served requests), unless `pods` is False (a metrics source
    without a pod label)."""
    return IntervalObservation(
        60.0 * (t + 1),
        float(weight),
        VersionCounts(int(minute.n_b[rep]), int(minute.e_b[rep]), tuple(int(x) for x in minute.b_b[rep])),
        VersionCounts(int(minute.n_c[rep]), int(minute.e_c[rep]), tuple(int(x) for x in minute.b_c[rep])),
        baseline_pods=_pods(minute.pn_b, minute.pe_b, minute.pb_b, rep, "b") if pods else {},
        canary_pods=_pods(minute.pn_c, minute.pe_c, minute.pb_c, rep, "c") if pods else {},
    )


def _pods(n: IntArray | None, e: IntArray | None, b: IntArray | None, rep: int, prefix: str
          ) -> dict[str, VersionCounts]:
    if n is None or e is None or b is None:
        return {}
    return {f"{prefix}{i}": VersionCounts(int(n[rep, i]), int(e[rep, i]), tuple(int(x) for x in b[rep, i]))
            for i in range(n.shape[1]) if n[rep, i] > 0}


def run_releases(judge: Judge, traffic: TrafficSource, reps: int, horizon: int = HORIZON,
                 schedule: Schedule | None = None, pods: bool = True) -> list[Release]:
    """`reps` releases side by side for up to `horizon` intervals: each interval the traffic at every
    replication's weight, the judge's update, the controller's action. Decided releases stop. `pods`: the
    judge sees per-pod counts (a source with a pod label)."""
    schedule = schedule or Schedule()
    states = [judge.initial_state(services=[SERVICE]) for _ in range(reps)]
    if schedule.history > 0:  # the stable version alone, the minutes before the release (weight 0)
        before = [traffic.minute(np.zeros(reps)) for _ in range(schedule.history)]
        states = [judge.prime(states[i], [{SERVICE: observation(m, i, t - schedule.history, 0.0, pods)}
                                          for t, m in enumerate(before)]) for i in range(reps)]
    releases = [Release(warming=schedule.warmup) for _ in range(reps)]
    for t in range(horizon):
        live = [i for i, r in enumerate(releases) if r.outcome is Outcome.UNDECIDED]
        if not live:
            break
        weights = np.array([schedule.steps[r.step] for r in releases], dtype=np.float64)
        minute = traffic.minute(weights)
        for i in live:
            releases[i].served += int(minute.n_c[i])
            if releases[i].warming > 0:  # served, not judged; the minute counts toward the time to decide
                releases[i].warming -= 1
                releases[i].actions.append((int(weights[i]), "-", "warm-up"))
                continue
            obs = observation(minute, i, t, float(weights[i]), pods)
            states[i], decision = judge.update(states[i], {SERVICE: obs})
            pending = bool(decision.details.get("safetyPending", False))
            releases[i].pod_warmup = bool(decision.details.get("podWarmup", False))
            act(schedule, releases[i], decision.verdict, pending, obs.canary.requests)
            if releases[i].outcome is Outcome.ROLLED_BACK and releases[i].cause in ("fail", "errors"):
                releases[i].cause += _deciding_check(decision)
    return releases


def _deciding_check(decision: Decision) -> str:
    """":check" of the first check with the decision's fail or error verdict ("" when no check has it)."""
    named = [c.check for c in decision.checks if c.verdict is decision.verdict]
    return f":{named[0]}" if named else ""


def summarise(releases: list[Release], schedule: Schedule | None = None) -> dict[str, Any]:
    """Shares of each outcome (%), median minutes to the decision, what decided, where undecided ones hold."""
    schedule = schedule or Schedule()
    n = len(releases)

    def median(outcome: Outcome | None) -> float | None:
        times = [r.decided_at for r in releases if r.decided_at is not None and outcome in (None, r.outcome)]
        return float(np.median(times)) if times else None

    share = {o: 100.0 * sum(r.outcome is o for r in releases) / n for o in Outcome}
    served = [r.served for r in releases if r.outcome is Outcome.ROLLED_BACK]
    return {
        "promotedPct": share[Outcome.PROMOTED],
        "rolledBackPct": share[Outcome.ROLLED_BACK],
        "undecidedPct": share[Outcome.UNDECIDED],
        "medianDecisionMinute": median(None),
        "medianPromotionMinute": median(Outcome.PROMOTED),
        "medianRollbackMinute": median(Outcome.ROLLED_BACK),
        "rolledBackByMinute30Pct": 100.0 * sum(r.outcome is Outcome.ROLLED_BACK and r.decided_at is not None
                                               and r.decided_at <= ROLLBACK_BY_MINUTE for r in releases) / n,
        "rollbackCauses": dict(Counter(r.cause for r in releases if r.outcome is Outcome.ROLLED_BACK)),
        "undecidedAtWeight": {str(k): v for k, v in sorted(Counter(
            schedule.steps[r.step] for r in releases if r.outcome is Outcome.UNDECIDED).items())},
        "meanIntervalsJudged": float(np.mean([sum(a != "warm-up" for _, _, a in r.actions) for r in releases])),
        # The users a rolled-back canary served before it was taken off (a regression's cost), median.
        "medianCanaryRequestsBeforeRollback": float(np.median(served)) if served else None,
    }


@dataclass(frozen=True)
class Cell:
    """One world x scenario x rate of the table, with its releases' count, horizon and seed."""

    world: str
    scenario: str
    rate: int
    reps: int
    horizon: int
    seed: int
    alpha: float
    warmup: int = 1
    pods: bool = True
    analysis: str = "{}"  # spec.analysis fields beside alpha, as JSON (`--analysis`)
    history: int = 30  # minutes of the stable version's traffic before the release given to the judge


def run_cell(cell: Cell) -> dict[str, Any]:
    """One world x scenario x rate: `reps` releases judged by SequentialJudge with the default analysis."""
    started = time.perf_counter()
    cfg = replace(AnalysisConfig.from_dict({**json.loads(cell.analysis), "alpha": cell.alpha}),
                  pod_warmup_intervals=cell.warmup)
    traffic = Traffic(cell.world, np.random.default_rng(cell.seed), cell.reps, cell.rate, SCENARIOS[cell.scenario],
                      cell.horizon)
    schedule = Schedule(warmup=cell.warmup, history=cell.history)
    releases = run_releases(SequentialJudge(cfg), traffic, cell.reps, cell.horizon, schedule, pods=cell.pods)
    return {"world": cell.world, "scenario": cell.scenario, "rate": cell.rate, "reps": cell.reps,
            "horizon": cell.horizon, "seed": cell.seed, "warmup": cell.warmup, "history": cell.history,
            "pods": cell.pods,
            "analysis": json.loads(cell.analysis),
            **summarise(releases, schedule),
            "seconds": time.perf_counter() - started}


def cells(worlds: tuple[str, ...], scenarios: tuple[str, ...], rates: tuple[int, ...], reps: int, horizon: int,
          seed: int, alpha: float, warmup: int = 1, pods: bool = True, analysis: str = "{}", history: int = 30
          ) -> list[Cell]:
    """Every world x scenario x rate, each with its own seed (the same across runs of the same grid)."""
    out = []
    for w in worlds:
        for s in scenarios:
            for r in rates:
                cell_seed = seed + 10_000 * WORLD_NAMES.index(w) + 100 * list(SCENARIOS).index(s) + r
                out.append(Cell(w, s, r, reps, horizon, cell_seed, alpha, warmup, pods, analysis, history))
    return out


def print_table(results: list[dict[str, Any]], rates: tuple[int, ...]) -> None:
    """Per world x scenario, per rate: promoted / rolled back / undecided (%) and the median decision minute."""
    print("per rate: promoted% / rolled back% / undecided% at the horizon, median minute of the decision")
    head = f"{'world':11} {'scenario':8} " + " ".join(f"{f'{r} req/s':>22}" for r in rates)
    print(head)
    by_key = {(c["world"], c["scenario"], c["rate"]): c for c in results}
    for w, s in dict.fromkeys((c["world"], c["scenario"]) for c in results):
        vals = []
        for r in rates:
            c = by_key.get((w, s, r))
            if c is None:
                vals.append(f"{'-':>22}")
                continue
            m = c["medianDecisionMinute"]
            vals.append(f"{c['promotedPct']:4.0f}/{c['rolledBackPct']:4.0f}/{c['undecidedPct']:4.0f}"
                        f" {'-' if m is None else f'{m:.0f}m':>6}".rjust(22))
        print(f"{w:11} {s:8} " + " ".join(vals))


def _names(text: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [x for x in names if x not in known]
    if unknown or not names:
        raise SystemExit(f"unknown {what}: {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")
    return names


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"only worlds {','.join(QUICK_WORLDS)}, {QUICK_REPS} releases per cell")
    parser.add_argument("--worlds", default=None, help=f"comma-separated, of {', '.join(WORLD_NAMES)} (default all)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--rates", default=",".join(map(str, RATES)), help="requests per second, comma-separated")
    parser.add_argument("--reps", type=int, default=None, help=f"releases per cell (default {REPS})")
    parser.add_argument("--horizon", type=int, default=None, help=f"minutes (default {HORIZON})")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1,
                        help="minutes after each weight change not judged (strategy.canary.warmup; default 1, one "
                             "interval, as the spec's)")
    parser.add_argument("--history", type=int, default=30,
                        help="minutes of the stable version's own traffic before the release given to the judge "
                             "(analysis.historyIntervals, SequentialJudge.prime; default 30, as the spec's)")
    parser.add_argument("--no-pods", action="store_true",
                        help="the judge sees no per-pod counts (a metrics source without a pod label)")
    parser.add_argument("--analysis", default="{}",
                        help='spec.analysis fields to judge with, as JSON, e.g. \'{"errorRatioTolerance": 1.25}\'')
    parser.add_argument("--out", default=None,
                        help="result file (default bench/results/releases.json, releases_quick.json with --quick)")
    opts = parser.parse_args(argv)
    if opts.out is None:
        opts.out = str(Path(__file__).parent / "results" / ("releases_quick.json" if opts.quick else "releases.json"))
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    worlds = _names(opts.worlds, WORLD_NAMES, "world") if opts.worlds else (QUICK_WORLDS if opts.quick else WORLD_NAMES)
    scenarios = _names(opts.scenarios, tuple(SCENARIOS), "scenario")
    rates = tuple(int(r) for r in opts.rates.split(","))
    reps: int = opts.reps or (QUICK_REPS if opts.quick else REPS)
    horizon: int = opts.horizon or HORIZON
    started = time.perf_counter()
    work = cells(worlds, scenarios, rates, reps, horizon, opts.seed, opts.alpha, opts.warmup, not opts.no_pods,
                 json.dumps(json.loads(opts.analysis), sort_keys=True), opts.history)
    # The longest cells first (regressions that hold, low rates), for load balance.
    work.sort(key=lambda c: (c.scenario in ("aa", "lat10"), -c.rate), reverse=True)
    if opts.workers > 1:
        with multiprocessing.Pool(opts.workers) as pool:
            results = pool.map(run_cell, work, chunksize=1)
    else:
        results = [run_cell(c) for c in work]
    order = {(w, s, r): i for i, (w, s, r) in enumerate((w, s, r) for w in worlds for s in scenarios for r in rates)}
    results.sort(key=lambda c: order[(c["world"], c["scenario"], c["rate"])])
    print_table(results, rates)
    elapsed = time.perf_counter() - started
    print(f"{len(results)} cells x {reps} releases, horizon {horizon} min: {elapsed:.0f} s with {opts.workers} workers")
    result = {
        "command": "python -m bench.releases " + " ".join(argv if argv is not None else sys.argv[1:]),
        "schedule": asdict(Schedule(warmup=opts.warmup, history=opts.history)), "alpha": opts.alpha, "reps": reps,
        "horizon": horizon,
        "pods": not opts.no_pods,
        "worldParameters": parameters(),
        "elapsedSeconds": elapsed, "cells": results,
    }
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(result, indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
