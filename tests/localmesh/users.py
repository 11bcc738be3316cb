"""Users of the local mesh, for the sticky-assignment tests.

Real Envoy (the local mesh's data plane) in front of three versions of `shop`, a keep-alive client with one cookie
jar per user, and per-variant tallies.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
from scipy.stats import chisquare

from localmesh.endpoints import Endpoint, parse_endpoints
from localmesh.envoy.process import Envoy
from localmesh.envoy.translate import Options
from tests.localmesh.envoy.support import free_port
from tests.localmesh.harness import LoopThread, Upstream, raw_request

LANE_HEADER = "x-canary-lane"
COOKIE = "ab"


@dataclass
class Answer:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    done: bool = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode().lower(), value.decode()))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True

    def get(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass
class UserLog:
    served: list[str] = field(default_factory=list)  # x-served-by of each answer
    lanes: list[str] = field(default_factory=list)  # lane header each upstream received
    set_cookies: list[list[str]] = field(default_factory=list)
    sent_cookie: list[str | None] = field(default_factory=list)


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> Answer:
    writer.write(request)
    answer = Answer()
    parser = httptools.HttpResponseParser(answer)
    while not answer.done:
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert data, "router closed the connection mid-response"
        parser.feed_data(data)
    answer.status = parser.get_status_code()
    return answer


async def ask(port: int, headers: dict[str, str], host: str = "shop") -> Answer:
    """One GET / on a connection of its own, with these headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await exchange(reader, writer, raw_request("GET", "/", host, headers))
    finally:
        writer.close()


async def browse(port: int, users: list[str], requests_each: int, workers: int = 16) -> dict[str, UserLog]:
    """Every user makes `requests_each` requests in turn, sending back the cookie it was given."""
    logs = {u: UserLog() for u in users}
    todo = collections.deque(users)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while todo:
                user, jar = todo.popleft(), dict[str, str]()
                for _ in range(requests_each):
                    cookie = "; ".join(f"{k}={v}" for k, v in jar.items()) or None
                    headers = {"x-user-id": user, **({"cookie": cookie} if cookie else {})}
                    answer = await exchange(reader, writer, raw_request("GET", "/search", "shop", headers))
                    assert answer.status == 200, answer
                    log = logs[user]
                    log.sent_cookie.append(cookie)
                    log.served.append(answer.get("x-served-by")[0])
                    log.lanes.append(_echoed_lane(answer.body))
                    log.set_cookies.append(answer.get("set-cookie"))
                    for line in answer.get("set-cookie"):
                        name, _, rest = line.partition("=")
                        jar[name] = rest.split(";", 1)[0]
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(workers))), timeout=120)
    return logs


@dataclass
class ShopMesh:
    """Envoy routing `shop`'s three versions; `apply_config` puts Istio objects in effect (it waits for Envoy)."""

    envoy: Envoy
    endpoints: tuple[Endpoint, ...]

    def apply_config(self, objects: list[dict[str, Any]]) -> None:
        self.envoy.apply(objects, self.endpoints)

    @property
    def port(self) -> int:
        return self.envoy.options.port


@contextlib.contextmanager
def shop_router(loop: LoopThread, objects: list[dict[str, Any]], work_dir: Path) -> Iterator[ShopMesh]:
    """Envoy in front of shop v1, v2 and v3 (trivial upstreams on the loop), each stopped afterwards (Envoy by PID)."""
    ups = [Upstream("shop", v) for v in ("v1", "v2", "v3")]
    for u in ups:
        loop.run(u.start())
    mesh = ShopMesh(Envoy(work_dir, Options(port=free_port())), parse_endpoints([u.endpoint() for u in ups]))
    try:
        mesh.envoy.start()
        mesh.apply_config(objects)
        yield mesh
    finally:
        mesh.envoy.stop()
        for u in ups:
            if u.server is not None:
                u.server.close()


def port_of(router: ShopMesh) -> int:
    return router.port


def users_per_variant(logs: dict[str, UserLog], requests_each: int,
                      first_cookie: Callable[[str, list[str]], bool] | None = None) -> collections.Counter[str]:
    """Check that every user saw one variant on every request, with the lane header following it (the whole
    stack path), and that only the assigning answer set the cookie (`first_cookie(variant, set_cookies)`
    checks that answer's cookie when given); return how many users each variant got."""
    first: collections.Counter[str] = collections.Counter()
    for user, log in logs.items():
        assert len(log.served) == requests_each
        assert len(set(log.served)) == 1, f"{user} saw {set(log.served)}"
        variant = log.served[0].removeprefix("shop-")
        assert set(log.lanes) == {variant}, "the lane header follows the variant (the whole stack path)"
        assert log.sent_cookie[0] is None and set(log.sent_cookie[1:]) == {f"{COOKIE}={variant}"}
        if first_cookie is not None:
            assert first_cookie(variant, log.set_cookies[0]), log.set_cookies[0]
        assert all(not s for s in log.set_cookies[1:])  # sticky answers leave the cookie alone
        first[variant] += 1
    return first


def _echoed_lane(body: bytes) -> str:
    headers = json.loads(body)["headers"]
    return str(dict((k.lower(), v) for k, v in headers.items()).get(LANE_HEADER, ""))



# How often a correct split of new users fails `split_fits` by chance: once in 100,000 runs. At 1,000 users a
# split rendered wrong by a few points still fails it: 33/33/33 served for 40/25/35 has p ~ 2.6e-9, and 35/65 for
# 30/70 p ~ 6e-4 (not caught) while 40/60 has p ~ 5e-12. The shares of a failing full run here,
# 376/299/325 for 40/25/35 (v2 3.6 standard deviations high), have p ~ 0.0016.
SPLIT_ALPHA = 1e-5


def split_fits(first: collections.Counter[str], weights: dict[str, float]) -> tuple[bool, float]:
    """(whether, p-value): do the users each variant got fit the weights (shares summing to 1)? Pearson's
    chi-square test over all the variants at once, so that three variants are not three chances to fail."""
    users = sum(first.values())
    p = float(chisquare([first.get(v, 0) for v in weights], [users * w for w in weights.values()]).pvalue)
    return p >= SPLIT_ALPHA, p
