"""The experiment renderer's objects in the real local mesh (Envoy, trivial upstreams).

The same checks as tests/localmesh/test_sticky.py, but on what `controller.adapters.istio.experiment` renders for a
release: 1,000 users x 20 requests each see exactly one variant, with the lane header following it; new
users split by the weights (a chi-square fit); cohort headers and cookies route exactly. A/B/n: the
same for three variants (v1 control, v2 the canary, v3 a further variant with its own subset and lane).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controller.adapters.istio.render import render
from controller.core.machine import base_plan
from controller.core.spec.release import parse_release
from tests.localmesh.harness import LoopThread
from tests.localmesh.users import ShopMesh, ask, browse, port_of, shop_router, split_fits, users_per_variant

USERS, REQUESTS_PER_USER = 1000, 20


def shop_objects(v2_weight: int = 30, v3_weight: int | None = None) -> list[dict[str, Any]]:
    control = 100 - v2_weight - (v3_weight or 0)
    variants = [{"name": "v1", "weight": control}, {"name": "v2", "weight": v2_weight}]
    if v3_weight is not None:
        variants.append({"name": "v3", "weight": v3_weight})
    spec = parse_release({"metadata": {"name": "shop-ab", "namespace": "default"}, "spec": {
        "stack": {"entry": "shop", "services": ["shop"]},
        "stable": {"version": "v1"}, "canary": {"version": "v2"},
        "strategy": {"abTest": {
            "variants": variants,
            "primaryMetric": {"kind": "proportion", "name": "click-through"}, "cohortHeader": "x-cohort"}}}})
    assert spec.experiment is not None
    return render(base_plan(spec).with_experiment(spec.experiment.routes))


@pytest.fixture(scope="module")
def router(loop: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopMesh]:
    with shop_router(loop, shop_objects(), tmp_path_factory.mktemp("envoy")) as r:
        yield r


@pytest.mark.slow
@pytest.mark.integration
def test_rendered_experiment_keeps_every_user_on_one_variant(loop: LoopThread, router: ShopMesh) -> None:
    router.apply_config(shop_objects())
    logs = loop.run(browse(port_of(router), [f"user-{i:04d}" for i in range(USERS)], REQUESTS_PER_USER),
                    timeout=150)
    first = users_per_variant(logs, REQUESTS_PER_USER, lambda variant, set_cookies: set_cookies[0].startswith(
        f"ab={variant}; Path=/; Max-Age="))
    fits, p = split_fits(first, {"v1": 0.70, "v2": 0.30})
    assert fits, (first, p)


def test_rendered_cohorts_and_cookies_route_exactly(loop: LoopThread, router: ShopMesh) -> None:
    router.apply_config(shop_objects())
    port = port_of(router)

    cases = {
        "v2": [{"x-cohort": "v2"}, {"x-cohort": "v2", "cookie": "ab=v1"}, {"cookie": "theme=dark; ab=v2"}],
        "v1": [{"x-cohort": "v1", "cookie": "ab=v2"}, {"cookie": "ab=v1"}, {"cookie": "ab=v1; theme=dark"}],
    }
    for variant, header_sets in cases.items():
        for headers in header_sets * 10:
            answer = loop.run(ask(port, headers))
            assert answer.get("x-served-by") == [f"shop-{variant}"], headers
            assert answer.get("set-cookie") == []
    for cookie in ("ab=v22", "xab=v2", "ab="):
        assert len(loop.run(ask(port, {"cookie": cookie})).get("set-cookie")) == 1, cookie


@pytest.mark.slow
@pytest.mark.integration
def test_three_variants_keep_every_user_on_one_variant_and_split_by_weight(loop: LoopThread,
                                                                            router: ShopMesh) -> None:
    weights = {"v1": 0.40, "v2": 0.25, "v3": 0.35}
    router.apply_config(shop_objects(v2_weight=25, v3_weight=35))
    logs = loop.run(browse(port_of(router), [f"user-{i:04d}" for i in range(USERS)], REQUESTS_PER_USER),
                    timeout=150)
    first = users_per_variant(logs, REQUESTS_PER_USER)
    assert set(first) == set(weights) and sum(first.values()) == USERS
    fits, p = split_fits(first, weights)  # the three shares at once (each within its own bounds was three chances)
    assert fits, (first, p)


def test_three_variants_cohorts_and_cookies_route_exactly(loop: LoopThread, router: ShopMesh) -> None:
    router.apply_config(shop_objects(v2_weight=25, v3_weight=35))
    port = port_of(router)

    cases = {
        "v3": [{"x-cohort": "v3"}, {"x-cohort": "v3", "cookie": "ab=v1"}, {"cookie": "theme=dark; ab=v3"}],
        "v2": [{"x-cohort": "v2", "cookie": "ab=v3"}, {"cookie": "ab=v2"}],
        "v1": [{"x-cohort": "v1", "cookie": "ab=v3"}, {"cookie": "ab=v1; theme=dark"}],
    }
    for variant, header_sets in cases.items():
        for headers in header_sets * 10:
            answer = loop.run(ask(port, headers))
            assert answer.get("x-served-by") == [f"shop-{variant}"], headers
            assert answer.get("set-cookie") == []
    for cookie in ("ab=v33", "ab=v4", "ab="):
        assert len(loop.run(ask(port, {"cookie": cookie})).get("set-cookie")) == 1, cookie
