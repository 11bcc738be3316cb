"""analysis/users.py: the user-level ratio, its delta-method variance and confidence sequence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.abtest import rho_squared
from analysis.users import UserTotals, ratio_and_variance, user_difference_cs

pytestmark = pytest.mark.timeout(60)
ALPHA = 0.05
RHO2 = rho_squared(1000, ALPHA)


def totals(y: np.ndarray, n: np.ndarray) -> UserTotals:
    return UserTotals(len(y), y.sum(), n.sum(), (y * y).sum(), (n * n).sum(), (y * n).sum())


def test_the_variance_is_the_cluster_robust_one_computed_user_by_user() -> None:
    rng = np.random.default_rng(1)
    n = rng.poisson(5, 400) + 1
    y = rng.binomial(n, rng.beta(1, 9, 400))
    r, var = ratio_and_variance(totals(y, n), proportion=False)
    ratio = y.sum() / n.sum()
    phi = (y - ratio * n) / n.mean()  # each user's influence on the ratio
    assert float(r) == pytest.approx(ratio)
    assert float(var) == pytest.approx(phi.var(ddof=1) / len(y), rel=1e-9)


def test_one_impression_per_user_is_the_binomial_variance() -> None:
    y = np.array([1] * 30 + [0] * 270)
    r, var = ratio_and_variance(totals(y, np.ones(300, dtype=int)), proportion=False)
    assert float(var) == pytest.approx(0.1 * 0.9 / 299, rel=1e-9)  # sample variance (U - 1) over U users
    assert float(r) == pytest.approx(0.1)


def test_correlated_users_widen_the_interval_over_the_impression_level_one() -> None:
    """Heavy users who all click, the rest never: the same click-through as independent impressions, but
    far less information. The user-level interval is much wider."""
    alpha, rho2 = ALPHA, RHO2
    heavy = totals(np.array([100] * 20 + [0] * 180), np.full(200, 100))  # 20 users click everything
    one_each = totals(np.array([1] * 2000 + [0] * 18_000), np.ones(20_000, dtype=int))
    _, lo_h, hi_h = user_difference_cs(heavy, heavy, alpha, rho2)
    _, lo_i, hi_i = user_difference_cs(one_each, one_each, alpha, rho2)
    assert lo_h < 0 < hi_h and (hi_h - lo_h) > 5 * (hi_i - lo_i)


def test_no_interval_before_two_users_and_a_denominator_on_each_side() -> None:
    alpha, rho2 = ALPHA, RHO2
    one = UserTotals(1, 1.0, 3.0, 1.0, 9.0, 3.0)
    many = totals(np.array([0, 1, 0, 2]), np.array([3, 3, 4, 5]))
    est, lo, hi = user_difference_cs(one, many, alpha, rho2)
    assert math.isnan(float(est)) and float(lo) == -math.inf and float(hi) == math.inf
    est, lo, hi = user_difference_cs(many, many, alpha, rho2)
    assert float(est) == 0.0 and float(lo) < 0 < float(hi)


def test_no_clicks_at_all_is_not_certainty_for_a_proportion() -> None:
    zero = totals(np.zeros(50, dtype=int), np.full(50, 4))
    _, lo, hi = user_difference_cs(zero, zero, ALPHA, RHO2)
    assert float(lo) < 0 < float(hi)


@pytest.mark.parametrize(("sums", "problem"), [
    ((10, 5, 20, 5, 50, 12), ""),
    ((10, -1, 20, 5, 50, 12), "finite and >= 0"),
    ((2, 10, 20, 10, 200, 100), "sum of squares below"),  # two users with 10 clicks: sum Y^2 >= 50
    ((10, 5, 20, 5, 50, 40), "cross-product above"),
])
def test_impossible_sums_are_named(sums: tuple[float, ...], problem: str) -> None:
    got = UserTotals(*sums).problem()
    assert (problem in got) if problem else got == ""
