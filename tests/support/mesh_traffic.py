"""Traffic that follows the routes in the emulated cluster, as Istio's counters, for Prometheus to read.

- `MeshTraffic` integrates, for every namespace with a managed entry VirtualService, `rps` entry
  requests per second through the routes stored in the emulator at that moment: the entry split sends
  each lane its weight's share, and every service serves a lane with the version its routes and
  DestinationRule give that lane. Counts are `istio_requests_total` (response_code 200/500, errors at
  the version's error rate) and `istio_request_duration_milliseconds_bucket` (a fixed latency shape),
  exact and deterministic (floors of the integrated floats), so a healthy canary passes and a failing
  one fails without any noise to flake on. With `forget_finished`, a namespace whose release has ended
  leaves the exposition (nothing reads it any more): a campaign of 80 releases would otherwise have
  Prometheus parse ~3 MB every half second, and a scrape slower than its timeout loses every release's data.
- `MetricsExporter` serves them as Prometheus text on a loopback port, for a real Prometheus to scrape.
- `FakePrometheus` answers the two queries `controller.adapters.prometheus.client` sends (raw range samples at
  `end`, and `last_over_time` at `start`) from samples `MeshTraffic.sample()` recorded, and misbehaves on
  command: down (connection refused), slow (answers after a delay), partial (series of one version
  missing), counter resets, stale (a version's series stop getting samples).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from analysis.observations import ISTIO_BUCKETS_MS
from controller.adapters.istio.render import CANARY_LANE_ROUTE, ENTRY_ROUTE, STABLE_LANE_ROUTE
from tests.support.invariants import FINAL, RELEASES
from tests.support.kmock_server import RunningEmulator

Obj = dict[str, Any]
SeriesKey = tuple[tuple[str, str], ...]
# The share of requests at or under each bucket bound (the same for every version: latency is equal).
LATENCY_CDF = (0.0, 0.0, 0.0, 0.05, 0.25, 0.6, 0.85, 0.95, 0.99, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
               1.0, 1.0)
VS: tuple[str, str, str] = ("networking.istio.io", "v1", "virtualservices")
DR: tuple[str, str, str] = ("networking.istio.io", "v1", "destinationrules")


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"


def lane_versions(vss: list[Obj], drs: list[Obj]) -> tuple[dict[str, float], dict[str, dict[str, str]]]:
    """({lane: share of entry traffic}, {service: {lane: version}}) from a namespace's route objects."""
    subsets = {str(d.get("spec", {}).get("host")): {s["name"]: (s.get("labels") or {}).get("version")
                                                    for s in d.get("spec", {}).get("subsets", []) or []}
               for d in drs}
    shares: dict[str, float] = {}
    serving: dict[str, dict[str, str]] = {}
    for vs in vss:
        host = vs["metadata"]["name"]
        for route in vs.get("spec", {}).get("http", []) or []:
            for dest in route.get("route") or []:
                version = subsets.get(host, {}).get(dest["destination"].get("subset", ""))
                if route.get("name") == ENTRY_ROUTE:
                    lane = ((dest.get("headers") or {}).get("request") or {}).get("set", {})
                    lane_name = next(iter(lane.values()), "stable")
                    shares[lane_name] = shares.get(lane_name, 0.0) + int(dest.get("weight", 100)) / 100
                    if version:
                        serving.setdefault(host, {})[lane_name] = version
                elif version and route.get("name") == CANARY_LANE_ROUTE:
                    serving.setdefault(host, {})["canary"] = version
                elif version and route.get("name") == STABLE_LANE_ROUTE:
                    serving.setdefault(host, {}).setdefault("stable", version)
                    serving[host].setdefault("canary", version)
    return shares, serving


