"""Render an A/B experiment's routing plan into Istio objects, and read it back.

This module owns the experiment's routes (`RoutingPlan.experiment` set); `render.render` and
`render.read_plan` hand experiment plans to it. The same objects serve Kubernetes and the local router.

- DestinationRule per service: `stable` (and `canary` when the service changes), plus one subset per
  variant, named after it, pointing at the variant's version (the control's at the stable version); with a
  user header (`unit: user`) the entry's subsets balance by its consistent hash (`user_affinity`);
- the entry VirtualService, in order: `cohort-<v>` routes (header `cohortHeader: <v>` -> variant v, when
  a cohort header is configured), `sticky-<v>` routes (the assignment cookie names v -> variant v), and the
  `assign` route: weighted destinations, each adding `set-cookie: <cookie>=<v>` to its response, so a new
  user is assigned once and stays. Every destination sets the lane header to the variant's name;
- every other service: `lane-<v>` (lane header == v -> subset v) for variants that change it, then stable.
  A request thus stays on its variant along the whole stack path.

While an experiment ends (`ExperimentRoutes.closing_to`, the first stage of its rollback or promotion) the entry has
only the `assign` route, to that one variant and setting no cookie; the DestinationRules and lane routes stay as
they were, so the requests already inside the stack finish on their variant.
"""

from __future__ import annotations

import json
import re
from typing import Any

from controller.core.plan import ExperimentArm, ExperimentRoutes, RoutingPlan, ServiceVersions

Obj = dict[str, Any]
ANNOTATION_EXPERIMENT = "stack-canary.dev/experiment"
ASSIGN_ROUTE = "assign"


def cookie_regex(cookie: str, variant: str) -> str:
    """The whole `cookie` header (Istio/RE2 regexes match all of it) carrying `<cookie>=<variant>`."""
    return rf"^(.*?;\s*)?{re.escape(cookie)}={re.escape(variant)}(;.*)?$"


def _subset_of(arm: ExperimentArm, sv: ServiceVersions, exp: ExperimentRoutes) -> str:
    """The subset variant `arm` uses on service `sv`: its own, or stable where it changes nothing."""
    if arm.name == exp.control.name or sv.canary is None:
        return "stable"
    return arm.name


def _to_variant(plan: RoutingPlan, exp: ExperimentRoutes, arm: ExperimentArm, assign: bool) -> Obj:
    entry = plan.service(plan.entry)
    headers: Obj = {"request": {"set": {plan.lane_header: arm.name}}}
    if assign:
        cookie = f"{exp.cookie}={arm.name}; Path=/; Max-Age={exp.cookie_max_age}; HttpOnly"
        headers["response"] = {"add": {"set-cookie": cookie}}
    d: Obj = {"destination": {"host": plan.entry, "subset": _subset_of(arm, entry, exp)}, "headers": headers}
    if assign:
        d["weight"] = arm.weight
    return d


def destination_rule_spec(plan: RoutingPlan, sv: ServiceVersions) -> Obj:
    exp = _experiment(plan)
    subsets = [{"name": "stable", "labels": {"version": sv.stable}}]
    if sv.canary:
        subsets.append({"name": "canary", "labels": {"version": sv.canary}})
        subsets.extend({"name": a.name, "labels": {"version": a.version}} for a in exp.arms[1:])
    if exp.user_header and sv.service == plan.entry:
        # Per-user sums are kept per entry process: each user's searches go to one replica of their variant.
        # At the subset level, so an adopted rule's own trafficPolicy keeps its other settings.
        for subset in subsets:
            subset["trafficPolicy"] = user_affinity(exp.user_header)
    return {"host": sv.service, "subsets": subsets}


def user_affinity(header: str) -> Obj:
    """The load balancing that sends every request carrying one value of `header` to the same endpoint."""
    return {"loadBalancer": {"consistentHash": {"httpHeaderName": header}}}


def _entry_routes(plan: RoutingPlan, exp: ExperimentRoutes) -> list[Obj]:
    """The entry's routes in order (module docstring): while the experiment ends, only `assign` to one variant."""
    if exp.closing_to is not None:
        arm = next(a for a in exp.arms if a.name == exp.closing_to)
        return [{"name": ASSIGN_ROUTE, "route": [{**_to_variant(plan, exp, arm, assign=False), "weight": 100}]}]
    cohorts = [{"name": f"cohort-{a.name}", "match": [{"headers": {exp.cohort_header: {"exact": a.name}}}],
                "route": [_to_variant(plan, exp, a, assign=False)]} for a in exp.arms] if exp.cohort_header else []
    sticky = [{"name": f"sticky-{a.name}",
               "match": [{"headers": {"cookie": {"regex": cookie_regex(exp.cookie, a.name)}}}],
               "route": [_to_variant(plan, exp, a, assign=False)]} for a in exp.arms]
    return [*cohorts, *sticky,
            {"name": ASSIGN_ROUTE, "route": [_to_variant(plan, exp, a, assign=True) for a in exp.arms]}]


