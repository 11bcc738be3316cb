"""Exact interval counts at the window edges, against a real Prometheus (issue 14, point 7).

- A window read while a scrape stamped inside it is still landing: with the lag, every window read live
  equals the same window read again later (nothing lost, nothing counted twice); without it, the live
  read misses the scrape (the control, so the lag test can fail).
- A store that drops `__name__` from `last_over_time` (VictoriaMetrics does), simulated by a proxy in
  front of the real Prometheus: the same counts as Prometheus itself.
- Two versions exporting different bucket layouts: counts on their common edges, and a judge verdict
  rather than `error`.

The exporter writes Prometheus text itself, so each version has its own bucket edges, and it can take
its time answering (a slow scrape: stamped when it starts, stored when it ends).
"""

from __future__ import annotations

import http.server
import itertools
import json
import math
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from analysis.config import AnalysisConfig
from analysis.judges import make_judge
from analysis.observations import ISTIO_BUCKETS_MS, MetricsQuery, Verdict, VersionCounts, WindowCounts, interval_of
from controller.adapters.prometheus.client import (
    LAG_MARGIN_SECONDS,
    PrometheusConfig,
    PrometheusConfigError,
    PrometheusMetrics,
    settled_instant,
)
from controller.adapters.prometheus.server import PrometheusProcess
from tests.support.layout_exporter import NS, LayoutExporter
from tests.support.scrapes import scrape_after
from tests.support.tools import require_tool

N = len(ISTIO_BUCKETS_MS)
@pytest.fixture(scope="module")
def exporter() -> Iterator[LayoutExporter]:
    e = LayoutExporter()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def prometheus(exporter: LayoutExporter) -> Iterator[PrometheusProcess]:
    require_tool("prometheus", install="apt-get install --no-install-recommends prometheus")
    with PrometheusProcess([exporter.target], scrape_interval_s=1.0) as process:
        yield process


@pytest.fixture
def provider_for(prometheus: PrometheusProcess) -> Iterator[Callable[..., PrometheusMetrics]]:
    made: list[PrometheusMetrics] = []

    def make(url: str | None = None, **settings: Any) -> PrometheusMetrics:
        config = PrometheusConfig.from_dict({"url": url or prometheus.url, "retries": 0, **settings})
        made.append(PrometheusMetrics(config))
        return made[-1]

    yield make
    for provider in made:
        provider.close()


def numbers(w: WindowCounts) -> dict[tuple[str, str], VersionCounts]:
    return dict(w.counts)


# ---------------------------------------------------------------------------------------------------
# The lag: pure


def test_the_lag_defaults_to_twice_the_scrape_interval_plus_a_margin() -> None:
    def lag(**settings: Any) -> float:
        return PrometheusConfig.from_dict({"url": "http://p:9090", **settings}).lag

    assert lag(scrape_interval_seconds=15) == 30 + LAG_MARGIN_SECONDS
    assert lag(scrape_interval_seconds=15, lag_seconds=12) == 12
    assert lag(lag_seconds=0) == 0
    assert lag() == 0  # the scrape interval not told: windows are read at the instants asked for
    for bad in ({"scrape_interval_seconds": 0}, {"lag_seconds": -1}, {"lag_seconds": "30s"}):
        with pytest.raises(PrometheusConfigError, match=f"^prom.{next(iter(bad))}"):
            PrometheusConfig.from_dict({"url": "http://p:9090", **bad}, "prom")


@pytest.mark.parametrize(("t", "lag", "step", "read"), [
    (1000.0, 35.0, 15.0, 960.0), (1009.999, 35.0, 15.0, 960.0), (1010.0, 35.0, 15.0, 975.0),
    (1000.0004, 0.0, None, 1000.0004), (1000.25, 2.0, None, 998.25), (1000.9, 0.0, 1.0, 1000.0),
])
def test_settled_instants(t: float, lag: float, step: float | None, read: float) -> None:
    assert settled_instant(t, lag, step) == read


