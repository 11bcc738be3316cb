"""Render a routing plan into Istio DestinationRules and VirtualServices, and read a plan back from them.

One renderer, two consumers: the Kubernetes adapter writes these objects to the API server, and the
local mesh router routes by them. Release lanes work like this:

- the entry service's VirtualService splits traffic by weight, and each destination sets the lane header
  (`x-canary-lane: stable|canary`) on the request it forwards;
- the services propagate that header on their downstream calls, like trace headers;
- every other service's VirtualService sends a request carrying `lane=canary` to its canary subset when
  it has one, and everything else to stable, so a request never mixes versions along its path.

When the controller takes over a user's VirtualService, `carry_user_settings` puts the settings of the
user's default (match-less) route (timeout, retries, fault, corsPolicy, headers, mirror, rewrite, ...)
on the controller's routes, which now take that route's traffic; `check_user_route` refuses what cannot
be kept that way (`UncarryableRoute`).
"""

from __future__ import annotations

import copy
from typing import Any

from controller.adapters.istio import experiment as ab
from controller.adapters.istio.validate import service_name_of
from controller.core.plan import RoutingPlan, ServiceVersions, ShadowRoutes

API_VERSION = "networking.istio.io/v1"
MANAGED_BY = "stack-canary"
LABEL_RELEASE = "stack-canary.dev/release"
ANNOTATION_ROLE = "stack-canary.dev/role"
ANNOTATION_LANE_HEADER = "stack-canary.dev/lane-header"
ENTRY_ROUTE = "release-split"
CANARY_LANE_ROUTE = "canary-lane"
STABLE_LANE_ROUTE = "stable-lane"
# A shadow phase's routes ahead of the split: the comparator's searches to the version they name.
SHADOW_ROUTES = {"stable": "shadow-stable", "canary": "shadow-canary"}

Obj = dict[str, Any]


def _metadata(name: str, plan: RoutingPlan, role: str) -> Obj:
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY}
    if plan.owner:
        labels[LABEL_RELEASE] = plan.owner
    return {
        "name": name,
        "namespace": plan.namespace,
        "labels": labels,
        "annotations": {ANNOTATION_ROLE: role, ANNOTATION_LANE_HEADER: plan.lane_header},
    }


def destination_rule(plan: RoutingPlan, sv: ServiceVersions) -> Obj:
    if plan.experiment is not None:
        return {"apiVersion": API_VERSION, "kind": "DestinationRule",
                "metadata": _metadata(sv.service, plan, "subsets"), "spec": ab.destination_rule_spec(plan, sv)}
    subsets = [{"name": "stable", "labels": {"version": sv.stable}}]
    if sv.canary:
        subsets.append({"name": "canary", "labels": {"version": sv.canary}})
    return {
        "apiVersion": API_VERSION,
        "kind": "DestinationRule",
        "metadata": _metadata(sv.service, plan, "subsets"),
        "spec": {"host": sv.service, "subsets": subsets},
    }


def _lane_destination(host: str, subset: str, weight: int, lane_header: str, lane: str) -> Obj:
    return {
        "destination": {"host": host, "subset": subset},
        "weight": weight,
        "headers": {"request": {"set": {lane_header: lane}}},
    }


def entry_virtual_service(plan: RoutingPlan) -> Obj:
    if plan.experiment is not None:
        metadata = _metadata(plan.entry, plan, "entry")
        metadata["annotations"].update(ab.entry_annotations(plan))
        return {"apiVersion": API_VERSION, "kind": "VirtualService", "metadata": metadata,
                "spec": ab.entry_spec(plan)}
    entry = plan.service(plan.entry)
    canary_subset = "canary" if entry.canary else "stable"
    split: Obj = {
        "name": ENTRY_ROUTE,
        "route": [
            _lane_destination(plan.entry, "stable", plan.stable_weight, plan.lane_header, "stable"),
            _lane_destination(plan.entry, canary_subset, plan.canary_weight, plan.lane_header, "canary"),
        ],
    }
    http = [split]
    if plan.shadow is not None:
        split.update(_mirror(plan.shadow))
        http = [*_shadow_routes(plan, plan.shadow, canary_subset), split]
    spec: Obj = {"hosts": [plan.entry, *plan.entry_hosts], "http": http}
    if plan.gateways:
        spec["gateways"] = [*plan.gateways, "mesh"]
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualService",
        "metadata": _metadata(plan.entry, plan, "entry"),
        "spec": spec,
    }


