"""A user's VirtualService adopted by the controller, against the API emulator (issue 14).

- the settings of the user's default route (timeout, retries, ...) stay in effect on the controller's
  routes at every stored state of a whole release, promotion included; the user's routes with a match
  stay in front of the controller's;
- a default route the controller cannot carry (a redirect) stops the release's route writes with a plain
  reason and writes nothing, until the user changes it;
- writes are make-before-break: at no stored state does a VirtualService route to a subset that its
  DestinationRule does not define (Istio answers 503 there), checked at every change the store records,
  and the order of the writes is: subsets added, routes changed, subsets removed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from controller.adapters.istio.validate import service_name_of
from controller.adapters.kubernetes.client import DESTINATION_RULES, VIRTUAL_SERVICES, KubeApi
from controller.adapters.kubernetes.routing import IstioRouter, is_owned_route
from controller.core.plan import RoutingPlan, ServiceVersions, ShadowRoutes
from controller.core.status import Phase
from tests.support.fakes import VersionModel
from tests.support.kmock_server import Key, RunningEmulator
from tests.support.kube_world import NAMESPACE, SERVICES, KubeWorld, cluster_world

Obj = dict[str, Any]
VS_KEY: Key = ("networking.istio.io", "v1", "virtualservices")
DR_KEY: Key = ("networking.istio.io", "v1", "destinationrules")
TIMEOUT = "3s"
RETRIES = {"attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx,connect-failure"}
ADMIN = {"name": "admin", "match": [{"uri": {"prefix": "/admin"}}], "route": [{"destination": {"host": "admin"}}]}


def default_route(service: str, **settings: Any) -> Obj:
    return {"name": "default", "route": [{"destination": {"host": service}}], **settings}


def user_virtual_service(name: str, http: list[Obj], hosts: list[str] | None = None, **spec: Any) -> Obj:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "labels": {"team": "search"}},
            "spec": {"hosts": hosts or [name], "http": http, **spec}}


@dataclass
class RouteStates:
    """Every state of the namespace's VirtualServices and DestinationRules the store ever held, checked as
    it happens: a VirtualService destination (or mirror) naming a subset of a service must find that subset
    in the service's DestinationRule. Violations are collected (the observer runs inside the emulator)."""

    rules: dict[str, Obj] = field(default_factory=dict)
    routes: dict[str, Obj] = field(default_factory=dict)
    history: list[tuple[int, str, Obj]] = field(default_factory=list)  # (rv, VirtualService name, object)
    undefined: list[str] = field(default_factory=list)
    states: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, emulator: RunningEmulator) -> RouteStates:
        emulator.store.observers.append(self.observe)
        return self

    def observe(self, rv: int, key: Key, event: str, obj: Obj) -> None:
        if key not in (VS_KEY, DR_KEY) or obj["metadata"].get("namespace") != NAMESPACE:
            return
        with self.lock:
            objects = self.routes if key == VS_KEY else self.rules
            name = obj["metadata"]["name"]
            if event == "DELETED":
                objects.pop(name, None)
            else:
                objects[name] = obj
            if key == VS_KEY:
                self.history.append((rv, name, obj))
            self.states += 1
            self._check(rv)

    def _check(self, rv: int) -> None:
        defined = {service_name_of(dr["spec"]["host"]): {s["name"] for s in dr["spec"].get("subsets", [])}
                   for dr in self.rules.values()}
        for name, vs in self.routes.items():
            for route in vs["spec"].get("http", []):
                targets = [d["destination"] for d in route.get("route", [])]
                targets += [route["mirror"]] if "mirror" in route else []
                for dest in targets:
                    subset, service = dest.get("subset"), service_name_of(dest["host"])
                    if subset and subset not in defined.get(service, set()):
                        self.undefined.append(f"rv {rv}: VirtualService {name} route {route.get('name')} -> "
                                              f"{dest['host']}/{subset}, defined: {defined.get(service)}")

    def written_by_controller(self, name: str) -> list[Obj]:
        with self.lock:
            return [vs for _, n, vs in self.history if n == name and any(is_owned_route(r) for r in vs["spec"]["http"])]


@pytest.fixture
def world(emulator: RunningEmulator) -> KubeWorld:
    """The cluster-like world: 4 pods per service, an HPA on ml-infer, new pods ready after 2-10 s."""
    return cluster_world(emulator)


def assert_user_settings_kept(vs: Obj, timeout: str, first: str | None) -> None:
    """Every route of the controller's carries the user's timeout and retries; the user's match route (if
    any) is first and their default route last, unchanged."""
    http = vs["spec"]["http"]
    ours = [r for r in http if is_owned_route(r)]
    assert ours, vs["spec"]
    for route in ours:
        assert (route.get("timeout"), route.get("retries")) == (timeout, RETRIES), route
    if first is not None:
        assert http[0] == ADMIN
    assert http[-1]["name"] == "default" and http[-1]["timeout"] == timeout


