"""The Prometheus provider against a real Prometheus scraping a test exporter, plus its failure modes.

The exporter (`IstioExporter`) serves Istio-named counters and histograms whose values the test sets, so
every count the provider reports can be checked exactly. Failures are driven by fake servers: one that
accepts connections and never answers, one that answers garbage.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from analysis.observations import ISTIO_BUCKETS_MS, MetricsQuery, VersionCounts
from controller.adapters.local.direct_metrics import DirectMetrics, parse_snapshot
from controller.adapters.prometheus.client import (
    BUCKETS_METRIC,
    REQUESTS_METRIC,
    BasicAuth,
    PrometheusConfig,
    PrometheusConfigError,
    PrometheusMetrics,
    PrometheusUnavailable,
    _reason,
    expand_template,
    istio_selector,
    promql_regex,
    promql_string,
)
from controller.adapters.prometheus.metrics import PrometheusSource
from controller.adapters.prometheus.server import PrometheusProcess
from controller.logs import known_secrets
from controller.ports import MetricsUnavailable
from tests.support.fake_prometheus import FakePrometheus, fake_prometheus, ok, url_of
from tests.support.paths import REPO
from tests.support.scrapes import scrape_after
from tests.support.tools import require_tool

N = len(ISTIO_BUCKETS_MS)
NS = "shop"
LABELS = (
    "reporter", "destination_service_namespace", "destination_service_name", "destination_version",
    "destination_workload", "response_code", "source_workload", "request_protocol",
)
HOSTILE = ('we"ird\\name', 'x"} or vector(1)', "dot.ted", ".*", "new\nline")


# ---------------------------------------------------------------------------------------------------
# The test exporter


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class IstioExporter:
    """Istio-named metrics with test-controlled values, served on a loopback port."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # label values (in LABELS order) -> [requests, sum_ms, per-bucket counts...]
        self._series: dict[tuple[str, ...], list[float]] = {}
        self._registry = CollectorRegistry()
        self._registry.register(self)  # type: ignore[arg-type]  # a duck-typed collector
        self._server: Any = None
        self.port = 0

    def add(self, service: str, version: str, code: int = 200, count: int = 1, latency_ms: float = 7.0,
            pod: str = "p1", namespace: str = NS, reporter: str = "destination") -> None:
        key = (reporter, namespace, service, version, f"{service}-{version}-{pod}", str(code), "load", "http")
        bucket = next(i for i, b in enumerate(ISTIO_BUCKETS_MS) if latency_ms <= b)
        with self._lock:
            stats = self._series.setdefault(key, [0.0, 0.0] + [0.0] * N)
            stats[0] += count
            stats[1] += count * latency_ms
            stats[2 + bucket] += count

    def restart(self) -> None:
        """What a restarted proxy looks like: every series gone, counters from zero again."""
        with self._lock:
            self._series.clear()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            series = [(k, list(v)) for k, v in self._series.items()]
        requests = CounterMetricFamily("istio_requests", "Requests.", labels=LABELS)
        durations = HistogramMetricFamily("istio_request_duration_milliseconds", "Durations.", labels=LABELS)
        for key, stats in series:
            requests.add_metric(list(key), stats[0])
            cumulative, buckets = 0.0, []
            for bound, count in zip(ISTIO_BUCKETS_MS, stats[2:], strict=True):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            durations.add_metric(list(key), buckets, stats[1])
        yield requests
        yield durations

    def serve(self) -> str:
        self._server, _ = start_http_server(0, addr="127.0.0.1", registry=self._registry)
        self.port = self._server.server_port
        return self.target

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# ---------------------------------------------------------------------------------------------------
# Fixtures: one Prometheus for the module (its first scrape takes ~5 s), stopped by PID in teardown.


@pytest.fixture(scope="module")
def exporter() -> Iterator[IstioExporter]:
    e = IstioExporter()
    e.serve()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def prometheus(exporter: IstioExporter) -> Iterator[PrometheusProcess]:
    require_tool("prometheus", install="apt-get install --no-install-recommends prometheus")
    process = PrometheusProcess([f"127.0.0.1:{exporter.port}"])
    process.start()
    yield process
    pid = process.pid
    process.stop()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        _signal_zero(pid)


def _signal_zero(pid: int) -> None:
    # A reaped child no longer exists: signal 0 fails.
    os.kill(pid, 0)


@pytest.fixture
def provider(prometheus: PrometheusProcess) -> Iterator[PrometheusMetrics]:
    p = PrometheusMetrics(PrometheusConfig(url=prometheus.url, timeout_seconds=5, retries=0))
    yield p
    p.close()


