"""A shadow phase through the Kubernetes controller: the real client over a socket against the API emulator, in the
cluster-like world (pods ready after 2-10 s).

The comparator is a stand-in (`MirroredStack`): it makes pairs only while the entry VirtualService the controller
wrote mirrors searches (read from the emulator at every look), 30 per look, with the paths the lane routes in
effect would give them; the new version ranks like the stable one, or not at all alike. Every state of the entry
route the store holds is recorded, so the tests can show that no user request could reach the new version while
its rankings were being compared, and that a new version that ranks differently never got any.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from analysis.shadow import ShadowPair
from controller.adapters.istio.render import ENTRY_ROUTE, SHADOW_ROUTES
from controller.core.observation import MirroredPair, ShadowBatch
from controller.core.plan import ShadowRoutes
from controller.core.status import Phase
from tests.support.cluster import ClusterModel
from tests.support.invariants import InvariantChecker
from tests.support.kmock_server import Key, RunningEmulator
from tests.support.kube_world import SERVICES, KubeWorld

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
Obj = dict[str, Any]
VS_KEY: Key = ("networking.istio.io", "v1", "virtualservices")
STRATEGY = {"canary": {"steps": [{"weight": 10}, {"weight": 50}], "interval": "60s", "minCanaryRequests": 100},
            "shadow": {"minPairs": 20, "mirrorPercent": 20}}


@dataclass
class MirroredStack:
    """The ShadowPairs port: pairs exist only while the entry route mirrors to the comparator."""

    world: KubeWorld
    same_rankings: bool
    head: int = 0
    looks_mirroring: int = 0

    def pairs(self, namespace: str, routes: ShadowRoutes, epoch: str, after: int) -> ShadowBatch:
        entry = next(vs for vs in self.world.objects("virtualservices", namespace)
                     if vs["metadata"]["name"] == "master-search")
        split = next(r for r in entry["spec"]["http"] if r.get("name") == ENTRY_ROUTE)
        made: tuple[MirroredPair, ...] = ()
        if split.get("mirror", {}).get("host") == routes.comparator and after >= 0:
            self.looks_mirroring += 1
            made = tuple(self._pair(self.head + i) for i in range(30))
            self.head += len(made)
        return ShadowBatch("epoch-1", self.head, made if after >= 0 else (), mirrored=self.head)

    def _pair(self, i: int) -> MirroredPair:
        stable = tuple(f"doc-{i}-{r}" for r in range(10))
        new = stable if self.same_rankings else tuple(f"other-{i}-{r}" for r in range(10))
        path = {v: ",".join(f"{s}@{v}" for s in SERVICES) for v in ("v1", "v2")}
        return MirroredPair(ShadowPair(f"query {i % 40}", stable, stable, new),
                            {"stable": path["v1"], "stableAgain": path["v1"], "new": path["v2"]})


@dataclass
class EntryStates:
    """Every state of the entry VirtualService: (mirrored, canary weight of the split)."""

    states: list[tuple[bool, int]] = field(default_factory=list)
    shadow_routes: list[list[str]] = field(default_factory=list)

    def observe(self, rv: int, key: Key, event: str, obj: Obj) -> None:
        if key != VS_KEY or obj["metadata"]["name"] != "master-search" or event == "DELETED":
            return
        http = obj["spec"].get("http", [])
        split = next((r for r in http if r.get("name") == ENTRY_ROUTE), None)
        if split is None:
            return
        canary = sum(d.get("weight", 0) for d in split["route"] if d["destination"].get("subset") != "stable")
        self.states.append(("mirror" in split, canary))
        self.shadow_routes.append([r["name"] for r in http if r.get("name") in SHADOW_ROUTES.values()])


def _world(emulator: RunningEmulator) -> tuple[KubeWorld, EntryStates]:
    world = KubeWorld(emulator, cluster=ClusterModel(seed=14, start_delay=(2.0, 10.0)))
    world.seed_stack(replicas=4)
    states = EntryStates()
    emulator.store.observers.append(states.observe)
    return world, states


def test_a_new_version_that_ranks_alike_passes_its_shadow_phase_then_its_steps(
        emulator: RunningEmulator, invariants: InvariantChecker) -> None:
    world, states = _world(emulator)
    world.create_release(strategy=STRATEGY)
    controller = world.controller()
    stack = MirroredStack(world, same_rankings=True)
    controller.wiring.shadow = stack  # type: ignore[assignment]
    shadowing = world.drive(controller, until=Phase.SHADOWING)
    assert shadowing.phase is Phase.SHADOWING, shadowing.message
    end = world.drive(controller)
    assert end.phase is Phase.SUCCEEDED, f"{end.phase.value}: {end.message}"
    assert end.shadow is not None and end.shadow["verdict"]["decision"] == "pass", end.shadow
    assert stack.looks_mirroring >= 1
    # While mirrored, no user request could reach v2; the mirror and its routes were gone before any weight moved.
    assert all(canary == 0 for mirrored, canary in states.states if mirrored)
    first_weight = next(i for i, (_, canary) in enumerate(states.states) if canary > 0)
    assert not any(mirrored for mirrored, _ in states.states[first_weight:])
    assert not any(states.shadow_routes[first_weight:])
    reasons = [e["reason"] for e in world.objects("events")]
    assert "ShadowStarted" in reasons and "ShadowPassed" in reasons, reasons
    world.assert_valid_writes()  # the mirroring VirtualService and the status with its shadow, against the schemas


def test_a_new_version_that_ranks_differently_is_rolled_back_with_no_user_request_on_it(
        emulator: RunningEmulator, invariants: InvariantChecker) -> None:
    world, states = _world(emulator)
    world.create_release(strategy=STRATEGY)
    controller = world.controller()
    controller.wiring.shadow = MirroredStack(world, same_rankings=False)  # type: ignore[assignment]
    end = world.drive(controller)
    assert end.phase is Phase.ROLLED_BACK and "shadow" in end.message, f"{end.phase.value}: {end.message}"
    assert end.shadow is not None and end.shadow["verdict"]["decision"] == "fail"
    assert any(mirrored for mirrored, _ in states.states)
    assert all(canary == 0 for _, canary in states.states), "the canary weight moved off 0"
    assert end.first_canary_traffic_at is None and end.total_canary_requests == 0
    assert not states.shadow_routes[-1] and not states.states[-1][0]  # no mirror, no shadow route left
    assert [d["metadata"]["name"] for d in world.objects("deployments") if d["metadata"]["name"].endswith("-v2")
            and d["spec"].get("replicas")] == []  # v2 scaled down or removed
    world.assert_valid_writes()
