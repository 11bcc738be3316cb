"""An open-loop load generator for the search stack, on httpx.

Owns the traffic of local runs and tests: `run_load` (async) and `LoadRunner` (the same loop in a
background thread). Open loop means sends are scheduled by the clock, each request in its own task, so
the offered rate does not drop when the service slows down (a closed loop would hide a latency
regression by sending less). A cap on in-flight requests bounds memory; a send slot that finds the cap
reached is counted as `dropped`, not silently delayed.

Each request is a realistic search: words from the corpus vocabulary with corpus frequencies, varying
length and `n_results`, and an `x-user-id` from a pool of simulated users with Zipf-like activity (a few
heavy users, a long tail), which sticky A/B routing and per-user metrics need.

A/B users (`keep_cookies`, `click_probability`): each simulated user keeps a cookie jar, fills it from the
`Set-Cookie` headers of its responses (the router's sticky assignment cookie) and sends it back on its next
requests, as a browser does. After each successful search the user clicks one result (rank r chosen with
weight 1/(r+1)) with the probability of the version that served it (from `x-served-by`), via `POST <click_url>
{"doc_id", "query_id"}` carrying the search's `x-query-id` and the user's cookies; with `click_value` (version
-> mean) the click also reports a `value` drawn from an exponential distribution with that version's mean,
the input of a mean metric such as value per click. A click runs inside the search's task, so the
in-flight cap and the timeout bound it too. The report counts impressions, clicks and newly assigned users per
version: the ground truth of a demo.

The first-answer gate (`keep_cookies`): a user without a cookie has at most one search in flight. Its
further send slots are *held* (counted as scheduled and as `held`) until that answer arrives: then they
are sent at once, with the cookie it set (or without, if it set none: no experiment assigns); if no
answer came (connection failure, timeout), they are `dropped`. Otherwise a heavy user's second request
would leave before the first one's `Set-Cookie` returned and could be assigned another variant. Users
with a cookie, and all users without `keep_cookies`, stay open loop.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import http.cookies
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Protocol, TypedDict, Unpack

import httpx

from controller.core.observation import served_path
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


# The entry service whose version decides a click (the first `x-served-by` entry otherwise).
ENTRY_ROLE = "master-search"
QUERY_ID_HEADER = "x-query-id"

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
    dropped: int  # slots skipped: max_in_flight requests outstanding, or held behind a failed first answer
    status_counts: Mapping[int, int]
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    error_kinds: Mapping[str, int] = field(default_factory=dict)
    # A/B users (when clicks or cookies are on): per served version of the entry service.
    impressions: Mapping[str, int] = field(default_factory=dict)  # 200 search answers
    clicks: Mapping[str, int] = field(default_factory=dict)  # clicks answered 2xx
    click_value: Mapping[str, float] = field(default_factory=dict)  # sum of their values (`click_value`)
    click_failures: int = 0  # clicks without a 2xx answer
    assigned_users: Mapping[str, int] = field(default_factory=dict)  # users by the first version they saw
    mixed_users: int = 0  # users served by more than one version (a sticky split keeps this at 0)
    held: int = 0  # slots that waited for their user's first answer (then sent, or dropped if it failed)

    @property
    def error_answers(self) -> int:
        """Requests answered with an error status (5xx): what users saw fail, beside `errors` (no answer)."""
        return sum(n for code, n in self.status_counts.items() if code >= 500)

    @property
    def achieved_rate(self) -> float:
        """Requests actually sent per second of the sending window."""
        return self.sent / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> str:
        codes = " ".join(f"{code}:{n}" for code, n in sorted(self.status_counts.items()))
        return (
            f"target {self.target_rate:.0f}/s achieved {self.achieved_rate:.1f}/s over {self.duration_s:.1f}s: "
            f"sent {self.sent} completed {self.completed} (5xx {self.error_answers}) no answer {self.errors} "
            f"dropped {self.dropped} "
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


def _no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that stores nothing (no domain is allowed)."""
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


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
        # No client-wide cookie jar: httpx would otherwise keep the first Set-Cookie (an A/B assignment)
        # and send it for every simulated user; each user's cookies are its own (CookieJars).
        self.clients.append(
            httpx.AsyncClient(
                limits=limits, timeout=self.timeout_s, verify=self.ssl, trust_env=False, cookies=_no_cookies()
            )
        )
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


def served_version(headers: Mapping[str, str]) -> str | None:
    """The entry service's version from `x-served-by` (`master-search@v2,ml-infer@v2,...`)."""
    entries = served_path(headers.get("x-served-by", ""))
    for role, version in entries:
        if role == ENTRY_ROLE:
            return version
    return entries[0][1] if entries else None


