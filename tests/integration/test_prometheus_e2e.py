"""A real Prometheus scraping the real mesh (Envoy's statistics, relabelled into Istio's metrics by the scrape job's
`metric_relabel_configs`) in front of the real search stack.

The provider's interval counts must equal the router's own counters (the same mapping, applied by the router to
Envoy's statistics for the direct scrape) exactly; a router restart (counter
reset) loses nothing; a Prometheus outage in the middle of a release gives `error` verdicts, holds the
release and finally rolls it back — it is never promoted.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from analysis.counters import CounterSnapshot, snapshot_counts
from analysis.observations import MetricsQuery, WindowCounts
from controller.adapters.local.direct_metrics import DirectMetrics
from controller.adapters.local.metrics import LOCAL_LABELS, LaggedMetrics
from controller.adapters.local.platform import LocalRouter, LocalWorkloads, LogNotifier, SystemClock
from controller.adapters.local.stack import SEARCH_SERVICES, LocalStack
from controller.adapters.local.state import StateDir
from controller.adapters.prometheus.metrics import PrometheusSource
from controller.adapters.prometheus.server import PrometheusProcess, prometheus_binary
from controller.core.spec.release import parse_release
from controller.core.status import Phase, ReleaseStatus
from controller.reconciler import Ports, Reconciler
from demo.harness import Console, demo_release, drive_release
from localmesh.envoy.metrics import scrape_job
from tests.support.scrapes import scrape_after

pytestmark = [pytest.mark.integration, pytest.mark.slow]

if prometheus_binary() is None:  # pragma: no cover - scripts/test installs it; say so loudly if it is gone
    pytest.fail("the `prometheus` binary is missing: scripts/test installs it (apt-get install prometheus)",
                pytrace=False)

QUERY = MetricsQuery("local", SEARCH_SERVICES, ("v1", "v2"))
FAULTY = {"v2": {"ml-infer": {"error_rate": 0.3}}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("stack"), work_ms=0.5, faults=FAULTY) as s:
        s.start_version("v1")
        s.start_version("v2")
        assert s.admin is not None
        LocalRouter(s.admin).apply(s.baseline_plan("v1", "v2", 30))
        yield s


@pytest.fixture(scope="module")
def prometheus(stack: LocalStack) -> Iterator[PrometheusProcess]:
    """Prometheus scraping Envoy's own statistics, relabelled into Istio's metrics by the scrape job's rules."""
    with PrometheusProcess([], jobs=[scrape_job([stack.envoy_admin_target])], scrape_interval_s=1.0) as prom:
        yield prom


def send(stack: LocalStack, n: int) -> dict[int, int]:
    codes: dict[int, int] = {}
    with httpx.Client(base_url=stack.router_url, headers={"host": "master-search"}, timeout=10) as client:
        for i in range(n):
            r = client.post("/master-service/search", json={"text": "ranking model", "n_results": 3,
                                                           "random_seed": i})
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
    return codes


def as_dict(w: WindowCounts) -> dict[tuple[str, str], tuple[int, int, tuple[int, ...]]]:
    return {k: (v.requests, v.errors, v.buckets) for k, v in w.counts.items() if v.requests}


def series(snapshot: CounterSnapshot) -> list[tuple[list[tuple[str, str]], float]]:
    return sorted((sorted(labels), value) for labels, value in snapshot.requests.items())


def flushed_scrape(direct: DirectMetrics, before: CounterSnapshot) -> CounterSnapshot:
    """The router's counters once Envoy has flushed its histograms: they lag its request counters by up to a flush
    interval (0.25 s), so a scrape right after the last answer can count a request not yet in any bucket."""
    deadline = time.monotonic() + 10
    while True:
        after = direct.scrape()
        counts = snapshot_counts(QUERY, before, after, LOCAL_LABELS).counts.values()
        if all(sum(c.buckets) == c.requests for c in counts) or time.monotonic() > deadline:
            return after
        time.sleep(0.05)


def test_provider_counts_equal_the_routers_own_counters(stack: LocalStack, prometheus: PrometheusProcess) -> None:
    direct = DirectMetrics(f"{stack.admin_url}/metrics", labels=LOCAL_LABELS)
    source = PrometheusSource.from_config({"url": prometheus.url, "namespace_label": ""})
    try:
        before = direct.scrape()
        t0 = scrape_after(prometheus)
        codes = send(stack, 300)
        after = flushed_scrape(direct, before)
        t1 = scrape_after(prometheus)
        from_prometheus = source.window(QUERY, t0, t1)
        from_router = snapshot_counts(QUERY, before, after, LOCAL_LABELS)
    finally:
        source.close()
        direct.close()
    assert as_dict(from_prometheus) == as_dict(from_router)
    entry = {v: from_prometheus.counts[("master-search", v)] for v in ("v1", "v2")}
    assert entry["v1"].requests + entry["v2"].requests == 300
    assert entry["v2"].errors > 0 and entry["v1"].errors == 0  # only v2 carries the injected errors
    assert entry["v1"].errors + entry["v2"].errors == codes.get(500, 0)