def _mirror(shadow: ShadowRoutes) -> Obj:
    return {"mirror": {"host": shadow.comparator, "port": {"number": shadow.port}},
            "mirrorPercentage": {"value": shadow.percent}}


def _shadow_routes(plan: RoutingPlan, shadow: ShadowRoutes, canary_subset: str) -> list[Obj]:
    """The comparator's way to each version: its header names the lane, the route sets the lane header (the
    header itself is removed, so the services see an ordinary search in that lane). Behind a gateway, these routes
    apply to the mesh's requests only, so a user cannot pick a version by sending the header."""
    routes = []
    for lane, subset in (("stable", "stable"), ("canary", canary_subset)):
        destination = {"destination": {"host": plan.entry, "subset": subset},
                       "headers": {"request": {"set": {plan.lane_header: lane}, "remove": [shadow.header]}}}
        route = {"name": SHADOW_ROUTES[lane], "match": [{"headers": {shadow.header: {"exact": lane}}}],
                 "route": [destination]}
        routes.append(mesh_only(route) if plan.gateways else route)
    return routes


def mesh_only(route: Obj) -> Obj:
    """A shadow phase's route on a VirtualService bound to a gateway: it applies to the mesh's requests only (the
    comparator's sidecar), so no request through the gateway can name a version with the comparator's header."""
    return {**route, "match": [{**m, "gateways": ["mesh"]} for m in route.get("match") or [{}]]}


def lane_virtual_service(plan: RoutingPlan, sv: ServiceVersions) -> Obj:
    if plan.experiment is not None:
        return {"apiVersion": API_VERSION, "kind": "VirtualService", "metadata": _metadata(sv.service, plan, "lane"),
                "spec": ab.lane_spec(plan, sv)}
    http: list[Obj] = []
    if sv.canary:
        http.append(
            {
                "name": CANARY_LANE_ROUTE,
                "match": [{"headers": {plan.lane_header: {"exact": "canary"}}}],
                "route": [{"destination": {"host": sv.service, "subset": "canary"}}],
            }
        )
    http.append({"name": STABLE_LANE_ROUTE, "route": [{"destination": {"host": sv.service, "subset": "stable"}}]})
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualService",
        "metadata": _metadata(sv.service, plan, "lane"),
        "spec": {"hosts": [sv.service], "http": http},
    }


def render(plan: RoutingPlan) -> list[Obj]:
    """All objects of the plan: a DestinationRule per service, the entry split, a lane route per service."""
    objects = [destination_rule(plan, sv) for sv in plan.services]
    objects.append(entry_virtual_service(plan))
    objects.extend(lane_virtual_service(plan, sv) for sv in plan.services if sv.service != plan.entry)
    return objects


class UnreadablePlan(ValueError):
    """The objects in effect are not ones this renderer wrote (or were edited by hand)."""


def read_plan(objects: list[Obj]) -> RoutingPlan | None:
    """The plan in effect, recovered from the objects; None when none of them is the controller's."""
    ours = [o for o in objects if o.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/managed-by")
            == MANAGED_BY]
    entries = [o for o in ours if o["kind"] == "VirtualService"
               and o["metadata"].get("annotations", {}).get(ANNOTATION_ROLE) == "entry"]
    if not entries:
        return None
    if len(entries) > 1:
        raise UnreadablePlan(f"{len(entries)} entry VirtualServices are marked as the controller's")
    entry_vs = entries[0]
    meta = entry_vs["metadata"]
    lane_header = meta.get("annotations", {}).get(ANNOTATION_LANE_HEADER, "")
    try:
        entry_dr = next((o for o in ours if o["kind"] == "DestinationRule" and o["metadata"]["name"] == meta["name"]),
                        None)
        experiment = ab.read_experiment(entry_vs, entry_dr) if ab.is_experiment_entry(entry_vs) else None
    except ab.UnreadableExperiment as exc:
        raise UnreadablePlan(str(exc)) from exc
    # An experiment's entry assigns users instead of splitting by weight: its treatment share stands in.
    canary_weight = (100 - experiment.control.weight) if experiment else _canary_weight(entry_vs, lane_header)
    entry_hosts = entry_vs["spec"]["hosts"]
    lanes = {str((o["spec"].get("hosts") or [""])[0]): o for o in ours if o["kind"] == "VirtualService"
             and o["metadata"].get("annotations", {}).get(ANNOTATION_ROLE) == "lane"}
    services = []
    for dr in (o for o in ours if o["kind"] == "DestinationRule"):
        subsets = {s["name"]: s.get("labels", {}).get("version") for s in dr["spec"].get("subsets", [])}
        if not subsets.get("stable"):
            raise UnreadablePlan(f"DestinationRule {dr['metadata'].get('name')}: no stable subset")
        sv = ServiceVersions(dr["spec"]["host"], subsets["stable"], subsets.get("canary"))
        # A service is routed once its lane route is in place too: its subsets alone steer no request (a write
        # cut short between a service's DestinationRule and its VirtualService leaves the service out, so the
        # plan read back differs from the one asked for and the next tick writes the rest).
        if sv.service == entry_hosts[0] or _lane_routes(lanes.get(sv.service), sv, experiment is not None):
            services.append(sv)
    gateways = tuple(g for g in entry_vs["spec"].get("gateways", []) if g != "mesh")
    return RoutingPlan(
        namespace=meta.get("namespace", ""),
        entry=entry_hosts[0],
        services=tuple(sorted(services, key=lambda s: s.service)),
        canary_weight=canary_weight,
        lane_header=lane_header,
        gateways=gateways,
        entry_hosts=tuple(entry_hosts[1:]),
        owner=meta.get("labels", {}).get(LABEL_RELEASE, ""),
        experiment=experiment,
        shadow=None if experiment else _read_shadow(entry_vs),
    )


