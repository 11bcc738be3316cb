"""An exporter of Istio's two request metrics that writes Prometheus text itself, for tests against a real
Prometheus: each version may have its own bucket edges, and a scrape can take its time answering (stamped when
it starts, stored when it ends). Used by the window-edge tests and the local metrics-delay tests."""

from __future__ import annotations

import http.server
import math
import threading
import time
from typing import Any

from analysis.observations import ISTIO_BUCKETS_MS

NS = "edges"
DEFAULT_LAYOUT = ISTIO_BUCKETS_MS


class LayoutExporter:
    """Istio's two metrics per (service, version), each version with its own bucket edges.

    `delay` seconds pass between a scrape's start (when Prometheus stamps its samples) and its answer;
    the values are those at the start. `next_scrape()` waits for a scrape to start.
    """

    def __init__(self) -> None:
        self.layouts: dict[str, tuple[float, ...]] = {}
        self.delay = 0.0
        self._latencies: dict[tuple[str, str, str], list[float]] = {}
        self._lock = threading.Condition()
        self._scrapes = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer._begin_scrape()
                time.sleep(outer.delay)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def add(self, service: str, version: str, latencies_ms: list[float], code: str = "200") -> None:
        with self._lock:
            self._latencies.setdefault((service, version, code), []).extend(latencies_ms)

    def next_scrape(self, timeout: float = 10.0) -> float:
        """Wait (bounded) for the next scrape to start; the time just after it started."""
        with self._lock:
            seen = self._scrapes
            if not self._lock.wait_for(lambda: self._scrapes > seen, timeout):
                raise AssertionError(f"no scrape started within {timeout} s")
        return time.time()

    def _begin_scrape(self) -> bytes:
        with self._lock:
            body = self._text()
            self._scrapes += 1
            self._lock.notify_all()
        return body

    def _text(self) -> bytes:
        lines = []
        for (service, version, code), latencies in sorted(self._latencies.items()):
            base = (f'reporter="destination",destination_service_namespace="{NS}",'
                    f'destination_service_name="{service}",destination_version="{version}"')
            lines.append(f'istio_requests_total{{{base},response_code="{code}"}} {len(latencies)}')
            for bound in self.layouts.get(version, DEFAULT_LAYOUT):
                le = "+Inf" if math.isinf(bound) else repr(float(bound))
                count = sum(1 for ms in latencies if ms <= bound)
                lines.append(f'istio_request_duration_milliseconds_bucket{{{base},response_code="{code}",'
                             f'le="{le}"}} {count}')
        return ("\n".join(lines) + "\n").encode()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
