"""A Prometheus HTTP API stand-in for the provider's tests: canned answers to its queries, and the headers of
every request it got (`fake_prometheus`, a context manager that serves on 127.0.0.1 until the block ends)."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from controller.adapters.prometheus.client import BUCKETS_METRIC

Answer = tuple[int, str]


class FakePrometheus(http.server.ThreadingHTTPServer):
    """Answers queries with canned (status, body) pairs, the last one repeating; records headers.

    The window's start query (`last_over_time`) gets `start_answers`, every other query `answers`; the
    queries for the latency buckets find nothing (the answers hold request counters).
    """

    def __init__(self, answers: list[tuple[int, str]], start_answers: list[tuple[int, str]]) -> None:
        self.answers = answers
        self.start_answers = start_answers
        self.seen: list[dict[str, str]] = []
        self.queries: list[str] = []
        super().__init__(("127.0.0.1", 0), _FakeHandler)

    def next_answer(self, query: str) -> tuple[int, str]:
        self.queries.append(query)
        if BUCKETS_METRIC in query:
            return ok([], "vector" if query.startswith("last_over_time") else "matrix")
        answers = self.start_answers if query.startswith("last_over_time") else self.answers
        return answers.pop(0) if len(answers) > 1 else answers[0]


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    server: FakePrometheus

    def do_GET(self) -> None:
        self.server.seen.append(dict(self.headers))
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("query", [""])[0]
        status, body = self.server.next_answer(query)
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def fake_prometheus() -> Iterator[Callable[..., FakePrometheus]]:
    """Start fakes with `start(answers, start_answers=None)`; all stop when the block ends."""
    servers: list[FakePrometheus] = []

    def start(answers: list[Answer], start_answers: list[Answer] | None = None) -> FakePrometheus:
        server = FakePrometheus(answers, start_answers or [ok([], "vector")])
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def url_of(server: FakePrometheus) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def ok(result: Any, kind: str = "matrix") -> tuple[int, str]:
    return 200, json.dumps({"status": "success", "data": {"resultType": kind, "result": result}})
