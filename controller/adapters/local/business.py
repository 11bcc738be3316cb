"""The business-metrics port in local mode: impressions and clicks scraped from each entry-service process.

This module owns `LocalBusinessMetrics`. The search stack counts `searchstack_impressions_total` and
`searchstack_clicks_total` {service, version} on each master-search process's own `/metrics`, and the
clicks' values (`searchstack_click_value_total`, `searchstack_click_value_squares_total`). A proportion
primary metric (any name, e.g. `click-through`) is clicks per impression; a mean one (`kind: mean`, any
name, e.g. `click-value`) is the mean value per click: count = clicks, total = the values' sum, squares =
their squares' sum (`MEAN_COUNTERS`). The local mesh router's Istio metrics do not carry them, so this
source scrapes every running process of the queried service directly (no Prometheus in between) and
differences each process's counters against its previous scrape. A window is therefore (previous call,
this call] — the same convention as `DirectMetrics`.

Counter handling: a process seen for the first time after `prime()` started inside the window, so all of
its counts belong to it; a counter that went down was reset (process restarted on the same port) and
counts from zero. Without `prime()`, the first call only takes the baseline and reports nothing, so a
restarted controller never counts a process's whole history into one window. Assigned users (`units`,
the experiment's sample-ratio input) are `searchstack_assignments_total`: searches that arrived without
the assignment cookie, i.e. users the mesh assigned in the window (docs/experiments.md, "Sample ratio").

Users as the unit (`PerUser`): master-search also keeps each user's running totals (by `x-user-id`) and
exports the per-user sums as counters (`USER_COUNTERS`: users, and over users the sums of squares and
cross-products of their clicks, impressions and click values; searchstack/README.md). A proportion's Y_u
and N_u are a user's clicks and impressions; a mean's, the user's click values and clicks. A process that
exports none of them gives counts without `per_user` (an experiment with `unit: user` then says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

from analysis.abtest import PerUser, PrimaryCounts
from controller.ports import BusinessQuery, MetricsUnavailable

__all__ = ["LocalBusinessMetrics", "parse_business"]

IMPRESSIONS = "searchstack_impressions_total"
CLICKS = "searchstack_clicks_total"
CLICK_VALUE = "searchstack_click_value_total"
CLICK_VALUE_SQUARES = "searchstack_click_value_squares_total"
ASSIGNMENTS = "searchstack_assignments_total"
USERS = "searchstack_user_units_total"
USER_IMPRESSIONS_SQUARES = "searchstack_user_impressions_squares_total"
USER_CLICKS_SQUARES = "searchstack_user_clicks_squares_total"
USER_CLICKS_IMPRESSIONS = "searchstack_user_clicks_impressions_total"
USER_VALUE_SQUARES = "searchstack_user_click_value_squares_total"
USER_VALUE_CLICKS = "searchstack_user_click_value_clicks_total"
# The counters behind each kind of primary metric: (count, total[, squares]).
PROPORTION_COUNTERS = (IMPRESSIONS, CLICKS)
MEAN_COUNTERS = (CLICKS, CLICK_VALUE, CLICK_VALUE_SQUARES)
USER_COUNTERS = (USERS, USER_IMPRESSIONS_SQUARES, USER_CLICKS_SQUARES, USER_CLICKS_IMPRESSIONS, USER_VALUE_SQUARES,
                 USER_VALUE_CLICKS)
_ALL = (IMPRESSIONS, CLICKS, CLICK_VALUE, CLICK_VALUE_SQUARES, ASSIGNMENTS, *USER_COUNTERS)
_USER_AT = _ALL.index(USERS)
# (version, address) -> cumulative counters as scraped, in `_ALL` order.
Snapshot = dict[tuple[str, str], tuple[float, ...]]


def parse_business(text: str, service: str) -> dict[str, tuple[float, ...]]:
    """Cumulative counters in `_ALL` order (impressions, clicks, click value, click value squares,
    assignments, then `USER_COUNTERS`) per version of `service` in one Prometheus text exposition: 0 for a
    business counter that is not there; NaN for the per-user ones when none of them is (no per-user sums)."""
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in _ALL and sample.labels.get("service") == service:
                values = out.setdefault(sample.labels.get("version", ""), [0.0] * _USER_AT + [math.nan] * (
                    len(_ALL) - _USER_AT))
                i = _ALL.index(sample.name)
                values[i] = (0.0 if math.isnan(values[i]) else values[i]) + float(sample.value)
    for values in out.values():
        if not all(math.isnan(v) for v in values[_USER_AT:]):  # some per-user counters: the rest are 0
            values[_USER_AT:] = [0.0 if math.isnan(v) else v for v in values[_USER_AT:]]
    return {v: tuple(values) for v, values in out.items()}


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
        zero = (0.0,) * len(_ALL)  # NaN (no per-user counters) stays NaN through the differences
        totals: dict[str, list[float]] = {}
        for (version, address), counters in now.items():
            was = before.get((version, address), zero)
            if any(c < w for c, w in zip(counters, was, strict=True) if not (math.isnan(c) or math.isnan(w))):
                was = zero  # the process restarted: its counters began again at zero
            sums = totals.setdefault(version, [0.0] * len(_ALL))
            for i, (c, w) in enumerate(zip(counters, was, strict=True)):
                sums[i] += c - w
        return {v: _counts(query.kind, sums) for v, sums in totals.items() if v in query.versions}

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
            snapshot[(version, address)] = counts.get(version, (0.0,) * len(_ALL))
        return snapshot


def _counts(kind: str, sums: list[float]) -> PrimaryCounts:
    impressions, clicks, value, squares, assigned = sums[:_USER_AT]
    units = round(assigned)
    if kind == "mean":
        # Float sums over a window: a tiny negative from rounding is 0; keep Cauchy-Schwarz possible.
        n, total = round(clicks), max(value, 0.0)
        return PrimaryCounts.mean(total, max(squares, total * total / n if n else 0.0), n, units=units,
                                  per_user=_per_user(kind, sums[_USER_AT:]))
    n = round(impressions)
    return PrimaryCounts.proportion(min(round(clicks), n), n, units=units, per_user=_per_user(kind, sums[_USER_AT:]))


def _per_user(kind: str, sums: list[float]) -> PerUser | None:
    """The window's per-user sums for the metric's (Y, N): (clicks, impressions) or (click values, clicks)."""
    if any(math.isnan(x) for x in sums):
        return None
    users, impressions_sq, clicks_sq, clicks_impressions, value_sq, value_clicks = (max(x, 0.0) for x in sums)
    if kind == "mean":
        return PerUser(round(users), value_sq, clicks_sq, value_clicks)
    return PerUser(round(users), clicks_sq, impressions_sq, clicks_impressions)
