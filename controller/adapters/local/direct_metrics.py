"""The Metrics port without Prometheus: scrape the local mesh router's `/metrics` directly.

This module owns the fallback metrics source of the local mode. Each `window()` call scrapes the
router's Istio-named counters (`istio_requests_total`, `istio_request_duration_milliseconds_bucket`) and
differences them against the scrape of the previous call (`analysis.counters.snapshot_counts`), so the
window it reports is (previous scrape, this scrape] — `WindowCounts.start`/`end` say exactly which. Call
`prime()` when a release starts, so the first window starts there; a failed scrape raises
`MetricsUnavailable` and keeps the previous snapshot, so the next window covers the gap and loses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from analysis.counters import CounterSnapshot, IstioLabels, LabelSet, labelset, snapshot_counts
from analysis.observations import MetricsQuery, WindowCounts
from controller.ports import MetricsUnavailable

__all__ = ["DirectMetrics", "parse_snapshot"]

_REQUESTS = "istio_requests_total"
_BUCKETS = "istio_request_duration_milliseconds_bucket"
_ROUTER_LABELS = IstioLabels()


def parse_snapshot(text: str, taken_at: float) -> CounterSnapshot:
    """The Istio counters of one Prometheus text exposition; raises ValueError when it does not parse."""
    requests: dict[LabelSet, float] = {}
    buckets: dict[LabelSet, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == _REQUESTS:
                requests[labelset(sample.labels)] = float(sample.value)
            elif sample.name == _BUCKETS:
                buckets[labelset(sample.labels)] = float(sample.value)
    return CounterSnapshot(taken_at, requests, buckets)


class DirectMetrics:
    """Counts from two consecutive scrapes of a router's `/metrics`.

    `labels`: the router's series carry namespace and reporter labels by default; pass
    `IstioLabels(namespace=None)` for one whose series lack a namespace.
    """

    def __init__(
        self,
        metrics_url: str,
        *,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        labels: IstioLabels = _ROUTER_LABELS,
        client: httpx.Client | None = None,
    ) -> None:
        self.metrics_url = metrics_url
        self._timeout_s = timeout_s
        self._clock = clock
        self._labels = labels
        self._client = client or httpx.Client(timeout=timeout_s)
        self._previous: CounterSnapshot | None = None

    def close(self) -> None:
        self._client.close()

    def scrape(self) -> CounterSnapshot:
        """One scrape now; raises MetricsUnavailable when the router does not answer usable metrics."""
        taken_at = self._clock()
        try:
            response = self._client.get(self.metrics_url, timeout=self._timeout_s)
            response.raise_for_status()
            return parse_snapshot(response.text, taken_at)
        except httpx.HTTPError as error:
            reason = f"scraping {self.metrics_url} failed: {type(error).__name__}: {error}"
            raise MetricsUnavailable(reason) from None
        except ValueError as error:
            raise MetricsUnavailable(f"{self.metrics_url} answered unparsable metrics: {error}") from None

    def prime(self) -> CounterSnapshot:
        """Take the snapshot the next window starts from (call it when the release starts)."""
        self._previous = self.scrape()
        return self._previous

    def window(self, query: MetricsQuery, start: float, end: float) -> WindowCounts:
        """Counts since the previous call (or `prime()`); `start`/`end` of the result are the scrape times.

        Without a previous snapshot this one becomes the baseline and the window is empty: (t, t].
        """
        after = self.scrape()
        before, self._previous = self._previous, after
        return snapshot_counts(query, before or after, after, self._labels)
