"""Decision records as the controller writes them: the real sequential judge's checks and estimates for N
services, and a status that has recorded the same look many times (for the status's size budget, its tests and
`bench/status_size.py`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from analysis.config import AnalysisConfig
from analysis.judges import make_judge
from analysis.observations import ISTIO_BUCKETS_MS, IntervalObservation, VersionCounts
from controller.core.status import DecisionRecord, Phase, ReleaseStatus

PROBS = np.array([0, 0, 0.01, 0.04, 0.2, 0.45, 0.2, 0.07, 0.02, 0.01] + [0] * (len(ISTIO_BUCKETS_MS) - 10))


def _counts(rng: np.random.Generator, n: int, error_rate: float) -> VersionCounts:
    buckets = tuple(int(x) for x in rng.multinomial(n, PROBS / PROBS.sum()))
    return VersionCounts(n, int(rng.binomial(n, error_rate)), buckets)


def judged(services: int, looks: int = 3) -> tuple[DecisionRecord, dict[str, Any]]:
    """A decision record as the controller writes it (the real judge's checks and estimates for `services`
    services), and the judge's state after `looks` intervals."""
    judge = make_judge(AnalysisConfig.from_dict({}))
    state, rng = judge.initial_state(), np.random.default_rng(3)
    decision = None
    for t in range(1, looks + 1):
        state, decision = judge.update(state, {
            f"service-{s:02d}": IntervalObservation(60.0 * t, 10.0, _counts(rng, 900, 0.005), _counts(rng, 100, 0.01))
            for s in range(services)})
    assert decision is not None
    counts = {f"service-{s:02d}": {"baseline": {"requests": 900, "errors": 4}, "canary": {"requests": 100, "errors": 1}}
              for s in range(services)}
    record = DecisionRecord(0.0, 0.0, 0, 10, decision.verdict.value, decision.reason, "wait",
                            tuple(decision.to_dict()["checks"]), counts)
    return record, state


def looked(services: int, looks: int) -> tuple[ReleaseStatus, list[DecisionRecord]]:
    """The status after `looks` decisions of `services` services, and the decisions made (one a minute)."""
    record, state = judged(services)
    status = ReleaseStatus(phase=Phase.PROGRESSING, judge_state=state)
    made = [replace(record, at=1000.0 + 60 * i, t=60.0 * i) for i in range(looks)]
    for r in made:
        status = status.with_decision(r)
    return status, made
