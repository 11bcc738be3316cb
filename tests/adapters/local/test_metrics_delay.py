"""The local platform's Prometheus source and the first window after a weight change, against a real Prometheus.

The source reads windows `lag` (2 s) behind, and Prometheus has a window start at the last scrape at or before
it, up to a scrape interval (1 s) earlier. A window that opens `source.delay` (lag + a scrape interval) after a
weight change therefore counts none of the traffic sent before the change; one that opens after the demo's
old settle (2.5 s: half its 5 s interval) can reach back across the change and count the old weight's traffic
against the new one (the control, so the test can fail).

The exporter writes Istio's metrics itself (the window-edge tests' `LayoutExporter`), so the traffic before the
change is one burst of known size, sent just after a scrape started.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from analysis.observations import ISTIO_BUCKETS_MS, MetricsQuery
from controller.adapters.local.metrics import PROMETHEUS_LAG, SCRAPE_INTERVAL, MetricsSource, open_metrics_source
from tests.support.layout_exporter import NS, LayoutExporter
from tests.support.tools import require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = len(ISTIO_BUCKETS_MS)
BURST = 1000  # the old weight's requests, sent just before the change
OLD_SETTLE = 2.5


@pytest.fixture(scope="module")
def exporter() -> Iterator[LayoutExporter]:
    e = LayoutExporter()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def source(exporter: LayoutExporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsSource]:
    require_tool("prometheus", install="apt-get install --no-install-recommends prometheus")
    with open_metrics_source("prometheus", f"http://{exporter.target}", tmp_path_factory.mktemp("prom")) as s:
        yield s


def first_window_v1_requests(exporter: LayoutExporter, source: MetricsSource, service: str, settle: float) -> int:
    """Send a burst on v1 0.3 s after a scrape started, call that instant the weight change, then count v1's
    requests in the 3 s window that opens `settle` after it (read once Prometheus has its edges)."""
    q = MetricsQuery(NS, (service,), ("v1",))
    exporter.add(service, "v1", [5.0] * 10)  # the series exists before the change
    exporter.next_scrape()
    exporter.next_scrape()  # the series has a sample: a baseline before the burst
    time.sleep(0.3)
    exporter.add(service, "v1", [5.0] * BURST)
    change = time.time()
    start, end = change + settle, change + settle + 3.0
    while time.time() < end:  # the new weight's traffic: a few requests every 0.2 s
        exporter.add(service, "v1", [5.0] * 3)
        time.sleep(0.2)
    while time.time() < end + SCRAPE_INTERVAL:  # the scrape after `end - lag` has landed
        time.sleep(0.05)
    return source.metrics.window(q, start, end).of(service, "v1", N).requests


def test_the_delay_is_the_lag_plus_a_scrape_interval(source: MetricsSource) -> None:
    assert source.name == "prometheus"
    assert source.delay == PROMETHEUS_LAG + SCRAPE_INTERVAL > OLD_SETTLE


def test_a_window_opened_the_sources_delay_after_a_change_counts_only_the_new_weights_traffic(
        exporter: LayoutExporter, source: MetricsSource) -> None:
    counted = [first_window_v1_requests(exporter, source, f"after-delay-{i}", source.delay) for i in range(2)]
    assert all(0 < c < BURST for c in counted), counted


def test_control_a_window_opened_sooner_counts_the_old_weights_traffic(
        exporter: LayoutExporter, source: MetricsSource) -> None:
    counted = [first_window_v1_requests(exporter, source, f"too-soon-{i}", OLD_SETTLE) for i in range(2)]
    assert any(c >= BURST for c in counted), counted