# Alone: beside other tests this exact count failed 2 of 3 full runs here on one day (Prometheus counted 201 of
# 200 searches, once 135 of 136 requests in buckets), around the router's restart; alone it passed 5 of 5.
@pytest.mark.realtime(alone=True)
def test_a_router_restart_loses_nothing_and_counts_nothing_negative(
        stack: LocalStack, prometheus: PrometheusProcess) -> None:
    source = PrometheusSource.from_config({"url": prometheus.url, "namespace_label": ""})
    direct = DirectMetrics(f"{stack.admin_url}/metrics", labels=LOCAL_LABELS)
    try:
        before = direct.scrape()
        t0 = scrape_after(prometheus)
        sent = send(stack, 120)
        # The last scrape before the restart must see Envoy's histograms flushed: buckets not yet merged when Envoy
        # stops are gone with it, in any mesh, and this test is about the counter reset, not that lag.
        old = flushed_scrape(direct, before)
        scrape_after(prometheus)
        stack.restart_router()  # counters start again from zero
        before = direct.scrape()
        sent_after = send(stack, 80)
        new = flushed_scrape(direct, before)
        t1 = scrape_after(prometheus)
        window = source.window(QUERY, t0, t1)
        # What each side counted, for a failure (seen rarely beside other tests: 201 and 203 of 200).
        after_restart = as_dict(snapshot_counts(QUERY, before, new, LOCAL_LABELS))
        seen = (f"sent {sent} then {sent_after}; Envoy counted {after_restart} after the restart; Prometheus "
                f"{as_dict(window)} in ({t0}, {t1}); Envoy's request series before it: {series(old)}")
    finally:
        source.close()
        direct.close()
    entry = [window.counts[("master-search", v)] for v in ("v1", "v2")]
    assert sum(c.requests for c in entry) == 200, seen
    for key, counts in window.counts.items():
        assert counts.requests >= 0 and min(counts.buckets) >= 0, seen
        assert sum(counts.buckets) == counts.requests, f"{key}: {seen}"


def test_custom_promql_metric_reads_the_router_through_prometheus(
        stack: LocalStack, prometheus: PrometheusProcess) -> None:
    source = PrometheusSource.from_config({
        "url": prometheus.url, "namespace_label": "",
        "custom_metrics": {"entry_errors": {
            "kind": "counter_pair",
            "numerator": 'istio_requests_total{{matchers},response_code=~"5.."}',
            "denominator": "istio_requests_total{selector}"}},
    })
    try:
        t0 = scrape_after(prometheus)
        codes = send(stack, 150)
        t1 = scrape_after(prometheus)
        custom = source.custom("entry_errors", MetricsQuery("local", ("master-search",), ("v1", "v2")), t0, t1)
    finally:
        source.close()
    values = {v: custom.values[("master-search", v)] for v in ("v1", "v2")}
    assert sum(v.denominator for v in values.values()) == 150
    assert sum(v.numerator for v in values.values()) == codes.get(500, 0)


@pytest.mark.realtime
def test_prometheus_outage_mid_release_holds_then_rolls_back_and_never_promotes(tmp_path: Path) -> None:
    release = demo_release(interval=3.0)
    release["spec"]["policies"] = {"onInconclusive": "continue", "rollbackAfterErrors": 2}
    spec = parse_release(release)
    with LocalStack(tmp_path / "stack", work_ms=0.5) as stack:
        stack.start_version("v1")
        assert stack.admin is not None
        router = LocalRouter(stack.admin)
        router.apply(stack.baseline_plan("v1"))
        prom = PrometheusProcess([f"127.0.0.1:{stack.admin_port}"], scrape_interval_s=1.0)
        prom.start()
        source = PrometheusSource.from_config({"url": prom.url, "namespace_label": "", "retries": 0,
                                               "timeout_seconds": 1.0})
        stop_load = threading.Event()
        load = threading.Thread(target=lambda: _trickle(stack, stop_load), daemon=True)
        load.start()
        state = StateDir(tmp_path / "state")
        state.save_release(release)
        outage: dict[str, float] = {}

        def kill_prometheus_after_first_decision(status: ReleaseStatus) -> None:
            if status.history and "at" not in outage:
                outage["at"] = time.time()
                prom.stop()

        try:
            clock = SystemClock()
            reconciler = Reconciler(Ports(LocalWorkloads(stack), router, LaggedMetrics(source, 2.0), clock,
                                          LogNotifier()))
            status = drive_release(reconciler, state, spec, clock, threading.Event(), 90,
                                   Console(io.StringIO()), kill_prometheus_after_first_decision)
        finally:
            stop_load.set()
            load.join(10)
            source.close()
            prom.stop()
    assert status.phase is Phase.ROLLED_BACK, status.message
    after = [h for h in status.history if h.at >= outage["at"]]
    assert [h.verdict for h in after] == ["error", "error"]
    assert [h.action for h in after] == ["hold", "roll back"]
    assert len({h.weight for h in after}) == 1  # held: no step advanced during the outage
    assert "analysis errors in a row" in status.message


def _trickle(stack: LocalStack, stop: threading.Event) -> None:
    with httpx.Client(base_url=stack.router_url, headers={"host": "master-search"}, timeout=5) as client:
        for i in range(20_000):  # bounded: ~25 req/s for at most ~13 minutes, stopped far earlier
            if stop.wait(0.04):
                return
            with contextlib.suppress(httpx.HTTPError):
                client.post("/master-service/search", json={"text": "tail latency", "n_results": 3,
                                                            "random_seed": i})
