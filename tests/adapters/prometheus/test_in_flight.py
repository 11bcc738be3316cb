"""Requests in flight per subset from the sidecars' gauges, read from a real Prometheus scraping a test exporter.

The exporter serves `envoy_cluster_upstream_rq_active` under Istio's cluster names, as several sidecars would
(`pod` tells them apart), with values the test sets: the count must be the sum of exactly the asked subsets'
clusters, on any port and cluster domain, and nothing of another subset, namespace, service or the inbound side.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from controller.adapters.prometheus.client import PrometheusConfig, PrometheusMetrics
from controller.adapters.prometheus.in_flight import ACTIVE_METRIC, PrometheusInFlight, in_flight_query
from controller.adapters.prometheus.server import PrometheusProcess
from controller.ports import TemporaryError
from tests.support.paths import REPO
from tests.support.scrapes import scrape_after
from tests.support.tools import require_tool

pytestmark = pytest.mark.timeout(90)

CANARY = "outbound|8000|canary|ml-infer.shop.svc.cluster.local"
GAUGES = {
    ("gateway", CANARY): 2.0,
    ("ml-search-a", CANARY): 1.0,
    ("ml-search-b", "outbound|9090|canary|ml-infer.shop.svc.corp.example"): 4.0,  # another port and domain
    ("ml-search-a", "outbound|8000|stable|ml-infer.shop.svc.cluster.local"): 7.0,
    ("ml-search-a", "outbound|8000|canary|ml-infer.other.svc.cluster.local"): 5.0,  # another namespace
    ("ml-search-a", "outbound|8000|canary|ml-infer-v2.shop.svc.cluster.local"): 6.0,  # a longer service name
    ("ml-infer-a", "inbound|8000||"): 9.0,  # the pod's own side: not the callers' count
}


class GaugeExporter:
    """`envoy_cluster_upstream_rq_active` per (pod, cluster_name), values set by the test."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[tuple[str, str], float] = dict(GAUGES)
        self.registry = CollectorRegistry()
        self.registry.register(self)  # type: ignore[arg-type]  # a duck-typed collector
        self.server: Any = None
        self.port = 0

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("envoy_cluster_upstream_rq_active", "Requests in flight.",
                                  labels=["pod", "cluster_name"])
        with self.lock:
            for (pod, cluster), value in self.values.items():
                gauge.add_metric([pod, cluster], value)
        yield gauge

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, pod: str, cluster: str, value: float) -> None:
        with self.lock:
            self.values[(pod, cluster)] = value


@pytest.fixture(scope="module")
def exporter() -> Iterator[GaugeExporter]:
    e = GaugeExporter()
    e.server, _ = start_http_server(0, addr="127.0.0.1", registry=e.registry)
    e.port = e.server.server_port
    yield e
    e.server.shutdown()
    e.server.server_close()


@pytest.fixture(scope="module")
def prometheus(exporter: GaugeExporter) -> Iterator[PrometheusProcess]:
    require_tool("prometheus", install="apt-get install --no-install-recommends prometheus")
    with PrometheusProcess([exporter.target]) as process:
        yield process


@pytest.fixture
def counter(prometheus: PrometheusProcess) -> Iterator[PrometheusInFlight]:
    provider = PrometheusMetrics(PrometheusConfig(url=prometheus.url, timeout_seconds=5, retries=0))
    yield PrometheusInFlight(provider, time.time)
    provider.close()


def test_names_are_escaped_in_the_query() -> None:
    query = in_flight_query('sh"op', [("ml.infer", "c|n"), ("ml.infer", "c|n")])
    assert query == ('sum(envoy_cluster_upstream_rq_active{cluster_name=~'
                     '"outbound\\\\|[0-9]+\\\\|c\\\\|n\\\\|ml\\\\.infer\\\\.sh\\"op\\\\.svc\\\\..+"})')
    with pytest.raises(ValueError, match="no subsets"):
        in_flight_query("shop", [])


@pytest.mark.integration
def test_the_count_is_the_sum_of_the_asked_subsets_clusters_only(
        exporter: GaugeExporter, prometheus: PrometheusProcess, counter: PrometheusInFlight) -> None:
    scrape_after(prometheus, exporter.target)
    assert counter.requests_in_flight("shop", [("ml-infer", "canary")]) == 2 + 1 + 4
    assert counter.requests_in_flight("shop", [("ml-infer", "stable")]) == 7
    assert counter.requests_in_flight("shop", [("ml-infer", "stable"), ("ml-infer", "canary")]) == 14
    assert counter.requests_in_flight("other", [("ml-infer", "canary")]) == 5
    # The pattern's dot is a literal dot: "c.nary" is not "canary".
    no_series = re.escape("no envoy_cluster_upstream_rq_active of ml-infer/c.nary in shop")
    with pytest.raises(TemporaryError, match=no_series):
        counter.requests_in_flight("shop", [("ml-infer", "c.nary")])

    for pod, cluster in [("gateway", CANARY), ("ml-search-a", CANARY)]:
        exporter.set(pod, cluster, 0.0)
    scrape_after(prometheus, exporter.target)
    assert counter.requests_in_flight("shop", [("ml-infer", "canary")]) == 4
    exporter.set("ml-search-b", "outbound|9090|canary|ml-infer.shop.svc.corp.example", 0.0)
    scrape_after(prometheus, exporter.target)
    assert counter.requests_in_flight("shop", [("ml-infer", "canary")]) == 0  # none in flight is a count
    exporter.set("gateway", CANARY, float("nan"))  # a gauge gone wrong: no count, never a crash
    scrape_after(prometheus, exporter.target)
    with pytest.raises(TemporaryError, match="answered nan"):
        counter.requests_in_flight("shop", [("ml-infer", "canary")])


def test_every_search_stack_sidecar_keeps_the_gauge_the_count_reads() -> None:
    """The shipped Deployments ask Istio for the gauge by a suffix of its Envoy name, which Istio exports as
    ACTIVE_METRIC (Envoy's `cluster.<name>.<stat>` becomes `envoy_cluster_<stat>{cluster_name="<name>"}`)."""
    path = REPO / "manifests" / "search-stack" / "deployments.yaml"
    deployments = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Deployment"]
    assert len(deployments) == 5
    stat = "cluster.outbound|8000|canary|ml-infer.search.svc.cluster.local.upstream_rq_active"
    for d in deployments:
        config = yaml.safe_load(d["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"])
        suffixes = config["proxyStatsMatcher"]["inclusionSuffixes"]
        assert set(config) == {"proxyStatsMatcher"} and any(stat.endswith(s) for s in suffixes)
        assert "envoy_cluster_" + next(s for s in suffixes if stat.endswith(s)) == ACTIVE_METRIC


def test_a_prometheus_that_does_not_answer_is_an_unknown_count() -> None:
    provider = PrometheusMetrics(PrometheusConfig(url="http://127.0.0.1:9", timeout_seconds=1, retries=0))
    try:
        with pytest.raises(TemporaryError, match="requests in flight"):
            PrometheusInFlight(provider, time.time).requests_in_flight("shop", [("ml-infer", "canary")])
    finally:
        provider.close()
