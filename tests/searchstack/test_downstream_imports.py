"""A downstream call imports nothing: the services' HTTP client pays no failed import on every request.

httpcore, under httpx, runs `import sniffio` for every lock and event of a request. When the package is absent
(anyio >= 4.11 no longer brings it) Python walks `sys.path` for it on each call, because it does not remember a
failed import: the stack then spends 1.2x to 1.35x the CPU per search (bench/stack_cpu.py). The project depends on it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from searchstack.downstream import DownstreamClient
from searchstack.settings import Settings
from searchstack.telemetry import ServiceMetrics

pytestmark = pytest.mark.timeout(60)

ANSWER = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"hits":[]}'


class ImportsSeen:
    """A finder that finds nothing and remembers every module name Python looked for while installed."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        self.names.append(name)


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionResetError):
        pass  # the client closed the connection
    writer.close()
    await writer.wait_closed()


async def calls(n: int, seen: ImportsSeen) -> list[dict[str, Any]]:
    handlers: list[asyncio.Task[None]] = []  # the server's connection handlers, awaited before it closes

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        await answer(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    settings = Settings.from_env("master-search", {"KEYWORD_URL": url})
    client = DownstreamClient(settings, ServiceMetrics(settings))
    try:
        await client.post("keyword", "/keyword/search", {"text": "x", "k": 1}, {}, {})  # first use loads modules
        sys.meta_path.insert(0, seen)
        try:
            return [await client.post("keyword", "/keyword/search", {"text": "x", "k": 1}, {}, {}) for _ in range(n)]
        finally:
            sys.meta_path.remove(seen)
    finally:
        await client.aclose()
        await asyncio.gather(*handlers)
        server.close()
        await server.wait_closed()


def test_downstream_calls_look_for_no_module() -> None:
    seen = ImportsSeen()
    answers = asyncio.run(calls(20, seen))
    assert answers == [{"hits": []}] * 20
    assert seen.names == []


def test_the_finder_sees_a_module_that_is_looked_for() -> None:
    # The control: an import of a module that does not exist, made while the finder is installed, is seen.
    seen = ImportsSeen()
    sys.meta_path.insert(0, seen)
    try:
        with pytest.raises(ModuleNotFoundError):
            __import__("no_such_module_anywhere")
    finally:
        sys.meta_path.remove(seen)
    assert seen.names == ["no_such_module_anywhere"]
