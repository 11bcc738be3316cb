"""The local business-metrics source: per-process counter differences of master-search's own /metrics."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from analysis.abtest import PerUser
from analysis.observations import MetricsQuery
from controller.adapters.local.business import LocalBusinessMetrics, parse_business
from controller.adapters.prometheus.business import PrometheusBusinessMetrics
from controller.adapters.prometheus.client import CustomValue, CustomWindow
from controller.ports import BusinessQuery, MetricsUnavailable
from tests.support.paths import REPO

QUERY = BusinessQuery("local", "master-search", ("v1", "v2"), "click-through", "proportion")


def exposition(version: str, impressions: float, clicks: float, assigned: float = 0.0) -> str:
    labels = f'service="master-search",version="{version}"'
    return (f"# TYPE searchstack_impressions counter\nsearchstack_impressions_total{{{labels}}} {impressions}\n"
            f"# TYPE searchstack_assignments counter\nsearchstack_assignments_total{{{labels}}} {assigned}\n"
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
    parsed = parse_business(exposition("v2", 10, 3), "master-search")
    assert list(parsed) == ["v2"] and parsed["v2"][:5] == (10.0, 3.0, 0.0, 0.0, 0.0)
    assert all(math.isnan(x) for x in parsed["v2"][5:])  # no per-user counters exported: none, not zeros
    assert parse_business(exposition("v2", 10, 3), "ml-infer") == {}


def user_sums(version: str, users: float, imp_sq: float, clk_sq: float, clk_imp: float) -> str:
    labels = f'service="master-search",version="{version}"'
    return "".join(f"# TYPE {name} counter\n{name}_total{{{labels}}} {value}\n" for name, value in (
        ("searchstack_user_units", users), ("searchstack_user_impressions_squares", imp_sq),
        ("searchstack_user_clicks_squares", clk_sq), ("searchstack_user_clicks_impressions", clk_imp)))


def test_windows_carry_the_per_user_sums_of_clicks_and_impressions() -> None:
    """Two users: 3 impressions and 1 click, then 2 impressions and 2 clicks: (Y, N) = (1, 3), (2, 2)."""
    before = exposition("v2", 0, 0) + user_sums("v2", 0, 0, 0, 0)
    after = exposition("v2", 5, 3) + user_sums("v2", 2, 3 * 3 + 2 * 2, 1 + 2 * 2, 1 * 3 + 2 * 2)
    texts = {"v2": before}
    procs = Processes()
    procs.counters["b:2"] = ("v2", 0, 0)
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, text=texts["v2"])))
    source = LocalBusinessMetrics(procs.list, client=client)
    source.prime("master-search")
    texts["v2"] = after
    counts = source.business(QUERY, 0, 10)["v2"]
    assert (counts.count, counts.total) == (5, 3)
    assert counts.per_user == PerUser(users=2, yy=5.0, nn=13.0, yn=7.0)
    texts["v2"] = exposition("v2", 9, 3)  # a stack that exports no per-user sums: none, so unit: user says so
    assert source.business(QUERY, 10, 20)["v2"].per_user is None


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
    with pytest.raises(MetricsUnavailable, match=r"'click-through\.squares' is not a configured custom metric"):
        PrometheusBusinessMetrics(fake).business(
            BusinessQuery("local", "master-search", ("v1", "v2"), "click-through", "mean"), 0, 60)


class NamedCustom:
    """Custom metrics by name: {name: {(service, version): CustomValue}}; an unknown name is a KeyError."""

    def __init__(self, metrics: dict[str, dict[tuple[str, str], CustomValue]]) -> None:
        self.metrics = metrics

    def custom(self, name: str, query: MetricsQuery, start: float, end: float) -> CustomWindow:
        return CustomWindow(name, start, end, self.metrics[name])


def test_prometheus_business_reads_the_per_user_sums_when_configured() -> None:
    from controller.adapters.prometheus.business import USER_SUMS, user_sums_metric_config

    config = user_sums_metric_config("click-through", *USER_SUMS)
    assert sorted(config) == ["click-through.user-cross", "click-through.user-squares"]
    assert config["click-through.user-cross"]["denominator"].startswith("searchstack_user_units_total{")
    pair = {("master-search", "v1"): CustomValue(12.0, 100.0), ("master-search", "v2"): CustomValue(19.0, 98.0)}
    plain = PrometheusBusinessMetrics(NamedCustom({"click-through": pair})).business(QUERY, 0, 60)
    assert all(c.per_user is None for c in plain.values())  # not configured: none (unit: user will say so)
    with_sums = PrometheusBusinessMetrics(NamedCustom({
        "click-through": pair,
        "click-through.user-squares": {("master-search", "v1"): CustomValue(30.0, 400.0)},
        "click-through.user-cross": {("master-search", "v1"): CustomValue(90.0, 25.0)},
    })).business(QUERY, 0, 60)
    assert with_sums["v1"].per_user == PerUser(users=25, yy=30.0, nn=400.0, yn=90.0)
    assert with_sums["v2"].per_user is None  # no series for v2 yet


def test_the_controller_reads_the_search_stacks_per_user_sums_by_default() -> None:
    from controller.cli.cluster import _controller_parser, prometheus_config

    default = prometheus_config(_controller_parser().parse_args([]))["custom_metrics"]
    assert "searchstack_user_clicks_squares_total" in default["click-through.user-squares"]["numerator"]
    own = _controller_parser().parse_args(["--business-metric-numerator", "orders_total{service={service}}"])
    assert "click-through.user-squares" not in prometheus_config(own)["custom_metrics"]
    given = _controller_parser().parse_args(["--business-metric-user-sums", "a_total;b_total;c_total;d_total"])
    assert prometheus_config(given)["custom_metrics"]["click-through.user-cross"] == {
        "kind": "counter_pair", "numerator": "c_total", "denominator": "d_total"}
    with pytest.raises(SystemExit, match="four PromQL templates"):
        prometheus_config(_controller_parser().parse_args(["--business-metric-user-sums", "a;b"]))


# --- a mean metric: value per click ----------------------------------------------------------------------

MEAN = BusinessQuery("local", "master-search", ("v1", "v2"), "click-value", "mean")


def test_the_real_master_search_counts_click_values_for_the_local_mean_source() -> None:
    """Clicks with values posted to the real master-search app; the local source reads its /metrics and
    gives the window's count, sum and sum of squares per version, as `analysis.abtest` needs them."""
    import asyncio

    from searchstack import corpus
    from searchstack.app import create_app
    from searchstack.settings import Settings

    apps = {"v1:1": create_app(Settings(role="master-search", version="v1")),
            "v2:2": create_app(Settings(role="master-search", version="v2"))}

    async def call(address: str, method: str, path: str, body: Any = None) -> httpx.Response:
        transport = httpx.ASGITransport(app=apps[address])
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{address}") as client:
            return await client.request(method, path, json=body)

    def handle(request: httpx.Request) -> httpx.Response:
        answer = asyncio.run(call(request.url.netloc.decode(), "GET", "/metrics"))
        return httpx.Response(answer.status_code, text=answer.text)

    source = LocalBusinessMetrics(lambda service: [("v1", "v1:1"), ("v2", "v2:2")],
                                  client=httpx.Client(transport=httpx.MockTransport(handle)))
    source.prime("master-search")
    doc = corpus.CORPUS.doc_ids[0]
    values = {"v1": [2.5, 0.0, 4.0], "v2": [10.0, 30.0]}
    for version, vs in values.items():
        address = "v1:1" if version == "v1" else "v2:2"
        for v in vs:
            answer = asyncio.run(call(address, "POST", "/master-service/click", {"doc_id": doc, "value": v}))
            assert answer.status_code == 200
    refused = asyncio.run(call("v1:1", "POST", "/master-service/click", {"doc_id": doc, "value": -1}))
    assert refused.status_code == 422
    counts = source.business(MEAN, 0, 10)
    for version, vs in values.items():
        c = counts[version]
        assert (c.count, c.total, c.squares) == (len(vs), pytest.approx(sum(vs)),
                                                  pytest.approx(sum(v * v for v in vs)))
        c.validate("mean", version)
    clicks = source.business(QUERY, 10, 20)  # the same counters as a proportion: no new impressions
    assert {v: (c.count, c.total) for v, c in clicks.items()} == {"v1": (0, 0), "v2": (0, 0)}


