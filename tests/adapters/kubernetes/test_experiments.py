"""A/B experiments through the Kubernetes controller: the business source it is given, through the real loop.

The controller runs in-process on a fake clock against `tests.support.kmock_server` (as in
tests/adapters/kubernetes/test_releases.py). Its business source is the real `PrometheusBusinessMetrics`, over a
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

from analysis.abtest import PrimaryCounts
from analysis.observations import MetricsQuery
from controller.adapters.kubernetes.client import DESTINATION_RULES, KubeApi
from controller.adapters.kubernetes.routing import IstioRouter
from controller.adapters.kubernetes.running import Controller, ControllerConfig
from controller.adapters.kubernetes.workloads import WeightBox
from controller.adapters.prometheus.business import PrometheusBusinessMetrics
from controller.adapters.prometheus.client import CustomValue, CustomWindow, PrometheusConfig, expand_template
from controller.cli.cluster import _controller_parser, business_source, prometheus_config
from controller.core.status import Phase
from controller.ports import BusinessQuery, MetricsUnavailable
from tests.support.abn import users_counts
from tests.support.kmock_server import RunningEmulator
from tests.support.kube_world import NAMESPACE, SERVICES, KubeWorld, cluster_world

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
    configured: tuple[str, ...] = ("click-through", "click-through.units", "click-through.user-squares",
                                   "click-through.user-cross")
    seed: int = 11
    asked: list[str] = field(default_factory=list)
    drawn: dict[tuple[float, float], dict[str, PrimaryCounts]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def custom(self, name: str, query: MetricsQuery, start: float, end: float) -> CustomWindow:
        self.asked.append(name)
        if self.down:
            raise MetricsUnavailable("connection failed: connection refused")
        if name not in self.configured:
            raise KeyError(f"no custom metric {name!r}; configured: {sorted(self.configured)}")
        counts = self.window(query, start, end)  # one draw per window: every counter pair tells of the same users
        values = {(query.services[0], version): self.value(name, c) for version, c in counts.items()}
        return CustomWindow(name=name, start=start, end=end, values=values)

    def window(self, query: MetricsQuery, start: float, end: float) -> dict[str, PrimaryCounts]:
        if (start, end) not in self.drawn:
            plan = IstioRouter(self.api, query.namespace, ()).in_effect()
            weight = 0 if plan is None else plan.canary_weight
            total = int(self.rng.poisson(self.rps * (end - start)))
            treated = int(self.rng.binomial(total, weight / 100))
            self.drawn[(start, end)] = {  # new users of about 5 searches each a window, with their clicks
                version: users_counts(self.rng, n, self.click_probability.get(version, 0.1))
                for version, n in ((query.versions[0], total - treated), (query.versions[1], treated))}
        return self.drawn[(start, end)]

    @staticmethod
    def value(name: str, c: PrimaryCounts) -> CustomValue:
        """The counter pair `name` of one version's window (its clicks of impressions; the users assigned for
        `<metric>.units`; the per-user sums for `.user-squares` and `.user-cross`)."""
        assert c.per_user is not None and c.units is not None
        if name.endswith(".units"):
            return CustomValue(float(c.units), float(c.units))
        if name.endswith(".user-squares"):
            return CustomValue(c.per_user.yy, c.per_user.nn)
        if name.endswith(".user-cross"):
            return CustomValue(c.per_user.yn, float(c.per_user.users))
        return CustomValue(float(c.total), float(c.count))


@pytest.fixture
def world(emulator: RunningEmulator) -> KubeWorld:
    w = cluster_world(emulator, hpa_on=())  # 4 pods per service, new pods ready after 2-10 s
    return w


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
    assert set(source.asked) == set(source.configured)  # the users' sums too: the experiment judged users
    assert result["unit"] == "user" and min(result["users"].values()) >= 100
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    assert plan is not None and plan.experiment is None and {s.stable for s in plan.services} == {"v2"}
    assert "ExperimentEnded" in [e["reason"] for e in world.objects("events")]
    world.assert_valid_writes()


def test_each_user_stays_on_one_entry_replica_while_the_experiment_runs_and_the_users_policy_stays(
        world: KubeWorld) -> None:
    """The entry's subsets balance by the user header during the experiment only; an adopted DestinationRule's own
    traffic policy stays in effect throughout (the affinity is per subset, so it overrides only the balancing)."""
    locality = {"enabled": True, "failoverPriority": ["topology.kubernetes.io/zone"]}
    pool = {"connectionPool": {"http": {"http1MaxPendingRequests": 64}},
            "loadBalancer": {"simple": "LEAST_REQUEST", "localityLbSetting": locality}}
    world.api.create(DESTINATION_RULES, NAMESPACE, {
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "master-search", "namespace": NAMESPACE},
        "spec": {"host": "master-search", "trafficPolicy": pool,
                 "subsets": [{"name": "stable", "labels": {"version": "v1"}}]}})
    source = CounterPairs(world.api, {"v1": 0.10, "v2": 0.16})
    start_experiment(world)
    controller = ab_controller(world, source)
    assert world.drive(controller, until=Phase.PROGRESSING).phase is Phase.PROGRESSING

    def entry_rule() -> dict[str, Any]:
        return world.api.get(DESTINATION_RULES, NAMESPACE, "master-search")["spec"]

    running = entry_rule()
    # The rule's own locality setting goes on applying: Istio replaces its loadBalancer with a subset's whole.
    affinity = {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user-id"}, "localityLbSetting": locality}}
    assert {s["name"]: s.get("trafficPolicy") for s in running["subsets"]} == {
        "stable": affinity, "canary": affinity, "v2": affinity}
    assert running["trafficPolicy"] == pool
    world.assert_valid_writes()
    assert world.drive(controller, rounds=600).phase is Phase.SUCCEEDED
    ended = entry_rule()
    assert all("trafficPolicy" not in s for s in ended["subsets"]) and ended["trafficPolicy"] == pool
    world.assert_valid_writes()


@pytest.mark.parametrize("missing, says", [
    # The sample-ratio check counts users (the default): without the `.units` metric it is not silently off.
    (".units", "has no number of users assigned"),
    # Users are the unit (the default): without their sums the experiment is not judged on impressions instead.
    (".user-squares", "has no per-user sums"),
])
def test_missing_user_counts_stop_the_experiment_with_what_to_configure(world: KubeWorld, missing: str,
                                                                        says: str) -> None:
    configured = tuple(n for n in CounterPairs.configured if not n.endswith(missing))
    source = CounterPairs(world.api, {"v1": 0.10, "v2": 0.16}, configured=configured)
    start_experiment(world)
    status = world.drive(ab_controller(world, source), rounds=600)
    assert status.phase is Phase.ROLLED_BACK, status.message
    last = status.history[-3:]
    assert [h.verdict for h in last] == ["error"] * 3
    assert all(says in h.reason and ("sampleRatioOn" in h.reason or "unit: sample" in h.reason) for h in last)


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


def test_mean_metric_and_assignment_units_flags() -> None:
    pair = "{namespace={namespace},service={service},version={version}}"
    args = _controller_parser().parse_args([
        "--business-metric", "value-per-click", "--business-metric-numerator", "searchstack_click_value_total" + pair,
        "--business-metric-squares", "searchstack_click_value_squares_total" + pair,
        "--business-metric-denominator", "searchstack_clicks_total" + pair,
        "--business-metric-units", "searchstack_assignments_total" + pair])
    custom = PrometheusConfig.from_dict(prometheus_config(args)).custom_metrics
    # The search stack's value per click: its per-user sums come with it by default.
    assert set(custom) == {"value-per-click", "value-per-click.squares", "value-per-click.units",
                           "value-per-click.user-squares", "value-per-click.user-cross"}
    assert custom["value-per-click.user-squares"].numerator.startswith("searchstack_user_click_value_squares_total")
    assert custom["value-per-click.squares"].numerator.startswith("searchstack_click_value_squares_total")
    assert custom["value-per-click.squares"].denominator == custom["value-per-click"].denominator
    assert custom["value-per-click.units"].numerator.startswith("searchstack_assignments_total")


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


# --- the Istio router's ownership of an experiment's parts (pure merge) ------------------------------------


def _abn_plan() -> Any:
    from controller.core.machine import base_plan
    from controller.core.spec.release import parse_release
    spec = parse_release({"metadata": {"name": "search-v2", "namespace": NAMESPACE}, "spec": {
        "stable": {"version": "v1"}, "canary": {"version": "v2", "services": ["ml-search"]},
        "strategy": {"abTest": {**copy.deepcopy(AB), "variants": [
            {"name": "v1", "weight": 34}, {"name": "v2", "weight": 33}, {"name": "v3", "weight": 33}],
            "cohortHeader": "x-cohort"}}}})
    assert spec.experiment is not None
    return base_plan(spec), spec.experiment.routes


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def test_experiment_parts_merge_into_user_objects_and_leave_without_a_trace() -> None:
    from controller.adapters.istio.experiment import ANNOTATION_EXPERIMENT
    from controller.adapters.istio.render import read_plan, render
    from controller.adapters.kubernetes.routing import ANNOTATION_VARIANT_SUBSETS, merge_owned, owned_projection
    from tests.support.istio_schema import istio_errors
    base, routes = _abn_plan()
    user_rule = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                 "metadata": {"name": "ml-search", "namespace": NAMESPACE, "annotations": {"team": "search"}},
                 "spec": {"host": "ml-search", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
                          "subsets": [{"name": "stable", "labels": {"version": "v1"}},
                                      {"name": "v3", "labels": {"version": "v3"}},  # the user's already
                                      {"name": "debug", "labels": {"version": "dbg"}}]}}
    user_vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "master-search", "namespace": NAMESPACE},
               "spec": {"hosts": ["master-search"], "http": [
                   {"name": "admin", "match": [{"uri": {"prefix": "/admin"}}],
                    "route": [{"destination": {"host": "admin"}}]},
                   {"name": "fallback", "route": [{"destination": {"host": "master-search", "subset": "stable"}}]}]}}
    live = {("DestinationRule", "ml-search"): user_rule, ("VirtualService", "master-search"): user_vs}
    during = {}
    for plan in (base.with_experiment(routes), base.with_experiment(routes)):  # the second write changes nothing
        during = {(o["kind"], o["metadata"]["name"]): merge_owned(o, live.get((o["kind"], o["metadata"]["name"])))
                  for o in render(plan)}
        live = {**live, **during}
    rule, entry = during[("DestinationRule", "ml-search")], during[("VirtualService", "master-search")]
    assert [s["name"] for s in rule["spec"]["subsets"]] == ["stable", "canary", "v2", "v3", "debug"]
    assert rule["metadata"]["annotations"][ANNOTATION_VARIANT_SUBSETS] == "v2"  # v3 was the user's
    assert [r["name"] for r in entry["spec"]["http"]] == [
        "admin", "cohort-v1", "cohort-v2", "cohort-v3", "sticky-v1", "sticky-v2", "sticky-v3", "assign", "fallback"]
    for obj in during.values():
        assert istio_errors(obj, strict=True) == [], obj["metadata"]["name"]
    back = read_plan([owned_projection(o) for o in during.values()])
    assert back is not None and back.experiment == routes
    after = {(o["kind"], o["metadata"]["name"]): merge_owned(o, live[(o["kind"], o["metadata"]["name"])])
             for o in render(base.all_stable())}
    rule, entry = after[("DestinationRule", "ml-search")], after[("VirtualService", "master-search")]
    assert [s["name"] for s in rule["spec"]["subsets"]] == ["stable", "v3", "debug"]
    assert rule["spec"]["trafficPolicy"] == {"tls": {"mode": "ISTIO_MUTUAL"}}
    assert ANNOTATION_VARIANT_SUBSETS not in rule["metadata"]["annotations"]
    assert rule["metadata"]["annotations"]["team"] == "search"
    assert ANNOTATION_EXPERIMENT not in entry["metadata"]["annotations"]
    assert [r["name"] for r in entry["spec"]["http"]] == ["admin", "release-split", "fallback"]
    lane = after[("VirtualService", "ml-search")]
    assert [r["name"] for r in lane["spec"]["http"]] == ["stable-lane"]


def test_a_user_subset_of_a_variants_name_with_other_labels_is_refused() -> None:
    from controller.adapters.istio.render import render
    from controller.adapters.kubernetes.routing import merge_owned
    from controller.ports import PermanentError
    base, routes = _abn_plan()
    desired = _named(render(base.with_experiment(routes)), "DestinationRule", "ml-search")
    live = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "ml-search", "namespace": NAMESPACE},
            "spec": {"host": "ml-search", "subsets": [{"name": "v3", "labels": {"version": "v3-beta"}}]}}
    with pytest.raises(PermanentError, match="subset 'v3' exists with labels"):
        merge_owned(desired, live)


def test_the_experiment_annotation_is_removed_through_the_api(world: KubeWorld) -> None:
    from controller.adapters.istio.experiment import ANNOTATION_EXPERIMENT
    base, routes = _abn_plan()
    router = IstioRouter(world.api, NAMESPACE, SERVICES)
    router.apply(base.with_experiment(routes))
    back = router.in_effect()
    assert back is not None and back.experiment == routes
    router.apply(base.all_stable())
    entry = next(o for o in world.objects("virtualservices") if o["metadata"]["name"] == "master-search")
    assert ANNOTATION_EXPERIMENT not in (entry["metadata"].get("annotations") or {})
    assert [r["name"] for r in entry["spec"]["http"]] == ["release-split"]
    back = router.in_effect()
    assert back is not None and back.experiment is None and back.equivalent(base.all_stable())
    world.assert_valid_writes()


# --- A/B/n through the Kubernetes controller ------------------------------------------------------------------


@dataclass
class ArmCounterPairs(CounterPairs):
    """Impressions per variant by the experiment's weights read back over the API; every queried version."""

    def window(self, query: MetricsQuery, start: float, end: float) -> dict[str, PrimaryCounts]:
        if (start, end) not in self.drawn:
            plan = IstioRouter(self.api, query.namespace, ()).in_effect()
            total = int(self.rng.poisson(self.rps * (end - start)))
            if plan is None or plan.experiment is None:
                split = {plan.service(plan.entry).stable if plan else query.versions[0]: total}
            else:
                drawn = self.rng.multinomial(total, [a.weight / 100 for a in plan.experiment.arms])
                split = {a.version: int(n) for a, n in zip(plan.experiment.arms, drawn, strict=True)}
            self.drawn[(start, end)] = {v: users_counts(self.rng, n, self.click_probability.get(v, 0.1))
                                        for v, n in split.items() if v in query.versions}
        return self.drawn[(start, end)]


