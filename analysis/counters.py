"""Exact per-window counts from raw cumulative counters (Istio's requests total and latency buckets).

This module owns the arithmetic that turns samples of cumulative counters into the per-interval
`WindowCounts` the judges read. It is pure: the Prometheus provider and the direct scrape fetch the
samples, this module only differences them.

Why not PromQL `increase()`: it extrapolates to the window edges and returns fractions, and it sees no
increase for a series born inside the window. Here the value of a series at an instant is its last sample
at or before that instant, so consecutive windows (a, b], (b, c] partition the counts exactly. A series
with no sample at or before the window start counts from zero (Istio creates a series at its first
request). A drop between two samples means the counter restarted from zero, so the new value is the
increase; every raw sample inside the window is walked, so any number of resets is handled. Latency
buckets of one histogram (same labels but `le`) share their resets: when any bucket drops, all of them
restarted, which keeps the per-bucket counts consistent even when a bucket's new value is not lower.

Bucket layouts may differ (Istio's `statsHistogramBuckets` annotation, set on one version only): a
cumulative bucket `le=b` counts every request up to `b` whatever the other edges, so the edges that every
histogram of a service has (all versions, all pods) give exact counts for all of them. Only those edges
(among the query's bounds) are used; each count sits at its upper edge, the bounds between stay empty.
`WindowCounts.bucket_edges` says which edges each service's counts resolve.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from analysis.observations import MetricsQuery, VersionCounts, WindowCounts

# (timestamp in seconds, cumulative value)
Sample = tuple[float, float]
# A series' identity: all its labels (including the metric name when the source gives it).
LabelSet = frozenset[tuple[str, str]]

K = TypeVar("K", bound=Hashable)

# Counts are whole numbers; a float sum of whole numbers below 2**53 is exact, so anything further
# from an integer than this is not a request counter.
_WHOLE_TOLERANCE = 1e-6


class CounterDataError(ValueError):
    """Samples that cannot be counted: not finite, negative, fractional, or buckets that do not fit."""


@dataclass(frozen=True)
class Series:
    """One cumulative counter series: its labels and its samples (any order; sorted on use)."""

    labels: Mapping[str, str]
    samples: tuple[Sample, ...]

    def label(self, name: str) -> str:
        return self.labels.get(name, "")


@dataclass(frozen=True)
class IstioLabels:
    """The label names the counters are read and filtered by.

    `namespace` and `reporter` may be None for sources whose series lack them (a local router without
    namespaces); then the series are not filtered on that label.
    """

    service: str = "destination_service_name"
    version: str = "destination_version"
    code: str = "response_code"
    le: str = "le"
    reporter: str | None = "reporter"
    namespace: str | None = "destination_service_namespace"


@dataclass(frozen=True)
class CounterSnapshot:
    """Cumulative values of every series at one scrape (the direct-scrape source's unit)."""

    taken_at: float
    requests: Mapping[LabelSet, float] = field(default_factory=dict)
    buckets: Mapping[LabelSet, float] = field(default_factory=dict)


def labelset(labels: Mapping[str, str]) -> LabelSet:
    return frozenset(labels.items())


def aligned_instant(now: float, step: float, settle: float) -> float:
    """The latest multiple of `step` that is at least `settle` seconds old.

    Query windows ending there: a scrape stamped before an instant may still be in flight when the
    instant has just passed, and a sample that lands after its window was read would be lost.
    `settle` should cover one scrape interval plus the scrape timeout.
    """
    if step <= 0:
        raise ValueError(f"step must be positive, got {step}")
    return math.floor((now - settle) / step) * step


def _checked(samples: Iterable[Sample]) -> list[Sample]:
    ordered = sorted(samples)
    for t, v in ordered:
        if not (math.isfinite(t) and math.isfinite(v)):
            raise CounterDataError(f"sample ({t}, {v}) is not finite")
        if v < 0:
            raise CounterDataError(f"sample ({t}, {v}) is negative: not a counter")
    return ordered


def reset_times(samples: Sequence[Sample]) -> frozenset[float]:
    """Timestamps of the samples lower than the sample before them (the counter restarted)."""
    ordered = _checked(samples)
    return frozenset(t for (_, before), (t, v) in itertools.pairwise(ordered) if v < before)


def increase(
    samples: Sequence[Sample], start: float, end: float, resets: frozenset[float] = frozenset()
) -> float:
    """The counter's exact increase in (start, end].

    The baseline is the last sample at or before `start` (zero when there is none: the series was born
    later). Each sample in (start, end] adds its difference to the one before; at a reset (a drop, or a
    timestamp in `resets` from a sibling series) the sample's whole value is the increase.
    """
    if end < start:
        raise ValueError(f"window end {end} is before its start {start}")
    previous = 0.0
    total = 0.0
    for t, v in _checked(samples):
        if t > end:
            break
        if t <= start:
            previous = v
            continue
        total += v if (v < previous or t in resets) else v - previous
        previous = v
    return total


def _whole(value: float, what: str) -> int:
    rounded = round(value)
    if abs(value - rounded) > _WHOLE_TOLERANCE:
        raise CounterDataError(f"{what} is {value}, not a whole number of requests")
    return int(rounded)


def _selected(series: Series, query: MetricsQuery, labels: IstioLabels) -> tuple[str, str] | None:
    """The (service, version) the series counts for, or None when the query does not cover it."""
    service, version = series.label(labels.service), series.label(labels.version)
    if service not in query.services or version not in query.versions:
        return None
    if labels.reporter is not None and series.label(labels.reporter) != query.reporter:
        return None
    if labels.namespace is not None and query.namespace and series.label(labels.namespace) != query.namespace:
        return None
    return service, version


def _exists_by(series: Series, end: float) -> bool:
    return any(t <= end for t, _ in series.samples)


def sum_increases(
    series: Iterable[Series],
    start: float,
    end: float,
    key: Callable[[Series], K | None],
    resets_of: Callable[[Series], frozenset[float]] = lambda _: frozenset(),
) -> dict[K, float]:
    """Each series differenced on its own, then summed by `key` (series whose key is None are skipped)."""
    totals: dict[K, float] = defaultdict(float)
    for s in series:
        k = key(s)
        if k is not None:
            totals[k] += increase(s.samples, start, end, resets_of(s))
    return dict(totals)


def _histogram_resets(buckets: Sequence[Series], le: str) -> Callable[[Series], frozenset[float]]:
    """Resets shared by the buckets of one histogram: the union of every bucket's drops."""
    shared: dict[LabelSet, frozenset[float]] = defaultdict(frozenset)
    for s in buckets:
        group = labelset({k: v for k, v in s.labels.items() if k != le})
        shared[group] = shared[group] | reset_times(s.samples)

    def resets_of(s: Series) -> frozenset[float]:
        return shared[labelset({k: v for k, v in s.labels.items() if k != le})]

    return resets_of


def _le_value(s: Series, labels: IstioLabels) -> float:
    try:
        return float(s.label(labels.le))
    except ValueError:
        where = f"{s.label(labels.service)}/{s.label(labels.version)}"
        raise CounterDataError(f"{where}: bucket bound le={s.label(labels.le)!r} is not a number") from None


def common_edges(buckets: Iterable[Series], bounds: Sequence[float], labels: IstioLabels
                 ) -> dict[str, tuple[float, ...]]:
    """Per service, the bucket edges among `bounds` that every one of its histograms (the series that
    differ only by `le`: every version and pod) has. Raises CounterDataError when they share no +Inf."""
    layouts: dict[str, dict[LabelSet, set[float]]] = defaultdict(lambda: defaultdict(set))
    for s in buckets:
        histogram = labelset({k: v for k, v in s.labels.items() if k != labels.le})
        layouts[s.label(labels.service)][histogram].add(_le_value(s, labels))
    edges = {}
    for service, histograms in layouts.items():
        shared = set(bounds).intersection(*histograms.values())
        if math.inf not in shared:
            raise CounterDataError(f"{service}: its histograms have no +Inf bucket in common")
        edges[service] = tuple(sorted(shared))
    return edges


def _per_bucket(cumulative: Mapping[float, float], edges: Sequence[float], bounds: Sequence[float],
                where: str) -> tuple[int, ...]:
    """Non-cumulative counts on `bounds` from the cumulative count at each of `edges` (a subset of
    `bounds`): the requests in (previous edge, edge] sit at the edge's position, other positions are 0."""
    missing = [e for e in edges if e not in cumulative]
    if missing:
        raise CounterDataError(f"{where}: no series for bucket bounds {missing}")
    whole = [_whole(cumulative[e], f"{where} bucket le={e:g}") for e in edges]
    counts = [b - a for a, b in zip([0, *whole], whole, strict=False)]
    if any(c < 0 for c in counts):
        raise CounterDataError(f"{where}: cumulative buckets decrease with le: {whole}")
    out = [0] * len(bounds)
    for edge, count in zip(edges, counts, strict=True):
        out[bounds.index(edge)] = count
    return tuple(out)


def window_counts(
    query: MetricsQuery,
    requests: Sequence[Series],
    buckets: Sequence[Series],
    start: float,
    end: float,
    labels: IstioLabels = IstioLabels(),  # frozen, so one shared default is safe
) -> WindowCounts:
    """Exact counts per (service, version) in (start, end] from `istio_requests_total` and
    `istio_request_duration_milliseconds_bucket` series; raises CounterDataError for unusable samples."""
    bounds = tuple(query.bounds_ms)
    requests = [s for s in requests if _selected(s, query, labels)]
    buckets = [s for s in buckets if _selected(s, query, labels)]

    def pair(s: Series) -> tuple[str, str] | None:
        return _selected(s, query, labels)

    def error_pair(s: Series) -> tuple[str, str] | None:
        return pair(s) if s.label(labels.code).startswith(query.error_codes) else None

    edges = common_edges(buckets, bounds, labels)

    def bucket_key(s: Series) -> tuple[str, str, float] | None:
        service, version, le = s.label(labels.service), s.label(labels.version), _le_value(s, labels)
        return (service, version, le) if le in edges[service] else None

    totals = sum_increases(requests, start, end, pair)
    errors = sum_increases(requests, start, end, error_pair)
    cumulative = sum_increases(buckets, start, end, bucket_key, _histogram_resets(buckets, labels.le))
    present = {pair(s) for s in (*requests, *buckets) if _exists_by(s, end)}

    counts: dict[tuple[str, str], VersionCounts] = {}
    for service in query.services:
        for version in query.versions:
            where = f"{service}/{version}"
            per_edge = {le: v for (s, ver, le), v in cumulative.items() if (s, ver) == (service, version)}
            counts[(service, version)] = VersionCounts(
                requests=_whole(totals.get((service, version), 0.0), f"{where} requests"),
                errors=_whole(errors.get((service, version), 0.0), f"{where} errors"),
                buckets=_per_bucket(per_edge, edges[service], bounds, where) if per_edge else (0,) * len(bounds),
            )
    absent = frozenset(p for p in counts if p not in present)
    return WindowCounts(start=start, end=end, counts=counts, absent=absent, bucket_edges=edges)


def _snapshot_series(before: Mapping[LabelSet, float], after: Mapping[LabelSet, float],
                     t0: float, t1: float) -> list[Series]:
    series = []
    for key in before.keys() | after.keys():
        samples = [(t0, before[key])] if key in before else []
        samples += [(t1, after[key])] if key in after else []
        series.append(Series(dict(key), tuple(samples)))
    return series


def snapshot_counts(
    query: MetricsQuery,
    before: CounterSnapshot,
    after: CounterSnapshot,
    labels: IstioLabels = IstioLabels(),  # frozen, so one shared default is safe
) -> WindowCounts:
    """Counts in (before.taken_at, after.taken_at] from two scrapes of cumulative values.

    A series missing from `before` counts from zero; one lower in `after` restarted (its new value is
    the increase). Pass `CounterSnapshot(taken_at=t)` as `before` to count everything since zero.
    """
    t0, t1 = before.taken_at, after.taken_at
    return window_counts(
        query,
        _snapshot_series(before.requests, after.requests, t0, t1),
        _snapshot_series(before.buckets, after.buckets, t0, t1),
        t0,
        t1,
        labels,
    )
