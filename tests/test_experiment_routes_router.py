"""The experiment renderer's objects in the real local mesh router (in-process, trivial upstreams).

The same checks as tests/test_router_sticky.py, but on what `controller.routing.experiment` renders for a
release: 1,000 users x 20 requests each see exactly one variant, with the lane header following it; new
users split by the weights within binomial bounds; cohort headers and cookies route exactly.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from typing import Any

import pytest
from scipy.stats import binom

from controller.local.router import MeshRouter
from controller.machine import base_plan
from controller.routing.render import render
from controller.spec import parse_release
from tests.test_router import LoopThread, Upstream, raw_request
from tests.test_router_sticky import Answer, browse, exchange

USERS, REQUESTS_PER_USER = 1000, 20


def shop_objects(v2_weight: int = 30) -> list[dict[str, Any]]:
    spec = parse_release({"metadata": {"name": "shop-ab", "namespace": "default"}, "spec": {
        "stack": {"entry": "shop", "services": ["shop"]},
        "stable": {"version": "v1"}, "canary": {"version": "v2"},
        "strategy": {"abTest": {
            "variants": [{"name": "v1", "weight": 100 - v2_weight}, {"name": "v2", "weight": v2_weight}],
            "primaryMetric": {"kind": "proportion", "name": "click-through"}, "cohortHeader": "x-cohort"}}}})
    assert spec.experiment is not None
    return render(base_plan(spec).with_experiment(spec.experiment.routes))


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def router(loop: LoopThread) -> Iterator[MeshRouter]:
    ups = [Upstream("shop", v) for v in ("v1", "v2")]
    for u in ups:
        loop.run(u.start())
    r = MeshRouter(shop_objects(), [u.endpoint() for u in ups])
    loop.run(r.start(admin_port=None))
    yield r
    loop.run(r.stop())
    for u in ups:
        assert u.server is not None
        u.server.close()


def port_of(router: MeshRouter) -> int:
    assert router.proxy_address is not None
    return router.proxy_address[1]


@pytest.mark.slow
@pytest.mark.integration
def test_rendered_experiment_keeps_every_user_on_one_variant(loop: LoopThread, router: MeshRouter) -> None:
    router.apply_config(shop_objects())
    logs = loop.run(browse(port_of(router), [f"user-{i:04d}" for i in range(USERS)], REQUESTS_PER_USER),
                    timeout=150)
    first: collections.Counter[str] = collections.Counter()
    for user, log in logs.items():
        assert len(log.served) == REQUESTS_PER_USER
        assert len(set(log.served)) == 1, f"{user} saw {set(log.served)}"
        variant = log.served[0].removeprefix("shop-")
        assert set(log.lanes) == {variant}
        assert log.sent_cookie[0] is None and set(log.sent_cookie[1:]) == {f"ab={variant}"}
        assert log.set_cookies[0][0].startswith(f"ab={variant}; Path=/; Max-Age=")
        assert all(not s for s in log.set_cookies[1:])
        first[variant] += 1
    low, high = binom.ppf(0.0005, USERS, 0.30), binom.ppf(0.9995, USERS, 0.30)
    assert low <= first["v2"] <= high, first


def test_rendered_cohorts_and_cookies_route_exactly(loop: LoopThread, router: MeshRouter) -> None:
    router.apply_config(shop_objects())
    port = port_of(router)

    async def ask(headers: dict[str, str]) -> Answer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await exchange(reader, writer, raw_request("GET", "/", "shop", headers))
        finally:
            writer.close()

    cases = {
        "v2": [{"x-cohort": "v2"}, {"x-cohort": "v2", "cookie": "ab=v1"}, {"cookie": "theme=dark; ab=v2"}],
        "v1": [{"x-cohort": "v1", "cookie": "ab=v2"}, {"cookie": "ab=v1"}, {"cookie": "ab=v1; theme=dark"}],
    }
    for variant, header_sets in cases.items():
        for headers in header_sets * 10:
            answer = loop.run(ask(headers))
            assert answer.get("x-served-by") == [f"shop-{variant}"], headers
            assert answer.get("set-cookie") == []
    for cookie in ("ab=v22", "xab=v2", "ab="):
        assert len(loop.run(ask({"cookie": cookie})).get("set-cookie")) == 1, cookie
