"""bench/ab_libraries.py without gbstats: its data preparation, its claims about the two boundaries, and the
message when gbstats is missing (the benchmark itself needs `pip install -e '.[bench]'`)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from analysis.abtest import rho_squared
from analysis.users import UserTotals, ratio_and_variance, user_difference_cs
from bench import ab_libraries, ab_users

pytestmark = pytest.mark.timeout(120)


def test_growthbook_columns_are_our_per_user_sums() -> None:
    s = ab_users.simulate(np.random.default_rng(4), reps=3, looks=4, icc=0.2, lift=0.1)
    for side in ("v", "c"):
        cols = ab_libraries.growthbook_columns(s, side)
        assert set(cols) == {"users", "count", "main_sum", "main_sum_squares", "denominator_sum",
                             "denominator_sum_squares", "main_denominator_sum_product"}
        assert np.array_equal(cols["count"], s[f"users_{side}"])  # a ratio metric's n is the number of users
        assert np.array_equal(cols["main_sum"], s[f"y_{side}"])
        assert np.array_equal(cols["denominator_sum"], s[f"n_{side}"])
        assert np.array_equal(cols["main_sum_squares"], s[f"yy_{side}"])
        assert np.array_equal(cols["denominator_sum_squares"], s[f"nn_{side}"])
        assert np.array_equal(cols["main_denominator_sum_product"], s[f"yn_{side}"])


def _waudby_smith_eq9(var: float, n: float, tuning: float, alpha: float) -> float:
    """The half-width that gbstats' SequentialTwoSidedTTest computes (Waudby-Smith et al., eq. 9 and 161),
    written out here from the paper: N the users of both variants, var the variance of the difference."""
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning
    log_term = math.log(math.sqrt(n * rho2 + 1) / alpha)
    return math.sqrt(var * n) * math.sqrt(2 * (n * rho2 + 1) / (n * n * rho2) * log_term)


@pytest.mark.parametrize("users", [150, 1000, 20_000])
def test_matched_tuning_makes_the_two_boundaries_one_for_a_50_50_split(users: int) -> None:
    v = UserTotals(users, 0.11 * 3 * users, 3 * users, 0.9 * users, 25 * users, 1.4 * users)
    c = UserTotals(users, 0.10 * 3 * users, 3 * users, 0.8 * users, 24 * users, 1.2 * users)
    alpha = 0.05
    est, lo, hi = user_difference_cs(v, c, alpha, rho_squared(ab_libraries.TUNING_USERS, alpha), proportion=False)
    var = float(ratio_and_variance(v, False)[1] + ratio_and_variance(c, False)[1])
    width = _waudby_smith_eq9(var, 2 * users, ab_libraries.matched_tuning(ab_libraries.TUNING_USERS), alpha)
    assert float(hi - est) == pytest.approx(width, rel=1e-9)
    assert float(est - lo) == pytest.approx(width, rel=1e-9)
    # gbstats' default tuning is another boundary: different widths at the same data.
    assert _waudby_smith_eq9(var, 2 * users, ab_libraries.DEFAULT_TUNING, alpha) != pytest.approx(width, rel=1e-6)


class _FakeTest:
    """Stands in for gbstats' SequentialTwoSidedTTest: the interval is the ratio difference b - a +- 1."""

    def __init__(self, stat_a: Any, stat_b: Any, config: Any) -> None:
        self.a, self.b = stat_a, stat_b

    def compute_result(self) -> Any:
        d = self.b.m.sum / self.b.d.sum - self.a.m.sum / self.a.d.sum
        return SimpleNamespace(ci=[d - 1.0, d + 1.0], error_message=None)


def test_gbstats_cs_compares_the_variant_with_the_control_at_every_look() -> None:
    fake = SimpleNamespace(
        RatioStatistic=lambda n, m_statistic, d_statistic, m_d_sum_of_products: SimpleNamespace(
            n=n, m=m_statistic, d=d_statistic, md=m_d_sum_of_products),
        SampleMeanStatistic=lambda n, sum, sum_squares: SimpleNamespace(n=n, sum=sum, sum_squares=sum_squares),
        SequentialTwoSidedTTest=_FakeTest, SequentialConfig=lambda **kw: kw)
    s = ab_users.simulate(np.random.default_rng(8), reps=2, looks=5, icc=0.0, lift=0.5)
    lo, hi, _, analyses, error = ab_libraries.gbstats_cs(fake, s, tuning=4000.0)
    both = (s["users_v"] >= 2) & (s["users_c"] >= 2)
    assert analyses == int(both.sum()) and not error.any()
    d = s["y_v"] / s["n_v"] - s["y_c"] / s["n_c"]
    assert np.allclose(((lo + hi) / 2)[both], d[both])  # variant - control, not the other way round
    assert np.isinf(lo[~both]).all()


def test_agreement_measures_bounds_and_decisions() -> None:
    s = {"users_v": np.full((2, 3), 500.0), "users_c": np.full((2, 3), 500.0)}
    lo, hi = np.full((2, 3), -0.01), np.full((2, 3), 0.01)
    same = ab_libraries.agreement(s, lo, hi, lo, hi)
    assert same == {"maxBoundDifferenceOfWidth": 0.0, "looksDecidedDifferentlyPct": 0.0,
                    "experimentsDecidedDifferentlyPct": 0.0}
    lo_b = lo.copy()
    lo_b[0, 2] = 0.001  # excludes 0 at one look of one experiment
    moved = ab_libraries.agreement(s, lo, hi, lo_b, hi)
    assert moved["maxBoundDifferenceOfWidth"] == pytest.approx(0.011 / 0.02)
    assert moved["looksDecidedDifferentlyPct"] == pytest.approx(100 / 6)
    assert moved["experimentsDecidedDifferentlyPct"] == 50.0


def test_without_gbstats_the_command_fails_naming_the_bench_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Whether or not gbstats is installed here, make its import fail as it does where it is not.
    for name in [n for n in sys.modules if n == "gbstats" or n.startswith("gbstats.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "gbstats", None)
    out = tmp_path / "lib.json"
    assert ab_libraries.main(["--reps", "2", "--looks", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[bench]'" in err and "gbstats" in err
    assert not out.exists() and not out.with_suffix(".txt").exists()
