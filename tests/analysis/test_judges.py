"""The judges' contract with the controller: config, pure incremental updates, resumable JSON state,
verdict rules and decision records."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from analysis.config import AnalysisConfig, InvalidAnalysisConfig
from analysis.judges import UnknownJudge, make_judge
from analysis.observations import ISTIO_BUCKETS_MS, IntervalObservation, Verdict, VersionCounts

K = len(ISTIO_BUCKETS_MS)
# Most requests between 25 and 100 ms, a few slow ones.
PROBS = np.zeros(K)
PROBS[4:10] = [0.05, 0.55, 0.3, 0.07, 0.02, 0.01]


def counts(rng: np.random.Generator, n: int, error_rate: float, shift: int = 0) -> VersionCounts:
    p = np.roll(PROBS, shift)
    return VersionCounts(n, int(rng.binomial(n, error_rate)), tuple(int(x) for x in rng.multinomial(n, p)))


def interval(
    rng: np.random.Generator,
    t: int,
    n_c: int = 100,
    n_b: int = 900,
    weight: float = 10.0,
    error_c: float = 0.005,
    shift: int = 0,
) -> IntervalObservation:
    return IntervalObservation(60.0 * t, weight, counts(rng, n_b, 0.005), counts(rng, n_c, error_c, shift))


def run(judge_name: str, intervals: list[dict[str, IntervalObservation]], **cfg: object) -> list:
    judge = make_judge(AnalysisConfig.from_dict({"judge": judge_name, **cfg}))
    state = judge.initial_state()
    out = []
    for obs in intervals:
        state, decision = judge.update(state, obs)
        out.append(decision)
    return out


# -- config ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"alpha": 1.5}, "spec.analysis.alpha: 1.5 is not in (0, 1)"),
        ({"alpha": "x"}, "spec.analysis.alpha: 'x' is not a finite number"),
        ({"judge": "magic"}, "spec.analysis.judge: 'magic' is not one of sequential, kayenta, threshold"),
        ({"minCanaryRequests": -1}, "spec.analysis.minCanaryRequests: -1 is less than 0"),
        ({"checks": []}, "spec.analysis.checks: needs at least one check"),
        ({"checks": ["errorRate", "vibes"]}, "spec.analysis.checks[1]: 'vibes' is not one of"),
        ({"kayenta": {"confidenceLevel": 2}}, "spec.analysis.kayenta.confidenceLevel: 2 is not in (0, 1)"),
        ({"threshold": {"failedChecks": 0}}, "spec.analysis.threshold.failedChecks: 0 is less than 1"),
        ({"kayenta": {"marginalScore": 99}}, "spec.analysis.kayenta.marginalScore: 99.0 exceeds passScore"),
        ({"alhpa": 0.1}, "spec.analysis.alhpa: unknown field"),
        ([], "spec.analysis: [] is not an object"),
    ],
)
def test_invalid_config_names_the_field(spec: object, message: str) -> None:
    with pytest.raises(InvalidAnalysisConfig) as err:
        AnalysisConfig.from_dict(spec)
    assert str(err.value).startswith(message)


def test_config_defaults_and_overrides() -> None:
    cfg = AnalysisConfig.from_dict({"errorRatioTolerance": 1.5, "tailThresholdMs": 250})
    assert (cfg.judge, cfg.alpha, cfg.error_ratio_tolerance, cfg.tail_threshold_ms) == ("sequential", 0.05, 1.5, 250)
    assert cfg.with_overrides(judge="kayenta", alpha=0.01).judge == "kayenta"
    with pytest.raises(InvalidAnalysisConfig, match=r"options\.alpha"):
        cfg.with_overrides(alpha=0)


def test_factory_refuses_unknown_judges() -> None:
    with pytest.raises(UnknownJudge, match="'magic' is not one of"):
        make_judge(AnalysisConfig(judge="magic"))


# -- the sequential judge -------------------------------------------------------------------------------


def test_identical_versions_pass_once_shown_within_the_margins_and_records_are_plain_json() -> None:
    rng = np.random.default_rng(1)
    decisions = run("sequential", [{"search": interval(rng, t, n_c=1000, n_b=9000)} for t in range(1, 11)],
                    minCanaryRequests=300)
    # No alarm is not a pass: the first intervals are inconclusive until every check's bound is under its margin.
    assert decisions[0].verdict is Verdict.INCONCLUSIVE and decisions[0].details["safetyPending"]
    assert decisions[0].reason.startswith("not yet shown safe: search ") and "more canary requests" in \
        decisions[1].reason
    assert decisions[-1].verdict is Verdict.PASS and not decisions[-1].details["safetyPending"]
    assert all(c.verdict is Verdict.PASS for c in decisions[-1].checks)
    record = decisions[-1].to_dict()
    json.dumps(record, allow_nan=False)
    by_check = {c["check"]: c for c in record["checks"]}
    assert set(by_check) == {"errorRate", "slowTail", "latencyShift", "sampleRatio"}
    assert by_check["errorRate"]["threshold"] == pytest.approx(80.0)  # 4 checks x 1 service / 0.05
    est = by_check["latencyShift"]["estimates"]
    assert est["p50CanaryMs"] and est["p99BaselineMs"] and -1 <= est["delta"] <= 1
    lo, hi = by_check["errorRate"]["estimates"]["ratioConfidenceSequence"]
    assert lo < 1 < hi
    assert 0 < by_check["errorRate"]["pValue"] <= 1
    safety = by_check["latencyShift"]["estimates"]["safety"]
    assert safety["shown"] and safety["bound"] < safety["margin"] == 0.1 and safety["on"] == "delta"


def test_a_canary_beyond_the_margins_is_never_passed_while_no_alarm_is_raised_yet() -> None:
    rng = np.random.default_rng(12)
    # 1.8x the baseline's error rate: inside the harm test's reach only slowly, outside the safety margins.
    decisions = run("sequential", [{"s": interval(rng, t, n_c=300, n_b=2700, error_c=0.009)} for t in range(1, 21)])
    assert Verdict.PASS not in [d.verdict for d in decisions]
    pending = [d for d in decisions if d.verdict is Verdict.INCONCLUSIVE and d.details.get("safetyPending")]
    assert pending and all("errorRate" in d.reason or "slowTail" in d.reason or "latencyShift" in d.reason
                           for d in pending)


def test_margins_set_to_null_need_no_proof() -> None:
    rng = np.random.default_rng(13)
    ticks = [{"s": interval(rng, t)} for t in range(1, 4)]
    off = {"nonInferiorityMargin": None, "absoluteNonInferiorityMargin": None, "latencyNonInferiorityMargin": None}
    assert run("sequential", ticks, **off)[-1].verdict is Verdict.PASS
    assert run("sequential", ticks)[-1].verdict is Verdict.INCONCLUSIVE


def test_tolerance_centring_is_exact_with_tied_buckets() -> None:
    # 97% of requests in one bucket: the tie-corrected z grows ~3x for the same Delta, and the weight
    # must follow, or a canary exactly at the tolerance is failed with certainty over time.
    from analysis.histogram import rank_sum, shift_weight
    from analysis.sequential import SQRT3

    rng = np.random.default_rng(14)
    base = np.zeros(K)
    base[5], base[6], base[7] = 0.97, 0.02, 0.01
    canary = np.zeros(K)
    canary[5], canary[6], canary[7] = 0.90, 0.06, 0.04
    delta = sum(canary[i] * base[j] * np.sign(i - j) for i in range(K) for j in range(K))
    n_c, n_b = 300, 2700
    c = rng.multinomial(n_c, canary, size=4000)
    b = rng.multinomial(n_b, base, size=4000)
    r = rank_sum(c, b)
    a = shift_weight(n_c, n_b, r.variance)
    estimate = float(np.sum(a * r.z) / (SQRT3 * np.sum(a * a)))
    assert estimate == pytest.approx(delta, rel=0.05)
    untied = shift_weight(n_c, n_b)
    assert float(np.sum(untied * r.z) / (SQRT3 * np.sum(untied * untied))) > 1.5 * delta  # the old bias


def test_per_minute_jitter_is_measured_as_dispersion_and_does_not_fail_identical_versions() -> None:
    from bench.judges import bucket_probs

    rng = np.random.default_rng(15)
    judge = make_judge(AnalysisConfig.from_dict({}))
    state = judge.initial_state()
    verdicts, d = [], None
    for t in range(1, 61):
        # Identical versions whose latency each moves by its own ~3% every minute (GC, neighbours).
        obs = {}
        for version, n in (("baseline", 3000), ("canary", 3000)):
            probs = bucket_probs(float(np.exp(rng.normal(0.0, 0.03))), 0.03)
            buckets = tuple(int(x) for x in rng.multinomial(n, probs))
            obs[version] = VersionCounts(n, int(rng.binomial(n, 0.005)), buckets)
        state, d = judge.update(state, {"s": IntervalObservation(60.0 * t, 50, obs["baseline"], obs["canary"])})
        verdicts.append(d.verdict)
    assert d is not None
    shift = next(c for c in d.checks if c.check == "latencyShift")
    assert shift.estimates["dispersion"] > 2  # more spread between minutes than independent requests give
    assert Verdict.FAIL not in verdicts


def test_clear_error_regression_fails_and_stays_failed() -> None:
    rng = np.random.default_rng(2)
    decisions = run("sequential", [{"search": interval(rng, t, error_c=0.08)} for t in range(1, 8)])
    first = next(i for i, d in enumerate(decisions) if d.verdict is Verdict.FAIL)
    assert first <= 3
    assert all(d.verdict is Verdict.FAIL for d in decisions[first:])
    assert "errorRate" in decisions[first].reason


def test_a_failed_check_says_when_it_crossed_in_tenths_of_a_second() -> None:
    """Read by an operator in events and notifications: `t=33.9`, not every digit of the float."""
    rng = np.random.default_rng(2)
    decisions = run("sequential", [{"search": IntervalObservation(60.0 * t + 1 / 3, 10.0, counts(rng, 900, 0.005),
                                                                  counts(rng, 100, 0.08))} for t in range(1, 8)])
    failed = [c for c in decisions[-1].checks if c.verdict is Verdict.FAIL]
    assert failed and all(re.fullmatch(r"crossed at t=\d+\.\d", c.reason) for c in failed), [c.reason for c in failed]


def test_a_fail_names_every_service_that_carries_the_harm_strongest_first() -> None:
    """Errors of one service that its callers pass on have the same counts at each: all are named and marked,
    not the first in the plan's order; a service with more evidence is named before one with less. The reason
    gives the rates in plain units and when the sum crossed."""
    rng = np.random.default_rng(5)
    shared, decisions = [], []
    for t in range(1, 8):
        passed_on = interval(rng, t, error_c=0.08)  # the same observation at the entry and at the service below
        shared.append({"master-search": passed_on, "ml-infer": passed_on, "keyword": interval(rng, t)})
    decisions = run("sequential", shared)
    d = next(d for d in decisions if d.verdict is Verdict.FAIL)
    failed = {c.service for c in d.checks if c.verdict is Verdict.FAIL}
    assert failed == {"master-search", "ml-infer"}, failed
    assert re.match(r"errorRate worse on master-search and ml-infer \(e-value \S+ each; canary \d+\.\d% vs "
                    r"baseline \d+\.\d% of requests failed\); the regression e-values sum to \S+ >= 240, "
                    r"crossed at t=\d+\.\d s after the release started$", d.reason), d.reason

    rng = np.random.default_rng(6)
    decisions = run("sequential", [{"master-search": interval(rng, t, shift=1), "ml-search": interval(rng, t, shift=2)}
                                   for t in range(1, 8)])
    d = next(d for d in decisions if d.verdict is Verdict.FAIL)
    assert d.reason.startswith("latencyShift worse on ml-search"), d.reason
    assert " ms on the baseline, " in d.reason and " ms on the canary" in d.reason, d.reason


def test_latency_regression_fails() -> None:
    rng = np.random.default_rng(3)
    decisions = run("sequential", [{"search": interval(rng, t, shift=1)} for t in range(1, 8)])
    assert decisions[-1].verdict is Verdict.FAIL


def test_sample_ratio_mismatch_is_an_error_never_a_pass() -> None:
    rng = np.random.default_rng(4)
    # Intended 50%, the canary gets 10%: the routing is not what we think.
    decisions = run("sequential", [{"search": interval(rng, t, n_c=100, n_b=900, weight=50)} for t in range(1, 4)])
    assert decisions[-1].verdict is Verdict.ERROR
    assert decisions[-1].reason.startswith("sample-ratio mismatch on search")


def test_a_slow_canary_that_also_looks_under_served_fails_on_its_latency() -> None:
    """A canary that cannot keep up has answers in flight at every window's end, so it also looks under-served.
    Harm shown goes first (the way out of it, a rollback, is safe whatever was compared), and the reason
    names the mismatch too; without the harm the same mismatch is an `error`, as before."""
    rng = np.random.default_rng(5)
    slow = run("sequential", [{"search": interval(rng, t, n_c=60, n_b=940, shift=2)} for t in range(1, 8)])
    assert slow[-1].verdict is Verdict.FAIL, [d.reason for d in slow]
    assert slow[-1].reason.startswith(("latencyShift worse on search", "slowTail worse on search")), slow[-1].reason
    assert "also a sample-ratio mismatch on search: canary got 6.0%" in slow[-1].reason
    healthy = run("sequential", [{"search": interval(rng, t, n_c=60, n_b=940)} for t in range(1, 8)])
    assert healthy[-1].verdict is Verdict.ERROR and healthy[-1].reason.startswith("sample-ratio mismatch on search")


def test_zero_canary_requests_is_inconclusive_not_error() -> None:
    rng = np.random.default_rng(5)
    ticks = [{"search": interval(rng, 1)}, {"search": interval(rng, 2, n_c=0, weight=0)}]
    decisions = run("sequential", ticks, minCanaryRequests=0)
    assert decisions[1].verdict is Verdict.INCONCLUSIVE
    json.dumps(decisions[1].to_dict(), allow_nan=False)


def test_edge_cases_one_interval_zero_errors_one_bucket() -> None:
    one_bucket = VersionCounts(500, 0, tuple(500 if i == 5 else 0 for i in range(K)))
    small = VersionCounts(50, 0, tuple(50 if i == 5 else 0 for i in range(K)))
    decisions = run("sequential", [{"s": IntervalObservation(60, 10, one_bucket, small)}], minCanaryRequests=10)
    assert decisions[0].verdict is Verdict.INCONCLUSIVE and decisions[0].details["safetyPending"]
    json.dumps(decisions[0].to_dict(), allow_nan=False)


def test_empty_arms_everywhere_give_inconclusive_records_without_nan() -> None:
    empty = VersionCounts.empty(K)
    decisions = run("sequential", [{"s": IntervalObservation(60, 10, empty, empty)}])
    assert decisions[0].verdict is Verdict.INCONCLUSIVE
    text = json.dumps(decisions[0].to_dict(), allow_nan=False)
    assert "NaN" not in text and "Infinity" not in text


def test_huge_counts_do_not_overflow() -> None:
    big = VersionCounts(10**12, 10**9, tuple(10**12 if i == 5 else 0 for i in range(K)))
    worse = VersionCounts(10**11, 10**9, tuple(10**11 if i == 6 else 0 for i in range(K)))
    decisions = run("sequential", [{"s": IntervalObservation(60, 100 / 11, big, worse)}])
    assert decisions[0].verdict is Verdict.FAIL
    json.dumps(decisions[0].to_dict(), allow_nan=False)


def test_invalid_observation_is_an_error_and_leaves_the_state_alone() -> None:
    judge = make_judge(AnalysisConfig())
    state = judge.initial_state()
    bad = IntervalObservation(60, 10, VersionCounts(5, 9, (5,) + (0,) * (K - 1)), VersionCounts.empty(K))
    new_state, decision = judge.update(state, {"s": bad})
    assert decision.verdict is Verdict.ERROR
    assert "observations[s].baseline.errors" in decision.reason
    assert new_state == state


def test_state_survives_json_and_replays_identically() -> None:
    rng = np.random.default_rng(6)
    ticks = [{"a": interval(rng, t), "b": interval(rng, t, error_c=0.02)} for t in range(1, 13)]
    for name in ("sequential", "kayenta", "threshold"):
        judge = make_judge(AnalysisConfig.from_dict({"judge": name}))
        state = judge.initial_state(services=["a", "b"])
        straight = []
        for obs in ticks:
            state, d = judge.update(state, obs)
            straight.append(d.to_dict())
        state = judge.initial_state(services=["a", "b"])
        resumed = []
        for obs in ticks:
            state = json.loads(json.dumps(state, allow_nan=False))  # what the CR status holds
            state, d = make_judge(AnalysisConfig.from_dict({"judge": name})).update(state, obs)
            resumed.append(d.to_dict())
        assert resumed == straight, name


def test_two_services_share_alpha() -> None:
    rng = np.random.default_rng(7)
    d = run("sequential", [{"a": interval(rng, 1), "b": interval(rng, 1)}])[0]
    assert [c.threshold for c in d.checks] == pytest.approx([2 * 4 / 0.05] * 8)


def test_unplanned_service_is_an_error() -> None:
    judge = make_judge(AnalysisConfig())
    rng = np.random.default_rng(8)
    state = judge.initial_state(services=["a"])
    _, d = judge.update(state, {"z": interval(rng, 1)})
    assert d.verdict is Verdict.ERROR and "z" in d.reason


def test_tail_threshold_is_fixed_from_baseline_only() -> None:
    rng = np.random.default_rng(9)
    judge = make_judge(AnalysisConfig())
    first = interval(rng, 1)
    s1, _ = judge.update(judge.initial_state(), {"s": first})
    slow_canary = IntervalObservation(60, 10, first.baseline, counts(rng, 100, 0.0, shift=3))
    s2, _ = judge.update(judge.initial_state(), {"s": slow_canary})
    assert s1["services"]["s"]["tailStart"] == s2["services"]["s"]["tailStart"]
    assert s1["services"]["s"]["tailSource"] == "first-interval-baseline"
    assert s1["services"]["s"]["slowTail"]["events"] == [0, 0]  # the choosing interval is not tested
    ref = judge.initial_state(reference={"s": first.baseline})
    assert ref["references"]["s"] == s1["services"]["s"]["tailStart"]
    s4, _ = judge.update(judge.initial_state(reference=first.baseline), {"s": first})
    assert s4["services"]["s"]["tailSource"] == "reference"
    assert s4["services"]["s"]["slowTail"]["events"] != [0, 0]  # a reference leaves every interval in the test
    spec = make_judge(AnalysisConfig.from_dict({"tailThresholdMs": 250}))
    s3, d = spec.update(spec.initial_state(), {"s": first})
    assert s3["services"]["s"]["tailSource"] == "spec"
    tail = next(c for c in d.checks if c.check == "slowTail")
    assert tail.estimates["thresholdMs"] == 250.0


def test_non_inferiority_margin_holds_pass_until_shown() -> None:
    rng = np.random.default_rng(10)
    ticks = [{"s": interval(rng, t)} for t in range(1, 4)]
    d = run("sequential", ticks, nonInferiorityMargin=1.2)[-1]
    assert d.verdict is Verdict.INCONCLUSIVE and "margin" in d.reason


# -- kayenta and threshold judges -----------------------------------------------------------------------


def test_kayenta_passes_identical_and_fails_a_clear_regression() -> None:
    rng = np.random.default_rng(11)
    same = run("kayenta", [{"s": interval(rng, t, n_c=500, n_b=500, weight=50)} for t in range(1, 11)])
    assert same[-1].verdict is Verdict.PASS
    bad = run(
        "kayenta", [{"s": interval(rng, t, n_c=500, n_b=500, weight=50, shift=2, error_c=0.05)} for t in range(1, 11)]
    )
    assert bad[-1].verdict is Verdict.FAIL
    assert bad[-1].details["score"] < 75
    json.dumps(bad[-1].to_dict(), allow_nan=False)


def test_kayenta_judges_only_on_its_schedule() -> None:
    rng = np.random.default_rng(12)
    ds = run("kayenta", [{"s": interval(rng, t)} for t in range(1, 6)], kayenta={"judgeEveryIntervals": 5})
    assert all(d.verdict is Verdict.INCONCLUSIVE for d in ds[:4])
    assert "score" in ds[4].details


def test_threshold_judge_fails_after_n_failed_checks() -> None:
    rng = np.random.default_rng(13)
    ds = run("threshold", [{"s": interval(rng, t, error_c=0.1)} for t in range(1, 7)], threshold={"failedChecks": 3})
    assert [d.verdict for d in ds[:2]] == [Verdict.INCONCLUSIVE] * 2
    assert ds[2].verdict is Verdict.FAIL


def test_kayenta_mann_whitney_interval_brackets_the_shift() -> None:
    from analysis.kayenta import mann_whitney_hl

    rng = np.random.default_rng(14)
    control, experiment = rng.normal(0, 1, (200, 40)), rng.normal(1, 1, (200, 40))
    _, lo, hi, est = mann_whitney_hl(control, experiment, 0.98)
    assert 0.95 <= float(np.mean((lo <= 1) & (hi >= 1))) <= 1.0
    assert abs(float(np.mean(est)) - 1) < 0.05


def test_vectorised_benchmark_judge_matches_the_real_one() -> None:
    from bench.judges import cross_check

    assert cross_check(0.05) == 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world", ["pods", "real"])
def test_vectorised_benchmark_judge_matches_the_real_one_primed_with_history_in_a_noisy_world(world: str) -> None:
    # The grid's copy of the rate checks (burstiness, the pods' rate spread) and of the history prime.
    from bench.judges import cross_check

    assert cross_check(0.05, world, history=20) == 0


def test_no_nan_in_any_judge_record_with_empty_canary() -> None:
    empty = VersionCounts.empty(K)
    base = VersionCounts(10, 0, tuple(10 if i == 5 else 0 for i in range(K)))
    for name in ("sequential", "kayenta", "threshold"):
        for d in run(name, [{"s": IntervalObservation(60.0 * t, 10, base, empty)} for t in (1, 2)]):
            text = json.dumps(d.to_dict(), allow_nan=False)
            assert d.verdict is not Verdict.ERROR and not math.isnan(len(text))


def _fixed(requests: int, errors: int, slow: int = 0) -> VersionCounts:
    """`requests` in the 25-50 ms bucket, `slow` of them moved to the next one; `errors` of them failed."""
    buckets = [0] * K
    buckets[5], buckets[6] = requests - slow, slow
    return VersionCounts(requests, errors, tuple(buckets))


def test_a_canary_that_looks_worse_than_its_margins_keeps_its_weight_before_harm_is_shown() -> None:
    # One minute: the canary's 2 errors in 100 against the baseline's 4 in 900 (ratio 4.5, excess +1.6 points):
    # far too little to show harm, but beyond both error margins (1.5 and +0.5 points). "No harm seen" must
    # not raise its weight: the decision holds it and says why.
    judge = make_judge(AnalysisConfig.from_dict({"judge": "sequential"}))
    minute = IntervalObservation(60.0, 10.0, _fixed(900, 4), _fixed(100, 2))
    _, held = judge.update(judge.initial_state(), {"s": minute})
    assert held.verdict is Verdict.INCONCLUSIVE and not held.details["safetyPending"]
    assert "holding the weight: s errorRate ratio 4.5 > margin 1.5, excess rate 0.0156 > margin 0.005" in held.reason
    rate = next(c for c in held.checks if c.check == "errorRate")
    assert rate.e_value < 10  # not the evidence rule: the estimate alone holds it
    # Beyond one margin only (ratio 2.25, but an excess of +0.06 points): the canary could still be shown safe
    # on the absolute margin, so the weight may grow.
    _, grows = judge.update(judge.initial_state(), {"s": IntervalObservation(60.0, 10.0, _fixed(9000, 40),
                                                                                _fixed(1000, 5))})
    assert grows.verdict is Verdict.INCONCLUSIVE and grows.details["safetyPending"], grows.reason
    assert "holding" not in grows.reason


def test_a_canary_slower_than_the_latency_margin_may_still_grow_until_harm_evidence_builds() -> None:
    # Half the baseline's requests one bucket slower, 64% of the canary's: Delta 0.14 > margin 0.1 on 100 canary
    # requests (e-value about 3). Unlike the error rate's, the latency estimate does not hold the weight: at a
    # few canary pods it can be where they run, and more pods (a higher weight) are what tell the two apart.
    judge = make_judge(AnalysisConfig.from_dict({"judge": "sequential"}))
    _, slow = judge.update(judge.initial_state(), {"s": IntervalObservation(60.0, 10.0, _fixed(900, 0, slow=450),
                                                                               _fixed(100, 0, slow=64))})
    shift = next(c for c in slow.checks if c.check == "latencyShift")
    assert slow.verdict is Verdict.INCONCLUSIVE and shift.e_value < 10, (slow.verdict, shift.e_value)
    assert slow.details["safetyPending"] and "holding" not in slow.reason, slow.reason
    assert shift.estimates["delta"] == pytest.approx(0.14)


def test_a_bound_just_over_its_margin_is_not_shown_as_equal_to_it() -> None:
    """"upper bound 2, margin 2" read as if it were shown; the digits that tell them apart are kept."""
    from analysis.sequential import _beside

    assert _beside(2.0031, 2.0) == "2.003"
    assert _beside(2.83, 2.0) == "2.83"
    assert _beside(2.0, 2.0) == "2"
    assert _beside(0.10004, 0.1) == "0.10004"


def test_the_reason_a_release_waits_names_what_its_bound_is_of_in_words() -> None:
    """"Delta upper bound 0.12" meant nothing without docs/analysis.md at hand; each bound now says what it bounds."""
    from analysis.decisions import CheckResult
    from analysis.sequential import _not_yet_safe

    def waiting(check: str, on: str, bound: float, margin: float) -> str:
        safety = {"shown": False, "bound": bound, "margin": margin, "on": on, "requestsNeeded": 1500}
        return _not_yet_safe([CheckResult("ml-search", check, Verdict.INCONCLUSIVE, samples={"canary": 500},
                                          estimates={"safety": safety})])

    assert waiting("latencyShift", "delta", 0.12, 0.1) == (
        "not yet shown safe: ml-search latencyShift latency shift P(slower)-P(faster) upper bound 0.12, margin 0.1 "
        "(about 1,000 more canary requests)")
    assert "errorRate canary/baseline error ratio upper bound 2.4, margin 1.5" in waiting(
        "errorRate", "ratio", 2.4, 1.5)
    assert "slowTail excess slow-request rate (canary minus baseline) upper bound 0.031, margin 0.02" in waiting(
        "slowTail", "excess", 0.031, 0.02)


def test_the_requests_a_pass_needs_say_they_hold_the_bursts_where_they_are() -> None:
    """A healthy demo release waited "about 4,179,512 more canary requests ..., about 3404 min at the current rate"
    and was promoted 80 s later: the count held a dispersion of 53 from one stall where it was. Where the events
    burst, the reason now says the count depends on that, and how much they burst."""
    from analysis.decisions import CheckResult
    from analysis.sequential import _not_yet_safe

    def waiting(check: str, dispersion: float) -> str:
        safety = {"shown": False, "bound": 0.186, "margin": 0.03, "on": "excess", "requestsNeeded": 410_000}
        return _not_yet_safe([CheckResult("master-search", check, Verdict.INCONCLUSIVE, samples={"canary": 1_000},
                                          estimates={"safety": safety, "dispersion": dispersion})])

    assert waiting("slowTail", 53.2).endswith(
        "(about 409,000 more canary requests if its slow requests keep bursting as so far: dispersion 53.2)")
    assert waiting("errorRate", 4.0).endswith("if its errors keep bursting as so far: dispersion 4)")
    assert waiting("slowTail", 9915.03).endswith("dispersion 9,915)")
    assert waiting("errorRate", 1.4).endswith("(about 409,000 more canary requests)")
