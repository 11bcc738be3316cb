"""What a service reports about itself: Prometheus metrics and the `x-served-by` path header.

Owns the per-app metric registry (one per app, so several apps can live in one test process), and the ASGI
middleware that times every request, counts it, and stamps the response with:
- `x-served-by`: this service plus every downstream service that served the request, as `role@version`
  entries in the stack's role order (so a test can see every version on the path);
- `x-seen-lane`: the lane header value this service received (a debug echo for propagation tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from searchstack.settings import ROLES, Settings

# Seconds; the same bounds as Istio's request duration buckets (which are in ms), so both views line up.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SERVED_BY_STATE_KEY = "searchstack_served_by"


class ServiceMetrics:
    """The app-level counters and histograms of one service."""

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        labels = {"role": settings.role, "version": settings.version}
        self._labels = labels
        self.requests = Counter(
            "searchstack_requests", "Requests handled, by path and status code.",
            [*labels, "path", "code"], registry=self.registry,
        )
        self.duration = Histogram(
            "searchstack_request_duration_seconds", "Server-side request duration, by path.",
            [*labels, "path"], buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.downstream_requests = Counter(
            "searchstack_downstream_requests", "Calls to other services, by target and status code.",
            [*labels, "target", "code"], registry=self.registry,
        )
        self.downstream_duration = Histogram(
            "searchstack_downstream_request_duration_seconds", "Duration of calls to other services.",
            [*labels, "target"], buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        # Business metrics of the entry service (A/B experiments): labelled by `service` (the role) and
        # `version`, the names experiment queries use. One impression = one successful search response.
        business = {"service": settings.role, "version": settings.version}
        self._business = business
        self.impressions = Counter(
            "searchstack_impressions", "Search responses shown (200 answers of the search endpoint), one per search.",
            list(business), registry=self.registry,
        )
        self.clicks = Counter(
            "searchstack_clicks", "Clicks on a search result reported to the click endpoint.",
            list(business), registry=self.registry,
        )
        # Searches that arrived without the experiment's assignment cookie: under sticky assignment each is
        # a user the mesh assigns now (its answer sets the cookie), so these count users per variant: the
        # units of an experiment's sample-ratio check (impressions are overdispersed by heavy users).
        self.assignments = Counter(
            "searchstack_assignments", "Searches without the A/B assignment cookie (newly assigned users).",
            list(business), registry=self.registry,
        )
        # A mean metric needs the sum and the sum of squares of its values (the count is the clicks).
        self.click_value = Counter(
            "searchstack_click_value", "Sum of the values reported with clicks (mean value per click).",
            list(business), registry=self.registry,
        )
        self.click_value_squares = Counter(
            "searchstack_click_value_squares", "Sum of the squares of the values reported with clicks.",
            list(business), registry=self.registry,
        )
        self.faults_injected = Counter(
            "searchstack_faults_injected", "Requests that got an injected fault, by kind.",
            [*labels, "kind"], registry=self.registry,
        )

    def observe_request(self, path: str, code: int, seconds: float) -> None:
        self.requests.labels(**self._labels, path=path, code=str(code)).inc()
        self.duration.labels(**self._labels, path=path).observe(seconds)

    def start_business_series(self) -> None:
        """Expose the impression and click series at 0 from the start: a series that appears only with
        its first click would make the first interval's increase unknowable."""
        self.impressions.labels(**self._business)
        self.clicks.labels(**self._business)
        self.click_value.labels(**self._business)
        self.click_value_squares.labels(**self._business)
        self.assignments.labels(**self._business)

    def count_impression(self) -> None:
        self.impressions.labels(**self._business).inc()

    def count_assignment(self) -> None:
        self.assignments.labels(**self._business).inc()

    def count_click(self, value: float = 0.0) -> None:
        self.clicks.labels(**self._business).inc()
        self.click_value.labels(**self._business).inc(value)
        self.click_value_squares.labels(**self._business).inc(value * value)

    def observe_downstream(self, target: str, code: str, seconds: float) -> None:
        self.downstream_requests.labels(**self._labels, target=target, code=code).inc()
        self.downstream_duration.labels(**self._labels, target=target).observe(seconds)


def served_by_order(entries: Iterable[str]) -> list[str]:
    """Entries `role@version` in the stack's role order (stable within a role; unknown roles last)."""
    rank = {role: i for i, role in enumerate(ROLES)}
    return sorted(entries, key=lambda e: rank.get(e.partition("@")[0], len(ROLES)))


class TelemetryMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware overhead): metrics plus the path headers."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: ServiceMetrics, paths: set[str]) -> None:
        self.app = app
        self.entry = settings.served_by_entry
        self.lane_header = settings.lane_header.encode()
        self.metrics = metrics
        self.paths = paths  # known route paths; anything else is labelled "other" to bound cardinality

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 500
        lane = next((v for k, v in scope["headers"] if k == self.lane_header), None)

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                served = served_by_order([self.entry, *state.get(SERVED_BY_STATE_KEY, [])])
                headers = [*message.get("headers", []), (b"x-served-by", ",".join(served).encode())]
                if lane is not None:
                    headers.append((b"x-seen-lane", lane))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            path = scope["path"] if scope["path"] in self.paths else "other"
            self.metrics.observe_request(path, status, time.perf_counter() - started)