class CookieJars:
    """One cookie jar per simulated user: name -> value from `Set-Cookie`, last one wins, Max-Age=0 deletes."""

    def __init__(self) -> None:
        self.jars: dict[str, dict[str, str]] = {}

    def header(self, user: str) -> str | None:
        jar = self.jars.get(user)
        return "; ".join(f"{k}={v}" for k, v in jar.items()) if jar else None

    def store(self, user: str, set_cookies: list[str]) -> None:
        for line in set_cookies:
            parsed = http.cookies.SimpleCookie()
            try:
                parsed.load(line)
            except http.cookies.CookieError:
                continue  # a browser ignores a malformed cookie; so do we
            jar = self.jars.setdefault(user, {})
            for name, morsel in parsed.items():
                if morsel["max-age"] in ("0", "-1"):
                    jar.pop(name, None)
                else:
                    jar[name] = morsel.value


class _Stats:
    """Counts of a run; written by the event loop, read by any thread (hence the lock)."""

    def __init__(self, target_rate: float) -> None:
        self.lock = threading.Lock()
        self.target_rate = target_rate
        self.started = time.monotonic()
        self.ended: float | None = None
        self.scheduled = self.sent = self.completed = self.errors = self.dropped = self.held = 0
        self.status: Counter[int] = Counter()
        self.error_kinds: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.impressions: Counter[str] = Counter()
        self.clicks: Counter[str] = Counter()
        self.click_value: dict[str, float] = {}
        self.click_failures = 0
        self.user_versions: dict[str, set[str]] = {}
        self.assigned: Counter[str] = Counter()

    def record_impression(self, user: str, version: str) -> None:
        with self.lock:
            self.impressions[version] += 1
            seen = self.user_versions.setdefault(user, set())
            if not seen:
                self.assigned[version] += 1
            seen.add(version)

    def record_click(self, version: str, ok: bool, value: float | None = None) -> None:
        with self.lock:
            if ok:
                self.clicks[version] += 1
                if value is not None:
                    self.click_value[version] = self.click_value.get(version, 0.0) + value
            else:
                self.click_failures += 1

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
                impressions=dict(self.impressions), clicks=dict(self.clicks), click_failures=self.click_failures,
                click_value=dict(self.click_value),
                assigned_users=dict(self.assigned),
                mixed_users=sum(1 for versions in self.user_versions.values() if len(versions) > 1),
                held=self.held,
            )


def _percentiles_ms(latencies: list[float], qs: tuple[int, ...]) -> tuple[float, ...]:
    if not latencies:
        return tuple(math.nan for _ in qs)
    ordered = sorted(latencies)
    # Nearest-rank percentiles: each is a latency that was actually observed.
    return tuple(1000 * ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))] for q in qs)


class LoadOptions(TypedDict, total=False):
    """The options `run_load` and `LoadRunner` take by keyword (see `run_load` for what each does)."""

    host: str | None
    headers: Mapping[str, str] | None
    max_in_flight: int
    timeout_s: float
    seed: int
    n_users: int
    poisson: bool
    make_payload: Callable[[QueryMix], Payload] | None
    on_response: ResponseCallback | None
    keep_cookies: bool
    click_probability: Mapping[str, float] | None
    click_url: str | None
    click_value: Mapping[str, float] | None


@dataclass
class _Options:
    host: str | None = None
    headers: Mapping[str, str] | None = None
    max_in_flight: int = 256
    timeout_s: float = 10.0
    seed: int = 0
    n_users: int = 1000
    poisson: bool = False
    make_payload: Callable[[QueryMix], Payload] | None = None
    on_response: ResponseCallback | None = None
    keep_cookies: bool = False
    click_probability: Mapping[str, float] | None = None
    click_url: str | None = None
    click_value: Mapping[str, float] | None = None

    def check_users(self, url: str) -> None:
        """Validate the A/B user options and default the click URL (`.../search` -> `.../click`)."""
        for version, p in (self.click_probability or {}).items():
            if not (isinstance(p, int | float) and 0.0 <= p <= 1.0):
                raise ValueError(f"click_probability[{version}]: {p!r} is not a probability in [0, 1]")
        for version, mean in (self.click_value or {}).items():
            if not (isinstance(mean, int | float) and 0.0 <= mean < 1e5):
                raise ValueError(f"click_value[{version}]: {mean!r} is not a mean value in [0, 1e5)")
        if self.click_probability is not None and self.click_url is None:
            self.click_url = url.rsplit("/", 1)[0] + "/click"


