"""Where local mode's metrics come from: a real Prometheus when installed, else the router directly.

Both read the mesh router's Istio metrics (`istio_requests_total`,
`istio_request_duration_milliseconds_bucket`), so the judge sees the same numbers a cluster's
Prometheus would give it.

- Prometheus: started on a free loopback port, scraping the router every second; windows are evaluated
  `lag` seconds in the past so that a scrape still being ingested cannot fall on different sides of a
  window boundary in two consecutive queries (which would lose or double-count requests). A window's
  counts start at the last scrape at or before its start, so the first window after a weight change
  opens `lag` plus a scrape interval after it (`MetricsSource.delay`), as on a cluster.
- Direct: a background thread scrapes the router twice a second and keeps timestamped snapshots, like a
  tiny TSDB, so a window (start, end] starts from the first snapshot taken at or after `start` (no delay).
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from analysis.counters import CounterSnapshot, IstioLabels, snapshot_counts
from analysis.observations import MetricsQuery, WindowCounts
from controller.adapters.local.direct_metrics import DirectMetrics
from controller.adapters.prometheus.metrics import PrometheusSource
from controller.adapters.prometheus.server import PrometheusProcess, prometheus_binary
from controller.ports import History, Metrics, MetricsUnavailable

SCRAPE_INTERVAL = 1.0
PROMETHEUS_LAG = 2.0
# Local router series carry a namespace label, but local releases may name any namespace: don't filter.
LOCAL_LABELS = IstioLabels(namespace=None)


@dataclass
class MetricsSource:
    name: str  # "prometheus" or "direct", as the demo summary reports it
    description: str
    metrics: Metrics
    # Seconds after a weight change before a window may start (the reconciler's `metrics_delay`): a window
    # read `lag` behind reaches back to the last scrape at or before its start, up to a scrape interval
    # earlier, so it must start that much after the change to count only the new weight's traffic.
    delay: float = 0.0
    # The same source when it also answers windows in the past (Prometheus), for the stable version's history.
    history: History | None = None


class LaggedMetrics:
    """Evaluates every window `lag` seconds in the past (consistently, so windows still partition); the counts
    come back whole (per version, per pod, with the bucket edges they resolve), stamped with the window asked."""

    def __init__(self, inner: History, lag: float) -> None:
        self.inner, self.lag = inner, lag

    def window(self, query: MetricsQuery, start: float, end: float) -> WindowCounts:
        counts = self.inner.window(query, start - self.lag, end - self.lag)
        return dataclasses.replace(counts, start=start, end=end)

    def windows(self, query: MetricsQuery, edges: Sequence[tuple[float, float]]) -> tuple[WindowCounts, ...]:
        lagged = self.inner.windows(query, [(start - self.lag, end - self.lag) for start, end in edges])
        return tuple(dataclasses.replace(c, start=s, end=e) for c, (s, e) in zip(lagged, edges, strict=True))


class BufferedDirectMetrics:
    """The router's counters scraped in the background and kept with their times."""

    def __init__(self, scraper: DirectMetrics, every: float = 0.5, keep_seconds: float = 900.0) -> None:
        self.scraper, self.every, self.keep = scraper, every, keep_seconds
        self._snapshots: list[CounterSnapshot] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="router-scraper", daemon=True)
        self.last_error: str | None = None

    def start(self) -> BufferedDirectMetrics:
        self._scrape_once()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.scraper.close()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._scrape_once()

    def _scrape_once(self) -> CounterSnapshot | None:
        try:
            snap = self.scraper.scrape()
        except MetricsUnavailable as exc:
            self.last_error = exc.reason
            return None
        self.last_error = None
        with self._lock:
            self._snapshots.append(snap)
            cutoff = snap.taken_at - self.keep
            while self._snapshots and self._snapshots[0].taken_at < cutoff:
                self._snapshots.pop(0)
        return snap

    def window(self, query: MetricsQuery, start: float, end: float) -> WindowCounts:
        after = self._scrape_once()
        if after is None:
            raise MetricsUnavailable(self.last_error or "router metrics unavailable")
        with self._lock:
            times = [s.taken_at for s in self._snapshots]
            i = bisect.bisect_left(times, start)
            before = self._snapshots[i] if i < len(self._snapshots) else after
        return snapshot_counts(query, before, after, LOCAL_LABELS)


@contextmanager
def open_metrics_source(kind: str, router_admin_url: str, workdir: Path,
                        scrape_jobs: Sequence[Mapping[str, Any]] | None = None) -> Iterator[MetricsSource]:
    """`kind`: "prometheus", "direct", or "auto" (Prometheus when its binary is on PATH).

    Prometheus scrapes `scrape_jobs` when given (the mesh's own statistics, relabelled into Istio's metrics, as
    `localmesh.envoy.metrics.scrape_job` writes them), else the router's `/metrics`; the direct source always
    reads the router's `/metrics`, where the router serves the same mapping."""
    if kind not in ("auto", "prometheus", "direct"):
        raise ValueError(f"unknown metrics source {kind!r}")
    binary = prometheus_binary()
    if kind == "prometheus" and binary is None:
        raise ValueError("no `prometheus` binary on PATH (Debian/Ubuntu: apt-get install "
                         "--no-install-recommends prometheus), or use --metrics direct")
    target = urlparse(router_admin_url).netloc
    if kind != "direct" and binary is not None:
        with PrometheusProcess([target], jobs=scrape_jobs, scrape_interval_s=SCRAPE_INTERVAL) as prom:
            scraped = "Envoy's statistics (relabelled into Istio's metrics)" if scrape_jobs else "the mesh router"
            source = PrometheusSource.from_config({"url": prom.url, "namespace_label": "", "retries": 1,
                                                   "timeout_seconds": 3.0})
            lagged = LaggedMetrics(source, PROMETHEUS_LAG)
            try:
                yield MetricsSource(
                    "prometheus",
                    f"Prometheus {prom.url} (pid {prom.pid}) scraping {scraped} every "
                    f"{SCRAPE_INTERVAL:g}s; windows evaluated {PROMETHEUS_LAG:g}s behind",
                    lagged,
                    delay=PROMETHEUS_LAG + SCRAPE_INTERVAL,
                    history=lagged,
                )
            finally:
                source.close()
        return
    buffered = BufferedDirectMetrics(DirectMetrics(f"{router_admin_url}/metrics", labels=LOCAL_LABELS)).start()
    try:
        yield MetricsSource("direct", "the mesh router's /metrics, scraped directly twice a second", buffered)
    finally:
        buffered.stop()

