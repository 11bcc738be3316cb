"""The open-loop load generator against a real local service: achieved rate, self-termination, open-loop
behaviour under slowness, the in-flight cap, callbacks, Host and user headers, and the threaded runner."""

from __future__ import annotations

import asyncio
import http.server
import json
import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx
import pytest

from controller.adapters.local.processes import ProcessGroup, free_port, start_search_service
from demo.harness import load_dict
from demo.loadgen import CookieJars, LoadReport, LoadRunner, QueryMix, run_load, served_version
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
    # Every slot of the schedule is sent, however late a busy machine runs (then the duration shows it), and
    # never faster than the target rate.
    assert report.scheduled == report.sent and abs(report.sent - 150) <= 1, report.summary()  # (the last slot
    # falls on the deadline itself: in or out by a rounding error)
    assert 1.5 <= report.duration_s <= elapsed and report.sent <= 100 * report.duration_s + 1
    assert report.status_counts == {200: report.sent} and report.completed == report.sent
    assert report.errors == report.dropped == 0
    assert 0 < report.latency_p50_ms <= report.latency_p90_ms <= report.latency_p99_ms


@pytest.mark.integration
def test_stops_by_itself_at_max_requests(service: Service) -> None:
    report, elapsed = load(service.search_url, rate=200, duration=30, max_requests=40)
    assert report.scheduled == report.sent == report.completed == 40
    # 40 slots at 200/s span 0.2 s (more on a busy machine); it stopped there, long before the 30 s duration.
    assert report.duration_s >= 0.2 - 1e-3 and report.sent <= 200 * report.duration_s + 1
    assert elapsed < 15


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
    # The in-flight cap is max_requests, so it can never drop a slot: every slot the scheduler schedules is sent,
    # however slowly a loaded machine answers. duration and max_requests are far beyond the test's bounded waits,
    # so only stop() can end the run while the test watches it.
    runner = LoadRunner(service.search_url, rate=40, duration=120, max_requests=50_000, max_in_flight=50_000,
                        make_payload=keyword_query)
    before_start = time.monotonic()
    with runner:
        slow = _sent_at_least(runner, 20)
        assert runner.running
        runner.set_rate(200)
        fast = _sent_at_least(runner, slow.sent + 200)
    stopped = time.monotonic()  # stop() has returned
    report = runner.report()
    assert not runner.running
    # Rates in the scheduler's own time base: a live report takes its counts and its duration (since the first
    # slot) at one instant, so a poller that looks late sees more of both, not a different rate. A scheduler
    # running late (a busy machine) falls behind its clock and catches up, never ahead: the slots that came due
    # bound what was sent, +1 for the slot at time 0 of each rate and +1 for the instant between the loop's
    # start and the stats' start stamp. A burst above the target breaks these bounds whatever the machine.
    assert slow.sent <= 40 * slow.duration_s + 2, slow.summary()
    # Up to the fast snapshot: 40/s until the change (no earlier than the slow snapshot), 200/s at most after.
    assert fast.sent <= 40 * slow.duration_s + 200 * (fast.duration_s - slow.duration_s) + 3, fast.summary()
    # The change took effect: the 200 slots after the slow snapshot came at well above the old 40/s (200/s is
    # the target; 100/s leaves a full second of slack for a late scheduler or a late poller).
    fast_rate = (fast.sent - slow.sent) / (fast.duration_s - slow.duration_s)
    assert fast_rate >= 2.5 * 40, (fast_rate, slow.summary(), fast.summary())
    # Stopped early: the sending window lies within the test's start() .. stop() (whatever their delays), the run
    # ended neither at max_requests nor at its duration, and everything scheduled was sent and answered.
    assert report.duration_s <= stopped - before_start < 120, report.summary()
    assert fast.sent <= report.sent == report.scheduled < 50_000, report.summary()
    assert report.completed + report.errors == report.sent and report.dropped == 0, report.summary()
    assert report.sent <= 40 * slow.duration_s + 200 * (report.duration_s - slow.duration_s) + 3, report.summary()


def _sent_at_least(runner: LoadRunner, n: int, within: float = 20.0) -> LoadReport:
    """The runner's live report once it has sent `n` requests (fails after `within` seconds)."""
    deadline = time.monotonic() + within
    while (live := runner.report()).sent < n:
        assert time.monotonic() < deadline, f"only {live.sent} of {n} sent in {within}s: {live.summary()}"
        time.sleep(0.01)
    return live


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