def counts(requests: int, errors: int, by_bucket: dict[int, int]) -> VersionCounts:
    return VersionCounts(requests, errors, tuple(by_bucket.get(i, 0) for i in range(N)))


def bucket_of(latency_ms: float) -> int:
    return next(i for i, b in enumerate(ISTIO_BUCKETS_MS) if latency_ms <= b)


# ---------------------------------------------------------------------------------------------------
# Exact counts against a real Prometheus


@pytest.mark.integration
@pytest.mark.slow
def test_consecutive_windows_equal_the_exporters_exact_increments(
    exporter: IstioExporter, prometheus: PrometheusProcess, provider: PrometheusMetrics
) -> None:
    q = MetricsQuery(NS, ("exact-a", "exact-b"), ("v1", "v2"))
    exporter.add("exact-a", "v1", 200, count=40, latency_ms=3)  # before the release: not counted
    exporter.add("exact-b", "v1", 200, count=5, latency_ms=3)
    t0 = scrape_after(prometheus, exporter.target)

    exporter.add("exact-a", "v1", 200, count=17, latency_ms=30)
    exporter.add("exact-a", "v1", 503, count=2, latency_ms=700)
    exporter.add("exact-a", "v2", 200, count=3, latency_ms=30, pod="p7")  # the canary's first requests
    t1 = scrape_after(prometheus, exporter.target)
    exporter.add("exact-a", "v2", 500, count=4, latency_ms=2)
    exporter.add("exact-a", "v2", 200, count=6, latency_ms=2, pod="p8")  # a second canary pod
    t2 = scrape_after(prometheus, exporter.target)

    first, second = provider.window(q, t0, t1), provider.window(q, t1, t2)
    assert provider.queries_sent == 8  # four per window, whatever the number of services and versions
    assert first.of("exact-a", "v1", N) == counts(19, 2, {bucket_of(30): 17, bucket_of(700): 2})
    assert first.of("exact-a", "v2", N) == counts(3, 0, {bucket_of(30): 3})
    assert second.of("exact-a", "v1", N) == counts(0, 0, {})
    assert second.of("exact-a", "v2", N) == counts(10, 4, {bucket_of(2): 10})
    assert first.of("exact-b", "v1", N) == counts(0, 0, {})
    assert first.absent == second.absent == frozenset({("exact-b", "v2")})
    # The two windows partition the whole: nothing double-counted or lost.
    whole = provider.window(q, t0, t2)
    for pair in whole.counts:
        assert whole.counts[pair] == first.counts[pair] + second.counts[pair]


@pytest.mark.integration
@pytest.mark.slow
def test_the_configured_error_codes_are_what_counts_as_an_error(
    exporter: IstioExporter, prometheus: PrometheusProcess, provider: PrometheusMetrics
) -> None:
    """`error_codes` in the provider's configuration: with "0" added, the requests Envoy answered with no code (the
    client gone, a reset stream) are errors too; by default only 5xx are. The setting had been read and checked,
    then never used."""
    q = MetricsQuery(NS, ("codes-a",), ("v1",))
    t0 = scrape_after(prometheus, exporter.target)
    exporter.add("codes-a", "v1", 200, count=20)
    exporter.add("codes-a", "v1", 503, count=3)
    exporter.add("codes-a", "v1", 0, count=4)
    exporter.add("codes-a", "v1", 429, count=5)
    t1 = scrape_after(prometheus, exporter.target)
    zero = PrometheusMetrics(PrometheusConfig(url=prometheus.url, timeout_seconds=5, retries=0,
                                              error_codes=("5", "0")))
    limited = PrometheusMetrics(PrometheusConfig(url=prometheus.url, timeout_seconds=5, retries=0,
                                                 error_codes=("429",)))
    try:
        assert provider.window(q, t0, t1).of("codes-a", "v1", N).errors == 3
        assert zero.window(q, t0, t1).of("codes-a", "v1", N).errors == 7
        assert zero.windows(q, [(t0, t1)])[0].of("codes-a", "v1", N).errors == 7  # the history's read as well
        assert limited.window(q, t0, t1).of("codes-a", "v1", N) == counts(32, 5, {bucket_of(7.0): 32})
    finally:
        zero.close()
        limited.close()


