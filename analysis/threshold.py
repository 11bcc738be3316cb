"""A Flagger-style threshold judge: absolute checks on the canary alone, interval by interval.

Each interval every service's canary must keep its success rate >= `minSuccessRate` % and its p99 latency
<= `maxP99Ms`; every interval in which some check fails adds one to a failed-checks counter, and the
judge fails once the counter reaches `failedChecks` (Flagger's `threshold`). The counter is not reset by
good intervals, as in Flagger. An interval without canary requests is not a check (inconclusive).
It ignores the baseline, so its false-rollback rate depends on traffic volume; it is here for users who
want it and as a baseline in the benchmark.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from analysis.config import AnalysisConfig, ThresholdConfig
from analysis.decisions import CheckResult, Decision
from analysis.histogram import quantiles
from analysis.observations import ISTIO_BUCKETS_MS, IntervalObservation, InvalidObservation, Verdict, VersionCounts


def interval_failures(
    requests: npt.ArrayLike,
    errors: npt.ArrayLike,
    buckets: npt.ArrayLike,
    bounds_ms: Sequence[float],
    cfg: ThresholdConfig,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(success-rate check failed, p99 check failed) for one interval of the canary (vectorised); an
    interval without requests fails neither."""
    n = np.asarray(requests, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        success = np.where(n > 0, 100.0 * (1.0 - np.asarray(errors, dtype=np.float64) / np.maximum(n, 1)), 100.0)
    p99 = quantiles(buckets, bounds_ms, 0.99)
    return (n > 0) & (success < cfg.min_success_rate), (n > 0) & (p99 > cfg.max_p99_ms)


class ThresholdJudge:
    name = "threshold"

    def __init__(self, config: AnalysisConfig) -> None:
        self.config = config
        self.cfg = config.threshold

    def initial_state(
        self,
        reference: Mapping[str, VersionCounts] | VersionCounts | None = None,
        services: Sequence[str] | None = None,
        bounds_ms: Sequence[float] = ISTIO_BUCKETS_MS,
    ) -> dict[str, Any]:
        return {
            "judge": self.name,
            "version": 1,
            "ticks": 0,
            "t": None,
            "failedChecks": 0,
            "canaryRequests": {},
        }

    def prime(self, state: Mapping[str, Any], history: Sequence[Mapping[str, IntervalObservation]]
              ) -> dict[str, Any]:
        """Nothing is learnt from the stable version's history: a copy of `state`."""
        return copy.deepcopy(dict(state))

    def update(
        self, state: Mapping[str, Any], observations: Mapping[str, IntervalObservation]
    ) -> tuple[dict[str, Any], Decision]:
        try:
            for name, obs in observations.items():
                obs.validate(f"observations[{name}]")
        except InvalidObservation as exc:
            return copy.deepcopy(dict(state)), Decision(Verdict.ERROR, f"unusable data: {exc}", judge=self.name)
        new = copy.deepcopy(dict(state))
        new["ticks"] += 1
        new["t"] = max((o.t for o in observations.values()), default=new["t"])
        checks: list[CheckResult] = []
        failed_now = False
        for name, obs in observations.items():
            c = obs.canary
            new["canaryRequests"][name] = new["canaryRequests"].get(name, 0) + c.requests
            bad_rate, bad_p99 = interval_failures(c.requests, c.errors, c.buckets, obs.bounds_ms, self.cfg)
            p99 = float(quantiles(c.buckets, obs.bounds_ms, 0.99))
            rate = 100.0 * (1 - c.errors / c.requests) if c.requests else math.nan
            for check, bad, value, limit in (
                ("successRate", bool(bad_rate), rate, self.cfg.min_success_rate),
                ("latencyP99", bool(bad_p99), p99, self.cfg.max_p99_ms),
            ):
                checks.append(
                    CheckResult(
                        name,
                        check,
                        Verdict.FAIL if bad else Verdict.PASS,
                        samples={"canary": c.requests},
                        estimates={"value": value, "limit": limit},
                    )
                )
                failed_now |= bad
        new["failedChecks"] += int(failed_now)
        details = {"failedChecks": new["failedChecks"], "threshold": self.cfg.failed_checks}
        if new["failedChecks"] >= self.cfg.failed_checks:
            verdict, reason = Verdict.FAIL, f"{new['failedChecks']} failed checks reached the threshold"
        elif any(o.canary.requests == 0 for o in observations.values()) or not observations:
            verdict, reason = Verdict.INCONCLUSIVE, "no canary requests in this interval"
        elif failed_now:
            verdict, reason = (
                Verdict.INCONCLUSIVE,
                f"check failed ({new['failedChecks']} of {self.cfg.failed_checks})",
            )
        elif min(new["canaryRequests"].values()) < self.config.min_canary_requests:
            verdict, reason = Verdict.INCONCLUSIVE, "not enough canary requests yet"
        else:
            verdict, reason = Verdict.PASS, "all checks within limits"
        return new, Decision(verdict, reason, checks, judge=self.name, t=new["t"], details=details)
