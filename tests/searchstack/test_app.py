"""The reference search stack: the seed API contract, determinism, validation, path headers, propagation,
fault injection and metrics, against the five services running as real processes on loopback."""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from controller.adapters.local.processes import ProcessGroup, free_port, start_search_service
from searchstack.app import create_app
from searchstack.faults import FaultInjector, Faults, InjectedFault
from searchstack.ranking import JITTER, merge_scores
from searchstack.settings import Downstream, Settings
from tests.support.paths import REPO
from tests.support.pids import alive

VERSION = "v7"
INNER = ("ml-infer", "ml-search", "keyword", "text-search")
SEED_QUERY = {"text": "This is a test query", "n_results": 40, "random_seed": 42}


class Stack:
    def __init__(self, urls: dict[str, str], pids: list[int]) -> None:
        self.urls = urls
        self.pids = pids
        self.client = httpx.Client(timeout=10)

    def search(self, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post(f"{self.urls['master-search']}/master-service/search", json=body, headers=headers)

    def set_faults(self, service: str, **faults: float) -> None:
        self.client.put(f"{self.urls[service]}/admin/faults", json=faults).raise_for_status()

    def last_headers(self, service: str) -> dict[str, str]:
        headers: dict[str, str] = self.client.get(f"{self.urls[service]}/admin/last-headers").json()["headers"]
        return headers


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = {role: free_port() for role in ("master-search", *INNER)}
    urls = {role: f"http://127.0.0.1:{port}" for role, port in ports.items()}
    with ProcessGroup(tmp_path_factory.mktemp("searchstack-logs")) as group:
        procs = [
            start_search_service(group, role, VERSION, port, "http://127.0.0.1:9", upstream_urls=urls)
            for role, port in ports.items()
        ]
        group.wait_all_healthy(timeout=30)
        s = Stack(urls, [p.pid for p in procs])
        yield s
        s.client.close()
    assert all(not alive(pid) for pid in s.pids), "a search service outlived its ProcessGroup"


@pytest.fixture
def clean_faults(stack: Stack) -> Iterator[Stack]:
    yield stack
    for role in ("master-search", *INNER):
        stack.set_faults(role)


# --- the seed API contract --------------------------------------------------------------------------------
@pytest.mark.integration
def test_search_answers_the_seed_api_shape(stack: Stack) -> None:
    response = stack.search(SEED_QUERY)
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, dict) and len(body) == 40
    assert all(doc_id.isdigit() for doc_id in body)
    assert all(isinstance(score, float) and 0.0 <= score <= 1.0 for score in body.values())
    scores = list(body.values())
    assert scores == sorted(scores, reverse=True), "results come best first"


@pytest.mark.integration
@pytest.mark.parametrize("n_results", [1, 7, 100])
def test_search_returns_exactly_n_results(stack: Stack, n_results: int) -> None:
    body = stack.search({"text": "penax hater", "n_results": n_results, "random_seed": 1}).json()
    assert len(body) == n_results


@pytest.mark.integration
def test_search_is_deterministic_for_a_seed_and_jittered_by_it(stack: Stack) -> None:
    first, again = stack.search(SEED_QUERY).json(), stack.search(SEED_QUERY).json()
    assert list(first.items()) == list(again.items())
    other_seed = stack.search({**SEED_QUERY, "random_seed": 43}).json()
    assert other_seed != first


@pytest.mark.integration
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"n_results": 5, "random_seed": 1}, "text"),
        ({"text": "", "n_results": 5, "random_seed": 1}, "text"),
        ({"text": "   ", "n_results": 5, "random_seed": 1}, "text"),
        ({"text": 12, "n_results": 5, "random_seed": 1}, "text"),
        ({"text": "query", "n_results": 0, "random_seed": 1}, "n_results"),
        ({"text": "query", "n_results": -3, "random_seed": 1}, "n_results"),
        ({"text": "query", "n_results": 101, "random_seed": 1}, "n_results"),
        ({"text": "query", "n_results": "5", "random_seed": 1}, "n_results"),
        ({"text": "query", "n_results": 5.5, "random_seed": 1}, "n_results"),
        ({"text": "query", "n_results": 5, "random_seed": "x"}, "random_seed"),
        ({"text": "query"}, "n_results"),
    ],
)
def test_invalid_requests_get_422_naming_the_field(stack: Stack, body: object, field: str) -> None:
    response = stack.search(body)
    assert response.status_code == 422
    assert f"{field}:" in response.json()["error"]