@pytest.mark.integration
@pytest.mark.slow
def test_past_windows_read_together_equal_each_window_read_alone(
    exporter: IstioExporter, prometheus: PrometheusProcess, provider: PrometheusMetrics
) -> None:
    """The stable version's history (`windows`): five windows in the four queries of one, with the counts of
    five separate reads, through a series born in the middle (a new pod) and a restart of the exporter."""
    q = MetricsQuery(NS, ("hist-a", "hist-b"), ("v1", "v2"))
    exporter.add("hist-a", "v1", 200, count=30, latency_ms=3)
    edges = [scrape_after(prometheus, exporter.target)]
    steps: list[Callable[[], None]] = [
        lambda: exporter.add("hist-a", "v1", 200, count=11, latency_ms=30),
        lambda: exporter.add("hist-a", "v1", 503, count=2, latency_ms=700, pod="p2"),  # born here
        lambda: None,  # a quiet window
        exporter.restart,  # every series from zero; then traffic again
        lambda: exporter.add("hist-b", "v1", 200, count=9, latency_ms=8),
    ]
    for step in steps:
        step()
        exporter.add("hist-a", "v1", 200, count=4, latency_ms=3)
        edges.append(scrape_after(prometheus, exporter.target))
    windows = list(itertools.pairwise(edges))
    before = provider.queries_sent
    together = provider.windows(q, windows)
    assert provider.queries_sent - before == 4
    alone = [provider.window(q, a, b) for a, b in windows]
    assert together == tuple(alone)
    assert [w.of("hist-a", "v1", N).requests for w in together] == [15, 6, 4, 4, 4]
    assert sum(w.of("hist-a", "v1", N).errors for w in together) == 2
    # Windows with a gap between them are read one by one (four queries each), with the same counts.
    before = provider.queries_sent
    assert provider.windows(q, [windows[0], windows[2]]) == (alone[0], alone[2])
    assert provider.queries_sent - before == 8


@pytest.mark.integration
@pytest.mark.slow
def test_a_counter_reset_loses_nothing_and_goes_nowhere_negative(
    exporter: IstioExporter, prometheus: PrometheusProcess, provider: PrometheusMetrics
) -> None:
    q = MetricsQuery(NS, ("reset",), ("v1",))
    exporter.add("reset", "v1", 200, count=100, latency_ms=3)
    t0 = scrape_after(prometheus, exporter.target)
    exporter.add("reset", "v1", 200, count=5, latency_ms=3)
    scrape_after(prometheus, exporter.target)
    exporter.restart()  # the proxy restarts: every series from zero (and other tests' series vanish)
    exporter.add("reset", "v1", 200, count=7, latency_ms=3)
    exporter.add("reset", "v1", 503, count=1, latency_ms=3)
    t1 = scrape_after(prometheus, exporter.target)
    window = provider.window(q, t0, t1)
    assert window.of("reset", "v1", N) == counts(13, 1, {bucket_of(3): 13})


@pytest.mark.integration
def test_hostile_names_are_escaped_and_still_match_exactly(
    exporter: IstioExporter, prometheus: PrometheusProcess, provider: PrometheusMetrics
) -> None:
    t0 = scrape_after(prometheus, exporter.target)
    for name in HOSTILE[:3]:
        exporter.add(name, 'v"1', 200, count=3)
    t1 = scrape_after(prometheus, exporter.target)
    q = MetricsQuery(NS, HOSTILE, ('v"1',))
    window = provider.window(q, t0, t1)
    for name in HOSTILE[:3]:
        assert window.of(name, 'v"1', N).requests == 3
    # ".*" and the injection attempt are names, not patterns or PromQL: they match nothing.
    assert window.absent == frozenset({(".*", 'v"1'), ("new\nline", 'v"1')})
    injected = MetricsQuery('shop"} or vector(1) or {a="', ('x"} or vector(1)',), (".*",))
    assert provider.window(injected, t0, t1).absent == frozenset({('x"} or vector(1)', ".*")})


@pytest.mark.integration
def test_a_missing_version_is_absent_and_counted_as_zero(
    exporter: IstioExporter, prometheus: PrometheusProcess, provider: PrometheusMetrics
) -> None:
    t0 = scrape_after(prometheus, exporter.target)
    exporter.add("lonely", "v1", 200, count=2)
    t1 = scrape_after(prometheus, exporter.target)
    window = provider.window(MetricsQuery(NS, ("lonely", "nobody"), ("v1", "v2")), t0, t1)
    assert window.of("lonely", "v1", N) == counts(2, 0, {bucket_of(7): 2})
    assert window.absent == frozenset({("lonely", "v2"), ("nobody", "v1"), ("nobody", "v2")})
    assert window.of("nobody", "v2", N) == VersionCounts.empty(N)


