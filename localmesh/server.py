"""The local mesh router: an HTTP proxy that obeys Istio VirtualService/DestinationRule objects.

This module owns the router as a whole: its config (validated objects + the local endpoint registry,
swapped atomically at runtime), its two servers (the proxy and the admin API) and the process entry:

    python -m localmesh.server --port P --admin-port A [--config FILE] [--endpoints FILE]

Ready is announced on stdout as one line `mesh-router ready proxy=HOST:PORT admin=HOST:PORT`; SIGTERM
and SIGINT stop it cleanly. What it routes on, and what it refuses, is in docs/router.md; the data path
is localmesh.proxy, the decisions localmesh.table, the metrics localmesh.metrics and the admin wire
protocol localmesh.admin. The local platform (controller.adapters.local.stack) starts it as a process and
configures it through its admin API (controller.adapters.local.mesh_admin); of the controller, the mesh
uses only the validation of the Istio objects it is sent (controller.adapters.istio.validate).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from controller.adapters.istio.validate import InvalidRouteConfig, validate_objects
from localmesh.admin import AdminProtocol, AdminResponse
from localmesh.metrics import MeshMetrics
from localmesh.proxy import DownstreamProtocol, ProxyState
from localmesh.table import Endpoint, InvalidEndpoints, compile_table, parse_endpoints

__all__ = ["InvalidEndpoints", "InvalidRouteConfig", "MeshRouter", "main"]


class MeshRouter:
    """Config + servers. `apply_config` / `set_endpoints` may be called from any thread.

    A new table is compiled off to the side and swapped in with one assignment, so a request sees either
    the old config or the new one, never a mix; an invalid config raises and leaves the old one in force.
    """

    def __init__(
        self,
        objects: Sequence[dict[str, Any]] = (),
        endpoints: Sequence[dict[str, Any]] = (),
        namespace: str = "default",
    ) -> None:
        self.namespace = namespace
        self._objects: list[dict[str, Any]] = []
        self._endpoints: tuple[Endpoint, ...] = ()
        self.metrics = MeshMetrics()
        self.state = ProxyState(compile_table([], ()), self.metrics, namespace)
        self.set_endpoints(list(endpoints))
        self.apply_config(list(objects))
        self._servers: list[asyncio.AbstractServer] = []
        self.proxy_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None

    # --- config
    def apply_config(self, objects: list[dict[str, Any]]) -> None:
        """Validate and put in force; raises InvalidRouteConfig and keeps the old config on any error."""
        objects = copy.deepcopy(objects)
        validate_objects(objects)
        table = compile_table(objects, self._endpoints)
        self._objects = objects
        self.state.table = table

    def set_endpoints(self, entries: list[dict[str, Any]]) -> None:
        """Replace the endpoint registry; raises InvalidEndpoints and keeps the old one on any error."""
        endpoints = parse_endpoints(entries, self.namespace)
        table = compile_table(self._objects, endpoints)
        self._endpoints = endpoints
        self.state.table = table

    def config(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self._objects)

    def endpoints(self) -> list[dict[str, Any]]:
        return [e.for_storage() for e in self._endpoints]

    def metrics_text(self) -> str:
        return self.metrics.render()

    # --- servers
    async def start(self, host: str = "127.0.0.1", port: int = 0, admin_port: int | None = 0) -> None:
        """Listen for proxied traffic on `port` and, unless `admin_port` is None, for admin calls."""
        loop = asyncio.get_running_loop()
        proxy = await loop.create_server(lambda: DownstreamProtocol(self.state), host, port, backlog=1024)
        self._servers.append(proxy)
        self.proxy_address = proxy.sockets[0].getsockname()[:2]
        if admin_port is not None:
            admin = await loop.create_server(lambda: AdminProtocol(self.handle_admin), host, admin_port)
            self._servers.append(admin)
            self.admin_address = admin.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for downstream in list(self.state.downstreams):
            downstream.close()
        self.state.pool.close_all()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._servers.clear()

    # --- admin API
    def handle_admin(self, method: str, path: str, body: bytes) -> AdminResponse:
        if path == "/healthz" and method == "GET":
            return 200, "text/plain", b"ok\n"
        if path == "/metrics" and method == "GET":
            return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics_text().encode()
        if path == "/config" and method == "GET":
            return _json(200, {"objects": self._objects})
        if path == "/endpoints" and method == "GET":
            return _json(200, {"endpoints": self.endpoints()})
        if path in ("/config", "/endpoints") and method == "PUT":
            return self._put(path, body)
        if path in ("/healthz", "/metrics", "/config", "/endpoints"):
            return 405, "text/plain", b"method not allowed\n"
        return 404, "text/plain", b"not found\n"

    def _put(self, path: str, body: bytes) -> AdminResponse:
        try:
            payload = json.loads(body)
        except ValueError as e:
            return _json(400, {"error": f"body is not JSON: {e}"})
        try:
            if path == "/config":
                objects = payload.get("objects") if isinstance(payload, dict) else payload
                if not isinstance(objects, list):
                    raise InvalidRouteConfig("config", "objects", "expected a list of objects")
                self.apply_config(objects)
                return _json(200, {"objects": len(self._objects)})
            entries = payload.get("endpoints") if isinstance(payload, dict) else payload
            if not isinstance(entries, list):
                raise InvalidEndpoints("endpoints: expected a list")
            self.set_endpoints(entries)
            return _json(200, {"endpoints": len(self._endpoints)})
        except (InvalidRouteConfig, InvalidEndpoints) as e:
            return _json(400, {"error": str(e)})


def _json(status: int, payload: Any) -> AdminResponse:
    return status, "application/json", json.dumps(payload).encode()


# ---------------------------------------------------------------------------------------------------
# Process entry.


def load_objects(path: Path) -> list[dict[str, Any]]:
    """Objects from a JSON/YAML file: `{"objects": [...]}`, a list, or a multi-document YAML stream."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    if len(docs) == 1 and isinstance(docs[0], dict) and "objects" in docs[0]:
        return list(docs[0]["objects"])
    if len(docs) == 1 and isinstance(docs[0], list):
        return list(docs[0])
    return docs


