"""The invariant checker itself: each rule catches the state it is about (so a green campaign means
something), a rule switched off fails the test all the same, an excuse covers only what it names, and the
promotion cut-over never routes to an undefined subset (the regression test of that fixed bug)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controller.adapters.istio.render import render
from controller.core.plan import RoutingPlan, ServiceVersions
from controller.core.status import Phase
from tests.support.invariants import (
    DEPLOYMENTS,
    DESTINATION_RULES,
    RELEASES,
    RULES,
    VIRTUAL_SERVICES,
    InvariantChecker,
)
from tests.support.kmock_server import RunningEmulator, ready_deployment_status
from tests.support.kube_world import NAMESPACE, SERVICES, KubeWorld, release_body, stable_deployment

Obj = dict[str, Any]


def plan(weight: int = 0, canary: bool = True) -> RoutingPlan:
    return RoutingPlan(namespace=NAMESPACE, entry="master-search",
                       services=tuple(ServiceVersions(s, "v1", "v2" if canary else None) for s in SERVICES),
                       canary_weight=weight, lane_header="x-canary-lane", owner="search-v2")


def key_of(obj: Obj) -> tuple[str, str, str]:
    return VIRTUAL_SERVICES if obj["kind"] == "VirtualService" else DESTINATION_RULES


class Cluster:
    """Objects written straight into the emulator's store (no controller): states made to order."""

    def __init__(self, emulator: RunningEmulator, checker: InvariantChecker | None = None) -> None:
        self.store = emulator.store
        self.checker = checker or InvariantChecker().attach(emulator)

    def deploy(self, version: str, ready: bool = True) -> None:
        for s in SERVICES:
            d = self.store.create(DEPLOYMENTS, NAMESPACE, stable_deployment(s, version))
            if ready:
                self.store.update(DEPLOYMENTS, NAMESPACE, d["metadata"]["name"],
                                  {"status": ready_deployment_status(d)}, patch=True, status=True)

    def routes(self, objects: list[Obj]) -> None:
        for obj in objects:
            name = obj["metadata"]["name"]
            if (key_of(obj), NAMESPACE, name) in self.store.objects:
                self.store.update(key_of(obj), NAMESPACE, name, copy.deepcopy(obj), patch=False, status=False)
            else:
                self.store.create(key_of(obj), NAMESPACE, copy.deepcopy(obj))

    def release(self, status: Obj) -> None:
        if (RELEASES, NAMESPACE, "search-v2") not in self.store.objects:
            self.store.create(RELEASES, NAMESPACE, release_body())
        body = {**self.store.get(RELEASES, NAMESPACE, "search-v2"), "status": status}
        self.store.update(RELEASES, NAMESPACE, "search-v2", body, patch=False, status=True)

    def rules(self) -> set[str]:
        assert {v.rule for v in self.checker.violations} == set(self.checker.by_rule)
        return set(self.checker.by_rule)

    def lose_pods(self, name: str) -> None:
        """The Deployment `name` with no ready pod left (its pods evicted or crashing), its spec untouched."""
        d = copy.deepcopy(self.store.get(DEPLOYMENTS, NAMESPACE, name))
        d["status"] = {**(d.get("status") or {}), "readyReplicas": 0, "availableReplicas": 0}
        self.store.update(DEPLOYMENTS, NAMESPACE, name, d, patch=False, status=True)

    def drop_subset(self, host: str, subset: str) -> None:
        """The DestinationRule of `host` without `subset`, its VirtualService untouched."""
        dr = copy.deepcopy(self.store.get(DESTINATION_RULES, NAMESPACE, host))
        dr["spec"]["subsets"] = [s for s in dr["spec"]["subsets"] if s["name"] != subset]
        self.store.update(DESTINATION_RULES, NAMESPACE, host, dr, patch=False, status=False)


