"""A/B experiments: the spec, the rendered routes, and whole experiments ticked with a fake clock and fake ports.

The fake business source draws impressions per variant from the routes in effect (the treatment's share
of the entry traffic) and clicks with a per-version probability, so the experiment machine sees what the
real search stack's counters would say.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis.abtest import PrimaryCounts
from controller.business import BusinessQuery
from controller.machine import base_plan
from controller.ports import MetricsUnavailable
from controller.reconciler import Ports, Reconciler
from controller.routing.render import read_plan, render
from controller.routing.validate import validate_objects
from controller.spec import InvalidSpec, parse_release
from controller.status import Phase, ReleaseStatus
from tests.fakes import FakeRouter, VersionModel
from tests.istio_schema import istio_errors
from tests.k8s_schema import custom_resource_errors, load_documents
from tests.test_scenarios import World, release

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
            clicks = int(self.rng.binomial(n, self.click_probability.get(version, 0.1)))
            out[version] = PrimaryCounts.proportion(clicks, n)
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


@pytest.mark.parametrize(("strategy", "message"), [
    ({"abTest": AB, "canary": {}}, "spec.strategy.abTest: give either strategy.canary or strategy.abTest"),
    ({"abTest": {**AB, "variants": [{"name": "v1", "weight": 50}, {"name": "v3", "weight": 50}]}},
     "spec.strategy.abTest.variants: must be the stable and the new version (v1, v2), not v1, v3"),
    ({"abTest": {**AB, "variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 60}]}},
     "spec.strategy.abTest.variants: weights sum to 110, not 100"),
    ({"abTest": {**AB, "control": "v2"}}, "spec.strategy.abTest.control: 'v2' is not the stable version 'v1'"),
    ({"abTest": {**AB, "maxDuration": "1m"}}, "spec.strategy.abTest.maxDuration: 60 is less than minDuration"),
    ({"abTest": {**AB, "cookieMaxAge": "10m"}}, "spec.strategy.abTest.cookieMaxAge: 600s is shorter than"),
    ({"abTest": {**AB, "onEnd": "flip"}}, "spec.strategy.abTest.onEnd"),
    ({"abTest": {**AB, "zz": 1}}, "spec.strategy.abTest.zz: is not a known field"),
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


def test_experiment_routes_read_back_as_the_same_plan() -> None:
    spec = parse_release(ab_release())
    assert spec.experiment is not None
    plan = base_plan(spec).with_experiment(spec.experiment.routes)
    back = read_plan(json.loads(json.dumps(render(plan))))
    assert plan.equivalent(back)
    assert not plan.with_weight(50).equivalent(back)  # a canary split is not the experiment
    edited = json.loads(json.dumps(render(plan)))
    entry = next(o for o in edited if o["metadata"]["name"] == "master-search" and o["kind"] == "VirtualService")
    entry["spec"]["http"][-1]["route"][1]["weight"] = 10
    entry["spec"]["http"][-1]["route"][0]["weight"] = 90
    assert not plan.equivalent(read_plan(edited))  # a hand edit is seen and repaired


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


def test_wait_for_operator_pauses_until_approved() -> None:
    world = ABWorld({"v1": 0.10, "v2": 0.16})
    obj = ab_release(onEnd="waitForOperator")
    status = world.run(obj, until=lambda s: s.phase is Phase.PAUSED)
    assert status.phase is Phase.PAUSED and status.experiment is not None and status.experiment["winner"] == "v2"
    in_effect = world.router.in_effect()
    assert in_effect is not None and in_effect.experiment is not None  # users stay on their variants
    obj["spec"]["approvePromotion"] = True
    assert world.run(obj).phase is Phase.SUCCEEDED


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
    crd = load_documents(Path(__file__).resolve().parent.parent / "manifests" / "crd" / "stackreleases.yaml")[0]
    release_obj = {"apiVersion": "stackcanary.dev/v1alpha1", "kind": "StackRelease", **obj, "status": stored}
    assert custom_resource_errors(release_obj, crd) == []
