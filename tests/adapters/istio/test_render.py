"""The routing renderer: valid for Istio and for the local router, and readable back into the same plan."""

from __future__ import annotations

import re
from typing import Any

import pytest

from controller.adapters.istio.render import (
    ANNOTATION_ROLE,
    ENTRY_ROUTE,
    UncarryableRoute,
    carry_user_settings,
    check_user_route,
    read_plan,
    render,
)
from controller.adapters.istio.validate import validate_objects
from controller.core.plan import (
    ExperimentArm,
    ExperimentRoutes,
    InvalidPlan,
    RoutingPlan,
    ServiceVersions,
    ShadowRoutes,
)
from tests.support.istio_schema import istio_errors
from tests.support.plans import PLANS, plan


@pytest.mark.parametrize("name", PLANS)
def test_rendered_objects_pass_istio_schema_and_our_validation(name: str) -> None:
    objects = render(PLANS[name])
    for obj in objects:
        assert istio_errors(obj, strict=True) == [], (obj["kind"], obj["metadata"]["name"])
    validate_objects(objects)


@pytest.mark.parametrize("name", PLANS)
def test_plan_reads_back_from_its_objects(name: str) -> None:
    p = PLANS[name]
    back = read_plan(render(p))
    assert back is not None and back.equivalent(p)
    assert back.owner == p.owner


def test_entry_split_sets_the_lane_on_each_destination() -> None:
    objects = render(plan(20, ("ml-search",)))
    entry = next(o for o in objects if o["kind"] == "VirtualService" and o["metadata"]["name"] == "master-search")
    dests = entry["spec"]["http"][0]["route"]
    assert [(d["weight"], d["destination"]["subset"], d["headers"]["request"]["set"]["x-canary-lane"])
            for d in dests] == [(80, "stable", "stable"), (20, "stable", "canary")]


def test_lane_routes_send_only_canary_lane_to_canary_subsets() -> None:
    objects = render(plan(20, ("ml-search",)))
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    ml_search = by_name[("VirtualService", "ml-search")]["spec"]["http"]
    assert ml_search[0]["match"] == [{"headers": {"x-canary-lane": {"exact": "canary"}}}]
    assert ml_search[0]["route"][0]["destination"]["subset"] == "canary"
    assert ml_search[1]["route"][0]["destination"]["subset"] == "stable"
    keyword = by_name[("VirtualService", "keyword")]["spec"]["http"]
    assert len(keyword) == 1 and keyword[0]["route"][0]["destination"]["subset"] == "stable"
    assert [s["name"] for s in by_name[("DestinationRule", "keyword")]["spec"]["subsets"]] == ["stable"]


@pytest.mark.parametrize("cut", range(1, 10))
def test_a_write_cut_short_reads_back_as_a_different_plan(cut: int) -> None:
    """The objects are written in `render`'s order (subsets before the routes that use them); a controller killed
    after `cut` of them leaves a state that must not pass for the plan, or the rest would never be written (a
    release then waits forever for canary traffic that its missing lane routes never send)."""
    before, after = plan(0, ()), plan(20)  # the step's first weight: canary subsets and lane routes are new
    old = {(o["kind"], o["metadata"]["name"]): o for o in render(before)}
    for obj in render(after)[:cut]:
        old[(obj["kind"], obj["metadata"]["name"])] = obj
    back = read_plan(list(old.values()))
    assert back is not None and not back.equivalent(after), cut
    assert len(render(after)) == 10 and read_plan(render(after)).equivalent(after)  # type: ignore[union-attr]


def test_a_deleted_lane_route_reads_back_as_a_different_plan() -> None:
    p = plan(20, ("ml-search", "keyword"))
    objects = [o for o in render(p) if (o["kind"], o["metadata"]["name"]) != ("VirtualService", "keyword")]
    assert not read_plan(objects).equivalent(p)  # type: ignore[union-attr]
    stale = render(plan(20, ("ml-search",)))  # keyword's lane route from before it had a canary
    mixed = [o for o in render(p) if (o["kind"], o["metadata"]["name"]) != ("VirtualService", "keyword")]
    mixed.append(next(o for o in stale if (o["kind"], o["metadata"]["name"]) == ("VirtualService", "keyword")))
    assert not read_plan(mixed).equivalent(p)  # type: ignore[union-attr]


