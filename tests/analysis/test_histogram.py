"""The binned statistics equal their textbook versions on the expanded samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analysis.histogram import quantile, quantiles, rank_sum, reference_tail_index, tail_counts, tail_index

BOUNDS = (10.0, 25.0, 50.0, 100.0, 250.0, math.inf)


def expand(counts: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts), dtype=float), counts)


@pytest.mark.parametrize("seed", range(12))
def test_rank_sum_equals_scipy_mannwhitneyu_on_expanded_samples(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 30, size=8) * (rng.random(8) < 0.7)
    y = rng.integers(0, 30, size=8) * (rng.random(8) < 0.7)
    x[0] += 1
    y[-1] += 1
    ours = rank_sum(x, y)
    for alternative, p in (("two-sided", ours.p_value_two_sided()), ("greater", ours.p_value_greater())):
        ref = stats.mannwhitneyu(expand(list(x)), expand(list(y)), alternative=alternative, method="asymptotic")
        assert float(ours.u) == pytest.approx(ref.statistic)
        assert float(p) == pytest.approx(ref.pvalue, rel=1e-9)


def test_rank_sum_without_continuity_matches_scipy() -> None:
    x, y = [3, 0, 9, 4, 1], [1, 5, 5, 2, 0]
    ref = stats.mannwhitneyu(expand(x), expand(y), use_continuity=False, method="asymptotic")
    assert float(rank_sum(x, y).p_value_two_sided(continuity=False)) == pytest.approx(ref.pvalue)


def test_delta_is_probability_of_superiority_difference() -> None:
    r = rank_sum([0, 0, 5], [5, 0, 0])
    assert float(r.delta) == pytest.approx(1.0)
    assert float(rank_sum([2, 2, 2], [2, 2, 2]).delta) == pytest.approx(0.0)


def test_everything_in_one_bucket_has_no_evidence() -> None:
    r = rank_sum([0, 40, 0], [0, 900, 0])
    assert float(r.variance) == 0.0
    assert float(r.z) == 0.0
    assert float(r.p_value_two_sided()) == 1.0


def test_empty_arm_gives_zero_statistic() -> None:
    r = rank_sum([0, 0, 0], [3, 4, 5])
    assert float(r.z) == 0.0 and float(r.delta) == 0.0


def test_huge_counts_stay_finite() -> None:
    big = np.array([10**12, 3 * 10**12, 10**11])
    r = rank_sum(big, big[::-1])
    assert np.isfinite(r.z) and np.isfinite(r.variance) and r.variance > 0


def test_rank_sum_broadcasts_over_replications() -> None:
    xs = np.array([[1, 2, 3], [3, 2, 1]])
    ys = np.array([[2, 2, 2], [2, 2, 2]])
    both = rank_sum(xs, ys)
    assert float(both.z[0]) == pytest.approx(float(rank_sum(xs[0], ys[0]).z))
    assert float(both.z[1]) == pytest.approx(float(rank_sum(xs[1], ys[1]).z))


def test_quantile_interpolates_inside_the_bucket() -> None:
    # 10 requests: 4 in (10, 25], 6 in (25, 50]; the median is 1/6 into the (25, 50] bucket.
    assert quantile([0, 4, 6, 0, 0, 0], BOUNDS, 0.5) == pytest.approx(25 + 25 * (1 / 6))
    assert quantile([0, 0, 0, 0, 0, 0], BOUNDS, 0.5) is None
    assert quantile([0, 0, 0, 0, 0, 7], BOUNDS, 0.99) == 250.0  # +Inf bucket: last finite bound
    assert quantile([5, 0, 0, 0, 0, 0], BOUNDS, 0.5) == pytest.approx(5.0)


def test_quantiles_vectorised_nan_for_empty() -> None:
    q = quantiles(np.array([[0, 4, 6, 0, 0, 0], [0, 0, 0, 0, 0, 0]]), BOUNDS, 0.5)
    assert q[0] == pytest.approx(25 + 25 / 6) and math.isnan(q[1])


def test_tail_helpers() -> None:
    assert tail_index(BOUNDS, 100.0) == 4  # slower than 100 ms: buckets (100, 250] and beyond
    assert tail_index(BOUNDS, 60.0) == 4  # rounded up to the next bound
    counts = [0, 50, 30, 15, 4, 1]
    start = int(reference_tail_index(counts, 0.95))  # at most 5% at or above the start
    assert start == 4
    assert float(tail_counts(counts, start)) == 5
    assert int(reference_tail_index([0] * 6, 0.95)) == 5
