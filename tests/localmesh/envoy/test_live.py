"""A real Envoy on loopback, configured from Istio objects, in front of two backends (v1 and v2 of `shop`).

The split, the lane header and the header match of a release; a weight change (and subsets coming and going)
applied under load with no failed request, read back from Envoy's config dump; the routing features Envoy obeys
that the asyncio router refused (timeouts, retries, faults, mirroring) and the matches it shares; and Envoy's
own statistics per cluster, which the next step maps onto Istio's metrics.

Envoy's statistics, as `/stats/prometheus` shows them with the bootstrap's Istio tag rules (recorded for the
mapping to `istio_requests_total` / `istio_request_duration_milliseconds_bucket`):

- `envoy_cluster_upstream_rq{cluster_name="outbound|<port>|<version>|<svc>.<ns>.svc.cluster.local",
  response_code="200"}`, a counter per cluster and status code (the cluster's stat name carries the version its
  endpoints run, not the subset: `localmesh.envoy.translate.stat_name`); the same metric name also carries a second
  series per cluster with `response_code_class="2xx"` instead of `response_code` (sum only one of the two);
  `envoy_cluster_external_upstream_rq{...}` repeats them for requests not marked internal.
- `envoy_cluster_upstream_rq_time_bucket{cluster_name="...", le="..."}` (and `_sum`, `_count`), a histogram
  in milliseconds with the bounds 0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
  60000, 300000, 600000, 1800000, 3600000, +Inf: Envoy's defaults, equal to Istio's (`ISTIO_BUCKETS_MS`).
  It measures the upstream request (Envoy to backend), not the whole downstream exchange.
"""

from __future__ import annotations

import math
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from analysis.observations import ISTIO_BUCKETS_MS
from controller.adapters.istio.validate import validate_objects
from localmesh.envoy.process import Envoy, EnvoyConfigRejected, envoy_version
from localmesh.envoy.translate import Options
from tests.localmesh.envoy.support import (
    LANE,
    SERVICE,
    Backend,
    Client,
    Obj,
    all_stable,
    cluster,
    destination_rule,
    free_port,
    release,
    stat,
    to,
    virtual_service,
)

Result = tuple[int, Obj | None]


def endpoints(backends: dict[str, Backend]) -> list:  # type: ignore[type-arg]
    return [b.endpoint() for b in backends.values()]


