"""The data the judges read: per-interval counts of each version of each service.

This module owns the shared vocabulary between the metrics sources (the Prometheus provider, the local
router's direct scrape, replay files) and the judges. Everything here is plain immutable data.

Counts are per interval, never cumulative: `buckets[i]` is the number of requests of that interval whose
latency fell in (bounds[i-1], bounds[i]]; the last bound is +Inf, so `sum(buckets) == requests`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

# Istio's default buckets for istio_request_duration_milliseconds (proxy stats extension), with +Inf last.
ISTIO_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
    30000, 60000, 300000, 600000, 1800000, 3600000, math.inf,
)


class InvalidObservation(ValueError):
    """Counts that cannot be judged (negative, NaN, buckets of the wrong length). `field` names the part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class VersionCounts:
    """One version's traffic in one interval."""

    requests: int
    errors: int
    buckets: tuple[int, ...]

    @classmethod
    def empty(cls, n_buckets: int) -> VersionCounts:
        return cls(0, 0, (0,) * n_buckets)

    def validate(self, n_buckets: int, where: str) -> None:
        for name, value in (("requests", self.requests), ("errors", self.errors)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidObservation(f"{where}.{name}", f"{value!r} is not a whole number")
            if value < 0:
                raise InvalidObservation(f"{where}.{name}", f"{value} is negative")
        if self.errors > self.requests:
            raise InvalidObservation(f"{where}.errors", f"{self.errors} errors exceed {self.requests} requests")
        if len(self.buckets) != n_buckets:
            raise InvalidObservation(
                f"{where}.buckets", f"has {len(self.buckets)} entries, the bucket bounds have {n_buckets}"
            )
        for i, b in enumerate(self.buckets):
            if not isinstance(b, int) or isinstance(b, bool):
                raise InvalidObservation(f"{where}.buckets[{i}]", f"{b!r} is not a whole number")
            if b < 0:
                raise InvalidObservation(f"{where}.buckets[{i}]", f"{b} is negative")

    def __add__(self, other: VersionCounts) -> VersionCounts:
        return VersionCounts(
            self.requests + other.requests,
            self.errors + other.errors,
            tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True)),
        )

    def __sub__(self, other: VersionCounts) -> VersionCounts:
        """These counts without `other`'s (a part of them: a pod's), never below 0."""
        return VersionCounts(
            max(self.requests - other.requests, 0),
            max(min(self.errors - other.errors, self.requests - other.requests), 0),
            tuple(max(a - b, 0) for a, b in zip(self.buckets, other.buckets, strict=True)),
        )


@dataclass(frozen=True)
class IntervalObservation:
    """Baseline (stable) and canary counts of one service over one interval.

    `t` is seconds since the release started (end of the interval); `weight` is the intended canary share
    of this service's requests in percent during the interval.

    `baseline_pods` / `canary_pods`: the same counts per pod (pod name -> counts), when the source can
    tell pods apart; empty when it cannot. The judge learns from the baseline's pods how much identical
    code differs from pod to pod (`analysis.pods`), and counts the canary's pods.
    """

    t: float
    weight: float
    baseline: VersionCounts
    canary: VersionCounts
    bounds_ms: tuple[float, ...] = ISTIO_BUCKETS_MS
    baseline_pods: Mapping[str, VersionCounts] = field(default_factory=dict)
    canary_pods: Mapping[str, VersionCounts] = field(default_factory=dict)

    def without_canary_pods(self, pods: Iterable[str]) -> IntervalObservation:
        """The interval without these canary pods' traffic (pods still warming up): the canary's counts less
        theirs, and its pods less them. The version's pods add up to its counts, so what is left is the other
        pods' traffic."""
        left_out = [self.canary_pods[p] for p in pods if p in self.canary_pods]
        if not left_out:
            return self
        canary = self.canary
        for counts in left_out:
            canary = canary - counts
        gone = set(pods)
        kept = {p: c for p, c in self.canary_pods.items() if p not in gone}
        return dataclasses.replace(self, canary=canary, canary_pods=kept)

    def validate(self, where: str = "interval") -> None:
        if not math.isfinite(self.t):
            raise InvalidObservation(f"{where}.t", f"{self.t!r} is not a finite number")
        if not (math.isfinite(self.weight) and 0 <= self.weight <= 100):
            raise InvalidObservation(f"{where}.weight", f"{self.weight!r} is not a percentage in [0, 100]")
        if not self.bounds_ms or self.bounds_ms[-1] != math.inf:
            raise InvalidObservation(f"{where}.buckets_ms", "the last bucket bound must be +Inf")
        self.baseline.validate(len(self.bounds_ms), f"{where}.baseline")
        self.canary.validate(len(self.bounds_ms), f"{where}.canary")
        for side, pods in (("baseline", self.baseline_pods), ("canary", self.canary_pods)):
            for pod, counts in pods.items():
                counts.validate(len(self.bounds_ms), f"{where}.{side}_pods[{pod}]")


# One tick's observations of a release: service name -> that service's interval.
StackObservation = Mapping[str, IntervalObservation]


@dataclass(frozen=True)
class MetricsQuery:
    """What a metrics source must count for a release: these services, these versions, this window.

    Every string here may come from a user; a source must escape them before putting them in a query.
    """

    namespace: str
    services: tuple[str, ...]
    versions: tuple[str, ...]
    reporter: str = "destination"
    # Response codes counted as errors: a code matches when it starts with one of these prefixes
    # ("5" counts every 5xx; "429" counts only 429).
    error_codes: tuple[str, ...] = ("5",)
    bounds_ms: tuple[float, ...] = ISTIO_BUCKETS_MS


@dataclass(frozen=True)
class WindowCounts:
    """Exact counts per (service, version) between two evaluation instants.

    A (service, version) with no series at all in the source is listed in `absent` and counted as empty:
    callers decide whether that is "no traffic yet" or a broken route.

    `bucket_edges`: per service with histograms, the bucket bounds its `buckets` resolve — the edges every
    version's histograms share (the query's bounds when every layout is Istio's default). Requests sit at
    the upper edge of their common bucket; positions between two edges are 0.

    `pods`: per (service, version), the same counts per pod, for sources whose series name the pod
    (empty otherwise). A version's pods add up to its `counts` entry.
    """

    start: float
    end: float
    counts: Mapping[tuple[str, str], VersionCounts]
    absent: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    bucket_edges: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    pods: Mapping[tuple[str, str], Mapping[str, VersionCounts]] = field(default_factory=dict)

    def of(self, service: str, version: str, n_buckets: int) -> VersionCounts:
        return self.counts.get((service, version), VersionCounts.empty(n_buckets))

    def pods_of(self, service: str, version: str) -> Mapping[str, VersionCounts]:
        return self.pods.get((service, version), {})


class Verdict(StrEnum):
    """The four outcomes of an analysis, each with its own configured action."""

    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


def interval_of(
    window: WindowCounts,
    service: str,
    baseline_version: str,
    canary_version: str,
    t: float,
    weight: float,
    bounds_ms: Sequence[float] = ISTIO_BUCKETS_MS,
) -> IntervalObservation:
    """The judge's view of one service in one window."""
    n = len(bounds_ms)
    return IntervalObservation(
        t=t,
        weight=weight,
        baseline=window.of(service, baseline_version, n),
        canary=window.of(service, canary_version, n),
        bounds_ms=tuple(bounds_ms),
        baseline_pods=window.pods_of(service, baseline_version),
        canary_pods=window.pods_of(service, canary_version),
    )
