"""The routing plans the renderer's tests and the Envoy translation's tests check: a release at each stage, a
promotion, a rollback and one behind a gateway, for the five services of the search stack."""

from __future__ import annotations

from controller.core.plan import RoutingPlan, ServiceVersions, ShadowRoutes

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
    # A shadow phase (docs/shadow.md): no user on the new version, half the searches mirrored to the comparator.
    "shadow phase": plan(0).with_shadow(ShadowRoutes("canary-shadow", percent=50.0)),
    "shadow, entry unchanged": plan(0, ("ml-search",)).with_shadow(ShadowRoutes("canary-shadow", 9000, 100.0)),
}
