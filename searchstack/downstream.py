"""Calls from one service to another: header propagation, the shared HTTP client, and failure mapping.

Every inter-service call goes through `DownstreamClient.post`, which
- forwards the request-scoped headers a mesh needs (the lane header, W3C trace context, B3, baggage,
  `x-request-id`, `x-user-id`) — never cookies or credentials;
- sets `x-mesh-source-workload` (the local mesh router's stand-in for Istio's `source_workload`) and the
  configured Host header (the local mesh router routes by Host, as Istio does);
- records the callee's `x-served-by` so the caller's response lists the whole path;
- turns any failure into `DownstreamError` naming the service that failed.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from searchstack.settings import Settings
from searchstack.telemetry import SERVED_BY_STATE_KEY, ServiceMetrics

# Headers Istio asks applications to propagate for tracing, plus our own request-scoped ones.
PROPAGATED_HEADERS: tuple[str, ...] = (
    "traceparent", "tracestate", "baggage", "x-request-id", "x-user-id",
    "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",
    "x-ot-span-context",
)
SOURCE_WORKLOAD_HEADER = "x-mesh-source-workload"
CONNECTIONS_PER_CLIENT = 16
MAX_CLIENTS_PER_CALLEE = 16  # so at most 256 concurrent calls to one callee
# Statuses our services use for failures; a caller passes them on unchanged so the entry shows the cause.
PASSED_THROUGH_STATUSES = frozenset({500, 502, 503, 504})


class DownstreamError(Exception):
    """A call to another service failed. `status` is what this service should answer."""

    def __init__(self, service: str, status: int, reason: str, upstream_status: int | None = None) -> None:
        super().__init__(f"{service}: {reason}")
        self.service = service
        self.status = status
        self.reason = reason
        self.upstream_status = upstream_status

    def body(self, via: str) -> dict[str, Any]:
        return {
            "error": f"downstream service {self.service} failed: {self.reason}",
            "service": self.service,
            "reason": self.reason,
            "via": via,
            "upstream_status": self.upstream_status,
        }


def propagated_headers(incoming: Mapping[str, str], lane_header: str) -> dict[str, str]:
    """The subset of the incoming request's headers that travel on to downstream calls."""
    names = (lane_header, *PROPAGATED_HEADERS)
    return {name: incoming[name] for name in names if name in incoming}


class _Shards:
    """Small keep-alive `httpx.AsyncClient`s for one callee, added as concurrency grows.

    httpcore scans every pooled connection (and polls idle ones' sockets) on each request, so one big pool
    costs O(concurrency) CPU per call exactly when a callee slows down; several small pools do not.
    """

    def __init__(self, make_client: Callable[[int], httpx.AsyncClient]) -> None:
        self._make_client = make_client
        self.clients: list[httpx.AsyncClient] = []
        self.load: list[int] = []

    def pick(self) -> int:
        if self.clients:
            i = self.load.index(min(self.load))
            if self.load[i] < CONNECTIONS_PER_CLIENT or len(self.clients) >= MAX_CLIENTS_PER_CALLEE:
                return i
        self.clients.append(self._make_client(CONNECTIONS_PER_CLIENT))
        self.load.append(0)
        return len(self.clients) - 1


class DownstreamClient:
    """Keep-alive HTTP clients of one app, per callee, created on first use in the serving event loop."""

    def __init__(
        self, settings: Settings, metrics: ServiceMetrics, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._transport = transport
        self._shards: dict[str, _Shards] = {}
        self._ssl: ssl.SSLContext | None = None

    def _new_client(self, size: int) -> httpx.AsyncClient:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # one CA bundle load per app, not per client
        t = self.settings.timeout_s
        return httpx.AsyncClient(
            timeout=httpx.Timeout(t, connect=min(t, 2.0)),
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size, keepalive_expiry=30),
            transport=self._transport,
            verify=self._ssl,
            trust_env=False,  # service-to-service calls go to the mesh, never to an env proxy
        )

    async def _send(
        self, service: str, url: str, payload: Mapping[str, Any], headers: dict[str, str]
    ) -> httpx.Response:
        shards = self._shards.get(service)
        if shards is None:
            shards = self._shards[service] = _Shards(self._new_client)
        i = shards.pick()
        shards.load[i] += 1
        try:
            return await shards.clients[i].post(url, json=payload, headers=headers)
        finally:
            shards.load[i] -= 1

    async def aclose(self) -> None:
        shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            for client in shard.clients:
                await client.aclose()

    async def post(
        self, service: str, path: str, payload: Mapping[str, Any], incoming: Mapping[str, str],
        state: dict[str, Any],
    ) -> dict[str, Any]:
        """POST JSON to `service` and return its JSON body; raise `DownstreamError` on any failure."""
        target = self.settings.downstream(service)
        headers = propagated_headers(incoming, self.settings.lane_header)
        headers[SOURCE_WORKLOAD_HEADER] = self.settings.workload
        if target.host:
            headers["host"] = target.host
        started = time.perf_counter()
        code = "error"
        try:
            response = await self._send(service, target.url.rstrip("/") + path, payload, headers)
            code = str(response.status_code)
        except httpx.TimeoutException as exc:
            raise DownstreamError(service, 504, f"timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise DownstreamError(service, 503, f"unreachable ({type(exc).__name__}: {exc})") from exc
        finally:
            self.metrics.observe_downstream(service, code, time.perf_counter() - started)
        served_by = response.headers.get("x-served-by")
        if served_by:
            state.setdefault(SERVED_BY_STATE_KEY, []).extend(served_by.split(","))
        if response.status_code >= 400:
            raise _error_from(service, response)
        try:
            body = response.json()
        except ValueError as exc:
            raise DownstreamError(service, 502, "answered non-JSON", response.status_code) from exc
        if not isinstance(body, dict):
            raise DownstreamError(service, 502, "answered JSON that is not an object", response.status_code)
        return body


def _error_from(service: str, response: httpx.Response) -> DownstreamError:
    status = response.status_code if response.status_code in PASSED_THROUGH_STATUSES else 502
    failing, reason = service, f"HTTP {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        body = None
    # A nested failure names its own culprit (e.g. ml-infer behind ml-search): keep the innermost one.
    if isinstance(body, dict) and isinstance(body.get("service"), str):
        failing = body["service"]
        reason = str(body.get("reason") or body.get("error") or reason)
    return DownstreamError(failing, status, reason, response.status_code)