def test_consecutive_windows_are_read_back_to_back() -> None:
    config = PrometheusConfig(url="http://p:9090", scrape_interval_seconds=15)
    provider = PrometheusMetrics(config)
    ticks = [1_700_000_000.0 + 60.37 * i + (i % 3) * 0.91 for i in range(20)]
    windows = [provider.settled(a, b) for a, b in itertools.pairwise(ticks)]
    provider.close()
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert end == start  # the shared edge is read at one instant by both windows
    for (a, b), (asked_a, asked_b) in zip(windows, itertools.pairwise(ticks), strict=True):
        assert a % 15 == b % 15 == 0
        for read, asked in ((a, asked_a), (b, asked_b)):
            assert asked - config.lag - 15 < read <= asked - config.lag


# ---------------------------------------------------------------------------------------------------
# The lag: a real Prometheus, a scrape in flight at every window end


def live_and_again(exporter: LayoutExporter, provider: PrometheusMetrics, q: MetricsQuery,
                   ticks: int) -> tuple[list[WindowCounts], list[float]]:
    """Like a controller: each tick adds requests, then reads the window ending now while a scrape
    stamped just before now is still being answered."""
    edges, live = [time.time()], []
    for k in range(1, ticks + 1):
        exporter.add("live", "v1", [7.0] * k)
        edges.append(exporter.next_scrape())
        live.append(provider.window(q, edges[-2], edges[-1]))
    return live, edges


@pytest.mark.integration
@pytest.mark.slow
def test_windows_read_live_count_every_request_once_with_the_lag(
    exporter: LayoutExporter, prometheus: PrometheusProcess, provider_for: Callable[..., PrometheusMetrics]
) -> None:
    q = MetricsQuery(NS, ("live",), ("v1",))
    provider = provider_for(scrape_interval_seconds=1.0, lag_seconds=2.0)  # > 1 s interval + 0.6 s scrape
    exporter.delay = 0.6
    try:
        exporter.add("live", "v1", [7.0] * 50)  # before the first window
        live, edges = live_and_again(exporter, provider, q, ticks=7)
    finally:
        exporter.delay = 0.0
    scrape_after(prometheus, exporter.target, edges[-1])
    again = [provider.window(q, a, b) for a, b in itertools.pairwise(edges)]
    assert [numbers(w) for w in live] == [numbers(w) for w in again]
    whole = provider.window(q, edges[0], edges[-1])
    assert sum(w.of("live", "v1", N).requests for w in live) == whole.of("live", "v1", N).requests > 0
    assert [(w.start, w.end) for w in live] == list(itertools.pairwise(edges))  # the instants asked for


@pytest.mark.integration
@pytest.mark.slow
def test_without_the_lag_a_window_read_live_misses_the_scrape_in_flight(
    exporter: LayoutExporter, prometheus: PrometheusProcess, provider_for: Callable[..., PrometheusMetrics]
) -> None:
    """The control: the race the lag closes is real in this rig, so the test above can fail."""
    q = MetricsQuery(NS, ("live",), ("v1",))
    provider = provider_for()  # no scrape interval, no lag: read at the instants asked for
    exporter.delay = 0.6
    try:
        live, edges = live_and_again(exporter, provider, q, ticks=3)
    finally:
        exporter.delay = 0.0
    scrape_after(prometheus, exporter.target, edges[-1])
    again = [provider.window(q, a, b) for a, b in itertools.pairwise(edges)]
    missed = [b.of("live", "v1", N).requests - a.of("live", "v1", N).requests for a, b in zip(live, again,
                                                                                           strict=True)]
    assert any(m > 0 for m in missed), missed


# ---------------------------------------------------------------------------------------------------
# A store that drops `__name__` from function results


