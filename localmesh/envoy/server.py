"""The local mesh router, run by real Envoy: `python -m localmesh.envoy.server`.

This module owns the process the local platform starts as its mesh router: the command line

    python -m localmesh.envoy.server --port P --admin-port A [--config FILE] [--endpoints FILE] [--namespace NS]
                                     [--work-dir DIR] [--envoy-admin-port E]

and the admin API on the admin port (served on threads, since applying a configuration waits for Envoy to take
it): Envoy itself (`localmesh.envoy.process.Envoy`, a child process) listens
on the data port and routes every request; this process only configures it and reads it back.

    GET /healthz     200 "ok" while Envoy runs (503 otherwise)
    GET /metrics     Istio's standard metrics from Envoy's statistics (`localmesh.envoy.metrics`)
    GET /config      {"objects": [...], "routesVersion": V}: the objects whose translation Envoy runs now (the
                     version is read from Envoy's admin at each request, not taken from this process' memory)
    PUT /config      validated and translated, then applied to Envoy without a restart; 400 {"error": ...}
                     naming the object, path and reason of what cannot be translated (the old one stays)
    GET /endpoints   {"endpoints": [...]}
    PUT /endpoints   the endpoint registry, re-applied to Envoy; 400 when invalid
    GET /routes      {"virtual_hosts": [...]}: the routes in effect, read back from Envoy's admin
    GET /envoy       {"pid", "version", "admin"}: the child Envoy

Ready is announced on stdout as `mesh-router ready proxy=HOST:PORT admin=HOST:PORT envoy_pid=N`. SIGTERM and
SIGINT stop Envoy (by its PID) and then this process; so does the death of the process named by the
EXIT_WITH_PARENT_PID environment variable (the local platform's supervisor sets it). A stop that has not ended
`STOP_GRACE_S` after it was asked for ends with Envoy SIGKILLed and exit code 3, so no router outlives its
supervisor whatever holds it up. Without an Envoy binary for the platform it exits at once with code 2 and says
so. Upstream connections idle longer than `UPSTREAM_IDLE_TIMEOUT_S` are closed by Envoy before the services' own
keep-alive (uvicorn: 5 s) would close them, so Envoy never reuses a connection a service is closing (a 503).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import http
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from controller.adapters.istio.validate import InvalidRouteConfig
from controller.adapters.signals import stop_on_signals
from localmesh.endpoints import Endpoint, InvalidEndpoints, load_endpoints, load_objects, parse_endpoints
from localmesh.envoy.metrics import istio_exposition, istio_samples, stats_path
from localmesh.envoy.process import Envoy, EnvoyError, EnvoyUnavailable, envoy_binary, envoy_version
from localmesh.envoy.translate import Options

__all__ = ["UPSTREAM_IDLE_TIMEOUT_S", "EnvoyRouter", "main"]

AdminResponse = tuple[int, str, bytes]  # status, content type, body

UPSTREAM_IDLE_TIMEOUT_S = 4.0  # below uvicorn's 5 s keep-alive timeout
# How long an orderly stop may take (Envoy gets 5 s after SIGTERM, then SIGKILL) before the router kills Envoy
# and exits anyway.
STOP_GRACE_S = 15.0
_VERSIONS_KEPT = 16  # route versions whose objects are remembered for GET /config
_PATHS = ("/healthz", "/metrics", "/config", "/endpoints", "/routes", "/envoy")


class EnvoyRouter:
    """The objects and endpoints in force, applied to one Envoy; `put_config` / `put_endpoints` from any thread."""

    def __init__(self, envoy: Envoy, namespace: str = "default") -> None:
        self.envoy, self.namespace = envoy, namespace
        self._objects: list[dict[str, Any]] = []
        self._endpoints: tuple[Endpoint, ...] = ()
        self._written: dict[str, list[dict[str, Any]]] = {}  # route version -> the objects it was translated from
        self._lock = threading.Lock()

    def apply(self, objects: list[dict[str, Any]] | None = None, entries: list[Any] | None = None) -> None:
        """Put objects and/or endpoints in force; raises InvalidRouteConfig (untranslatable), InvalidEndpoints or
        EnvoyError, keeping the old state on the first two."""
        with self._lock:
            new_objects = json.loads(json.dumps(objects)) if objects is not None else self._objects
            endpoints = parse_endpoints(entries, self.namespace) if entries is not None else self._endpoints
            before = self.envoy.routes_written
            try:
                self.envoy.apply(new_objects, endpoints)
            finally:  # new routes written, even if Envoy had not taken them in time: it may take them later
                if self.envoy.routes_written is not None and self.envoy.routes_written != before:
                    self._written[self.envoy.routes_written] = new_objects
                    while len(self._written) > _VERSIONS_KEPT:
                        del self._written[next(iter(self._written))]
            self._objects, self._endpoints = new_objects, endpoints

    def objects_in_effect(self) -> tuple[str | None, list[dict[str, Any]] | None]:
        """The version of the routes Envoy runs, read from Envoy's admin, and the objects they were translated from
        (None: a version this router did not write)."""
        version = self.envoy.routes_version()
        return version, self._written.get(version) if version is not None else None

    # --- admin API
    def handle(self, method: str, path: str, body: bytes) -> AdminResponse:
        if path not in _PATHS:
            return 404, "text/plain", b"not found\n"
        if method == "PUT" and path in ("/config", "/endpoints"):
            return self._put(path, body)
        if method != "GET":
            return 405, "text/plain", b"method not allowed\n"
        if path == "/healthz":
            ok = self.envoy.running
            return (200, "text/plain", b"ok\n") if ok else (503, "text/plain", b"envoy is not running\n")
        if path == "/metrics":
            text = istio_exposition(istio_samples(self._envoy_get(stats_path())))
            return 200, "text/plain; version=0.0.4; charset=utf-8", text.encode()
        if path == "/config":
            version, objects = self.objects_in_effect()
            if objects is None:
                return _json(503, {"error": f"Envoy runs route configuration version {version}, which this router "
                                            "did not write"})
            return _json(200, {"objects": objects, "routesVersion": version})
        if path == "/endpoints":
            return _json(200, {"endpoints": [e.for_storage() for e in self._endpoints]})
        if path == "/routes":
            return _json(200, {"virtual_hosts": [dataclasses.asdict(v) for v in self.envoy.routes_in_effect()]})
        return _json(200, {"pid": self.envoy.pid, "version": _version(), "admin": self.envoy.admin_url})

    def _envoy_get(self, path: str) -> str:
        status, text = self.envoy.admin_get(path)
        if status != 200:
            raise EnvoyError(f"Envoy's admin answered {status} to {path}: {text[:200]}")
        return text

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
                self.apply(objects=objects)
                return _json(200, {"objects": len(self._objects)})
            entries = payload.get("endpoints") if isinstance(payload, dict) else payload
            if not isinstance(entries, list):
                raise InvalidEndpoints("endpoints: expected a list")
            self.apply(entries=entries)
            return _json(200, {"endpoints": len(self._endpoints)})
        except (InvalidRouteConfig, InvalidEndpoints) as e:
            return _json(400, {"error": str(e)})
        except EnvoyError as e:
            return _json(502, {"error": f"Envoy did not take it: {e}"})


@functools.cache
def _version() -> str:
    return envoy_version()


def _json(status: int, payload: Any) -> AdminResponse:
    return status, "application/json", json.dumps(payload).encode()


def _handler_class(router: EnvoyRouter) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                status, content_type, payload = router.handle(self.command, self.path.split("?", 1)[0], body)
            except Exception as e:  # an admin bug must not kill the router; say what broke
                status, content_type, payload = 500, "text/plain", f"{type(e).__name__}: {e}\n".encode()
            self.send_response(status, http.HTTPStatus(status).phrase)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


# ---------------------------------------------------------------------------------------------------
# Process entry.


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m localmesh.envoy.server", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address both servers bind (default loopback)")
    p.add_argument("--port", type=int, required=True, help="data port, Envoy's listener (0: pick a free one)")
    p.add_argument("--admin-port", type=int, required=True, help="admin API port (0: pick a free one)")
    p.add_argument("--config", type=Path, help="Istio objects to start with (JSON or YAML)")
    p.add_argument("--endpoints", type=Path, help="endpoint registry to start with (JSON or YAML)")
    p.add_argument("--namespace", default="default", help="namespace of endpoints that name none")
    p.add_argument("--work-dir", type=Path, help="Envoy's files (default: a temporary directory)")
    p.add_argument("--concurrency", type=int, default=2,
                   help="Envoy's worker threads (default 2, as in Istio's sidecars)")
    p.add_argument("--envoy-admin-port", type=int, default=0,
                   help="Envoy's own admin port, where Prometheus scrapes its statistics (0: pick a free one)")
    return p.parse_args(argv)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _watch_parent(parent_pid: int, stop: threading.Event, poll_s: float = 0.5) -> None:
    """Set `stop` once `parent_pid` is no longer this process' parent (it died)."""

    def watch() -> None:
        while os.getppid() == parent_pid and not stop.is_set():
            time.sleep(poll_s)
        stop.set()

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _exit_by_deadline(stop: threading.Event, finished: threading.Event, envoy: Envoy, grace_s: float) -> None:
    """Once `stop` is set, give the orderly shutdown `grace_s` seconds; past that, SIGKILL Envoy and exit.

    Whatever holds the main thread up, a router told to stop (or whose supervisor died) is gone within the grace:
    nothing is left serving routes no controller owns."""

    def watch() -> None:
        stop.wait()
        if finished.wait(grace_s):
            return
        print(f"mesh-router: not stopped {grace_s:g} s after being told to; killing Envoy and exiting",
              file=sys.stderr, flush=True)
        if (pid := envoy.pid) is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        os._exit(3)

    threading.Thread(target=watch, name="exit-by-deadline", daemon=True).start()