def test_read_plan_ignores_objects_the_controller_does_not_own() -> None:
    user_vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "other", "namespace": "search"},
               "spec": {"hosts": ["other"], "http": [{"route": [{"destination": {"host": "other"}}]}]}}
    assert read_plan([user_vs]) is None
    p = plan(10)
    assert read_plan([user_vs, *render(p)]).equivalent(p)  # type: ignore[union-attr]


@pytest.mark.parametrize("kwargs,message", [
    ({"canary_weight": 101}, "canary weight"),
    ({"canary_weight": -1}, "canary weight"),
    ({"lane_header": "X Lane"}, "lane header"),
    ({"entry": "nope"}, "entry service"),
])
def test_invalid_plans_are_refused(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"namespace": "search", "entry": "master-search",
                               "services": (ServiceVersions("master-search", "v1", "v2"),), "canary_weight": 10}
    base.update(kwargs)
    with pytest.raises(InvalidPlan, match=message):
        RoutingPlan(**base)  # type: ignore[arg-type]


def test_hostile_version_is_refused_before_it_reaches_a_label() -> None:
    with pytest.raises(InvalidPlan, match="not a valid label value"):
        RoutingPlan("search", "a", (ServiceVersions("a", 'v1"} or vector(1)'),), 0)


# --------------------------------------------------------------------------------------------------
# A user's default route in an adopted VirtualService: its settings carried into the controller's routes
# --------------------------------------------------------------------------------------------------
USER_SETTINGS: dict[str, object] = {
    "timeout": "3s",
    "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx,connect-failure"},
    "fault": {"delay": {"fixedDelay": "5ms", "percentage": {"value": 0.1}}},
    "corsPolicy": {"allowOrigins": [{"exact": "https://search.example.com"}], "allowMethods": ["GET"]},
    "headers": {"response": {"set": {"x-served-by": "search"}}},
    "mirror": {"host": "search-shadow"},
    "mirrorPercentage": {"value": 5.0},
}


def user_default(service: str = "master-search", **extra: object) -> dict[str, object]:
    return {"name": "default", "route": [{"destination": {"host": service}}], **USER_SETTINGS, **extra}


def vs_of(objects: list[dict[str, object]], name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "VirtualService" and o["metadata"]["name"] == name)  # type: ignore[index]


@pytest.mark.parametrize("name", ["all changed at 10%", "entry unchanged", "promoted", "behind a gateway"])
def test_default_route_settings_are_carried_into_every_controller_route(name: str) -> None:
    p = PLANS[name]
    objects = render(p)
    for vs in (o for o in objects if o["kind"] == "VirtualService"):
        service = vs["metadata"]["name"]
        ours = vs["spec"]["http"]
        carried = carry_user_settings(ours, user_default(service), service, p.lane_header)
        assert [r["name"] for r in carried] == [r["name"] for r in ours]
        for before, after in zip(ours, carried, strict=True):
            assert {k: after[k] for k in USER_SETTINGS} == USER_SETTINGS
            assert (after["route"], after.get("match")) == (before["route"], before.get("match"))
        vs["spec"]["http"] = carried
        assert istio_errors(vs, strict=True) == [], service
    back = read_plan(objects)
    assert back is not None and back.equivalent(p)


def test_destination_port_and_headers_are_kept_beside_the_lane_header() -> None:
    entry = vs_of(render(plan(20)), "master-search")
    default = {"route": [{"destination": {"host": "master-search.search.svc.cluster.local", "port": {"number": 8000}},
                          "headers": {"request": {"set": {"x-team": "search"}, "remove": ["x-debug"]},
                                      "response": {"add": {"x-route": "default"}}}}]}
    carried = carry_user_settings(entry["spec"]["http"], default, "master-search", "x-canary-lane")
    for dest in carried[0]["route"]:
        assert dest["destination"]["port"] == {"number": 8000}
        assert dest["headers"]["request"]["set"] == {"x-team": "search", "x-canary-lane": dest["headers"]["request"]
                                                     ["set"]["x-canary-lane"]}
        assert dest["headers"]["request"]["remove"] == ["x-debug"]
        assert dest["headers"]["response"] == {"add": {"x-route": "default"}}
    assert [d["headers"]["request"]["set"]["x-canary-lane"] for d in carried[0]["route"]] == ["stable", "canary"]
    entry["spec"]["http"] = carried
    assert istio_errors(entry, strict=True) == []