@pytest.mark.integration
def test_custom_promql_templates_work_end_to_end(
    exporter: IstioExporter, prometheus: PrometheusProcess
) -> None:
    config = PrometheusConfig.from_dict({
        "url": prometheus.url,
        "custom_metrics": {
            "error_ratio": {
                "kind": "counter_pair",
                "numerator": 'istio_requests_total{{matchers},response_code=~"5.."}',
                "denominator": "istio_requests_total{selector}",
            },
            "requests_so_far": {
                "kind": "value",
                "query": "sum by (destination_service_name, destination_version) "
                         "(istio_requests_total{selector})",
            },
            "per_pair": {
                "kind": "value",
                "query": "sum(istio_requests_total{destination_service_name={service},"
                         "destination_version={version}})",
            },
        },
    })
    provider = PrometheusMetrics(config)
    try:
        q = MetricsQuery(NS, ("custom",), ("v1", "v2"))
        exporter.add("custom", "v1", 200, count=10)
        t0 = scrape_after(prometheus, exporter.target)
        exporter.add("custom", "v1", 200, count=6)
        exporter.add("custom", "v1", 502, count=2)
        exporter.add("custom", "v2", 200, count=4)
        t1 = scrape_after(prometheus, exporter.target)

        ratio = provider.custom("error_ratio", q, t0, t1)
        v1 = ratio.values[("custom", "v1")]
        assert (v1.numerator, v1.denominator) == (2, 8)
        assert ratio.values[("custom", "v1")].ratio == 0.25
        assert ratio.values[("custom", "v2")].ratio == 0.0
        assert ratio.absent == frozenset()
        so_far = provider.custom("requests_so_far", q, t0, t1)
        assert so_far.values[("custom", "v1")].numerator == 18
        assert so_far.values[("custom", "v2")].numerator == 4
        sent = provider.queries_sent
        per_pair = provider.custom("per_pair", q, t0, t1)
        assert provider.queries_sent - sent == 2  # one query per (service, version) for {service}/{version}
        by_pair = {p: v.numerator for p, v in per_pair.values.items()}
        assert by_pair == {("custom", "v1"): 18, ("custom", "v2"): 4}
    finally:
        provider.close()


@pytest.mark.integration
def test_a_stopped_prometheus_is_unavailable_never_counts() -> None:
    require_tool("prometheus", install="apt-get install --no-install-recommends prometheus")
    process = PrometheusProcess([])
    process.start()
    try:
        source = PrometheusSource.from_config({"url": process.url, "retries": 1, "backoff_seconds": 0.01})
        q = MetricsQuery(NS, ("any",), ("v1",))
        now = time.time()
        assert source.window(q, now - 10, now).absent == frozenset({("any", "v1")})
        process.stop()
        with pytest.raises(MetricsUnavailable, match=r"connection failed: .*refused") as caught:
            source.window(q, now - 10, now)
        assert "after 2 attempts" in caught.value.reason
        assert isinstance(caught.value.__cause__, PrometheusUnavailable)
        source.close()
    finally:
        process.stop()