def test_user_timeout_and_retries_survive_a_whole_release(world: KubeWorld, emulator: RunningEmulator) -> None:
    world.api.create(VIRTUAL_SERVICES, NAMESPACE, user_virtual_service(
        "master-search", [ADMIN, default_route("master-search", timeout=TIMEOUT, retries=RETRIES)],
        hosts=["master-search", "search.example.com"], gateways=["search-gateway"]))
    world.api.create(VIRTUAL_SERVICES, NAMESPACE, user_virtual_service(
        "ml-infer", [default_route("ml-infer", timeout="2s", retries=RETRIES)]))
    states = RouteStates().attach(emulator)
    world.create_release()
    assert world.drive(world.controller()).phase is Phase.SUCCEEDED

    entry_states = states.written_by_controller("master-search")
    weights = set()
    for vs in entry_states:
        assert_user_settings_kept(vs, TIMEOUT, first="admin")
        split = next(r for r in vs["spec"]["http"] if r["name"] == "release-split")
        weights.add(split["route"][1]["weight"])
    assert {10, 25, 50, 100} <= weights, weights  # every step, and promotion's 100% before the cut-over
    lane_states = states.written_by_controller("ml-infer")
    assert len(lane_states) >= 2  # the canary lane added, then removed at the cut-over
    for vs in lane_states:
        assert_user_settings_kept(vs, "2s", first=None)

    final = {vs["metadata"]["name"]: vs for vs in world.objects("virtualservices")}
    assert_user_settings_kept(final["master-search"], TIMEOUT, first="admin")
    assert [r["name"] for r in final["master-search"]["spec"]["http"]] == ["admin", "release-split", "default"]
    assert [r["name"] for r in final["ml-infer"]["spec"]["http"]] == ["stable-lane", "default"]
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    assert plan is not None and plan.canary_weight == 0 and {s.stable for s in plan.services} == {"v2"}
    assert states.undefined == []
    world.assert_valid_writes()


def test_a_redirect_on_the_default_route_is_refused_until_the_user_changes_it(
        world: KubeWorld, caplog: pytest.LogCaptureFixture) -> None:
    redirecting = user_virtual_service("master-search", [ADMIN, {"name": "default", "redirect": {"uri": "/v1"}}])
    world.api.create(VIRTUAL_SERVICES, NAMESPACE, redirecting)
    world.create_release()
    controller = world.controller()
    caplog.set_level(logging.DEBUG, logger="controller.reconciler")
    assert world.drive(controller, rounds=30).phase is not Phase.SUCCEEDED
    # Retried every tick, but warned of once: the condition keeps saying it.
    tries = [r for r in caplog.records if r.getMessage().startswith("action ApplyRouting failed")]
    assert len(tries) > 3 and [r.levelno for r in tries].count(logging.WARNING) == 1, len(tries)
    failed = [a for r in controller.last_results.values() for a in r.failed_actions]
    assert failed and failed[-1] == (
        "ApplyRouting: VirtualService master-search: the default route 'default' of master-search answers with "
        "'redirect' instead of forwarding to master-search, so a release could not split its traffic: give that "
        "route a match, or remove it")
    # Refused before any write: no route of the user's dropped, no subset half-added.
    assert [vs["spec"] for vs in world.objects("virtualservices")] == [redirecting["spec"]]
    assert world.objects("destinationrules") == []
    # Said where operators look: a condition on the release and one warning Event, not only the log.
    refused = world.status().condition("ActionsApplied")
    assert refused is not None and refused.status == "False" and refused.message == failed[-1]
    events = [e for e in world.objects("events") if e["reason"] == "ActionRefused"]
    assert len(events) == 1 and events[0]["type"] == "Warning"

    world.api.patch(VIRTUAL_SERVICES, NAMESPACE, "master-search", {"spec": {"http": [
        ADMIN, default_route("master-search", timeout=TIMEOUT, retries=RETRIES)]}})
    done = world.drive(controller)
    assert done.phase is Phase.SUCCEEDED and done.condition("ActionsApplied").status == "True"
    entry = next(vs for vs in world.objects("virtualservices") if vs["metadata"]["name"] == "master-search")
    assert_user_settings_kept(entry, TIMEOUT, first="admin")
    world.assert_valid_writes()


def plan(weight: int, canary: str | None = "v2") -> RoutingPlan:
    return RoutingPlan(namespace=NAMESPACE, entry="master-search", owner="search-v2", canary_weight=weight,
                       services=tuple(ServiceVersions(s, "v1", canary) for s in SERVICES))


def write_runs(emulator: RunningEmulator, since: int) -> list[str]:
    """The kinds written since `since`, consecutive writes of one kind as one run."""
    runs: list[str] = []
    for w in emulator.emulator.write_log[since:]:
        if w.plural in ("virtualservices", "destinationrules") and (not runs or runs[-1] != w.plural):
            runs.append(w.plural)
    return runs