@dataclass
class _Users:
    """What the A/B users remember across requests: cookie jars, the click draws' generator, and the
    first-answer gate: user -> searches held while its cookie-less request is in flight."""

    jars: CookieJars
    clicks: random.Random
    held: dict[str, list[Payload]] = field(default_factory=dict)


async def run_load(
    url: str,
    rate: float,
    duration: float,
    max_requests: int,
    *,
    stop: StopFlag | None = None,
    rate_control: RateControl | None = None,
    **options: Unpack[LoadOptions],
) -> LoadReport:
    """POST searches to `url` at `rate` req/s until `duration` seconds or `max_requests` send slots pass.

    `host` sets the Host header (the local mesh router routes by it); `headers` are added to every
    request; `make_payload` replaces the default master-search body; `on_response` sees every finished
    request (an exception it raises is re-raised at the end); `stop` ends the run early; `rate_control`
    lets another thread change the rate. Outstanding requests are awaited (up to `timeout_s`) at the end.
    `keep_cookies` gives every user a cookie jar; `click_probability` (version -> probability) makes
    users click a result of a 200 answer, at `click_url` (default: `url` with `/search` -> `/click`);
    `click_value` (version -> mean) adds an exponentially distributed `value` to each click.
    """
    control = rate_control or RateControl(rate)
    stats = _Stats(rate)
    return await _run(url, duration, max_requests, _Options(**options), control, stats, stop)


async def _run(
    url: str, duration: float, max_requests: int, options: _Options, control: RateControl, stats: _Stats,
    stop: StopFlag | None,
) -> LoadReport:
    if max_requests < 0 or duration < 0 or options.max_in_flight < 1:
        raise ValueError("max_requests and duration must be >= 0 and max_in_flight >= 1")
    options.check_users(url)
    users = _Users(CookieJars(), random.Random(options.seed + 2))
    mix = QueryMix(options.seed, options.n_users)
    gaps = random.Random(options.seed + 1)
    loop = asyncio.get_running_loop()
    client = _ClientShards(options.max_in_flight, options.timeout_s)
    sender = _Sender(client, url, options, stats, users)
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
                if stop is None or not stop.is_set():
                    next_at = _catch_up(sender, mix, stats, next_at, deadline, max_requests, control, gaps, options)
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
            sender.slot(mix)
            next_at += gaps.expovariate(rate) if options.poisson else 1.0 / rate
        with stats.lock:
            stats.ended = stats.started + (end - start)
        await sender.drain(loop.time() + options.timeout_s + 1.0)
    finally:
        await client.aclose()
    if sender.failures:
        raise sender.failures[0]
    return stats.report()


def _catch_up(sender: _Sender, mix: QueryMix, stats: _Stats, next_at: float, deadline: float, max_requests: int,
              control: RateControl, gaps: random.Random, options: _Options) -> float:
    """Send the slots that came due before the deadline but were not sent yet (a machine running late): a run
    schedules the same slots however fast the machine is, only later; the report's duration shows how late."""
    while next_at < deadline and stats.scheduled < max_requests and (rate := control.rate) > 0:
        sender.slot(mix)
        next_at += gaps.expovariate(rate) if options.poisson else 1.0 / rate
    return next_at