def load_endpoints(path: Path) -> list[dict[str, Any]]:
    """Endpoints from a JSON/YAML file: `{"endpoints": [...]}` or a bare list."""
    data = yaml.safe_load(path.read_text())
    entries = data.get("endpoints") if isinstance(data, dict) else data
    return list(entries or [])


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m localmesh.server", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address both servers bind (default loopback)")
    p.add_argument("--port", type=int, required=True, help="proxy port (0: pick a free one)")
    p.add_argument("--admin-port", type=int, required=True, help="admin API port (0: pick a free one)")
    p.add_argument("--config", type=Path, help="Istio objects to start with (JSON or YAML)")
    p.add_argument("--endpoints", type=Path, help="endpoint registry to start with (JSON or YAML)")
    p.add_argument("--namespace", default="default", help="namespace reported in metrics labels")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    router = MeshRouter(
        load_objects(args.config) if args.config else [],
        load_endpoints(args.endpoints) if args.endpoints else [],
        namespace=args.namespace,
    )
    await router.start(args.host, args.port, args.admin_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    assert router.proxy_address is not None and router.admin_address is not None
    proxy, admin = router.proxy_address, router.admin_address
    print(f"mesh-router ready proxy={proxy[0]}:{proxy[1]} admin={admin[0]}:{admin[1]}", flush=True)
    await stop.wait()
    await router.stop()
    print("mesh-router stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        import uvloop  # optional speed-up; plain asyncio works too
    except ImportError:
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(_serve(args))
    except (InvalidRouteConfig, InvalidEndpoints, OSError) as e:
        print(f"mesh-router: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
