"""A/B/n experiment analysis: coverage of the confidence sequences under continuous monitoring, power,
early stopping, the A/B/n alpha split, SRM, the resumable JSON state, edge cases and the spec's messages."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from analysis.abtest import (
    ABDecision,
    ExperimentConfig,
    InvalidExperimentConfig,
    PerUser,
    PrimaryCounts,
    ab_initial_state,
    ab_update,
    comparison_increment,
    difference_cs,
    mixture_radius,
    ratio_cs,
    rho_squared,
)

EXPS, LOOKS, ALPHA = 2000, 60, 0.05
# Binomial slack on an estimated coverage: 3 standard errors of a proportion 1 - alpha over EXPS runs.
SLACK = 3 * math.sqrt(ALPHA * (1 - ALPHA) / EXPS)


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
        "primaryMetric": {"kind": "proportion", "name": "click-through"},
        "minSamples": 500,
        "maxDurationSeconds": 3600,
        "unit": "sample",  # these tests are the sample-level engine's (users as the unit: test_abtest_users.py)
    }
    base.update(overrides)
    return base


def config(**overrides: Any) -> ExperimentConfig:
    return ExperimentConfig.from_dict(spec(**overrides))


def simulate_proportions(
    rng: np.random.Generator, p_c: float, p_v: float, per_look: float = 200.0
) -> tuple[np.ndarray, ...]:
    """Running sums of EXPS x LOOKS experiments whose split and base rate change from look to look (the
    effect stays p_v - p_c): (W, S_v, S_c, A, B, K_v, N_v, K_c, N_c), cumulative along the looks."""
    share = np.linspace(0.2, 0.5, LOOKS)  # a ramp: intervals are strata
    drift = 1 + 0.3 * np.sin(np.linspace(0, 3, LOOKS))  # base rate wanders, difference constant
    pc, pv = p_c * drift, p_c * drift + (p_v - p_c)
    n_v = rng.poisson(2 * per_look * share, size=(EXPS, LOOKS))
    n_c = rng.poisson(2 * per_look * (1 - share), size=(EXPS, LOOKS))
    k_v, k_c = rng.binomial(n_v, pv), rng.binomial(n_c, pc)
    sums = comparison_increment(n_v, k_v, n_c, k_c)
    return tuple(np.cumsum(x, axis=1) for x in (*sums, k_v, n_v, k_c, n_c))


def laplace_var(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    p = (k + 1.0) / (n + 2.0)
    return p * (1 - p)


def covered_every_look(lo: np.ndarray, hi: np.ndarray, truth: float) -> float:
    return float(((lo <= truth) & (truth <= hi)).all(axis=1).mean())


# --------------------------------------------------------------------------------------------------
# Coverage under continuous monitoring


@pytest.mark.parametrize("method", ["asymptotic", "hoeffding"])
def test_difference_cs_covers_the_truth_at_every_look(method: str) -> None:
    rng = np.random.default_rng(7)
    w, sv, sc, a, b, kv, nv, kc, nc = simulate_proportions(rng, 0.10, 0.12)
    rho2 = rho_squared(10_000, ALPHA)
    if method == "asymptotic":
        _, lo, hi = difference_cs(w, sv, sc, a, b, laplace_var(kv, nv), laplace_var(kc, nc), ALPHA, rho2)
    else:
        _, lo, hi = difference_cs(w, sv, sc, a, b, 0.25, 0.25, ALPHA, rho2, scale2=0.25)
    coverage = covered_every_look(lo, hi, 0.02)
    assert coverage >= 1 - ALPHA - SLACK, coverage
    assert np.isfinite(hi - lo).all() and (hi - lo)[:, -1].mean() < 0.05  # and it is not vacuous


def test_mean_metric_cs_covers_the_truth_for_skewed_values() -> None:
    """Exponential values (skewed, unbounded): the asymptotic CS on per-interval sums and squares."""
    rng = np.random.default_rng(11)
    n = 60
    acc = {k: np.zeros(EXPS) for k in ("w", "sv", "sc", "a", "b", "tv", "qv", "tc", "qc", "nv", "nc")}
    lows, highs = [], []
    for _ in range(LOOKS):
        xv, xc = rng.exponential(1.05, size=(EXPS, n)), rng.exponential(1.0, size=(EXPS, n))
        inc = comparison_increment(n, xv.sum(1), n, xc.sum(1))
        for key, x in zip(("w", "sv", "sc", "a", "b"), inc, strict=True):
            acc[key] += x
        acc["tv"] += xv.sum(1)
        acc["qv"] += (xv * xv).sum(1)
        acc["tc"] += xc.sum(1)
        acc["qc"] += (xc * xc).sum(1)
        acc["nv"] += n
        acc["nc"] += n
        var_v = (acc["qv"] - acc["tv"] ** 2 / acc["nv"]) / (acc["nv"] - 1)
        var_c = (acc["qc"] - acc["tc"] ** 2 / acc["nc"]) / (acc["nc"] - 1)
        _, lo, hi = difference_cs(acc["w"], acc["sv"], acc["sc"], acc["a"], acc["b"], var_v, var_c, ALPHA,
                                  rho_squared(1000, ALPHA))
        lows.append(lo)
        highs.append(hi)
    coverage = covered_every_look(np.stack(lows, 1), np.stack(highs, 1), 0.05)
    assert coverage >= 1 - ALPHA - SLACK, coverage


def test_ratio_cs_covers_the_true_ratio_at_every_look() -> None:
    rng = np.random.default_rng(5)
    w, sv, sc, a, b, kv, nv, kc, nc = simulate_proportions(rng, 0.10, 0.10)
    reps, looks = 400, range(0, LOOKS, 3)  # the ratio CS is scalar (root finding): fewer runs
    rho2 = rho_squared(10_000, ALPHA)
    for bound in (None, 0.25):
        misses = 0
        for i in range(reps):
            for t in looks:
                vv = 0.25 if bound else float(laplace_var(kv[i, t], nv[i, t]))
                vc = 0.25 if bound else float(laplace_var(kc[i, t], nc[i, t]))
                lo, hi = ratio_cs(w[i, t], sv[i, t], sc[i, t], a[i, t], b[i, t], vv, vc, ALPHA, rho2, bound)
                if not lo <= 1.0 <= hi:
                    misses += 1
                    break
        assert misses / reps <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps), (bound, misses)


def test_rho_is_where_the_boundary_is_narrowest() -> None:
    """rho^2 from rho_squared minimises the standardised width at W = tuning samples (derivation check)."""
    for tuning in (100.0, 10_000.0, 1e6):
        for alpha in (0.01, 0.05, 0.2):
            rhos = rho_squared(tuning, alpha) * np.exp(np.linspace(-2, 2, 401))
            widths = [float(mixture_radius(tuning, 1.0, alpha, r)) for r in rhos]
            best = widths[int(np.argmin(widths))]
            assert float(mixture_radius(tuning, 1.0, alpha, rho_squared(tuning, alpha))) <= best * 1.01


def test_hoeffding_cs_is_wider_than_the_asymptotic_one_for_rare_clicks() -> None:
    sums = comparison_increment(5000, 500, 5000, 450)
    rho2 = rho_squared(10_000, ALPHA)
    _, alo, ahi = difference_cs(*sums, 0.09, 0.0855, ALPHA, rho2)
    _, hlo, hhi = difference_cs(*sums, 0.25, 0.25, ALPHA, rho2, scale2=0.25)
    assert hlo < alo < ahi < hhi
    assert 1.5 < (hhi - hlo) / (ahi - alo) < 1.8  # sqrt(0.25 / 0.088): the price of exactness


# --------------------------------------------------------------------------------------------------
# Power, early stopping and decisions through the stateful API


def run(cfg: ExperimentConfig, rates: dict[str, float], looks: int, seed: int, per_look: int = 1000,
        step_s: float = 60.0) -> tuple[dict[str, Any], Any]:
    rng = np.random.default_rng(seed)
    state = ab_initial_state(cfg, list(rates))
    result = None
    for i in range(looks):
        counts = {}
        for name, p in rates.items():
            n = int(rng.poisson(per_look * cfg.weight_of(name) / 100))
            counts[name] = PrimaryCounts.proportion(int(rng.binomial(n, p)), n, units=int(rng.binomial(n, 0.1)))
        state, result = ab_update(state, counts, step_s * (i + 1))
        if result.decision is not ABDecision.CONTINUE:
            break
    return state, result


def test_power_on_a_clear_lift_and_early_stop() -> None:
    rng = np.random.default_rng(3)
    w, sv, sc, a, b, kv, nv, kc, nc = simulate_proportions(rng, 0.10, 0.13)
    _, lo, _ = difference_cs(w, sv, sc, a, b, laplace_var(kv, nv), laplace_var(kc, nc), ALPHA,
                             rho_squared(10_000, ALPHA))
    detected = (lo > 0).any(axis=1)
    assert detected.mean() >= 0.9, detected.mean()
    first = np.argmax(lo > 0, axis=1)[detected]
    assert np.median(first) < LOOKS / 2  # stops early, not at the horizon
    _, result = run(config(), {"v1": 0.10, "v2": 0.13}, looks=60, seed=1)
    assert result.decision is ABDecision.WINNER and result.winner == "v2"
    assert result.looks < 60 and result.comparison("v2").ratio_cs[0] > 1
    low, high = result.comparison("v2").difference_cs
    assert result.reason == (f"v2 beats v1 on click-through: difference in [{low:.4g}, {high:.4g}] (confidence "
                             "interval, valid at every look)")


def test_winner_waits_for_minimum_duration_and_samples() -> None:
    cfg = config(minDurationSeconds=1200, minSamples=2000)
    _, result = run(cfg, {"v1": 0.10, "v2": 0.20}, looks=60, seed=2)
    assert result.decision is ABDecision.WINNER
    assert result.elapsed_s >= 1200 and min(result.samples.values()) >= 2000


def test_harmful_variant_stops_the_experiment() -> None:
    _, result = run(config(), {"v1": 0.10, "v2": 0.06}, looks=60, seed=4)
    assert result.decision is ABDecision.HARMFUL and result.winner is None
    assert result.comparison("v2").verdict == "worse" and result.looks < 60


def test_decrease_is_better_for_a_lower_is_better_metric() -> None:
    cfg = config(primaryMetric={"kind": "proportion", "name": "bounce", "direction": "decrease"})
    _, result = run(cfg, {"v1": 0.10, "v2": 0.06}, looks=60, seed=4)
    assert result.decision is ABDecision.WINNER and result.winner == "v2"


def test_no_difference_at_max_duration_and_inside_the_equivalence_margin() -> None:
    _, ended = run(config(maxDurationSeconds=600), {"v1": 0.1, "v2": 0.1}, looks=10, seed=6)
    assert ended.decision is ABDecision.NO_DIFFERENCE and "maximum duration" in ended.reason
    _, equal = run(config(equivalenceMargin=0.02), {"v1": 0.1, "v2": 0.1}, looks=200, seed=6, per_look=4000)
    assert equal.decision is ABDecision.NO_DIFFERENCE and "equivalence margin" in equal.reason
    lo, hi = equal.comparison("v2").difference_cs
    assert -0.02 < lo < hi < 0.02 and equal.elapsed_s < 3600


def test_no_difference_at_max_duration_before_the_minimum_sample_says_nothing_was_judged() -> None:
    """`no_difference` is the decision at the deadline, also when a variant never had the minimum sample: the
    reason says so, or an operator reads it as "no difference shown" (before: a look went on as `continue`
    with "v2: 600 samples so far, 100000 needed per variant" and the controller ended it as it ends any look
    at maxDuration)."""
    _, result = run(config(minSamples=100_000, maxDurationSeconds=600), {"v1": 0.1, "v2": 0.2}, looks=11, seed=6)
    assert result.decision is ABDecision.NO_DIFFERENCE and result.looks == 10 and result.winner is None
    assert result.reason.startswith("maximum duration 600s reached before the minimum sample (v")
    assert "samples so far, 100000 needed per variant): no variant could be judged" in result.reason
    users = ExperimentConfig.from_dict(spec(unit="user", minUsers=500, maxDurationSeconds=60))
    few = PrimaryCounts.proportion(300, 3000, units=200, per_user=PerUser(200, 450.0, 45000.0, 4500.0))
    _, result = ab_update(ab_initial_state(users), {"v1": few, "v2": few}, 60)
    assert result.decision is ABDecision.NO_DIFFERENCE
    assert result.reason == ("maximum duration 60s reached before the minimum sample (v1: 200 users so far, 500 "
                             "needed per variant): no variant could be judged")


def test_abn_splits_alpha_and_controls_family_wise_error() -> None:
    cfg = config(variants=[{"name": "v1", "weight": 34}, {"name": "v2", "weight": 33}, {"name": "v3", "weight": 33}])
    assert cfg.treatments == ("v2", "v3") and cfg.alpha_each == pytest.approx(ALPHA / 2)
    rng = np.random.default_rng(9)
    rho2 = rho_squared(10_000, cfg.alpha_each)
    wrong = np.zeros(EXPS, dtype=bool)
    n_c = rng.poisson(130, size=(EXPS, LOOKS))
    k_c = rng.binomial(n_c, 0.1)
    for _ in cfg.treatments:  # shared control: the comparisons are dependent; Bonferroni holds anyway
        n_v = rng.poisson(130, size=(EXPS, LOOKS))
        k_v = rng.binomial(n_v, 0.1)
        s = [np.cumsum(x, axis=1) for x in comparison_increment(n_v, k_v, n_c, k_c)]
        var_v = laplace_var(np.cumsum(k_v, 1), np.cumsum(n_v, 1))
        var_c = laplace_var(np.cumsum(k_c, 1), np.cumsum(n_c, 1))
        _, lo, hi = difference_cs(*s, var_v, var_c, cfg.alpha_each, rho2)
        wrong |= ((lo > 0) | (hi < 0)).any(axis=1)
    assert wrong.mean() <= ALPHA + SLACK, wrong.mean()
    _, result = run(cfg, {"v1": 0.10, "v2": 0.10, "v3": 0.16}, looks=60, seed=8)
    assert result.decision is ABDecision.WINNER and result.winner == "v3"
    assert {c.variant for c in result.comparisons} == {"v2", "v3"}


def test_abn_confidence_sequences_cover_every_true_difference_at_once() -> None:
    """Simultaneous coverage with three treatments sharing one control, real effects of both signs: at
    alpha / 3 each (Bonferroni), all three CSs contain their true difference at every look in >= 1 - alpha
    of the experiments (at the unsplit alpha the family would not be guaranteed; the split costs width)."""
    cfg = config(variants=[{"name": "v1", "weight": 25}, {"name": "v2", "weight": 25}, {"name": "v3", "weight": 25},
                           {"name": "v4", "weight": 25}])
    assert cfg.alpha_each == pytest.approx(ALPHA / 3)
    truth = {"v2": 0.03, "v3": -0.02, "v4": 0.0}
    rng = np.random.default_rng(21)
    share = np.linspace(0.5, 1.0, LOOKS)  # the treatments' traffic ramps up: intervals are strata
    n_c = rng.poisson(100, size=(EXPS, LOOKS))
    k_c = rng.binomial(n_c, 0.10)
    all_covered = np.ones(EXPS, dtype=bool)
    unsplit_covered = np.ones(EXPS, dtype=bool)
    for d in truth.values():
        n_v = rng.poisson(100 * share, size=(EXPS, LOOKS))
        k_v = rng.binomial(n_v, 0.10 + d)
        s = [np.cumsum(x, axis=1) for x in comparison_increment(n_v, k_v, n_c, k_c)]
        var_v = laplace_var(np.cumsum(k_v, 1), np.cumsum(n_v, 1))
        var_c = laplace_var(np.cumsum(k_c, 1), np.cumsum(n_c, 1))
        _, lo, hi = difference_cs(*s, var_v, var_c, cfg.alpha_each, rho_squared(10_000, cfg.alpha_each))
        all_covered &= ((lo <= d) & (d <= hi)).all(axis=1)
        _, lo1, hi1 = difference_cs(*s, var_v, var_c, ALPHA, rho_squared(10_000, ALPHA))
        unsplit_covered &= ((lo1 <= d) & (d <= hi1)).all(axis=1)
        assert (hi - lo)[:, -1].mean() > (hi1 - lo1)[:, -1].mean()  # the split's price: wider intervals
        assert (hi - lo)[:, -1].mean() < 0.06  # and not vacuous
    assert all_covered.mean() >= 1 - ALPHA - SLACK, all_covered.mean()
    assert unsplit_covered.mean() <= all_covered.mean()


def test_two_equal_winners_end_without_a_winner() -> None:
    """v2 and v3 both beat v1 and are never separated: at the maximum duration no winner is named (naming the
    one ahead would be a coin toss between the two), and the reason says which are tied."""
    cfg = config(variants=[{"name": "v1", "weight": 34}, {"name": "v2", "weight": 33}, {"name": "v3", "weight": 33}],
                 maxDurationSeconds=1800)
    _, result = run(cfg, {"v1": 0.10, "v2": 0.15, "v3": 0.15}, looks=30, seed=12)
    assert result.decision is ABDecision.NO_DIFFERENCE and result.winner is None and result.elapsed_s == 1800
    assert "without a clear winner" in result.reason and "not separated from v" in result.reason
    assert all(c.verdict == "better" for c in result.comparisons)  # both beat the control: the tie is the point


def test_a_winner_separated_from_every_rival_is_named() -> None:
    cfg = config(variants=[{"name": "v1", "weight": 34}, {"name": "v2", "weight": 33}, {"name": "v3", "weight": 33}],
                 maxDurationSeconds=1800)
    _, result = run(cfg, {"v1": 0.10, "v2": 0.30, "v3": 0.10}, looks=30, seed=12)
    assert result.decision is ABDecision.WINNER and result.winner == "v2"


def test_guardrails_of_k_treatments_run_at_alpha_over_k() -> None:
    two = config(guardrails={"alpha": 0.06})
    three = config(guardrails={"alpha": 0.06}, variants=[{"name": "v1", "weight": 34}, {"name": "v2", "weight": 33},
                                                         {"name": "v3", "weight": 33}])
    assert two.guardrails.alpha == pytest.approx(0.06) and three.guardrails.alpha == pytest.approx(0.03)


def test_user_counts_missing_under_the_units_check_are_an_error_not_a_silent_pass() -> None:
    state = ab_initial_state(config())
    counts = {"v1": PrimaryCounts.proportion(60, 600, units=60), "v2": PrimaryCounts.proportion(70, 600)}
    new, result = ab_update(state, counts, 60)
    assert result.decision is ABDecision.ERROR and "counts[v2] has no number of users assigned" in result.reason
    assert new == state  # nothing folded in
    _, result = ab_update(ab_initial_state(config(sampleRatioOn="samples")), counts, 60)
    assert result.decision is not ABDecision.ERROR


# --------------------------------------------------------------------------------------------------
# Sample-ratio mismatch


def test_sample_ratio_mismatch_on_units_is_an_error() -> None:
    state = ab_initial_state(config())
    rng = np.random.default_rng(0)
    result = None
    for i in range(30):
        counts = {
            "v1": PrimaryCounts.proportion(int(rng.binomial(600, 0.1)), 600, units=60),
            "v2": PrimaryCounts.proportion(int(rng.binomial(600, 0.1)), 600, units=40),
        }
        state, result = ab_update(state, counts, 60.0 * (i + 1))
        if result.decision is ABDecision.ERROR:
            break
    assert result is not None and result.decision is ABDecision.ERROR
    assert "sample-ratio mismatch" in result.reason and result.comparison("v2").share == pytest.approx(0.4)


def test_a_healthy_split_passes_srm_and_impressions_are_not_units() -> None:
    # Heavy users make impression shares lopsided; units (users) stay on the 50/50 split.
    _, result = run(config(maxDurationSeconds=1800), {"v1": 0.1, "v2": 0.1}, looks=30, seed=13)
    assert result.decision is ABDecision.NO_DIFFERENCE
    state = ab_initial_state(config(sampleRatioOn="units"))
    for i in range(20):
        counts = {"v1": PrimaryCounts.proportion(70, 700, units=50), "v2": PrimaryCounts.proportion(30, 300, units=50)}
        state, result = ab_update(state, counts, 60.0 * (i + 1))
    assert result.decision is not ABDecision.ERROR
    state = ab_initial_state(config(sampleRatioOn="samples"))
    state, result = ab_update(state, counts, 60.0)
    for i in range(20):
        state, result = ab_update(state, counts, 60.0 * (i + 2))
    assert result.decision is ABDecision.ERROR


# --------------------------------------------------------------------------------------------------
# State, JSON and edge cases


def test_state_round_trips_through_json_with_identical_results() -> None:
    cfg = config()
    rng = np.random.default_rng(21)
    stream = [
        {n: PrimaryCounts.proportion(int(rng.binomial(400, p)), 400, units=40) for n, p in (("v1", .1), ("v2", .11))}
        for _ in range(25)
    ]
    direct = ab_initial_state(cfg)
    resumed = json.loads(json.dumps(ab_initial_state(cfg)))
    for i, counts in enumerate(stream):
        direct, a = ab_update(direct, counts, 60.0 * (i + 1))
        resumed, b = ab_update(json.loads(json.dumps(resumed)), counts, 60.0 * (i + 1))
        assert a.to_dict() == b.to_dict()
    assert direct == resumed
    json.dumps(a.to_dict(), allow_nan=False)


def test_update_does_not_mutate_its_input_and_matches_the_vectorised_math() -> None:
    state = ab_initial_state(config(sampleRatioOn="samples"))  # impressions without user counts
    frozen = json.dumps(state)
    counts = {"v1": PrimaryCounts.proportion(90, 1000), "v2": PrimaryCounts.proportion(120, 800)}
    new, result = ab_update(state, counts, 60)
    assert json.dumps(state) == frozen and new != state
    sums = comparison_increment(800, 120, 1000, 90)
    est, lo, hi = difference_cs(*sums, laplace_var(120, 800), laplace_var(90, 1000), ALPHA, rho_squared(10_000, ALPHA))
    c = result.comparison("v2")
    assert c.difference == pytest.approx(float(est)) and c.difference_cs == pytest.approx((float(lo), float(hi)))
    assert c.ratio == pytest.approx((120 / 800) / (90 / 1000))


def test_zero_impressions_keep_going_with_unbounded_intervals() -> None:
    state, result = ab_update(ab_initial_state(config()), {"v1": PrimaryCounts(0, 0), "v2": PrimaryCounts(0, 0)}, 60)
    assert result.decision is ABDecision.CONTINUE
    d = result.to_dict()
    assert d["comparisons"][0]["differenceConfidenceSequence"] == [None, None]
    assert d["comparisons"][0]["difference"] is None and d["comparisons"][0]["ratio"] is None
    json.dumps(d, allow_nan=False)
    # Only one arm served: still no paired interval.
    _, result = ab_update(state, {"v1": PrimaryCounts.proportion(5, 100)}, 120)
    assert result.comparison("v2").difference is None


def test_all_clicks_one_interval_and_huge_counts() -> None:
    _, result = ab_update(ab_initial_state(config(minSamples=0)),
                          {"v1": PrimaryCounts.proportion(50, 50, units=10),
                           "v2": PrimaryCounts.proportion(50, 50, units=10)}, 60)
    lo, hi = result.comparison("v2").difference_cs
    assert lo < 0 < hi, "all clicks in both arms after one interval is not certainty"
    assert result.decision is ABDecision.CONTINUE
    huge = 10**12
    _, result = ab_update(ab_initial_state(config()), {"v1": PrimaryCounts.proportion(10**11, huge, units=10**9),
                                                       "v2": PrimaryCounts.proportion(10**11 + 10**7, huge,
                                                                                      units=10**9)}, 60)
    c = result.comparison("v2")
    assert result.decision is ABDecision.WINNER
    assert c.difference == pytest.approx(1e-5) and 0 < c.difference_cs[0] < 1e-5 < c.difference_cs[1] < 2e-5
    json.dumps(result.to_dict(), allow_nan=False)


def test_mean_metric_and_hoeffding_need_bounds() -> None:
    mean = {"kind": "mean", "name": "dwell-seconds"}
    with pytest.raises(InvalidExperimentConfig, match=r"primaryMetric\.bounds: a mean metric needs"):
        config(primaryMetric=mean, confidenceSequence={"method": "hoeffding"})
    cfg = config(primaryMetric={**mean, "bounds": [0, 60]}, confidenceSequence={"method": "hoeffding"}, minSamples=0)
    counts = {"v1": PrimaryCounts.mean(10_000.0, 150_000.0, 1000, units=200),
              "v2": PrimaryCounts.mean(12_000.0, 200_000.0, 1000, units=200)}
    _, result = ab_update(ab_initial_state(cfg), counts, 60)
    c = result.comparison("v2")
    assert c.difference == pytest.approx(2.0) and c.difference_cs[0] < 2.0 < c.difference_cs[1]
    assert c.ratio_cs[0] < 1.2 < c.ratio_cs[1]


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"v1": PrimaryCounts(-1, 0)}, r"counts\[v1\]\.count: -1 is negative"),
        ({"v1": PrimaryCounts(10, 11)}, r"counts\[v1\]\.total: 11 is not in \[0, count=10\]"),
        ({"v1": PrimaryCounts(10, math.nan)}, r"counts\[v1\]\.total: nan is not a finite number"),
        ({"v9": PrimaryCounts(10, 1)}, r"variant v9 is not among"),
    ],
)
def test_unusable_counts_are_an_error_and_leave_the_state_alone(counts: dict[str, PrimaryCounts], message: str) -> None:
    state = ab_initial_state(config())
    new, result = ab_update(state, counts, 60)
    assert result.decision is ABDecision.ERROR and new == state
    assert result.reason.startswith("unusable data") and __import__("re").search(message, result.reason)


def test_time_must_not_go_backwards_and_mean_squares_must_be_possible() -> None:
    state, _ = ab_update(ab_initial_state(config()), {}, 120)
    _, result = ab_update(state, {}, 60)
    assert result.decision is ABDecision.ERROR and "elapsed_seconds" in result.reason
    cfg = config(primaryMetric={"kind": "mean", "name": "m"})
    _, result = ab_update(ab_initial_state(cfg), {"v1": PrimaryCounts.mean(10.0, 1.0, 2)}, 60)
    assert result.decision is ABDecision.ERROR and "squares" in result.reason


def test_initial_state_refuses_other_variants() -> None:
    with pytest.raises(ValueError, match="differ from the experiment's variants"):
        ab_initial_state(config(), ["v1", "v3"])


def two(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    return {"variants": [first, second]}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"variants": [{"name": "v1", "weight": 100}]}, r"spec\.experiment\.variants: needs at least 2 variants"),
        ({"variants": "v1,v2"}, r"spec\.experiment\.variants: 'v1,v2' is not a list"),
        (two({"name": "v1", "weight": 60}, {"name": "v2", "weight": 50}), r"weights sum to 110, not 100"),
        (two({"name": "v1", "weight": 50}, {"name": "v1", "weight": 50}), r"variants\[1\]\.name: 'v1' appears twice"),
        (two({"name": "v1", "weight": 50}, {"name": "v2"}), r"variants\[1\]\.weight: is required"),
        (two({"name": "v1", "weight": 150}, {"name": "v2", "weight": -50}), r"variants\[0\]\.weight: 150 is not in"),
        (two({"name": "v1", "weight": 50}, {"name": "v2", "wieght": 50}), r"variants\[1\]\.wieght: unknown field"),
        (two({"name": "v1", "weight": 50}, {"name": "V 2;", "weight": 50}), r"name: 'V 2;' is not a DNS"),
        ({"control": "v3"}, r"spec\.experiment\.control: 'v3' is not one of the variants \(v1, v2\)"),
        ({"alpha": 1.5}, r"spec\.experiment\.alpha: 1\.5 is not in \(0, 1\)"),
        ({"primaryMetric": None}, r"spec\.experiment\.primaryMetric: is required"),
        ({"primaryMetric": {"name": "ctr"}}, r"primaryMetric\.kind: is required"),
        ({"primaryMetric": {"kind": "median", "name": "x"}}, r"kind: 'median' is not one of proportion, mean"),
        ({"primaryMetric": {"kind": "mean", "name": ""}}, r"primaryMetric\.name: '' is not a non-empty string"),
        ({"primaryMetric": {"kind": "mean", "name": "x", "bounds": [3, 1]}}, r"primaryMetric\.bounds: \[3, 1\] is not"),
        ({"primaryMetric": {"kind": "proportion", "name": "x", "bounds": [0, 1]}}, r"a proportion is bounded"),
        ({"primaryMetric": {"kind": "mean", "name": "x", "direction": "up"}}, r"primaryMetric\.direction: 'up'"),
        ({"minDurationSeconds": 600, "maxDurationSeconds": 300}, r"maxDurationSeconds: 300 is less than min"),
        ({"minSamples": -1}, r"spec\.experiment\.minSamples: -1 is less than 0"),
        ({"onEnd": "promote"}, r"onEnd: 'promote' is not one of keepStable, promoteWinner, waitForOperator"),
        ({"confidenceSequence": {"method": "bayes"}}, r"confidenceSequence\.method: 'bayes' is not one of"),
        ({"sampleRatioAlpha": 0}, r"spec\.experiment\.sampleRatioAlpha: 0 is not in \(0, 1\)"),
        ({"guardrails": {"alpha": 2}}, r"spec\.experiment\.guardrails\.alpha: 2 is not in \(0, 1\)"),
        ({"equivalenceMargin": -0.1}, r"spec\.experiment\.equivalenceMargin: -0\.1 is not in"),
    ],
)
def test_config_errors_name_the_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidExperimentConfig, match=message) as info:
        ExperimentConfig.from_dict(spec(**overrides))
    assert isinstance(info.value, ValueError)


def test_config_defaults_and_passthrough() -> None:
    cfg = config(guardrails={"alpha": 0.01, "minCanaryRequests": 50}, onEnd="promoteWinner", control="v2")
    assert cfg.control == "v2" and cfg.treatments == ("v1",) and cfg.on_end == "promoteWinner"
    assert cfg.guardrails.alpha == 0.01 and cfg.guardrails.min_canary_requests == 50
    assert cfg.method == "asymptotic" and cfg.sample_ratio_on == "units" and cfg.alpha == 0.05
    assert ExperimentConfig.from_dict(cfg.statistics_dict(), "x") == ExperimentConfig.from_dict(
        {**cfg.statistics_dict()}, "y"
    )
    with pytest.raises(InvalidExperimentConfig, match=r"spec\.experiment: is required"):
        ExperimentConfig.from_dict(None)
