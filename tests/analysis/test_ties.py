"""The latency statistic with tied buckets and few requests: its variance follows the versions, not only the
null, so a canary at the tolerance or the margin is judged at alpha (bench/ties.py measures the full grid)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.histogram import model_variance, rank_sum, shift_increment, u_variance
from bench.ties import canary_at, cell


@pytest.mark.parametrize("world", ["heavy", "istio"])
@pytest.mark.parametrize("delta", [0.0, 0.1])
def test_u_variance_is_the_spread_of_u(world: str, delta: float) -> None:
    rng = np.random.default_rng(21)
    p_b, p_c = canary_at(world, delta)
    u = rank_sum(rng.multinomial(15, p_c, size=100_000), rng.multinomial(285, p_b, size=100_000)).u
    assert float(u_variance(p_c, p_b, 15, 285)) == pytest.approx(float(u.var()), rel=0.03)


def test_with_ties_a_differing_canary_varies_far_more_than_the_null_says() -> None:
    p_b, p_c = canary_at("heavy", 0.1)
    pooled = (15 * p_c + 285 * p_b) / 300
    assert float(u_variance(p_c, p_b, 15, 285)) > 2.5 * float(u_variance(pooled, pooled, 15, 285))
    # The judge's variance comes from the counts before the interval: history that shows the difference.
    before_c, before_b = 2000 * p_c, 38000 * p_b
    assert float(model_variance(before_c, before_b, 15, 285)) > 2.5 * float(u_variance(pooled, pooled, 15, 285))


def test_the_increment_is_centred_on_delta() -> None:
    rng = np.random.default_rng(22)
    p_b, p_c = canary_at("heavy", 0.1)
    c, b = rng.multinomial(15, p_c, size=50_000), rng.multinomial(285, p_b, size=50_000)
    s, v = shift_increment(c, b, 2000 * p_c, 38000 * p_b)
    assert float(s.sum() / (np.sqrt(3.0) * v.sum())) == pytest.approx(0.1, rel=0.03)
    assert float(np.var(s) / np.mean(v)) == pytest.approx(1.0, rel=0.05)  # Var(s_t) = v_t


def test_without_history_the_interval_null_variance_is_used() -> None:
    c, b = np.array([0, 3, 2]), np.array([10, 20, 5])
    s, v = shift_increment(c, b, np.zeros(3), np.zeros(3))
    test = rank_sum(c, b)
    assert float(v) == pytest.approx((5 * 35) ** 2 / (12 * float(test.variance)))
    assert float(s) == pytest.approx(float(np.sqrt(v) * test.z))


@pytest.mark.timeout(120)
def test_a_canary_at_the_margin_with_few_tied_requests_is_shown_safe_at_most_alpha() -> None:
    # 97% of requests in one bucket; the canary exactly at the default margin, 5 requests a minute.
    judged = cell("heavy", "safety@margin", 5, 1000, 120, 3, corrected=True)["by120"]
    before = cell("heavy", "safety@margin", 5, 1000, 120, 3, corrected=False)["by120"]
    assert judged <= 0.05 and before >= 0.12


@pytest.mark.timeout(120)
def test_a_canary_at_the_tolerance_with_few_tied_requests_is_failed_at_most_alpha() -> None:
    judged = cell("heavy", "harm@tol", 15, 1000, 120, 4, corrected=True)["by120"]
    before = cell("heavy", "harm@tol", 15, 1000, 120, 4, corrected=False)["by120"]
    assert judged <= 0.05 and before >= 0.07
