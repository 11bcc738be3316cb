"""Warm-up per pod: the sequential judge leaves a canary pod out of the first intervals it serves in.

A step's scale-up (or an autoscaler, or a replacement) adds canary pods whose first minutes are not the code's
steady behaviour (cold caches, JIT, connection pools). When the metrics name the pods, the judge leaves such a pod
out of every check but the sample ratio for `pod_warmup_intervals` intervals and judges the pods that were
already serving at once, so a weight change need not cost a whole unjudged interval (docs/analysis.md, "Warm-up").
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from analysis.config import AnalysisConfig
from analysis.observations import ISTIO_BUCKETS_MS, IntervalObservation, Verdict, VersionCounts
from analysis.sequential import SequentialJudge

N = len(ISTIO_BUCKETS_MS)
CONFIG = AnalysisConfig(history_intervals=0, min_canary_requests=50, pod_warmup_intervals=1)


def counts(requests: int, errors: int, bucket: int = 5) -> VersionCounts:
    b = [0] * N
    b[bucket] = requests
    return VersionCounts(requests, errors, tuple(b))


def interval(t: int, weight: float, stable: dict[str, VersionCounts], canary: dict[str, VersionCounts]
             ) -> IntervalObservation:
    total = VersionCounts.empty(N)
    for c in stable.values():
        total = total + c
    served = VersionCounts.empty(N)
    for c in canary.values():
        served = served + c
    return IntervalObservation(60.0 * t, weight, total, served, baseline_pods=stable, canary_pods=canary)


def fleet(requests: int, errors: list[int]) -> dict[str, VersionCounts]:
    return {f"v1-{i}": counts(requests, e) for i, e in enumerate(errors)}


def test_a_pod_first_seen_after_the_first_interval_is_left_out_of_its_first_one() -> None:
    judge = SequentialJudge(CONFIG)
    state = judge.initial_state(services=["search"])
    stable = fleet(500, [2, 3, 2, 3, 2, 3, 2, 3, 2, 3])
    state, first = judge.update(state, {"search": interval(1, 10, stable, {"v2-a": counts(500, 2)})})
    assert first.details["canaryPodsWarming"] == {} and first.details["podWarmup"] is True
    # The step's new pod serves half the canary's traffic, cold: 60 errors in 500.
    two = {"v2-a": counts(500, 3), "v2-b": counts(500, 60)}
    state, second = judge.update(state, {"search": interval(2, 20, stable, two)})
    assert second.details["canaryPodsWarming"] == {"search": ["v2-b"]}
    svc = state["services"]["search"]
    assert svc["canary"]["requests"] == 1000 and svc["canary"]["errors"] == 5  # v2-b's interval left out
    assert svc["errorRate"]["events"][0] == 5
    assert svc["sampleRatio"]["expected"] == (5000 + 500) * 0.10 + (5000 + 1000) * 0.20  # all it served
    state, third = judge.update(state, {"search": interval(3, 20, stable, {"v2-a": counts(500, 2),
                                                                              "v2-b": counts(500, 3)})})
    assert third.details["canaryPodsWarming"] == {} and state["services"]["search"]["canary"]["errors"] == 10
    assert set(state["services"]["search"]["canaryPodsSince"]) == {"v2-a", "v2-b"}


def test_cold_pods_errors_roll_back_identical_code_unless_they_warm_up_first() -> None:
    """Identical versions; each step's new pod fails 8 times as often in its first interval. Judged from its
    first request, that reads as a regression; left out while it warms up, it does not. Whole-interval warm-up
    after each step (the window opened `warmup` after the change) left those minutes out too, the pods already
    serving with them."""
    rng = np.random.default_rng(7)
    outcomes = {}
    for intervals in (0, 1):
        judge = SequentialJudge(replace(CONFIG, pod_warmup_intervals=intervals, non_inferiority_margin=None,
                                        absolute_non_inferiority_margin=None, latency_non_inferiority_margin=None))
        state, verdicts = judge.initial_state(services=["search"]), []
        canary: dict[str, int] = {}  # pod -> intervals served
        for t in range(1, 31):
            weight = min(10 * (1 + (t - 1) // 3), 50)  # a new step every 3 intervals, one more pod each
            if len(canary) < weight // 10:
                canary[f"v2-{len(canary)}"] = 0
            per_pod = 6000 * weight // 100 // len(canary)
            pods = {p: counts(per_pod, int(rng.binomial(per_pod, 0.04 if age == 0 else 0.005)))
                    for p, age in canary.items()}
            stable = {f"v1-{i}": counts(6000 * (100 - weight) // 1000, int(rng.binomial(6000 * (100 - weight) // 1000,
                                                                                      0.005))) for i in range(10)}
            state, decision = judge.update(state, {"search": interval(t, weight, stable, pods)})
            verdicts.append(decision.verdict)
            canary = {p: age + 1 for p, age in canary.items()}
        outcomes[intervals] = verdicts
    assert Verdict.FAIL in outcomes[0]  # cold pods judged: identical code rolled back
    assert Verdict.FAIL not in outcomes[1] and Verdict.ERROR not in outcomes[1]  # no sample-ratio alarm either


def test_pods_are_told_apart_only_when_every_service_names_them_and_warm_up_is_on() -> None:
    stable = fleet(500, [2] * 10)
    named = interval(1, 10, stable, {"v2-a": counts(500, 2)})
    unnamed = replace(named, canary_pods={})
    for config, observations, told in (
            (CONFIG, {"a": named, "b": named}, True),
            (CONFIG, {"a": named, "b": unnamed}, False),
            (CONFIG, {"a": named}, False),  # b gave nothing this interval
            (replace(CONFIG, pod_warmup_intervals=0), {"a": named, "b": named}, False)):
        judge = SequentialJudge(config)
        _, decision = judge.update(judge.initial_state(services=["a", "b"]), observations)
        assert decision.details["podWarmup"] is told


def test_every_pod_warming_leaves_the_interval_unjudged_and_says_why() -> None:
    """An autoscaler (or a crash) replaced every canary pod: nothing of the interval is judged."""
    judge = SequentialJudge(CONFIG)
    stable = fleet(500, [2] * 10)
    state, _ = judge.update(judge.initial_state(services=["search"]),
                            {"search": interval(1, 10, stable, {"v2-a": counts(500, 2)})})
    state, decision = judge.update(state, {"search": interval(2, 10, stable, {"v2-z": counts(500, 40)})})
    assert decision.verdict is Verdict.INCONCLUSIVE
    assert decision.reason == "search: every canary pod that served this interval is warming up (1)"
    assert state["services"]["search"]["canary"]["requests"] == 500
