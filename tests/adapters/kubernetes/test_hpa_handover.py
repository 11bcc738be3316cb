"""Autoscaling follows the serving version: a user's HPA on the stable Deployment, through promotion, undo,
rollback and the release's deletion, against the API emulator (which has no HPA controller: what is
asserted is what the controller writes).

- During a release the canary has a copy of the user's HPA: its `maxReplicas`, metrics and behaviour,
  `minReplicas` at the weight's share of the user's minimum, and the release as owner.
- At promotion the copy goes and the user's HPA targets the new version's Deployment, which no release
  owns: deleting the finished release garbage-collects nothing that serves, nor its autoscaling.
- An undo (a release from the new version back to the old) retargets the user's HPA back; a rollback never
  moves it and leaves no copy.
"""

from __future__ import annotations

import pytest

from controller.adapters.kubernetes.client import DEPLOYMENTS, HPAS, RELEASES, Obj
from controller.adapters.kubernetes.workloads import LABEL_MANAGED_BY, MANAGED_BY, _copy_min
from controller.core.status import Phase
from tests.support.fakes import VersionModel
from tests.support.kmock_server import RunningEmulator
from tests.support.kube_world import NAMESPACE, SERVICES, KubeWorld, cluster_world

METRICS = [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                                         "averageUtilization": 70}}}]
BEHAVIOR = {"scaleDown": {"stabilizationWindowSeconds": 120}}


def user_hpa(target: str = "ml-infer-v1", minimum: int = 4, maximum: int = 10) -> Obj:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "ml-infer", "labels": {"team": "search"}},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                     "minReplicas": minimum, "maxReplicas": maximum, "metrics": METRICS, "behavior": BEHAVIOR}}


@pytest.fixture
def world(emulator: RunningEmulator) -> KubeWorld:
    """The cluster-like world (4 pods per service, new pods ready after 2-10 s), with the user's own HPA."""
    w = cluster_world(emulator, hpa_on=())
    w.api.create(HPAS, NAMESPACE, user_hpa())
    return w


def hpas(world: KubeWorld) -> dict[str, Obj]:
    return {h["metadata"]["name"]: h for h in world.objects(HPAS.plural)}


def replicas(world: KubeWorld) -> dict[str, int]:
    return {d["metadata"]["name"]: d["spec"]["replicas"] for d in world.objects(DEPLOYMENTS.plural)}


def back_to(version: str, current: str) -> dict[str, Obj]:
    return {"stable": {"version": current},
            "canary": {"version": version, "images": {s: f"registry.example/{s}:{version}" for s in SERVICES}}}


def test_the_canary_copy_has_the_users_maximum_and_a_share_of_the_minimum() -> None:
    hpa = user_hpa(minimum=4, maximum=10)
    assert [_copy_min(hpa, w) for w in (0, 10, 25, 50, 100)] == [1, 1, 1, 2, 4]
    assert _copy_min(user_hpa(minimum=8, maximum=3), 100) == 3  # never above the maximum
    assert _copy_min({"spec": {"maxReplicas": 5}}, 100) == 1  # the API server's default minimum
    # The stable scaled up by its autoscaler (9 of max 10): the canary's floor follows what the stable runs,
    # so a promotion gets the stable's capacity before it gets all the traffic.
    assert [_copy_min(user_hpa(minimum=4, maximum=10), w, 9) for w in (10, 50, 100)] == [1, 5, 9]


def test_the_canary_is_autoscaled_by_a_copy_while_the_user_hpa_keeps_stable(world: KubeWorld) -> None:
    release = world.create_release()
    world.drive(world.controller(), until=Phase.PROGRESSING)
    found = hpas(world)
    copy, user = found["ml-infer-v2"], found["ml-infer"]
    assert copy["spec"]["scaleTargetRef"]["name"] == "ml-infer-v2"
    assert (copy["spec"]["minReplicas"], copy["spec"]["maxReplicas"]) == (1, 10)
    assert copy["spec"]["metrics"] == METRICS and copy["spec"]["behavior"] == BEHAVIOR
    assert copy["metadata"]["labels"][LABEL_MANAGED_BY] == MANAGED_BY
    assert [r["uid"] for r in copy["metadata"]["ownerReferences"]] == [release["metadata"]["uid"]]
    assert user["spec"] == user_hpa()["spec"]  # the user's HPA keeps scaling stable, untouched
    assert set(found) == {"ml-infer", "ml-infer-v2"}  # only the autoscaled service gets one


