"""Sticky A/B assignment with the local mesh router and the VirtualService shape recommended for it.

A request with an assignment cookie (`ab=<variant>`) goes to that variant; a request without one is split
by weight, and the chosen destination's `headers.response.add` sets the cookie, so each user stays on one
variant for the whole experiment. Every route also sets the lane header, so the whole stack path follows
the variant. Explicit cohorts (a header) route exactly and ahead of the cookie. Checked against the real
Envoy (the local mesh) with trivial upstreams, and against Istio's own CRD schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from controller.adapters.istio.validate import validate_objects
from tests.localmesh.harness import LoopThread
from tests.localmesh.users import (
    COOKIE,
    LANE_HEADER,
    ShopMesh,
    ask,
    browse,
    port_of,
    shop_router,
    split_fits,
    users_per_variant,
)
from tests.support.istio_schema import istio_errors

API = "networking.istio.io/v1"
MAX_AGE_S = 7 * 24 * 3600  # outlive the experiment's maxDuration, or users get re-assigned
COHORT_HEADER = "x-experiment-cohort"
USERS, REQUESTS_PER_USER = 1000, 20


def cookie_regex(variant: str) -> str:
    """The whole `cookie` header (Istio/RE2 regexes match the whole value) holding `ab=<variant>`."""
    return rf"^(.*?;\s*)?{COOKIE}={re.escape(variant)}(;.*)?$"


def to_variant(variant: str, weight: int | None = None, assign: bool = False) -> dict[str, Any]:
    """A destination of the variant's subset that puts the request in the variant's lane and, when it
    assigns a new user, sets the assignment cookie on the response."""
    headers: dict[str, Any] = {"request": {"set": {LANE_HEADER: variant}}}
    if assign:
        headers["response"] = {"add": {"set-cookie": f"{COOKIE}={variant}; Path=/; Max-Age={MAX_AGE_S}; HttpOnly"}}
    d: dict[str, Any] = {"destination": {"host": "shop", "subset": variant}, "headers": headers}
    if weight is not None:
        d["weight"] = weight
    return d


def sticky_virtual_service(weights: dict[str, int]) -> dict[str, Any]:
    """The recommended entry VirtualService of an experiment: cohort header routes, then cookie routes,
    then the weighted assignment route (no match: every request without a live variant's cookie)."""
    cohorts = [
        {"name": f"cohort-{v}", "match": [{"headers": {COHORT_HEADER: {"exact": v}}}], "route": [to_variant(v)]}
        for v in weights
    ]
    sticky = [
        {"name": f"sticky-{v}", "match": [{"headers": {"cookie": {"regex": cookie_regex(v)}}}],
         "route": [to_variant(v)]}
        for v in weights
    ]
    assign = {"name": "assign", "route": [to_variant(v, w, assign=True) for v, w in weights.items()]}
    return {
        "apiVersion": API,
        "kind": "VirtualService",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {"hosts": ["shop"], "http": [*cohorts, *sticky, assign]},
    }


def destination_rule(variants: tuple[str, ...]) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "DestinationRule",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {"host": "shop", "subsets": [{"name": v, "labels": {"version": v}} for v in variants]},
    }


WEIGHTS = {"v1": 70, "v2": 30}


def experiment_objects(weights: dict[str, int] = WEIGHTS) -> list[dict[str, Any]]:
    return [destination_rule(tuple(weights)), sticky_virtual_service(weights)]


# ---------------------------------------------------------------------------------------------------
# A user-level client: one keep-alive connection per worker, each user's cookie jar fed by Set-Cookie.














# ---------------------------------------------------------------------------------------------------
# Fixtures and tests.




@pytest.fixture(scope="module")
def router(loop: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopMesh]:
    with shop_router(loop, experiment_objects(), tmp_path_factory.mktemp("envoy")) as r:
        yield r






def test_the_recommended_objects_are_valid_for_istio_and_the_router() -> None:
    for weights in (WEIGHTS, {"v1": 34, "v2": 33, "v3": 33}):
        objects = experiment_objects(weights)
        for obj in objects:
            assert istio_errors(obj, strict=True) == []
        validate_objects(objects)


@pytest.mark.slow
@pytest.mark.integration
def test_every_user_sees_one_variant_and_new_users_split_by_weight(loop: LoopThread, router: ShopMesh) -> None:
    router.apply_config(experiment_objects())
    users = [f"user-{i:04d}" for i in range(USERS)]
    logs = loop.run(browse(port_of(router), users, REQUESTS_PER_USER), timeout=150)
    first = users_per_variant(logs, REQUESTS_PER_USER, lambda variant, set_cookies: set_cookies == [
        f"{COOKIE}={variant}; Path=/; Max-Age={MAX_AGE_S}; HttpOnly"])
    fits, p = split_fits(first, {"v1": 0.70, "v2": 0.30})
    assert fits, (first, p)
    assert first["v1"] + first["v2"] == USERS


def test_cohort_header_and_cookies_route_exactly(loop: LoopThread, router: ShopMesh) -> None:
    router.apply_config(experiment_objects())
    port = port_of(router)

    cases = {
        "v2": [{COHORT_HEADER: "v2"}, {COHORT_HEADER: "v2", "cookie": "ab=v1"}, {"cookie": "theme=dark; ab=v2"}],
        "v1": [{COHORT_HEADER: "v1", "cookie": "ab=v2"}, {"cookie": "ab=v1"}, {"cookie": "ab=v1; theme=dark"}],
    }
    for variant, header_sets in cases.items():
        for headers in header_sets * 20:
            answer = loop.run(ask(port, headers))
            assert answer.get("x-served-by") == [f"shop-{variant}"], headers
            assert answer.get("set-cookie") == [], "an assigned user keeps its cookie"
    # Near misses of the cookie fall through to the assignment route: they get a fresh cookie.
    for cookie in ("ab=v22", "xab=v2", "ab=v3", "ab="):
        answer = loop.run(ask(port, {"cookie": cookie}))
        assert len(answer.get("set-cookie")) == 1, cookie


def test_a_dropped_variant_reassigns_its_users(loop: LoopThread, router: ShopMesh) -> None:
    """After an experiment ends on v1, the v2 cookie no longer matches a route: those users are
    re-assigned (100% to v1) and get a new cookie, instead of a 404 or a stale variant."""
    router.apply_config(experiment_objects({"v1": 100}))
    port = port_of(router)

    answers = [loop.run(ask(port, {"cookie": "ab=v2"})) for _ in range(30)]
    assert {a.get("x-served-by")[0] for a in answers} == {"shop-v1"}
    assert all(a.get("set-cookie")[0].startswith("ab=v1;") for a in answers)
