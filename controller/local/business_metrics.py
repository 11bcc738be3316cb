"""The business-metrics port in local mode: impressions and clicks scraped from each entry-service process.

This module owns `LocalBusinessMetrics`. The search stack counts `searchstack_impressions_total` and
`searchstack_clicks_total` {service, version} on each master-search process's own `/metrics`; the local
router's Istio metrics do not carry them, so this source scrapes every running process of the queried
service directly (no Prometheus in between) and differences each process's counters against its previous
scrape. A window is therefore (previous call, this call] — the same convention as `DirectMetrics`.

Counter handling: a process seen for the first time after `prime()` started inside the window, so all of
its counts belong to it; a counter that went down was reset (process restarted on the same port) and
counts from zero. Without `prime()`, the first call only takes the baseline and reports nothing, so a
restarted controller never counts a process's whole history into one window. Assigned users are not
known here (`units` is None): the experiment's SRM test is then off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

from analysis.abtest import PrimaryCounts
from controller.business import BusinessQuery
from controller.ports import MetricsUnavailable

__all__ = ["LocalBusinessMetrics", "parse_business"]

IMPRESSIONS = "searchstack_impressions_total"
CLICKS = "searchstack_clicks_total"
# (version, address) -> (impressions, clicks), cumulative as scraped.
Snapshot = dict[tuple[str, str], tuple[float, float]]


def parse_business(text: str, service: str) -> dict[str, tuple[float, float]]:
    """Cumulative (impressions, clicks) per version of `service` in one Prometheus text exposition."""
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (IMPRESSIONS, CLICKS) and sample.labels.get("service") == service:
                pair = out.setdefault(sample.labels.get("version", ""), [0.0, 0.0])
                pair[0 if sample.name == IMPRESSIONS else 1] += float(sample.value)
    return {v: (p[0], p[1]) for v, p in out.items()}


class LocalBusinessMetrics:
    """`processes(service)` lists (version, "host:port") of the service's running processes."""

    def __init__(self, processes: Callable[[str], Iterable[tuple[str, str]]], timeout_s: float = 2.0,
                 client: httpx.Client | None = None) -> None:
        self._processes = processes
        self._client = client or httpx.Client(timeout=timeout_s)
        self._previous: Snapshot | None = None

    def close(self) -> None:
        self._client.close()

    def prime(self, service: str) -> None:
        """Take the baseline the first window starts from (call it before the experiment starts)."""
        self._previous = self._scrape(service)

    def business(self, query: BusinessQuery, start: float, end: float) -> Mapping[str, PrimaryCounts]:
        now = self._scrape(query.service)
        before, self._previous = self._previous, now
        if before is None:
            return {}
        totals: dict[str, list[int]] = {}
        for (version, address), (impressions, clicks) in now.items():
            was = before.get((version, address), (0.0, 0.0))
            if impressions < was[0] or clicks < was[1]:
                was = (0.0, 0.0)  # the process restarted: its counters began again at zero
            pair = totals.setdefault(version, [0, 0])
            pair[0] += int(impressions - was[0])
            pair[1] += int(clicks - was[1])
        return {v: PrimaryCounts.proportion(min(c, n), n) for v, (n, c) in totals.items()
                if v in query.versions}

    def _scrape(self, service: str) -> Snapshot:
        snapshot: Snapshot = {}
        for version, address in self._processes(service):
            url = f"http://{address}/metrics"
            try:
                response = self._client.get(url)
                response.raise_for_status()
                counts = parse_business(response.text, service)
            except httpx.HTTPError as error:
                raise MetricsUnavailable(f"scraping {url} failed: {type(error).__name__}: {error}") from None
            except ValueError as error:
                raise MetricsUnavailable(f"{url} answered unparsable metrics: {error}") from None
            snapshot[(version, address)] = counts.get(version, (0.0, 0.0))
        return snapshot
