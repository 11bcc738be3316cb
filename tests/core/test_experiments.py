"""A/B experiments: the spec, the rendered routes, and whole experiments ticked with a fake clock and fake ports.

The fake business source draws impressions per variant from the routes in effect (the treatment's share
of the entry traffic) and clicks with a per-version probability, so the experiment machine sees what the
real search stack's counters would say.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest

from analysis.abtest import PrimaryCounts
from analysis.observations import MetricsQuery, WindowCounts
from controller.adapters.istio.render import read_plan, render
from controller.adapters.istio.validate import validate_objects
from controller.core.machine import base_plan
from controller.core.plan import InvalidPlan, RoutingPlan
from controller.core.spec.release import InvalidSpec, parse_release
from controller.core.status import Phase, ReleaseStatus
from controller.ports import BusinessQuery, Metrics, MetricsUnavailable
from controller.reconciler import Ports, Reconciler
from tests.support.abn import AbnMetrics, split_by_plan, users_counts
from tests.support.fakes import FakeRouter, VersionModel
from tests.support.istio_schema import istio_errors
from tests.support.k8s_schema import custom_resource_errors, load_documents
from tests.support.paths import REPO
from tests.support.scenario import SERVICES as SERVICES_OF_RELEASE
from tests.support.scenario import World, release

AB: dict[str, Any] = {
    "variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
    "primaryMetric": {"kind": "proportion", "name": "click-through"},
    "interval": "30s", "minDuration": "2m", "maxDuration": "30m", "minSamples": 1000,
    "cohortHeader": "x-cohort", "onEnd": "promoteWinner",
}


def ab_release(**overrides: Any) -> dict[str, Any]:
    return release(strategy={"abTest": {**copy.deepcopy(AB), **overrides}})


@dataclass
class FakeBusiness:
    """Impressions per version behind the routes in effect; clicks with `click_probability[version]`."""

    router: FakeRouter
    click_probability: Mapping[str, float]
    rps: float = 50.0
    down: bool = False
    seed: int = 11
    queries: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def business(self, query: BusinessQuery, start: float, end: float) -> Mapping[str, PrimaryCounts]:
        self.queries.append((start, end))
        if self.down:
            raise MetricsUnavailable("connection refused")
        plan = self.router.in_effect()
        if plan is None:
            return {}
        total = int(self.rng.poisson(self.rps * (end - start)))
        treated = int(self.rng.binomial(total, plan.canary_weight / 100))
        out = {}
        for version, n in ((query.versions[0], total - treated), (query.versions[1], treated)):
            # New users of 5 results pages each (the sample-ratio check's units), with their per-user sums.
            out[version] = users_counts(self.rng, n, self.click_probability.get(version, 0.1))
        return out


class ABWorld(World):
    def __init__(self, ctr: Mapping[str, float], models: dict[str, VersionModel] | None = None) -> None:
        super().__init__(models=models)
        self.business = FakeBusiness(self.router, ctr)

    def controller(self) -> Reconciler:
        return Reconciler(Ports(self.workloads, self.router, self.metrics, self.clock, self.notifier,
                                business=self.business))


# --- spec ---------------------------------------------------------------------------------------------


def test_ab_test_spec_parses_into_the_experiment() -> None:
    spec = parse_release(ab_release())
    assert spec.experiment is not None
    assert [(a.name, a.version, a.weight) for a in spec.experiment.routes.arms] == [("v1", "v1", 50), ("v2", "v2", 50)]
    assert spec.experiment.config.control == "v1"
    assert spec.experiment.config.min_duration_s == 120 and spec.experiment.config.max_duration_s == 1800
    assert "sampleRatio" not in spec.experiment.config.guardrails.checks
    assert spec.strategy.interval == 30
    # A new version is not judged while it warms up: one interval by default, as a canary's new pods.
    assert spec.experiment.warmup == spec.strategy.warmup == 30 and spec.strategy.first_window_after == 30


@pytest.mark.parametrize(("strategy", "message"), [
    ({"abTest": AB, "canary": {}}, "spec.strategy.abTest: give either strategy.canary or strategy.abTest"),
    ({"abTest": {**AB, "variants": [{"name": "v1", "weight": 50}, {"name": "v3", "weight": 50}]}},
     "spec.strategy.abTest.variants: must include the stable and the new version (v1, v2), not only v1, v3"),
    ({"abTest": {**AB, "variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 60}]}},
     "spec.strategy.abTest.variants: weights sum to 110, not 100"),
    ({"abTest": {**AB, "control": "v2"}}, "spec.strategy.abTest.control: 'v2' is not the stable version 'v1'"),
    ({"abTest": {**AB, "maxDuration": "1m"}}, "spec.strategy.abTest.maxDuration: 60 s is less than minDuration 120 s"),
    ({"abTest": {**AB, "cookieMaxAge": "10m"}}, "spec.strategy.abTest.cookieMaxAge: 600s is shorter than"),
    ({"abTest": {**AB, "onEnd": "flip"}}, "spec.strategy.abTest.onEnd"),
    ({"abTest": {**AB, "zz": 1}}, "spec.strategy.abTest.zz: is not a known field"),
    ({"abTest": {**AB, "maxDuration": "2m", "warmup": "100s"}},
     "spec.strategy.abTest.warmup: 100s leaves no whole interval (30s) before maxDuration (120s)"),
    ({"abTest": {**AB, "userHeader": "X User"}}, "spec.strategy.abTest.userHeader: 'X User' is not a lower-case"),
    ({"abTest": {**AB, "unit": "sample", "userHeader": "x-user-id"}},
     "spec.strategy.abTest.userHeader: only with unit: user (this experiment's unit is sample)"),
    # A variant of weight 0 never gets a user: it could never be judged, and the experiment ended no_difference.
    ({"abTest": {**AB, "variants": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}]}},
     "spec.strategy.abTest.variants[1].weight: 0 gives this variant no users; give it a share of 1-99, or leave the "
     "variant out"),
    ({"abTest": {**AB, "variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50},
                                    {"name": "v3", "weight": 0}]}},
     "spec.strategy.abTest.variants[2].weight: 0 gives this variant no users; give it a share of 1-99, or leave the "
     "variant out"),
])
def test_ab_test_spec_problems_name_their_path(strategy: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_release(release(strategy=strategy))
    assert any(p.startswith(message) for p in info.value.problems), info.value.problems


# --- routes ---------------------------------------------------------------------------------------------


def experiment_objects() -> list[dict[str, Any]]:
    spec = parse_release(ab_release())
    assert spec.experiment is not None
    return render(base_plan(spec).with_experiment(spec.experiment.routes))


def test_rendered_experiment_is_valid_for_istio_and_the_local_router() -> None:
    objects = experiment_objects()
    for obj in objects:
        assert istio_errors(obj, strict=True) == [], obj
    validate_objects(objects)
    entry = next(o for o in objects if o["kind"] == "VirtualService" and o["metadata"]["name"] == "master-search")
    names = [r["name"] for r in entry["spec"]["http"]]
    assert names == ["cohort-v1", "cohort-v2", "sticky-v1", "sticky-v2", "assign"]
    assign = entry["spec"]["http"][-1]["route"]
    assert [(d["destination"]["subset"], d["weight"]) for d in assign] == [("stable", 50), ("v2", 50)]
    assert assign[1]["headers"]["response"]["add"]["set-cookie"].startswith("ab=v2;")
    assert {d["headers"]["request"]["set"]["x-canary-lane"] for d in assign} == {"v1", "v2"}
    lane = next(o for o in objects if o["kind"] == "VirtualService" and o["metadata"]["name"] == "ml-search")
    assert lane["spec"]["http"][0]["match"] == [{"headers": {"x-canary-lane": {"exact": "v2"}}}]
    assert lane["spec"]["http"][0]["route"][0]["destination"]["subset"] == "v2"


def test_each_user_reaches_one_replica_of_the_entry_per_variant() -> None:
    """Per-user sums are kept per master-search process: the entry's subsets (and only the entry's) balance by the
    user header, the one the search stack keys the sums on; `unit: sample` needs no such thing."""
    from searchstack.settings import DEFAULT_USER_HEADER

    def hashing(objects: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
        return {(o["metadata"]["name"], s["name"]): s.get("trafficPolicy")
                for o in objects if o["kind"] == "DestinationRule" for s in o["spec"]["subsets"]}

    by_user = hashing(experiment_objects())
    affinity = {"loadBalancer": {"consistentHash": {"httpHeaderName": DEFAULT_USER_HEADER}}}
    assert {k: v for k, v in by_user.items() if k[0] == "master-search"} == {
        ("master-search", "stable"): affinity, ("master-search", "canary"): affinity,
        ("master-search", "v2"): affinity}
    assert all(v is None for k, v in by_user.items() if k[0] != "master-search")
    spec = parse_release(ab_release(userHeader="x-member"))
    assert spec.experiment is not None and spec.experiment.routes.user_header == "x-member"
    spec = parse_release(ab_release(unit="sample"))
    assert spec.experiment is not None and spec.experiment.routes.user_header is None
    plan = base_plan(spec).with_experiment(spec.experiment.routes)
    assert all(v is None for v in hashing(render(plan)).values())


def test_experiment_routes_read_back_as_the_same_plan() -> None:
    spec = parse_release(ab_release())
    assert spec.experiment is not None
    plan = base_plan(spec).with_experiment(spec.experiment.routes)
    back = read_plan(json.loads(json.dumps(render(plan))))
    assert plan.equivalent(back)
    assert back.experiment is not None and back.experiment.user_header == "x-user-id"
    assert not plan.with_weight(50).equivalent(back)  # a canary split is not the experiment
    edited = json.loads(json.dumps(render(plan)))
    entry = next(o for o in edited if o["metadata"]["name"] == "master-search" and o["kind"] == "VirtualService")
    entry["spec"]["http"][-1]["route"][1]["weight"] = 10
    entry["spec"]["http"][-1]["route"][0]["weight"] = 90
    assert not plan.equivalent(read_plan(edited))  # a hand edit is seen and repaired
    edited = json.loads(json.dumps(render(plan)))
    rule = next(o for o in edited if o["metadata"]["name"] == "master-search" and o["kind"] == "DestinationRule")
    del rule["spec"]["subsets"][0]["trafficPolicy"]
    assert not plan.equivalent(read_plan(edited))  # so is one that takes the user affinity away


def _inner(plan: RoutingPlan) -> list[dict[str, Any]]:
    """Every object of the plan but the entry's VirtualService: what routes a request already inside the stack."""
    return [o for o in render(plan) if not (o["kind"] == "VirtualService" and o["metadata"]["name"] == plan.entry)]


