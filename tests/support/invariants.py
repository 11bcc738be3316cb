"""Release invariants, checked at every state the emulated cluster ever holds (issue 9).

`InvariantChecker.attach(emulator)` registers an observer on the emulator's store: every change it
records (a status write, a route write, a Deployment scaled or made ready, ...) is checked against the
whole state of that namespace at that instant, in resourceVersion order. Violations are collected, not
raised (the observer runs inside the emulator's server), and the test ends with `checker.assert_clean()`
(the `invariants` fixture of `tests/integration/conftest.py` calls it at teardown), which fails on any
violation and on any rule switched off (`tolerate`) that was hit: no test runs with a rule off unnoticed.
A fault a test injects on purpose (a canary that stops being ready under traffic) is excused narrowly with
`allow(rule, match, why)`: only the violations `match` accepts, counted under `why` in `allowed`.

The invariants, read from the raw objects (not through the controller's own code, so a bug there cannot
hide itself):

1. **weights**: every HTTP route of a managed VirtualService with several destinations (or any weight)
   has weights summing to 100.
2. **ready**: every destination that receives traffic is a version running as a Deployment
   `<service>-<version>` with a ready pod, not scaled to 0 and not past its progress deadline. Lanes are
   followed: the entry split's canary-lane destination gets traffic only at a weight > 0, and the other
   services' `canary-lane` routes only while the entry sends traffic into the canary lane.
   **subset**: and it resolves to a subset that its DestinationRule defines (Istio answers 503 to
   requests routed to an undefined subset).
3. **pass**: a release is never Promoting/Succeeded, and its canary version is never a `stable` subset,
   without a `pass` verdict in its decision history (or an operator's: a DecisionRecord with verdict
   `operator`, or `spec.promoteFull`).
4. **off**: once a release recorded that the mesh read back 0% into the canary lane (`canaryOffAt`),
   its routes never send traffic into the canary lane again (within a revision).
5. **forward**: a release's status never moves backwards: phase order (Progressing <-> Paused both
   ways; a final phase is final), step, observedGeneration, the length of the decision history; within
   one `status.revision` (a new revision legitimately starts again from Pending).
6. **owner**: every managed route object names the release it belongs to; at the end
   (`check_final`) every finished release's stack is routed by objects owned by a release that exists.
7. **stable**: every `stable` subset of a managed DestinationRule points at a version whose Deployment
   `<service>-<version>` exists, is not scaled to 0 and has a ready pod (`readyReplicas >= 1`), whether or
   not the mesh sends it traffic at that instant (during a promotion's 100% into the canary lane the
   stable version is what a rollback falls back on). Scope: only versions this checker has seen ready
   (`readyReplicas >= 1`) at an earlier state (`_ever_ready`), and every version a stable subset is
   re-pointed at (from another version: a promotion, an undo) from that write on. A brand-new stack whose
   stable pods are still starting when its routes are first written is not yet held to it (traffic to it
   is the `ready` rule's business). So the rule catches a stable version losing its pods, being scaled
   down or deleted while a stable subset still names it, and a stable subset re-pointed at a version
   without ready pods.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.adapters.istio.render import CANARY_LANE_ROUTE, ENTRY_ROUTE, LABEL_RELEASE, STABLE_LANE_ROUTE
from controller.core.status import HISTORY_BYTES, HISTORY_LIMIT, DecisionRecord
from tests.support.kmock_server import Key, RunningEmulator, Store

Obj = dict[str, Any]
MANAGED = ("app.kubernetes.io/managed-by", "stack-canary")
RELEASES: Key = ("stackcanary.dev", "v1alpha1", "stackreleases")
VIRTUAL_SERVICES: Key = ("networking.istio.io", "v1", "virtualservices")
DESTINATION_RULES: Key = ("networking.istio.io", "v1", "destinationrules")
DEPLOYMENTS: Key = ("apps", "v1", "deployments")
WATCHED = (RELEASES, VIRTUAL_SERVICES, DESTINATION_RULES, DEPLOYMENTS)

_RANK = {"Pending": 0, "Initializing": 1, "Shadowing": 1.5, "Progressing": 2, "Paused": 2, "Promoting": 3,
         "RollingBack": 3, "Succeeded": 4, "RolledBack": 4, "Failed": 4, "Aborted": 4}
FINAL = frozenset({"Succeeded", "RolledBack", "Failed", "Aborted"})
PROMOTED = frozenset({"Promoting", "Succeeded"})
ALLOWING_VERDICTS = frozenset({"pass", "operator"})
RULES = frozenset({"weights", "ready", "subset", "pass", "off", "forward", "owner", "stable"})


@dataclass(frozen=True)
class Violation:
    rule: str
    rv: int
    namespace: str
    what: str

    def __str__(self) -> str:
        return f"[{self.rule}] rv {self.rv} in {self.namespace}: {self.what}"


@dataclass
class InvariantChecker:
    # Rules switched off: their violations are only counted in `tolerated`, and `assert_clean()` fails on
    # any count there (a switched-off rule is for looking at a bug, never for a green test).
    tolerate: frozenset[str] = frozenset()
    violations: list[Violation] = field(default_factory=list)
    by_rule: dict[str, int] = field(default_factory=dict)  # every violation counted, also past those kept
    tolerated: dict[str, int] = field(default_factory=dict)
    # Narrow excuses for faults a test injects on purpose: (rule, match, why); `allowed` counts by why.
    allowances: list[tuple[str, Callable[[Violation], bool], str]] = field(default_factory=list)
    allowed: dict[str, int] = field(default_factory=dict)
    states: int = 0  # states checked
    status_writes: int = 0
    route_writes: int = 0
    _last_status: dict[tuple[str, str], Obj] = field(default_factory=dict)
    _canary_off: set[tuple[str, str, object]] = field(default_factory=set)
    # (namespace, Deployment) held to the `stable` rule: seen with a ready pod, or a stable subset re-pointed at it
    _ever_ready: set[tuple[str, str]] = field(default_factory=set)
    _stable_at: dict[tuple[str, str], str] = field(default_factory=dict)  # (namespace, host) -> stable version
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _store: Store | None = None

    def attach(self, emulator: RunningEmulator) -> InvariantChecker:
        self._store = emulator.store
        emulator.store.observers.append(self.observe)
        return self

    # --- the observer ------------------------------------------------------------------------------------
    def observe(self, rv: int, key: Key, event: str, obj: Obj) -> None:
        if key not in WATCHED:
            return
        ns = str(obj.get("metadata", {}).get("namespace", ""))
        with self._lock:
            self.states += 1
            if key == RELEASES:
                self._release_changed(rv, ns, event, obj)
            elif key in (VIRTUAL_SERVICES, DESTINATION_RULES):
                self.route_writes += 1
            self._check_namespace(rv, ns)

    def allow(self, rule: str, match: Callable[[Violation], bool], why: str) -> None:
        """Excuse the violations of `rule` that `match` accepts (a fault the test caused), counted in
        `allowed[why]` so the test can assert it happened; every other violation stays one."""
        with self._lock:
            self.allowances.append((rule, match, why))

    def _fail(self, rule: str, rv: int, ns: str, what: str) -> None:
        violation = Violation(rule, rv, ns, what)
        excuse = next((why for r, match, why in self.allowances if r == rule and match(violation)), None)
        if excuse is not None:
            self.allowed[excuse] = self.allowed.get(excuse, 0) + 1
        elif rule in self.tolerate:
            self.tolerated[rule] = self.tolerated.get(rule, 0) + 1
        else:
            self.by_rule[rule] = self.by_rule.get(rule, 0) + 1
            if self.by_rule[rule] <= 50:  # kept per rule, so one rule's flood cannot hide another's
                self.violations.append(violation)

    def assert_clean(self) -> None:
        """Fail unless every state checked so far held every rule: no violation, and nothing tolerated."""
        with self._lock:
            shown = "\n".join(map(str, self.violations[:20]))
            assert self.by_rule == {}, f"invariant violations {self.by_rule}:\n{shown}"
            assert self.tolerated == {}, f"rules switched off and hit (a violation all the same): {self.tolerated}"

    def _objects(self, key: Key, ns: str) -> list[Obj]:
        """The stored objects themselves (no copies: we run under the store's lock and only read)."""
        assert self._store is not None, "attach() the checker first"
        return [self._store.objects[(key, ns, name)] for name in self._store.index.get((key, ns), ())]

    # --- 5. statuses move forward --------------------------------------------------------------------------
    def _release_changed(self, rv: int, ns: str, event: str, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        if event == "DELETED" or not status:
            return
        before = self._last_status.get((ns, name))
        self._last_status[(ns, name)] = copy.deepcopy(status)
        if status.get("canaryOffAt") is not None:
            self._canary_off.add((ns, name, status.get("revision")))
        if before is None:
            self.status_writes += 1
            return
        if before == status:
            return
        self.status_writes += 1
        where = f"{name}: {before.get('phase')} -> {status.get('phase')}"
        old_rev, new_rev = before.get("revision"), status.get("revision")
        if old_rev != new_rev:
            if isinstance(old_rev, int) and isinstance(new_rev, int) and new_rev < old_rev:
                self._fail("forward", rv, ns, f"{name}: revision {old_rev} -> {new_rev}")
            return  # a new revision starts again from Pending: nothing else to compare
        old_phase, new_phase = str(before.get("phase", "Pending")), str(status.get("phase", "Pending"))
        if old_phase in FINAL and new_phase != old_phase:
            self._fail("forward", rv, ns, f"{where}: a final phase changed")
        elif _RANK.get(new_phase, -1) < _RANK.get(old_phase, -1):
            self._fail("forward", rv, ns, f"{where}: the phase went back")
        for field_name in ("step", "observedGeneration"):
            if int(status.get(field_name, -1) or 0) < int(before.get(field_name, -1) or 0):
                self._fail("forward", rv, ns, f"{name}: {field_name} {before.get(field_name)} -> "
                                              f"{status.get(field_name)}")
        old_n, new_n = len(before.get("history") or []), len(status.get("history") or [])
        if new_n < old_n and old_n < HISTORY_LIMIT and not _at_budget(status.get("history") or []):
            self._fail("forward", rv, ns, f"{name}: decision history shrank {old_n} -> {new_n}")

    # --- 1-4, 6: the whole namespace at this instant ---------------------------------------------------------
    def _check_namespace(self, rv: int, ns: str) -> None:
        releases = {o["metadata"]["name"]: o for o in self._objects(RELEASES, ns)}
        vss = [o for o in self._objects(VIRTUAL_SERVICES, ns) if _managed(o)]
        drs = {str(o.get("spec", {}).get("host", o["metadata"]["name"])): o
               for o in self._objects(DESTINATION_RULES, ns)}
        deployments = {o["metadata"]["name"]: o for o in self._objects(DEPLOYMENTS, ns)}
        for name, release in releases.items():
            status = release.get("status") or {}
            if status.get("phase") in PROMOTED and not _promotion_allowed(release):
                self._fail("pass", rv, ns, f"{name} is {status.get('phase')} without a pass in its history")
        for obj in [*vss, *(d for d in drs.values() if _managed(d))]:
            if not (obj["metadata"].get("labels") or {}).get(LABEL_RELEASE):
                self._fail("owner", rv, ns, f"{obj['kind']} {obj['metadata']['name']} names no release")
        for host, dr in drs.items():
            if not _managed(dr):
                continue
            owner = releases.get((dr["metadata"].get("labels") or {}).get(LABEL_RELEASE, ""))
            if owner is None:
                continue
            spec = owner.get("spec") or {}
            canary = (spec.get("canary") or {}).get("version")
            stable = _subset_version(dr, "stable")
            if canary and stable == canary and canary != (spec.get("stable") or {}).get("version") \
                    and not _promotion_allowed(owner):
                self._fail("pass", rv, ns, f"stable subset of {host} re-pointed at {canary} without a pass")
        self._check_stable(rv, ns, drs, deployments)
        entry = next((v for v in vss if _route(v, ENTRY_ROUTE) is not None), None)
        lanes = _active_lanes(entry)
        for vs in vss:
            self._check_routes(rv, ns, vs, drs, deployments, lanes)
        if entry is not None and "canary" in lanes:
            owner_name = (entry["metadata"].get("labels") or {}).get(LABEL_RELEASE, "")
            owner = releases.get(owner_name)
            revision = ((owner or {}).get("status") or {}).get("revision")
            if (ns, owner_name, revision) in self._canary_off:
                self._fail("off", rv, ns, f"{owner_name}: traffic into the canary lane after its rollback "
                                          "read back 0%")

    def _check_stable(self, rv: int, ns: str, drs: Mapping[str, Obj], deployments: Mapping[str, Obj]) -> None:
        """7. Every stable subset on a version with a ready pod, once that version had been ready or the subset
        was re-pointed at it."""
        for host, dr in drs.items():
            version = _subset_version(dr, "stable") if _managed(dr) else None
            if version is None:
                continue
            name, before = f"{host}-{version}", self._stable_at.get((ns, host), version)
            self._stable_at[(ns, host)] = version
            if before != version:
                self._ever_ready.add((ns, name))  # re-pointed: held from this write on
            if (ns, name) not in self._ever_ready:
                continue
            deployment = deployments.get(name)
            why = "missing" if deployment is None else _no_ready_pod(deployment)
            if why:
                self._fail("stable", rv, ns, f"stable subset of {host} at {version}, whose Deployment {name} "
                                             f"is {why}")
        for name, deployment in deployments.items():
            if not _no_ready_pod(deployment):
                self._ever_ready.add((ns, name))

    def _check_routes(self, rv: int, ns: str, vs: Obj, drs: Mapping[str, Obj], deployments: Mapping[str, Obj],
                      lanes: set[str]) -> None:
        name = vs["metadata"]["name"]
        for route in vs.get("spec", {}).get("http", []) or []:
            dests = route.get("route") or []
            if len(dests) > 1 or any("weight" in d for d in dests):
                total = sum(int(d.get("weight", 0) or 0) for d in dests)
                if total != 100:
                    self._fail("weights", rv, ns, f"{name}/{route.get('name')}: weights sum to {total}")
            for dest in dests:
                if not _receives_traffic(route, dest, lanes):
                    continue
                host, subset = dest["destination"].get("host", ""), dest["destination"].get("subset")
                dr = drs.get(host)
                version = _subset_version(dr, subset) if dr is not None and subset else None
                if subset and version is None:
                    self._fail("subset", rv, ns, f"{name}/{route.get('name')}: traffic to subset {subset!r} "
                                                f"that the DestinationRule of {host} does not define")
                    continue
                if version is None:
                    continue
                deployment = deployments.get(f"{host}-{version}")
                why = _not_ready(deployment)
                if why:
                    self._fail("ready", rv, ns, f"{name}/{route.get('name')}: traffic to {host}-{version}, "
                                                f"which is {why}")

    # --- the end ---------------------------------------------------------------------------------------------
    def check_final(self, emulator: RunningEmulator, namespaces: list[str]) -> list[str]:
        """Owner check at the end: each finished release's stack is routed by objects of an existing release."""
        problems: list[str] = []
        for ns in namespaces:
            releases = {o["metadata"]["name"]: o for o in emulator.objects("stackreleases", ns)}
            routes = [o for plural in ("virtualservices", "destinationrules") for o in emulator.objects(plural, ns)]
            for name, release in releases.items():
                phase = (release.get("status") or {}).get("phase")
                services = ((release.get("spec") or {}).get("stack") or {}).get("services") or []
                mine = [o for o in routes if o["metadata"]["name"] in services]
                started = (release.get("status") or {}).get("startedAt") is not None
                if (phase in FINAL and started) or mine:
                    owners = {(o["metadata"].get("labels") or {}).get(LABEL_RELEASE) for o in mine}
                    if len(mine) != 2 * len(services) or not owners <= set(releases):
                        problems.append(f"{ns}/{name} ({phase}): routes {sorted(o['metadata']['name'] for o in mine)}"
                                        f" owned by {owners}")
        return problems


def _managed(obj: Obj | None) -> bool:
    return bool(obj) and (obj or {}).get("metadata", {}).get("labels", {}).get(MANAGED[0]) == MANAGED[1]


def _route(vs: Obj, name: str) -> Obj | None:
    return next((r for r in vs.get("spec", {}).get("http", []) or [] if r.get("name") == name), None)


def _lane_of(dest: Obj) -> str | None:
    sets = ((dest.get("headers") or {}).get("request") or {}).get("set") or {}
    values = set(sets.values()) & {"canary", "stable"}
    return next(iter(values)) if len(values) == 1 else None


def _active_lanes(entry: Obj | None) -> set[str]:
    """The lanes the entry split sends traffic into."""
    if entry is None:
        return set()
    split = _route(entry, ENTRY_ROUTE) or {}
    return {lane for d in split.get("route") or [] if int(d.get("weight", 100) or 0) > 0
            and (lane := _lane_of(d)) is not None}


def _receives_traffic(route: Obj, dest: Obj, lanes: set[str]) -> bool:
    name = route.get("name")
    if name == ENTRY_ROUTE:
        return int(dest.get("weight", 100) or 0) > 0
    if name == CANARY_LANE_ROUTE:
        return "canary" in lanes
    if name == STABLE_LANE_ROUTE:
        return bool(lanes)
    return int(dest.get("weight", 100) or 0) > 0


def _subset_version(dr: Obj | None, subset: str | None) -> str | None:
    for s in (dr or {}).get("spec", {}).get("subsets", []) or []:
        if s.get("name") == subset:
            version = (s.get("labels") or {}).get("version")
            return str(version) if version is not None else None
    return None


def _not_ready(d: Obj | None) -> str:
    """Why a Deployment cannot serve ('' when it can): read from its status, as kubectl would."""
    if d is None:
        return "missing"
    spec, status = d.get("spec", {}), d.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            return "past its progress deadline"
    if int(spec.get("replicas", 1)) == 0:
        return "scaled to 0"
    # Serving needs ready pods, not a finished rollout: a canary scaled from 1 to 3 pods for a higher
    # weight still serves with the pod it has while the new ones start.
    if int(status.get("readyReplicas", 0) or 0) < 1:
        return "without a ready pod"
    return ""


def _no_ready_pod(d: Obj) -> str:
    """Why a Deployment has no pod to serve with ('' when it has one): scaled to 0, or none ready."""
    if int(d.get("spec", {}).get("replicas", 1)) == 0:
        return "scaled to 0"
    return "without a ready pod" if int((d.get("status") or {}).get("readyReplicas", 0) or 0) < 1 else ""


def _promotion_allowed(release: Obj) -> bool:
    spec, status = release.get("spec") or {}, release.get("status") or {}
    if spec.get("promoteFull"):
        return True
    return any(h.get("verdict") in ALLOWING_VERDICTS for h in status.get("history") or [])


def _at_budget(history: list[Any]) -> bool:
    """The decisions fill their byte budget: one more compacted decision would not fit (so the oldest go)."""
    records = [DecisionRecord.from_storage(r) for r in history]
    if not records:
        return False
    sizes = sum(r.stored_size() for r in records)
    return sizes + max(r.compact().stored_size() for r in records) > HISTORY_BYTES