def load(port: int, total: int, threads: int, headers: dict[str, str] | None = None,
         host: str = SERVICE) -> list[Result]:
    """`total` requests over `threads` keep-alive connections (bounded by count, and by 30 s per thread)."""
    results: list[Result] = []
    lock = threading.Lock()

    def worker(count: int) -> None:
        client, mine, deadline = Client(port), [], time.monotonic() + 30
        try:
            for _ in range(count):
                if time.monotonic() > deadline:
                    break
                status, body, _ = client.get("/", host=host, headers=headers)
                mine.append((status, body))
        finally:
            client.close()
            with lock:
                results.extend(mine)

    workers = [threading.Thread(target=worker, args=(total // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(40)
    return results


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.timeout(60)
def test_a_70_30_split_lands_within_its_binomial_bound_and_each_destination_sets_its_lane(
        envoy: Envoy, backends: dict[str, Backend]) -> None:
    objects = release(30)
    validate_objects(objects)
    envoy.apply(objects, endpoints(backends))
    results = load(envoy.options.port, 2000, 4)
    assert len(results) == 2000 and {status for status, _ in results} == {200}
    versions = Counter(body["version"] for _, body in results if body)
    share = versions["v2"] / 2000
    print(f"70/30 split through Envoy: {dict(versions)} (v2 share {share:.3f})")
    # Envoy draws each request's cluster at random: 4.5 binomial standard deviations (0.046) fail a right split
    # about once in 150,000 runs (3 points failed one in about 300: 0.332 once) and miss a 60/40 split about once
    # in two million.
    assert abs(share - 0.30) <= 4.5 * math.sqrt(0.3 * 0.7 / 2000), versions
    lanes = {(body["version"], body["headers"].get(LANE)) for _, body in results if body}
    assert lanes == {("v1", "stable"), ("v2", "canary")}


@pytest.mark.timeout(30)
def test_the_canary_lane_header_always_reaches_v2(envoy: Envoy, backends: dict[str, Backend]) -> None:
    envoy.apply(release(30), endpoints(backends))
    results = load(envoy.options.port, 300, 2, headers={LANE: "canary"})
    assert len(results) == 300
    assert {(status, body["version"] if body else None) for status, body in results} == {(200, "v2")}


class Hammer:
    """8 keep-alive clients looping until stopped (at most 15 s and 40,000 requests in all), counting failures:
    any status but 200, any connection error."""

    def __init__(self, port: int, threads: int = 8, seconds: float = 15.0, cap: int = 40_000) -> None:
        self.port, self.deadline, self.cap = port, time.monotonic() + seconds, cap
        self.sent, self.failed, self.versions = 0, 0, Counter[str]()
        self.problems: list[str] = []
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        client = Client(self.port)
        try:
            while not self.stopping.is_set() and time.monotonic() < self.deadline and self.sent < self.cap:
                try:
                    status, body, _ = client.get("/")
                    problem = None if status == 200 else f"status {status}"
                except OSError as exc:  # includes http.client's RemoteDisconnected
                    problem = repr(exc)
                    client.close()
                    client = Client(self.port)
                    body = None
                with self.lock:
                    self.sent += 1
                    self.failed += problem is not None
                    self.problems += [problem] if problem else []
                    self.versions[body["version"] if body else "-"] += 1
        finally:
            client.close()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(20)


@pytest.mark.timeout(60)
def test_weight_changes_and_subset_changes_under_load_fail_no_request(
        envoy: Envoy, backends: dict[str, Backend]) -> None:
    eps = endpoints(backends)
    envoy.apply(release(30), eps)
    hammer = Hammer(envoy.options.port)
    try:
        wait_for(lambda: hammer.sent >= 500, 10, "traffic")
        # Three rounds of: 30% -> 70%, a rollback that removes the canary subset (and its cluster), back to 50%,
        # then 10%; each change followed by at least 300 requests of its own.
        for objects in 3 * [release(70), all_stable(), release(50), release(10)]:
            envoy.apply(objects, eps)
            mark = hammer.sent
            wait_for(lambda m=mark: hammer.sent >= m + 300, 10, "traffic after a change")  # type: ignore[misc]
    finally:
        hammer.stop()
    print(f"weight changes under load: {hammer.sent} requests, {hammer.failed} failed, {dict(hammer.versions)}")
    assert hammer.failed == 0, hammer.problems[:5]
    assert hammer.sent >= 500 + 12 * 300
    split = next(r for vh in envoy.routes_in_effect() for r in vh.routes if r.name == "release-split")
    port = envoy.options.port
    assert split.weights == {cluster(port, "stable"): 90, cluster(port, "canary"): 10}
    assert {c.cluster: dict(c.request_headers) for c in split.clusters} == {
        cluster(port, "stable"): {LANE: "stable"}, cluster(port, "canary"): {LANE: "canary"}}


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _counts(text: str, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric, exactly as Envoy exposes it (the text format), by their sorted labels."""
    found = {}
    for line in text.splitlines():
        sample = _SAMPLE.match(line)
        if sample is not None and sample.group(1) == metric:
            found[tuple(sorted(_LABEL.findall(sample.group(2) or "")))] = float(sample.group(3))
    return found


@pytest.mark.timeout(30)
def test_envoy_counts_every_request_per_cluster_with_istios_buckets(envoy: Envoy, backends: dict[str, Backend]) -> None:
    # A service of its own (on the same backends), so that its clusters count this test's requests only.
    port, service = envoy.options.port, "ledger"
    envoy.apply(release(50, service), [b.endpoint(service) for b in backends.values()])
    results = load(port, 400, 2, host=service)
    text = envoy.prometheus_stats()
    counts = _counts(text, "envoy_cluster_upstream_rq")
    sent = Counter(body["version"] for _, body in results if body)
    assert sum(sent.values()) == 400
    for version in ("v1", "v2"):  # the statistics name the version, not the subset (`stable`, `canary`)
        name = stat(port, version, service)
        assert counts[(("cluster_name", name), ("response_code", "200"))] == sent[version], (version, sent)
        assert counts[(("cluster_name", name), ("response_code_class", "2xx"))] == sent[version]
    # Histograms are merged every stats flush (0.25 s here): then the +Inf bucket has every request too.
    inf = (("cluster_name", stat(port, "v2", service)), ("le", "+Inf"))
    wait_for(lambda: _counts(envoy.prometheus_stats(), "envoy_cluster_upstream_rq_time_bucket").get(inf) == sent["v2"],
             5, "the histogram's merge")
    buckets = _counts(envoy.prometheus_stats(), "envoy_cluster_upstream_rq_time_bucket")
    canary = sorted((float(dict(k)["le"]), v) for k, v in buckets.items()
                    if dict(k)["cluster_name"] == stat(port, "v2", service))
    assert tuple(le for le, _ in canary) == ISTIO_BUCKETS_MS
    assert {tuple(name for name, _ in k) for k in buckets} == {("cluster_name", "le")}


FEATURES = [
    {"name": "without", "match": [{"uri": {"prefix": "/without"}, "withoutHeaders": {"x-user": {"exact": "bot"}}}],
     "route": [to("canary")]},
    {"name": "absent", "match": [{"uri": {"prefix": "/absent"}, "withoutHeaders": {"x-debug": {}}}],
     "route": [to("canary")]},
    {"name": "query", "match": [{"uri": {"prefix": "/query"}, "queryParams": {"variant": {"exact": "b"}}}],
     "route": [to("canary")]},
    {"name": "regex", "match": [{"uri": {"regex": "/items/[0-9]+"}}], "route": [to("canary")]},
    {"name": "nocase", "match": [{"uri": {"exact": "/Exact"}, "ignoreUriCase": True}], "route": [to("canary")]},
    {"name": "ops", "match": [{"uri": {"prefix": "/ops"}}], "route": [to("canary")],
     "headers": {"request": {"set": {"x-route": "ops"}, "remove": ["x-drop-me"]},
                 "response": {"set": {"x-served": "envoy"}, "remove": ["x-backend-drop"]}}},
    {"name": "abort", "match": [{"uri": {"prefix": "/abort"}}], "route": [to("canary")],
     "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}}},
    {"name": "delay", "match": [{"uri": {"prefix": "/delay"}}], "route": [to("canary")],
     "fault": {"delay": {"fixedDelay": "300ms", "percentage": {"value": 100}}}},
    {"name": "timeout", "match": [{"uri": {"prefix": "/slow"}}], "route": [to("canary")], "timeout": "100ms"},
    {"name": "retry", "match": [{"uri": {"prefix": "/status"}}], "route": [to("canary")],
     "retries": {"attempts": 2, "retryOn": "503"}},
    {"name": "mirror", "match": [{"uri": {"prefix": "/mirror"}}], "route": [to("stable")],
     "mirror": {"host": SERVICE, "subset": "canary"}},
    {"name": "default", "route": [to("stable")]},
]


@pytest.mark.timeout(30)
def test_matches_header_operations_and_policies_behave_as_istio_says(
        envoy: Envoy, backends: dict[str, Backend]) -> None:
    envoy.apply([destination_rule(), virtual_service(FEATURES)], endpoints(backends))
    client = Client(envoy.options.port)
    try:
        def version(path: str, headers: dict[str, str] | None = None) -> str | None:
            _, body, _ = client.get(path, headers=headers)
            return body["version"] if body else None

        assert [version("/without"), version("/without", {"x-user": "human"}),
                version("/without", {"x-user": "bot"})] == ["v2", "v2", "v1"]
        assert [version("/absent"), version("/absent", {"x-debug": ""}), version("/absent", {"x-debug": "1"})] == [
            "v2", "v1", "v1"]
        assert [version("/query?variant=b"), version("/query?variant=a"), version("/query")] == ["v2", "v1", "v1"]
        assert [version("/items/42"), version("/items/x"), version("/exact"), version("/EXACT")] == [
            "v2", "v1", "v2", "v2"]
        _check_policies(client, backends)
        assert client.get("/", host="nobody.example.com")[0] == 404
    finally:
        client.close()


def _check_policies(client: Client, backends: dict[str, Backend]) -> None:
    status, body, headers = client.get("/ops", headers={"x-drop-me": "1"})
    assert status == 200 and body is not None
    assert body["headers"]["x-route"] == "ops" and "x-drop-me" not in body["headers"]
    assert headers["x-served"] == "envoy" and "x-backend-drop" not in headers
    assert client.get("/abort")[0] == 418
    started = time.monotonic()
    assert client.get("/delay")[0] == 200 and time.monotonic() - started >= 0.25
    assert client.get("/slow?sleep_ms=600")[0] == 504
    before = backends["v2"].requests
    assert client.get("/status/503")[0] == 503
    wait_for(lambda: backends["v2"].requests - before == 3, 5, "the two retries")  # 1 try + 2 retries
    mirrored = len(backends["v2"].seen)
    status, body, _ = client.get("/mirror?copy=1")
    assert (status, body["version"] if body else None) == (200, "v1")
    wait_for(lambda: any(p == "/mirror?copy=1" for p, _ in backends["v2"].seen[mirrored:]), 5, "the mirror copy")
    shadow = next(h for p, h in backends["v2"].seen[mirrored:] if p == "/mirror?copy=1")
    assert shadow["host"] == f"{SERVICE}-shadow"  # Envoy marks mirrored requests by their host


@pytest.mark.timeout(30)
def test_a_configuration_envoy_rejects_is_reported_and_leaves_the_last_one_in_effect(
        envoy: Envoy, backends: dict[str, Backend]) -> None:
    eps = endpoints(backends)
    envoy.apply(release(20), eps)
    too_big = {"name": "big", "match": [{"uri": {"regex": "(abcdefgh){200}"}}], "route": [to("canary")]}
    with pytest.raises(EnvoyConfigRejected, match="rds"):
        envoy.apply([destination_rule(), virtual_service([too_big, split_of(20)])], eps)
    split = next(r for vh in envoy.routes_in_effect() for r in vh.routes if r.name == "release-split")
    assert sorted(split.weights.values()) == [20, 80]
    envoy.apply(release(40), eps)  # and the next good configuration is taken
    split = next(r for vh in envoy.routes_in_effect() for r in vh.routes if r.name == "release-split")
    assert sorted(split.weights.values()) == [40, 60]


def split_of(weight: int) -> Obj:
    return release(weight)[1]["spec"]["http"][1]


@pytest.mark.timeout(60)
def test_several_instances_run_at_once_and_stop_by_pid(tmp_path: Path) -> None:
    with Envoy(tmp_path / "a", Options(port=free_port())) as a, Envoy(tmp_path / "b", Options(port=free_port())) as b:
        pids = (a.pid, b.pid)
        assert None not in pids and pids[0] != pids[1]
        assert a.admin_get("/ready") == b.admin_get("/ready") == (200, "LIVE\n")
    assert a.pid is None and b.pid is None
    for pid in pids:
        with pytest.raises(ProcessLookupError):  # exited and reaped
            os.kill(pid, 0)  # type: ignore[arg-type]
    assert envoy_version() == "1.40.0"


@pytest.mark.timeout(30)
def test_a_listener_port_in_use_is_reported_at_once_and_the_process_stopped(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proxy = Envoy(tmp_path, Options(port=busy.getsockname()[1]))
        with pytest.raises(EnvoyConfigRejected, match="Address already in use"):
            proxy.start()
    assert proxy.pid is None


def replicas_per_user(envoy: Envoy, replicas: list[Backend], users: int, each: int) -> dict[str, set[int]]:
    """Which of `replicas` served each user's `each` sequential requests (by the backends' own counts)."""
    served: dict[str, set[int]] = {}
    client = Client(envoy.options.port)
    try:
        for u in range(users):
            user = f"user-{u}"
            for _ in range(each):
                before = [r.requests for r in replicas]
                status, _, _ = client.get("/", headers={"x-user-id": user})
                assert status == 200
                served.setdefault(user, set()).update(
                    i for i, r in enumerate(replicas) if r.requests != before[i])
    finally:
        client.close()
    return served


@pytest.mark.timeout(60)
def test_a_subset_hashing_on_the_user_header_keeps_each_user_on_one_replica(
        envoy: Envoy, backends: dict[str, Backend]) -> None:
    """An experiment's user affinity: two replicas of v1; every request of one user reaches the same one, and
    users spread over both. Without the subset's hash, one user's requests reach both (the control)."""
    second = Backend("v1")
    try:
        replicas = [backends["v1"], second]
        hashed = all_stable()
        hashed[0]["spec"]["subsets"][0]["trafficPolicy"] = {
            "loadBalancer": {"consistentHash": {"httpHeaderName": "x-user-id"}}}
        validate_objects(hashed)
        envoy.apply(hashed, [*endpoints(backends), second.endpoint()])
        served = replicas_per_user(envoy, replicas, users=16, each=8)
        assert all(len(used) == 1 for used in served.values()), served
        assert set().union(*served.values()) == {0, 1}, "every user on one replica"
        envoy.apply(all_stable(), [*endpoints(backends), second.endpoint()])
        assert replicas_per_user(envoy, replicas, users=1, each=24)["user-0"] == {0, 1}
    finally:
        second.stop()