def entry_spec(plan: RoutingPlan) -> Obj:
    spec: Obj = {"hosts": [plan.entry, *plan.entry_hosts], "http": _entry_routes(plan, _experiment(plan))}
    if plan.gateways:
        spec["gateways"] = [*plan.gateways, "mesh"]
    return spec


def entry_annotations(plan: RoutingPlan) -> dict[str, str]:
    """What read-back needs beyond the routes: the variants' versions, the cookie and cohort header."""
    return {ANNOTATION_EXPERIMENT: json.dumps(_annotation(_experiment(plan)), sort_keys=True)}


def lane_spec(plan: RoutingPlan, sv: ServiceVersions) -> Obj:
    exp = _experiment(plan)
    http: list[Obj] = []
    if sv.canary:
        http.extend({"name": f"lane-{a.name}", "match": [{"headers": {plan.lane_header: {"exact": a.name}}}],
                     "route": [{"destination": {"host": sv.service, "subset": a.name}}]} for a in exp.arms[1:])
    http.append({"name": "stable-lane", "route": [{"destination": {"host": sv.service, "subset": "stable"}}]})
    return {"hosts": [sv.service], "http": http}


def _experiment(plan: RoutingPlan) -> ExperimentRoutes:
    if plan.experiment is None:
        raise ValueError("not an experiment plan")
    return plan.experiment


def _annotation(exp: ExperimentRoutes) -> Obj:
    note = {"arms": [[a.name, a.version] for a in exp.arms], "cookie": exp.cookie,
            "cohortHeader": exp.cohort_header, "cookieMaxAge": exp.cookie_max_age}
    return note if exp.closing_to is None else {**note, "closingTo": exp.closing_to}


class UnreadableExperiment(ValueError):
    """The entry route is marked as an experiment's but does not read back as one."""


def read_experiment(entry_vs: Obj, entry_rule: Obj | None = None) -> ExperimentRoutes:
    """The experiment in effect: variants from the annotation, weights from the `assign` route itself, the user
    header from the entry's DestinationRule (its `stable` subset's consistent hash, so a hand edit that removes it
    is seen and repaired)."""
    meta = entry_vs.get("metadata", {})
    try:
        note = json.loads(meta["annotations"][ANNOTATION_EXPERIMENT])
        route = next(r for r in entry_vs["spec"]["http"] if r.get("name") == ASSIGN_ROUTE)
        lane_header = meta["annotations"]["stack-canary.dev/lane-header"]
        weights = {d["headers"]["request"]["set"][lane_header]: int(d.get("weight", 0)) for d in route["route"]}
        arms = tuple(ExperimentArm(str(n), str(v), weights.get(str(n), 0)) for n, v in note["arms"])
        return ExperimentRoutes(arms, cookie=str(note["cookie"]), cohort_header=note.get("cohortHeader"),
                                cookie_max_age=int(note.get("cookieMaxAge", 7 * 24 * 3600)),
                                closing_to=note.get("closingTo"), user_header=_hashed_on(entry_rule))
    except (StopIteration, KeyError, TypeError, ValueError) as exc:
        raise UnreadableExperiment(f"VirtualService {meta.get('name')}: not a readable experiment ({exc!r})") from exc


def hashed_on(subset: Obj) -> str | None:
    """The request header whose hash picks a subset's endpoint (`user_affinity`), or None."""
    balancing = ((subset.get("trafficPolicy") or {}).get("loadBalancer") or {}).get("consistentHash") or {}
    header = balancing.get("httpHeaderName")
    return header if isinstance(header, str) else None


def _hashed_on(rule: Obj | None) -> str | None:
    """The header the `stable` subset of `rule` balances by, or None."""
    subsets: list[Obj] = (rule or {}).get("spec", {}).get("subsets", [])
    return hashed_on(next((s for s in subsets if s.get("name") == "stable"), {}))


def is_experiment_entry(entry_vs: Obj) -> bool:
    return ANNOTATION_EXPERIMENT in entry_vs.get("metadata", {}).get("annotations", {})
