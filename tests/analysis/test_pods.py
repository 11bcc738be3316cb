"""Pod placement: the spread of identical pods is learnt from the baseline's pods, and a canary is neither
rolled back nor promoted on its few pods' luck (analysis/pods.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from analysis.config import AnalysisConfig
from analysis.counters import Series, window_counts
from analysis.observations import IntervalObservation, MetricsQuery, Verdict, VersionCounts, interval_of
from analysis.pods import pod_shift_increments, pod_variance
from analysis.sequential import SequentialJudge
from bench.worlds import BOUNDS, bucket_probs

FLEET = 10


def fleet_speeds(sigma: float) -> np.ndarray:
    """Ten pods whose speeds spread with log-sd ~ sigma around 1 (fixed, so the tests do not depend on luck)."""
    z = np.linspace(-1.6, 1.6, FLEET)
    return np.exp(sigma * z / z.std())


def pod_counts(rng: np.random.Generator, speeds: np.ndarray, per_pod: int, error_rate: float = 0.005
               ) -> dict[str, VersionCounts]:
    buckets = [rng.multinomial(rng.poisson(per_pod), p) for p in bucket_probs(speeds)]
    return {f"pod-{i}": VersionCounts(int(b.sum()), int(rng.binomial(int(b.sum()), error_rate)),
                                      tuple(int(x) for x in b))
            for i, b in enumerate(buckets)}


def observation(rng: np.random.Generator, minute: int, fleet: np.ndarray, canary: np.ndarray,
                with_pods: bool) -> IntervalObservation:
    base, can = pod_counts(rng, fleet, 180), pod_counts(rng, canary, 200)
    total_b = sum(base.values(), VersionCounts.empty(len(BOUNDS)))
    total_c = sum(can.values(), VersionCounts.empty(len(BOUNDS)))
    return IntervalObservation(60.0 * minute, 10.0, total_b, total_c, BOUNDS,
                               baseline_pods=base if with_pods else {}, canary_pods=can if with_pods else {})


def run(seed: int, canary_speed: float, with_pods: bool, minutes: int = 90, sigma: float = 0.04
        ) -> tuple[Verdict, dict]:
    """One release at a 10% step: a fleet of ten pods, a canary of one pod `canary_speed` times the fleet's
    typical speed; the latency shift is the only check. The last decision and the state."""
    rng = np.random.default_rng(seed)
    judge = SequentialJudge(AnalysisConfig(checks=("latencyShift",)))
    state = judge.initial_state(services=["search"], bounds_ms=BOUNDS)
    fleet = fleet_speeds(sigma)
    canary = np.array([canary_speed])
    verdict = Verdict.INCONCLUSIVE
    for minute in range(1, minutes + 1):
        state, decision = judge.update(state, {"search": observation(rng, minute, fleet, canary, with_pods)})
        verdict = decision.verdict
        if verdict is Verdict.FAIL:
            break
    return verdict, state


def test_the_pod_spread_is_estimated_without_bias() -> None:
    rng = np.random.default_rng(7)
    sigma = 0.04
    estimates = []
    for _ in range(40):
        speeds = np.exp(rng.normal(0.0, sigma, FLEET))
        s, v = np.zeros(FLEET), np.zeros(FLEET)
        for _minute in range(30):
            az, a2 = pod_shift_increments(rng.multinomial(200, bucket_probs(speeds)))
            s, v = s + az, v + a2
        estimates.append(float(pod_variance(s, v)))
    # The truth on the Delta scale: a pod 1 sd slower than the others shifts Delta by about this much.
    p_slow, p_base = bucket_probs(np.array([math.exp(sigma), 1.0]))
    below = np.cumsum(p_base) - p_base
    truth = (2.0 * float(np.sum(p_slow * (below + 0.5 * p_base))) - 1.0) ** 2
    assert 0.7 * truth < float(np.mean(estimates)) < 1.3 * truth


def test_identical_pods_give_a_spread_near_zero() -> None:
    rng = np.random.default_rng(8)
    s, v = np.zeros(FLEET), np.zeros(FLEET)
    for _minute in range(60):
        az, a2 = pod_shift_increments(rng.multinomial(200, bucket_probs(np.ones(FLEET))))
        s, v = s + az, v + a2
    # 0.01 on the Delta scale is a quarter of a 4% pod spread's
    assert math.sqrt(float(pod_variance(s, v))) < 0.01


def test_one_pod_is_no_spread() -> None:
    assert float(pod_variance(np.array([3.0]), np.array([2.0]))) == 0.0
    assert float(pod_variance(np.array([3.0, 0.0]), np.array([2.0, 0.0]))) == 0.0


@pytest.mark.timeout(120)
def test_a_canary_on_a_slow_pod_is_not_rolled_back_when_the_fleet_shows_such_spread() -> None:
    # A pod 9% slower than the fleet's typical one, in a fleet whose pods spread by 4%: identical code on an
    # unlucky node. Without per-pod counts the judge cannot tell it from a regression (the control).
    without, _ = run(11, 1.09, with_pods=False)
    assert without is Verdict.FAIL
    verdict, state = run(11, 1.09, with_pods=True)
    assert verdict is not Verdict.FAIL
    shift = state["services"]["search"]["latencyShift"]
    assert len(shift["pods"]) == FLEET and shift["wk"] > 0
    json.dumps(state)  # the state goes into a Kubernetes status as it is


@pytest.mark.timeout(120)
def test_a_real_regression_on_one_pod_is_still_rolled_back() -> None:
    verdict, _ = run(12, 1.35, with_pods=True)
    assert verdict is Verdict.FAIL


@pytest.mark.timeout(120)
def test_the_estimate_and_its_interval_show_the_placement() -> None:
    judge = SequentialJudge(AnalysisConfig(checks=("latencyShift",)))
    rng = np.random.default_rng(13)
    fleet, canary = fleet_speeds(0.04), np.array([1.0])
    widths = {}
    for with_pods in (False, True):
        state = judge.initial_state(services=["search"], bounds_ms=BOUNDS)
        for minute in range(1, 61):
            state, decision = judge.update(state, {"search": observation(rng, minute, fleet, canary, with_pods)})
        (check,) = decision.checks
        lo, hi = check.estimates["deltaConfidenceSequence"]
        widths[with_pods] = hi - lo
        spread = check.estimates["podSpread"]
        assert (spread > 0.02) if with_pods else (spread == 0.0)
    # 60 minutes of 200 canary requests pin a fixed effect down; one pod's placement does not shrink with data.
    assert widths[True] > 2 * widths[False]


def test_prometheus_series_are_counted_per_pod() -> None:
    query = MetricsQuery(namespace="shop", services=("search",), versions=("v1", "v2"))

    def series(version: str, pod: str, value: float, **extra: str) -> Series:
        labels = {"destination_service_name": "search", "destination_version": version, "reporter": "destination",
                  "destination_service_namespace": "shop", "response_code": "200", **extra}
        if pod:
            labels["pod"] = pod
        return Series(labels, ((0.0, 0.0), (60.0, value)))

    requests = [series("v1", "a", 30), series("v1", "b", 50), series("v2", "c", 7),
                series("v2", "c", 2, response_code="503")]
    buckets = [series(v, p, n, le=str(le)) for v, p, n in (("v1", "a", 30), ("v1", "b", 50), ("v2", "c", 9))
               for le in ("25", "+Inf")]
    window = window_counts(query, requests, buckets, 0.0, 60.0)
    assert window.counts[("search", "v1")].requests == 80
    assert {p: c.requests for p, c in window.pods[("search", "v1")].items()} == {"a": 30, "b": 50}
    assert window.pods[("search", "v2")]["c"].errors == 2
    obs = interval_of(window, "search", "v1", "v2", 60.0, 10.0)
    assert set(obs.baseline_pods) == {"a", "b"} and set(obs.canary_pods) == {"c"}
    # A version with a series that names no pod is not broken down (its pods are unknown).
    unnamed = window_counts(query, [*requests, series("v1", "", 5)], buckets, 0.0, 60.0)
    assert ("search", "v1") not in unnamed.pods
    assert unnamed.counts[("search", "v1")].requests == 85


@pytest.mark.timeout(120)
def test_when_only_more_pods_can_show_safety_the_reason_says_so() -> None:
    # Pods that spread by 10%: one canary pod cannot be told from its placement within the 0.1 margin,
    # however many requests it serves, so no request count is promised.
    rng = np.random.default_rng(16)
    judge = SequentialJudge(AnalysisConfig(checks=("latencyShift",)))
    state = judge.initial_state(services=["search"], bounds_ms=BOUNDS)
    fleet, canary = fleet_speeds(0.10), np.array([1.0])
    for minute in range(1, 31):
        state, decision = judge.update(state, {"search": observation(rng, minute, fleet, canary, True)})
    assert decision.verdict is Verdict.INCONCLUSIVE
    assert "more canary pods can show it" in decision.reason
    (check,) = decision.checks
    assert check.estimates["safety"]["requestsNeeded"] is None