def test_an_abn_experiment_runs_on_kubernetes_with_every_variant_deployed_routed_and_retired(
        world: KubeWorld) -> None:
    from tests.support.abn import AbnMetrics

    class ApiMetrics(AbnMetrics):
        def window(self, query: MetricsQuery, start: float, end: float) -> Any:
            self.router = IstioRouter(world.api, query.namespace, ())  # type: ignore[assignment]
            return super().window(query, start, end)

    source = ArmCounterPairs(world.api, {"v1": 0.10, "v2": 0.17, "v3": 0.10}, rps=75.0)
    controller = Controller(world.api, ControllerConfig(identity="replica-a"),
                                   ApiMetrics(None, rps=75.0),  # type: ignore[arg-type]
                                   world.clock, business=PrometheusBusinessMetrics(source))
    variants = [{"name": "v1", "weight": 34}, {"name": "v2", "weight": 33},
                {"name": "v3", "weight": 33, "images": {"ml-search": "registry.example/ml-search:v3"}}]
    start_experiment(world, variants=variants)
    seen: dict[str, Any] = {}

    def progressing() -> Phase:
        status = world.drive(controller, until=Phase.PROGRESSING, rounds=600)
        seen["rules"] = world.objects("destinationrules")
        seen["services"] = world.objects("virtualservices")
        seen["deployments"] = {d["metadata"]["name"]: d for d in world.objects("deployments")}
        return status.phase

    assert progressing() is Phase.PROGRESSING
    rule = next(r for r in seen["rules"] if r["metadata"]["name"] == "ml-search")
    assert {s["name"] for s in rule["spec"]["subsets"]} >= {"stable", "canary", "v2", "v3"}
    entry = next(v for v in seen["services"] if v["metadata"]["name"] == "master-search")
    assert [r["name"] for r in entry["spec"]["http"]][-4:] == ["sticky-v1", "sticky-v2", "sticky-v3", "assign"]
    v3 = seen["deployments"]["ml-search-v3"]
    assert v3["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/ml-search:v3"
    status = world.drive(controller, rounds=600)
    assert status.phase is Phase.SUCCEEDED, status.message
    assert status.experiment is not None and status.experiment["winner"] == "v2"
    assert set(status.experiment["comparisons"]) == {"v2", "v3"}
    deployments = {d["metadata"]["name"]: d for d in world.objects("deployments")}
    assert all(deployments[f"{s}-v3"]["spec"]["replicas"] == 0 for s in SERVICES if f"{s}-v3" in deployments)
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    assert plan is not None and plan.experiment is None and {s.stable for s in plan.services} == {"v2"}
    for obj in world.objects("destinationrules"):
        assert "v3" not in {s["name"] for s in obj["spec"]["subsets"]}, obj["metadata"]["name"]
    world.assert_valid_writes()
