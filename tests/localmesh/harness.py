"""The local mesh tests' harness: an asyncio loop on a thread, recording upstreams behind Envoy, raw requests."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import httptools
import uvloop

T = TypeVar("T")


class EchoUpstream(asyncio.Protocol):
    """Answers every request with JSON naming itself and echoing the request's method, path, headers, body.

    `/status/NNN` answers with that status; `/chunked` answers chunked. Every response carries
    `x-served-by: <service>-<version>` and `x-upstream-drop: yes` (for response `remove` tests).
    """

    def __init__(self, server: Upstream) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports implement, not subclass
        self.server.connections += 1

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", {}, b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        path = self.url.decode()
        self.server.requests += 1
        payload = json.dumps(
            {
                "served_by": self.server.workload,
                "method": self.parser.get_method().decode(),
                "path": path,
                "headers": self.headers,
                "body": self.body.decode(),
            }
        ).encode()
        status = int(path.split("/")[2]) if path.startswith("/status/") else 200
        head = (
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\nx-served-by: {self.server.workload}\r\n"
            "x-upstream-drop: yes\r\n"
        ).encode()
        if path == "/chunked":
            half = len(payload) // 2
            body = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, payload[:half], len(payload) - half, payload[half:])
            self.transport.write(head + b"transfer-encoding: chunked\r\n\r\n" + body)
        else:
            self.transport.write(head + b"content-length: %d\r\n\r\n" % len(payload) + payload)
        if self.server.close_after_response:
            self.transport.close()


class LoopThread:
    def __init__(self) -> None:
        # uvloop, as the router process uses; the process tests cover the same code under it too.
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        async def wrapped() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Upstream:
    service: str
    version: str
    close_after_response: bool = False
    port: int = 0
    connections: int = 0
    requests: int = 0
    server: asyncio.AbstractServer | None = None

    @property
    def workload(self) -> str:
        return f"{self.service}-{self.version}"

    def endpoint(self) -> dict[str, Any]:
        return {"service": self.service, "labels": {"version": self.version}, "address": f"127.0.0.1:{self.port}"}

    async def start(self) -> Upstream:
        self.server = await asyncio.get_running_loop().create_server(lambda: EchoUpstream(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self


def raw_request(method: str, path: str, host: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
