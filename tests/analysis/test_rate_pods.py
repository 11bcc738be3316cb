"""Pod placement for the rate checks: the spread of the pods' error rates is learnt from the baseline's pods, and
a canary is not rolled back for its one pod failing a little more often than the fleet's average, while a real
regression still is (analysis/pods.py, `rate_placement` in analysis/sequential.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from analysis.config import AnalysisConfig
from analysis.observations import IntervalObservation, Verdict, VersionCounts
from analysis.pods import fold_rate_pods, rate_pod_increments, rate_pod_variance, rate_tau2_of
from analysis.sequential import SequentialJudge
from bench.worlds import BOUNDS, bucket_probs

FLEET = 10
PROBS = bucket_probs(1.0)


def fleet_factors(sigma: float) -> np.ndarray:
    """Ten pods' error-rate factors, spread with sd ~ sigma around 1 (fixed, so the tests do not depend on luck)."""
    z = np.linspace(-1.6, 1.6, FLEET)
    return np.asarray(1.0 + sigma * z / z.std())


def spread_of(factors: np.ndarray) -> float:
    """tau^2 as the estimator defines it: the variance of the pods' factors relative to their mean."""
    return float(np.var(factors / factors.mean()))


def pods(rng: np.random.Generator, factors: np.ndarray, per_pod: int, rate: float, burst: float = 1.0
         ) -> dict[str, VersionCounts]:
    out = {}
    for i, f in enumerate(factors):
        n = int(rng.poisson(per_pod))
        out[f"pod-{i}"] = VersionCounts(n, int(rng.binomial(n, min(rate * f * burst, 1.0))),
                                        tuple(int(x) for x in rng.multinomial(n, PROBS)))
    return out


def minute_of(rng: np.random.Generator, fleet: np.ndarray, canary: np.ndarray, rate: float, minute: int
              ) -> IntervalObservation:
    base, can = pods(rng, fleet, 180, rate), pods(rng, canary, 200, rate)
    total = VersionCounts.empty(len(BOUNDS))
    return IntervalObservation(60.0 * minute, 10.0, sum(base.values(), total), sum(can.values(), total), BOUNDS,
                               baseline_pods=base, canary_pods={f"c-{p}": c for p, c in can.items()})


def release(seed: int, canary_factor: float, with_pods: bool, minutes: int = 90) -> tuple[Verdict, dict]:
    """A 10% step of an errors-only judge: a fleet of ten pods whose error rates spread by 20%, a canary of one
    pod `canary_factor` times the fleet's mean rate (5%). The first fail, or the last decision; and the state."""
    rng = np.random.default_rng(seed)
    judge = SequentialJudge(AnalysisConfig(checks=("errorRate",)))
    state = judge.initial_state(services=["search"], bounds_ms=BOUNDS)
    fleet = fleet_factors(0.2)
    verdict = Verdict.INCONCLUSIVE
    for minute in range(1, minutes + 1):
        obs = minute_of(rng, fleet, np.array([canary_factor]), 0.05, minute)
        if not with_pods:
            obs = IntervalObservation(obs.t, obs.weight, obs.baseline, obs.canary, BOUNDS)
        state, decision = judge.update(state, {"search": obs})
        verdict = decision.verdict
        if verdict is Verdict.FAIL:
            break
    return verdict, state


def test_the_pods_rate_spread_is_estimated_without_bias() -> None:
    rng = np.random.default_rng(3)
    estimates, truths = [], []
    for _ in range(40):
        factors = np.exp(rng.normal(0.0, 0.2, FLEET))
        sums = np.zeros((3, FLEET))
        for _minute in range(60):
            n = rng.poisson(300, FLEET)
            sums += np.stack(rate_pod_increments(rng.binomial(n, 0.02 * factors), n))
        estimates.append(float(rate_pod_variance(*sums)))
        truths.append(spread_of(factors))
    assert 0.75 < float(np.mean(estimates)) / float(np.mean(truths)) < 1.25