def _serve(args: argparse.Namespace, work_dir: Path, stop: threading.Event) -> None:
    port = args.port or _free_port(args.host)
    envoy = Envoy(work_dir, Options(port=port, address=args.host, upstream_idle_timeout_s=UPSTREAM_IDLE_TIMEOUT_S),
                  admin_port=args.envoy_admin_port, concurrency=args.concurrency)
    router = EnvoyRouter(envoy, args.namespace)
    finished = threading.Event()
    _exit_by_deadline(stop, finished, envoy, STOP_GRACE_S)
    admin: ThreadingHTTPServer | None = None
    try:
        envoy.start()
        router.apply(load_objects(args.config) if args.config else [],
                     load_endpoints(args.endpoints) if args.endpoints else [])
        admin = ThreadingHTTPServer((args.host, args.admin_port), _handler_class(router))
        admin.daemon_threads = True
        threading.Thread(target=admin.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        admin_host, admin_port = admin.server_address[:2]
        print(f"mesh-router ready proxy={args.host}:{port} admin={admin_host!s}:{admin_port} envoy_pid={envoy.pid}",
              flush=True)
        while not stop.wait(0.5):
            if not envoy.running:
                print("mesh-router: Envoy exited:\n" + envoy.log_tail(), file=sys.stderr, flush=True)
                break
    finally:
        if admin is not None:
            admin.shutdown()
            admin.server_close()
        envoy.stop()
        finished.set()
    print("mesh-router stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        envoy_binary()
    except EnvoyUnavailable as e:
        print(f"mesh-router: {e}", file=sys.stderr, flush=True)
        return 2
    with stop_on_signals() as stop:
        if parent := os.environ.get("EXIT_WITH_PARENT_PID", "").strip():
            _watch_parent(int(parent), stop)
        try:
            if args.work_dir is not None:
                args.work_dir.mkdir(parents=True, exist_ok=True)
                _serve(args, args.work_dir, stop)
            else:
                with tempfile.TemporaryDirectory(prefix="localmesh-envoy-") as tmp:
                    _serve(args, Path(tmp), stop)
        except (InvalidRouteConfig, InvalidEndpoints, EnvoyError, OSError) as e:
            print(f"mesh-router: {e}", file=sys.stderr, flush=True)
            return 2
        return 0 if stop.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
