"""Helpers of the Envoy tests: Istio objects of one service `shop` (v1 stable, v2 canary), tiny HTTP backends that
answer with their version and the request they saw, a keep-alive client, and a free loopback port."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from localmesh.endpoints import Endpoint

Obj = dict[str, Any]
SERVICE, NAMESPACE, LANE = "shop", "default", "x-canary-lane"
API = "networking.istio.io/v1"


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster(port: int, subset: str, service: str = SERVICE) -> str:
    return f"outbound|{port}|{subset}|{service}.{NAMESPACE}.svc.cluster.local"


def stat(port: int, version: str, service: str = SERVICE, instance: int = 1) -> str:
    """The stat name of a cluster of `version` (the `instance`-th of that version in one Envoy process)."""
    part = version if instance == 1 else f"{version}~{instance}"
    return f"outbound|{port}|{part}|{service}.{NAMESPACE}.svc.cluster.local"


def destination_rule(subsets: dict[str, str] | None = None, service: str = SERVICE) -> Obj:
    """The service's DestinationRule: subset name -> version label (default stable=v1, canary=v2)."""
    subsets = {"stable": "v1", "canary": "v2"} if subsets is None else subsets
    return {"apiVersion": API, "kind": "DestinationRule", "metadata": {"name": service, "namespace": NAMESPACE},
            "spec": {"host": service, "subsets": [{"name": n, "labels": {"version": v}} for n, v in subsets.items()]}}


def virtual_service(http: list[Obj], hosts: tuple[str, ...] = (SERVICE,), name: str = SERVICE) -> Obj:
    return {"apiVersion": API, "kind": "VirtualService", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"hosts": list(hosts), "http": http}}


def to(subset: str | None, weight: int | None = None, lane: str | None = None, service: str = SERVICE,
       **extra: Any) -> Obj:
    """One route destination of `service` (subset None: the whole service), setting the lane header if given."""
    dest: Obj = {"destination": {"host": service, **({"subset": subset} if subset else {})}, **extra}
    if weight is not None:
        dest["weight"] = weight
    if lane is not None:
        dest["headers"] = {"request": {"set": {LANE: lane}}}
    return dest


def split(canary_weight: int, service: str = SERVICE) -> Obj:
    """The release split: stable/canary by weight, each destination setting its lane."""
    return {"name": "release-split", "route": [to("stable", 100 - canary_weight, "stable", service),
                                               to("canary", canary_weight, "canary", service)]}


def lane_route(service: str = SERVICE) -> Obj:
    return {"name": "canary-lane", "match": [{"headers": {LANE: {"exact": "canary"}}}],
            "route": [to("canary", service=service)]}


def release(canary_weight: int, service: str = SERVICE) -> list[Obj]:
    """A release of `service` in progress: the canary lane pinned to v2, every other request split by weight."""
    return [destination_rule(service=service),
            virtual_service([lane_route(service), split(canary_weight, service)], (service,), service)]


def all_stable() -> list[Obj]:
    """After a rollback: no canary subset, every request to v1."""
    return [destination_rule({"stable": "v1"}),
            virtual_service([{"name": "stable-lane", "route": [to("stable", lane="stable")]}])]


class Backend:
    """A version of `shop` on a thread: answers JSON {version, path, headers} (`/status/NNN` with that status,
    `?sleep_ms=N` after sleeping) and counts the requests it served."""

    def __init__(self, version: str) -> None:
        self.version, self.requests = version, 0
        self.seen: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def endpoint(self, service: str = SERVICE) -> Endpoint:
        return Endpoint(service, {"version": self.version}, "127.0.0.1", self.port, NAMESPACE)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def _record(self, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests += 1
            self.seen.append((path, headers))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stalls

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                backend._record(self.path, headers)
                sleep_ms = parse_qs(url.query).get("sleep_ms")
                if sleep_ms:
                    time.sleep(int(sleep_ms[0]) / 1000)
                status = int(url.path.rsplit("/", 1)[1]) if url.path.startswith("/status/") else 200
                body = json.dumps({"version": backend.version, "path": self.path, "headers": headers}).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.send_header("x-backend-drop", "yes")
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # Envoy gave up on it (a route timeout)
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


class Client:
    """One keep-alive connection to the mesh; `get` returns (status, JSON body or None, response headers)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def get(self, path: str = "/", host: str = SERVICE, headers: dict[str, str] | None = None,
            ) -> tuple[int, Obj | None, dict[str, str]]:
        self.conn.request("GET", path, headers={"host": host, **(headers or {})})
        response = self.conn.getresponse()
        raw = response.read()
        answer = {k.lower(): v for k, v in response.getheaders()}
        body = json.loads(raw) if answer.get("content-type") == "application/json" else None
        return response.status, body, answer

    def close(self) -> None:
        self.conn.close()