def _lane_routes(vs: Obj | None, sv: ServiceVersions, experiment: bool) -> bool:
    """Whether `vs`, a lane VirtualService of the controller's, routes `sv`'s lanes: it exists and, outside an
    experiment, has the canary lane's route exactly when the DestinationRule has a canary subset."""
    if vs is None:
        return False
    if experiment:
        return True
    names = {r.get("name") for r in vs["spec"].get("http", []) or []}
    return STABLE_LANE_ROUTE in names and (CANARY_LANE_ROUTE in names) == (sv.canary is not None)


def _read_shadow(entry_vs: Obj) -> ShadowRoutes | None:
    """The shadow phase's routes of an entry VirtualService of the controller's, or None when it has none."""
    routes = {r.get("name"): r for r in entry_vs["spec"].get("http", []) or []}
    split = routes.get(ENTRY_ROUTE) or {}
    if "mirror" not in split or SHADOW_ROUTES["canary"] not in routes:
        return None
    try:
        match = routes[SHADOW_ROUTES["canary"]]["match"][0]["headers"]
        header = next(iter(match))
        return ShadowRoutes(comparator=str(split["mirror"]["host"]), port=int(split["mirror"]["port"]["number"]),
                            percent=float(split.get("mirrorPercentage", {}).get("value", 100.0)), header=header)
    except (KeyError, IndexError, StopIteration, TypeError, ValueError) as exc:
        raise UnreadablePlan(f"VirtualService {entry_vs['metadata'].get('name')}: a shadow route the controller "
                             f"did not write ({exc!r})") from exc


def _canary_weight(entry_vs: Obj, lane_header: str) -> int:
    meta = entry_vs["metadata"]
    try:
        route = next(r for r in entry_vs["spec"]["http"] if r.get("name") == ENTRY_ROUTE)
        return next(
            int(d.get("weight", 0)) for d in route["route"]
            if d.get("headers", {}).get("request", {}).get("set", {}).get(lane_header) == "canary"
        )
    except (StopIteration, KeyError, TypeError, ValueError) as exc:
        raise UnreadablePlan(f"VirtualService {meta.get('name')}: no canary-lane destination ({exc!r})") from exc


# --------------------------------------------------------------------------------------------------
# A user's routes in an adopted VirtualService
# --------------------------------------------------------------------------------------------------
# Which requests a route takes and where they go; every other field of an HTTP route is a setting for the
# requests it takes (timeout, retries, fault, corsPolicy, headers, mirror, rewrite, ...).
_ROUTE_TARGET = frozenset({"name", "match", "route"})
# Answers without forwarding to the service: the release's split could not happen behind them.
_NOT_FORWARDING = ("redirect", "directResponse", "delegate")
# Subsets the controller removes again (at promotion, rollback or the end of an experiment).
_REMOVED_SUBSETS = frozenset({"canary"})


class UncarryableRoute(ValueError):
    """A user's route whose behaviour the controller's routes cannot keep; the message says what to change."""


