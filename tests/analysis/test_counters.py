"""Exact window counts from cumulative counters: resets, partitions, bucket de-cumulation, missing series."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.counters import (
    CounterDataError,
    CounterSnapshot,
    IstioLabels,
    Series,
    aligned_instant,
    increase,
    labelset,
    reset_times,
    snapshot_counts,
    span_cutter,
    window_counts,
)
from analysis.observations import ISTIO_BUCKETS_MS, MetricsQuery, VersionCounts

QUERY = MetricsQuery(namespace="shop", services=("search", "rank"), versions=("v1", "v2"))
N = len(ISTIO_BUCKETS_MS)


def istio(service: str, version: str, code: str = "200", pod: str = "a", **extra: str) -> dict[str, str]:
    return {
        "destination_service_name": service,
        "destination_version": version,
        "destination_service_namespace": "shop",
        "reporter": "destination",
        "response_code": code,
        "pod": pod,
        **extra,
    }


def bucket_series(labels: dict[str, str], cumulative_by_time: list[tuple[float, list[int]]]) -> list[Series]:
    """One series per bound from [(t, cumulative counts per bound)]."""
    out = []
    for i, bound in enumerate(ISTIO_BUCKETS_MS):
        le = "+Inf" if math.isinf(bound) else repr(float(bound))
        samples = tuple((t, float(cum[i])) for t, cum in cumulative_by_time)
        out.append(Series({**labels, "le": le}, samples))
    return out


def cumulate(per_bucket: list[int]) -> list[int]:
    out, total = [], 0
    for c in per_bucket:
        total += c
        out.append(total)
    return out


def one_hot(i: int, count: int) -> list[int]:
    return [count if j == i else 0 for j in range(N)]


@pytest.mark.parametrize(
    ("samples", "start", "end", "expected"),
    [
        pytest.param([(0, 10), (5, 15), (10, 22)], 0, 10, 12, id="plain-difference"),
        pytest.param([(0, 10), (5, 15), (10, 22)], 5, 10, 7, id="sample-at-start-is-baseline"),
        pytest.param([(0, 10), (5, 15), (10, 22), (11, 30)], 0, 10, 12, id="later-samples-ignored"),
        pytest.param([(6, 4), (8, 9)], 5, 10, 9, id="series-born-in-window-counts-from-zero"),
        pytest.param([(0, 100), (4, 120), (6, 3), (8, 9)], 0, 10, 20 + 3 + 6, id="one-reset"),
        pytest.param([(0, 100), (3, 2), (5, 5), (7, 1), (9, 4)], 0, 10, 2 + 3 + 1 + 3, id="two-resets"),
        pytest.param([(0, 50), (7, 0)], 0, 10, 0, id="reset-to-zero"),
        pytest.param([(10, 22), (0, 10), (5, 15)], 0, 10, 12, id="unsorted-input"),
        pytest.param([(1, 10), (2, 10)], 2, 10, 0, id="no-samples-inside"),
        pytest.param([], 0, 10, 0, id="missing-series-is-zero"),
        pytest.param([(0, 5), (3, 8)], 3.5, 3.5, 0, id="empty-window"),
    ],
)
def test_increase(samples: list[tuple[float, float]], start: float, end: float, expected: float) -> None:
    assert increase(samples, start, end) == expected


def test_increase_counts_a_sibling_reset_even_when_the_value_did_not_drop() -> None:
    # The +Inf bucket fell, so this bucket restarted too although 7 > 5: its 7 are all new.
    assert increase([(0, 5), (5, 7)], 0, 10, resets=frozenset({5.0})) == 7
    assert increase([(0, 5), (5, 7)], 0, 10) == 2


@pytest.mark.parametrize(
    "samples",
    [[(0, -1.0)], [(0, math.nan)], [(0, math.inf)], [(math.nan, 1.0)]],
    ids=["negative", "nan", "inf", "nan-time"],
)
def test_increase_refuses_samples_that_are_not_counters(samples: list[tuple[float, float]]) -> None:
    with pytest.raises(CounterDataError):
        increase(samples, 0, 10)


def test_increase_refuses_a_window_that_ends_before_it_starts() -> None:
    with pytest.raises(ValueError, match="before its start"):
        increase([(0, 1)], 10, 5)


def test_reset_times_are_the_drops() -> None:
    assert reset_times([(0, 5), (1, 6), (2, 1), (3, 2), (4, 0)]) == frozenset({2.0, 4.0})


# A counter's life: increments at integer times, occasional restarts (the restart loses what was not yet
# sampled before it, exactly as a real process restart does).
events = st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=60)


def sampled(life: list[tuple[int, bool]]) -> list[tuple[float, float]]:
    value, samples = 0, []
    for t, (inc, restart) in enumerate(life):
        value = inc if restart else value + inc
        samples.append((float(t), float(value)))
    return samples


@settings(max_examples=200, deadline=None)
@given(life=events, cuts=st.lists(st.floats(-1, 61, allow_nan=False), max_size=6))
def test_consecutive_windows_partition_the_counts_exactly(
    life: list[tuple[int, bool]], cuts: list[float]
) -> None:
    samples = sampled(life)
    edges = sorted({-1.0, 61.0, *cuts})
    parts = [increase(samples, a, b) for a, b in itertools.pairwise(edges)]
    assert all(p >= 0 for p in parts)
    assert sum(parts) == increase(samples, -1.0, 61.0)


@settings(max_examples=200, deadline=None)
@given(life=events, born=st.integers(0, 30), cuts=st.lists(st.floats(-1, 61, allow_nan=False), max_size=6))
def test_a_span_cut_per_window_counts_what_each_window_read_alone_does(
    life: list[tuple[int, bool]], born: int, cuts: list[float]
) -> None:
    """What Prometheus gives a read of (a, b] alone: the samples inside, and the last one at or before a (none for
    a series born later). Cutting one read of the whole span gives each window the same increase."""
    samples = [s for s in sampled(life) if s[0] >= born]  # a series first scraped at `born`
    edges = sorted({-1.0, 61.0, *cuts})
    cut = span_cutter([Series({"pod": "a"}, tuple(reversed(samples)))])  # any order: sorted on use
    for a, b in itertools.pairwise(edges):
        alone = [s for s in samples if a < s[0] <= b] + [s for s in samples if s[0] <= a][-1:]
        pieces = cut(a, b)
        assert sum(increase(p.samples, a, b) for p in pieces) == increase(alone, a, b)
        assert all(p.labels == {"pod": "a"} for p in pieces) and len(pieces) == (1 if alone else 0)


@settings(max_examples=200, deadline=None)
@given(life=events)
def test_increase_equals_the_true_increments_when_every_restart_shows_as_a_drop(
    life: list[tuple[int, bool]],
) -> None:
    samples = sampled(life)
    visible = all(
        not restart or t == 0 or samples[t][1] < samples[t - 1][1] for t, (_, restart) in enumerate(life)
    )
    if visible:
        assert increase(samples, -1, 100) == sum(inc for inc, _ in life)


def test_window_counts_sums_series_per_version_with_errors_by_prefix() -> None:
    requests = [
        Series(istio("search", "v1", "200", pod="a"), ((0, 100), (10, 160))),
        Series(istio("search", "v1", "200", pod="b"), ((0, 5), (5, 1), (10, 11))),  # pod b restarted
        Series(istio("search", "v1", "503", pod="a"), ((0, 2), (10, 7))),
        Series(istio("search", "v1", "429", pod="a"), ((0, 0), (10, 4))),
        Series(istio("search", "v2", "500"), ((6, 3),)),  # first 5xx of the canary: born in the window
    ]
    w = window_counts(QUERY, requests, [], 0, 10)
    assert w.of("search", "v1", N) == VersionCounts(60 + 11 + 5 + 4, 5, (0,) * N)
    assert w.of("search", "v2", N) == VersionCounts(3, 3, (0,) * N)
    with_429 = MetricsQuery("shop", ("search",), ("v1",), error_codes=("5", "429"))
    w429 = window_counts(with_429, requests, [], 0, 10)
    assert w429.of("search", "v1", N).errors == 9


def test_window_counts_reports_versions_without_any_series_as_absent_and_zero() -> None:
    requests = [Series(istio("search", "v1"), ((0, 1), (10, 2)))]
    w = window_counts(QUERY, requests, [], 0, 10)
    assert w.absent == frozenset({("search", "v2"), ("rank", "v1"), ("rank", "v2")})
    assert w.of("rank", "v2", N) == VersionCounts.empty(N)
    assert w.counts[("rank", "v2")] == VersionCounts.empty(N)


def test_a_series_that_exists_with_no_increase_is_present_not_absent() -> None:
    requests = [Series(istio("search", "v2"), ((0, 4), (10, 4)))]
    w = window_counts(QUERY, requests, [], 0, 10)
    assert ("search", "v2") not in w.absent
    assert w.of("search", "v2", N).requests == 0


def test_a_series_first_seen_after_the_window_is_absent_from_it() -> None:
    requests = [Series(istio("search", "v2"), ((12, 4),))]
    assert ("search", "v2") in window_counts(QUERY, requests, [], 0, 10).absent


def test_window_counts_ignores_series_outside_the_query() -> None:
    requests = [
        Series(istio("search", "v1"), ((0, 0), (10, 5))),
        Series({**istio("search", "v1"), "reporter": "source"}, ((0, 0), (10, 100))),
        Series({**istio("search", "v1"), "destination_service_namespace": "other"}, ((0, 0), (10, 100))),
        Series(istio("search", "v3"), ((0, 0), (10, 100))),
        Series(istio("cart", "v1"), ((0, 0), (10, 100))),
    ]
    assert window_counts(QUERY, requests, [], 0, 10).of("search", "v1", N).requests == 5
    # A source whose series lack namespace and reporter labels: do not filter on them.
    bare = [Series({"destination_service_name": "search", "destination_version": "v1"}, ((0, 0), (10, 3)))]
    loose = IstioLabels(namespace=None, reporter=None)
    assert window_counts(QUERY, bare, [], 0, 10, loose).of("search", "v1", N).requests == 3
    assert window_counts(QUERY, bare, [], 0, 10).of("search", "v1", N).requests == 0


def test_buckets_are_de_cumulated_per_interval() -> None:
    at0 = cumulate(one_hot(5, 10))  # 10 requests in (25, 50] before the window
    during = [0] * N
    during[3], during[5], during[7], during[N - 1] = 2, 4, 1, 3  # 10 ms, 50 ms, 250 ms, +Inf
    at10 = cumulate([a + b for a, b in zip(one_hot(5, 10), during, strict=True)])
    buckets = bucket_series(istio("search", "v1"), [(0, at0), (10, at10)])
    w = window_counts(QUERY, [], buckets, 0, 10)
    assert w.of("search", "v1", N).buckets == tuple(during)
    assert sum(w.of("search", "v1", N).buckets) == 10


def test_buckets_of_a_restarted_histogram_reset_together() -> None:
    # Before the restart: 5 requests in bucket 2 and 4 in bucket 12; after it: 7 in bucket 8. The
    # cumulative buckets 8..11 went 5 -> 7 (no drop of their own), while +Inf fell 9 -> 7: all restarted.
    before = cumulate([a + b for a, b in zip(one_hot(2, 5), one_hot(12, 4), strict=True)])
    after = cumulate(one_hot(8, 7))
    buckets = bucket_series(istio("search", "v1"), [(0, before), (5, after)])
    w = window_counts(QUERY, [], buckets, 0, 10)
    assert w.of("search", "v1", N).buckets == tuple(one_hot(8, 7))


def layout_series(labels: dict[str, str], layout: tuple[float, ...],
                  latencies_by_time: list[tuple[float, list[float]]]) -> list[Series]:
    """A histogram with its own bucket edges (`layout`, +Inf last) from the latencies seen by each time."""
    out = []
    for bound in layout:
        le = "+Inf" if math.isinf(bound) else repr(float(bound))
        samples = tuple((t, float(sum(1 for ms in seen if ms <= bound))) for t, seen in latencies_by_time)
        out.append(Series({**labels, "le": le}, samples))
    return out


def on_edges(latencies: list[float], edges: tuple[float, ...]) -> tuple[int, ...]:
    """The expected counts: each request at the first common edge >= its latency, 0 between edges."""
    out = [0] * N
    for ms in latencies:
        out[ISTIO_BUCKETS_MS.index(next(e for e in edges if ms <= e))] += 1
    return tuple(out)


def test_versions_with_different_bucket_layouts_are_counted_on_their_common_edges() -> None:
    stable = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 75.0, math.inf)  # 75: not one of Istio's bounds
    canary = (10.0, 50.0, 75.0, 100.0, 1000.0, 5000.0, math.inf)
    before, v1, v2 = [3.0, 400.0], [3.0, 7.0, 20.0, 60.0, 80.0, 300.0, 2000.0], [9.0, 45.0, 99.0, 600.0, 4000.0]
    buckets = [*layout_series(istio("search", "v1"), stable, [(0, before), (10, before + v1)]),
               *layout_series(istio("search", "v2"), canary, [(0, []), (10, v2)])]
    w = window_counts(QUERY, [], buckets, 0, 10)
    edges = (10.0, 50.0, 100.0, 1000.0, math.inf)  # 75 is common but not a bound of the query: not used
    assert w.bucket_edges == {"search": edges}
    assert w.of("search", "v1", N).buckets == on_edges(v1, edges)
    assert w.of("search", "v2", N).buckets == on_edges(v2, edges)
    assert sum(w.of("search", "v1", N).buckets) == len(v1)


def test_pods_of_one_version_with_different_layouts_share_their_common_edges() -> None:
    old, new = (1.0, 10.0, 100.0, math.inf), (10.0, 50.0, 100.0, math.inf)
    buckets = [*layout_series(istio("search", "v2", pod="old"), old, [(0, []), (10, [0.7, 30.0])]),
               *layout_series(istio("search", "v2", pod="new"), new, [(0, []), (10, [40.0, 120.0])])]
    w = window_counts(QUERY, [], buckets, 0, 10)
    assert w.bucket_edges["search"] == (10.0, 100.0, math.inf)
    assert w.of("search", "v2", N).buckets == on_edges([0.7, 30.0, 40.0, 120.0], (10.0, 100.0, math.inf))


def test_default_layouts_resolve_every_bound() -> None:
    buckets = bucket_series(istio("search", "v1"), [(0, [0] * N), (10, [1] * N)])
    assert window_counts(QUERY, [], buckets, 0, 10).bucket_edges == {"search": ISTIO_BUCKETS_MS}


def test_histograms_without_a_common_inf_bucket_are_refused() -> None:
    series = [Series({**istio("search", "v1"), "le": "42"}, ((0, 0), (10, 1)))]
    with pytest.raises(CounterDataError, match=r"no \+Inf bucket in common"):
        window_counts(QUERY, [], series, 0, 10)


def test_a_bucket_bound_that_is_not_a_number_is_refused() -> None:
    series = [Series({**istio("search", "v1"), "le": "fast"}, ((0, 0), (10, 1)))]
    with pytest.raises(CounterDataError, match="le='fast' is not a number"):
        window_counts(QUERY, [], series, 0, 10)


def test_fractional_counts_are_refused() -> None:
    with pytest.raises(CounterDataError, match="not a whole number"):
        window_counts(QUERY, [Series(istio("search", "v1"), ((0, 0), (10, 2.5)))], [], 0, 10)


def test_snapshot_counts_difference_two_scrapes() -> None:
    ok, err, gone, new = (labelset(istio("search", "v1", c, pod=p)) for c, p in
                          (("200", "a"), ("503", "a"), ("200", "old"), ("200", "new")))
    restarted = labelset(istio("search", "v2", pod="b"))
    before = CounterSnapshot(100.0, {ok: 10, err: 1, gone: 50, restarted: 40})
    after = CounterSnapshot(105.0, {ok: 25, err: 3, new: 4, restarted: 6})
    w = snapshot_counts(QUERY, before, after)
    assert (w.start, w.end) == (100.0, 105.0)
    assert w.of("search", "v1", N) == VersionCounts(15 + 2 + 4, 2, (0,) * N)
    assert w.of("search", "v2", N).requests == 6
    assert w.absent == frozenset({("rank", "v1"), ("rank", "v2")})


def test_snapshot_counts_from_an_empty_snapshot_count_from_zero() -> None:
    after = CounterSnapshot(5.0, {labelset(istio("rank", "v2")): 9})
    assert snapshot_counts(QUERY, CounterSnapshot(0.0), after).of("rank", "v2", N).requests == 9


@pytest.mark.parametrize(
    ("now", "step", "settle", "expected"),
    [(1000.0, 10, 2, 990.0), (1012.5, 10, 2, 1010.0), (1011.9, 10, 2, 1000.0), (7.0, 1, 0, 7.0)],
)
def test_aligned_instant(now: float, step: float, settle: float, expected: float) -> None:
    assert aligned_instant(now, step, settle) == expected


def test_a_restart_hidden_in_one_series_is_revealed_by_its_siblings() -> None:
    # The pod restarted between the scrapes at 10 and 20: its 200s dropped from 50 to 8, but its rare 503s
    # counted past their old value (2 -> 3). All 3 errors after the restart are new.
    pod = {"job": "envoy-stats", "instance": "10.0.0.7:15020"}
    ok = Series(istio("search", "v1", "200", **pod), ((0, 0), (10, 50), (20, 8)))
    err = Series(istio("search", "v1", "503", **pod), ((0, 0), (10, 2), (20, 3)))
    other = Series(istio("search", "v1", "503", pod="b", instance="10.0.0.8:15020"), ((0, 0), (10, 4), (20, 5)))
    w = window_counts(QUERY, [ok, err, other], [], 0, 20)
    assert w.of("search", "v1", N).requests == 50 + 8 + 2 + 3 + 5
    assert w.of("search", "v1", N).errors == 2 + 3 + 5  # the other pod did not restart: 4 + 1


def test_a_series_exported_a_scrape_after_the_restart_does_not_restart_its_siblings_twice() -> None:
    # Envoy restarted between the scrapes at 3 and 4. At 4 the new process had served no v2 200 yet, so that
    # series was not exported: its drop (40 -> 13) shows only at 5. That is the restart of 4 seen late; the
    # siblings' increases from 4 to 5 are ordinary ones (taking 5 for a second restart counted them twice).
    # The rare 503s never dropped: they are new after the restart all the same.
    pod = {"job": "mesh", "instance": "127.0.0.1:9901"}
    v1 = Series(istio("search", "v1", "200", **pod), ((0, 59), (2, 148), (3, 148), (4, 7), (5, 47), (6, 58)))
    v2 = Series(istio("search", "v2", "200", **pod), ((0, 18), (2, 40), (3, 40), (5, 13), (6, 15)))
    v2_err = Series(istio("search", "v2", "503", **pod), ((0, 3), (3, 12), (5, 14), (6, 15)))
    w = window_counts(QUERY, [v1, v2, v2_err], [], 0, 6)
    assert w.of("search", "v1", N).requests == (148 - 59) + 7 + 40 + 11
    assert w.of("search", "v2", N).requests == (40 - 18) + 13 + 2 + (12 - 3) + 14 + 1
    assert w.of("search", "v2", N).errors == (12 - 3) + 14 + 1