# --- A/B users: cookie jars and variant-dependent clicks ----------------------------------------------------
class StickyShop:
    """A tiny in-thread A/B entry service: a request without an `ab` cookie gets a random variant and a
    Set-Cookie for it; one with the cookie is served by that variant. Search answers `{doc_id: score}` with
    `x-served-by` and `x-query-id`; clicks are recorded per variant with their query ids. An assignment
    (a search without the cookie) takes `assign_delay_s`; `overlap` is the most cookie-less searches of one
    user the shop ever served at once. `served`, `clicks` and `users` are running counts a test can stop a
    run on (`StopWhen`), so that its sample is a number of answers, not what a machine answers in N seconds."""

    def __init__(self, assign_delay_s: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.assign_delay_s = assign_delay_s
        self.assigning: Counter[str] = Counter()
        self.overlap = 0
        self.rng = random.Random(5)
        self.searches: list[tuple[str, str | None, str]] = []  # (user, cookie header, variant)
        self.served: Counter[str] = Counter()  # searches per variant
        self.users: set[str] = set()  # users who searched
        self.clicks: Counter[str] = Counter()
        self.click_bodies: list[dict[str, Any]] = []
        self.query_ids: set[str] = set()
        shop = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: avoid the 40 ms delayed-ACK stall

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                cookie = self.headers.get("cookie")
                variant = shop.variant_of(cookie)
                headers = {"x-served-by": f"master-search@{variant},ml-search@{variant}"}
                if cookie is None:
                    headers["set-cookie"] = f"ab={variant}; Path=/; Max-Age=3600"
                if self.path.endswith("/search") and cookie is None:
                    shop.assign(self.headers["x-user-id"])
                if self.path.endswith("/search"):
                    with shop.lock:
                        query_id = f"q{len(shop.searches)}"
                        shop.searches.append((self.headers["x-user-id"], cookie, variant))
                        shop.served[variant] += 1
                        shop.users.add(self.headers["x-user-id"])
                        shop.query_ids.add(query_id)
                    headers["x-query-id"] = query_id
                    answer: dict[str, Any] = {str(100 + i): 1.0 - i / 10 for i in range(body["n_results"] % 7 + 1)}
                else:
                    with shop.lock:
                        shop.clicks[variant] += 1
                        shop.click_bodies.append(body)
                    answer = {"recorded": True}
                self.reply(answer, headers)

            def reply(self, answer: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(answer).encode()
                self.send_response(200)
                for name, value in {**headers, "content-type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = _ShopServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/master-service/search"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def assign(self, user: str) -> None:
        with self.lock:
            self.assigning[user] += 1
            self.overlap = max(self.overlap, self.assigning[user])
        time.sleep(self.assign_delay_s)  # the server thread's own latency, not the test's
        with self.lock:
            self.assigning[user] -= 1

    def variant_of(self, cookie: str | None) -> str:
        if cookie and "ab=" in cookie:
            return cookie.split("ab=", 1)[1].split(";")[0]
        with self.lock:
            return self.rng.choice(("v1", "v2"))

    def each_variant_has(self, n: int, counts: Mapping[str, int]) -> bool:
        with self.lock:
            return all(counts.get(variant, 0) >= n for variant in ("v1", "v2"))

    def searches_served(self) -> int:
        with self.lock:
            return len(self.searches)

    def users_seen(self) -> int:
        with self.lock:
            return len(self.users)


class _ShopServer(http.server.ThreadingHTTPServer):
    # The socketserver default backlog is 5: a burst of new keep-alive connections (the load generator opens
    # them as its in-flight count grows) overflows it on a busy machine, and the kernel then drops SYNs (a 1 s
    # retransmit stall) or resets a connection: latencies and errors of the test server, not of the client.
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (its timeout) closes the socket under a stalled answer: expected, not noise.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class StopWhen:
    """A `stop` flag for `run_load` that is set once `condition()` holds: the run's sample is decided by a
    count, whatever the machine's speed, while its `duration` and `max_requests` only bound it. The condition
    is read on the load loop's thread at every scheduler step, so it must be cheap."""

    def __init__(self, condition: Callable[[], bool]) -> None:
        self.condition = condition

    def is_set(self) -> bool:
        return self.condition()


@pytest.fixture
def sticky_shop() -> Iterator[StickyShop]:
    yield from _running(StickyShop())


@pytest.fixture
def slow_assigning_shop() -> Iterator[StickyShop]:
    yield from _running(StickyShop(assign_delay_s=0.15))


@pytest.fixture
def stalled_assigning_shop() -> Iterator[StickyShop]:
    # Far beyond the client's timeout, so that even a loaded machine's late timers see it time out.
    yield from _running(StickyShop(assign_delay_s=2.0))


def _running(shop: StickyShop) -> Iterator[StickyShop]:
    shop.thread.start()
    yield shop
    shop.server.shutdown()
    shop.server.server_close()
    shop.thread.join(timeout=5)


CLICK_P = {"v1": 0.1, "v2": 0.4}


def test_users_send_back_their_cookies_and_stay_on_one_variant(sticky_shop: StickyShop) -> None:
    # One request at a time, so no user has two first requests in flight (a browser would race too). The open
    # loop drops the slots that find that one request outstanding, so how many users a time span reaches depends
    # on the machine's speed: the run stops on a count of users instead (duration and max_requests only bound it).
    shop = sticky_shop
    report = asyncio.run(run_load(shop.url, rate=400, duration=60, max_requests=20_000, n_users=60,
                                  max_in_flight=1, keep_cookies=True, click_probability=CLICK_P,
                                  stop=StopWhen(lambda: shop.users_seen() >= 25)))
    by_user: dict[str, list[tuple[str | None, str]]] = {}
    for user, cookie, variant in sticky_shop.searches:
        by_user.setdefault(user, []).append((cookie, variant))
    assert len(by_user) >= 25 and report.mixed_users == 0, report.summary()
    for user, seen in by_user.items():
        assert seen[0][0] is None, f"{user} starts without a cookie"
        assert all(cookie == f"ab={seen[0][1]}" for cookie, _ in seen[1:]), f"{user} sent its cookie back"
        assert {variant for _, variant in seen} == {seen[0][1]}
    assert sum(report.assigned_users.values()) == len(by_user)
    assert report.impressions == dict(Counter(v for _, _, v in sticky_shop.searches))


def test_click_rate_per_variant_matches_its_probability(sticky_shop: StickyShop) -> None:
    # The sample is a count: the run stops once the shop has served 200 searches of each variant, so a loaded
    # machine (which drops more slots at the cap of four in flight) takes longer for the same sample; duration
    # and max_requests only bound the run. Stopping on impressions cannot bias the click rate: whether a user
    # clicks is drawn after its impression was served, and the searches in flight at the stop are awaited.
    shop = sticky_shop
    report = asyncio.run(run_load(shop.url, rate=400, duration=60, max_requests=20_000, n_users=400,
                                  max_in_flight=4, keep_cookies=True, click_probability=CLICK_P,
                                  stop=StopWhen(lambda: shop.each_variant_has(200, shop.served))))
    assert report.click_failures == 0
    assert report.clicks == dict(sticky_shop.clicks), "every click reached the server, counted per variant"
    for version, p in CLICK_P.items():
        n = report.impressions[version]
        assert n >= 200, report.summary()
        # 4 standard deviations of a binomial proportion: fails by chance about once in 16,000 runs.
        assert abs(report.clicks.get(version, 0) / n - p) < 4 * math.sqrt(p * (1 - p) / n), (version, report)
    assert all(b["query_id"] in sticky_shop.query_ids for b in sticky_shop.click_bodies)
    assert all(b["doc_id"].isdigit() for b in sticky_shop.click_bodies)


def test_click_values_follow_each_variants_mean_and_reach_the_server(sticky_shop: StickyShop) -> None:
    means = {"v1": 20.0, "v2": 50.0}
    # The sample is a count: the run stops once the shop has recorded 200 clicks of each variant (duration and
    # max_requests only bound it), however many slots a loaded machine drops at the cap or holds behind new
    # users' assignments. The stop depends on how many clicks came, not on their values, so the means are unbiased.
    shop = sticky_shop
    report = asyncio.run(run_load(shop.url, rate=400, duration=60, max_requests=20_000, n_users=400,
                                  max_in_flight=4, keep_cookies=True, click_probability={"v1": 0.5, "v2": 0.5},
                                  click_value=means, stop=StopWhen(lambda: shop.each_variant_has(200, shop.clicks))))
    assert report.click_failures == 0 and report.clicks == dict(shop.clicks), report.summary()
    assert all(isinstance(b["value"], float) and b["value"] >= 0 for b in sticky_shop.click_bodies)
    assert sum(b["value"] for b in sticky_shop.click_bodies) == pytest.approx(sum(report.click_value.values()))
    for version, mean in means.items():
        n = report.clicks[version]
        assert n >= 200, report.clicks
        # Exponential values: standard deviation = mean; 4 standard errors.
        assert abs(report.click_value[version] / n - mean) < 4 * mean / math.sqrt(n), (version, report)
    with pytest.raises(ValueError, match=r"click_value\[v2\]: -1 is not a mean value"):
        asyncio.run(run_load(sticky_shop.url, rate=10, duration=1, max_requests=1,
                             click_probability={"v2": 0.5}, click_value={"v2": -1}))


def test_without_cookies_users_are_reassigned_and_bad_probabilities_are_refused(sticky_shop: StickyShop) -> None:
    # Stops on a count of served searches (one at a time, the rest of the slots dropped), not on what a machine
    # serves in a time span: 100 searches over 20 users reassign some heavy user to both variants.
    shop = sticky_shop
    report = asyncio.run(run_load(shop.url, rate=400, duration=60, max_requests=20_000, n_users=20,
                                  max_in_flight=1, click_probability={"v1": 0.0, "v2": 0.0},
                                  stop=StopWhen(lambda: shop.searches_served() >= 100)))
    assert len(shop.searches) >= 100, report.summary()
    assert report.mixed_users > 0 and report.clicks == {} and not sticky_shop.clicks
    assert all(cookie is None for _, cookie, _ in sticky_shop.searches)
    with pytest.raises(ValueError, match=r"click_probability\[v2\]: 1.5 is not a probability"):
        asyncio.run(run_load(sticky_shop.url, rate=10, duration=1, max_requests=1, click_probability={"v2": 1.5}))


def test_a_new_users_searches_wait_for_its_first_answer(slow_assigning_shop: StickyShop) -> None:
    # Open loop at 200/s over 10 users while each assignment takes 150 ms: without the gate, heavy users
    # would send several cookie-less searches at once and be assigned to both variants. The in-flight cap is
    # max_requests, so it can never be reached: on a loaded machine (slower answers, more in flight) the
    # in-flight cap would drop slots too, and this test is about the gate, which must lose none.
    shop = slow_assigning_shop
    report = asyncio.run(run_load(shop.url, rate=200, duration=10, max_requests=200, n_users=10,
                                  max_in_flight=200, keep_cookies=True))
    assert report.held > 0 and report.mixed_users == 0, report
    assert shop.overlap == 1
    cookieless = Counter(user for user, cookie, _ in shop.searches if cookie is None)
    assert set(cookieless.values()) == {1}, "exactly one assignment per user"
    # A held slot is scheduled, then sent once the cookie is known: nothing lost, nothing extra.
    assert report.scheduled == 200 and report.sent == 200 and report.dropped == 0
    assert report.completed == len(shop.searches) == 200


def test_searches_held_behind_a_failed_first_answer_are_dropped(stalled_assigning_shop: StickyShop) -> None:
    # Every assignment outlasts the client's timeout: each first search fails, and what it held is dropped.
    report = asyncio.run(run_load(stalled_assigning_shop.url, rate=200, duration=10, max_requests=100, n_users=5,
                                  max_in_flight=64, timeout_s=0.05, keep_cookies=True))
    assert report.held > 0 and report.dropped == report.held, report
    assert report.sent == report.errors and report.completed == 0
    assert report.sent + report.dropped == report.scheduled == 100


def test_cookie_jars_and_served_version() -> None:
    jars = CookieJars()
    jars.store("u", ["ab=v2; Path=/; Max-Age=3600", "other=1"])
    assert jars.header("u") == "ab=v2; other=1"
    jars.store("u", ["ab=v3; Path=/", "other=; Max-Age=0", "bad cookie =;;"])
    assert jars.header("u") == "ab=v3" and jars.header("nobody") is None
    assert served_version({"x-served-by": "master-search@v2,ml-infer@v1"}) == "v2"
    assert served_version({"x-served-by": "keyword@v5"}) == "v5"
    assert served_version({}) is None


def test_answers_with_an_error_status_are_counted_apart_from_requests_without_an_answer() -> None:
    """`errors` is requests that got no answer; what users saw fail is the 5xx answers, said beside it."""
    report = LoadReport(target_rate=10, duration_s=1.0, scheduled=17, sent=17, completed=16, errors=1, dropped=0,
                        status_counts={200: 10, 404: 1, 500: 3, 503: 2}, latency_p50_ms=1.0, latency_p90_ms=2.0,
                        latency_p99_ms=3.0)
    assert report.error_answers == 5
    assert "completed 16 (5xx 5) no answer 1 dropped 0" in report.summary()
    assert load_dict(report)["error_answers"] == 5  # type: ignore[index]