@dataclass
class MeshTraffic:
    emulator: RunningEmulator
    rps: float = 300.0
    # (namespace, version) -> share of requests answered 500
    error_rates: dict[tuple[str, str], float] = field(default_factory=dict)
    totals: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)  # ns, svc, ver -> [ok, err]
    last: float | None = None
    # FakePrometheus's history: (t, {(ns, service, version): (ok, errors)}) per sample() call.
    history: list[tuple[float, dict[tuple[str, str, str], tuple[float, float]]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    forget_finished: bool = False

    def advance(self, now: float) -> None:
        """Integrate the traffic since the last call through the routes stored now."""
        with self.lock:
            dt = 0.0 if self.last is None else max(0.0, now - self.last)
            self.last = now
            if dt == 0.0:
                return
            store = self.emulator.store
            with store.lock:
                spaces = {ns for (k, ns) in store.index if k == VS}
                if self.forget_finished:
                    ended = {ns for ns in spaces if any(
                        (store.objects[(RELEASES, ns, name)].get("status") or {}).get("phase") in FINAL
                        for name in store.index.get((RELEASES, ns), ()))}
                    spaces -= ended
                    for key in [k for k in self.totals if k[0] in ended]:
                        del self.totals[key]
                objects = {ns: ([store.objects[(VS, ns, n)] for n in store.index.get((VS, ns), ())],
                                [store.objects[(DR, ns, n)] for n in store.index.get((DR, ns), ())])
                           for ns in spaces}
            for ns, (vss, drs) in objects.items():
                shares, serving = lane_versions(vss, drs)
                for service, lanes in serving.items():
                    for lane, version in lanes.items():
                        n = self.rps * dt * shares.get(lane, 0.0)
                        if n <= 0:
                            continue
                        err = self.error_rates.get((ns, version), 0.0)
                        ok_err = self.totals.setdefault((ns, service, version), [0.0, 0.0])
                        ok_err[0] += n * (1 - err)
                        ok_err[1] += n * err

    def series(self) -> dict[SeriesKey, float]:
        """Every series as Istio would export it: {sorted label pairs: cumulative value}."""
        with self.lock:
            return istio_series(self.totals)

    def sample(self, t: float) -> None:
        """Record the totals at `t` (FakePrometheus's scrape)."""
        self.advance(t)
        with self.lock:
            self.history.append((t, {k: (v[0], v[1]) for k, v in self.totals.items()}))

    def run(self, stop: threading.Event, period: float = 0.1, clock: Callable[[], float] = time.time) -> None:
        while not stop.wait(period):
            self.advance(clock())


def _base_labels(key: tuple[str, str, str]) -> dict[str, str]:
    """The labels every series of (namespace, service, version) has."""
    ns, service, version = key
    return {"reporter": "destination", "destination_service_namespace": ns, "destination_service_name": service,
            "destination_version": version}


def istio_series(totals: Mapping[tuple[str, str, str], Sequence[float]]) -> dict[SeriesKey, float]:
    """Istio's counters for {(namespace, service, version): (ok, errors)}: floors, so whole and consistent."""
    out: dict[SeriesKey, float] = {}
    for key, (ok, err) in totals.items():
        base = _base_labels(key)
        for code, value in (("200", ok), ("500", err)):
            key = tuple(sorted({**base, "__name__": "istio_requests_total", "response_code": code}.items()))
            out[key] = float(math.floor(value))
        total = ok + err
        for bound, share in zip(ISTIO_BUCKETS_MS, LATENCY_CDF, strict=True):
            labels = {**base, "__name__": "istio_request_duration_milliseconds_bucket", "le": _le(bound)}
            out[tuple(sorted(labels.items()))] = float(math.floor(total * share))
    return out


def exposition(series: dict[SeriesKey, float]) -> bytes:
    lines = []
    for key, value in sorted(series.items()):
        labels = dict(key)
        name = labels.pop("__name__")
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{inner}}} {value:.0f}")
    return ("\n".join(lines) + "\n").encode()


class _Server:
    """A ThreadingHTTPServer on a free loopback port, in a thread; `stop()` ends it."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def metrics_exporter(traffic: MeshTraffic) -> _Server:
    """Serve `traffic` as Prometheus text at /metrics (integrated up to the moment of each scrape)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            traffic.advance(time.time())
            body = exposition(traffic.series())
            with contextlib.suppress(OSError):  # Prometheus gave up on a slow scrape (its timeout)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return _Server(Handler)


# --------------------------------------------------------------------------------------------------
# A Prometheus HTTP API stand-in that misbehaves on command
# --------------------------------------------------------------------------------------------------
_RANGE = re.compile(r"^(\{.*\})\[(\d+)ms\]$", re.S)
_LAST = re.compile(r"^last_over_time\((\{.*\})\[(\d+)ms\]\)$", re.S)
_MATCHER = re.compile(r'(\w+)(=~|=)"((?:[^"\\]|\\.)*)"')


def _matcher(selector: str) -> Callable[..., bool]:
    """A predicate on a series' labels for a selector's `name="value"` and `name=~"regex"` matchers. Given only
    some of a series' labels, it judges by the matchers on those (a series it rejects is rejected whole)."""
    equal: list[tuple[str, str]] = []
    regex: list[tuple[str, re.Pattern[str]]] = []
    for name, op, raw in _MATCHER.findall(selector):
        value = json.loads(f'"{raw}"')
        if op == "=":
            equal.append((name, value))
        else:
            regex.append((name, re.compile(value)))

    def matches(labels: dict[str, str], partial: bool = False) -> bool:
        return all(labels.get(name, "") == value for name, value in equal if not partial or name in labels) and \
            all(pattern.fullmatch(labels.get(name, "")) for name, pattern in regex if not partial or name in labels)
    return matches


