"""What a service reports about itself: Prometheus metrics and the `x-served-by` path header.

Owns the per-app metric registry (one per app, so several apps can live in one test process), and the ASGI
middleware that times every request, counts it, and stamps the response with:
- `x-served-by`: this service plus every downstream service that served the request, as `role@version`
  entries in the stack's role order (so a test can see every version on the path);
- `x-seen-lane`: the lane header value this service received (a debug echo for propagation tests).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from searchstack.settings import DEFAULT_MAX_TRACKED_USERS, ROLES, Settings

# Seconds; the same bounds as Istio's request duration buckets (which are in ms), so both views line up.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SERVED_BY_STATE_KEY = "searchstack_served_by"
# A longer user id is treated as anonymous: a hostile header must not grow the per-user table.
MAX_USER_ID_CHARS = 200


class UserSums:
    """Per-user sufficient statistics of A/B experiments, exported as monotone Prometheus counters.

    Keeps, per user id u, the running totals I_u (impressions), C_u (clicks) and V_u (sum of click values),
    and counts, over the users seen by this process (labels `service`, `version`):

        searchstack_user_units_total                  U      (+1 the first time a user id is seen)
        searchstack_user_impressions_squares_total    sum I_u^2
        searchstack_user_clicks_squares_total         sum C_u^2
        searchstack_user_clicks_impressions_total     sum C_u I_u
        searchstack_user_click_value_squares_total    sum V_u^2
        searchstack_user_click_value_clicks_total     sum V_u C_u

    An event changing a user's (Y, N) by (dy, dn) adds (Y+dy)^2 - Y^2, (N+dn)^2 - N^2 and (Y+dy)(N+dn) - YN,
    all >= 0, so the sums are counters whose increases over any windows add up exactly (integer counts stay
    integers; values are floats). sum I_u, sum C_u and sum V_u are the impression, click and click-value
    counters of `ServiceMetrics`, so every event is recorded here too, and an event that cannot be attributed
    to a tracked user counts as a user of its own (units +1, the squares of a fresh user): one without a user
    id, one whose id is longer than MAX_USER_ID_CHARS, and one of a new user once `max_tracked_users` ids are
    kept (known users keep being tracked). The last two also count in
    `searchstack_user_untracked_events_total`.

    Not thread-safe: one service process handles requests on one event loop.
    """

    def __init__(
        self, registry: CollectorRegistry, labels: Mapping[str, str],
        max_tracked_users: int = DEFAULT_MAX_TRACKED_USERS,
    ) -> None:
        if max_tracked_users < 0:
            raise ValueError(f"max_tracked_users must be >= 0, got {max_tracked_users}")
        self.max_tracked_users = max_tracked_users
        self._labels = dict(labels)
        names = list(self._labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=registry)

        self.units = counter("searchstack_user_units", "Users seen (+1 per new user id; an anonymous event is one).")
        self.impressions_squares = counter(
            "searchstack_user_impressions_squares", "Sum over users of the square of their impressions.")
        self.clicks_squares = counter(
            "searchstack_user_clicks_squares", "Sum over users of the square of their clicks.")
        self.clicks_impressions = counter(
            "searchstack_user_clicks_impressions", "Sum over users of their clicks times their impressions.")
        self.click_value_squares = counter(
            "searchstack_user_click_value_squares", "Sum over users of the square of their summed click values.")
        self.click_value_clicks = counter(
            "searchstack_user_click_value_clicks", "Sum over users of their summed click values times their clicks.")
        self.untracked_events = counter(
            "searchstack_user_untracked_events",
            "Events with a user id that was not tracked (id too long, or the table of users was full); "
            "each counted as an anonymous user.")
        # user id -> [impressions, clicks, sum of click values]
        self._users: dict[str, list[Any]] = {}

    @property
    def tracked_users(self) -> int:
        return len(self._users)

    def start(self) -> None:
        """Expose every series at 0 from the start (see `ServiceMetrics.start_business_series`)."""
        for family in (self.units, self.impressions_squares, self.clicks_squares, self.clicks_impressions,
                       self.click_value_squares, self.click_value_clicks, self.untracked_events):
            family.labels(**self._labels)

    def impression(self, user_id: str | None) -> None:
        """One impression (a successful search) of `user_id` (None or "": anonymous)."""
        totals = self._totals(user_id)
        if totals is None:  # a user of its own: I 0 -> 1, C = 0
            self._add(self.units, 1)
            self._add(self.impressions_squares, 1)
            return
        impressions, clicks, _ = totals
        self._add(self.impressions_squares, 2 * impressions + 1)
        self._add(self.clicks_impressions, clicks)
        totals[0] = impressions + 1

    def click(self, user_id: str | None, value: float = 0.0) -> None:
        """One click of `user_id` (None or "": anonymous) worth `value` (finite, >= 0)."""
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"a click's value must be finite and >= 0, got {value!r}")
        totals = self._totals(user_id)
        if totals is None:  # a user of its own: C 0 -> 1, V 0 -> value, I = 0
            self._add(self.units, 1)
            self._add(self.clicks_squares, 1)
            self._add(self.click_value_squares, value * value)
            self._add(self.click_value_clicks, value)
            return
        impressions, clicks, total = totals
        self._add(self.clicks_squares, 2 * clicks + 1)
        self._add(self.clicks_impressions, impressions)
        self._add(self.click_value_squares, value * (2 * total + value))  # (V+v)^2 - V^2
        self._add(self.click_value_clicks, total + value * (clicks + 1))  # (V+v)(C+1) - V C
        totals[1] = clicks + 1
        totals[2] = total + value

    def _totals(self, user_id: str | None) -> list[Any] | None:
        """The user's running totals (a new user is added and counted), or None: count the event as a user
        of its own."""
        if not user_id:
            return None
        totals = self._users.get(user_id)
        if totals is not None:
            return totals
        if len(user_id) > MAX_USER_ID_CHARS or len(self._users) >= self.max_tracked_users:
            self._add(self.untracked_events, 1)
            return None
        totals = self._users[user_id] = [0, 0, 0.0]
        self._add(self.units, 1)
        return totals

    def _add(self, family: Counter, amount: float) -> None:
        if amount:
            family.labels(**self._labels).inc(amount)


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
        # Per-user sums of the same events (users as an experiment's unit), keyed by `settings.user_header`.
        self.user_sums = UserSums(self.registry, business, settings.max_tracked_users)
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
        self.user_sums.start()

    def count_impression(self, user_id: str | None = None) -> None:
        """One successful search of `user_id` (None or "": anonymous, a user of its own)."""
        self.impressions.labels(**self._business).inc()
        self.user_sums.impression(user_id)

    def count_assignment(self) -> None:
        self.assignments.labels(**self._business).inc()

    def count_click(self, value: float = 0.0, user_id: str | None = None) -> None:
        """One accepted click of `user_id` (None or "": anonymous, a user of its own) worth `value`."""
        self.user_sums.click(user_id, value)  # first: it rejects a value no counter may take
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