def _entry_routes(plan: RoutingPlan) -> list[tuple[str, list[tuple[str, str]]]]:
    entry = next(o for o in render(plan) if o["kind"] == "VirtualService" and o["metadata"]["name"] == plan.entry)
    return [(r["name"], [(d["destination"]["subset"], d["headers"]["request"]["set"]["x-canary-lane"])
                         for d in r["route"]]) for r in entry["spec"]["http"]]


@pytest.mark.parametrize("release_of", [ab_release, lambda: abn_release()], ids=["ab", "abn"])
def test_an_ending_experiment_sends_new_requests_to_one_variant_and_keeps_every_lane(
        release_of: Callable[[], dict[str, Any]]) -> None:
    """Stage one of a rollback or a promotion: the entry sends every new request, whatever its cookie or cohort,
    to the control or the promoted variant and sets no cookie; the subsets and lane routes stay, so a request
    already on a variant's lane finishes there. Valid for Istio and the local router, and read back as itself."""
    spec = parse_release(release_of())
    assert spec.experiment is not None
    running = base_plan(spec).with_experiment(spec.experiment.routes)
    for variant, lane in (("v1", "v1"), ("v2", "v2")):
        closing = base_plan(spec).with_experiment(spec.experiment.routes.closed_to(variant))
        objects = render(closing)
        for obj in objects:
            assert istio_errors(obj, strict=True) == [], obj
        validate_objects(objects)
        assert _inner(closing) == _inner(running)
        subset = "stable" if variant == "v1" else "v2"
        assert _entry_routes(closing) == [("assign", [(subset, lane)])]
        assert "set-cookie" not in json.dumps(objects)
        assert closing.canary_weight == (0 if variant == "v1" else 100)
        back = read_plan(json.loads(json.dumps(objects)))
        assert closing.equivalent(back) and not running.equivalent(back)
    with pytest.raises(InvalidPlan, match="not one of its variants"):
        spec.experiment.routes.closed_to("v9")