def test_subsets_are_added_before_and_removed_after_the_routes_that_use_them(emulator: RunningEmulator) -> None:
    api = KubeApi.for_url(emulator.url)
    api.create(VIRTUAL_SERVICES, NAMESPACE, user_virtual_service(
        "ml-search", [default_route("ml-search", timeout=TIMEOUT, retries=RETRIES)]))
    api.create(DESTINATION_RULES, NAMESPACE, {
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "ml-search"},
        "spec": {"host": "ml-search", "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 100}}}}})
    states = RouteStates().attach(emulator)
    router = IstioRouter(api, NAMESPACE, SERVICES)
    router.apply(plan(0, canary=None))

    mark = len(emulator.emulator.write_log)
    router.apply(plan(10))  # canary subsets and lanes appear
    assert write_runs(emulator, mark) == ["destinationrules", "virtualservices"]
    for weight, next_plan in ((100, plan(100)), (0, plan(100).promoted())):
        mark = len(emulator.emulator.write_log)
        router.apply(next_plan)
        if weight == 0:  # the cut-over: stable re-pointed (canary kept), routes moved, then canary removed
            assert write_runs(emulator, mark) == ["destinationrules", "virtualservices", "destinationrules"]
    rules = {dr["metadata"]["name"]: dr for dr in emulator.objects("destinationrules", NAMESPACE)}
    assert {s["name"] for dr in rules.values() for s in dr["spec"]["subsets"]} == {"stable"}
    assert rules["ml-search"]["spec"]["trafficPolicy"] == {"connectionPool": {"http": {"http2MaxRequests": 100}}}
    assert states.states >= 25 and states.undefined == []


def test_no_stored_state_routes_to_an_undefined_subset_in_a_rollback(emulator: RunningEmulator) -> None:
    world = KubeWorld(emulator, models={"v2": VersionModel(error_rate=0.25)})
    world.seed_stack()
    world.api.create(VIRTUAL_SERVICES, NAMESPACE, user_virtual_service(
        "keyword", [default_route("keyword", timeout=TIMEOUT, retries=RETRIES)]))
    states = RouteStates().attach(emulator)
    world.create_release()
    assert world.drive(world.controller()).phase is Phase.ROLLED_BACK
    canary_seen = any(r["name"] == "canary-lane" for vs in states.written_by_controller("keyword")
                      for r in vs["spec"]["http"])
    assert canary_seen and states.undefined == []
    for vs in states.written_by_controller("keyword"):
        assert_user_settings_kept(vs, TIMEOUT, first=None)
    world.assert_valid_writes()


def test_a_shadow_phase_on_a_gateway_bound_entry_is_for_the_mesh_only_and_leaves_no_route_behind(
        emulator: RunningEmulator) -> None:
    """The user's entry VirtualService is bound to an ingress gateway: the shadow routes the controller adds match
    the mesh only (no user names a version through the gateway), they are the controller's (read back as the
    plan's), and the first step's write removes them, the mirror with them; the user's settings stay throughout."""
    api = KubeApi.for_url(emulator.url)
    api.create(VIRTUAL_SERVICES, NAMESPACE, user_virtual_service(
        "master-search", [default_route("master-search", timeout=TIMEOUT, retries=RETRIES)],
        hosts=["master-search", "search.example.com"], gateways=["search/search-gateway", "mesh"]))
    router = IstioRouter(api, NAMESPACE, SERVICES)
    shadowed = plan(0).with_shadow(ShadowRoutes("canary-shadow", percent=25.0))
    router.apply(shadowed)
    entry = next(o for o in emulator.objects("virtualservices", NAMESPACE) if o["metadata"]["name"] == "master-search")
    names = [r.get("name") for r in entry["spec"]["http"]]
    assert names == ["shadow-stable", "shadow-canary", "release-split", "default"], names
    for route in entry["spec"]["http"][:2]:
        assert route["match"][0]["gateways"] == ["mesh"] and route["timeout"] == TIMEOUT
    split = entry["spec"]["http"][2]
    assert split["mirror"] == {"host": "canary-shadow", "port": {"number": 8000}}
    assert split["mirrorPercentage"] == {"value": 25.0}
    assert entry["spec"]["gateways"] == ["search/search-gateway", "mesh"]
    back = router.in_effect()
    assert back is not None and back.equivalent(shadowed) and back.shadow == shadowed.shadow

    router.apply(plan(10))
    entry = next(o for o in emulator.objects("virtualservices", NAMESPACE) if o["metadata"]["name"] == "master-search")
    assert [r.get("name") for r in entry["spec"]["http"]] == ["release-split", "default"]
    assert "mirror" not in entry["spec"]["http"][0] and entry["spec"]["http"][0]["timeout"] == TIMEOUT
    assert router.in_effect() is not None and router.in_effect().shadow is None  # type: ignore[union-attr]
