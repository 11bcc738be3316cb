"""The shadow phase's comparator: where the entry route's mirror sends its copies (docs/shadow.md).

The mesh mirrors a share of the searches here and drops this service's answers, so no user waits on it or sees
it. For each mirrored search it asks the stack, through the mesh, the stable version twice and the new version
once (`compare.Comparator`, the header `x-canary-shadow: stable|canary` selects the version and its lane on the
shadow phase's own entry routes), and keeps the three top-k lists with the path each answer took
(`x-served-by`) under a sequence number. The controller reads them with a cursor:

    GET /shadow/pairs?epoch=E&after=N  ->  {"epoch", "head", "pairs": [{"seq", "query", "stable", "stableAgain",
                                             "new", "served", "scoreDrift", "scoreDriftNoise"}],
                                             "mirrored", "dropped", "ignored",
                                             "unanswered": {"stable", "new"}, "latencyMs": {"stable", "new"}}

`after=-1` returns no pairs, only where the log stands (`head`); an epoch other than the comparator's (it
restarted) returns every pair it keeps. The log keeps the last 10,000 pairs (`PairLog.keep`); a mirrored search
that finds the queue full is dropped and counted (the judge needs a sample of the searches, not all of them).

Its command is `canary comparator` (`controller/cli/comparator.py`), run beside the stack on a cluster
(manifests/shadow) and by the local platform.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import socket
import threading
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from controller.adapters.shadow.compare import SEARCH_PATH, AnswerError, Comparator, latency_summary, new_latencies
from controller.core.observation import MirroredPair
from controller.core.plan import DEFAULT_SHADOW_HEADER

log = logging.getLogger(__name__)
PAIRS_PATH = "/shadow/pairs"
# Pairs in one answer at most: a controller that was away catches up over a few looks.
PAGE = 2000


@dataclass
class PairLog:
    """The pairs made so far (the last `keep`), numbered from 1 within this process's epoch, and the counters."""

    keep: int = 10_000
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    mirrored: int = 0
    dropped: int = 0
    ignored: int = 0
    unanswered: dict[str, int] = field(default_factory=lambda: {"stable": 0, "new": 0})
    latencies: dict[str, deque[float]] = field(default_factory=new_latencies)

    def __post_init__(self) -> None:
        self._pairs: deque[tuple[int, MirroredPair]] = deque(maxlen=self.keep)
        self._seq = 0
        self.lock = threading.Lock()

    def add(self, pair: MirroredPair) -> None:
        with self.lock:
            self._seq += 1
            self._pairs.append((self._seq, pair))

    def since(self, epoch: str, after: int) -> dict[str, Any]:
        with self.lock:
            if after < 0:
                chosen: list[tuple[int, MirroredPair]] = []
                head = self._seq
            else:
                start = after if epoch == self.epoch else 0  # another epoch: read from its first pair
                chosen = list(itertools.islice((p for p in self._pairs if p[0] > start), PAGE))
                head = chosen[-1][0] if chosen else start
            return {"epoch": self.epoch, "head": head, "pairs": [_pair_json(seq, p) for seq, p in chosen],
                    "mirrored": self.mirrored, "dropped": self.dropped, "ignored": self.ignored,
                    "unanswered": dict(self.unanswered), "latencyMs": latency_summary(self.latencies)}


def _pair_json(seq: int, mirrored: MirroredPair) -> dict[str, Any]:
    p = mirrored.pair
    return {"seq": seq, "query": p.query, "stable": list(p.stable), "stableAgain": list(p.stable_again),
            "new": list(p.new), "served": dict(mirrored.served), "scoreDrift": mirrored.score_drift,
            "scoreDriftNoise": mirrored.score_drift_noise}


@dataclass
class Settings:
    entry: str
    entry_host: str = ""
    header: str = DEFAULT_SHADOW_HEADER
    k: int = 10
    workers: int = 4
    queue_size: int = 256
    timeout: float = 5.0


class ComparatorService:
    """The queue of mirrored searches, the workers that pair them, and the log they write."""

    def __init__(self, settings: Settings, log_: PairLog | None = None) -> None:
        self.settings = settings
        self.log = log_ or PairLog()
        self.searches: queue.Queue[Mapping[str, Any] | None] = queue.Queue(maxsize=settings.queue_size)
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"pairing-{i}")
                         for i in range(settings.workers)]

    def start(self) -> ComparatorService:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        for _ in self._threads:
            self.searches.put(None)
        for t in self._threads:
            t.join(timeout=self.settings.timeout * 3 + 1)

    def mirrored(self, path: str, body: bytes) -> None:
        """A copy the mesh sent: a search is queued for pairing; anything else is counted and let go."""
        search = _search(path, body)
        with self.log.lock:
            if search is None:
                self.log.ignored += 1
                return
            self.log.mirrored += 1
            try:
                self.searches.put_nowait(search)
            except queue.Full:
                self.log.dropped += 1

    def _work(self) -> None:
        s = self.settings
        headers = {"host": s.entry_host} if s.entry_host else {}
        with httpx.Client(timeout=s.timeout) as client:
            comparator = Comparator(client, s.entry, s.entry, s.k, headers=headers, lane_header=s.header)
            comparator.latencies_ms = self.log.latencies  # one record for all workers (deque appends are atomic)
            while (search := self.searches.get()) is not None:
                try:
                    self.log.add(comparator.mirrored_pair(search))
                except AnswerError as exc:
                    with self.log.lock:
                        self.log.unanswered[exc.side] += 1
                    log.info("search not paired: %s", exc)


def _search(path: str, body: bytes) -> Mapping[str, Any] | None:
    if urlsplit(path).path != SEARCH_PATH:
        return None
    try:
        search = json.loads(body)
    except ValueError:
        return None
    return search if isinstance(search, dict) and isinstance(search.get("text"), str) else None


def _handler(service: ComparatorService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            service.mirrored(self.path, self.rfile.read(length) if length else b"")
            self._answer(202, {"queued": True})

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/healthz":
                self._answer(200, {"ok": True})
                return
            if url.path != PAIRS_PATH:
                self._answer(404, {"error": f"not found: {url.path}"})
                return
            query = parse_qs(url.query)
            try:
                after = int(query.get("after", ["0"])[0])
            except ValueError:
                self._answer(400, {"error": "after: not a whole number"})
                return
            self._answer(200, service.log.since(query.get("epoch", [""])[0], after))

        def _answer(self, status: int, payload: Mapping[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler


def serve(settings: Settings, listen: str, port: int, fd: int | None = None
          ) -> tuple[ThreadingHTTPServer, ComparatorService]:
    """A started comparator on listen:port, or on the inherited bound socket `fd` (its server not yet serving:
    call `serve_forever`)."""
    service = ComparatorService(settings)
    server = ThreadingHTTPServer((listen, port), _handler(service), bind_and_activate=fd is None)
    if fd is not None:
        server.socket.close()
        try:
            server.socket = socket.socket(fileno=fd)
            server.server_address = server.socket.getsockname()
            server.server_activate()
        except OSError:
            server.server_close()
            raise
    server.daemon_threads = True
    return server, service.start()  # its workers start only once it has its address