def _stages_after_the_experiment(world: ABWorld) -> list[RoutingPlan]:
    applied = world.router.history
    last = max(i for i, p in enumerate(applied) if p.experiment is not None and p.experiment.closing_to is None)
    return applied[last:]


@pytest.mark.parametrize("ctr, models, ended", [
    ({"v1": 0.10, "v2": 0.16}, None, Phase.SUCCEEDED),
    ({"v1": 0.10, "v2": 0.16}, {"v2": VersionModel(error_rate=0.02)}, Phase.ROLLED_BACK),
])
def test_promotion_and_rollback_of_an_experiment_keep_its_lanes_until_the_cutover(
        ctr: dict[str, float], models: dict[str, VersionModel] | None, ended: Phase) -> None:
    world = ABWorld(ctr, models=models)
    status = world.run(ab_release())
    assert status.phase is ended, status.message
    running, closing, cut = _stages_after_the_experiment(world)[:3]
    assert closing.experiment is not None
    assert closing.experiment.closing_to == ("v2" if ended is Phase.SUCCEEDED else "v1")
    assert _inner(closing) == _inner(running)
    assert cut == (base_plan(parse_release(ab_release())).promoted() if ended is Phase.SUCCEEDED
                   else base_plan(parse_release(ab_release())).all_stable())


