"""The local mesh router's data path: an HTTP/1.1 reverse proxy on raw asyncio protocols.

This module owns moving bytes: parsing client requests (httptools), asking the current `RouteTable` where
each goes, forwarding it over a pooled keep-alive upstream connection, streaming the response back with
the route's header operations applied, answering 503/404 itself when there is no upstream or no route,
and recording one metrics sample per request (request received -> response end).

Request bodies are read whole (content-length or chunked) and forwarded with a content-length; response
bodies stream, keeping the upstream's content-length or re-chunking. Pipelined requests are queued and
answered in order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import httptools

from localmesh.metrics import MeshMetrics
from localmesh.table import Decision, Endpoint, HeaderOps, Request, RouteTable

__all__ = ["SOURCE_HEADER", "DownstreamProtocol", "ProxyState", "UpstreamPool"]

SOURCE_HEADER = "x-mesh-source-workload"
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
)
_NOT_FORWARDED = _HOP_BY_HOP | {"content-length", "expect", SOURCE_HEADER}
_HOP_BY_HOP_B = frozenset(h.encode() for h in _HOP_BY_HOP)
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_FLUSH_BYTES = 64 * 1024
_MAX_IDLE_PER_UPSTREAM = 256
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # not a TCP socket: nothing to tune
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ProxyState:
    """What the protocols read per request: the current table (swapped whole), metrics, upstream pool."""

    def __init__(self, table: RouteTable, metrics: MeshMetrics, namespace: str) -> None:
        self.table = table
        self.metrics = metrics
        self.namespace = namespace
        self.pool = UpstreamPool()
        self.downstreams: set[DownstreamProtocol] = set()


class _Pending:
    """A request read from the client, waiting for or being served."""

    __slots__ = ("body", "headers", "keep_alive", "method", "t0", "url", "version")

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.method = "GET"
        self.version = "1.1"
        self.keep_alive = True


class DownstreamProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.reading: _Pending | None = None
        self.queue: collections.deque[_Pending] = collections.deque()
        self.active: Exchange | None = None
        self.upgrade_seen = False

    # --- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they implement the interface.
        self.transport = cast(asyncio.Transport, transport)
        _set_nodelay(transport)
        self.state.downstreams.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.state.downstreams.discard(self)
        if self.active is not None:
            self.active.client_gone()
            self.active = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades (websockets) are not proxied: the request is served as plain HTTP, then closed.
            self.upgrade_seen = True
        except httptools.HttpParserError:
            self._bad_request()

    def pause_writing(self) -> None:
        if self.active is not None:
            self.active.pause_upstream(True)

    def resume_writing(self) -> None:
        if self.active is not None:
            self.active.pause_upstream(False)

    # --- httptools callbacks
    def on_message_begin(self) -> None:
        self.reading = _Pending(time.perf_counter())

    def on_url(self, url: bytes) -> None:
        assert self.reading is not None
        self.reading.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.reading is not None
        self.reading.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self.reading
        assert req is not None
        req.method = self.parser.get_method().decode("ascii", "replace")
        req.version = self.parser.get_http_version()
        req.keep_alive = self.parser.should_keep_alive()
        if self.transport is not None and any(
            n.lower() == b"expect" and v.lower() == b"100-continue" for n, v in req.headers
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        assert self.reading is not None
        self.reading.body.append(body)

    def on_message_complete(self) -> None:
        req, self.reading = self.reading, None
        assert req is not None
        if self.upgrade_seen:
            req.keep_alive = False
        if self.active is None:
            self._serve(req)
        else:
            self.queue.append(req)
            if self.transport is not None:
                self.transport.pause_reading()

    # --- serving
    def _serve(self, req: _Pending) -> None:
        headers: dict[str, str] = {}
        forwarded: list[tuple[str, str]] = []
        for n, v in req.headers:
            name, value = n.decode("latin-1").lower(), v.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
            forwarded.append((name, value))
        host = headers.get("host", "")
        host = host.rsplit(":", 1)[0] if ":" in host and not host.endswith("]") else host
        url = req.url.decode("latin-1")
        path, _, query = url.partition("?")
        decision = self.state.table.decide(host.lower(), Request(req.method, path, query, headers))
        self.active = Exchange(self, req, decision, headers.get(SOURCE_HEADER, "unknown"))
        if decision.endpoint is None:
            if decision.no_route:
                self.active.local_reply(404, b"route not found\n", "NR")
            else:
                self.active.local_reply(503, b"no healthy upstream\n", "UH")
            return
        self.active.data = _upstream_request(req, url, forwarded, decision.request_ops)
        self.state.pool.send(decision.endpoint, self.active)

    def exchange_done(self, keep_alive: bool) -> None:
        self.active = None
        if self.transport is None:
            return
        if not keep_alive:
            self.transport.close()
            return
        if self.queue:
            self._serve(self.queue.popleft())
        else:
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _bad_request(self) -> None:
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\nconnection: close\r\n\r\nbad request\n"
            )
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _upstream_request(req: _Pending, url: str, headers: list[tuple[str, str]], ops: tuple[HeaderOps, ...]) -> bytes:
    for op in ops:
        headers = op.apply(headers)
    lines = [f"{req.method} {url} HTTP/1.1\r\n"]
    lines += [f"{k}: {v}\r\n" for k, v in headers if k not in _NOT_FORWARDED]
    body = b"".join(req.body)
    if body or req.method in _BODY_METHODS:
        lines.append(f"content-length: {len(body)}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1") + body


class Exchange:
    """One request's trip: client request -> upstream -> response back, and its metrics sample."""

    __slots__ = (
        "attempts",
        "buffer",
        "data",
        "decision",
        "downstream",
        "finished",
        "mode",
        "out",
        "out_size",
        "req",
        "source",
        "status",
        "upstream",
    )

    def __init__(self, downstream: DownstreamProtocol, req: _Pending, decision: Decision, source: str) -> None:
        self.downstream = downstream
        self.req = req
        self.decision = decision
        self.source = source
        self.data = b""
        self.attempts = 0
        self.status = 0
        self.mode = ""
        self.out: list[bytes] = []
        self.out_size = 0
        self.buffer: list[bytes] = []
        self.upstream: UpstreamProtocol | None = None
        self.finished = False

    # --- response from the upstream
    def on_response_head(self, status: int, raw: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        req, ops = self.req, self.decision.response_ops
        te = b"".join(v for n, v in raw if n.lower() == b"transfer-encoding").lower()
        has_length = any(n.lower() == b"content-length" for n, _ in raw)
        if req.method == "HEAD" or status in (204, 304) or status < 200:
            self.mode = "none"
        elif has_length and b"chunked" not in te:
            self.mode = "length"
        else:
            self.mode = "chunked" if req.version == "1.1" else "buffer"
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        if ops:
            headers = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in raw]
            for op in ops:
                headers = op.apply(headers)
            lines += [f"{k}: {v}\r\n".encode("latin-1") for k, v in headers if k not in _HOP_BY_HOP]
        else:
            lines += [n + b": " + v + b"\r\n" for n, v in raw if n.lower() not in _HOP_BY_HOP_B]
        if self.mode == "chunked":
            lines.append(b"transfer-encoding: chunked\r\n")
        if not req.keep_alive:
            lines.append(b"connection: close\r\n")
        elif req.version == "1.0":
            lines.append(b"connection: keep-alive\r\n")
        if self.mode == "buffer":
            self.buffer = lines
            return
        lines.append(b"\r\n")
        self._emit(b"".join(lines))

    def on_response_body(self, chunk: bytes) -> None:
        if self.mode == "chunked":
            self._emit(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        elif self.mode == "buffer":
            self.out.append(chunk)
        else:
            self._emit(chunk)

    def on_response_end(self) -> None:
        if self.mode == "chunked":
            self.out.append(b"0\r\n\r\n")
        elif self.mode == "buffer":
            body = b"".join(self.out)
            self.out = [*self.buffer, b"content-length: %d\r\n\r\n" % len(body), body]
        self._finish(self.req.keep_alive)

    def on_upstream_eof(self) -> None:
        """The upstream closed mid-response: complete when the body was close-delimited, else cut short."""
        if self.mode in ("chunked", "buffer"):
            self.on_response_end()
        else:
            self._finish(False)

    # --- failures and local replies
    def upstream_failed(self, flag: str, retryable: bool) -> None:
        endpoint = self.decision.endpoint
        if retryable and self.attempts < 2 and endpoint is not None and not self.finished:
            # A pooled keep-alive connection the upstream had just closed: try once on a fresh one.
            self.downstream.state.pool.connect_and_send(endpoint, self)
            return
        self.local_reply(503, b"upstream connect error or disconnect/reset before headers\n", flag)

    def local_reply(self, status: int, body: bytes, flag: str) -> None:
        self.status = status
        close = b"" if self.req.keep_alive else b"connection: close\r\n"
        self.out = [
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%s\r\n%s"
            % (status, _REASONS[status], len(body), close, body)
        ]
        self._finish(self.req.keep_alive, flag)

    def client_gone(self) -> None:
        """The client closed before its response ended: drop the upstream connection (it is mid-response)."""
        if self.finished:
            return
        self.status, self.out = 0, []
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abandon()
        self._record("DC")
        self.finished = True

    def pause_upstream(self, paused: bool) -> None:
        if self.upstream is not None:
            self.upstream.pause(paused)

    # --- output
    def _emit(self, data: bytes) -> None:
        self.out.append(data)
        self.out_size += len(data)
        if self.out_size >= _FLUSH_BYTES:
            self.downstream.write(b"".join(self.out))
            self.out, self.out_size = [], 0

    def _finish(self, keep_alive: bool, flag: str = "-") -> None:
        if self.finished:
            return
        self.finished = True
        self.upstream = None
        self.downstream.write(b"".join(self.out))
        self.out = []
        self._record(flag)
        self.downstream.exchange_done(keep_alive)

    def _record(self, flag: str) -> None:
        """One sample; requests that found no endpoint count under version "unknown"."""
        d, e = self.decision, self.decision.endpoint
        if e is not None:
            key = (self.source, d.service, e.namespace, e.version, e.workload, self.status, flag)
        else:
            ns = self.downstream.state.namespace
            key = (self.source, d.service, ns, "unknown", "unknown", self.status, flag)
        elapsed_ms = (time.perf_counter() - self.req.t0) * 1000.0
        self.downstream.state.metrics.record(key, elapsed_ms)


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection to an endpoint; serves one exchange at a time."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.got_head = False
        self.reused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they implement the interface.
        self.transport = cast(asyncio.Transport, transport)
        _set_nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        ex, self.exchange = self.exchange, None
        if ex is None or ex.finished:
            return
        if self.got_head:
            ex.on_upstream_eof()
        else:
            ex.upstream_failed("UC", retryable=self.reused)

    def send(self, exchange: Exchange, reused: bool) -> None:
        assert self.transport is not None
        self.exchange, self.reused, self.got_head = exchange, reused, False
        exchange.upstream = self
        exchange.attempts += 1
        self.transport.write(exchange.data)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.got_head = True
        ex = self.exchange
        if ex is None:
            return
        ex.on_response_head(self.parser.get_status_code(), self.headers)
        if ex.req.method == "HEAD":
            # httptools cannot be told a response has no body, so it would wait for the declared length:
            # the response ends here and the connection goes (its parser state is unusable).
            self.abandon()
            ex.on_response_end()

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.on_response_body(body)

    def on_message_complete(self) -> None:
        ex, self.exchange = self.exchange, None
        reusable = self.parser.should_keep_alive()
        if ex is not None:
            ex.on_response_end()
        if reusable and self.transport is not None:
            self.pool.release(self)
        elif self.transport is not None:
            self.transport.close()

    def abandon(self) -> None:
        self.exchange = None
        if self.transport is not None:
            self.transport.close()

    def pause(self, paused: bool) -> None:
        if self.transport is not None:
            (self.transport.pause_reading if paused else self.transport.resume_reading)()

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and self.exchange is None


class UpstreamPool:
    """Idle keep-alive connections per endpoint address."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], list[UpstreamProtocol]] = {}
        self.connecting: set[asyncio.Task[Any]] = set()

    def send(self, endpoint: Endpoint, exchange: Exchange) -> None:
        conns = self.idle.get((endpoint.host, endpoint.port))
        while conns:
            conn = conns.pop()
            if conn.usable:
                conn.send(exchange, reused=True)
                return
        self.connect_and_send(endpoint, exchange)

    def connect_and_send(self, endpoint: Endpoint, exchange: Exchange) -> None:
        task = asyncio.get_running_loop().create_task(self._connect(endpoint, exchange))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect(self, endpoint: Endpoint, exchange: Exchange) -> None:
        key = (endpoint.host, endpoint.port)
        factory: Callable[[], UpstreamProtocol] = lambda: UpstreamProtocol(self, key)  # noqa: E731
        try:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(factory, endpoint.host, endpoint.port)
        except OSError:
            exchange.upstream_failed("UF", retryable=False)
            return
        if exchange.finished:  # the client left while we connected
            self.release(conn)
            return
        conn.send(exchange, reused=False)

    def release(self, conn: UpstreamProtocol) -> None:
        conns = self.idle.setdefault(conn.key, [])
        if len(conns) < _MAX_IDLE_PER_UPSTREAM:
            conns.append(conn)
        elif conn.transport is not None:
            conn.transport.close()

    def forget(self, conn: UpstreamProtocol) -> None:
        conns = self.idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)

    def close_all(self) -> None:
        for task in list(self.connecting):
            task.cancel()
        for conns in self.idle.values():
            for conn in list(conns):
                if conn.transport is not None:
                    conn.transport.close()
        self.idle.clear()
