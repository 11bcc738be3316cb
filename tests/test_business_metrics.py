"""The local business-metrics source: per-process counter differences of master-search's own /metrics."""

from __future__ import annotations

import httpx
import pytest

from analysis.observations import MetricsQuery
from analysis.prometheus import CustomValue, CustomWindow
from controller.business import BusinessQuery
from controller.local.business_metrics import LocalBusinessMetrics, parse_business
from controller.ports import MetricsUnavailable
from controller.prometheus_business import PrometheusBusinessMetrics

QUERY = BusinessQuery("local", "master-search", ("v1", "v2"), "click-through", "proportion")


def exposition(version: str, impressions: float, clicks: float) -> str:
    labels = f'service="master-search",version="{version}"'
    return (f"# TYPE searchstack_impressions counter\nsearchstack_impressions_total{{{labels}}} {impressions}\n"
            f"# TYPE searchstack_clicks counter\nsearchstack_clicks_total{{{labels}}} {clicks}\n"
            f'# TYPE other counter\nother_total{{service="ml-infer",version="{version}"}} 99\n')


class Processes:
    """Fake master-search processes: address -> (version, impressions, clicks), served over MockTransport."""

    def __init__(self) -> None:
        self.counters: dict[str, tuple[str, float, float]] = {}
        self.down: set[str] = set()

    def list(self, service: str) -> list[tuple[str, str]]:
        assert service == "master-search"
        return [(v, a) for a, (v, _, _) in self.counters.items()]

    def handle(self, request: httpx.Request) -> httpx.Response:
        address = request.url.netloc.decode()
        if address in self.down:
            raise httpx.ConnectError("refused", request=request)
        version, imp, clk = self.counters[address]
        return httpx.Response(200, text=exposition(version, imp, clk))


@pytest.fixture
def world() -> tuple[Processes, LocalBusinessMetrics]:
    procs = Processes()
    source = LocalBusinessMetrics(procs.list, client=httpx.Client(transport=httpx.MockTransport(procs.handle)))
    return procs, source


def test_parse_business_reads_only_the_service_counters() -> None:
    assert parse_business(exposition("v2", 10, 3), "master-search") == {"v2": (10.0, 3.0)}
    assert parse_business(exposition("v2", 10, 3), "ml-infer") == {}


def test_windows_are_differences_per_process_with_new_processes_and_resets(
        world: tuple[Processes, LocalBusinessMetrics]) -> None:
    procs, source = world
    procs.counters["a:1"] = ("v1", 100, 10)
    source.prime("master-search")
    procs.counters["a:1"] = ("v1", 150, 14)
    procs.counters["b:2"] = ("v2", 40, 6)  # started after the prime: all of it is in this window
    first = source.business(QUERY, 0, 10)
    assert (first["v1"].count, first["v1"].total) == (50, 4)
    assert (first["v2"].count, first["v2"].total) == (40, 6)
    procs.counters["b:2"] = ("v2", 5, 1)  # restarted on the same address: counts from zero again
    second = source.business(QUERY, 10, 20)
    assert (second["v1"].count, second["v2"].count, second["v2"].total) == (0, 5, 1)


def test_unprimed_source_takes_a_baseline_first_and_failures_are_metrics_unavailable(
        world: tuple[Processes, LocalBusinessMetrics]) -> None:
    procs, source = world
    procs.counters["a:1"] = ("v1", 1000, 100)
    assert source.business(QUERY, 0, 10) == {}  # a restarted controller never counts a whole history
    procs.down.add("a:1")
    with pytest.raises(MetricsUnavailable, match="a:1"):
        source.business(QUERY, 10, 20)


# --- the Prometheus business source -------------------------------------------------------------------

class FakeCustom:
    def __init__(self, values: dict[tuple[str, str], CustomValue]) -> None:
        self.values = values
        self.asked: list[tuple[str, MetricsQuery]] = []

    def custom(self, name: str, query: MetricsQuery, start: float, end: float) -> CustomWindow:
        self.asked.append((name, query))
        if name != "click-through":
            raise KeyError(name)
        return CustomWindow(name, start, end, self.values)


def test_prometheus_business_reads_a_counter_pair_custom_metric() -> None:
    fake = FakeCustom({("master-search", "v1"): CustomValue(12.0, 100.0),
                       ("master-search", "v2"): CustomValue(19.0, 98.0)})
    counts = PrometheusBusinessMetrics(fake).business(QUERY, 0, 60)
    assert {v: (c.total, c.count) for v, c in counts.items()} == {"v1": (12, 100), "v2": (19, 98)}
    assert fake.asked[0][1].services == ("master-search",) and fake.asked[0][1].versions == ("v1", "v2")
    with pytest.raises(MetricsUnavailable, match="not a configured custom metric"):
        PrometheusBusinessMetrics(fake).business(
            BusinessQuery("local", "master-search", ("v1", "v2"), "revenue", "proportion"), 0, 60)
    with pytest.raises(MetricsUnavailable, match="only proportion"):
        PrometheusBusinessMetrics(fake).business(
            BusinessQuery("local", "master-search", ("v1", "v2"), "click-through", "mean"), 0, 60)