# --- whole experiments -------------------------------------------------------------------------------------


# --- whole experiments -------------------------------------------------------------------------------------


def test_a_better_variant_wins_and_is_promoted() -> None:
    world = ABWorld({"v1": 0.10, "v2": 0.16})
    status = world.run(ab_release())
    assert status.phase is Phase.SUCCEEDED, status.message
    result = status.experiment
    assert result is not None and result["winner"] == "v2" and result["decision"] == "winner"
    low, high = result["effect"]["interval"]
    assert 0 < low < 0.06 < high
    assert result["durationSeconds"] >= 120  # not before the minimum duration
    assert min(result["samples"].values()) >= 1000
    applied = world.router.history
    assert any(p.experiment is not None for p in applied)
    assert {s.stable for s in applied[-1].services} == {"v2"}
    primary = status.history[-1].counts["primary"]
    assert primary["decision"] == "winner" and primary["samples"] == result["samples"]
    assert all(c.get("check") != "primary" for c in status.history[-1].checks)  # guardrails only
    assert "ExperimentEnded" in world.notifier.reasons()


def test_the_first_window_opens_after_the_warm_up_or_the_settle_whichever_is_longer() -> None:
    """A just-started version's first seconds (cold caches, JIT, new connections) are not judged: the first
    window opens max(settle, warmup) after the experiment's routes are read back in effect."""
    opened: dict[str | None, float] = {}
    for warmup in ("0s", None, "50s"):
        world = ABWorld({"v1": 0.10, "v2": 0.16})
        status = world.run(ab_release() if warmup is None else ab_release(warmup=warmup))
        assert status.phase is Phase.SUCCEEDED, status.message
        opened[warmup] = world.business.queries[0][0] - (status.step_started_at or 0)
    assert opened[None] - opened["0s"] == pytest.approx(30 - 7.5)  # the default: one interval, not settle
    assert opened["50s"] - opened[None] == pytest.approx(20)


def test_a_variant_with_four_times_the_errors_is_stopped_by_the_guardrail() -> None:
    world = ABWorld({"v1": 0.10, "v2": 0.16}, models={"v2": VersionModel(error_rate=0.02)})
    status = world.run(ab_release())
    assert status.phase is Phase.ROLLED_BACK, status.message
    assert status.experiment is not None
    assert status.experiment["decision"] == "harmful" and status.experiment["stoppedBy"] == "guardrail"
    assert "guardrail" in status.message
    assert status.decided_at is not None and status.decided_at - (status.step_started_at or 0) < 1800
    final = world.router.in_effect()
    assert final is not None and final.experiment is None and not final.canary_reachable()


def test_no_difference_at_the_maximum_duration_keeps_stable() -> None:
    world = ABWorld({"v1": 0.10, "v2": 0.10})
    status = world.run(ab_release(maxDuration="5m", onEnd="promoteWinner"))
    assert status.phase is Phase.ROLLED_BACK, status.message
    assert status.experiment is not None
    assert status.experiment["decision"] == "no_difference" and status.experiment["winner"] is None
    assert status.experiment["stoppedBy"] == "maxDuration"
    assert 300 <= status.experiment["durationSeconds"] < 300 + 2 * 30
    low, high = status.experiment["effect"]["interval"]
    assert low < 0 < high


def test_no_difference_without_the_minimum_sample_says_that_no_variant_was_judged() -> None:
    """At maxDuration before every variant had `minSamples`, the decision is `no_difference` like any other end
    without a winner; its reason (the experiment's, the release's message and the look's) says nothing was judged.
    It had read "maximum duration reached: v1: 6637 samples so far, 100000 needed per variant" (a run like this
    one), and the look's record "continue"."""
    world = ABWorld({"v1": 0.10, "v2": 0.16})
    status = world.run(ab_release(maxDuration="5m", minSamples=100_000))
    assert status.phase is Phase.ROLLED_BACK and status.experiment is not None, status.message
    said = "maximum duration 300s reached before the minimum sample (v"
    assert status.experiment["decision"] == "no_difference" and status.experiment["stoppedBy"] == "maxDuration"
    assert status.experiment["reason"].startswith(said) and "no variant could be judged" in status.experiment["reason"]
    assert said in status.message
    last = status.history[-1]
    assert last.counts["primary"]["decision"] == "no_difference" and said in last.reason
    assert [r.counts["primary"]["decision"] for r in status.history[:-1]] == ["continue"] * (len(status.history) - 1)


