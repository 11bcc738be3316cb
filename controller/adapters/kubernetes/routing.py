"""The Router port on Istio: DestinationRules and VirtualServices written to the API server.

The objects are exactly `controller.adapters.istio.render.render(plan)` when the controller creates them (an
experiment's DestinationRules also list their variant subsets in an annotation, see below). When an
object of the same name already exists and is not the controller's (say, the base VirtualService from
`istio/` that binds the entry to a Gateway), the controller *adopts* it and merges in only what it owns:

- DestinationRule: the subsets named `stable` and `canary`, and while an A/B experiment runs one subset
  per variant (named after it). The variant subsets the controller added are listed in the annotation
  `stack-canary.dev/variant-subsets`, so that they (and only they) are removed when the experiment ends;
  a user's subset that already has a variant's name and the same labels is used as it is and left alone,
  one with other labels is refused (PermanentError). Other subsets and the traffic policy stay; where our
  subset balances by its own consistent hash (an experiment's user affinity), the rest of the rule's
  `loadBalancer` (its locality settings) is carried into it, since Istio replaces a rule's `loadBalancer` with a
  subset's whole. A DestinationRule of that name for another host is refused with a PermanentError.
- VirtualService: the HTTP routes named `release-split`, `canary-lane` and `stable-lane`, an experiment's
  `assign` route and its `sticky-<variant>`, `cohort-<variant>` and `lane-<variant>` routes (any route whose
  name has one of these prefixes followed by a DNS label is the controller's), and the service's own
  host. User routes with a `match` stay in front of the controller's routes (they are
  more specific); user catch-all routes stay after them, where they take over again once the controller's
  routes are gone. The controller's routes take the traffic of the first user catch-all route, so its
  settings (timeout, retries, fault, corsPolicy, headers, mirror, ...; its destination's port and header
  operations) are carried into each of them (`render.carry_user_settings`), on every write. A user route
  the release would break is refused with a `UserRouteConflict` (PermanentError) before anything is
  written: a catch-all that does not forward to the service itself (redirect, directResponse, delegate,
  other hosts, its own weighted split), any route to the `canary` subset (removed after every release),
  or one that changes the lane header. Other hosts, gateways, tcp/tls routes and every other field stay
  untouched.
- Another release's routes: when the live objects carry the label of another release of this stack that
  is still in flight, the write is refused (PermanentError naming it): the later release waits.
- metadata: the renderer's labels and annotations are added, plus `stack-canary.dev/adopted: "true"` on
  an adopted object; the user's labels and annotations stay. The controller's own annotations that the
  desired object no longer has (`stack-canary.dev/experiment` once an experiment ends, the variant-subset
  list) are removed (a `null` in the merge patch).

Writes are compare-then-patch: the merged object is computed from what is live, and nothing is written
when it equals what is live. Patches carry the resourceVersion read (a concurrent edit gets 409 and the
next tick merges again). After writing, the plan is read back and must be the one applied.

Reading back (`in_effect`) looks only at the parts the controller owns: of each managed object the owned
subsets and routes, the service's own host, no gateways (gateway bindings belong to the Istio manifests),
then `render.read_plan`. A steady-state tick costs two LIST requests (VirtualServices, DestinationRules).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.adapters.istio.experiment import ANNOTATION_EXPERIMENT, ASSIGN_ROUTE
from controller.adapters.istio.render import (
    ANNOTATION_LANE_HEADER,
    CANARY_LANE_ROUTE,
    ENTRY_ROUTE,
    LABEL_RELEASE,
    MANAGED_BY,
    SHADOW_ROUTES,
    STABLE_LANE_ROUTE,
    UncarryableRoute,
    UnreadablePlan,
    carry_user_settings,
    check_user_route,
    mesh_only,
    read_plan,
    render,
)
from controller.adapters.kubernetes.client import DESTINATION_RULES, RELEASES, VIRTUAL_SERVICES, KubeApi, Obj, Resource
from controller.core.plan import RoutingPlan
from controller.core.status import Phase
from controller.ports import PermanentError, TemporaryError

log = logging.getLogger(__name__)

OWNED_ROUTES = frozenset({ENTRY_ROUTE, CANARY_LANE_ROUTE, STABLE_LANE_ROUTE, ASSIGN_ROUTE, *SHADOW_ROUTES.values()})
# An experiment's per-variant routes: `<prefix><variant>`, the variant a DNS label
# (controller.adapters.istio.experiment).
OWNED_ROUTE_PATTERN = re.compile(r"^(sticky|cohort|lane)-[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
OWNED_SUBSETS = frozenset({"stable", "canary"})
ANNOTATION_ADOPTED = "stack-canary.dev/adopted"
ANNOTATION_VARIANT_SUBSETS = "stack-canary.dev/variant-subsets"
# Annotations only the controller writes: dropped from an object when the desired one no longer has them.
OWNED_ANNOTATIONS = frozenset({ANNOTATION_EXPERIMENT, ANNOTATION_VARIANT_SUBSETS})
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
_FINAL_PHASES = frozenset(p.value for p in Phase if p.final)


class UserRouteConflict(PermanentError):
    """A user's route in an adopted VirtualService that a release cannot keep working; nothing is written
    until the user changes it (the reason names the route and what to change)."""


def _resource(obj: Obj) -> Resource:
    return VIRTUAL_SERVICES if obj["kind"] == "VirtualService" else DESTINATION_RULES


def _is_ours(obj: Obj) -> bool:
    return bool((obj.get("metadata", {}).get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY)


def is_owned_route(route: Obj) -> bool:
    name = route.get("name")
    return isinstance(name, str) and (name in OWNED_ROUTES or OWNED_ROUTE_PATTERN.match(name) is not None)


def _variant_subsets(meta: Obj) -> frozenset[str]:
    """The variant subsets the controller added to a DestinationRule (its annotation)."""
    listed = (meta.get("annotations") or {}).get(ANNOTATION_VARIANT_SUBSETS) or ""
    return frozenset(n for n in str(listed).split(",") if n)


# --------------------------------------------------------------------------------------------------
# Merging the controller's parts into a live object
# --------------------------------------------------------------------------------------------------
def merge_owned(desired: Obj, live: Obj | None) -> Obj:
    """The object to have in the API server: `desired` when nothing is live, else live + our parts."""
    if live is None:
        merged = copy.deepcopy(desired)
        if desired["kind"] == "DestinationRule":
            _record_variant_subsets(merged["metadata"], [s["name"] for s in desired["spec"]["subsets"]
                                                         if s["name"] not in OWNED_SUBSETS])
        return merged
    merged = copy.deepcopy(live)
    meta, want = merged.setdefault("metadata", {}), desired["metadata"]
    adopted = not _is_ours(live) or (meta.get("annotations") or {}).get(ANNOTATION_ADOPTED) == "true"
    previous_variants = _variant_subsets(meta)
    meta["labels"] = {**(meta.get("labels") or {}), **want["labels"]}
    kept = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in OWNED_ANNOTATIONS}
    meta["annotations"] = {**kept, **want["annotations"]}
    if adopted:
        meta["annotations"][ANNOTATION_ADOPTED] = "true"
    spec = merged.setdefault("spec", {})
    if desired["kind"] == "DestinationRule":
        added = _merge_subsets(spec, desired["spec"], meta.get("name", ""), previous_variants)
        _record_variant_subsets(meta, added)
    else:
        _merge_routes(spec, desired["spec"], want["name"], want["annotations"][ANNOTATION_LANE_HEADER])
    return merged


def _record_variant_subsets(meta: Obj, names: list[str]) -> None:
    annotations = meta.setdefault("annotations", {})
    annotations.pop(ANNOTATION_VARIANT_SUBSETS, None)
    if names:
        annotations[ANNOTATION_VARIANT_SUBSETS] = ",".join(names)


def _merge_subsets(spec: Obj, want: Obj, name: str, previous_variants: frozenset[str]) -> list[str]:
    """Merge our subsets into `spec`; returns the variant subsets that are ours (to be recorded)."""
    if spec.get("host", want["host"]) != want["host"]:
        raise PermanentError(f"DestinationRule {name} is for host {spec.get('host')!r}, not {want['host']!r}: "
                             "refusing to take it over (rename it, or point it at the service)")
    spec["host"] = want["host"]
    owned = OWNED_SUBSETS | previous_variants
    theirs = [s for s in spec.get("subsets", []) if s.get("name") not in owned]
    their_labels = {s.get("name"): s.get("labels") for s in theirs}
    ours, added = [], []
    for subset in want["subsets"]:
        if subset["name"] in their_labels:  # a user subset of a variant's name (never stable/canary here)
            if their_labels[subset["name"]] != subset["labels"]:
                raise PermanentError(f"DestinationRule {name}: subset {subset['name']!r} exists with labels "
                                     f"{their_labels[subset['name']]}, the experiment needs {subset['labels']}: "
                                     "rename the variant or the subset")
            continue
        ours.append(_with_their_balancing(subset, spec.get("trafficPolicy")))
        if subset["name"] not in OWNED_SUBSETS:
            added.append(subset["name"])
    spec["subsets"] = [*ours, *theirs]
    return added


def _with_their_balancing(subset: Obj, policy: Any) -> Obj:
    """Our subset, its balancing (an experiment's consistent hash) completed with the rest of the rule's own
    `loadBalancer` (`localityLbSetting`, warm-up): Istio replaces a rule's `loadBalancer` with a subset's whole, so
    what the user set there would otherwise not apply to the subset."""
    ours = (subset.get("trafficPolicy") or {}).get("loadBalancer")
    theirs = policy.get("loadBalancer") if isinstance(policy, dict) else None
    if not ours or not isinstance(theirs, dict):
        return subset
    carried = {k: v for k, v in theirs.items() if k not in ("simple", "consistentHash")}
    if not carried:
        return subset
    return {**subset, "trafficPolicy": {**subset["trafficPolicy"], "loadBalancer": {**carried, **ours}}}


def _merge_routes(spec: Obj, want: Obj, service: str, lane_header: str) -> None:
    """Our routes between the user's: theirs with a match in front, their catch-all routes after ours,
    with the settings of the first of those (the one ours take the traffic of) carried into ours."""
    hosts = list(spec.get("hosts", []))
    spec["hosts"] = [*want["hosts"], *(h for h in hosts if h not in want["hosts"])]
    if want.get("gateways"):
        spec["gateways"] = [*spec.get("gateways", []), *(g for g in want["gateways"]
                                                         if g not in spec.get("gateways", []))]
    theirs = [r for r in spec.get("http", []) if not is_owned_route(r)]
    specific = [r for r in theirs if r.get("match")]
    catch_all = [r for r in theirs if not r.get("match")]
    ours = want["http"]
    try:
        for route in specific:
            check_user_route(route, service, lane_header)
        if catch_all:
            ours = carry_user_settings(ours, catch_all[0], service, lane_header)
    except UncarryableRoute as exc:
        raise UserRouteConflict(f"VirtualService {service}: {exc}") from exc
    if any(g != "mesh" for g in spec.get("gateways", [])):
        ours = [mesh_only(r) if r.get("name") in SHADOW_ROUTES.values() else r for r in ours]
    spec["http"] = [*specific, *ours, *catch_all]


def _short_host(host: str, namespace: str) -> str | None:
    """The Service a DestinationRule's host names in `namespace` (`ml-infer` or `ml-infer.<namespace>.svc...`);
    None for a host elsewhere."""
    name, _, rest = host.partition(".")
    return name if not rest or rest == namespace or rest.startswith(f"{namespace}.svc") else None


# --------------------------------------------------------------------------------------------------
# Reading back only what the controller owns
# --------------------------------------------------------------------------------------------------
def owned_projection(obj: Obj) -> Obj:
    """The object as the renderer would have written it: only our subsets/routes, our host, no gateways."""
    meta = obj.get("metadata", {})
    projected: Obj = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                      "metadata": {k: meta.get(k) for k in ("name", "namespace", "labels", "annotations")}}
    spec = obj.get("spec", {})
    if obj.get("kind") == "DestinationRule":
        projected["spec"] = {"host": spec.get("host"),
                             "subsets": [s for s in spec.get("subsets", []) if s.get("name") in OWNED_SUBSETS]}
    else:
        projected["spec"] = {"hosts": [meta.get("name")],
                             "http": [r for r in spec.get("http", []) if is_owned_route(r)]}
    return projected


@dataclass
class IstioRouter:
    """The Router port for one release's stack in one namespace."""

    api: KubeApi
    namespace: str
    services: tuple[str, ...]
    verify: bool = True

    def _live(self, selector: str | None) -> dict[tuple[str, str], Obj]:
        live: dict[tuple[str, str], Obj] = {}
        for res in (DESTINATION_RULES, VIRTUAL_SERVICES):
            for obj in self.api.list(res, self.namespace, selector).get("items", []):
                obj.setdefault("kind", "DestinationRule" if res is DESTINATION_RULES else "VirtualService")
                live[(obj["kind"], obj["metadata"]["name"])] = obj
        return live

    def in_effect(self) -> RoutingPlan | None:
        ours = [owned_projection(o) for (_, name), o in self._live(_SELECTOR).items()
                if not self.services or name in self.services]
        try:
            return read_plan(ours)
        except (UnreadablePlan, KeyError, TypeError, ValueError) as exc:
            raise TemporaryError(f"routes in effect in {self.namespace} are unreadable: {exc}") from exc

    def subsets_serving(self, workloads: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        """(service, subset) for every subset of the namespace's live DestinationRules that selects one of the
        (service, version) workloads (its `version` label): the subsets through which the mesh sends them
        requests, the controller's and a user's alike."""
        wanted = set(workloads)
        found: set[tuple[str, str]] = set()
        for rule in self.api.list(DESTINATION_RULES, self.namespace, None).get("items", []):
            spec = rule.get("spec") or {}
            service = _short_host(str(spec.get("host", "")), self.namespace)
            if service is None:
                continue
            for subset in spec.get("subsets") or []:
                if (service, (subset.get("labels") or {}).get("version")) in wanted and subset.get("name"):
                    found.add((service, str(subset["name"])))
        return tuple(sorted(found))

    def apply(self, plan: RoutingPlan) -> None:
        """Write the plan make-before-break, so that no route ever points at a subset that is not defined
        (Istio answers 503 for those): first every existing DestinationRule gets the new subsets while
        keeping the ones live routes use, then new DestinationRules, then the VirtualServices, and only
        then the DestinationRules lose the subsets no route uses any more. A crash between the stages
        leaves extra subsets, which the next apply removes (they are recorded as the controller's)."""
        live = self._live(None)
        self._refuse_if_in_flight_elsewhere(plan, live)
        targets = [(d, merge_owned(d, live.get((d["kind"], d["metadata"]["name"])))) for d in render(plan)]
        rules = [t for d, t in targets if d["kind"] == "DestinationRule"]
        routes = [t for d, t in targets if d["kind"] != "DestinationRule"]
        stages = ([_bridge(t, live[_key(t)]) for t in rules if _key(t) in live],
                  [t for t in rules if _key(t) not in live], routes, rules)
        written = 0
        for stage in stages:
            for target in stage:
                current = live.get(_key(target))
                if current is not None and _same(current, target):
                    continue
                live[_key(target)] = self._write(target, current)
                written += 1
        if written and self.verify:
            self._verify(plan)

    def _refuse_if_in_flight_elsewhere(self, plan: RoutingPlan, live: dict[tuple[str, str], Obj]) -> None:
        """Two releases of one stack must not fight over its routes: the later one waits."""
        names = {s.service for s in plan.services}
        others = {(o["metadata"].get("labels") or {}).get(LABEL_RELEASE) for (_, name), o in live.items()
                  if name in names and _is_ours(o)} - {plan.owner, None, ""}
        for other in sorted(o for o in others if o):
            release = self.api.get_or_none(RELEASES, self.namespace, other)
            if release is None or release["metadata"].get("deletionTimestamp"):
                continue
            phase = (release.get("status") or {}).get("phase", "Pending")
            if phase not in _FINAL_PHASES:
                raise PermanentError(f"the routes of this stack belong to release {other}, still {phase}: "
                                     "finish or abort it first")

    def _write(self, target: Obj, current: Obj | None) -> Obj:
        """Create or merge-patch; returns the object as stored (its resourceVersion for the next write)."""
        res, name = _resource(target), target["metadata"]["name"]
        if current is None:
            return {"kind": target["kind"], **self.api.create(res, self.namespace, target)}
        # A merge patch keeps every key it does not mention: our annotations that are gone must be nulled.
        annotations: dict[str, Any] = dict(target["metadata"]["annotations"])
        for key in (current["metadata"].get("annotations") or {}):
            if key in OWNED_ANNOTATIONS and key not in annotations:
                annotations[key] = None
        patch: dict[str, Any] = {
            "metadata": {"labels": target["metadata"]["labels"], "annotations": annotations,
                         "resourceVersion": current["metadata"]["resourceVersion"]},
            "spec": target["spec"],
        }
        return {"kind": target["kind"], **self.api.patch(res, self.namespace, name, patch)}

    def _verify(self, plan: RoutingPlan) -> None:
        back = self.in_effect()
        if not plan.equivalent(back):
            raise TemporaryError(f"routes read back in {self.namespace} differ from those written: {back}")


def _key(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _bridge(target: Obj, current: Obj) -> Obj:
    """`target` DestinationRule that still defines every subset `current` has (the make stage)."""
    bridge = copy.deepcopy(target)
    subsets = bridge["spec"].setdefault("subsets", [])
    names = {s.get("name") for s in subsets}
    subsets += [copy.deepcopy(s) for s in (current.get("spec") or {}).get("subsets", []) if s.get("name") not in names]
    variants = _variant_subsets(bridge["metadata"]) | _variant_subsets(current.get("metadata") or {})
    _record_variant_subsets(bridge["metadata"], sorted(variants))
    return bridge


def _same(live: Obj, target: Obj) -> bool:
    meta_l, meta_t = live.get("metadata", {}), target.get("metadata", {})
    return bool(live.get("spec") == target.get("spec")
                and (meta_l.get("labels") or {}) == meta_t.get("labels")
                and (meta_l.get("annotations") or {}) == meta_t.get("annotations"))