class PairSource:
    """A custom-metric source with fixed counter-pair increases per metric name."""

    def __init__(self, windows: dict[str, dict[str, tuple[float, float]]]) -> None:
        self.windows = windows
        self.asked: list[str] = []

    def custom(self, name: str, query: MetricsQuery, start: float, end: float) -> CustomWindow:
        self.asked.append(name)
        if name not in self.windows:
            raise KeyError(name)
        values = {("master-search", v): CustomValue(n, d) for v, (n, d) in self.windows[name].items()}
        return CustomWindow(name, start, end, values)


def test_prometheus_mean_metric_reads_sum_and_squares_counter_pairs() -> None:
    from controller.adapters.prometheus.business import CLICK_VALUE, mean_metric_config

    source = PairSource({"click-value": {"v1": (42.0, 10.0), "v2": (90.0, 12.0)},
                         "click-value.squares": {"v1": (300.0, 10.0), "v2": (41.0, 12.0)}})
    counts = PrometheusBusinessMetrics(source).business(MEAN, 0, 60)
    assert source.asked == ["click-value", "click-value.squares", "click-value.user-squares",
                            "click-value.user-cross", "click-value.units"]
    assert (counts["v1"].count, counts["v1"].total, counts["v1"].squares) == (10, 42.0, 300.0)
    # 41 < 90^2 / 12: counters differenced apart can round into the impossible; it is lifted to the bound.
    assert counts["v2"].squares == pytest.approx(90.0 ** 2 / 12)
    for c in counts.values():
        c.validate("mean", "counts")
    config = mean_metric_config("click-value", *CLICK_VALUE)
    assert config["click-value"] == {"kind": "counter_pair", "numerator": CLICK_VALUE[0], "denominator": CLICK_VALUE[2]}
    assert config["click-value.squares"]["numerator"].startswith("searchstack_click_value_squares_total{")
    from controller.adapters.prometheus.client import PrometheusConfig, expand_template
    parsed = PrometheusConfig.from_dict({"url": "http://prometheus:9090", "custom_metrics": config}).custom_metrics
    metric = parsed["click-value.squares"]
    query = MetricsQuery(namespace="search", services=("master-search",), versions=("v1", "v2"))
    assert expand_template(metric.numerator, query, PrometheusConfig.from_dict({"url": "http://p"}).namespace_label,
                           metric.service_label, metric.version_label, 30.0, ("master-search", "v2")) == (
        'searchstack_click_value_squares_total{namespace="search",service="master-search",version="v2"}')