class NamelessProxy(http.server.ThreadingHTTPServer):
    """Forwards queries to Prometheus and drops `__name__` from the answers' series: from the
    `last_over_time` answers (as VictoriaMetrics does) or, with `everywhere`, from every answer."""

    def __init__(self, upstream: str, everywhere: bool) -> None:
        self.upstream, self.everywhere = upstream, everywhere
        self.dropped = 0
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: NamelessProxy

    def do_GET(self) -> None:
        with urllib.request.urlopen(self.server.upstream + self.path, timeout=5) as r:
            answer = json.loads(r.read())
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("query", [""])[0]
        if self.server.everywhere or query.startswith("last_over_time"):
            for series in answer["data"]["result"]:
                if series["metric"].pop("__name__", None) is not None:
                    self.server.dropped += 1
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.integration
@pytest.mark.parametrize("everywhere", [False, True], ids=["from-last_over_time", "from-every-answer"])
def test_a_store_that_drops_the_metric_name_gives_the_same_counts(
    exporter: LayoutExporter, prometheus: PrometheusProcess, provider_for: Callable[..., PrometheusMetrics],
    everywhere: bool,
) -> None:
    q = MetricsQuery(NS, ("nameless",), ("v1", "v2"))
    exporter.add("nameless", "v1", [3.0, 30.0, 300.0] * 20)  # before the window: the baselines matter
    exporter.add("nameless", "v2", [40.0] * 7, code="503")
    t0 = scrape_after(prometheus, exporter.target, time.time())
    exporter.add("nameless", "v1", [3.0, 70.0] * 4)
    exporter.add("nameless", "v2", [40.0] * 3, code="503")
    exporter.add("nameless", "v2", [900.0])
    t1 = scrape_after(prometheus, exporter.target, time.time())
    proxy = NamelessProxy(prometheus.url, everywhere)
    try:
        through_proxy = provider_for(url=proxy.url).window(q, t0, t1)
    finally:
        proxy.shutdown()
        proxy.server_close()
    direct = provider_for().window(q, t0, t1)
    assert proxy.dropped > 0  # the proxy did drop names
    assert numbers(through_proxy) == numbers(direct)
    assert through_proxy.of("nameless", "v1", N).requests == 8  # not 68: the baselines were found
    assert through_proxy.of("nameless", "v2", N) == VersionCounts(
        4, 3, tuple(3 if b == 50 else 1 if b == 1000 else 0 for b in ISTIO_BUCKETS_MS))


# ---------------------------------------------------------------------------------------------------
# Versions with different bucket layouts


STABLE_LAYOUT = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, math.inf)
CANARY_LAYOUT = (10.0, 50.0, 100.0, 1000.0, 5000.0, math.inf)
COMMON = (10.0, 50.0, 100.0, 1000.0, math.inf)


def on_common_edges(latencies: list[float]) -> tuple[int, ...]:
    out = [0] * N
    for ms in latencies:
        out[ISTIO_BUCKETS_MS.index(next(e for e in COMMON if ms <= e))] += 1
    return tuple(out)


@pytest.mark.integration
def test_versions_with_different_bucket_layouts_are_judged_on_their_common_edges(
    exporter: LayoutExporter, prometheus: PrometheusProcess, provider_for: Callable[..., PrometheusMetrics]
) -> None:
    exporter.layouts.update({"v1": STABLE_LAYOUT, "v2": CANARY_LAYOUT})
    q = MetricsQuery(NS, ("layouts",), ("v1", "v2"))
    stable = [3.0, 8.0, 20.0, 45.0, 80.0, 200.0, 400.0, 2000.0] * 30
    canary = [4.0, 9.0, 30.0, 45.0, 90.0, 600.0, 3000.0, 7000.0] * 10
    exporter.add("layouts", "v1", [1.0] * 40)
    t0 = scrape_after(prometheus, exporter.target, time.time())
    exporter.add("layouts", "v1", stable)
    exporter.add("layouts", "v2", canary)
    t1 = scrape_after(prometheus, exporter.target, time.time())
    window = provider_for().window(q, t0, t1)

    assert window.bucket_edges == {"layouts": COMMON}
    assert window.of("layouts", "v1", N) == VersionCounts(len(stable), 0, on_common_edges(stable))
    assert window.of("layouts", "v2", N) == VersionCounts(len(canary), 0, on_common_edges(canary))
    observation = {"layouts": interval_of(window, "layouts", "v1", "v2", t=60.0, weight=25.0)}
    for judge_name in ("sequential", "kayenta", "threshold"):
        judge = make_judge(AnalysisConfig(judge=judge_name, tail_threshold_ms=250.0, min_canary_requests=10))
        _, decision = judge.update(judge.initial_state(services=["layouts"]), observation)
        assert decision.verdict is not Verdict.ERROR, (judge_name, decision.reason)
