"""The search stack's faults (issue 9): a canary that crash-loops or never becomes ready.

The tests run in the cluster-like world (issue 14, `tests.support.cluster.ClusterModel` on the fake clock):
a stable stack of 4 pods per service with an HPA on ml-infer, every new pod ready after a seeded 2-10 s.
A canary image listed in the emulator's `failing_images` is past its progress deadline at once
(`Progressing=False, ProgressDeadlineExceeded`: a crash loop), one in `slow_images` gets pods that never get
ready. Either way the release must fail cleanly: all traffic back on the stable version, no traffic ever
sent to the broken canary, the canary Deployments scaled to 0, a condition and an Event saying why. A
canary whose pods are evicted in the middle of a release and whose replacements never get ready (its image
now crash-loops) is rolled back. Every invariant is checked at every stored state, `stable` included.
"""

from __future__ import annotations

import pytest

from controller.adapters.kubernetes.client import DEPLOYMENTS
from controller.adapters.kubernetes.routing import IstioRouter
from controller.core.status import Phase
from tests.support.invariants import InvariantChecker
from tests.support.kmock_server import Fault, RunningEmulator
from tests.support.kube_world import NAMESPACE, SERVICES, KubeWorld, cluster_world

REPLICAS = 4


def assert_cleanly_back_on_stable(world: KubeWorld) -> None:
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    assert plan is not None and plan.canary_weight == 0
    assert {s.stable for s in plan.services} == {"v1"} and not any(s.canary for s in plan.services)
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in world.objects("deployments")}
    assert all(replicas.get(f"{s}-v2", 0) == 0 for s in SERVICES), replicas
    assert all(replicas[f"{s}-v1"] == REPLICAS for s in SERVICES), replicas


@pytest.mark.parametrize("how", ["crash-looping", "never-ready"])
def test_broken_canary_fails_the_release_cleanly(emulator: RunningEmulator, invariants: InvariantChecker,
                                                 how: str) -> None:
    world = cluster_world(emulator, replicas=REPLICAS)
    checker = invariants
    if how == "crash-looping":
        emulator.emulator.failing_images.add("registry.example/ml-infer:2.0")
    else:
        emulator.emulator.slow_images.add("registry.example/keyword:2.0")
    world.create_release(progressDeadline="90s")
    status = world.drive(world.controller())
    assert status.phase is Phase.FAILED, status.message
    assert status.first_canary_traffic_at is None, "the broken canary must never have had traffic"
    condition = status.condition("Release")
    assert condition is not None and condition.status == "False"
    if how == "crash-looping":
        assert condition.reason == "CanaryFailed" and "progress deadline exceeded" in condition.message
    else:
        assert condition.reason == "ProgressDeadlineExceeded" and "keyword not ready" in condition.message
        assert "progressDeadline 90s" in condition.message
    reasons = [e["reason"] for e in world.objects("events") if e["type"] == "Warning"]
    assert condition.reason in reasons and "Failed" in reasons, reasons
    assert_cleanly_back_on_stable(world)
    checker.assert_clean()
    assert checker.check_final(emulator, [NAMESPACE]) == []
    world.assert_valid_writes()


def test_canary_that_starts_crash_looping_mid_release_is_rolled_back(emulator: RunningEmulator,
                                                                   invariants: InvariantChecker) -> None:
    world = cluster_world(emulator, replicas=REPLICAS)
    checker = invariants
    world.create_release()
    controller = world.controller()
    world.drive(controller, until=Phase.PROGRESSING)
    name = "ml-search-v2"
    # The test breaks this canary while it has traffic: "ready" fails for it (and it alone) until the rollback
    # takes its traffic away; that is the environment's fault, the controller's part is what follows.
    checker.allow("ready", lambda v: f"traffic to {name}, which is without a ready pod" in v.what, "canary broken")
    emulator.emulator.slow_images.add("registry.example/ml-search:2.0")  # from now on its pods never get ready
    assert world.cluster is not None
    pods = world.cluster.pods(name)
    assert pods and world.api.get(DEPLOYMENTS, NAMESPACE, name)["status"].get("readyReplicas", 0) >= 1
    world.cluster.evict(name, len(pods))  # every pod gone; the replacements never get ready
    assert world.api.get(DEPLOYMENTS, NAMESPACE, name)["status"].get("readyReplicas", 0) == 0
    broke = world.clock.t
    status = world.drive(controller)
    assert status.phase is Phase.ROLLED_BACK, status.message
    assert status.condition("Release") is not None
    assert "ml-search" in status.message and "no longer ready" in status.message
    assert status.canary_off_at is not None and status.canary_off_at - broke <= 10, "the canary kept traffic"
    print(f"\nthe canary lane read back 0% {status.canary_off_at - broke:.1f}s after the canary broke")
    assert "CanaryNotReady" in [e["reason"] for e in world.objects("events")]
    assert_cleanly_back_on_stable(world)
    assert checker.allowed.get("canary broken", 0) > 0, "the checker did see the canary break under traffic"
    checker.assert_clean()


def test_controller_downtime_before_the_canary_exists_does_not_fail_the_release(
        emulator: RunningEmulator, invariants: InvariantChecker) -> None:
    world = cluster_world(emulator, replicas=REPLICAS)
    world.create_release(progressDeadline="60s")
    controller = world.controller()
    # The first tick persists Initializing; its Deployment create fails (the controller "dies" right there).
    emulator.emulator.faults.append(Fault(code=500, method="POST", plural="deployments", times=1))
    world.drive(controller, rounds=1)
    assert world.status().phase is Phase.INITIALIZING
    assert not [d for d in world.objects("deployments") if d["metadata"]["name"].endswith("-v2")]
    world.clock.sleep(120)  # the controller is down for two minutes, longer than progressDeadline
    status = world.drive(controller, relist=False)
    assert status.phase is Phase.SUCCEEDED, status.message