def test_before_taking_all_traffic_the_canary_holds_the_users_minimum(world: KubeWorld) -> None:
    world.create_release()
    controller = world.controller()
    world.drive(controller, until=Phase.PROMOTING)
    world.drive(controller, until=Phase.PROMOTING, rounds=1)  # the first tick sized for 100% has run
    assert hpas(world)["ml-infer-v2"]["spec"]["minReplicas"] == 4
    assert replicas(world)["ml-infer-v2"] >= 4


def test_promotion_hands_the_users_hpa_to_the_new_version(world: KubeWorld, emulator: RunningEmulator) -> None:
    world.create_release()
    assert world.drive(world.controller()).phase is Phase.SUCCEEDED
    found = hpas(world)
    assert set(found) == {"ml-infer"}, "the canary's copy is gone: one HPA per Deployment"
    assert found["ml-infer"]["spec"] == {**user_hpa()["spec"], "scaleTargetRef": {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "ml-infer-v2"}}
    assert found["ml-infer"]["metadata"]["labels"] == {"team": "search"}
    deployments = {d["metadata"]["name"]: d for d in world.objects(DEPLOYMENTS.plural)}
    assert not deployments["ml-infer-v2"]["metadata"].get("ownerReferences")
    assert deployments["ml-infer-v2"]["spec"]["replicas"] >= 4 and deployments["ml-infer-v1"]["spec"]["replicas"] == 0

    # The finished release is deleted: nothing that serves, nor its autoscaling, goes with it.
    serving = replicas(world)
    world.api.delete(RELEASES, NAMESPACE, "search-v2")
    assert world.objects(RELEASES.plural) == []
    assert {k: v for k, v in replicas(world).items() if k.endswith("-v2")} == {
        k: v for k, v in serving.items() if k.endswith("-v2")}
    assert hpas(world)["ml-infer"]["spec"]["scaleTargetRef"]["name"] == "ml-infer-v2"
    world.assert_valid_writes()


def test_a_finished_release_ticked_again_writes_no_hpa(world: KubeWorld, emulator: RunningEmulator) -> None:
    world.create_release()
    controller = world.controller()
    assert world.drive(controller).phase is Phase.SUCCEEDED
    writes = emulator.emulator.writes()
    for _ in range(3):
        world.clock.sleep(30)
        controller.resync()
        controller.run_due()
    assert emulator.emulator.writes() == writes


def test_undo_hands_the_users_hpa_back(world: KubeWorld) -> None:
    world.create_release()
    controller = world.controller()
    assert world.drive(controller).phase is Phase.SUCCEEDED
    world.clock.sleep(1)
    world.create_release(name="search-undo", **back_to("v1", current="v2"))
    controller.relist()
    world.drive(controller, name="search-undo", until=Phase.PROGRESSING)
    # v1 was at 0 (where no HPA scales): brought back with a copy of its own at the weight's share.
    copy = hpas(world)["ml-infer-v1"]
    assert copy["metadata"]["labels"][LABEL_MANAGED_BY] == MANAGED_BY
    assert copy["spec"]["scaleTargetRef"]["name"] == "ml-infer-v1" and replicas(world)["ml-infer-v1"] >= 1
    assert world.drive(controller, name="search-undo").phase is Phase.SUCCEEDED
    found = hpas(world)
    assert set(found) == {"ml-infer"}
    assert found["ml-infer"]["spec"]["scaleTargetRef"]["name"] == "ml-infer-v1"
    assert replicas(world)["ml-infer-v1"] >= 4 and replicas(world)["ml-infer-v2"] == 0


def test_rollback_leaves_the_users_hpa_on_stable_and_no_copy(emulator: RunningEmulator) -> None:
    world = KubeWorld(emulator, models={"v2": VersionModel(error_rate=0.25)})
    world.seed_stack(replicas=4)
    world.api.create(HPAS, NAMESPACE, user_hpa())
    world.create_release()
    assert world.drive(world.controller()).phase is Phase.ROLLED_BACK
    assert {n: h["spec"]["scaleTargetRef"]["name"] for n, h in hpas(world).items()} == {"ml-infer": "ml-infer-v1"}
    assert replicas(world)["ml-infer-v1"] == 4 and replicas(world)["ml-infer-v2"] == 0
