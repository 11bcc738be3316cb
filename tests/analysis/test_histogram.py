"""The binned statistics equal their textbook versions on the expanded samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from analysis.counters import Series, window_counts
from analysis.histogram import (
    quantile,
    quantiles,
    rank_sum,
    reference_tail_index,
    tail_counts,
    tail_edge,
    tail_index,
)
from analysis.observations import ISTIO_BUCKETS_MS, MetricsQuery

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


# --- the tail check on counts that resolve only the edges two layouts share ----------------------------

def _histogram(version: str, layout: list[float], latencies: list[float]) -> list[Series]:
    labels = {"destination_service_name": "s", "destination_version": version, "reporter": "destination"}
    return [Series({**labels, "le": "+Inf" if math.isinf(b) else repr(b)},
                   ((0.0, 0.0), (1.0, float(sum(1 for ms in latencies if ms <= b))))) for b in layout]


FINITE = [b for b in ISTIO_BUCKETS_MS if math.isfinite(b)]
layouts = st.lists(st.sampled_from(FINITE), unique=True).map(lambda bs: [*sorted(bs), math.inf])
latency = st.floats(0.01, 4_000_000, allow_nan=False)


@given(stable=layouts, canary=layouts, latencies=st.lists(latency, max_size=40),
       threshold=st.floats(0.1, 4_000_000))
def test_the_tail_holds_exactly_the_requests_slower_than_the_nearest_common_edge_below(
        stable: list[float], canary: list[float], latencies: list[float], threshold: float) -> None:
    """Counted from `tail_index` on, a version's slow requests are those slower than `tail_edge`: the
    threshold's bucket bound when both layouts have it, else the nearest common edge below. So no request
    slower than that bound ever counts as fast, in either version."""
    query = MetricsQuery("", ("s",), ("v1", "v2"))
    w = window_counts(query, [], [*_histogram("v1", stable, []), *_histogram("v2", canary, latencies)], 0, 1)
    edges = w.bucket_edges["s"]
    assert set(edges) == set(stable) & set(canary)
    edge = tail_edge(ISTIO_BUCKETS_MS, edges, threshold)
    slow = int(tail_counts(w.of("s", "v2", len(ISTIO_BUCKETS_MS)).buckets, tail_index(ISTIO_BUCKETS_MS, threshold)))
    assert slow == sum(1 for ms in latencies if ms > edge)
    assert edge in (*edges, 0.0)
    grid = next(b for b in ISTIO_BUCKETS_MS if b >= threshold)
    if grid in edges and math.isfinite(grid):
        assert edge == grid  # the judge's own bound (the one at or above the threshold) when common
    else:
        assert edge < threshold  # else below: the tail is a superset of the requests slower than it


def test_tail_edge_examples() -> None:
    edges = (10.0, 50.0, 100.0, 1000.0, math.inf)
    assert tail_edge(ISTIO_BUCKETS_MS, edges, 100) == 100  # a common edge: exact
    assert tail_edge(ISTIO_BUCKETS_MS, edges, 250) == 100  # 250 is not common: the edge below
    assert tail_edge(ISTIO_BUCKETS_MS, edges, 80) == 100  # Istio's rule moves 80 to 100, which is common
    assert tail_edge(ISTIO_BUCKETS_MS, (1000.0, math.inf), 250) == 0.0  # nothing common below: all slow