@dataclass
class _Sender:
    """Sends the run's searches: send slots, the in-flight set, the first-answer gate, the callbacks' failures."""

    client: _ClientShards
    url: str
    options: _Options
    stats: _Stats
    users: _Users
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)
    failures: list[BaseException] = field(default_factory=list)

    def slot(self, mix: QueryMix) -> None:
        """One send slot: dropped at the in-flight cap, held behind its user's first answer, or sent."""
        with self.stats.lock:
            self.stats.scheduled += 1
            if len(self.in_flight) >= self.options.max_in_flight:
                self.stats.dropped += 1
                return
        user = mix.user()
        payload = self.options.make_payload(mix) if self.options.make_payload else mix.search()
        opens_gate = self.options.keep_cookies and self.users.jars.header(user) is None
        if opens_gate:
            held = self.users.held.get(user)
            if held is not None:  # the user's cookie-less search is in flight: wait for its answer
                held.append(payload)
                with self.stats.lock:
                    self.stats.held += 1
                return
            self.users.held[user] = []
        self.send(user, payload, opens_gate)

    def send(self, user: str, payload: Payload, opens_gate: bool) -> None:
        with self.stats.lock:
            if len(self.in_flight) >= self.options.max_in_flight:  # a released hold can find the cap full
                self.stats.dropped += 1
                capped = True
            else:
                capped = False
                self.stats.sent += 1
                n = self.stats.sent
        if capped:
            if opens_gate:
                self.release(user, answered=False)
            return
        headers = {**(self.options.headers or {}), "x-user-id": user,
                   "x-request-id": f"loadgen-{self.options.seed}-{n}"}
        if self.options.host:
            headers["host"] = self.options.host
        cookie = self.users.jars.header(user) if self.options.keep_cookies else None
        if cookie:
            headers["cookie"] = cookie
        task = asyncio.create_task(self._one(user, payload, headers, opens_gate))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    def release(self, user: str, answered: bool) -> None:
        """The user's first answer arrived (send what it held, with its cookie) or failed (drop them)."""
        held = self.users.held.pop(user, [])
        if not answered:
            with self.stats.lock:
                self.stats.dropped += len(held)
            return
        for payload in held:
            self.send(user, payload, opens_gate=False)

    async def drain(self, deadline: float) -> None:
        """Await the searches in flight (and those their answers release) until `deadline`, then cancel."""
        loop = asyncio.get_running_loop()
        while self.in_flight and (remaining := deadline - loop.time()) > 0:
            await asyncio.wait(set(self.in_flight), timeout=remaining)
        pending = list(self.in_flight)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for user in list(self.users.held):  # their first answer never came within the run
            self.release(user, answered=False)

    async def _one(self, user: str, payload: Payload, headers: dict[str, str], opens_gate: bool) -> None:
        options, stats = self.options, self.stats
        started = time.perf_counter()
        try:
            response = await self.client.post(self.url, payload, headers)
        except httpx.HTTPError as exc:
            latency = time.perf_counter() - started
            stats.record_error(type(exc).__name__)
            status, response_headers = 0, {}
            if opens_gate:
                self.release(user, answered=False)
        else:
            latency = time.perf_counter() - started
            stats.record(response.status_code, latency)
            status, response_headers = response.status_code, dict(response.headers)
            if options.keep_cookies:
                self.users.jars.store(user, response.headers.get_list("set-cookie"))
            if opens_gate:
                self.release(user, answered=True)
            if options.keep_cookies or options.click_probability is not None:
                await _act_as_user(self.client, response, headers, options, stats, (user, self.users))
        if options.on_response is not None:
            try:
                options.on_response(status, latency * 1000.0, response_headers)
            except Exception as exc:  # surfaced by run_load once the run ends
                self.failures.append(exc)


async def _act_as_user(
    client: _ClientShards, response: httpx.Response, headers: dict[str, str], options: _Options, stats: _Stats,
    who: tuple[str, _Users],
) -> None:
    """Count the impression and maybe click a result (the search's cookies are already stored)."""
    user, users = who
    version = served_version(response.headers)
    if response.status_code != 200 or version is None:
        return
    stats.record_impression(user, version)
    p = (options.click_probability or {}).get(version, 0.0)
    if options.click_url is None or users.clicks.random() >= p:
        return
    doc_id = _clicked_doc(response, users.clicks)
    if doc_id is None:
        return
    click_headers = {k: v for k, v in headers.items() if k != "cookie"}
    cookie = users.jars.header(user) if options.keep_cookies else None
    if cookie:
        click_headers["cookie"] = cookie
    body: dict[str, Any] = {"doc_id": doc_id, "query_id": response.headers.get(QUERY_ID_HEADER)}
    mean = (options.click_value or {}).get(version)
    value = round(users.clicks.expovariate(1.0 / mean), 2) if mean else None
    if value is not None:
        body["value"] = value
    try:
        answer = await client.post(options.click_url, body, click_headers)
    except httpx.HTTPError:
        stats.record_click(version, ok=False)
        return
    if options.keep_cookies:
        users.jars.store(user, answer.headers.get_list("set-cookie"))
    stats.record_click(served_version(answer.headers) or version, ok=answer.is_success, value=value)


def _clicked_doc(response: httpx.Response, rng: random.Random) -> str | None:
    """A result of the answer, rank r with weight 1/(r+1) (users click near the top); None if no results."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or not body:
        return None
    ids = list(body)
    return str(rng.choices(ids, weights=[1.0 / (r + 1) for r in range(len(ids))])[0])


class LoadRunner:
    """`run_load` in a background thread: start(), set_rate(), report() (live or final), stop()."""

    def __init__(
        self,
        url: str,
        rate: float,
        duration: float,
        max_requests: int,
        **options: Unpack[LoadOptions],
    ) -> None:
        self._args = (url, duration, max_requests)
        self._options = _Options(**options)
        self._options.check_users(url)
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