def test_a_sound_sequence_of_states_passes(emulator: RunningEmulator, invariants: InvariantChecker) -> None:
    c = Cluster(emulator, invariants)  # the fixture's teardown also asserts it clean
    c.deploy("v1")
    c.deploy("v2")
    c.release({"phase": "Initializing", "step": -1})
    c.routes(render(plan(0)))
    c.release({"phase": "Progressing", "step": 0, "history": [{"verdict": "inconclusive"}]})
    c.routes(render(plan(20)))
    c.release({"phase": "Progressing", "step": 1, "history": [{"verdict": "inconclusive"}, {"verdict": "pass"}]})
    assert c.checker.violations == [] and c.checker.states >= 20


def test_each_rule_catches_its_breach(emulator: RunningEmulator) -> None:
    c = Cluster(emulator)
    c.deploy("v1")
    c.deploy("v2", ready=False)
    c.release({"phase": "Progressing", "step": 1, "observedGeneration": 2, "history": [{"verdict": "error"}]})
    c.routes(render(plan(20)))  # traffic into the canary lane, whose Deployments have no ready pod
    assert "ready" in c.rules()
    broken = render(plan(20))
    broken[len(SERVICES)]["spec"]["http"][0]["route"][0]["weight"] = 70  # 70 + 20
    c.routes(broken)
    assert "weights" in c.rules()
    c.release({"phase": "Promoting", "step": 0, "observedGeneration": 1, "history": []})
    assert {"pass", "forward"} <= c.rules()  # promoted without a pass; step, generation and history went back
    c.release({"phase": "RollingBack", "step": 0, "observedGeneration": 1, "canaryOffAt": 5.0, "history": []})
    c.routes(render(plan(30)))  # weight to the canary after the rollback read back 0%
    assert "off" in c.rules()
    unowned = render(plan(0))
    for obj in unowned:
        del obj["metadata"]["labels"]["stack-canary.dev/release"]
    c.routes(unowned)
    assert "owner" in c.rules()
    c.routes(render(plan(20)))
    c.drop_subset("ml-search", "canary")  # the lane route of ml-search now names a subset that is gone
    assert "subset" in c.rules()
    assert any(v.rule == "subset" and "'canary'" in v.what and "ml-search" in v.what for v in c.checker.violations)
    c.lose_pods("text-search-v1")  # the stable subset of text-search on a version without a ready pod
    assert "stable" in c.rules()
    assert c.rules() == RULES, "every rule has a breach of its own above"
    with pytest.raises(AssertionError, match="invariant violations"):
        c.checker.assert_clean()


def all_in_the_canary_lane(emulator: RunningEmulator) -> Cluster:
    """v1 and v2 deployed, a release past its analysis with 100% into the canary lane: no rule broken yet."""
    c = Cluster(emulator)
    c.deploy("v1")
    c.deploy("v2")
    c.release({"phase": "Progressing", "step": 0, "history": [{"verdict": "pass"}]})
    c.routes(render(plan(100)))
    assert c.checker.violations == []
    return c


def test_each_rule_alone_is_reported(emulator: RunningEmulator) -> None:
    """`subset` on its own (every other rule holds): a promotion that dropped the canary subset from the
    entry's DestinationRule while its VirtualService still sends 100% there (the fixed cut-over bug)."""
    c = all_in_the_canary_lane(emulator)
    c.drop_subset("master-search", "canary")
    assert [v.rule for v in c.checker.violations] == ["subset"], c.checker.violations
    assert "master-search" in c.checker.violations[0].what


def test_a_stable_subset_on_a_version_that_lost_its_pods_is_caught_alone(emulator: RunningEmulator) -> None:
    """`stable` on its own: during a promotion's 100% into the canary lane the entry's stable version gets
    no traffic (so `ready` is silent), yet it is what a rollback falls back on: it losing every ready pod
    is a violation of `stable` and of nothing else."""
    c = all_in_the_canary_lane(emulator)
    c.lose_pods("master-search-v1")
    assert [v.rule for v in c.checker.violations] == ["stable"], c.checker.violations
    assert "master-search-v1 is without a ready pod" in c.checker.violations[0].what


