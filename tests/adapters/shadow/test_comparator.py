"""The shadow comparator over real sockets: mirrored searches in, pairs out through the controller's client.

The stack here is a stand-in HTTP server that answers a search by the version the comparator's header names
(stable: one ranking, canary: another) and says which version served it in `x-served-by`, as the search stack
does; the comparator and the stand-in run in this process on loopback and are shut down by the fixtures.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from analysis.shadow import ShadowPair
from controller.adapters.shadow.client import HttpShadowPairs, batch_from_json
from controller.adapters.shadow.comparator import PairLog, Settings, serve
from controller.adapters.shadow.compare import score_drift
from controller.core.observation import MirroredPair, ShadowBatch
from controller.core.plan import ShadowRoutes
from controller.ports import TemporaryError

pytestmark = pytest.mark.timeout(60)
ROUTES = ShadowRoutes("canary-shadow")


class StandIn(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        lane = self.headers.get("x-canary-shadow", "")
        StandIn.seen.append({"lane": lane, "host": self.headers.get("host", ""), "text": body["text"]})
        if body["text"] == "fails on canary" and lane == "canary":
            self._send(500, {}, "")
            return
        ranking = {f"d{i}": 10.0 - i for i in range(12)} if lane == "stable" else {f"n{i}": 1.0 for i in range(12)}
        self._send(200, ranking, f"master-search@{'v1' if lane == 'stable' else 'v2'}")

    def _send(self, status: int, payload: dict[str, Any], served: str) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(data)))
        self.send_header("x-served-by", served)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def comparator() -> Iterator[str]:
    stack = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=stack.serve_forever, daemon=True).start()
    server, service = serve(Settings(f"http://127.0.0.1:{stack.server_port}", entry_host="master-search", k=10,
                                     workers=2), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        service.stop()
        stack.shutdown()
        stack.server_close()


def _mirror(url: str, text: str) -> int:
    return httpx.post(f"{url}/master-service/search", json={"text": text, "n_results": 10, "random_seed": 0},
                      headers={"host": "master-search-shadow"}, timeout=5).status_code


def _wait_for(source: HttpShadowPairs, epoch: str, after: int, done: Callable[[ShadowBatch], bool]) -> ShadowBatch:
    """The comparator's answer after the cursor once `done` holds for it (or after 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        batch = source.pairs("search", ROUTES, epoch, after)
        if done(batch) or time.monotonic() > deadline:
            return batch
        time.sleep(0.05)


def test_mirrored_searches_become_pairs_read_once_with_the_cursor(comparator: str) -> None:
    with HttpShadowPairs(comparator) as source:
        _read_pairs(comparator, source)


def _read_pairs(comparator: str, source: HttpShadowPairs) -> None:
    head = source.pairs("search", ROUTES, "", -1)
    assert head.head == 0 and head.pairs == ()
    assert all(_mirror(comparator, f"query {i}") == 202 for i in range(5))
    assert _mirror(comparator, "fails on canary") == 202
    batch = _wait_for(source, head.epoch, head.head, lambda b: len(b.pairs) >= 5)
    assert [p.pair.query for p in sorted(batch.pairs, key=lambda p: p.pair.query)] == [f"query {i}" for i in range(5)]
    one = batch.pairs[0]
    assert one.pair.stable == one.pair.stable_again == tuple(f"d{i}" for i in range(10))
    assert one.pair.new == tuple(f"n{i}" for i in range(10))
    assert one.served == {"stable": "master-search@v1", "stableAgain": "master-search@v1", "new": "master-search@v2"}
    assert one.score_drift is None and one.score_drift_noise == 0.0  # no document in common; stable repeats itself
    assert batch.head == 5 and batch.mirrored == 6 and batch.dropped == 0
    # Each search: stable twice, new once, all to the entry's Host; the failed one is counted, not paired.
    assert source.pairs("search", ROUTES, batch.epoch, batch.head).pairs == ()
    # The failed search is counted once its new answer has failed, which may come after the five pairs.
    assert _wait_for(source, batch.epoch, batch.head, lambda b: b.unanswered["new"] >= 1).unanswered["new"] >= 1
    lanes = [s["lane"] for s in StandIn.seen if s["text"] == "query 0"]
    assert sorted(lanes) == ["canary", "stable", "stable"]
    assert {s["host"] for s in StandIn.seen} == {"master-search"}
    # Another epoch (a restarted comparator, as the controller sees it) is read from the first pair.
    assert len(source.pairs("search", ROUTES, "another", 3).pairs) == 5


def test_what_is_not_a_search_is_counted_and_let_go(comparator: str) -> None:
    assert httpx.post(f"{comparator}/master-service/click", json={"doc": 1}, timeout=5).status_code == 202
    assert httpx.post(f"{comparator}/master-service/search", content=b"not json", timeout=5).status_code == 202
    answer = httpx.get(f"{comparator}/shadow/pairs", params={"after": -1}, timeout=5).json()
    assert answer["ignored"] == 2 and answer["mirrored"] == 0
    assert httpx.get(f"{comparator}/shadow/pairs", params={"after": "x"}, timeout=5).status_code == 400


def test_score_drift_is_the_mean_relative_change_of_the_documents_both_rank() -> None:
    assert score_drift({"a": 2.0, "b": 4.0, "c": 1.0}, {"b": 5.0, "a": 2.0, "z": 9.0}) == pytest.approx(0.125)
    assert score_drift({"a": 0.0}, {"a": 0.5}) == 0.5  # a zero score counts its absolute change
    assert score_drift({"a": 1.0}, {"b": 1.0}) is None


def test_the_log_keeps_the_last_pairs_and_pages_a_long_read() -> None:
    log = PairLog(keep=3)
    pair = MirroredPair(ShadowPair("q", ("a",), ("a",), ("b",)))
    for _ in range(5):
        log.add(pair)
    answer = log.since(log.epoch, 0)
    assert [p["seq"] for p in answer["pairs"]] == [3, 4, 5] and answer["head"] == 5
    assert log.since(log.epoch, 5)["head"] == 5 and log.since(log.epoch, -1)["pairs"] == []
    assert batch_from_json(answer).pairs[0].pair == pair.pair


def test_an_unreachable_or_unreadable_comparator_is_a_temporary_error() -> None:
    with HttpShadowPairs("http://127.0.0.1:9") as source, pytest.raises(TemporaryError, match="unreachable"):
        source.pairs("search", ROUTES, "", -1)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"epoch": "e", "pairs": [{}]}))
    with HttpShadowPairs("http://comparator", client=httpx.Client(transport=transport)) as source, \
            pytest.raises(TemporaryError, match="unreadable"):
        source.pairs("s", ROUTES, "", 0)
    with HttpShadowPairs() as source:
        assert source.base_url("search", ROUTES) == "http://canary-shadow.search.svc:8000"