def test_each_look_records_the_experiments_own_decision() -> None:
    """What `canary get`, the report and the demo show as a look's verdict (`counts["primary"]["decision"]`): the
    experiment's decision, whatever the guardrails' verdict (kept as the record's `verdict`)."""
    won = ABWorld({"v1": 0.10, "v2": 0.16}).run(ab_release())
    decisions = [r.counts["primary"]["decision"] for r in won.history]
    assert decisions[-1] == "winner" and set(decisions[:-1]) == {"continue"}
    assert {r.verdict for r in won.history} <= {"pass", "inconclusive"}
    harmed = ABWorld({"v1": 0.10, "v2": 0.16}, models={"v2": VersionModel(error_rate=0.02)}).run(ab_release())
    assert harmed.experiment is not None and harmed.experiment["decision"] == "harmful"
    last = harmed.history[-1]
    assert last.verdict == "fail" and last.counts["primary"]["decision"] == "harmful"  # it had recorded "error"
    # The guardrails' state in words: what they found, said to be theirs, then the primary metric's part.
    assert last.reason.startswith("guardrails: errorRate worse on ")
    assert last.reason.endswith("; primary: stopped by a guardrail")


def test_wait_for_operator_pauses_until_approved() -> None:
    world = ABWorld({"v1": 0.10, "v2": 0.16})
    obj = ab_release(onEnd="waitForOperator")
    status = world.run(obj, until=lambda s: s.phase is Phase.PAUSED)
    assert status.phase is Phase.PAUSED and status.experiment is not None and status.experiment["winner"] == "v2"
    in_effect = world.router.in_effect()
    assert in_effect is not None and in_effect.experiment is not None  # users stay on their variants
    obj["spec"]["approvePromotion"] = True
    assert world.run(obj).phase is Phase.SUCCEEDED


def test_an_approval_given_before_the_end_promotes_the_canary_even_without_a_winner() -> None:
    """What `canary approve` says of an experiment in flight (controller.core.operations): no gate is kept."""
    world = ABWorld({"v1": 0.10, "v2": 0.10})
    obj = ab_release(maxDuration="5m", onEnd="waitForOperator")
    obj["spec"]["approvePromotion"] = True
    status = world.run(obj)
    assert status.phase is Phase.SUCCEEDED and status.experiment is not None
    assert status.experiment["decision"] == "no_difference" and status.experiment["winner"] is None


def test_a_paused_experiment_keeps_its_routes_and_its_clock() -> None:
    """What `canary pause` says of an experiment (controller.core.operations): no look while paused, the routes
    stay, and the pause counts towards maxDuration."""
    world = ABWorld({"v1": 0.10, "v2": 0.10})
    obj = ab_release(maxDuration="10m", onEnd="keepStable")
    world.run(obj, until=lambda s: (s.experiment_state or {}).get("looks", 0) >= 2)
    obj["spec"]["paused"], obj["metadata"]["generation"] = True, 2
    assert world.run(obj, until=lambda s: s.phase is Phase.PAUSED).phase is Phase.PAUSED
    in_effect = world.router.in_effect()
    assert in_effect is not None and in_effect.experiment is not None
    world.clock.sleep(900)
    obj["spec"]["paused"], obj["metadata"]["generation"] = False, 3
    status = world.run(obj)
    assert status.phase is Phase.ROLLED_BACK and status.experiment is not None
    assert status.experiment["looks"] == 3 and status.experiment["stoppedBy"] == "maxDuration"


def test_a_restarted_controller_resumes_the_experiment_from_the_persisted_status() -> None:
    world = ABWorld({"v1": 0.10, "v2": 0.16})
    obj = ab_release()

    def looked_twice(s: ReleaseStatus) -> bool:
        return (s.experiment_state or {}).get("looks", 0) >= 2

    mid = world.run(obj, until=looked_twice)
    assert mid.phase is Phase.PROGRESSING and mid.experiment_state is not None
    samples_before = dict(mid.experiment["samples"]) if mid.experiment else {}
    status = world.run(obj, controller=world.controller())  # a new controller, same persisted status
    assert status.phase is Phase.SUCCEEDED and status.experiment is not None
    assert status.experiment["looks"] > 2
    assert all(status.experiment["samples"][v] > samples_before[v] for v in ("v1", "v2"))
    assert status.step_started_at == mid.step_started_at  # the experiment's clock did not restart


