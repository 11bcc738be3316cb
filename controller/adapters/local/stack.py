"""The search stack on one machine: the mesh router plus one process per (service, version).

Every service reaches the others through the router (as a sidecar would make it), so release lanes are
enforced on every hop. The router is real Envoy, configured from the rendered Istio objects by
`python -m localmesh.envoy.server` (started as a process by module name; its admin API takes the objects and
endpoints). Envoy's own admin port is fixed for the stack's life, so a Prometheus scraping Envoy's statistics
keeps its target across a router restart.
Ports are free ones chosen at start, never fixed. Everything started here is
stopped by `close()` (and, should this process be killed outright, by the children's parent-death
signal), so no process outlives the stack.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from controller.adapters.local.mesh_admin import RouterAdmin
from controller.adapters.local.processes import (
    Proc,
    ProcessError,
    ProcessGroup,
    bound_socket,
    free_port,
    start_search_service,
)
from controller.core.plan import DEFAULT_LANE_HEADER, RoutingPlan, ServiceVersions, ShadowRoutes
from controller.ports import Readiness

log = logging.getLogger(__name__)

SEARCH_SERVICES = ("master-search", "ml-infer", "ml-search", "keyword", "text-search")
ENTRY = "master-search"

# Per version, per service: fault knobs of the searchstack process (see searchstack/README.md).
Faults = Mapping[str, Mapping[str, Mapping[str, float]]]


# A shadow phase's comparator (docs/shadow.md), started when a release asks for one.
COMPARATOR_MODULE = "controller.cli.comparator"
ROUTER_START_ATTEMPTS = 3


# The mesh router, by the module the stack starts (`python -m <module>`): Envoy behind the router's admin API.
ROUTER_MODULE = "localmesh.envoy.server"


# Like a Kubernetes readiness probe: a workload that was ready turns not-ready only after this many
# failed health checks in a row, so one slow answer under load does not look like a dead canary.
FAILURE_THRESHOLD = 3


@dataclass
class Workload:
    service: str
    version: str
    port: int
    proc: Proc
    was_ready: bool = False
    failures: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class LocalStack:
    workdir: Path
    lane_header: str = DEFAULT_LANE_HEADER
    work_ms: float = 4.0
    faults: Faults = field(default_factory=dict)
    namespace: str = "local"

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.group = ProcessGroup(log_dir=self.workdir / "logs")
        self.workloads: dict[tuple[str, str], Workload] = {}
        # CPU seconds of the service processes stopped so far, by `service@version`.
        self._ended_cpu: dict[str, float] = {}
        self.router_port = 0
        self.admin_port = 0
        self.envoy_admin_port = 0
        self.admin: RouterAdmin | None = None
        self._health = httpx.Client(timeout=2.0)
        # The shadow comparator, when started: its Service name and port (an endpoint like a service's).
        self.comparator: tuple[str, int] | None = None

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> LocalStack:
        # Envoy binds its own ports, so they can only be looked up free; one taken in between (by an outgoing
        # connection's local port, say) fails the start with "address already in use": try other ports.
        for attempt in range(1, ROUTER_START_ATTEMPTS + 1):
            self.router_port, self.admin_port, self.envoy_admin_port = free_port(), free_port(), free_port()
            try:
                self._start_router()
                break
            except ProcessError:
                port_taken = "address already in use" in self.router_proc.log_tail().lower()
                if attempt == ROUTER_START_ATTEMPTS or not port_taken:
                    raise
                log.warning("mesh router: a port was taken before it bound it; starting it on other ports")
        self.admin = RouterAdmin(self.admin_url)
        return self

    def _start_router(self) -> None:
        argv = [sys.executable, "-m", ROUTER_MODULE, "--port", str(self.router_port),
                "--admin-port", str(self.admin_port), "--envoy-admin-port", str(self.envoy_admin_port),
                "--namespace", self.namespace, "--work-dir", str(self.workdir / "envoy")]
        self.router_proc = self.group.start("mesh-router", argv, env={}, health_url=f"{self.admin_url}/healthz")
        self._record_pid(self.router_proc)
        self.group.wait_healthy(self.router_proc, timeout=20)

    def _record_pid(self, proc: Proc) -> None:
        # An operator's (and the tests') record of every process this stack started.
        with (self.workdir / "logs" / "pids.txt").open("a") as f:
            f.write(f"{proc.name} {proc.pid}\n")

    def restart_router(self) -> None:
        """Stop the mesh router and start it again on the same ports, with the same routes and endpoints.

        Its counters start again from zero, as a restarted sidecar's do.
        """
        assert self.admin is not None, "start() the stack first"
        objects = self.admin.get_config()
        self.group.stop(self.router_proc)
        self._start_router()
        self._publish_endpoints()
        self.admin.put_config(objects)

    def close(self) -> None:
        self._health.close()
        if self.admin is not None:
            self.admin.close()
        self.group.stop_all()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def envoy_admin_target(self) -> str:
        """Envoy's admin interface as a scrape target (host:port): its statistics, the same across restarts."""
        return f"127.0.0.1:{self.envoy_admin_port}"

    # --- workloads -------------------------------------------------------------------------------------
    def ensure_service(self, service: str, version: str) -> Workload:
        key = (service, version)
        existing = self.workloads.get(key)
        if existing is not None and existing.proc.popen.poll() is None:
            return existing
        listener = bound_socket()  # held from here: the service serves on it, nothing else can take the port
        port = listener.getsockname()[1]
        faults = dict(self.faults.get(version, {}).get(service, {}))
        proc = start_search_service(self.group, service, version, listener, self.router_url, faults=faults,
                                    work_ms=self.work_ms, lane_header=self.lane_header)
        self._record_pid(proc)
        workload = Workload(service, version, port, proc)
        self.workloads[key] = workload
        self._publish_endpoints()
        log.info("started %s@%s on :%d (pid %d)", service, version, port, proc.popen.pid)
        return workload

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds each service process has used so far, by `service@version`: the running ones and those
        stopped (a version retired by a promotion or a rollback), added up where a version ran more than once."""
        used = dict(self._ended_cpu)
        for (service, version), w in self.workloads.items():
            if (seconds := w.proc.cpu_seconds()) is not None:
                used[f"{service}@{version}"] = used.get(f"{service}@{version}", 0.0) + seconds
        return {name: round(seconds, 2) for name, seconds in sorted(used.items())}

    def readiness(self, service: str, version: str) -> Readiness:
        workload = self.workloads.get((service, version))
        if workload is None:
            return Readiness(False, "not deployed")
        code = workload.proc.popen.poll()
        if code is not None:
            return Readiness(False, f"exited with code {code}: {workload.proc.last_error()}", failed=True)
        try:
            ok = self._health.get(f"http://{workload.address}/healthz").status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            workload.was_ready, workload.failures = True, 0
            return Readiness(True)
        if not workload.was_ready:
            return Readiness(False, "starting")
        workload.failures += 1
        if workload.failures < FAILURE_THRESHOLD:
            return Readiness(True, f"health check failed {workload.failures}/{FAILURE_THRESHOLD}")
        return Readiness(False, f"{workload.failures} health checks failed in a row")

    def stop_service(self, service: str, version: str) -> None:
        workload = self.workloads.pop((service, version), None)
        if workload is None:
            return
        self._publish_endpoints()  # out of the endpoint list first, so no new request reaches it
        self.group.stop(workload.proc)
        if (seconds := workload.proc.cpu_seconds()) is not None:
            name = f"{service}@{version}"
            self._ended_cpu[name] = self._ended_cpu.get(name, 0.0) + seconds
        log.info("stopped %s@%s", service, version)

    def start_version(self, version: str, services: tuple[str, ...] = SEARCH_SERVICES,
                      timeout: float = 60.0) -> None:
        """Start a whole version and wait until every service of it is ready."""
        for service in services:
            self.ensure_service(service, version)
        deadline = time.monotonic() + timeout
        pending = set(services)
        while pending:
            for service in sorted(pending):
                r = self.readiness(service, version)
                if r.failed:
                    raise RuntimeError(f"{service}@{version} failed to start: {r.reason}")
                if r.ready:
                    pending.discard(service)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"{', '.join(sorted(pending))} of {version} not ready in {timeout:.0f}s")
            if pending:
                time.sleep(0.1)

    def start_comparator(self, routes: ShadowRoutes, entry: str = ENTRY) -> str:
        """Start the shadow comparator as the endpoint of `routes.comparator`, asking the stack through the mesh
        router; returns its base URL (where the controller reads its pairs)."""
        listener = bound_socket()
        port = listener.getsockname()[1]
        argv = [sys.executable, "-m", COMPARATOR_MODULE, "--entry", self.router_url, "--entry-host", entry,
                "--header", routes.header, "--fd", str(listener.fileno())]
        url = f"http://127.0.0.1:{port}"
        proc = self.group.start("shadow-comparator", argv, env={}, health_url=f"{url}/healthz", listener=listener)
        self._record_pid(proc)
        self.group.wait_healthy(proc, timeout=20)
        self.comparator = (routes.comparator, port)
        self._publish_endpoints()
        return url

    def _publish_endpoints(self) -> None:
        assert self.admin is not None, "start() the stack first"
        self.admin.put_endpoints(self.endpoints())

    def endpoints(self) -> list[dict[str, Any]]:
        listed = [{"service": w.service, "labels": {"version": w.version, "app": w.service},
                   "address": w.address} for w in self.workloads.values()]
        if self.comparator is not None:
            name, port = self.comparator
            listed.append({"service": name, "labels": {"app": name}, "address": f"127.0.0.1:{port}"})
        return listed

    def baseline_plan(self, stable: str, canary: str | None = None, weight: int = 0,
                      versions: Mapping[str, str] | None = None) -> RoutingPlan:
        """Routes for the stack outside any release: everything on `stable` (or a fixed split); a service in
        `versions` on its own stable version."""
        return RoutingPlan(
            namespace=self.namespace, entry=ENTRY,
            services=tuple(ServiceVersions(s, (versions or {}).get(s, stable), canary) for s in SEARCH_SERVICES),
            canary_weight=weight if canary else 0, lane_header=self.lane_header,
        )
