"""Releases of one stack one after another and overlapping, through the real controller and the emulator:
the later release waits for the earlier one, and a finished release never touches the world again."""

from __future__ import annotations

from typing import Any

import pytest

from controller.adapters.kubernetes.routing import IstioRouter
from controller.core.status import Phase
from tests.support.kmock_server import Key, RunningEmulator
from tests.support.kube_world import NAMESPACE, SERVICES, KubeWorld, cluster_world


@pytest.fixture
def world(emulator: RunningEmulator) -> KubeWorld:
    """The cluster-like world: 4 pods per service, new pods ready after 2-10 s."""
    return cluster_world(emulator, hpa_on=())


def next_release(name: str, stable: str, canary: str) -> dict[str, Any]:
    """A release of ml-infer alone, from `stable`; the other services run v1 (the stack the world starts with)."""
    return {"stable": {"version": "v1", **({"versions": {"ml-infer": stable}} if stable != "v1" else {})},
            "canary": {"version": canary, "images": {"ml-infer": f"registry.example/ml-infer:{canary}"}}}


def stable_versions(world: KubeWorld) -> set[str]:
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    assert plan is not None
    return {s.stable for s in plan.services if s.service == "ml-infer"}


def others_on_v1(world: KubeWorld) -> bool:
    """Whether every service but ml-infer still sends its stable traffic to v1, the version it runs."""
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    assert plan is not None
    return all(s.stable == "v1" for s in plan.services if s.service != "ml-infer")


def replicas(world: KubeWorld) -> dict[str, int]:
    return {d["metadata"]["name"]: d["spec"]["replicas"] for d in world.objects("deployments")
            if d["metadata"]["name"].startswith("ml-infer-")}


def test_a_release_created_while_another_is_in_flight_waits_then_runs(world: KubeWorld,
                                                                       emulator: RunningEmulator) -> None:
    world.create_release(name="infer-v2", **next_release("infer-v2", "v1", "v2"))
    controller = world.controller()
    assert world.drive(controller, name="infer-v2", until=Phase.PROGRESSING).phase is Phase.PROGRESSING
    world.create_release(name="infer-v3", **next_release("infer-v3", "v2", "v3"))
    controller.relist()
    controller.run_due()
    queued = world.status("infer-v3")
    assert queued.phase is Phase.PENDING and queued.condition("Queued").reason == "WaitingForRelease"
    assert "waiting for release infer-v2 to finish: it changes ml-infer too" in queued.message
    assert "ml-infer-v3" not in replicas(world)  # nothing deployed while it waits
    assert world.drive(controller, name="infer-v2").phase is Phase.SUCCEEDED
    assert world.drive(controller, name="infer-v3").phase is Phase.SUCCEEDED
    assert stable_versions(world) == {"v3"} and others_on_v1(world)
    assert replicas(world) == {"ml-infer-v1": 0, "ml-infer-v2": 0, "ml-infer-v3": 4}
    reasons = [e["reason"] for e in world.objects("events") if e["involvedObject"]["name"] == "infer-v3"]
    assert reasons.count("Queued") == 1


def test_finished_releases_of_a_service_never_rewrite_its_routes_or_scale_its_versions(
        world: KubeWorld, emulator: RunningEmulator) -> None:
    """v1 -> v2, then v2 -> v3, then an undo to v2: every finished release resynced many times, and the
    routes and replicas stay what the latest release left (the old behaviour flipped stable back)."""
    controller = world.controller()
    for name, stable, canary in (("infer-v2", "v1", "v2"), ("infer-v3", "v2", "v3"), ("infer-undo", "v3", "v2")):
        world.create_release(name=name, **next_release(name, stable, canary))
        controller.relist()
        assert world.drive(controller, name=name).phase is Phase.SUCCEEDED
        world.clock.sleep(1)  # the next release starts later than the last one finished
    assert stable_versions(world) == {"v2"} and others_on_v1(world)
    assert replicas(world) == {"ml-infer-v1": 0, "ml-infer-v2": 4, "ml-infer-v3": 0}
    changes: list[Key] = []
    emulator.store.observers.append(lambda rv, key, event, obj: changes.append(key))
    writes = emulator.emulator.writes()
    for _ in range(4):
        world.clock.sleep(60)
        controller.resync()
        controller.run_due()
    assert emulator.emulator.writes() == writes and changes == []
    assert stable_versions(world) == {"v2"}
    world.assert_valid_writes()


