"""The controller process's own HTTP endpoints and metrics.

- `/healthz`: 200 while every thread of the loop (watch, election, workers) is alive; 503 after.
- `/readyz`: 200 once the release cache has been filled by a first list; standby replicas are ready too
  (they keep their cache warm and must be able to take over).
- `/metrics`: Prometheus text format from this controller's own registry: reconcile duration and errors,
  API requests and errors by verb/resource/code, each release's phase and canary weight, leadership.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from controller.core.status import Phase, ReleaseStatus

log = logging.getLogger(__name__)


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconcile_seconds = Histogram(
            "stack_canary_reconcile_duration_seconds", "Time of one reconcile tick of one release",
            registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.reconcile_errors = Counter("stack_canary_reconcile_errors_total",
                                        "Ticks that failed or whose actions failed", ["reason"], registry=r)
        self.api_requests = Counter("stack_canary_api_requests_total", "Kubernetes API requests",
                                    ["verb", "resource", "code"], registry=r)
        self.api_errors = Counter("stack_canary_api_errors_total", "Kubernetes API requests that failed",
                                  ["verb", "resource", "code"], registry=r)
        self.phase = Gauge("stack_canary_release_phase", "1 for the phase each release is in",
                           ["namespace", "release", "phase"], registry=r)
        self.weight = Gauge("stack_canary_release_canary_weight", "Canary weight in percent",
                            ["namespace", "release"], registry=r)
        self.leader = Gauge("stack_canary_leader", "1 while this replica holds the lease", registry=r)
        check = ["namespace", "release", "service", "check"]
        self.check_evalue = Gauge("stack_canary_check_evalue", "Latest e-value of each check of each release",
                                  check, registry=r)
        self.check_threshold = Gauge("stack_canary_check_threshold",
                                     "The e-value at which the check fails the release (1/alpha_i)", check, registry=r)
        self.check_verdict = Gauge("stack_canary_check_verdict", "1 for each check's latest verdict",
                                   [*check, "verdict"], registry=r)
        self.decisions = Counter("stack_canary_decisions_total", "Analysis decisions, by verdict and action",
                                 ["namespace", "release", "verdict", "action"], registry=r)
        self.time_to_decision = Histogram(
            "stack_canary_time_to_decision_seconds", "From the canary's first traffic to the deciding verdict",
            ["namespace", "release", "outcome"], registry=r,
            buckets=(30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400))
        self.metrics_errors = Counter("stack_canary_metrics_query_errors_total",
                                      "Analysis ticks whose metrics source failed", ["reason"], registry=r)
        self._seen: dict[tuple[str, str], float] = {}
        self._decided: set[tuple[str, str]] = set()

    def api_call(self, verb: str, resource: str, code: int) -> None:
        self.api_requests.labels(verb, resource, str(code)).inc()
        if not 200 <= code < 300:
            self.api_errors.labels(verb, resource, str(code)).inc()

    def release_state(self, namespace: str, name: str, phase: Phase, weight: int,
                      status: ReleaseStatus | None = None) -> None:
        for p in Phase:
            self.phase.labels(namespace, name, p.value).set(1.0 if p is phase else 0.0)
        self.weight.labels(namespace, name).set(weight)
        if status is not None:
            self._decisions(namespace, name, status)

    def _decisions(self, namespace: str, name: str, status: ReleaseStatus) -> None:
        """Export the decisions recorded since the last call (each counted once), and the latest checks."""
        key = (namespace, name)
        seen = self._seen.get(key, float("-inf"))
        new = [record for record in status.history if record.at > seen]
        for record in new:
            self.decisions.labels(namespace, name, record.verdict, record.action or "none").inc()
            if record.verdict == "error" and record.reason.startswith("metrics unavailable"):
                self.metrics_errors.labels("unavailable").inc()
        if new:
            self._seen[key] = new[-1].at
            for c in new[-1].checks:
                labels = (namespace, name, str(c.get("service", "")), str(c.get("check", "")))
                if isinstance(c.get("eValue"), (int, float)):
                    self.check_evalue.labels(*labels).set(float(c["eValue"]))
                if isinstance(c.get("threshold"), (int, float)):
                    self.check_threshold.labels(*labels).set(float(c["threshold"]))
                for verdict in ("pass", "fail", "inconclusive", "error"):
                    self.check_verdict.labels(*labels, verdict).set(1.0 if c.get("verdict") == verdict else 0.0)
        decided = status.decided_at is not None and status.first_canary_traffic_at is not None
        if decided and status.phase.final and key not in self._decided:
            self._decided.add(key)
            outcome = {Phase.SUCCEEDED: "promoted", Phase.ROLLED_BACK: "rolled_back"}.get(
                status.phase, status.phase.value.lower())
            self.time_to_decision.labels(namespace, name, outcome).observe(
                status.decided_at - status.first_canary_traffic_at)  # type: ignore[operator]

    def release_gone(self, namespace: str, name: str) -> None:
        for p in Phase:
            with contextlib.suppress(KeyError):
                self.phase.remove(namespace, name, p.value)
        with contextlib.suppress(KeyError):
            self.weight.remove(namespace, name)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """Serves /healthz, /readyz and /metrics on a thread of its own."""

    def __init__(self, telemetry: Telemetry, healthy: Callable[[], bool], ready: Callable[[], bool],
                 host: str = "0.0.0.0", port: int = 8080) -> None:
        self.telemetry, self.healthy, self.ready = telemetry, healthy, ready
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, outer.telemetry.exposition(), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    ok = outer.healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"stalled\n")
                elif self.path == "/readyz":
                    ok = outer.ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not synced\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("health: " + format, *args)

        return Handler

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
