"""The open-loop load generator against a real local service: achieved rate, self-termination, open-loop
behaviour under slowness, the in-flight cap, callbacks, Host and user headers, and the threaded runner."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest

from controller.local.loadgen import LoadReport, LoadRunner, QueryMix, run_load
from controller.local.processes import ProcessGroup, free_port, start_search_service
from searchstack.vocabulary import WORD_INDEX


class Service:
    def __init__(self, url: str) -> None:
        self.url = url
        self.search_url = f"{url}/keyword/search"

    def set_faults(self, **faults: float) -> None:
        httpx.put(f"{self.url}/admin/faults", json=faults, timeout=5).raise_for_status()

    def last_headers(self) -> dict[str, str]:
        headers: dict[str, str] = httpx.get(f"{self.url}/admin/last-headers", timeout=5).json()["headers"]
        return headers


def keyword_query(mix: QueryMix) -> dict[str, Any]:
    search = mix.search()
    return {"text": search["text"], "k": search["n_results"]}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    port = free_port()
    with ProcessGroup(tmp_path_factory.mktemp("loadgen-logs")) as group:
        proc = start_search_service(group, "keyword", "v1", port, "http://127.0.0.1:9")
        group.wait_healthy(proc, timeout=30)
        yield Service(f"http://127.0.0.1:{port}")


@pytest.fixture
def slow_service(service: Service) -> Iterator[Service]:
    service.set_faults(latency_ms=200)
    yield service
    service.set_faults()


def load(url: str, rate: float, duration: float, max_requests: int, **options: Any) -> tuple[LoadReport, float]:
    started = time.monotonic()
    report = asyncio.run(run_load(url, rate, duration, max_requests, make_payload=keyword_query, **options))
    return report, time.monotonic() - started


@pytest.mark.integration
def test_achieves_the_target_rate_and_stops_at_the_duration(service: Service) -> None:
    report, elapsed = load(service.search_url, rate=100, duration=1.5, max_requests=10_000)
    assert report.achieved_rate == pytest.approx(100, rel=0.15), report.summary()
    assert report.sent == pytest.approx(150, rel=0.15)
    assert report.status_counts == {200: report.sent} and report.completed == report.sent
    assert report.errors == report.dropped == 0
    assert 0 < report.latency_p50_ms <= report.latency_p90_ms <= report.latency_p99_ms
    assert elapsed < 4


@pytest.mark.integration
def test_stops_by_itself_at_max_requests(service: Service) -> None:
    report, elapsed = load(service.search_url, rate=200, duration=30, max_requests=40)
    assert report.scheduled == report.sent == report.completed == 40
    assert report.duration_s == pytest.approx(0.2, abs=0.1)
    assert elapsed < 3


@pytest.mark.integration
def test_rate_holds_when_the_service_slows_down(slow_service: Service) -> None:
    # A closed loop with one worker would manage 5 req/s against 200 ms; the open loop keeps sending.
    report, _ = load(slow_service.search_url, rate=50, duration=1.0, max_requests=1000)
    assert report.achieved_rate == pytest.approx(50, rel=0.15), report.summary()
    assert report.latency_p50_ms >= 200
    assert report.dropped == 0


@pytest.mark.integration
def test_the_in_flight_cap_drops_and_counts_slots(slow_service: Service) -> None:
    report, _ = load(slow_service.search_url, rate=50, duration=1.0, max_requests=1000, max_in_flight=3)
    assert report.dropped > 20, report.summary()
    assert report.sent + report.dropped == report.scheduled
    assert report.completed == report.sent


@pytest.mark.integration
def test_callback_sees_every_response_and_headers_reach_the_service(service: Service) -> None:
    seen: list[tuple[int, float, Mapping[str, str]]] = []
    report, _ = load(
        service.search_url, rate=100, duration=5, max_requests=20, host="keyword.test",
        headers={"x-canary-lane": "canary"}, on_response=lambda s, ms, h: seen.append((s, ms, h)),
    )
    assert len(seen) == report.completed == 20
    assert all(status == 200 and ms > 0 and h["x-served-by"] == "keyword@v1" for status, ms, h in seen)
    last = service.last_headers()
    assert last["host"] == "keyword.test"
    assert last["x-canary-lane"] == "canary"
    assert last["x-user-id"].startswith("user-")


@pytest.mark.integration
def test_a_failing_callback_fails_the_run(service: Service) -> None:
    def explode(status: int, latency_ms: float, headers: Mapping[str, str]) -> None:
        raise AssertionError("callback saw something wrong")

    with pytest.raises(AssertionError, match="callback saw something wrong"):
        load(service.search_url, rate=100, duration=5, max_requests=5, on_response=explode)


def test_connection_failures_are_errors_not_responses() -> None:
    report, _ = load(f"http://127.0.0.1:{free_port()}/keyword/search", rate=100, duration=5, max_requests=10)
    assert report.errors == report.sent == 10
    assert report.completed == 0 and report.status_counts == {}
    assert set(report.error_kinds) == {"ConnectError"}


@pytest.mark.integration
def test_runner_changes_rate_while_running_and_stops_early(service: Service) -> None:
    runner = LoadRunner(service.search_url, rate=40, duration=30, max_requests=10_000, make_payload=keyword_query)
    with runner:
        time.sleep(0.5)
        assert runner.running
        live = runner.report()
        assert 10 <= live.sent <= 30, live.summary()
        runner.set_rate(200)
        time.sleep(0.5)
    report = runner.report()
    assert not runner.running
    # ~20 requests in the first half second at 40/s, ~100 in the second at 200/s.
    assert 85 <= report.sent <= 150, report.summary()
    assert report.duration_s == pytest.approx(1.0, abs=0.3)


def test_stop_event_ends_an_async_run_early() -> None:
    stop = threading.Event()
    stop.set()
    report = asyncio.run(run_load("http://127.0.0.1:9/", rate=100, duration=30, max_requests=100, stop=stop))
    assert report.sent == 0


def test_query_mix_is_deterministic_realistic_and_zipfian() -> None:
    a, b = QueryMix(seed=3, n_users=200), QueryMix(seed=3, n_users=200)
    queries = [a.search() for _ in range(500)]
    assert queries == [b.search() for _ in range(500)]
    assert all(set(q["text"].split()) <= WORD_INDEX.keys() for q in queries)
    assert {len(q["text"].split()) for q in queries} == {1, 2, 3, 4, 5, 6}
    assert {q["n_results"] for q in queries} == {5, 10, 20, 40, 100}
    users = Counter(a.user() for _ in range(5000))
    assert users.most_common(1)[0][0] == "user-00000"
    assert users["user-00000"] > 10 * max(users["user-00150"], 1)
    assert len(users) > 100, "a long tail of occasional users"
