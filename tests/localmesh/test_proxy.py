"""The local mesh router routes exactly by the Istio objects, counts exactly, and runs as a clean process.

Upstreams here are tiny asyncio servers that answer with their own identity and echo what they received
(not the search stack). Most tests run the router in-process on a background event loop; the admin-API
and SIGTERM tests start it as a real process.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import binom

from analysis.observations import ISTIO_BUCKETS_MS
from controller.adapters.istio.validate import InvalidRouteConfig, validate_objects
from controller.adapters.local.mesh_admin import RouterAdmin, RouterConfigRejected
from localmesh.server import MeshRouter
from localmesh.table import Request, RouteTable, compile_table, parse_endpoints
from tests.localmesh.harness import LoopThread, Upstream, raw_request
from tests.support.istio_schema import assert_valid_istio
from tests.support.paths import REPO

API = "networking.istio.io/v1"


# ---------------------------------------------------------------------------------------------------
# A background event loop, trivial upstreams and a small pipelining-free async client.








@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _ReplyReader:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    done: bool = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True




async def exchange_many(port: int, requests: list[bytes], concurrency: int = 8, deadline_s: float = 30) -> list[Reply]:
    """Send raw requests over `concurrency` keep-alive connections, one at a time per connection."""
    replies: list[Reply | None] = [None] * len(requests)
    todo = collections.deque(range(len(requests)))
    stop_at = time.monotonic() + deadline_s

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while todo and time.monotonic() < stop_at:
                i = todo.popleft()
                writer.write(requests[i])
                r = _ReplyReader()
                parser = httptools.HttpResponseParser(r)
                while not r.done:
                    data = await asyncio.wait_for(reader.read(65536), 10)
                    assert data, "router closed the connection mid-response"
                    parser.feed_data(data)
                replies[i] = Reply(parser.get_status_code(), r.headers, r.body)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    assert all(r is not None for r in replies), "load loop hit its deadline"
    return [r for r in replies if r is not None]


# ---------------------------------------------------------------------------------------------------
# Objects.


def meta(name: str) -> dict[str, str]:
    return {"name": name, "namespace": "default"}


def destination_rule(service: str, versions: tuple[str, ...] = ("v1", "v2")) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "DestinationRule",
        "metadata": meta(service),
        "spec": {"host": service, "subsets": [{"name": v, "labels": {"version": v}} for v in versions]},
    }


def _to(subset: str, weight: int | None = None, lane: str | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"destination": {"host": "shop", "subset": subset}}
    if weight is not None:
        d["weight"] = weight
    if lane is not None:
        d["headers"] = {"request": {"set": {"x-canary-lane": lane}}, "response": {"add": {"x-lane-seen": lane}}}
    return d


def _marked(name: str, match: list[dict[str, Any]] | None, route: list[dict[str, Any]]) -> dict[str, Any]:
    r: dict[str, Any] = {
        "name": name,
        "route": route,
        "headers": {
            "response": {"set": {"x-route": name}, "remove": ["x-upstream-drop"]},
            "request": {"add": {"x-route-seen": name}},
        },
    }
    if match is not None:
        r["match"] = match
    return r


def shop_virtual_service(canary_weight: int = 10) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "VirtualService",
        "metadata": meta("shop"),
        "spec": {
            "hosts": ["shop", "shop.example.com"],
            "http": [
                _marked("header-lane", [{"headers": {"x-lane": {"exact": "canary"}}}], [_to("v2")]),
                _marked("cookie", [{"headers": {"cookie": {"regex": "^(.*?;\\s*)?user=beta(;.*)?$"}}}], [_to("v2")]),
                _marked(
                    "paths", [{"uri": {"prefix": "/api/v2/"}}, {"uri": {"regex": "/items/[0-9]+/v2"}}], [_to("v2")]
                ),
                _marked("post-submit", [{"method": {"exact": "POST"}, "uri": {"exact": "/submit"}}], [_to("v1")]),
                _marked("not-bots", [{"uri": {"prefix": "/nobots"}, "withoutHeaders": {"x-bot": {}}}], [_to("v2")]),
                _marked("query", [{"queryParams": {"beta": {"exact": "1"}}}], [_to("v2")]),
                _marked(
                    "release-split",
                    None,
                    [_to("v1", 100 - canary_weight, "stable"), _to("v2", canary_weight, "canary")],
                ),
            ],
        },
    }


def shop_objects(canary_weight: int = 10) -> list[dict[str, Any]]:
    return [destination_rule("shop"), shop_virtual_service(canary_weight)]


# ---------------------------------------------------------------------------------------------------
# Fixtures.


@dataclass
class Mesh:
    loop: LoopThread
    router: MeshRouter
    upstreams: dict[str, Upstream]

    @property
    def port(self) -> int:
        assert self.router.proxy_address is not None
        return self.router.proxy_address[1]

    def send(self, requests: list[bytes], concurrency: int = 8) -> list[Reply]:
        return self.loop.run(exchange_many(self.port, requests, concurrency), timeout=60)

    def one(
        self, method: str, path: str, host: str = "shop", headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Reply:
        return self.send([raw_request(method, path, host, headers, body)], 1)[0]


@pytest.fixture(scope="module")
def upstreams(loop: LoopThread) -> Iterator[dict[str, Upstream]]:
    ups = {
        u.workload: u
        for u in (
            Upstream("shop", "v1"),
            Upstream("shop", "v2"),
            Upstream("plain", "v1"),
            Upstream("plain", "v2"),
            Upstream("flaky", "v1", close_after_response=True),
        )
    }
    for u in ups.values():
        loop.run(u.start())
    yield ups
    for u in ups.values():
        assert u.server is not None
        u.server.close()


@pytest.fixture
def mesh(loop: LoopThread, upstreams: dict[str, Upstream]) -> Iterator[Mesh]:
    router = MeshRouter(shop_objects(), [u.endpoint() for u in upstreams.values()])
    loop.run(router.start(admin_port=None))
    yield Mesh(loop, router, upstreams)
    loop.run(router.stop())


# ---------------------------------------------------------------------------------------------------
# Routing.


def test_test_objects_are_valid_for_istio_too() -> None:
    for obj in [*shop_objects(), destination_rule("plain"), destination_rule("flaky", ("v1",))]:
        assert_valid_istio(obj)


def test_weights_10_90_land_within_binomial_bounds(mesh: Mesh) -> None:
    n = 10_000
    replies = mesh.send([raw_request("GET", "/search", "shop")] * n, concurrency=16)
    served = collections.Counter(r.headers["x-served-by"] for r in replies)
    assert {r.status for r in replies} == {200}
    low, high = binom.ppf(0.0005, n, 0.10), binom.ppf(0.9995, n, 0.10)
    assert low <= served["shop-v2"] <= high, served
    assert served["shop-v1"] + served["shop-v2"] == n


def test_zero_and_full_weights_are_absolute(mesh: Mesh) -> None:
    for weight, expected in ((0, "shop-v1"), (100, "shop-v2")):
        mesh.router.apply_config(shop_objects(weight))
        replies = mesh.send([raw_request("GET", "/", "shop")] * 300)
        assert {r.headers["x-served-by"] for r in replies} == {expected}


def test_header_match_routes_exactly(mesh: Mesh) -> None:
    lane = mesh.send([raw_request("GET", "/", "shop", {"x-lane": "canary"})] * 200)
    assert {(r.headers["x-served-by"], r.headers["x-route"]) for r in lane} == {("shop-v2", "header-lane")}
    # A near miss of the exact value falls through to the split.
    near = mesh.send([raw_request("GET", "/", "shop", {"x-lane": "canary2"})] * 50)
    assert {r.headers["x-route"] for r in near} == {"release-split"}


def test_cookie_regex_prefix_method_query_and_without_headers(mesh: Mesh) -> None:
    cases = [
        ("GET", "/", {"cookie": "a=1; user=beta"}, "cookie"),
        ("GET", "/", {"cookie": "user=betamax"}, "release-split"),
        ("GET", "/api/v2/items", {}, "paths"),
        ("GET", "/api/v1/items", {}, "release-split"),
        ("GET", "/items/42/v2", {}, "paths"),
        ("GET", "/items/42/v2/more", {}, "release-split"),  # regex matches the whole path
        ("GET", "/items/4x/v2", {}, "release-split"),
        ("POST", "/submit", {}, "post-submit"),
        ("GET", "/submit", {}, "release-split"),
        ("GET", "/nobots", {}, "not-bots"),
        ("GET", "/nobots", {"x-bot": "yes"}, "release-split"),
        ("GET", "/x?beta=1", {}, "query"),
        ("GET", "/x?beta=10", {}, "release-split"),
    ]
    for method, path, headers, route in cases:
        reply = mesh.one(method, path, headers=headers)
        assert reply.headers["x-route"] == route, (method, path, headers)


def test_host_forms_and_port_are_recognised(mesh: Mesh) -> None:
    for host in (
        "shop",
        "shop:8080",
        "shop.default",
        "shop.default.svc",
        "shop.default.svc.cluster.local:80",
        "shop.example.com",
    ):
        assert mesh.one("GET", "/", host=host, headers={"x-lane": "canary"}).headers["x-route"] == "header-lane"


def test_header_operations_reach_upstream_and_client(mesh: Mesh) -> None:
    replies = mesh.send([raw_request("GET", "/", "shop", {"x-mesh-source-workload": "loadgen-v1"})] * 200)
    for r in replies:
        seen = r.json()["headers"]
        lane = "canary" if r.headers["x-served-by"] == "shop-v2" else "stable"
        assert seen["x-canary-lane"] == lane  # destination-level request set
        assert seen["x-route-seen"] == "release-split"  # route-level request add
        assert "x-mesh-source-workload" not in seen  # stripped before forwarding
        assert r.headers["x-lane-seen"] == lane  # destination-level response add
        assert r.headers["x-route"] == "release-split"  # route-level response set
        assert "x-upstream-drop" not in r.headers  # route-level response remove


def test_head_request_ends_at_the_headers(mesh: Mesh) -> None:
    with httpx.Client(timeout=5) as client:
        for _ in range(3):  # the connection after a HEAD is still good
            r = client.head(f"http://127.0.0.1:{mesh.port}/", headers={"host": "shop", "x-lane": "canary"})
            assert (r.status_code, r.headers["x-served-by"], r.content) == (200, "shop-v2", b"")
            assert int(r.headers["content-length"]) > 0


def test_no_virtual_service_means_all_endpoints_round_robin(mesh: Mesh) -> None:
    replies = mesh.send([raw_request("GET", "/", "plain")] * 40, concurrency=1)
    served = collections.Counter(r.headers["x-served-by"] for r in replies)
    assert served == {"plain-v1": 20, "plain-v2": 20}


def test_bodies_content_length_and_chunked_both_ways(mesh: Mesh) -> None:
    r = mesh.one("POST", "/submit", body=b"x" * 100_000)
    assert r.status == 200 and r.json()["body"] == "x" * 100_000
    chunked = raw_request("POST", "/submit", "shop", {"transfer-encoding": "chunked"})
    chunked = chunked.replace(b"content-length: 0\r\n", b"") + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    r = mesh.send([chunked], 1)[0]
    assert r.json()["body"] == "hello world" and r.json()["headers"]["content-length"] == "11"
    r = mesh.one("GET", "/chunked", headers={"x-lane": "canary"})
    assert r.headers["transfer-encoding"] == "chunked" and r.json()["served_by"] == "shop-v2"


def test_no_endpoint_is_503_unknown_host_404_dead_endpoint_503(mesh: Mesh, upstreams: dict[str, Upstream]) -> None:
    endpoints = [u.endpoint() for u in upstreams.values() if u.workload != "shop-v2"]
    mesh.router.set_endpoints([*endpoints, {"service": "dead", "labels": {"version": "v1"}, "address": "127.0.0.1:1"}])
    assert mesh.one("GET", "/", headers={"x-lane": "canary"}).status == 503
    assert mesh.one("GET", "/", host="nowhere.example.org").status == 404
    assert mesh.one("GET", "/", host="dead").status == 503
    families = {f.name: f for f in text_string_to_metric_families(mesh.router.metrics_text())}
    flags = {
        (s.labels["destination_service_name"], s.labels["destination_version"], s.labels["response_flags"])
        for s in families["istio_requests"].samples
    }
    assert {("shop", "unknown", "UH"), ("dead", "v1", "UF")} <= flags


def test_pooled_keepalive_connections_and_stale_connection_retry(mesh: Mesh, upstreams: dict[str, Upstream]) -> None:
    before = upstreams["plain-v1"].connections
    mesh.send([raw_request("GET", "/", "plain")] * 400, concurrency=4)
    assert upstreams["plain-v1"].connections - before <= 8  # reused, not one per request
    # flaky closes every connection after answering: each request must still succeed.
    replies = mesh.send([raw_request("GET", "/", "flaky")] * 50, concurrency=1)
    assert {r.status for r in replies} == {200}


def test_invalid_config_in_process_raises_and_old_config_stays(mesh: Mesh) -> None:
    bad = shop_objects()
    bad[1]["spec"]["http"][-1]["route"][1]["weight"] = -5
    with pytest.raises(InvalidRouteConfig, match=r"spec\.http\[6\]\.route\[1\]\.weight: -5 is negative"):
        mesh.router.apply_config(bad)
    assert mesh.router.config() == shop_objects()
    assert mesh.one("GET", "/", headers={"x-lane": "canary"}).headers["x-route"] == "header-lane"


# ---------------------------------------------------------------------------------------------------
# Metrics.


def _series(
    text: str,
) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], dict[str, float]], dict[Any, float]]:
    counts: dict[tuple[str, ...], float] = {}
    buckets: dict[tuple[str, ...], dict[str, float]] = collections.defaultdict(dict)
    hist_counts: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (
                s.labels.get("source_workload", ""),
                s.labels.get("destination_workload", ""),
                s.labels.get("destination_version", ""),
                s.labels.get("response_code", ""),
            )
            if s.name == "istio_requests_total":
                assert s.labels["reporter"] == "destination" and s.labels["request_protocol"] == "http"
                counts[key] = s.value
            elif s.name == "istio_request_duration_milliseconds_bucket":
                buckets[key][s.labels["le"]] = s.value
            elif s.name == "istio_request_duration_milliseconds_count":
                hist_counts[key] = s.value
    return counts, buckets, hist_counts


def test_metrics_count_exactly_per_version_and_code(mesh: Mesh) -> None:
    requests = (
        [raw_request("GET", "/status/200", "shop", {"x-mesh-source-workload": "loadgen-v1"})] * 300
        + [raw_request("GET", "/status/500", "shop")] * 100
        + [raw_request("GET", "/status/404", "shop", {"x-lane": "canary"})] * 30
        + [raw_request("GET", "/", "shop", {"x-mesh-source-workload": 'we"ird\\'})] * 7  # label escaping
    )
    replies = mesh.send(requests)
    expected: collections.Counter[tuple[str, ...]] = collections.Counter()
    for req, r in zip(requests, replies, strict=True):
        source = "loadgen-v1" if b"loadgen" in req else 'we"ird\\' if b"ird" in req else "unknown"
        workload = r.headers["x-served-by"]
        expected[(source, workload, workload.split("-")[1], str(r.status))] += 1
    counts, buckets, hist_counts = _series(mesh.router.metrics_text())
    assert counts == dict(expected)
    assert hist_counts == dict(expected)
    les = [("+Inf" if b == float("inf") else str(b if b != int(b) else int(b))) for b in ISTIO_BUCKETS_MS]
    for key, by_le in buckets.items():
        cumulative = [by_le[le] for le in les]
        assert cumulative == sorted(cumulative) and cumulative[-1] == counts[key]


# ---------------------------------------------------------------------------------------------------
# The router as a process, driven through its admin API.


@dataclass
class RouterProcess:
    proc: subprocess.Popen[str]
    port: int
    admin_url: str
    admin: RouterAdmin


def _start_router(tmp_path: Path, objects: list[dict[str, Any]], endpoints: list[dict[str, Any]]) -> RouterProcess:
    (tmp_path / "config.json").write_text(json.dumps({"objects": objects}))
    (tmp_path / "endpoints.json").write_text(json.dumps(endpoints))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localmesh.server",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--config",
            str(tmp_path / "config.json"),
            "--endpoints",
            str(tmp_path / "endpoints.json"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the ready line (or EOF if it died)
    if not line.startswith("mesh-router ready"):
        proc.kill()
        raise AssertionError(f"router did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    fields = dict(part.split("=", 1) for part in line.split()[2:])
    port = int(fields["proxy"].rsplit(":", 1)[1])
    admin_url = f"http://{fields['admin']}"
    return RouterProcess(proc, port, admin_url, RouterAdmin(admin_url))


@pytest.fixture
def router_process(tmp_path: Path, upstreams: dict[str, Upstream]) -> Iterator[RouterProcess]:
    rp = _start_router(tmp_path, shop_objects(), [u.endpoint() for u in upstreams.values()])
    yield rp
    rp.admin.close()
    if rp.proc.poll() is None:
        os.kill(rp.proc.pid, signal.SIGTERM)
        try:
            rp.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(rp.proc.pid, signal.SIGKILL)
            rp.proc.wait(5)
    for stream in (rp.proc.stdout, rp.proc.stderr):
        if stream is not None:
            stream.close()


@pytest.mark.integration
def test_admin_rejects_bad_config_with_400_and_old_config_keeps_routing(router_process: RouterProcess) -> None:
    admin, url = router_process.admin, f"http://127.0.0.1:{router_process.port}/"
    assert admin.healthy()
    bad = shop_objects()
    bad[1]["spec"]["http"][0]["route"][0]["wieght"] = 100
    with pytest.raises(RouterConfigRejected, match=r"spec\.http\[0\]\.route\[0\]\.wieght: unknown field"):
        admin.put_config(bad)
    raw = httpx.put(f"{router_process.admin_url}/config", content=b"not json")
    assert raw.status_code == 400 and "not JSON" in raw.json()["error"]
    assert admin.get_config() == shop_objects()
    with httpx.Client() as client:
        r = client.get(url, headers={"host": "shop", "x-lane": "canary"})
        assert (r.status_code, r.headers["x-route"]) == (200, "header-lane")
        # A good config goes into force at once.
        admin.put_config(shop_objects(canary_weight=100))
        assert {client.get(url, headers={"host": "shop"}).headers["x-served-by"] for _ in range(20)} == {"shop-v2"}
        admin.put_endpoints([e for e in admin.get_endpoints() if e["labels"]["version"] != "v2"])
        assert client.get(url, headers={"host": "shop"}).status_code == 503
        with pytest.raises(RouterConfigRejected, match="address"):
            admin.put_endpoints([{"service": "shop", "labels": {"version": "v1"}, "address": "nowhere"}])


@pytest.mark.integration
def test_admin_metrics_parse_and_count_exactly(router_process: RouterProcess) -> None:
    with httpx.Client() as client:
        served = collections.Counter(
            client.get(f"http://127.0.0.1:{router_process.port}/", headers={"host": "shop"}).headers["x-served-by"]
            for _ in range(120)
        )
    counts, _, _ = _series(router_process.admin.metrics_text())
    assert {k[1]: v for k, v in counts.items()} == dict(served)


@pytest.mark.integration
def test_router_process_stops_on_sigterm(router_process: RouterProcess) -> None:
    pid = router_process.proc.pid
    os.kill(pid, signal.SIGTERM)
    assert router_process.proc.wait(5) == 0
    assert not Path(f"/proc/{pid}").exists()
    assert router_process.proc.stdout is not None
    assert "mesh-router stopped" in router_process.proc.stdout.read()


@pytest.mark.integration
def test_start_with_invalid_config_file_fails_clearly(tmp_path: Path) -> None:
    bad = shop_objects()
    bad[0]["spec"]["subsets"].append({"name": "v1", "labels": {"version": "v9"}})
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "localmesh.server",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--config",
            str(tmp_path / "bad.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 2
    assert "spec.subsets[2].name: 'v1' duplicates spec.subsets[0].name" in out.stderr


# ---------------------------------------------------------------------------------------------------
# The routing table alone (no sockets).


def _table(objects: list[dict[str, Any]]) -> RouteTable:
    validate_objects(objects)
    endpoints = parse_endpoints(
        [{"service": "shop", "labels": {"version": v}, "address": f"127.0.0.1:{9000 + i}"} for i, v in enumerate("12")]
    )
    return compile_table(objects, endpoints)


def _get(path: str = "/", **headers: str) -> Request:
    return Request(
        "GET", path.split("?")[0], path.partition("?")[2], {k.replace("_", "-"): v for k, v in headers.items()}
    )


def test_table_wildcard_hosts_authority_and_ignore_uri_case() -> None:
    vs = {
        "apiVersion": API,
        "kind": "VirtualService",
        "metadata": meta("edge"),
        "spec": {
            "hosts": ["*.example.com", "api.example.com"],
            "http": [
                {
                    "match": [{"uri": {"prefix": "/admin"}, "ignoreUriCase": True}],
                    "route": [{"destination": {"host": "shop", "subset": "v2"}}],
                },
                {
                    "match": [{"authority": {"regex": "beta\\..*"}}],
                    "route": [{"destination": {"host": "shop", "subset": "v2"}}],
                },
                {"route": [{"destination": {"host": "shop", "subset": "v1"}}]},
            ],
        },
    }
    assert_valid_istio(vs)
    table = _table([_dr12(), vs])

    def version(host: str, request: Request) -> str | None:
        endpoint = table.decide(host, request).endpoint
        return endpoint.version if endpoint is not None else None

    assert version("www.example.com", _get("/ADMIN/x")) == "2"
    assert version("api.example.com", _get("/shop")) == "1"
    assert version("beta.example.com", _get("/shop", host="beta.example.com")) == "2"
    assert table.decide("example.org", _get()).no_route


def _dr12() -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "DestinationRule",
        "metadata": meta("shop"),
        "spec": {
            "host": "shop",
            "subsets": [{"name": "v1", "labels": {"version": "1"}}, {"name": "v2", "labels": {"version": "2"}}],
        },
    }


def test_table_zero_weight_destination_is_never_chosen() -> None:
    vs = {
        "apiVersion": API,
        "kind": "VirtualService",
        "metadata": meta("shop"),
        "spec": {
            "hosts": ["shop"],
            "http": [
                {
                    "route": [
                        {"destination": {"host": "shop", "subset": "v1"}, "weight": 0},
                        {"destination": {"host": "shop", "subset": "v2"}, "weight": 100},
                        {"destination": {"host": "shop", "subset": "v1"}, "weight": 0},
                    ]
                }
            ],
        },
    }
    table = _table([_dr12(), vs])
    chosen = {getattr(table.decide("shop", _get()).endpoint, "version", None) for _ in range(2000)}
    assert chosen == {"2"}
