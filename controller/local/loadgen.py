"""An open-loop load generator for the search stack, on httpx.

Owns the traffic of local runs and tests: `run_load` (async) and `LoadRunner` (the same loop in a
background thread). Open loop means sends are scheduled by the clock, each request in its own task, so
the offered rate does not drop when the service slows down (a closed loop would hide a latency
regression by sending less). A cap on in-flight requests bounds memory; a send slot that finds the cap
reached is counted as `dropped`, not silently delayed.

Each request is a realistic search: words from the corpus vocabulary with corpus frequencies, varying
length and `n_results`, and an `x-user-id` from a pool of simulated users with Zipf-like activity (a few
heavy users, a long tail), which sticky A/B routing and per-user metrics need.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Protocol

import httpx

from searchstack.vocabulary import sample_words

Payload = Mapping[str, Any]
QUERY_LENGTHS = ((1, 0.25), (2, 0.3), (3, 0.2), (4, 0.12), (5, 0.08), (6, 0.05))
N_RESULTS = ((5, 0.15), (10, 0.35), (20, 0.25), (40, 0.2), (100, 0.05))
IDLE_POLL_S = 0.05  # longest sleep of the scheduler, so stop events and rate changes take effect quickly
# httpcore scans every pooled connection (and polls idle ones' sockets) on each request, so one big pool
# costs O(in-flight) CPU per request just when the target slows down. Small pools, least loaded first.
CONNECTIONS_PER_CLIENT = 16


class StopFlag(Protocol):
    """`threading.Event` or `asyncio.Event`: anything with `is_set()`."""

    def is_set(self) -> bool: ...


# The per-response callback: (status, latency_ms, response headers); status 0 and no headers when no
# response came (connection failure, timeout). Called on the load loop's thread.
ResponseCallback = Callable[[int, float, Mapping[str, str]], None]


@dataclass(frozen=True)
class LoadReport:
    target_rate: float
    duration_s: float  # the sending window: from the first send slot to the end of sending
    scheduled: int  # send slots that came due
    sent: int
    completed: int  # got an HTTP response (any status)
    errors: int  # no response: connection failure or timeout
    dropped: int  # slots skipped because max_in_flight requests were outstanding
    status_counts: Mapping[int, int]
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    error_kinds: Mapping[str, int] = field(default_factory=dict)

    @property
    def achieved_rate(self) -> float:
        """Requests actually sent per second of the sending window."""
        return self.sent / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> str:
        codes = " ".join(f"{code}:{n}" for code, n in sorted(self.status_counts.items()))
        return (
            f"target {self.target_rate:.0f}/s achieved {self.achieved_rate:.1f}/s over {self.duration_s:.1f}s: "
            f"sent {self.sent} completed {self.completed} errors {self.errors} dropped {self.dropped} "
            f"[{codes}] p50 {self.latency_p50_ms:.1f}ms p90 {self.latency_p90_ms:.1f}ms "
            f"p99 {self.latency_p99_ms:.1f}ms"
        )


class RateControl:
    """The target rate, changeable from any thread while the loop runs (<= 0 pauses sending)."""

    def __init__(self, rate: float) -> None:
        self._rate = float(rate)
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        with self._lock:
            return self._rate

    def set(self, rate: float) -> None:
        with self._lock:
            self._rate = float(rate)


class QueryMix:
    """Deterministic (for a seed) stream of search requests and the users who send them."""

    def __init__(self, seed: int = 0, n_users: int = 1000, user_skew: float = 1.1) -> None:
        self.rng = random.Random(seed)
        self.users = [f"user-{i:05d}" for i in range(n_users)]
        # Zipf-like: user i is active in proportion to 1 / (i + 1) ** user_skew.
        self._user_cum = list(accumulate(1.0 / (i + 1) ** user_skew for i in range(n_users)))

    def user(self) -> str:
        return self.rng.choices(self.users, cum_weights=self._user_cum)[0]

    def search(self) -> dict[str, Any]:
        """A master-search request body: `{"text", "n_results", "random_seed"}`."""
        length = _weighted(self.rng, QUERY_LENGTHS)
        return {
            "text": " ".join(sample_words(self.rng, length)),
            "n_results": _weighted(self.rng, N_RESULTS),
            "random_seed": self.rng.randrange(1000),
        }


def _weighted(rng: random.Random, table: tuple[tuple[int, float], ...]) -> int:
    return rng.choices([v for v, _ in table], weights=[w for _, w in table])[0]


class _ClientShards:
    """Small keep-alive `httpx.AsyncClient`s, added as concurrency grows; a request goes to the least loaded."""

    def __init__(self, max_in_flight: int, timeout_s: float) -> None:
        self.size = min(CONNECTIONS_PER_CLIENT, max_in_flight)
        self.max_clients = math.ceil(max_in_flight / self.size)
        self.timeout_s = timeout_s
        self.ssl = httpx.create_ssl_context()  # one CA bundle load, not one per client
        self.clients: list[httpx.AsyncClient] = []
        self.load: list[int] = []

    def _pick(self) -> int:
        if self.clients:
            i = self.load.index(min(self.load))
            if self.load[i] < self.size or len(self.clients) >= self.max_clients:
                return i
        limits = httpx.Limits(max_connections=self.size, max_keepalive_connections=self.size)
        # trust_env=False: load must hit the target directly, never through an HTTP(S)_PROXY from the env.
        self.clients.append(httpx.AsyncClient(limits=limits, timeout=self.timeout_s, verify=self.ssl, trust_env=False))
        self.load.append(0)
        return len(self.clients) - 1

    async def post(self, url: str, payload: Payload, headers: dict[str, str]) -> httpx.Response:
        i = self._pick()
        self.load[i] += 1
        try:
            return await self.clients[i].post(url, json=payload, headers=headers)
        finally:
            self.load[i] -= 1

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


class _Stats:
    """Counts of a run; written by the event loop, read by any thread (hence the lock)."""

    def __init__(self, target_rate: float) -> None:
        self.lock = threading.Lock()
        self.target_rate = target_rate
        self.started = time.monotonic()
        self.ended: float | None = None
        self.scheduled = self.sent = self.completed = self.errors = self.dropped = 0
        self.status: Counter[int] = Counter()
        self.error_kinds: Counter[str] = Counter()
        self.latencies: list[float] = []

    def record(self, status: int, latency_s: float) -> None:
        with self.lock:
            self.completed += 1
            self.status[status] += 1
            self.latencies.append(latency_s)

    def record_error(self, kind: str) -> None:
        with self.lock:
            self.errors += 1
            self.error_kinds[kind] += 1

    def report(self) -> LoadReport:
        with self.lock:
            end = self.ended if self.ended is not None else time.monotonic()
            p50, p90, p99 = _percentiles_ms(self.latencies, (50, 90, 99))
            return LoadReport(
                target_rate=self.target_rate, duration_s=max(0.0, end - self.started),
                scheduled=self.scheduled, sent=self.sent, completed=self.completed, errors=self.errors,
                dropped=self.dropped, status_counts=dict(self.status), latency_p50_ms=p50,
                latency_p90_ms=p90, latency_p99_ms=p99, error_kinds=dict(self.error_kinds),
            )


def _percentiles_ms(latencies: list[float], qs: tuple[int, ...]) -> tuple[float, ...]:
    if not latencies:
        return tuple(math.nan for _ in qs)
    ordered = sorted(latencies)
    # Nearest-rank percentiles: each is a latency that was actually observed.
    return tuple(1000 * ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))] for q in qs)


@dataclass
class _Options:
    host: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    max_in_flight: int = 256
    timeout_s: float = 10.0
    seed: int = 0
    n_users: int = 1000
    poisson: bool = False
    make_payload: Callable[[QueryMix], Payload] | None = None
    on_response: ResponseCallback | None = None


async def run_load(
    url: str,
    rate: float,
    duration: float,
    max_requests: int,
    *,
    host: str | None = None,
    headers: Mapping[str, str] | None = None,
    max_in_flight: int = 256,
    timeout_s: float = 10.0,
    seed: int = 0,
    n_users: int = 1000,
    poisson: bool = False,
    make_payload: Callable[[QueryMix], Payload] | None = None,
    on_response: ResponseCallback | None = None,
    stop: StopFlag | None = None,
    rate_control: RateControl | None = None,
) -> LoadReport:
    """POST searches to `url` at `rate` req/s until `duration` seconds or `max_requests` send slots pass.

    `host` sets the Host header (the local mesh router routes by it); `headers` are added to every
    request; `make_payload` replaces the default master-search body; `on_response` sees every finished
    request (an exception it raises is re-raised at the end); `stop` ends the run early; `rate_control`
    lets another thread change the rate. Outstanding requests are awaited (up to `timeout_s`) at the end.
    """
    options = _Options(
        host=host, headers=dict(headers or {}), max_in_flight=max_in_flight, timeout_s=timeout_s, seed=seed,
        n_users=n_users, poisson=poisson, make_payload=make_payload, on_response=on_response,
    )
    control = rate_control or RateControl(rate)
    stats = _Stats(rate)
    return await _run(url, duration, max_requests, options, control, stats, stop)


async def _run(
    url: str, duration: float, max_requests: int, options: _Options, control: RateControl, stats: _Stats,
    stop: StopFlag | None,
) -> LoadReport:
    if max_requests < 0 or duration < 0 or options.max_in_flight < 1:
        raise ValueError("max_requests and duration must be >= 0 and max_in_flight >= 1")
    mix = QueryMix(options.seed, options.n_users)
    gaps = random.Random(options.seed + 1)
    failures: list[BaseException] = []
    in_flight: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    client = _ClientShards(options.max_in_flight, options.timeout_s)
    try:
        start = loop.time()
        stats.started = time.monotonic()
        next_at, deadline = start, start + duration
        while True:
            now = loop.time()
            if stats.scheduled >= max_requests:
                # Sending ends where the next slot would have begun: N slots span N intervals.
                end = max(now, min(next_at, deadline))
                break
            if now >= deadline or (stop is not None and stop.is_set()):
                end = now
                break
            rate = control.rate
            if rate <= 0:
                next_at = now + IDLE_POLL_S  # paused: the schedule restarts from now when the rate returns
                await asyncio.sleep(IDLE_POLL_S)
                continue
            if next_at > now:
                await asyncio.sleep(min(next_at - now, IDLE_POLL_S))
                continue
            _send_slot(client, url, options, mix, stats, in_flight, failures)
            next_at += gaps.expovariate(rate) if options.poisson else 1.0 / rate
        with stats.lock:
            stats.ended = stats.started + (end - start)
        if in_flight:
            await asyncio.wait(in_flight, timeout=options.timeout_s + 1.0)
        for task in list(in_flight):
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
    finally:
        await client.aclose()
    if failures:
        raise failures[0]
    return stats.report()


def _send_slot(
    client: _ClientShards, url: str, options: _Options, mix: QueryMix, stats: _Stats,
    in_flight: set[asyncio.Task[None]], failures: list[BaseException],
) -> None:
    with stats.lock:
        stats.scheduled += 1
        if len(in_flight) >= options.max_in_flight:
            stats.dropped += 1
            return
        stats.sent += 1
        n = stats.sent
    user = mix.user()
    payload = options.make_payload(mix) if options.make_payload else mix.search()
    headers = {**options.headers, "x-user-id": user, "x-request-id": f"loadgen-{options.seed}-{n}"}
    if options.host:
        headers["host"] = options.host
    task = asyncio.create_task(_one(client, url, payload, headers, options, stats, failures))
    in_flight.add(task)
    task.add_done_callback(in_flight.discard)


async def _one(
    client: _ClientShards, url: str, payload: Payload, headers: dict[str, str], options: _Options,
    stats: _Stats, failures: list[BaseException],
) -> None:
    started = time.perf_counter()
    try:
        response = await client.post(url, payload, headers)
    except httpx.HTTPError as exc:
        latency = time.perf_counter() - started
        stats.record_error(type(exc).__name__)
        status, response_headers = 0, {}
    else:
        latency = time.perf_counter() - started
        stats.record(response.status_code, latency)
        status, response_headers = response.status_code, dict(response.headers)
    if options.on_response is not None:
        try:
            options.on_response(status, latency * 1000.0, response_headers)
        except Exception as exc:  # surfaced by run_load once the run ends
            failures.append(exc)


class LoadRunner:
    """`run_load` in a background thread: start(), set_rate(), report() (live or final), stop()."""

    def __init__(
        self,
        url: str,
        rate: float,
        duration: float,
        max_requests: int,
        *,
        host: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_in_flight: int = 256,
        timeout_s: float = 10.0,
        seed: int = 0,
        n_users: int = 1000,
        poisson: bool = False,
        make_payload: Callable[[QueryMix], Payload] | None = None,
        on_response: ResponseCallback | None = None,
    ) -> None:
        self._args = (url, duration, max_requests)
        self._options = _Options(
            host=host, headers=dict(headers or {}), max_in_flight=max_in_flight, timeout_s=timeout_s,
            seed=seed, n_users=n_users, poisson=poisson, make_payload=make_payload, on_response=on_response,
        )
        self._control = RateControl(rate)
        self._stats = _Stats(rate)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._final: LoadReport | None = None
        self._failure: BaseException | None = None

    def start(self) -> LoadRunner:
        if self._thread is not None:
            raise RuntimeError("LoadRunner.start() called twice")
        self._thread = threading.Thread(target=self._main, name="loadgen", daemon=True)
        self._thread.start()
        return self

    def _main(self) -> None:
        url, duration, max_requests = self._args
        try:
            self._final = asyncio.run(
                _run(url, duration, max_requests, self._options, self._control, self._stats, self._stop)
            )
        except BaseException as exc:  # handed to the caller's thread by report()/stop()
            self._failure = exc

    def set_rate(self, rate: float) -> None:
        self._control.set(rate)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the run to end by itself; True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def report(self) -> LoadReport:
        """The final report once the run ended; a live snapshot while it runs."""
        if self._failure is not None:
            raise self._failure
        return self._final if self._final is not None else self._stats.report()

    def stop(self, timeout: float | None = None) -> LoadReport:
        """End the run early (outstanding requests are awaited up to the request timeout) and report."""
        self._stop.set()
        self.join(timeout if timeout is not None else self._options.timeout_s + 5.0)
        return self.report()

    def __enter__(self) -> LoadRunner:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