@pytest.mark.integration
def test_prometheus_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    require_tool("prometheus", install="apt-get install --no-install-recommends prometheus")
    starter = (
        "from controller.adapters.prometheus.server import PrometheusProcess\n"
        "import time\n"
        "p = PrometheusProcess([]); p.start()\n"
        "print(p.pid, p.log_path.parent, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        assert parent.stdout is not None
        pid_text, storage = parent.stdout.readline().split()
        child = int(pid_text)
        os.kill(child, 0)  # running
    finally:
        parent.kill()  # SIGKILL: no cleanup code of the parent runs
        parent.wait(timeout=5)
        if parent.stdout:
            parent.stdout.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    shutil.rmtree(storage, ignore_errors=True)  # the killed parent could not delete it
    assert not _alive(child), "prometheus outlived the process that started it"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0: check its state (it is init's child now, reaped soon).
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


# ---------------------------------------------------------------------------------------------------
# Failure modes against fake servers (no Prometheus needed)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback socket that accepts connections (kernel backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def test_a_prometheus_that_never_answers_is_unavailable_within_the_timeout(silent_port: int) -> None:
    sleeps: list[float] = []
    config = PrometheusConfig(url=f"http://127.0.0.1:{silent_port}", timeout_seconds=0.3, retries=1,
                              backoff_seconds=0.05)
    provider = PrometheusMetrics(config, sleep=sleeps.append)
    began = time.monotonic()
    with pytest.raises(PrometheusUnavailable, match=r"timed out after 0\.3 s"):
        provider.window(MetricsQuery(NS, ("a",), ("v1",)), 0, 10)
    elapsed = time.monotonic() - began
    provider.close()
    assert 0.6 <= elapsed < 2.0  # two attempts of 0.3 s each, not the library's default backoff
    assert (provider.queries_sent, sleeps) == (2, [0.05])




@pytest.fixture
def fake() -> Iterator[Callable[..., FakePrometheus]]:
    with fake_prometheus() as start:
        yield start


ISTIO = {"__name__": "istio_requests_total", "destination_service_name": "a", "destination_version": "v1",
         "destination_service_namespace": NS, "reporter": "destination", "response_code": "200"}


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        pytest.param((200, "<html>not json</html>"), "JSONDecodeError", id="not-json"),
        pytest.param((200, '{"status": "success"}'), "KeyError", id="no-data"),
        pytest.param((200, '{"data": {"result": 7}}'), "result is not a list", id="result-not-a-list"),
        pytest.param(ok([{"values": [[1, "2"]]}]), "without labels", id="no-labels"),
        pytest.param(ok([{"metric": ISTIO, "values": [[1]]}]), "sample", id="short-sample"),
        pytest.param(ok([{"metric": ISTIO, "values": [[1, "many"]]}]), "sample", id="value-not-a-number"),
        pytest.param(ok([{"metric": ISTIO, "values": [[5, "-3"]]}]), "negative", id="negative-counter"),
        pytest.param(ok([{"metric": ISTIO, "values": [[5, "NaN"]]}]), "not finite", id="nan-counter"),
        pytest.param(ok([{"metric": ISTIO, "values": [[5, "2.5"]]}]), "whole number", id="fractional"),
        pytest.param(ok([{"metric": ISTIO, "value": [5, "1"]}]), "expected a range", id="vector-not-matrix"),
        pytest.param((400, '{"status":"error","error":"parse error"}'), "400", id="bad-request"),
    ],
)
def test_malformed_answers_are_unavailable(
    fake: Callable[..., FakePrometheus], answer: tuple[int, str], reason: str
) -> None:
    server = fake([answer])
    provider = PrometheusMetrics(PrometheusConfig(url=url_of(server), retries=2), sleep=lambda _: None)
    with pytest.raises(PrometheusUnavailable, match=reason):
        provider.window(MetricsQuery(NS, ("a",), ("v1",)), 0, 10)
    provider.close()
    assert len(server.queries) == len(set(server.queries))  # none retried: the same question, the same answer


@pytest.mark.parametrize("value, reason", [("-3", "negative"), ("NaN", "not finite")])
def test_unusable_counters_in_past_windows_are_unavailable(
    fake: Callable[..., FakePrometheus], value: str, reason: str
) -> None:
    """The history's read (`windows`) turns counters that cannot be counted into an unavailable source, as
    `window` does: the reconciler then starts the judge without history and says why."""
    server = fake([ok([{"metric": ISTIO, "values": [[5, value]]}])])
    provider = PrometheusMetrics(PrometheusConfig(url=url_of(server), retries=0), sleep=lambda _: None)
    with pytest.raises(PrometheusUnavailable, match=f"unusable counters from Prometheus: .*{reason}"):
        provider.windows(MetricsQuery(NS, ("a",), ("v1",)), [(0, 10), (10, 20)])
    provider.close()


def test_5xx_is_retried_with_exponential_backoff(fake: Callable[..., FakePrometheus]) -> None:
    server = fake([(503, "overloaded")])
    sleeps: list[float] = []
    config = PrometheusConfig(url=url_of(server), retries=3, backoff_seconds=0.25)
    provider = PrometheusMetrics(config, sleep=sleeps.append)
    with pytest.raises(PrometheusUnavailable, match=r"503.*after 4 attempts"):
        provider.window(MetricsQuery(NS, ("a",), ("v1",)), 0, 10)
    provider.close()
    assert sleeps == [0.25, 0.5, 1.0]
    assert len(server.seen) == 4


def test_a_retry_that_succeeds_gives_counts(fake: Callable[..., FakePrometheus]) -> None:
    inside = ok([{"metric": ISTIO, "values": [[5, "12"], [9, "15"]]}])
    before = ok([{"metric": ISTIO, "value": [0, "10"]}], "vector")
    server = fake([(502, "bad gateway"), inside], [before])
    provider = PrometheusMetrics(PrometheusConfig(url=url_of(server), retries=1), sleep=lambda _: None)
    window = provider.window(MetricsQuery(NS, ("a",), ("v1",)), 0, 10)
    provider.close()
    assert window.of("a", "v1", N).requests == 5