@pytest.mark.integration
def test_a_body_that_is_not_json_gets_422(stack: Stack) -> None:
    response = stack.client.post(
        f"{stack.urls['master-search']}/master-service/search",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422


# --- path and propagation headers -------------------------------------------------------------------------
@pytest.mark.integration
def test_served_by_lists_every_service_on_the_path(stack: Stack) -> None:
    response = stack.search(SEED_QUERY)
    expected = ",".join(f"{role}@{VERSION}" for role in ("master-search", *INNER))
    assert response.headers["x-served-by"] == expected


@pytest.mark.integration
def test_mesh_headers_reach_inner_services_and_cookies_do_not(stack: Stack) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = {
        "x-canary-lane": "canary", "traceparent": traceparent, "x-user-id": "user-42", "cookie": "session=s3cr3t",
    }
    response = stack.search(SEED_QUERY, headers=headers)
    assert response.status_code == 200
    assert response.headers["x-seen-lane"] == "canary"
    # ml-infer is two hops in: master-search -> ml-search -> ml-infer.
    for service, caller in (("ml-infer", "ml-search"), ("keyword", "master-search"), ("text-search", "master-search")):
        seen = stack.last_headers(service)
        assert seen["x-canary-lane"] == "canary", service
        assert seen["traceparent"] == traceparent, service
        assert seen["x-user-id"] == "user-42", service
        assert "cookie" not in seen, service
        assert seen["x-mesh-source-workload"] == f"{caller}-{VERSION}", service
    assert stack.last_headers("ml-infer")["host"] == "ml-infer", "the configured Host header is sent"


# --- faults ---------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_an_inner_service_error_surfaces_as_500_at_the_entry_naming_it(clean_faults: Stack) -> None:
    stack = clean_faults
    stack.set_faults("ml-infer", error_rate=1.0)
    response = stack.search(SEED_QUERY)
    assert response.status_code == 500
    body = response.json()
    assert body["service"] == "ml-infer"
    assert body["via"] == "master-search"
    assert body["error"] == "downstream service ml-infer failed: injected error (error_rate=1.0)"
    assert f"ml-infer@{VERSION}" in response.headers["x-served-by"]


@pytest.mark.integration
def test_rank_noise_degrades_rankings_the_same_way_every_time_without_errors(clean_faults: Stack) -> None:
    from analysis.shadow import rbo

    stack = clean_faults
    top = list(stack.search(SEED_QUERY).json())[:10]
    stack.set_faults("ml-search", rank_noise=3.0)
    degraded = [stack.search(SEED_QUERY) for _ in range(2)]
    assert [r.status_code for r in degraded] == [200, 200]
    first, second = (list(r.json())[:10] for r in degraded)
    assert first == second, "the same query gets the same degraded answer"
    assert rbo(top, first) < 0.9, (top, first)
    stack.set_faults("ml-search")
    assert list(stack.search(SEED_QUERY).json())[:10] == top


@pytest.mark.integration
def test_error_rate_is_a_probability(clean_faults: Stack) -> None:
    stack = clean_faults
    stack.set_faults("keyword", error_rate=0.5)
    codes = [stack.search(SEED_QUERY).status_code for _ in range(40)]
    assert set(codes) == {200, 500}
    assert 8 <= codes.count(500) <= 32  # Binomial(40, 0.5): outside this range has probability < 1e-4


@pytest.mark.integration
def test_injected_latency_shifts_entry_latency(clean_faults: Stack) -> None:
    # Paired and interleaved (without, with, without, ...) so a busy machine slows both sides alike.
    stack = clean_faults

    def timed_search_ms() -> float:
        started = time.perf_counter()
        assert stack.search(SEED_QUERY).status_code == 200
        return (time.perf_counter() - started) * 1000

    shifts = []
    for _ in range(5):
        stack.set_faults("keyword")
        without = timed_search_ms()
        stack.set_faults("keyword", latency_ms=300)
        shifts.append(timed_search_ms() - without)
    assert statistics.median(shifts) >= 200, shifts


@pytest.mark.integration
def test_fault_admin_rejects_invalid_values_and_reads_back(clean_faults: Stack) -> None:
    stack = clean_faults
    url = f"{stack.urls['keyword']}/admin/faults"
    assert stack.client.put(url, json={"error_rate": 1.5}).status_code == 422
    assert stack.client.put(url, json={"latency_ms": -1}).status_code == 422
    assert stack.client.put(url, json={"bogus": 1}).status_code == 422
    assert stack.client.put(url, json={"slow_prob": 0.25, "slow_ms": 30}).status_code == 200
    assert stack.client.get(url).json() == {
        "latency_ms": 0.0, "latency_scale": 1.0, "slow_prob": 0.25, "slow_ms": 30.0, "error_rate": 0.0,
        "rank_noise": 0.0,
    }


# --- ops endpoints --------------------------------------------------------------------------------------
@pytest.mark.integration
def test_metrics_count_requests_by_path_and_code(stack: Stack) -> None:
    stack.search(SEED_QUERY)
    text = stack.client.get(f"{stack.urls['master-search']}/metrics").text
    labels = 'code="200",path="/master-service/search",role="master-search",version="v7"'
    assert f"searchstack_requests_total{{{labels}}}" in text
    assert "searchstack_request_duration_seconds_bucket" in text
    assert 'searchstack_downstream_requests_total{code="200",role="master-search",target="keyword"' in text
    assert "_created" not in text


@pytest.mark.integration
def test_docs_and_health(stack: Stack) -> None:
    for role, url in stack.urls.items():
        assert "swagger" in stack.client.get(f"{url}/docs").text.lower()
        assert stack.client.get(f"{url}/healthz").json() == {
            "status": "ok", "role": role, "version": VERSION, "workload": f"{role}-{VERSION}",
        }


@pytest.mark.integration
def test_unreachable_downstream_gives_503_naming_it(stack: Stack) -> None:
    downstreams = {role: Downstream(stack.urls[role]) for role in INNER}
    downstreams["text-search"] = Downstream(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    app = create_app(Settings(role="master-search", downstreams=downstreams, timeout_s=2.0))
    [response] = _in_process(app, ("/master-service/search", SEED_QUERY))
    assert response.status_code == 503
    assert response.json()["service"] == "text-search"


# --- in-process units -----------------------------------------------------------------------------------
def _in_process(app: FastAPI, *posts: tuple[str, object]) -> list[httpx.Response]:
    """POST each (path, body) to the app in this process (no lifespan: the app's clients are lazy)."""

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://searchstack") as client:
            try:
                return [await client.post(path, json=body) for path, body in posts]
            finally:
                await app.state.ctx.downstream.aclose()

    return asyncio.run(run())


def test_inner_search_service_in_process() -> None:
    app = create_app(Settings(role="keyword", version="v3"))
    query = {"text": "penax hater numo", "k": 12}
    response, again, invalid = _in_process(
        app, ("/keyword/search", query), ("/keyword/search", query), ("/keyword/search", {"text": "x", "k": 0})
    )
    assert invalid.status_code == 422
    assert response.status_code == 200
    assert response.headers["x-served-by"] == "keyword@v3"
    hits = response.json()["hits"]
    assert len(hits) == 12 and hits == again.json()["hits"]
    assert max(hits.values()) > 0, "vocabulary words match documents"


def test_merge_is_a_weighted_sum_of_normalized_scores() -> None:
    hits = {"ml-search": {"1": 2.0, "2": 1.0}, "keyword": {"2": 10.0}, "text-search": {"3": 0.0}}
    merged = merge_scores(hits, "q", 3, random_seed=0)
    assert list(merged) == ["2", "1", "3"]
    assert merged["2"] == pytest.approx(0.5 * 0.5 + 0.3, abs=JITTER)
    assert merged["1"] == pytest.approx(0.5, abs=JITTER)
    assert merged["3"] == pytest.approx(0.0, abs=JITTER)


def test_faults_from_env() -> None:
    faults = Faults.from_env({"FAULT_LATENCY_MS": "12", "FAULT_ERROR_RATE": "0.1", "FAULT_SLOW_PROB": ""})
    assert (faults.latency_ms, faults.error_rate, faults.slow_prob) == (12.0, 0.1, 0.0)
    with pytest.raises(ValueError, match="FAULT_SLOW_MS"):
        Faults.from_env({"FAULT_SLOW_MS": "slow"})
    with pytest.raises(ValueError):
        Faults.from_env({"FAULT_ERROR_RATE": "2"})


def test_settings_from_env() -> None:
    env = {"SEARCHSTACK_VERSION": "v2", "ML_INFER_URL": "http://127.0.0.1:1234", "ML_INFER_HOST": "ml-infer",
           "LANE_HEADER": "X-Lane"}
    settings = Settings.from_env("ml-search", env)
    assert settings.workload == "ml-search-v2"
    assert settings.lane_header == "x-lane"
    assert settings.downstream("ml-infer") == Downstream("http://127.0.0.1:1234", "ml-infer")
    assert settings.downstream("keyword") == Downstream("http://keyword:8000")
    with pytest.raises(ValueError, match="KEYWORD_URL"):
        Settings.from_env("master-search", {"KEYWORD_URL": "keyword:8000"})
    with pytest.raises(ValueError, match="unknown role"):
        Settings.from_env("nope", {})


def test_process_entry_point_rejects_bad_configuration(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        port = free_port()
        proc = group.start(
            "bad", [sys.executable, "-m", "searchstack", "--role", "keyword", "--port", str(port)],
            {"FAULT_ERROR_RATE": "lots"}, cwd=REPO,
        )
        assert proc.popen.wait(timeout=20) == 2
        assert "FAULT_ERROR_RATE" in proc.log_tail()


def test_fault_injector_delays_and_errors() -> None:
    slow = FaultInjector(Faults(latency_ms=5, slow_prob=1.0, slow_ms=100), work_ms=0, rng=random.Random(1))
    assert slow.delay_ms() == 105
    scaled = FaultInjector(Faults(latency_scale=3.0), work_ms=10, rng=random.Random(2))
    delays = sorted(scaled.delay_ms() for _ in range(2001))
    assert delays[1000] == pytest.approx(30, rel=0.1), "work is lognormal with median work_ms, then scaled"
    assert delays[1800] > 1.4 * delays[1000], "with a realistic spread (sigma 0.4)"
    kinds: list[str] = []
    failing = FaultInjector(Faults(error_rate=1.0), work_ms=0, on_inject=kinds.append)
    with pytest.raises(InjectedFault):
        asyncio.run(failing.apply())
    assert kinds == ["error"]


# --- business metrics: impressions and clicks -----------------------------------------------------------
def _business_counts(text: str, version: str) -> tuple[float, float]:
    """(impressions, clicks) of master-search `version` from a /metrics text (0 when absent)."""
    values = {"impressions": 0.0, "clicks": 0.0}
    for line in text.splitlines():
        for name in values:
            if line.startswith(f"searchstack_{name}_total{{") and f'version="{version}"' in line:
                assert 'service="master-search"' in line
                values[name] = float(line.rsplit(" ", 1)[1])
    return values["impressions"], values["clicks"]


@pytest.mark.integration
def test_search_counts_one_impression_and_clicks_count_per_version(stack: Stack) -> None:
    metrics_url = f"{stack.urls['master-search']}/metrics"
    before = _business_counts(stack.client.get(metrics_url).text, VERSION)
    searches = [stack.search({**SEED_QUERY, "random_seed": i}) for i in range(3)]
    assert all(set(r.json()) and all(isinstance(v, float) for v in r.json().values()) for r in searches)
    query_ids = {r.headers["x-query-id"] for r in searches}
    assert len(query_ids) == 3 and all(len(q) == 32 for q in query_ids), "one fresh id per search, in a header"
    stack.search({"text": "", "n_results": 5})  # invalid: no impression
    doc_id = next(iter(searches[0].json()))
    click_url = f"{stack.urls['master-search']}/master-service/click"
    clicked = stack.client.post(click_url, json={"doc_id": doc_id, "query_id": searches[0].headers["x-query-id"]})
    assert clicked.status_code == 200
    assert clicked.json() == {"recorded": True, "doc_id": doc_id, "query_id": searches[0].headers["x-query-id"]}
    assert clicked.headers["x-served-by"] == f"master-search@{VERSION}"
    assert stack.client.post(click_url, json={"doc_id": doc_id}).status_code == 200  # query_id is optional
    assert stack.client.post(click_url, json={"doc_id": "no-such-doc"}).status_code == 404
    assert stack.client.post(click_url, json={"query_id": "x"}).status_code == 422
    after = _business_counts(stack.client.get(metrics_url).text, VERSION)
    assert (after[0] - before[0], after[1] - before[1]) == (3, 2)


def test_business_series_exist_at_zero_and_only_on_master_search() -> None:
    async def metrics_of(role: str) -> str:
        app = create_app(Settings(role=role, version="v9"))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as client:
            return (await client.get("/metrics")).text

    master, keyword = asyncio.run(metrics_of("master-search")), asyncio.run(metrics_of("keyword"))
    assert 'searchstack_impressions_total{service="master-search",version="v9"} 0.0' in master
    assert 'searchstack_clicks_total{service="master-search",version="v9"} 0.0' in master
    assert "searchstack_clicks_total{" not in keyword and "searchstack_impressions_total{" not in keyword
