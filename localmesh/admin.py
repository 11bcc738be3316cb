"""The local mesh router's admin HTTP server: config, endpoints, metrics and health on their own port.

This module owns the admin wire protocol only (a tiny HTTP/1.1 server on raw asyncio + httptools, so the
router needs no web framework on its event loop). What each path does is the `AdminHandler` callback's
business, which `localmesh.server.MeshRouter` provides:

    GET /healthz          200 "ok"
    GET /metrics          Prometheus text exposition
    GET /config           {"objects": [...]}
    PUT /config           {"objects": [...]} -> 200 {"objects": n} | 400 {"error": "<validation message>"}
    GET /endpoints        {"endpoints": [...]}
    PUT /endpoints        {"endpoints": [...]} (or a bare list) -> 200 | 400
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Callable
from typing import cast

import httptools

__all__ = ["AdminHandler", "AdminProtocol", "AdminResponse"]

# (status, content type, body)
AdminResponse = tuple[int, str, bytes]
AdminHandler = Callable[[str, str, bytes], AdminResponse]
_MAX_BODY = 32 * 1024 * 1024


class AdminProtocol(asyncio.Protocol):
    def __init__(self, handler: AdminHandler) -> None:
        self.handler = handler
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they implement the interface.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._respond((400, "text/plain", b"bad request\n"), keep_alive=False)

    def on_message_begin(self) -> None:
        self.url, self.body, self.size = b"", [], 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > _MAX_BODY:
            self._respond((413, "text/plain", b"body too large\n"), keep_alive=False)
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii", "replace")
        path = self.url.decode("latin-1").split("?", 1)[0]
        try:
            response = self.handler(method, path, b"".join(self.body))
        except Exception as e:  # an admin bug must not kill the router; say what broke
            response = (500, "text/plain", f"{type(e).__name__}: {e}\n".encode())
        self._respond(response, keep_alive=self.parser.should_keep_alive())

    def _respond(self, response: AdminResponse, keep_alive: bool) -> None:
        if self.transport is None:
            return
        status, content_type, body = response
        reason = http.HTTPStatus(status).phrase
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
            f"{'' if keep_alive else 'connection: close' + chr(13) + chr(10)}\r\n"
        )
        self.transport.write(head.encode("latin-1") + body)
        if not keep_alive:
            self.transport.close()