def test_experiment_routes_carry_the_settings_too() -> None:
    p = plan(0).with_experiment(ExperimentRoutes((ExperimentArm("control", "v1", 50),
                                                  ExperimentArm("treatment", "v2", 50)), cohort_header="x-cohort"))
    entry = vs_of(render(p), "master-search")
    carried = carry_user_settings(entry["spec"]["http"], user_default(), "master-search", p.lane_header)
    assert all(r["timeout"] == "3s" and r["retries"]["attempts"] == 3 for r in carried)
    assign = carried[-1]
    assert all("set-cookie" in d["headers"]["response"]["add"] for d in assign["route"])
    entry["spec"]["http"] = carried
    assert istio_errors(entry, strict=True) == []


@pytest.mark.parametrize("default,reason", [
    ({"redirect": {"uri": "/v2"}}, "answers with 'redirect'"),
    ({"directResponse": {"status": 503}}, "answers with 'directResponse'"),
    ({"delegate": {"name": "search-routes"}}, "answers with 'delegate'"),
    ({"route": [{"destination": {"host": "legacy-search"}}]},
     "sends its traffic to legacy-search, not to master-search"),
    ({"route": [{"destination": {"host": "master-search", "subset": "v1"}, "weight": 90},
                {"destination": {"host": "legacy-search"}, "weight": 10}]},
     "splits its traffic itself over 2 destinations"),
    ({"route": [{"destination": {"host": "master-search"}}],
      "headers": {"request": {"remove": ["X-Canary-Lane"]}}}, "changes the header 'x-canary-lane'"),
    ({"route": [{"destination": {"host": "master-search"}}],
      "mirror": {"host": "master-search", "subset": "canary"}}, "subset 'canary'"),
])
def test_what_cannot_be_carried_is_refused_with_a_plain_reason(default: dict[str, object], reason: str) -> None:
    routes = vs_of(render(plan(10)), "master-search")["spec"]["http"]
    with pytest.raises(UncarryableRoute, match=re.escape(reason)) as caught:
        carry_user_settings(routes, {"name": "default", **default}, "master-search", "x-canary-lane")
    assert "route 'default'" in str(caught.value)


def test_user_routes_with_a_match_may_not_use_the_canary_subset_or_the_lane_header() -> None:
    check_user_route({"match": [{"uri": {"prefix": "/admin"}}], "route": [{"destination": {"host": "admin"}}]},
                     "master-search", "x-canary-lane")
    check_user_route({"match": [{"uri": {"prefix": "/beta"}}],
                      "route": [{"destination": {"host": "master-search", "subset": "stable"}}]},
                     "master-search", "x-canary-lane")
    with pytest.raises(UncarryableRoute, match="subset 'canary' of master-search"):
        check_user_route({"name": "beta", "match": [{"uri": {"prefix": "/beta"}}],
                          "route": [{"destination": {"host": "master-search", "subset": "canary"}}]},
                         "master-search", "x-canary-lane")
    with pytest.raises(UncarryableRoute, match="changes the header"):
        check_user_route({"match": [{"uri": {"prefix": "/beta"}}],
                          "route": [{"destination": {"host": "admin"},
                                     "headers": {"request": {"set": {"x-canary-lane": "canary"}}}}]},
                         "master-search", "x-canary-lane")


def test_behind_a_gateway_only_the_mesh_may_name_a_version_in_the_shadow_phase() -> None:
    """The shadow routes apply to the sidecars' requests only (`gateways: [mesh]`): a user's request through the
    gateway that carries the comparator's header still takes the split, where it lands on the stable version."""
    shadowed = plan(0, gateways=("search/search-gateway",), entry_hosts=("search.example.com",)).with_shadow(
        ShadowRoutes("canary-shadow"))
    objects = render(shadowed)
    for obj in objects:
        assert istio_errors(obj, strict=True) == [], (obj["kind"], obj["metadata"]["name"])
    validate_objects(objects)
    entry = next(o for o in objects if o["metadata"]["annotations"][ANNOTATION_ROLE] == "entry")
    shadow_routes = [r for r in entry["spec"]["http"] if r["name"] != ENTRY_ROUTE]
    assert [r["match"][0]["gateways"] for r in shadow_routes] == [["mesh"], ["mesh"]]
    assert entry["spec"]["gateways"] == ["search/search-gateway", "mesh"]
    back = read_plan(objects)
    assert back is not None and back.equivalent(shadowed) and back.shadow == shadowed.shadow
    # Without a gateway every request is the mesh's: no gateway match to write.
    plain = render(plan(0).with_shadow(ShadowRoutes("canary-shadow")))
    entry = next(o for o in plain if o["metadata"]["annotations"][ANNOTATION_ROLE] == "entry")
    assert "gateways" not in entry["spec"]["http"][0]["match"][0]