def test_a_baseline_answered_without_the_metric_name_is_still_the_series_baseline(
    fake: Callable[..., FakePrometheus]
) -> None:
    """Stores such as VictoriaMetrics drop `__name__` from `last_over_time`: the series is the same one."""
    inside = ok([{"metric": ISTIO, "values": [[5, "12"], [9, "15"]]}])
    nameless = {k: v for k, v in ISTIO.items() if k != "__name__"}
    server = fake([inside], [ok([{"metric": nameless, "value": [0, "10"]}], "vector")])
    provider = PrometheusMetrics(PrometheusConfig(url=url_of(server), retries=0))
    window = provider.window(MetricsQuery(NS, ("a",), ("v1",)), 0, 10)
    provider.close()
    assert window.of("a", "v1", N).requests == 5  # 15 - 10, not 15 counted from zero


def test_series_told_apart_only_by_their_metric_name_are_refused(fake: Callable[..., FakePrometheus]) -> None:
    other = {**ISTIO, "__name__": "other_total"}
    server = fake([ok([{"metric": ISTIO, "values": [[5, "1"]]}, {"metric": other, "values": [[5, "2"]]}])])
    provider = PrometheusMetrics(PrometheusConfig(url=url_of(server), retries=0))
    with pytest.raises(PrometheusUnavailable, match="must select one metric"):
        provider.window(MetricsQuery(NS, ("a",), ("v1",)), 0, 10)
    provider.close()


def test_the_token_reaches_prometheus_but_never_logs_or_reprs(
    fake: Callable[..., FakePrometheus], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-token-do-not-log"
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    server = fake([(503, "no"), ok([])])  # one retry: the token goes out on both attempts
    config = PrometheusConfig.from_dict({"url": url_of(server), "bearer_token_file": str(token_file)})
    provider = PrometheusMetrics(config, sleep=lambda _: None)
    caplog.set_level(logging.DEBUG)
    provider.window(MetricsQuery(NS, ("a",), ("v1",)), 0, 10)
    provider.close()
    assert server.seen[-1]["Authorization"] == f"Bearer {secret}"
    assert caplog.records, "the provider logs its queries at debug level"
    for text in (caplog.text, repr(config), str(config), repr(provider), repr(PrometheusSource(provider))):
        assert secret not in text


@pytest.mark.parametrize("token", ["s3cr3t-one\ns3cr3t-two", "s3cr3t-one s3cr3t-two", "s3cr3t-one\u00e9"])
def test_a_token_a_header_cannot_carry_is_refused_by_its_files_name_alone(
    fake: Callable[..., FakePrometheus], tmp_path: Path, token: str
) -> None:
    """The HTTP library would refuse such a header with an error that repeats the whole value, and a metrics
    outage's reason is written into the release's status, which every viewer of releases can read."""
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    server = fake([ok([])])
    source = PrometheusSource(PrometheusMetrics(PrometheusConfig(url=url_of(server), retries=0,
                                                                 bearer_token_file=str(token_file))))
    with pytest.raises(MetricsUnavailable) as caught:
        source.window(MetricsQuery(NS, ("a",), ("v1",)), 0, 10)
    source.close()
    assert str(token_file) in caught.value.reason and "a header cannot carry it" in caught.value.reason
    assert "s3cr3t" not in caught.value.reason
    assert server.seen == []
    assert token in known_secrets()  # and redacted from the logs, as the signing secrets are


def test_a_refused_header_is_named_without_its_value() -> None:
    refused = requests.exceptions.InvalidHeader("Invalid return character(s) in header value: 'Bearer s3cr3t'")
    assert _reason(refused, 1.0) == "InvalidHeader: a request header was refused"


def test_basic_auth_password_is_read_from_its_file(
    fake: Callable[..., FakePrometheus], tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("hunter2")
    server = fake([ok([])])
    auth = BasicAuth("canary", str(tmp_path / "pw"))
    config = replace(PrometheusConfig(url=url_of(server)), basic_auth=auth)
    provider = PrometheusMetrics(config)
    provider.window(MetricsQuery(NS, ("a",), ("v1",)), 0, 10)
    provider.close()
    assert server.seen[0]["Authorization"] == "Basic Y2FuYXJ5Omh1bnRlcjI="  # canary:hunter2
    assert "hunter2" not in repr(config)


def test_an_unreadable_token_file_is_unavailable_without_a_query(
    fake: Callable[..., FakePrometheus], tmp_path: Path
) -> None:
    server = fake([ok([])])
    config = PrometheusConfig(url=url_of(server), bearer_token_file=str(tmp_path / "missing"))
    provider = PrometheusMetrics(config)
    with pytest.raises(PrometheusUnavailable, match="cannot read the bearer token file"):
        provider.window(MetricsQuery(NS, ("a",), ("v1",)), 0, 10)
    provider.close()
    assert server.seen == []


# ---------------------------------------------------------------------------------------------------
# Query text and escaping (pure)


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("plain", '"plain"'),
        ('a"b', '"a\\"b"'),
        ("back\\slash", '"back\\\\slash"'),
        ("new\nline\t", '"new\\nline\\t"'),
        ("bell\x07", '"bell\\x07"'),
        ('x"} or vector(1)', '"x\\"} or vector(1)"'),
    ],
)
def test_promql_string_escapes_quotes_backslashes_and_controls(value: str, literal: str) -> None:
    assert promql_string(value) == literal


