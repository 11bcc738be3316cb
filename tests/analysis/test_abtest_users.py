"""Experiments with users as the unit (`unit: user`, the default): `analysis.abtest` judging per-user sums.

The world here (`bench/ab_engine.py`, whose table the docs quote) is the one sticky assignment makes: every
user stays on one variant, users come back look after look, and they differ (each has a click rate of its own,
drawn from a Beta distribution with an intra-user correlation rho). Users judged as users keep A/A false calls
within alpha; the same data judged as independent impressions (`unit: sample`) does not (the control, so the
first test can fail).
"""

from __future__ import annotations

import copy

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
)
from bench.ab_engine import ALPHA, Arm, false_calls, run, spec


@pytest.mark.parametrize("rho", [0.0, 0.3])
def test_aa_false_calls_stay_within_alpha_with_users_as_the_unit(rho: float) -> None:
    runs = 120
    slack = 3 * np.sqrt(ALPHA * (1 - ALPHA) / runs)
    assert false_calls("user", rho, runs) <= ALPHA + slack


def test_control_the_same_users_judged_as_independent_impressions_name_false_winners() -> None:
    assert false_calls("sample", 0.3, 60) > 0.3


def test_a_real_lift_is_found_with_users_as_the_unit() -> None:
    wins = [run("user", (0.10, 0.14), 0.1, seed)[-1] is ABDecision.WINNER for seed in range(20)]
    assert np.mean(wins) >= 0.8, wins


def counts_with(per_user: PerUser | None, clicks: int = 30, impressions: int = 300) -> PrimaryCounts:
    return PrimaryCounts.proportion(clicks, impressions, units=100, per_user=per_user)


def test_counts_without_per_user_sums_are_an_error_that_says_what_to_do() -> None:
    state = ab_initial_state(ExperimentConfig.from_dict(spec()))
    sums = PerUser(100, 40.0, 1000.0, 120.0)
    new, result = ab_update(state, {"v1": counts_with(sums), "v2": counts_with(None)}, 60)
    assert result.decision is ABDecision.ERROR
    assert "counts[v2] has no per-user sums" in result.reason and "unit: sample" in result.reason
    assert new == state  # nothing folded in


def test_per_user_sums_no_set_of_users_can_have_are_an_error() -> None:
    state = ab_initial_state(ExperimentConfig.from_dict(spec()))
    # 30 clicks over 2 users, but a sum of squares of 10: below 30^2 / 2.
    impossible = PerUser(2, 10.0, 1000.0, 120.0)
    new, result = ab_update(state, {"v1": counts_with(impossible), "v2": counts_with(impossible)}, 60)
    assert result.decision is ABDecision.ERROR and "per-user sums of v1" in result.reason
    assert new == state
    with pytest.raises(ValueError, match=r"per_user\.yy: -1\.0 is not a finite number >= 0"):
        counts_with(PerUser(2, -1.0, 1.0, 1.0)).validate("proportion", "counts[v1]")


def test_no_decision_before_min_users_and_the_result_names_the_unit_and_users() -> None:
    state = ab_initial_state(ExperimentConfig.from_dict(spec(minUsers=500)))
    lots = PrimaryCounts.proportion(900, 3000, units=200, per_user=PerUser(200, 4500.0, 45000.0, 13500.0))
    few = PrimaryCounts.proportion(300, 3000, units=200, per_user=PerUser(200, 450.0, 45000.0, 4500.0))
    state, result = ab_update(state, {"v1": few, "v2": lots}, 60)
    assert result.decision is ABDecision.CONTINUE and "200 users so far, 500 needed" in result.reason
    out = result.to_dict()
    assert out["unit"] == "user" and out["comparisons"][0]["users"] == 200  # type: ignore[index,call-overload]


def test_the_ratio_interval_covers_the_true_lift() -> None:
    rng = np.random.default_rng(5)
    arms = {"v1": Arm(rng, 0.10, 0.2), "v2": Arm(rng, 0.12, 0.2)}
    state = ab_initial_state(ExperimentConfig.from_dict(spec()))
    for look in range(1, 21):
        state, result = ab_update(state, {n: a.look() for n, a in arms.items()}, 60.0 * look)
    lo, hi = result.comparison("v2").ratio_cs
    assert 0 < lo <= 1.2 <= hi < 2.0


def test_a_state_frozen_before_units_existed_keeps_judging_samples() -> None:
    state = ab_initial_state(ExperimentConfig.from_dict(spec(unit="sample")))
    old = copy.deepcopy(state)
    del old["config"]["unit"], old["config"]["minUsers"]
    _, result = ab_update(old, {"v1": PrimaryCounts.proportion(30, 300, units=100),
                                "v2": PrimaryCounts.proportion(30, 300, units=100)}, 60)
    assert result.decision is not ABDecision.ERROR and result.unit == "sample"


def test_hoeffding_needs_independent_samples() -> None:
    with pytest.raises(InvalidExperimentConfig, match=r"confidenceSequence\.method: hoeffding assumes independent"):
        ExperimentConfig.from_dict(spec(confidenceSequence={"method": "hoeffding"}))
    assert ExperimentConfig.from_dict(spec(unit="sample", confidenceSequence={"method": "hoeffding"})).unit == "sample"
    with pytest.raises(InvalidExperimentConfig, match=r"unit: 'users' is not one of"):
        ExperimentConfig.from_dict(spec(unit="users"))