def test_a_release_whose_stable_version_was_promoted_away_while_it_waited_holds_until_fixed(
        world: KubeWorld, emulator: RunningEmulator) -> None:
    """infer-v3 names v1 as its stable version, as it was when it was created; search-v2, ahead of it, promotes
    v2 of every service and scales v1 to 0. Started as it is, infer-v3's routes would send every stable request
    to v1, which has no pod left (the old behaviour: every stable subset re-pointed at v1). It waits in Pending,
    says why once, and starts when the operator sets its stable version to v2."""
    world.create_release()
    controller = world.controller()
    world.drive(controller, until=Phase.PROGRESSING)
    world.create_release(name="infer-v3", **next_release("infer-v3", "v1", "v3"))
    assert world.drive(controller).phase is Phase.SUCCEEDED
    held = world.drive(controller, name="infer-v3", rounds=20)
    assert held.phase is Phase.PENDING
    condition = held.condition("StableServing")
    assert condition is not None and (condition.status, condition.reason) == ("False", "OtherVersionServes")
    assert held.message.startswith("not started: the release's routes would send the stable traffic of "
                                   "master-search, ml-infer, ml-search, keyword, text-search to v1, which serves no "
                                   "request there (")
    assert "ml-infer-v1: scaled to 0 replicas" in held.message
    assert held.message.endswith("set spec.stable to what each service runs, {version: v2}")
    assert stable_versions(world) == {"v2"} and "ml-infer-v3" not in replicas(world)
    events = [e for e in world.objects("events") if e["involvedObject"]["name"] == "infer-v3"]
    assert [(e["type"], e["reason"]) for e in events if e["reason"] == "StableNotServing"] == [
        ("Warning", "StableNotServing")]
    world.patch_spec({"stable": {"version": "v2"}}, name="infer-v3")
    controller.relist()
    done = world.drive(controller, name="infer-v3")
    assert done.phase is Phase.SUCCEEDED and done.condition("StableServing").status == "True"  # type: ignore[union-attr]
    assert stable_versions(world) == {"v3"}
    assert replicas(world) == {"ml-infer-v1": 0, "ml-infer-v2": 0, "ml-infer-v3": 4}
    world.assert_valid_writes()


def test_a_release_that_names_one_stable_version_for_a_stack_on_two_waits_with_the_spec_that_fits(
        world: KubeWorld, emulator: RunningEmulator) -> None:
    """After a release of ml-infer alone (v1 -> v2), a release of keyword names v2 as the whole stack's stable
    version. Started as written, its routes would send the stable traffic of master-search, ml-search, keyword and
    text-search to Deployments `<service>-v2` that do not exist (the old behaviour: it ran, and on a cluster every
    search failed). It waits, says what runs, and runs once `spec.stable` says it."""
    world.create_release(name="infer-v2", **next_release("infer-v2", "v1", "v2"))
    controller = world.controller()
    assert world.drive(controller, name="infer-v2").phase is Phase.SUCCEEDED
    world.create_release(name="keyword-v3", stable={"version": "v2"},
                         canary={"version": "v3", "images": {"keyword": "registry.example/keyword:v3"}})
    held = world.drive(controller, name="keyword-v3", rounds=20)
    assert held.phase is Phase.PENDING
    assert held.condition("StableServing").reason == "OtherVersionServes"  # type: ignore[union-attr]
    assert "Deployment master-search-v2 does not exist" in held.message
    assert held.message.endswith("set spec.stable to what each service runs, {version: v1, versions: "
                                 "{ml-infer: v2}}"), held.message
    assert not [d for d in world.objects("deployments") if d["metadata"]["name"] == "keyword-v3"]
    assert stable_versions(world) == {"v2"} and others_on_v1(world)
    world.patch_spec({"stable": {"version": "v1", "versions": {"ml-infer": "v2"}}}, name="keyword-v3")
    controller.relist()
    done = world.drive(controller, name="keyword-v3")
    assert done.phase is Phase.SUCCEEDED, done.message
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    assert plan is not None and {s.service: s.stable for s in plan.services} == {
        "master-search": "v1", "ml-infer": "v2", "ml-search": "v1", "keyword": "v3", "text-search": "v1"}
    world.assert_valid_writes()



def test_a_release_of_other_services_of_the_stack_waits_for_the_one_in_flight_then_for_the_right_spec(
        world: KubeWorld, emulator: RunningEmulator) -> None:
    """kw-v2 (keyword v1 -> v2) is in flight when infer-v3 (ml-infer) is created. Both write the routes of the
    whole stack. Before, infer-v3 started at once and went to Progressing with its route writes refused while
    kw-v2 ran; once kw-v2 had promoted keyword to v2 and scaled v1 to 0, infer-v3's routes sent keyword's stable
    traffic back to v1, which had no pod. Now it waits for kw-v2, then for a spec that says
    keyword runs v2, and both end with every service's stable traffic where its pods are."""
    world.create_release(name="kw-v2", canary={"version": "v2", "images": {"keyword": "registry.example/keyword:v2"}})
    controller = world.controller()
    assert world.drive(controller, name="kw-v2", until=Phase.PROGRESSING).phase is Phase.PROGRESSING
    world.create_release(name="infer-v3", **next_release("infer-v3", "v1", "v3"))
    queued = world.drive(controller, name="infer-v3", rounds=20)
    assert queued.phase is Phase.PENDING and queued.condition("Queued").reason == "WaitingForRelease"  # type: ignore[union-attr]
    assert queued.message == ("waiting for release kw-v2 to finish: it changes keyword and routes the whole stack, "
                              "whose stable versions this release starts from")
    assert "ml-infer-v3" not in replicas(world)
    assert world.drive(controller, name="kw-v2").phase is Phase.SUCCEEDED
    held = world.drive(controller, name="infer-v3", rounds=20)
    assert held.phase is Phase.PENDING and held.message.endswith(
        "set spec.stable to what each service runs, {version: v1, versions: {keyword: v2}}"), held.message
    world.patch_spec({"stable": {"version": "v1", "versions": {"keyword": "v2"}}}, name="infer-v3")
    assert world.drive(controller, name="infer-v3").phase is Phase.SUCCEEDED
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    assert plan is not None and {s.service: s.stable for s in plan.services} == {
        "master-search": "v1", "ml-infer": "v3", "ml-search": "v1", "keyword": "v2", "text-search": "v1"}
    world.assert_valid_writes()
