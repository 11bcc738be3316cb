"""bench/ab_users.py: its world and the claim it exists for, on a small run (the table is the program's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import ab_users

pytestmark = pytest.mark.timeout(120)


def test_the_world_is_sticky_and_its_sums_are_per_user_totals() -> None:
    s = ab_users.simulate(np.random.default_rng(3), reps=4, looks=5, icc=0.2, lift=0.0)
    assert s["users_v"].shape == (4, 5) and (np.diff(s["users_v"], axis=1) >= 0).all()
    # Cumulative per-user sums match the looks' own clicks and pages, and Cauchy-Schwarz holds per variant.
    assert np.allclose(s["y_v"][:, -1], s["dk_v"].sum(axis=1)) and np.allclose(s["n_c"][:, -1], s["dn_c"].sum(axis=1))
    assert (s["y_v"] ** 2 <= s["users_v"] * s["yy_v"] + 1e-9).all()
    assert (s["users_v"][:, -1] + s["users_c"][:, -1] <= ab_users.NEW_USERS * 5).all()


def test_correlated_users_break_the_impression_level_interval_but_not_the_user_level_one() -> None:
    s = ab_users.simulate(np.random.default_rng(7), reps=150, looks=15, icc=0.33, lift=0.0)
    impressions = ab_users.judged(s, *ab_users.impression_cs(s), truth=0.0)
    users = ab_users.judged(s, *ab_users.user_cs(s), truth=0.0)
    assert impressions["excludedZeroPct"] > 20.0  # the bug of issue 16: false calls far above alpha
    assert users["excludedZeroPct"] <= 100 * ab_users.ALPHA + 3.0


def test_the_command_writes_its_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "u.json"
    assert ab_users.main(["--reps", "5", "--looks", "4", "--out", str(out)]) == 0
    assert "A/A false" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert {(r["icc"], r["method"]) for r in rows} == {(i, m) for i in ab_users.ICCS for m in ("impressions", "users")}


def test_three_variants_split_the_users_34_33_33_and_keep_them() -> None:
    s = ab_users.simulate_arms(np.random.default_rng(5), reps=20, looks=6, icc=0.0, ctrs=(0.1, 0.1, 0.1),
                               shares=ab_users.ABN_SHARES)
    assert s["users"].shape == (3, 20, 6)
    assert (np.diff(s["users"], axis=2) >= 0).all()  # sticky: nobody leaves their variant
    share = s["users"][:, :, -1].sum(axis=1) / s["users"][:, :, -1].sum()
    assert np.allclose(share, ab_users.ABN_SHARES, atol=0.015), share
    # The pair view of arm 1 against the control (arm 0) is what the two-variant code reads.
    p = ab_users.pair(s, 1, 0)
    assert np.array_equal(p["users_v"], s["users"][1]) and np.array_equal(p["yn_c"], s["yn"][0])


def test_the_two_variant_world_draws_what_it_drew_before_the_sections_came() -> None:
    # Numbers of the original two-variant simulate (seed 16): the published table stays reproducible.
    s = ab_users.simulate(np.random.default_rng(16), reps=3, looks=5, icc=0.09, lift=0.1)
    assert s["users_v"][:, -1].tolist() == [192.0, 204.0, 178.0]
    assert s["y_v"][:, -1].tolist() == [126.0, 97.0, 107.0] and s["n_c"][:, -1].tolist() == [1277.0, 1277.0, 1422.0]
    assert s["yy_c"][:, -1].tolist() == [581.0, 733.0, 387.0] and s["yn_v"][:, -1].tolist() == [1881.0, 1205.0, 1016.0]
    assert s["dk_c"][:, -1].tolist() == [37.0, 49.0, 43.0]


def test_the_two_variant_world_is_the_general_one_with_a_50_50_split() -> None:
    a = ab_users.simulate(np.random.default_rng(9), reps=5, looks=4, icc=0.09, lift=0.1)
    b = ab_users.simulate_arms(np.random.default_rng(9), 5, 4, 0.09, (0.11, 0.1), (0.5, 0.5))
    assert all(np.array_equal(a[f"{k}_v"], b[k][0]) and np.array_equal(a[f"{k}_c"], b[k][1]) for k in ab_users.STATS)


def test_novelty_lifts_the_treatments_early_looks_and_fades_as_the_estimand_says() -> None:
    looks = 12
    s = ab_users.simulate_arms(np.random.default_rng(11), reps=300, looks=looks, icc=0.0, ctrs=(0.1, 0.1),
                               shares=(0.5, 0.5), novelty=(ab_users.NOVELTY, 0.0))
    per_look = s["dk"].sum(axis=1) / s["dn"].sum(axis=1)  # (arm, look), pooled over experiments
    ratio = per_look[0] / per_look[1]
    assert abs(ratio[0] - (1 + ab_users.NOVELTY)) < 0.06  # everyone is new at the first look
    assert ratio[-3:].mean() < 1.15 and ratio[-3:].mean() < ratio[:2].mean() - 0.1  # it fades...
    assert ratio[-3:].mean() > 1.02  # ... but new users keep bringing some
    # The cumulative ratio follows expected_ratio (the estimand of the user-level interval).
    cumulative = s["y"].sum(axis=1) / s["n"].sum(axis=1)
    expected = ab_users.expected_ratio(looks, 0.0, 0.1, ab_users.NOVELTY)
    assert np.allclose(cumulative[0], expected, rtol=0.02), cumulative[0] / expected
    assert np.allclose(cumulative[1], 0.1, rtol=0.03)
    assert expected[0] == pytest.approx(0.1 * (1 + ab_users.NOVELTY)) and expected[-1] < expected[0]


def test_weekend_looks_have_fewer_new_users_and_a_shifted_click_through_in_both_variants() -> None:
    looks = 28  # one week of 6-hour looks
    traffic, ctr_factor, weekend = ab_users.weekly_factors(looks)
    assert weekend.sum() == 8 and weekend[20:].all() and not weekend[:20].any()  # Saturday and Sunday
    assert (ab_users.arrivals(looks, traffic)[weekend] == round(ab_users.NEW_USERS * ab_users.WEEKEND_USERS)).all()
    s = ab_users.simulate_arms(np.random.default_rng(13), reps=100, looks=looks, icc=0.0, ctrs=(0.1, 0.1),
                               shares=(0.5, 0.5), traffic=traffic, ctr_factor=ctr_factor)
    new = np.diff(s["users"].sum(axis=0), axis=1, prepend=0).mean(axis=0)  # users seen for the first time
    assert new[weekend].mean() < 0.7 * new[~weekend][1:].mean()
    ctr = s["dk"].sum(axis=1) / s["dn"].sum(axis=1)
    for arm in (0, 1):
        shift = ctr[arm][weekend].mean() / ctr[arm][~weekend].mean()
        assert shift == pytest.approx(ab_users.WEEKEND_CTR / ab_users.WEEKDAY_CTR, rel=0.05)


def test_clipped_mean_is_the_mean_click_probability_of_beta_users() -> None:
    draws = np.random.default_rng(0).beta(0.1 * 2, 0.9 * 2, 400_000)  # ICC 0.33
    for factor in (0.9, 1.0, 1.3, 3.0):
        assert float(ab_users.clipped_mean(0.1, 0.33, factor)) == pytest.approx(
            np.minimum(1.0, factor * draws).mean(), rel=0.01)
    assert float(ab_users.clipped_mean(0.4, 0.0, 3.0)) == 1.0


def test_three_variants_user_level_family_wise_false_calls_stay_low_where_impressions_fail() -> None:
    rows = ab_users.run_abn(reps=80, looks=15, seed=3, iccs=(0.0, 0.33))
    cell = {r["method"]: r for r in rows if r["icc"] == 0.33 and r["lifts"] == [0.0, 0.0]}
    assert cell["impressions"]["falseCallPct"] > 20.0
    assert cell["users"]["falseCallPct"] <= 100 * ab_users.ALPHA + 5.0
    assert cell["users"]["falseCallPct"] == cell["users"]["missedTruthPct"]  # A/A/A: the truth is 0
    lifted = {r["method"]: r for r in rows if r["icc"] == 0.0 and r["lifts"] == [0.2, 0.0]}
    assert lifted["users"]["foundPct"] > 50.0  # at ICC 0 the user-level interval finds +20%


def test_abn_judged_follows_the_controllers_rule() -> None:
    ready = np.ones((1, 3), dtype=bool)
    # Look 1: both above 0 and overlapping (no winner); look 2: treatment 1 separated; look 3: never reached.
    lo = np.array([[[0.01, 0.03, 0.03]], [[0.005, 0.0, 0.0]]])
    hi = np.array([[[0.05, 0.05, 0.05]], [[0.02, 0.02, 0.02]]])
    row = ab_users.abn_judged(ready, lo, hi, (0.2, 0.0))
    assert row["winnerPct"] == 100.0 and row["medianWinnerLook"] == 2.0 and row["falseCallPct"] == 100.0
    harmful = ab_users.abn_judged(ready, lo, hi - np.array([[[0.0, 0.0, 0.0]], [[0.03, 0.03, 0.03]]]), (0.2, 0.0))
    assert harmful["winnerPct"] == 0.0 and harmful["wrongDecisionPct"] == 100.0


def test_novelty_makes_the_user_level_interval_name_a_winner_whose_long_run_effect_is_zero() -> None:
    rows = ab_users.run_novelty(reps=60, looks=15, seed=5, iccs=(0.0,))
    users = next(r for r in rows if r["icc"] == 0.0 and r["lift"] == 0.0 and r["method"] == "users")
    assert users["winnerPct"] > 30.0  # the novelty is real in the users seen so far...
    assert users["missedEstimandPct"] <= 100 * ab_users.ALPHA + 5.0  # ... which is what the interval covers
    assert users["estimandByLook"][0] == pytest.approx(ab_users.BASE_CTR * ab_users.NOVELTY)


def test_weekly_traffic_keeps_the_user_level_a_a_false_calls_low() -> None:
    rows = ab_users.run_weekly(reps=60, looks=28, seed=7, iccs=(0.33,))
    cell = {r["method"]: r for r in rows if r["icc"] == 0.33 and r["lift"] == 0.0}
    assert cell["impressions"]["excludedZeroPct"] > 20.0
    assert cell["users"]["excludedZeroPct"] <= 100 * ab_users.ALPHA + 5.0


@pytest.mark.parametrize("section", ["abn", "novelty", "weekly"])
def test_each_section_writes_its_table_and_settings(section: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"ab_users_{section}.json"
    assert ab_users.main(["--section", section, "--reps", "4", "--looks", "24", "--seed", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.with_suffix(".txt").read_text() == printed
    data = json.loads(out.read_text())
    assert data["section"] == section and data["seed"] == 2 and data["reps"] == 4 and data["looks"] == 24
    assert data["command"].startswith("python -m bench.ab_users --section " + section)
    assert data["world"]["newUsersPerLook"] == ab_users.NEW_USERS and data["rows"]