def test_business_source_outage_rolls_back_after_the_error_budget() -> None:
    world = ABWorld({"v1": 0.10, "v2": 0.16})
    world.business.down = True
    status = world.run(ab_release())
    assert status.phase is Phase.ROLLED_BACK
    assert "business metrics unavailable" in status.message
    last = status.history[-3:]
    assert [h.verdict for h in last] == ["error"] * 3
    assert all("primary: business metrics unavailable" in h.reason for h in last)
    assert [h.action for h in last] == ["hold", "hold", "stop experiment, roll back"]


# --- persisted status ---------------------------------------------------------------------------------


def test_an_experiment_status_survives_storage_and_passes_the_crd() -> None:
    world = ABWorld({"v1": 0.10, "v2": 0.16})
    obj = ab_release()
    status = world.run(obj)
    stored = json.loads(json.dumps(status.for_storage(), allow_nan=False))  # strict JSON: no Infinity
    assert ReleaseStatus.from_storage(stored) == status
    crd = load_documents(REPO / "manifests" / "crd" / "stackreleases.yaml")[0]
    release_obj = {"apiVersion": "stackcanary.dev/v1alpha1", "kind": "StackRelease", **obj, "status": stored}
    assert custom_resource_errors(release_obj, crd) == []


# --- A/B/n: three variants ------------------------------------------------------------------------------

ABN: dict[str, Any] = {
    **AB, "variants": [{"name": "v1", "weight": 34}, {"name": "v2", "weight": 33},
                       {"name": "v3", "weight": 33, "images": {"ml-search": "registry/ml-search:v3"}}],
}


def abn_release(**overrides: Any) -> dict[str, Any]:
    return release(strategy={"abTest": {**copy.deepcopy(ABN), **overrides}})






@dataclass
class AbnBusiness(FakeBusiness):
    def business(self, query: BusinessQuery, start: float, end: float) -> Mapping[str, PrimaryCounts]:
        self.queries.append((start, end))
        per_version = split_by_plan(self.rng, self.router.in_effect(), int(self.rng.poisson(self.rps * (end - start))))
        return {v: users_counts(self.rng, n, self.click_probability.get(v, 0.1))
                for v, n in per_version.items() if v in query.versions}


class AbnWorld(ABWorld):
    """Three variants. `blind_to` is a version the metrics source fails to count (a broken scrape)."""

    def __init__(self, ctr: Mapping[str, float], models: dict[str, VersionModel] | None = None,
                 blind_to: str | None = None) -> None:
        super().__init__(ctr, models=models)
        self.metrics = AbnMetrics(self.router, rps=75.0, models=models or {})
        self.business = AbnBusiness(self.router, ctr, rps=75.0)
        self.blind_to = blind_to

    def controller(self) -> Reconciler:
        metrics: Metrics = self.metrics if self.blind_to is None else BlindMetrics(self.metrics, self.blind_to)
        return Reconciler(Ports(self.workloads, self.router, metrics, self.clock, self.notifier,
                                business=self.business))


@dataclass
class BlindMetrics:
    inner: Metrics
    version: str

    def window(self, query: MetricsQuery, start: float, end: float) -> WindowCounts:
        counted = tuple(v for v in query.versions if v != self.version)
        return self.inner.window(replace(query, versions=counted), start, end)


def test_abn_spec_gives_every_variant_its_version_and_images() -> None:
    spec = parse_release(abn_release())
    exp = spec.experiment
    assert exp is not None and exp.versions == ("v1", "v2", "v3") and exp.treatment == "v2"
    assert [(v.version, dict(v.images)) for v in exp.extra] == [("v3", {"ml-search": "registry/ml-search:v3"})]
    assert exp.config.treatments == ("v2", "v3") and exp.config.alpha_each == pytest.approx(0.025)
    bad = copy.deepcopy(ABN)
    bad["variants"][1]["images"] = {"ml-search": "x"}
    with pytest.raises(InvalidSpec, match=r"variants\[1\]\.images: v2 is spec.canary's version"):
        parse_release(release(strategy={"abTest": bad}))


def test_abn_a_variants_image_for_a_service_the_release_does_not_change_is_a_problem() -> None:
    """A further variant runs the canary's services only (`world.variant_workloads`): an image for another
    service would never run, and the variant would be judged as if it did."""
    bad = copy.deepcopy(ABN)
    bad["variants"][2]["images"] = {"ml-search": "registry/ml-search:v3", "keyword": "registry/keyword:v3"}
    with pytest.raises(InvalidSpec) as info:
        parse_release(release(canary={"version": "v2", "services": ["ml-search"]}, strategy={"abTest": bad}))
    assert info.value.problems == (
        "spec.strategy.abTest.variants[2].images.keyword: is not a service the release changes (ml-search): a "
        "variant runs only those (spec.canary.services, or the services with a canary image)",)