def test_the_stable_rule_holds_a_version_once_it_was_ready_or_re_pointed_at(emulator: RunningEmulator) -> None:
    """The rule's scope: a brand-new stack whose stable pods are still starting when its DestinationRules are
    first written (the router writes them before the VirtualServices, so no traffic flows yet) is not held
    to it; once ready, it is; and a stable subset re-pointed at a version without a ready pod is caught at
    that write."""
    c = Cluster(emulator)
    c.deploy("v1", ready=False)
    c.routes([o for o in render(plan(0, canary=False)) if o["kind"] == "DestinationRule"])
    assert c.checker.violations == []
    for s in SERVICES:
        d = c.store.get(DEPLOYMENTS, NAMESPACE, f"{s}-v1")
        c.store.update(DEPLOYMENTS, NAMESPACE, f"{s}-v1", {"status": ready_deployment_status(d)}, patch=True,
                       status=True)
    c.lose_pods("keyword-v1")
    assert c.rules() == {"stable"} and "keyword-v1" in c.checker.violations[-1].what
    c.deploy("v2", ready=False)
    moved = RoutingPlan(namespace=NAMESPACE, entry="master-search", canary_weight=0, lane_header="x-canary-lane",
                        services=tuple(ServiceVersions(s, "v2", None) for s in SERVICES), owner="search-v2")
    before = c.checker.by_rule["stable"]
    c.routes(render(moved))  # every stable subset re-pointed at v2, whose pods are not ready
    assert c.checker.by_rule["stable"] - before >= len(SERVICES) - 1
    assert any("ml-infer-v2" in v.what for v in c.checker.violations if v.rule == "stable")


def test_a_rule_switched_off_still_fails_the_test(emulator: RunningEmulator) -> None:
    """`tolerate` only moves a rule's violations into `tolerated`; `assert_clean()` (which the `invariants`
    fixture calls at every test's teardown) fails on them all the same."""
    c = Cluster(emulator, InvariantChecker(tolerate=frozenset({"subset"})).attach(emulator))
    c.deploy("v1")
    c.deploy("v2")
    c.release({"phase": "Progressing", "step": 0, "history": [{"verdict": "pass"}]})
    c.routes(render(plan(20)))
    c.drop_subset("keyword", "canary")
    assert c.checker.violations == [] and c.checker.tolerated.get("subset", 0) > 0
    with pytest.raises(AssertionError, match="switched off"):
        c.checker.assert_clean()


def test_an_excuse_covers_only_what_it_names(emulator: RunningEmulator) -> None:
    c = Cluster(emulator)
    c.checker.allow("ready", lambda v: "keyword-v2" in v.what, "keyword broken on purpose")
    c.deploy("v1")
    c.deploy("v2", ready=False)  # every canary Deployment without a ready pod, not only keyword's
    c.release({"phase": "Progressing", "step": 0, "history": [{"verdict": "pass"}]})
    c.routes(render(plan(20)))
    assert c.checker.allowed.get("keyword broken on purpose", 0) > 0
    assert c.rules() == {"ready"} and not any("keyword-v2" in v.what for v in c.checker.violations)
    with pytest.raises(AssertionError):
        c.checker.assert_clean()


def test_a_new_revision_may_start_again_from_pending(emulator: RunningEmulator) -> None:
    c = Cluster(emulator)
    c.release({"phase": "Succeeded", "step": 1, "revision": 1, "history": [{"verdict": "pass"}]})
    c.release({"phase": "Pending", "step": -1, "revision": 2, "history": []})
    assert c.checker.violations == []
    c.release({"phase": "Pending", "step": -1, "revision": 1, "history": []})
    assert "forward" in c.rules()


def test_promotion_never_routes_to_an_undefined_subset(emulator: RunningEmulator,
                                                       invariants: InvariantChecker) -> None:
    world = KubeWorld(emulator)
    world.seed_stack()
    world.create_release()
    status = world.drive(world.controller())
    assert status.phase is Phase.SUCCEEDED
    assert [v for v in invariants.violations if v.rule == "subset"] == []
    invariants.assert_clean()  # every rule, not only "subset"
    assert invariants.check_final(emulator, [NAMESPACE]) == []
