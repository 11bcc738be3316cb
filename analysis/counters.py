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

import bisect
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
    # The label naming the pod a series was scraped from (Prometheus' Kubernetes pod discovery sets `pod`);
    # None when the source cannot tell pods apart. Counts are then not broken down by pod.
    pod: str | None = "pod"


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
    return frozenset(t for _, t in drops(samples))


def drops(samples: Sequence[Sample]) -> list[tuple[float, float]]:
    """(before, at): the timestamps of each sample lower than the sample before it and of that sample; the
    counter restarted in (before, at]."""
    ordered = _checked(samples)
    return [(t0, t) for (t0, before), (t, v) in itertools.pairwise(ordered) if v < before]


def increase(
    samples: Sequence[Sample], start: float, end: float, resets: frozenset[float] = frozenset()
) -> float:
    """The counter's exact increase in (start, end].

    The baseline is the last sample at or before `start` (zero when there is none: the series was born
    later). Each sample in (start, end] adds its difference to the one before; at a reset (a drop, or a
    restart of its process that a sibling series saw, `resets`, between the sample before and this one) the
    sample's whole value is the increase.
    """
    if end < start:
        raise ValueError(f"window end {end} is before its start {start}")
    previous, previous_t = 0.0, -math.inf
    total = 0.0
    for t, v in _checked(samples):
        if t > end:
            break
        if t > start:
            restarted = v < previous or any(previous_t < r <= t for r in resets)
            total += v if restarted else v - previous
        previous, previous_t = v, t
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


def span_cutter(series: Sequence[Series]) -> Callable[[float, float], list[Series]]:
    """Cut series read over a long span into what one window (start, end] reads: each series' last sample at or
    before `start` (its baseline; none when the series was born later) and its samples in (start, end], as a read
    of that window alone gives them. Sorted once, then bisected per window, so that cutting N windows from one
    read costs about what N reads' own samples would."""
    ordered = [(s.labels, _checked(s.samples)) for s in series]
    times = [[t for t, _ in samples] for _, samples in ordered]

    def cut(start: float, end: float) -> list[Series]:
        out = []
        for (labels, samples), ts in zip(ordered, times, strict=True):
            lo, hi = max(bisect.bisect_right(ts, start) - 1, 0), bisect.bisect_right(ts, end)
            if hi > lo:
                out.append(Series(labels, tuple(samples[lo:hi])))
        return out

    return cut


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


# The labels that tell one scraped process (a sidecar, the local router) from another: when it restarts,
# every counter it exports starts again from zero at once.
TARGET_LABELS = ("job", "instance")


def _target_resets(series: Sequence[Series], labels: IstioLabels) -> Callable[[Series], frozenset[float]]:
    """Resets shared by every series of one scraped process: the union of their drops.

    A restart shows as a drop only in a counter that had counted more before it than after: a rarely hit
    series (a version's 5xx, a slow bucket) can count past its old value by the next scrape and hide the
    restart, and its requests before the restart would be lost. Its siblings' drops reveal it. A series
    without any target label cannot be told apart from other processes' (a store that drops the labels, a
    stand-in): only its own histogram's buckets are grouped with it."""
    names = (*TARGET_LABELS, *((labels.pod,) if labels.pod else ()))

    def target(s: Series) -> LabelSet:
        key = {n: s.label(n) for n in names}
        if any(key.values()):
            return labelset(key)
        return labelset({k: v for k, v in s.labels.items() if k != labels.le})

    seen: dict[LabelSet, list[tuple[float, float]]] = defaultdict(list)
    for s in series:
        seen[target(s)].extend(drops(s.samples))
    shared = {key: _restarts(found) for key, found in seen.items()}

    def resets_of(s: Series) -> frozenset[float]:
        return shared.get(target(s), frozenset())

    return resets_of


def _restarts(found: Sequence[tuple[float, float]]) -> frozenset[float]:
    """The scrapes at which one process's counters restarted, from its series' drops (before, at).

    Every series of a process is scraped at the same instants, but a series can miss some: one not counted
    since the restart is not exported yet. Its drop then shows a scrape late, at `at`, with a sibling's drop
    strictly inside (before, at): that is the same restart, seen sooner, and not a second one (which would
    count the siblings' increases since the restart twice)."""
    times = {at for _, at in found}
    return frozenset(at for before, at in found if not any(before < t < at for t in times))


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
    `istio_request_duration_milliseconds_bucket` series, and per pod when every series of a version names
    its pod (`labels.pod`); raises CounterDataError for unusable samples."""
    bounds = tuple(query.bounds_ms)
    requests = [s for s in requests if _selected(s, query, labels)]
    buckets = [s for s in buckets if _selected(s, query, labels)]

    def pod_of(s: Series) -> tuple[str, str, str]:
        service, version = s.label(labels.service), s.label(labels.version)
        return service, version, s.label(labels.pod) if labels.pod else ""

    def error_pod(s: Series) -> tuple[str, str, str] | None:
        return pod_of(s) if s.label(labels.code).startswith(query.error_codes) else None

    edges = common_edges(buckets, bounds, labels)

    def bucket_key(s: Series) -> tuple[str, str, str, float] | None:
        le = _le_value(s, labels)
        return (*pod_of(s), le) if le in edges[s.label(labels.service)] else None

    resets = _target_resets([*requests, *buckets], labels)
    totals = sum_increases(requests, start, end, pod_of, resets)
    errors = sum_increases(requests, start, end, error_pod, resets)
    cumulative = sum_increases(buckets, start, end, bucket_key, resets)
    present = {pod_of(s)[:2] for s in (*requests, *buckets) if _exists_by(s, end)}
    pods_seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in (*requests, *buckets):
        service, version, pod = pod_of(s)
        pods_seen[(service, version)].add(pod)

    by_pod: dict[tuple[str, str, str], dict[float, float]] = defaultdict(dict)
    for (service, version, pod, le), value in cumulative.items():
        by_pod[(service, version, pod)][le] = value
    counts: dict[tuple[str, str], VersionCounts] = {}
    pods: dict[tuple[str, str], dict[str, VersionCounts]] = {}
    for service in query.services:
        for version in query.versions:
            pair, names = (service, version), sorted(pods_seen.get((service, version), set()))
            per_pod = {
                pod: _pod_counts(totals, errors, by_pod.get((service, version, pod), {}), (service, version, pod),
                                 edges.get(service, ()), bounds)
                for pod in names
            }
            counts[pair] = sum(per_pod.values(), VersionCounts.empty(len(bounds)))
            if names and "" not in names:
                pods[pair] = per_pod
    absent = frozenset(p for p in counts if p not in present)
    return WindowCounts(start=start, end=end, counts=counts, absent=absent, bucket_edges=edges, pods=pods)


def _pod_counts(totals: Mapping[tuple[str, str, str], float], errors: Mapping[tuple[str, str, str], float],
                per_edge: Mapping[float, float], key: tuple[str, str, str], edges: Sequence[float],
                bounds: tuple[float, ...]) -> VersionCounts:
    """One pod's (or, without pod labels, one version's) counts from the summed increases; `per_edge` is its
    cumulative bucket count at each edge."""
    where = "/".join(k for k in key if k)
    return VersionCounts(
        requests=_whole(totals.get(key, 0.0), f"{where} requests"),
        errors=_whole(errors.get(key, 0.0), f"{where} errors"),
        buckets=_per_bucket(per_edge, edges, bounds, where) if per_edge else (0,) * len(bounds),
    )


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