def test_promql_regex_escapes_metacharacters_then_the_string() -> None:
    assert promql_regex(["b.c", "a"]) == '"a|b\\\\.c"'
    assert promql_regex(['x"} or vector(1)']) == '"x\\"\\\\} or vector\\\\(1\\\\)"'
    assert promql_regex([".*"]) == '"\\\\.\\\\*"'
    with pytest.raises(ValueError, match="at least one"):
        promql_regex([])


def test_the_istio_selectors_group_every_service_and_version_one_metric_each() -> None:
    q = MetricsQuery('ns"x', ("search", 'x"} or vector(1)'), ("v1", "v2"))
    matchers = (
        'destination_service_namespace="ns\\"x",'
        'destination_service_name=~"search|x\\"\\\\} or vector\\\\(1\\\\)",'
        'destination_version=~"v1|v2",reporter="destination"}'
    )
    for metric in (REQUESTS_METRIC, BUCKETS_METRIC):
        assert istio_selector(q, "destination_service_namespace", metric) == \
            f'{{__name__="{metric}",' + matchers
    assert "destination_service_namespace" not in istio_selector(q, "", REQUESTS_METRIC)


def test_templates_get_escaped_values_for_every_placeholder() -> None:
    q = MetricsQuery('n"s', ("a.b",), ('v"1',), reporter="source")
    template = "{namespace} {service} {version} {reporter} {services_regex} {versions_regex} {selector} " \
        "{window}"
    text = expand_template(template, q, "ns_label", "svc", "ver", 60.0, ("a.b", 'v"1'))
    assert text == (
        '"n\\"s" "a.b" "v\\"1" "source" "a\\\\.b" "v\\"1" '
        '{ns_label="n\\"s",svc="a.b",ver="v\\"1"} 60000ms'
    )
    grouped = expand_template("m{{matchers},code=\"5\"}", q, "", "svc", "ver", 1.5)
    assert grouped == 'm{svc=~"a\\\\.b",ver=~"v\\"1",code="5"}'


# ---------------------------------------------------------------------------------------------------
# Configuration


def test_config_defaults_and_custom_metrics() -> None:
    config = PrometheusConfig.from_dict({
        "url": "https://prom.example:9090/",
        "custom_metrics": {"ctr": {"kind": "counter_pair", "numerator": "clicks_total{selector}",
                                   "denominator": "views_total{selector}", "version_label": "version"}},
    })
    assert config.url == "https://prom.example:9090"
    assert (config.timeout_seconds, config.retries, config.tls_verify) == (5.0, 2, True)
    assert config.error_codes == ("5",)
    assert config.custom_metrics["ctr"].version_label == "version"
    assert not config.custom_metrics["ctr"].per_pair


@pytest.mark.parametrize(
    ("tls", "verify"),
    [({}, True), ({"ca_file": "/ca.pem"}, "/ca.pem"), ({"tls_verify": False, "ca_file": "/ca.pem"}, False)],
)
def test_tls_settings_reach_the_session(tls: dict[str, Any], verify: object) -> None:
    config = PrometheusConfig.from_dict({"url": "https://prom:9090", **tls})
    assert PrometheusMetrics._session(config).verify == verify