def _route_label(route: Obj) -> str:
    return f"route {route['name']!r}" if route.get("name") else "the unnamed route"


def _destinations(route: Obj) -> list[Obj]:
    """Every destination a route sends requests to, its mirrors included."""
    found = [d.get("destination") or {} for d in route.get("route") or []]
    found += [route["mirror"]] if isinstance(route.get("mirror"), dict) else []
    found += [m.get("destination") or {} for m in route.get("mirrors") or []]
    return found


def _touches(headers: Any, name: str) -> bool:
    """Whether header operations (`{request: {set, add, remove}, response: ...}`) change header `name`."""
    ops = (headers or {}).get("request") or {}
    names = [*(ops.get("set") or {}), *(ops.get("add") or {}), *(ops.get("remove") or [])]
    return name in (str(n).lower() for n in names)


def check_user_route(route: Obj, service: str, lane_header: str) -> None:
    """Refuse a user's route of `service`'s VirtualService that a release would break: one sending requests
    to a subset the controller removes again, or one that changes the lane header."""
    label = _route_label(route)
    for dest in _destinations(route):
        if service_name_of(str(dest.get("host", ""))) == service and dest.get("subset") in _REMOVED_SUBSETS:
            raise UncarryableRoute(f"{label} sends requests to subset {dest['subset']!r} of {service}, which the "
                                   "controller removes after each release: point it at subset 'stable'")
    if _touches(route.get("headers"), lane_header) or any(
            _touches(d.get("headers"), lane_header) for d in route.get("route") or []):
        raise UncarryableRoute(f"{label} changes the header {lane_header!r}, which keeps a request on its "
                               "release lane: remove that header operation")


def _forwarded_destination(default: Obj, service: str) -> Obj:
    """The one destination of the user's default route, which must forward to `service` itself."""
    label = _route_label(default)
    for key in _NOT_FORWARDING:
        if key in default:
            raise UncarryableRoute(f"the default {label} of {service} answers with {key!r} instead of forwarding "
                                   f"to {service}, so a release could not split its traffic: give that route "
                                   "a match, or remove it")
    dests = default.get("route") or []
    hosts = sorted({str((d.get("destination") or {}).get("host", "")) for d in dests})
    if len(dests) > 1:
        raise UncarryableRoute(f"the default {label} of {service} splits its traffic itself over {len(dests)} "
                               f"destinations ({', '.join(hosts)}), which a release would replace by its own "
                               "split: give that route a match, or remove it")
    if not dests or service_name_of(hosts[0]) != service:
        target = hosts[0] if hosts else "nowhere"
        raise UncarryableRoute(f"the default {label} of {service} sends its traffic to {target}, not to "
                               f"{service}, and a release would send it to {service}: give that route a match, "
                               "or remove it")
    return dict(dests[0])


def carry_user_settings(routes: list[Obj], default: Obj, service: str, lane_header: str) -> list[Obj]:
    """The controller's `routes` of `service`'s VirtualService, each with the settings of the user's
    default (match-less) route `default`, whose traffic they take: its route-level fields, and the port
    and header operations of its one destination. The controller's own fields win where both set one.
    Raises UncarryableRoute when `default` does not simply forward to `service`."""
    check_user_route(default, service, lane_header)
    theirs = _forwarded_destination(default, service)
    settings = {k: v for k, v in default.items() if k not in _ROUTE_TARGET}
    port = (theirs.get("destination") or {}).get("port")
    carried = []
    for route in routes:
        merged = copy.deepcopy({**settings, **route})
        for dest in merged.get("route") or []:
            if port is not None:
                dest["destination"].setdefault("port", copy.deepcopy(port))
            if theirs.get("headers"):
                dest["headers"] = _merged_headers(theirs["headers"], dest.get("headers") or {})
        carried.append(merged)
    return carried


def _merged_headers(theirs: Obj, ours: Obj) -> Obj:
    """Header operations of both; ours win where both set or add the same header."""
    merged: Obj = {}
    for side in ("request", "response"):
        a, b = theirs.get(side) or {}, ours.get(side) or {}
        ops: Obj = {op: {**(a.get(op) or {}), **(b.get(op) or {})} for op in ("set", "add") if a.get(op) or b.get(op)}
        removed = [*(a.get("remove") or []), *(n for n in b.get("remove") or [] if n not in (a.get("remove") or []))]
        if removed:
            ops["remove"] = removed
        if ops:
            merged[side] = ops
    return copy.deepcopy(merged)