# --- the shipped manifests: Prometheus scrapes the counters ----------------------------------------------


def test_every_search_stack_pod_is_annotated_for_the_scrape_of_its_metrics_port() -> None:

    import yaml

    from searchstack.settings import ROLES
    path = REPO / "manifests" / "search-stack" / "deployments.yaml"
    deployments = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Deployment"]
    assert {d["metadata"]["labels"]["app"] for d in deployments} == set(ROLES)
    for d in deployments:
        template = d["spec"]["template"]
        notes = template["metadata"]["annotations"]
        port = next(p["containerPort"] for c in template["spec"]["containers"] for p in c["ports"]
                    if p["name"] == "http")
        scrape = {k: v for k, v in notes.items() if k.startswith("prometheus.io/")}
        assert scrape == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                          "prometheus.io/path": "/metrics"}, d["metadata"]["name"]


def test_assigned_users_are_the_units_of_the_sample_ratio_check() -> None:
    from searchstack.app import has_cookie

    assert has_cookie("theme=dark; ab=v2", "ab") and has_cookie("ab=", "ab")
    assert not has_cookie(None, "ab") and not has_cookie("xab=v2; abc=1", "ab")
    texts = {"a:1": exposition("v1", 100, 10, assigned=30), "b:2": exposition("v2", 90, 12, assigned=25)}
    source = LocalBusinessMetrics(lambda service: [("v1", "a:1"), ("v2", "b:2")], client=httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, text=texts[request.url.netloc.decode()]))))
    source.prime("master-search")
    texts = {"a:1": exposition("v1", 160, 16, assigned=41), "b:2": exposition("v2", 150, 20, assigned=37)}
    counts = source.business(QUERY, 0, 10)
    assert {v: (c.count, c.total, c.units) for v, c in counts.items()} == {"v1": (60, 6, 11), "v2": (60, 8, 12)}


def test_prometheus_units_come_from_an_optional_units_metric() -> None:
    from controller.adapters.prometheus.business import ASSIGNMENTS, units_metric_config

    windows = {"click-through": {"v1": (12.0, 100.0), "v2": (19.0, 98.0)}}
    plain = PrometheusBusinessMetrics(PairSource(windows)).business(QUERY, 0, 60)
    assert {c.units for c in plain.values()} == {None}  # not configured: no SRM evidence, no error
    source = PairSource({**windows, "click-through.units": {"v1": (31.0, 100.0), "v2": (29.0, 98.0)}})
    counts = PrometheusBusinessMetrics(source).business(QUERY, 0, 60)
    assert {v: (c.total, c.count, c.units) for v, c in counts.items()} == {"v1": (12, 100, 31), "v2": (19, 98, 29)}
    entry = units_metric_config("click-through", *ASSIGNMENTS)["click-through.units"]
    assert entry["numerator"].startswith("searchstack_assignments_total{") and entry["kind"] == "counter_pair"