def test_bursts_the_pods_share_are_no_spread() -> None:
    # Every pod's rate multiplied each minute by one Gamma factor (CV 1): the count per minute varies far more
    # than binomially, but conditioned on the minute's total the pods are alike.
    rng = np.random.default_rng(4)
    sums: dict[str, list[float]] = {}
    for _minute in range(120):
        burst = float(rng.gamma(1.0, 1.0))
        minute = pods(rng, np.ones(FLEET), 300, 0.02, burst)
        fold_rate_pods(sums, {p: (c.errors, c.requests) for p, c in minute.items()})
    assert len(sums) == FLEET
    # A 20% pod spread is tau^2 = 0.04; this is a twentieth of it.
    assert rate_tau2_of(sums) < 0.002


def test_one_pod_is_no_spread() -> None:
    assert float(rate_pod_variance(np.array([5.0]), np.array([3.0]), np.array([2.9]))) == 0.0
    sums: dict[str, list[float]] = {}
    fold_rate_pods(sums, {"only": (4, 100)})
    assert sums == {} and rate_tau2_of(sums) == 0.0
    e, m, b = rate_pod_increments([4, 0], [100, 0])
    assert e.tolist() == m.tolist() == b.tolist() == [0.0, 0.0]


@pytest.mark.timeout(120)
def test_a_canary_on_an_error_prone_pod_is_not_rolled_back_when_the_fleet_shows_such_spread() -> None:
    # One pod failing 35% more often than the fleet's mean, in a fleet whose pods spread by 20%: identical code
    # on an unlucky pod. Without per-pod counts the judge cannot tell it from a regression (the control).
    without, _ = release(21, 1.35, with_pods=False)
    assert without is Verdict.FAIL
    verdict, state = release(21, 1.35, with_pods=True)
    assert verdict is not Verdict.FAIL
    rec = state["services"]["search"]["errorRate"]
    assert len(rec["pods"]) == FLEET and rec["wk"] > 0
    json.dumps(state)  # the state goes into a Kubernetes status as it is


@pytest.mark.timeout(120)
def test_a_real_error_regression_on_one_pod_is_still_rolled_back() -> None:
    verdict, _ = release(22, 3.0, with_pods=True)
    assert verdict is Verdict.FAIL


@pytest.mark.timeout(120)
def test_the_view_shows_the_rate_placement_the_e_value_is_divided_by() -> None:
    judge = SequentialJudge(AnalysisConfig(checks=("errorRate",)))
    rng = np.random.default_rng(23)
    state = judge.initial_state(services=["search"], bounds_ms=BOUNDS)
    for minute in range(1, 61):
        state, decision = judge.update(state, {"search": minute_of(rng, fleet_factors(0.2), np.ones(1), 0.05,
                                                                   minute)})
    (check,) = decision.checks
    rec = state["services"]["search"]["errorRate"]
    assert check.estimates["podSpread"] == pytest.approx(math.sqrt(rate_tau2_of(rec["pods"])))
    assert 0.1 < check.estimates["podSpread"] < 0.3
    g = check.estimates["placementFactor"]
    assert g == pytest.approx(1.0 + rate_tau2_of(rec["pods"]) * rec["wk"]) and g > 2.0


def test_the_history_brings_the_pods_spread_into_the_release() -> None:
    judge = SequentialJudge(AnalysisConfig(checks=("errorRate",)))
    rng = np.random.default_rng(24)
    fleet = fleet_factors(0.2)
    history = []
    for minute in range(1, 31):
        base = pods(rng, fleet, 200, 0.05)
        total = sum(base.values(), VersionCounts.empty(len(BOUNDS)))
        history.append({"search": IntervalObservation(60.0 * minute, 0.0, total, VersionCounts.empty(len(BOUNDS)),
                                                      BOUNDS, baseline_pods=base)})
    state = judge.prime(judge.initial_state(services=["search"], bounds_ms=BOUNDS), history)
    learnt = state["priors"]["search"]["errorRatePods"]
    assert len(learnt) == FLEET and rate_tau2_of(learnt) > 0.01
    state, _ = judge.update(state, {"search": minute_of(rng, fleet, np.ones(1), 0.05, 31)})
    rec = state["services"]["search"]["errorRate"]
    # The release's first interval is judged with the spread the fleet showed before it.
    assert rate_tau2_of(rec["pods"]) == pytest.approx(rate_tau2_of(learnt), rel=0.3)
    assert rec["wk"] > 0