@dataclass
class Misbehaviour:
    down: bool = False  # answer 503 (Prometheus restarting behind its service)
    delay: float = 0.0  # seconds before each answer (slower than the client's timeout: a timeout)
    missing_versions: frozenset[str] = frozenset()  # partial answers: these versions' series are left out
    stale_versions: frozenset[str] = frozenset()  # no samples after `stale_after` for these versions
    stale_after: float = math.inf
    # Counter resets: versions whose counters restart from 0 at each of these times (a pod restart).
    reset_versions: frozenset[str] = frozenset()
    reset_at: tuple[float, ...] = ()


@dataclass
class FakePrometheus:
    traffic: MeshTraffic
    misbehaviour: Misbehaviour = field(default_factory=Misbehaviour)
    queries: int = 0
    failed_answers: int = 0
    server: _Server | None = None

    def start(self) -> FakePrometheus:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer._answer(self)

            def do_POST(self) -> None:
                outer._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server(Handler)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        self.queries += 1
        m = self.misbehaviour
        if m.delay:
            time.sleep(m.delay)
        parsed = urllib.parse.urlparse(h.path)
        params = dict(urllib.parse.parse_qsl(parsed.query))
        if h.command == "POST":
            length = int(h.headers.get("Content-Length", "0") or 0)
            params.update(urllib.parse.parse_qsl(h.rfile.read(length).decode()))
        if m.down:
            self.failed_answers += 1
            self._send(h, 503, {"status": "error", "errorType": "unavailable", "error": "injected: down"})
            return
        try:
            data = self.evaluate(params.get("query", ""), float(params.get("time", "0")))
        except ValueError as exc:
            self._send(h, 400, {"status": "error", "errorType": "bad_data", "error": str(exc)})
            return
        self._send(h, 200, {"status": "success", "data": data})

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, payload: Obj) -> None:
        body = json.dumps(payload).encode()
        with contextlib.suppress(OSError):  # the client may have given up (timeout)
            h.send_response(code)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)

    def _samples(self, selector: str, start: float, end: float
                 ) -> Iterator[tuple[SeriesKey, list[tuple[float, float]]]]:
        """The samples in (start, end] of every series `selector` matches (only those: a release of minutes
        records thousands of samples, and building every series of each would outlast the client's timeout)."""
        m = self.misbehaviour
        matches = _matcher(selector)
        history = list(self.traffic.history)
        # A counter reset at r (the pod restarted): from then on its counters count from 0, i.e. the totals
        # minus those at r, all of its series together (as Envoy's do).
        at_reset = {r: next((s for t, s in reversed(history) if t <= r), {}) for r in m.reset_at}
        per_series: dict[SeriesKey, list[tuple[float, float]]] = {}
        for t, totals in history:
            if not start < t <= end:
                continue
            shown: dict[tuple[str, str, str], tuple[float, float]] = {}
            for key, (ok, err) in totals.items():
                version = key[2]
                if version in m.missing_versions or (version in m.stale_versions and t > m.stale_after):
                    continue
                if not matches(_base_labels(key), partial=True):
                    continue  # none of this key's series can match: do not build them
                resets = [r for r in m.reset_at if r <= t] if version in m.reset_versions else []
                if resets:
                    base_ok, base_err = at_reset[resets[-1]].get(key, (0.0, 0.0))
                    ok, err = ok - base_ok, err - base_err
                shown[key] = (ok, err)
            for series, value in istio_series(shown).items():
                if matches(dict(series)):
                    per_series.setdefault(series, []).append((t, value))
        yield from per_series.items()

    def evaluate(self, query: str, at: float) -> Obj:
        if (m := _LAST.match(query)) is not None:
            selector, lookback = m.group(1), int(m.group(2)) / 1000
            result = []
            for key, samples in self._samples(selector, at - lookback, at):
                inside = samples
                if inside:
                    _, v = inside[-1]
                    result.append({"metric": dict(key), "value": [at, f"{v:.0f}"]})
            return {"resultType": "vector", "result": result}
        if (m := _RANGE.match(query)) is not None:
            selector, width = m.group(1), int(m.group(2)) / 1000
            result = []
            for key, samples in self._samples(selector, at - width, at):
                inside = [[t, f"{v:.0f}"] for t, v in samples]
                if inside:
                    result.append({"metric": dict(key), "values": inside})
            return {"resultType": "matrix", "result": result}
        raise ValueError(f"the fake Prometheus does not answer {query!r}")
