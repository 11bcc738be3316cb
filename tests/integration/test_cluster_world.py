"""A test world that behaves like a cluster (issue 14): pods that take their time, and releases through it.

The first tests hold the world itself (`tests.support.cluster.ClusterModel` behind the API emulator) to what
a cluster does, read back over HTTP with the project's client: pods get ready after their start delays,
pods that never get ready take their Deployment past its progress deadline, evicted pods are replaced, an
HPA moves its Deployment within its bounds and writes its status, and the driver plays every change of the
cluster at the moment it happens.

The last ones run the real controller through that world: a 10-replica stack (ml-infer autoscaled) released
while every new pod takes 2-10 s to get ready must be promoted through every step, without ever sending
all of a service's requests to a version with fewer ready pods than the stable one had; and releases one
after the other, then an undo, must never point a stable subset at a version without ready pods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from controller.adapters.istio.render import CANARY_LANE_ROUTE, ENTRY_ROUTE
from controller.adapters.kubernetes.client import DEPLOYMENTS, HPAS
from controller.adapters.kubernetes.workloads import deployment_readiness
from controller.core.status import Phase
from tests.support.cluster import ClusterModel
from tests.support.invariants import InvariantChecker
from tests.support.kmock_server import Key, RunningEmulator, Store
from tests.support.kube_world import NAMESPACE, SERVICES, KubeWorld, autoscaler, stable_deployment

pytestmark = pytest.mark.integration

Obj = dict[str, Any]
SEED = 14
DEPLOYMENT_KEY: Key = ("apps", "v1", "deployments")
VS_KEY: Key = ("networking.istio.io", "v1", "virtualservices")
DR_KEY: Key = ("networking.istio.io", "v1", "destinationrules")


@pytest.fixture
def world(emulator: RunningEmulator) -> KubeWorld:
    return KubeWorld(emulator, cluster=ClusterModel(seed=SEED))


def model(world: KubeWorld) -> ClusterModel:
    assert world.cluster is not None
    return world.cluster


def read(world: KubeWorld, name: str) -> Obj:
    """The Deployment as any client sees it: over HTTP, through the project's client."""
    return world.api.get(DEPLOYMENTS, NAMESPACE, name)


def status(world: KubeWorld, name: str) -> Obj:
    found: Obj = read(world, name).get("status") or {}
    return found


def condition(world: KubeWorld, name: str, kind: str) -> Obj:
    return next(c for c in status(world, name).get("conditions", []) if c["type"] == kind)


def ready(world: KubeWorld, name: str) -> int:
    return int(status(world, name).get("readyReplicas", 0))


