"""The routing renderer: valid for Istio and for the local router, and readable back into the same plan."""

from __future__ import annotations

import pytest

from controller.adapters.istio.render import read_plan, render
from controller.adapters.istio.validate import validate_objects
from controller.core.plan import InvalidPlan, RoutingPlan, ServiceVersions
from tests.support.istio_schema import istio_errors

SERVICES = ("master-search", "ml-infer", "ml-search", "keyword", "text-search")


def plan(weight: int = 10, changed: tuple[str, ...] = SERVICES, **kw: object) -> RoutingPlan:
    return RoutingPlan(
        namespace="search", entry="master-search",
        services=tuple(ServiceVersions(s, "v1", "v2" if s in changed else None) for s in SERVICES),
        canary_weight=weight, owner="search-v2", **kw,  # type: ignore[arg-type]
    )


PLANS = {
    "all changed at 10%": plan(10),
    "two changed at 50%": plan(50, ("ml-search", "keyword")),
    "entry unchanged": plan(25, ("ml-infer",)),
    "before traffic": plan(0),
    "full canary": plan(100),
    "rolled back": plan(30).all_stable(),
    "promoted": plan(30).promoted(),
    "behind a gateway": plan(10, gateways=("search/search-gateway",), entry_hosts=("search.example.com",)),
}


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