def test_abn_routes_are_valid_for_istio_and_the_local_router_and_read_back() -> None:
    spec = parse_release(abn_release())
    assert spec.experiment is not None
    plan = base_plan(spec).with_experiment(spec.experiment.routes)
    objects = render(plan)
    for obj in objects:
        assert istio_errors(obj, strict=True) == [], obj
    validate_objects(objects)
    entry = next(o for o in objects if o["kind"] == "VirtualService" and o["metadata"]["name"] == "master-search")
    assert [r["name"] for r in entry["spec"]["http"]] == [
        "cohort-v1", "cohort-v2", "cohort-v3", "sticky-v1", "sticky-v2", "sticky-v3", "assign"]
    assign = entry["spec"]["http"][-1]["route"]
    assert [(d["destination"]["subset"], d["weight"]) for d in assign] == [("stable", 34), ("v2", 33), ("v3", 33)]
    lane = next(o for o in objects if o["kind"] == "VirtualService" and o["metadata"]["name"] == "ml-search")
    assert [r["name"] for r in lane["spec"]["http"]] == ["lane-v2", "lane-v3", "stable-lane"]
    rule = next(o for o in objects if o["kind"] == "DestinationRule" and o["metadata"]["name"] == "ml-search")
    assert {s["name"]: s["labels"]["version"] for s in rule["spec"]["subsets"]} == {
        "stable": "v1", "canary": "v2", "v2": "v2", "v3": "v3"}
    assert plan.equivalent(read_plan(json.loads(json.dumps(objects))))


def test_abn_a_further_variant_wins_and_the_release_keeps_stable() -> None:
    world = AbnWorld({"v1": 0.10, "v2": 0.10, "v3": 0.17})
    status = world.run(abn_release())
    assert status.phase is Phase.ROLLED_BACK, status.message
    result = status.experiment
    assert result is not None and result["decision"] == "winner" and result["winner"] == "v3"
    assert result["treatment"] == "v3" and result["effect"]["interval"][0] > 0
    assert set(result["comparisons"]) == {"v2", "v3"} and result["alphaPerComparison"] == pytest.approx(0.025)
    assert set(result["samples"]) == {"v1", "v2", "v3"} and min(result["samples"].values()) >= 1000
    assert "release v3 to promote it" in status.message
    started = {(s, v) for op, s, v in world.workloads.calls if op == "start"}
    stopped = {(s, v) for op, s, v in world.workloads.calls if op == "stop"}
    assert {(s, "v3") for s in SERVICES_OF_RELEASE} <= started and {(s, "v3") for s in SERVICES_OF_RELEASE} <= stopped
    from controller.core.machine import EnsureWorkloads
    ensured = {a.version: dict(a.images) for t in world.ticks for a in t.actions if isinstance(a, EnsureWorkloads)}
    assert ensured == {"v2": {}, "v3": {"ml-search": "registry/ml-search:v3"}}
    assert any(p.experiment is not None and len(p.experiment.arms) == 3 for p in world.router.history)
    final = world.router.in_effect()
    assert final is not None and final.experiment is None and {s.stable for s in final.services} == {"v1"}


def test_a_look_without_harm_says_so_not_that_the_guardrails_wait_to_show_safety() -> None:
    """An experiment's guardrails stop it on harm only; a canary's "not yet shown safe ... about 7 min at the
    current rate" in its looks read as if the experiment waited for them (once "about 559 min")."""
    world = AbnWorld({"v1": 0.10, "v2": 0.10, "v3": 0.17})
    status = world.run(abn_release())
    looks = [r.reason for r in status.history]
    assert looks and all(r.startswith("guardrails: no harm shown; v3: guardrails: no harm shown; primary: ")
                         for r in looks), looks
    assert not any("shown safe" in r or "current rate" in r for r in looks)


def test_abn_the_canary_wins_and_is_promoted_with_the_other_variant_retired() -> None:
    world = AbnWorld({"v1": 0.10, "v2": 0.17, "v3": 0.10})
    status = world.run(abn_release())
    assert status.phase is Phase.SUCCEEDED, status.message
    assert status.experiment is not None and status.experiment["winner"] == "v2"
    assert ("stop", "ml-search", "v3") in world.workloads.calls
    assert not any(v == "v3" for _, v in world.workloads.running)