def deployment(service: str, version: str = "v1", replicas: int = 4, image: str | None = None) -> Obj:
    body = stable_deployment(service, version, replicas=replicas)
    if image is not None:
        body["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return body


def wait_until(world: KubeWorld, done: Callable[[], bool], within: float) -> float:
    """Move the fake clock event by event until `done()` holds; the fake seconds it took (fails past `within`)."""
    start = world.clock.t
    while not done():
        event = model(world).next_event()
        assert event is not None and event - start <= within, f"not within {within} s (next event: {event})"
        world.pass_time(event - world.clock.t)
    return world.clock.t - start


# --- the world itself ------------------------------------------------------------------------------------------

def test_pods_get_ready_after_their_own_start_delays_and_the_status_follows(world: KubeWorld) -> None:
    t0 = world.clock.t
    world.api.create(DEPLOYMENTS, NAMESPACE, deployment("keyword", replicas=4))
    fresh = status(world, "keyword-v1")
    assert fresh["observedGeneration"] == 1
    assert (fresh.get("replicas"), fresh.get("updatedReplicas"), fresh.get("readyReplicas")) == (4, 4, None)
    assert fresh.get("unavailableReplicas") == 4
    assert condition(world, "keyword-v1", "Progressing")["reason"] == "NewReplicaSetCreated"
    assert condition(world, "keyword-v1", "Available")["status"] == "False"
    delays = sorted(p.ready_at - t0 for p in model(world).pods("keyword-v1") if p.ready_at is not None)
    assert len(delays) == 4 and all(2.0 <= d <= 10.0 for d in delays) and len(set(delays)) == 4, delays
    for i, delay in enumerate(delays):  # one more ready pod at each pod's own moment, not before
        world.pass_time(t0 + delay - 0.01 - world.clock.t)
        assert ready(world, "keyword-v1") == i
        assert not deployment_readiness(read(world, "keyword-v1")).ready
        world.pass_time(0.01)
        assert ready(world, "keyword-v1") == i + 1
    done = status(world, "keyword-v1")
    assert (done["availableReplicas"], done.get("unavailableReplicas")) == (4, None)
    assert condition(world, "keyword-v1", "Progressing")["reason"] == "NewReplicaSetAvailable"
    assert condition(world, "keyword-v1", "Available")["status"] == "True"
    assert deployment_readiness(read(world, "keyword-v1")).ready
    world.assert_valid_writes()


def test_scaling_down_is_at_once_and_scaling_up_waits_for_the_new_pods(world: KubeWorld) -> None:
    world.api.create(DEPLOYMENTS, NAMESPACE, deployment("keyword", replicas=4))
    wait_until(world, lambda: ready(world, "keyword-v1") == 4, within=10)
    world.api.patch(DEPLOYMENTS, NAMESPACE, "keyword-v1", {"spec": {"replicas": 1}})
    shrunk = status(world, "keyword-v1")
    assert (shrunk["observedGeneration"], shrunk["replicas"], shrunk["readyReplicas"]) == (2, 1, 1)
    world.api.patch(DEPLOYMENTS, NAMESPACE, "keyword-v1", {"spec": {"replicas": 3}})
    grown = status(world, "keyword-v1")
    assert (grown["observedGeneration"], grown["replicas"], grown["readyReplicas"]) == (3, 3, 1)
    assert not deployment_readiness(read(world, "keyword-v1")).ready
    took = wait_until(world, lambda: ready(world, "keyword-v1") == 3, within=10)
    assert took >= 2.0
    # A rollout that completed is not timed again when it is scaled later (as with the real controller).
    assert condition(world, "keyword-v1", "Progressing")["reason"] == "NewReplicaSetAvailable"


@pytest.mark.parametrize("broken", ["registry.example/keyword:6.6", "v6"], ids=["by-image", "by-version"])
def test_pods_that_never_get_ready_take_the_deployment_past_its_progress_deadline(world: KubeWorld,
                                                                                  broken: str) -> None:
    model(world).never_ready[broken] = "CrashLoopBackOff"
    world.api.create(DEPLOYMENTS, NAMESPACE, deployment("keyword", "v6", replicas=2,
                                                        image="registry.example/keyword:6.6"))
    assert {p.waiting for p in model(world).pods("keyword-v6")} == {"CrashLoopBackOff"}
    world.pass_time(119.5)  # stable_deployment's progressDeadlineSeconds is 120
    assert condition(world, "keyword-v6", "Progressing")["status"] == "True"
    assert not deployment_readiness(read(world, "keyword-v6")).failed
    world.pass_time(0.5)
    stuck = condition(world, "keyword-v6", "Progressing")
    assert (stuck["status"], stuck["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert status(world, "keyword-v6").get("readyReplicas") is None
    assert status(world, "keyword-v6")["unavailableReplicas"] == 2
    assert deployment_readiness(read(world, "keyword-v6")).failed
    # Other versions are not touched by the mark.
    world.api.create(DEPLOYMENTS, NAMESPACE, deployment("ml-search", "v5", replicas=2))
    wait_until(world, lambda: ready(world, "ml-search-v5") == 2, within=10)


def test_the_emulators_own_image_knobs_still_hold_in_the_cluster_world(world: KubeWorld,
                                                                       emulator: RunningEmulator) -> None:
    emulator.emulator.failing_images.add("registry.example/keyword:7.0")
    emulator.emulator.slow_images.add("registry.example/ml-search:7.0")
    world.api.create(DEPLOYMENTS, NAMESPACE, deployment("keyword", "v7", 2, image="registry.example/keyword:7.0"))
    world.api.create(DEPLOYMENTS, NAMESPACE, deployment("ml-search", "v7", 2, image="registry.example/ml-search:7.0"))
    assert deployment_readiness(read(world, "keyword-v7")).failed  # past its deadline at once, as before
    world.pass_time(60)
    slow = deployment_readiness(read(world, "ml-search-v7"))
    assert not slow.ready and not slow.failed and ready(world, "ml-search-v7") == 0


def test_evicted_pods_lower_readiness_at_once_then_are_replaced_with_their_delay(world: KubeWorld) -> None:
    world.api.create(DEPLOYMENTS, NAMESPACE, deployment("keyword", replicas=4))
    wait_until(world, lambda: ready(world, "keyword-v1") == 4, within=10)
    evicted = model(world).evict("keyword-v1", 2)
    after = status(world, "keyword-v1")
    assert (after["readyReplicas"], after["availableReplicas"], after["unavailableReplicas"]) == (2, 2, 2)
    assert after["replicas"] == 4  # the replacements exist already, not ready yet
    assert condition(world, "keyword-v1", "Available")["status"] == "False"  # 2 < 4 - maxUnavailable (1)
    assert not deployment_readiness(read(world, "keyword-v1")).ready
    world.pass_time(1.9)
    assert ready(world, "keyword-v1") == 2
    took = wait_until(world, lambda: ready(world, "keyword-v1") == 4, within=10)
    assert 0.1 <= took <= 8.1
    names = {p.name for p in model(world).pods("keyword-v1")}
    assert len(names) == 4 and not names & set(evicted)
    assert condition(world, "keyword-v1", "Progressing")["reason"] == "NewReplicaSetAvailable"
    assert deployment_readiness(read(world, "keyword-v1")).ready


def hpa_status(world: KubeWorld, name: str) -> Obj:
    found: Obj = world.api.get(HPAS, NAMESPACE, name).get("status") or {}
    return found


def hpa_condition(world: KubeWorld, name: str, kind: str) -> tuple[str, str]:
    c = next(c for c in hpa_status(world, name).get("conditions", []) if c["type"] == kind)
    return c["status"], c["reason"]


def test_an_hpa_moves_its_deployment_within_its_bounds_and_writes_its_status(world: KubeWorld) -> None:
    world.api.create(DEPLOYMENTS, NAMESPACE, deployment("keyword", replicas=3))
    world.api.create(HPAS, NAMESPACE, autoscaler("keyword", lowest=2, highest=6))
    assert (hpa_status(world, "keyword")["currentReplicas"], hpa_status(world, "keyword")["desiredReplicas"]) == (3, 3)
    model(world).set_load("keyword", 9)  # more than its maximum
    took = wait_until(world, lambda: read(world, "keyword-v1")["spec"]["replicas"] != 3, within=15)
    assert 0 < took <= 15
    assert read(world, "keyword-v1")["spec"]["replicas"] == 6
    assert hpa_status(world, "keyword")["desiredReplicas"] == 6
    assert hpa_condition(world, "keyword", "ScalingLimited") == ("True", "TooManyReplicas")
    wait_until(world, lambda: hpa_status(world, "keyword")["currentReplicas"] == 6, within=15)
    wait_until(world, lambda: ready(world, "keyword-v1") == 6, within=10)
    assert "lastScaleTime" in hpa_status(world, "keyword")
    model(world).set_load("keyword", 1)  # less than its minimum
    wait_until(world, lambda: read(world, "keyword-v1")["spec"]["replicas"] != 6, within=15)
    assert (read(world, "keyword-v1")["spec"]["replicas"], ready(world, "keyword-v1")) == (2, 2)
    assert hpa_condition(world, "keyword", "ScalingLimited") == ("True", "TooFewReplicas")
    # At 0 replicas a Deployment is not autoscaled, whatever the load.
    world.api.patch(DEPLOYMENTS, NAMESPACE, "keyword-v1", {"spec": {"replicas": 0}})
    model(world).set_load("keyword", 5)
    world.pass_time(60)
    assert read(world, "keyword-v1")["spec"]["replicas"] == 0
    assert hpa_condition(world, "keyword", "ScalingActive") == ("False", "ScalingDisabled")
    assert hpa_status(world, "keyword")["desiredReplicas"] == 0
    world.assert_valid_writes()


def test_an_hpa_copy_for_one_deployment_follows_a_load_set_for_that_deployment(world: KubeWorld) -> None:
    world.api.create(DEPLOYMENTS, NAMESPACE, deployment("ml-infer", "v1", replicas=4))
    world.api.create(DEPLOYMENTS, NAMESPACE, deployment("ml-infer", "v2", replicas=1))
    world.api.create(HPAS, NAMESPACE, autoscaler("ml-infer", "v1", lowest=2, highest=8))
    copy = autoscaler("ml-infer", "v2", lowest=1, highest=8)
    copy["metadata"]["name"] = "ml-infer-v2"
    world.api.create(HPAS, NAMESPACE, copy)
    model(world).set_load("ml-infer", 5)
    model(world).set_load("ml-infer-v2", 3)  # the Deployment's own load wins over its service's
    world.pass_time(30)
    assert read(world, "ml-infer-v1")["spec"]["replicas"] == 5
    assert read(world, "ml-infer-v2")["spec"]["replicas"] == 3
    assert (hpa_status(world, "ml-infer-v2")["currentReplicas"], hpa_status(world, "ml-infer-v2")["desiredReplicas"]
            ) == (3, 3)


def test_the_driver_plays_every_change_of_the_cluster_at_its_own_moment(emulator: RunningEmulator) -> None:
    """While the controller runs a release, every pod's readiness reaches the store at the fake instant the
    pod got ready: the driver never jumps the clock past a moment the cluster changes."""
    world = KubeWorld(emulator, cluster=ClusterModel(seed=SEED))
    world.seed_stack(replicas=3)
    cluster = model(world)
    increases: list[tuple[str, float, int]] = []
    last = {f"{s}-v1": ready_pods(emulator.store, NAMESPACE, f"{s}-v1") for s in SERVICES}

    def observe(rv: int, key: Key, event: str, obj: Obj) -> None:
        if key == DEPLOYMENT_KEY:
            name, now = obj["metadata"]["name"], int((obj.get("status") or {}).get("readyReplicas", 0))
            if now > last.get(name, 0):
                increases.append((name, world.clock.t, now))
            last[name] = now

    emulator.store.observers.append(observe)
    world.create_release()
    assert world.drive(world.controller()).phase is Phase.SUCCEEDED
    started = [p for p in cluster.started if p.name.split("-v2-")[0] in SERVICES]
    assert len(started) >= 3 * len(SERVICES)  # the canaries were scaled to the stable size: pods started
    moments = {(p.name.rsplit("-", 2)[0], p.ready_at) for p in cluster.started}
    late = [(name, t) for name, t, _ in increases if (name, t) not in moments]
    assert [i for i in increases if i[0].endswith("-v2")], increases
    assert late == [], f"readiness written after the moment it happened: {late[:5]}"


# --- the controller in that world ---------------------------------------------------------------------------

def lane_shares(store: Store, ns: str) -> dict[str, dict[str, int]]:
    """Per service, the percent of its requests each version gets, read from the stored route objects
    themselves (the entry's weighted split into lanes, the other services' lane routes, the subsets)."""
    vss = [store.objects[(VS_KEY, ns, n)] for n in store.index.get((VS_KEY, ns), ())]
    drs = {store.objects[(DR_KEY, ns, n)]["spec"].get("host"): store.objects[(DR_KEY, ns, n)]
           for n in store.index.get((DR_KEY, ns), ())}

    def version(host: str, subset: str) -> str:
        subsets = drs.get(host, {}).get("spec", {}).get("subsets") or []
        return str(next((s["labels"]["version"] for s in subsets if s["name"] == subset), "?"))

    entry = next((v for v in vss for r in v["spec"].get("http", []) if r.get("name") == ENTRY_ROUTE), None)
    if entry is None:
        return {}
    shares: dict[str, dict[str, int]] = {}
    lanes = {"stable": 0, "canary": 0}
    host = entry["spec"]["hosts"][0]
    for dest in next(r for r in entry["spec"]["http"] if r.get("name") == ENTRY_ROUTE)["route"]:
        lane = next(iter(dest.get("headers", {}).get("request", {}).get("set", {}).values()), "stable")
        weight = int(dest.get("weight", 100))
        lanes[lane] += weight
        v = version(host, dest["destination"]["subset"])
        shares.setdefault(host, {})[v] = shares.get(host, {}).get(v, 0) + weight
    for vs in vss:
        if vs is entry:
            continue
        host, http = vs["spec"]["hosts"][0], vs["spec"].get("http", [])
        canary = next((r for r in http if r.get("name") == CANARY_LANE_ROUTE), None)
        rest = next(r for r in http if r.get("name") != CANARY_LANE_ROUTE)
        split = shares.setdefault(host, {})
        taken = lanes["canary"] if canary is not None else 0
        if canary is not None:
            v = version(host, canary["route"][0]["destination"]["subset"])
            split[v] = split.get(v, 0) + taken
        v = version(host, rest["route"][0]["destination"]["subset"])
        split[v] = split.get(v, 0) + 100 - taken
    return {s: {v: w for v, w in split.items() if w > 0} for s, split in shares.items()}


def ready_pods(store: Store, ns: str, name: str) -> int:
    d = store.objects.get((DEPLOYMENT_KEY, ns, name))
    return int(((d or {}).get("status") or {}).get("readyReplicas", 0))


@dataclass
class CapacityWatch:
    """At every change the store records: a version that gets all of a service's requests has at least as
    many ready pods as the stable version had when the release began."""

    store: Store
    baseline: dict[str, int]
    violations: list[str] = field(default_factory=list)
    whole: set[tuple[str, str]] = field(default_factory=set)  # (service, version) seen taking all requests
    entry_weights: list[int] = field(default_factory=list)

    def observe(self, rv: int, key: Key, event: str, obj: Obj) -> None:
        if key not in (VS_KEY, DR_KEY, DEPLOYMENT_KEY) or obj["metadata"].get("namespace") != NAMESPACE:
            return
        shares = lane_shares(self.store, NAMESPACE)
        canary_weight = sum(w for v, w in shares.get("master-search", {}).items() if v != "v1")
        if not self.entry_weights or self.entry_weights[-1] != canary_weight:
            self.entry_weights.append(canary_weight)
        for service, split in shares.items():
            if list(split.values()) != [100]:
                continue
            (version,) = split
            self.whole.add((service, version))
            have = ready_pods(self.store, NAMESPACE, f"{service}-{version}")
            if have < self.baseline[service] and len(self.violations) < 50:
                self.violations.append(f"rv {rv} ({key[2]} {obj['metadata']['name']} {event}): all of {service} "
                                       f"to {version} with {have} ready pods, the stable had "
                                       f"{self.baseline[service]}")


def ten_replica_world(emulator: RunningEmulator) -> KubeWorld:
    world = KubeWorld(emulator, cluster=ClusterModel(seed=SEED, start_delay=(2.0, 10.0)))
    world.seed_stack(replicas=10, hpa_on=("ml-infer",))
    model(world).set_load("ml-infer", 10)
    world.pass_time(30)
    assert all(ready_pods(emulator.store, NAMESPACE, f"{s}-v1") == 10 for s in SERVICES)
    return world


def event_reasons(world: KubeWorld) -> list[str]:
    return [e["reason"] for e in world.objects("events")]


@pytest.mark.slow
def test_a_ten_replica_stack_with_slow_pods_is_promoted_through_every_step(emulator: RunningEmulator,
                                                                          invariants: InvariantChecker) -> None:
    world = ten_replica_world(emulator)
    watch = CapacityWatch(emulator.store, {s: 10 for s in SERVICES})
    emulator.store.observers.append(watch.observe)
    world.create_release()
    end = world.drive(world.controller())
    assert end.phase is Phase.SUCCEEDED, f"{end.phase.value}: {end.message}"
    reasons = event_reasons(world)
    assert not {"AnalysisFailed", "RolledBack", "RollingBack"} & set(reasons), reasons
    assert all(h.verdict != "fail" for h in end.history)
    steps = [w for w in watch.entry_weights if w]
    assert steps[:4] == [10, 25, 50, 100], f"entry canary weights in order: {watch.entry_weights}"
    promoted = {s: ready_pods(emulator.store, NAMESPACE, f"{s}-v2") for s in SERVICES}
    assert promoted == {s: 10 for s in SERVICES}, f"ready pods of v2 when the release ended: {promoted}"
    assert {s: lane_shares(emulator.store, NAMESPACE)[s] for s in SERVICES} == {s: {"v2": 100} for s in SERVICES}
    world.assert_valid_writes()  # the cluster's statuses too, against Kubernetes' own schema


@pytest.mark.slow
def test_no_service_is_routed_whole_to_a_version_with_fewer_ready_pods_than_the_stable_had(
        emulator: RunningEmulator, invariants: InvariantChecker) -> None:
    world = ten_replica_world(emulator)
    baseline = {s: ready_pods(emulator.store, NAMESPACE, f"{s}-v1") for s in SERVICES}
    watch = CapacityWatch(emulator.store, baseline)
    emulator.store.observers.append(watch.observe)
    world.create_release()
    end = world.drive(world.controller())
    assert watch.violations == [], "\n".join(watch.violations[:8])
    assert end.phase is Phase.SUCCEEDED, f"{end.phase.value}: {end.message}"
    assert {(s, "v2") for s in SERVICES} <= watch.whole  # the check did cover the cut-over


@dataclass
class StableWatch:
    """At every change the store records: every stable subset points at a version with ready pods."""

    store: Store
    violations: list[str] = field(default_factory=list)
    stables: list[str] = field(default_factory=list)  # the stable versions of master-search, as they changed

    def observe(self, rv: int, key: Key, event: str, obj: Obj) -> None:
        if key not in (DR_KEY, DEPLOYMENT_KEY) or obj["metadata"].get("namespace") != NAMESPACE:
            return
        for name in self.store.index.get((DR_KEY, NAMESPACE), ()):
            dr = self.store.objects[(DR_KEY, NAMESPACE, name)]
            host = dr["spec"].get("host")
            for subset in dr["spec"].get("subsets") or []:
                if subset["name"] != "stable":
                    continue
                version = subset["labels"]["version"]
                if host == "master-search" and (not self.stables or self.stables[-1] != version):
                    self.stables.append(version)
                if ready_pods(self.store, NAMESPACE, f"{host}-{version}") < 1 and len(self.violations) < 50:
                    self.violations.append(f"rv {rv} ({key[2]} {obj['metadata']['name']} {event}): stable subset "
                                           f"of {host} at {version}, which has no ready pod")


def next_release(world: KubeWorld, name: str, stable: str, canary: str, tag: str) -> None:
    world.create_release(name=name, stable={"version": stable},
                         canary={"version": canary, "images": {s: f"registry.example/{s}:{tag}" for s in SERVICES}})


@pytest.mark.slow
def test_releases_in_a_row_then_an_undo_keep_every_stable_subset_on_ready_pods(
        emulator: RunningEmulator, invariants: InvariantChecker) -> None:
    world = ten_replica_world(emulator)
    watch = StableWatch(emulator.store)
    emulator.store.observers.append(watch.observe)
    controller = world.controller()
    plan = [("search-v2", "v1", "v2", "2.0"), ("search-v3", "v2", "v3", "3.0"), ("search-v4", "v3", "v4", "4.0"),
            ("search-undo", "v4", "v3", "3.0")]
    ends = {}
    for name, stable, canary, tag in plan:
        next_release(world, name, stable, canary, tag)
        end = world.drive(controller, name=name)
        ends[name] = f"{end.phase.value}: {end.message}"
        assert watch.violations == [], f"after {name}:\n" + "\n".join(watch.violations[:8])
        assert end.phase is Phase.SUCCEEDED, ends
    assert watch.stables == ["v1", "v2", "v3", "v4", "v3"]
    assert {s: ready_pods(emulator.store, NAMESPACE, f"{s}-v3") for s in SERVICES} == {s: 10 for s in SERVICES}