@pytest.mark.parametrize(
    ("d", "path", "message"),
    [
        ({}, "prom.url", "is required"),
        ({"url": "ftp://x"}, "prom.url", "http"),
        ({"url": "http://user:pw@x"}, "prom.url", "credentials"),
        ({"url": "http://x", "timeout": 3}, "prom.timeout", "unknown field"),
        ({"url": "http://x", "timeout_seconds": 0}, "prom.timeout_seconds", "positive"),
        ({"url": "http://x", "timeout_seconds": "5"}, "prom.timeout_seconds", "number"),
        ({"url": "http://x", "retries": -1}, "prom.retries", "whole number"),
        ({"url": "http://x", "retries": True}, "prom.retries", "whole number"),
        ({"url": "http://x", "tls_verify": "yes"}, "prom.tls_verify", "true or false"),
        ({"url": "http://x", "namespace_label": 'ns"} or'}, "prom.namespace_label", "label name"),
        ({"url": "http://x", "error_codes": ["5xx"]}, "prom.error_codes[0]", "prefix"),
        ({"url": "http://x", "error_codes": []}, "prom.error_codes", "non-empty"),
        ({"url": "http://x", "basic_auth": {"username": "u"}}, "prom.basic_auth.password_file", "required"),
        ({"url": "http://x", "basic_auth": {"username": "u", "password_file": "/p"},
          "bearer_token_file": "/t"}, "prom", "not both"),
        ({"url": "http://x", "custom_metrics": {"m": {"kind": "gauge"}}},
         "prom.custom_metrics.m.kind", "counter_pair"),
        ({"url": "http://x", "custom_metrics": {"m": {"kind": "value"}}},
         "prom.custom_metrics.m.query", "required"),
        ({"url": "http://x", "custom_metrics": {"m": {"kind": "value", "query": "x{selctor}"}}},
         "prom.custom_metrics.m.query", "unknown placeholder {selctor}"),
        ({"url": "http://x", "custom_metrics": {"m": {"kind": "counter_pair", "numerator": "a[{window}]",
                                                      "denominator": "b"}}},
         "prom.custom_metrics.m.numerator", "{window}"),
        ({"url": "http://x",
          "custom_metrics": {"m": {"kind": "value", "query": "q", "service_label": "a b"}}},
         "prom.custom_metrics.m.service_label", "label name"),
    ],
)
def test_config_errors_name_the_exact_field(d: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(PrometheusConfigError, match="^" + re.escape(path)) as caught:
        PrometheusConfig.from_dict(d, "prom")
    assert caught.value.path == path
    assert message in caught.value.message


# ---------------------------------------------------------------------------------------------------
# The direct scrape (no Prometheus)


def test_direct_metrics_difference_consecutive_scrapes(exporter: IstioExporter) -> None:
    clock = iter([100.0, 105.0, 110.0, 115.0]).__next__
    direct = DirectMetrics(f"http://127.0.0.1:{exporter.port}/metrics", clock=clock)
    q = MetricsQuery(NS, ("direct",), ("v1", "v2"))
    exporter.add("direct", "v1", 200, count=50)
    direct.prime()
    exporter.add("direct", "v1", 200, count=9, latency_ms=40)
    exporter.add("direct", "v1", 503, count=1, latency_ms=40)
    first = direct.window(q, 0, 0)
    assert (first.start, first.end) == (100.0, 105.0)
    assert first.of("direct", "v1", N) == counts(10, 1, {bucket_of(40): 10})
    assert first.absent == frozenset({("direct", "v2")})
    exporter.add("direct", "v2", 200, count=4, latency_ms=40)
    second = direct.window(q, 0, 0)
    assert (second.start, second.end) == (105.0, 110.0)
    assert second.of("direct", "v2", N).requests == 4
    assert second.of("direct", "v1", N).requests == 0
    direct.close()


def test_direct_metrics_failures_are_unavailable_and_lose_nothing(exporter: IstioExporter) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed when the block ends: nothing listens there
    direct = DirectMetrics(f"http://127.0.0.1:{dead}/metrics", timeout_s=1)
    with pytest.raises(MetricsUnavailable, match="ConnectError"):
        direct.window(MetricsQuery(NS, ("d",), ("v1",)), 0, 0)
    direct.close()

    live = DirectMetrics(f"http://127.0.0.1:{exporter.port}/metrics")
    q = MetricsQuery(NS, ("gap",), ("v1",))
    live.prime()
    exporter.add("gap", "v1", 200, count=3)
    good_url, live.metrics_url = live.metrics_url, f"http://127.0.0.1:{dead}/metrics"
    with pytest.raises(MetricsUnavailable):
        live.window(q, 0, 0)
    live.metrics_url = good_url
    exporter.add("gap", "v1", 200, count=2)
    assert live.window(q, 0, 0).of("gap", "v1", N).requests == 5  # the failed tick's requests are kept
    live.close()


def test_parse_snapshot_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        parse_snapshot("<html>oops</html>", 0.0)
    snapshot = parse_snapshot('istio_requests_total{destination_version="v1"} 3\n', 1.0)
    assert list(snapshot.requests.values()) == [3.0]