def test_abn_a_harmful_further_variant_stops_the_experiment_on_its_guardrail() -> None:
    world = AbnWorld({"v1": 0.10, "v2": 0.16, "v3": 0.16}, models={"v3": VersionModel(error_rate=0.02)})
    status = world.run(abn_release())
    assert status.phase is Phase.ROLLED_BACK, status.message
    assert status.experiment is not None and status.experiment["decision"] == "harmful"
    assert status.experiment["harmful"] == "v3" and status.experiment["stoppedBy"] == "guardrail"
    assert status.history[-1].counts["guardrails"]["v3"]["verdict"] == "fail"
    assert status.history[-1].verdict == "fail" and "v3 fails a guardrail" in status.message


def test_abn_each_look_records_every_variants_requests() -> None:
    """The further variant's requests and errors per service, beside the control's and the canary's, for the
    traffic table of `canary get` (which had shown v1 and v2 only)."""
    world = AbnWorld({"v1": 0.10, "v2": 0.17, "v3": 0.10})
    status = world.run(abn_release())
    assert status.history
    for record in status.history:
        for service in SERVICES_OF_RELEASE:
            counts = record.counts[service]
            assert set(counts["variants"]) == {"v3"} and counts["variants"]["v3"]["requests"] > 0
            assert counts["variants"]["v3"]["requests"] != counts["canary"]["requests"]
        assert "variants" not in record.counts["primary"] and "variants" not in record.counts["guardrails"]


def test_abn_without_every_variant_counted_is_an_error_not_silence() -> None:
    world = AbnWorld({"v1": 0.10, "v2": 0.10, "v3": 0.17}, blind_to="v3")
    status = world.run(abn_release())
    assert status.phase is Phase.ROLLED_BACK
    assert [h.verdict for h in status.history[-3:]] == ["error"] * 3
    assert "did not count version(s) v3" in status.history[-1].reason


def test_abn_waits_for_every_variant_and_fails_when_one_cannot_start() -> None:
    world = AbnWorld({"v1": 0.10, "v2": 0.17, "v3": 0.10})
    world.workloads.startup_ticks = {("ml-search", "v3"): 4}  # v3 slower to start than v2
    obj = abn_release()
    status = world.run(obj, until=lambda s: s.phase is Phase.PROGRESSING)
    assert status.phase is Phase.PROGRESSING
    initializing = [t for t in world.ticks if t.status.phase is Phase.INITIALIZING]
    waiting = [t.status.message for t in initializing if "become ready" in t.status.message]
    assert waiting.count("waiting for ml-search to become ready (variant v3: starting)") == 4, waiting  # v2 at once
    broken = AbnWorld({"v1": 0.10, "v2": 0.17, "v3": 0.10})
    broken.workloads.broken = {("ml-search", "v3")}
    status = broken.run(abn_release())
    assert status.phase is Phase.FAILED and "variant v3: CrashLoopBackOff" in status.message
    assert {("stop", "ml-search", "v3"), ("stop", "ml-search", "v2")} <= set(broken.workloads.calls)


@dataclass
class UnitsBusiness(FakeBusiness):
    """FakeBusiness that also reports users assigned per version (`units`), `v2_user_share` of them on v2."""

    v2_user_share: float = 0.5
    users_per_second: float = 2.0
    assigned: int = 0  # users reported over every query

    def business(self, query: BusinessQuery, start: float, end: float) -> Mapping[str, PrimaryCounts]:
        counts = dict(super().business(query, start, end))
        users = int(self.rng.poisson(self.users_per_second * (end - start)))
        on_v2 = int(self.rng.binomial(users, self.v2_user_share))
        self.assigned += users
        units = {query.versions[0]: users - on_v2, query.versions[1]: on_v2}
        return {v: replace(c, units=units[v]) for v, c in counts.items()}


@pytest.mark.parametrize("v2_user_share, broken", [(0.5, False), (0.3, True)])
def test_sample_ratio_on_assigned_users_stops_a_brokensplit_by_plan(v2_user_share: float, broken: bool) -> None:
    world = ABWorld({"v1": 0.10, "v2": 0.16})
    world.business = business = UnitsBusiness(world.router, {"v1": 0.10, "v2": 0.16}, v2_user_share=v2_user_share)
    status = world.run(ab_release())
    if broken:
        assert status.phase is Phase.ROLLED_BACK and "sample-ratio mismatch" in status.message, status.message
        assert [h.verdict for h in status.history[-3:]] == ["error"] * 3
    else:
        assert status.phase is Phase.SUCCEEDED, status.message
        assert status.experiment is not None
        ratio, users = status.experiment["comparisons"]["v2"]["sampleRatio"], business.assigned
        # A fair split's share is within 3.3 standard errors of one half (99.9%), however many users were counted.
        assert abs(ratio["share"] - 0.5) <= 3.3 * (0.25 / users) ** 0.5 and ratio["eValue"] < 1000, (ratio, users)
