"""Crash anywhere on the local platform: SIGKILL the local controller at random points, restart it, check.

Each release is driven by the real local controller as its own process
(`python -m controller.cli.main run -f release.yaml --local --workdir W`), which owns the search stack, the mesh
router and the load. This program kills it with SIGKILL at random points (during start-up, at a random
time while it runs, right after it persisted a new status: between persist and act, or soon after the
release entered its promotion or rollback), waits for every
process of that run to go away, and starts it again on the same work directory, until the release's kill
budget is spent; the last run must finish the release by itself. An observer, outside the controller,
checks at every observed state (about every 0.1 s):

- the router's routes: owned by the release; every VirtualService route's weights sum to 100; no weight
  to a version whose
  processes are not all registered and answering their health check; once the status says the rollback's
  0% canary was read back, the entry sends nothing into the canary lane;
- probe searches through the router: each answered 200, unless the invariants say why not (the persisted
  status is final, so the run is tearing the platform down; or the scenario's injected error, a 500 naming
  the faulty service and served by its canary); any other failure, 503 or no answer, is a violation; no
  response served by the canary after that point, and none mixing versions along its path;
- the persisted status: never moves backwards (phase order, step, history, start/decision times); no
  `Promoting`/`Succeeded` without a `pass` (or an operator's) verdict behind the promotion;
- the processes: at most one live process per service version (the stack's pids file and the process
  table), none of a killed run left behind, none at all after the end; no version started twice by one run.

At the end of each release: the expected final phase (healthy -> Succeeded, faulty -> RolledBack), and the
platform's end state from the summary (`final_routes`, `final_workloads`).

    python -m bench.local_crash [--releases 8] [--kills 5] [--seed 1] [--out bench/results/local_crash.json]

Prints one line per kill and a table; saves JSON (and the table as .txt beside it).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from controller.adapters.istio.render import UnreadablePlan, read_plan

SERVICES = ("master-search", "ml-infer", "ml-search", "keyword", "text-search")
CHANGED = ("ml-search", "keyword")
STABLE, CANARY = "v1", "v2"
# A probe search is answered in milliseconds; one that takes longer than this has failed. Generous: on a machine
# whose two cores a test suite keeps busy a search through five services has stalled for over 2 s.
PROBE_TIMEOUT_S = 10.0
QUERY = {"text": "graph neural networks for citation ranking", "n_results": 5, "random_seed": 7}

# name -> (--fault arguments, expected final phase)
SCENARIOS: dict[str, tuple[tuple[str, ...], str]] = {
    "healthy": ((), "Succeeded"),
    "errors": (("ml-search:error_rate=0.5",), "RolledBack"),
    "slow": (("keyword:latency_ms=40",), "RolledBack"),
}
FORWARD = {"Pending": 0, "Initializing": 1, "Shadowing": 1.5, "Progressing": 2, "Paused": 2, "Promoting": 3,
           "Succeeded": 4}
BACKWARD = {"RollingBack": 3, "RolledBack": 4, "Failed": 4, "Aborted": 4}
FINAL = ("Succeeded", "RolledBack", "Failed", "Aborted")
# Where a kill lands: at a random time from the start (often before the first tick), at a random time once
# the run is up, right after a new status was persisted (between persist and act), or soon after the
# release entered its promotion or rollback (the two-stage route changes and the clean-up).
MODES = ("startup", "running", "transition", "late")
LATE = ("Promoting", "RollingBack", "Succeeded", "RolledBack")


def release_spec(name: str) -> dict[str, Any]:
    """A short release: two steps, 2 s windows. `hold` on inconclusive, so nothing promotes without a pass."""
    return {
        "apiVersion": "stackcanary.dev/v1alpha1",
        "kind": "StackRelease",
        "metadata": {"name": name, "namespace": "local"},
        "spec": {
            "stack": {"entry": "master-search", "services": list(SERVICES)},
            "stable": {"version": STABLE},
            "canary": {"version": CANARY, "services": list(CHANGED)},
            # 40 canary requests a step: several windows each, so that a regression's evidence has crossed
            # before "no alarm" promotes. With 10 a step passed on one or two windows, and on a loaded machine
            # (few requests a window, each window's evidence capped) the errors release was promoted.
            "strategy": {"canary": {"steps": [{"weight": 25}, {"weight": 50}], "interval": "2s", "settle": "1s",
                                    "minCanaryRequests": 40, "stepDeadline": "30s"}},
            # The campaign tests crash safety, not statistics: a release of a minute at 30 req/s on shared
            # cores promotes on "no alarm" (safety margins off).
            "analysis": {"judge": "sequential", "alpha": 0.05, "minCanaryRequests": 40,
                         "nonInferiorityMargin": None, "absoluteNonInferiorityMargin": None,
                         "latencyNonInferiorityMargin": None},
            "policies": {"onInconclusive": "hold", "rollbackAfterErrors": 3},
            "progressDeadline": "30s",
            # The default: on a machine whose cores are busy a request can stall for seconds inside the stack,
            # and one still in flight when the subsets change after a shorter drain mixes versions (CI saw 4).
            "drainTime": "5s",
            "scaleDownDelay": "1s",  # the default 30 s would hold each promoted release that long
        },
    }


# ---------------------------------------------------------------------------------------------------------
# The process table


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/status").read_text()
    except (ProcessLookupError, FileNotFoundError, PermissionError):
        return False
    return "State:\tZ" not in state


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


@dataclass(frozen=True)
class StackProcess:
    pid: int
    kind: str  # "service", "router" or "envoy" (the router's child)
    name: str  # workload (service-version), "mesh-router" or "envoy"
    router: str  # the router port the process belongs to


def stack_processes(router_ports: set[str]) -> list[StackProcess]:
    """Live search-stack and router processes of the given router ports, found in /proc (not in our records)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        cmd = _read(f"/proc/{entry}/cmdline").split(b"\0")
        if b"searchstack" in cmd:
            env = dict(line.partition(b"=")[::2] for line in _read(f"/proc/{entry}/environ").split(b"\0") if line)
            port = env.get(b"ML_INFER_URL", b"").rpartition(b":")[2].decode()
            if port in router_ports and alive(int(entry)):
                found.append(StackProcess(int(entry), "service", env.get(b"SEARCHSTACK_WORKLOAD", b"?").decode(), port))
        elif b"localmesh.envoy.server" in cmd and b"--port" in cmd:
            port = cmd[cmd.index(b"--port") + 1].decode()
            if port in router_ports and alive(int(entry)):
                found.append(StackProcess(int(entry), "router", "mesh-router", port))
        elif cmd[0].endswith(b"/envoy") and b"-c" in cmd:
            port = _envoy_port(Path(cmd[cmd.index(b"-c") + 1].decode()).parent)
            if port in router_ports and alive(int(entry)):
                found.append(StackProcess(int(entry), "envoy", "envoy", port))
    return found


def _envoy_port(work_dir: Path) -> str:
    """The data port of the Envoy whose files are in `work_dir` (its listener, `lds.json`), or "" when unreadable."""
    try:
        listener = json.loads((work_dir / "lds.json").read_text())["resources"][0]
        return str(listener["address"]["socket_address"]["port_value"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return ""


def recorded_pids(workdir: Path) -> list[tuple[str, int]]:
    path = workdir / "stack" / "logs" / "pids.txt"
    if not path.exists():
        return []
    return [(name, int(pid)) for name, pid in (line.split() for line in path.read_text().splitlines() if line)]


# ---------------------------------------------------------------------------------------------------------
# The observer


@dataclass
class Tally:
    observations: int = 0
    statuses: int = 0
    route_checks: int = 0
    health_checks: int = 0
    probes: int = 0
    probe_failures: int = 0  # probes not answered 200 while the platform should serve: each also a violation
    probes_after_end: int = 0  # probes not answered once the release had ended: the run tears the platform down
    probes_injected_errors: int = 0  # 500s of the scenario's injected errors, served by the faulty canary
    probes_after_canary_off: int = 0
    process_scans: int = 0
    most_processes_in_a_scan: int = 0  # proof that the scan sees the stack (router + services)


@dataclass
class Observer:
    """Checks the invariants on every state it sees; remembers what it has seen across restarts."""

    workdir: Path
    release: str
    # Services whose canary answers injected errors (the scenario's `--fault SERVICE:error_rate=...`).
    erring: frozenset[str] = frozenset()
    violations: list[str] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    last_status: dict[str, Any] | None = None
    canary_off: bool = False
    phases_seen: list[str] = field(default_factory=list)
    last_health_error: str = ""

    def __post_init__(self) -> None:
        self.http = httpx.Client(timeout=2.0, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def violation(self, text: str) -> None:
        if len(self.violations) < 200:
            self.violations.append(text)

    # --- the persisted status ----------------------------------------------------------------------
    def read_status(self) -> dict[str, Any] | None:
        path = self.workdir / "state" / "status.json"
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            status: dict[str, Any] = json.loads(path.read_text())
            return status
        return None

    def check_status(self) -> dict[str, Any] | None:
        cur = self.read_status()
        if cur is None:
            if self.last_status is not None:
                self.violation("status.json disappeared")
            return self.last_status
        self.tally.statuses += 1
        prev = self.last_status
        phase = cur["phase"]
        if not self.phases_seen or self.phases_seen[-1] != phase:
            self.phases_seen.append(phase)
        if prev is not None:
            self.violations.extend(status_regressions(prev, cur))
        if phase in ("Promoting", "Succeeded"):
            promoted = [h for h in cur.get("history", []) if h.get("action") == "promote"]
            if not promoted or promoted[-1]["verdict"] not in ("pass", "operator"):
                self.violation(f"{phase} without a pass: last promote record {promoted[-1:]}")
        if cur.get("canaryOffAt") is not None:
            self.canary_off = True
        self.last_status = cur
        return cur

    # --- the router ----------------------------------------------------------------------------------
    def check_routes(self, admin: str, status: Mapping[str, Any] | None, controller_alive: Any) -> None:
        try:
            objects = self.http.get(f"{admin}/config").json()["objects"]
            endpoints = self.http.get(f"{admin}/endpoints").json()["endpoints"]
        except (httpx.HTTPError, ValueError, KeyError):
            return  # starting or stopping: nothing to check
        if not objects:
            return
        self.tally.route_checks += 1
        for problem in weight_problems(objects):
            self.violation(problem)
        try:
            plan = read_plan(objects)
        except UnreadablePlan as exc:
            self.violation(f"routes unreadable: {exc}")
            return
        if plan is not None and plan.owner != self.release:
            self.violation(f"routes owned by {plan.owner!r}, not by the release {self.release!r}")
        if status is not None and status.get("canaryOffAt") is not None and plan is not None \
                and plan.canary_weight > 0:
            self.violation(f"canary weight {plan.canary_weight}% after the rollback's 0% was read back")
        for service, version in weighted_versions(objects):
            addresses = [e["address"] for e in endpoints
                         if e["service"] == service and e.get("labels", {}).get("version") == version]
            ready = bool(addresses) and all(self._healthy(a) for a in addresses)
            if ready:
                continue
            # A route that moved on meanwhile, or a run being torn down (killed or finished), is no finding.
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                again = self.http.get(f"{admin}/config").json()["objects"]
                if (service, version) in weighted_versions(again) and controller_alive() \
                        and (self.last_status or {}).get("phase") not in FINAL:
                    self.violation(f"traffic weight to {service}@{version}, which is not ready "
                                   f"(endpoints {addresses}; {self.last_health_error}; phase "
                                   f"{(self.last_status or {}).get('phase')})")

    def _healthy(self, address: str) -> bool:
        """Whether the workload answers its health check. One that only answered slowly (a timeout after 2 s, as
        the platform's readiness check waits) is asked again with PROBE_TIMEOUT_S: a process that is up but whose
        event loop a busy machine stalled (the entry, serving every search, once did for over 2 s under a full
        suite) is no route to a workload that is not ready."""
        self.tally.health_checks += 1
        try:
            try:
                code = self.http.get(f"http://{address}/healthz").status_code
            except httpx.TimeoutException:
                code = self.http.get(f"http://{address}/healthz", timeout=PROBE_TIMEOUT_S).status_code
        except httpx.HTTPError as exc:
            self.last_health_error = f"{address}: {exc!r}"
            return False
        self.last_health_error = f"{address}: HTTP {code}"
        return code == 200

    def probe(self, router: str, n: int = 2) -> None:
        """Searches through the router while the run serves (its load is on): each must be answered 200 by
        one version. A probe not answered is a violation unless the invariants say why it may be: the
        scenario's injected error, answered by the canary that carries it (a 500 naming that service, with
        the canary's version in `x-served-by`), or a final persisted status, once the run is tearing the
        platform down (it owns it and stops it at the end). A killed run is never probed: the observer kills
        it itself, between two observations."""
        canary_off = self.canary_off  # read before sending: a response to a later request must honour it
        for i in range(n):
            try:
                r = self.http.post(f"{router}/master-service/search", json={**QUERY, "random_seed": i},
                                   headers={"host": "master-search"}, timeout=PROBE_TIMEOUT_S)
            except httpx.HTTPError as exc:
                self._probe_failed(f"{type(exc).__name__}: {exc}")
                continue
            self.tally.probes += 1
            path = dict(part.split("@", 1) for part in r.headers.get("x-served-by", "").split(",") if "@" in part)
            if r.status_code == 500 and self._injected(r, path):
                self.tally.probes_injected_errors += 1
            elif r.status_code != 200:
                self._probe_failed(f"HTTP {r.status_code} {r.text[:120]!r} (served by {path})")
                continue
            # A 200 went through every service; an injected 500 stopped at the failing one.
            versions = {path.get(s) for s in CHANGED if r.status_code == 200 or s in path}
            if len(versions) > 1:
                self.violation(f"a response mixed versions: {path}")
            if canary_off:
                self.tally.probes_after_canary_off += 1
                if CANARY in versions:
                    self.violation(f"canary served a request after the rollback's 0% was read back: {path}")

    def _injected(self, r: httpx.Response, path: Mapping[str, str]) -> bool:
        """A 500 the scenario asked for: the injected error of a service whose canary carries it, which
        the canary version of that service served."""
        try:
            body = r.json()
        except ValueError:
            return False
        service = body.get("service") if isinstance(body, dict) else None
        return service in self.erring and "injected error" in str(body.get("error")) and path.get(service) == CANARY

    def _probe_failed(self, what: str) -> None:
        status = self.check_status()  # read now: the release may have ended since the last observation
        phase = (status or {}).get("phase")
        if phase in FINAL:
            self.tally.probes_after_end += 1
            return
        self.tally.probe_failures += 1
        self.violation(f"a probe search failed while the platform should serve (phase {phase}, step "
                       f"{(status or {}).get('step')}): {what}")

    # --- processes -----------------------------------------------------------------------------------
    def check_processes(self, router_port: str | None) -> None:
        self.tally.process_scans += 1
        by_name = collections.defaultdict(list)
        for name, pid in recorded_pids(self.workdir):
            if alive(pid):
                by_name[name].append(pid)
        for name, pids in by_name.items():
            if len(pids) > 1:
                self.violation(f"{len(pids)} live processes recorded for {name}: {pids}")
        if router_port is not None:
            found = stack_processes({router_port})
            self.tally.most_processes_in_a_scan = max(self.tally.most_processes_in_a_scan, len(found))
            counts = collections.Counter(p.name for p in found)
            for name, n in counts.items():
                if n > 1:
                    self.violation(f"{n} processes of {name} in the process table")


def status_regressions(prev: Mapping[str, Any], cur: Mapping[str, Any]) -> list[str]:
    """Ways in which `cur` moved backwards from `prev` (empty when it did not)."""
    problems = []
    p, c = prev["phase"], cur["phase"]
    if p in BACKWARD and c in FORWARD:
        problems.append(f"phase went back from {p} to {c}")
    rank_p, rank_c = FORWARD.get(p, BACKWARD.get(p, 0)), FORWARD.get(c, BACKWARD.get(c, 0))
    if rank_c < rank_p:
        problems.append(f"phase went back from {p} to {c}")
    if p in FINAL and c != p:
        problems.append(f"final phase {p} changed to {c}")
    if c in ("Progressing", "Paused") and p in ("Progressing", "Paused") and cur["step"] < prev["step"]:
        problems.append(f"step went back from {prev['step']} to {cur['step']}")
    if cur.get("observedGeneration", 0) < prev.get("observedGeneration", 0):
        problems.append("observedGeneration went back")
    for key in ("startedAt", "firstCanaryTrafficAt", "decidedAt", "canaryOffAt", "finishedAt"):
        if prev.get(key) is not None and cur.get(key) != prev[key]:
            problems.append(f"{key} changed from {prev[key]} to {cur.get(key)}")
    old, new = prev.get("history", []), cur.get("history", [])
    if [h["at"] for h in new[: len(old)]] != [h["at"] for h in old]:
        problems.append(f"history rewritten ({len(old)} -> {len(new)} records)")
    return problems


def weight_problems(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    problems = []
    for obj in objects:
        if obj.get("kind") != "VirtualService":
            continue
        for i, route in enumerate(obj["spec"].get("http", [])):
            dests = route.get("route", [])
            weights = [d.get("weight", 100 if len(dests) == 1 else 0) for d in dests]
            if sum(weights) != 100 or any(w < 0 for w in weights):
                problems.append(f"VirtualService {obj['metadata']['name']} http[{i}]: weights {weights} "
                                f"do not sum to 100")
    return problems


def weighted_versions(objects: Sequence[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """(service, version) pairs that traffic can reach: a destination with a share of a route that some
    request can take. A lane route (`match` on the lane header) is taken only when a weighted destination
    elsewhere sets that lane, so the canary-lane routes of a 0% split reach nothing."""
    subsets = {(o["spec"]["host"], s["name"]): s["labels"].get("version")
               for o in objects if o.get("kind") == "DestinationRule" for s in o["spec"].get("subsets", [])}
    routes = [route for o in objects if o.get("kind") == "VirtualService" for route in o["spec"].get("http", [])]

    def weighted(route: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        dests = route.get("route", [])
        return [d for d in dests if d.get("weight", 100 if len(dests) == 1 else 0) > 0]

    lanes = {(h.lower(), v) for route in routes for d in weighted(route)
             for h, v in d.get("headers", {}).get("request", {}).get("set", {}).items()}

    def reachable(route: Mapping[str, Any]) -> bool:
        matches = route.get("match")
        if not matches:
            return True
        for m in matches:
            conditions = m.get("headers", {})
            if all((h.lower(), c.get("exact")) in lanes for h, c in conditions.items()):
                return True
        return False

    out = set()
    for route in routes:
        if not reachable(route):
            continue
        for d in weighted(route):
            dest = d["destination"]
            version = subsets.get((dest["host"], dest.get("subset")))
            if version:
                out.add((dest["host"], version))
    return out


# ---------------------------------------------------------------------------------------------------------
# One run of the controller


@dataclass
class Kill:
    release: str
    incarnation: int
    mode: str
    seconds_after_start: float
    phase: str  # the last persisted phase observed before the kill
    step: int
    children_gone_seconds: float | None


class ControllerRun:
    """One `canary run --local` process; its stdout is read in a thread for the router's addresses."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.started = time.monotonic()
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.router: str | None = None
        self.admin: str | None = None
        self.loaded = threading.Event()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            m = re.search(r"router (http://\S+), admin (http://[^)\s]+)", line)
            if m:
                self.router, self.admin = m.group(1), m.group(2)
            if line.startswith("load:"):
                self.loaded.set()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.alive():
            self.kill()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()

    @property
    def router_port(self) -> str | None:
        return None if self.router is None else self.router.rpartition(":")[2]


def wait_gone(workdir: Path, router_ports: set[str], within: float = 20.0) -> tuple[float | None, list[str]]:
    """Seconds until no process of these runs is left (None if some outlived `within`), and the leftovers."""
    started = time.monotonic()
    leftovers: list[str] = []
    while time.monotonic() - started < within:
        leftovers = [f"{n}:{p}" for n, p in recorded_pids(workdir) if alive(p)]
        leftovers += [f"{p.name}:{p.pid}" for p in stack_processes(router_ports)]
        if not leftovers:
            return time.monotonic() - started, []
        time.sleep(0.1)
    return None, sorted(set(leftovers))


@dataclass
class ReleaseResult:
    name: str
    scenario: str
    expected: str
    outcome: str | None
    incarnations: int
    kills: list[Kill]
    violations: list[str]
    phases_seen: list[str]
    tally: dict[str, int]
    wall_seconds: float
    final_workloads: list[str] | None = None
    final_routes: dict[str, Any] | None = None
    # How the last run's load fared and each process's CPU seconds (its summary): on a machine too busy to
    # serve 30 searches a second, latency grows for every version alike, and a probe may time out.
    served: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.violations and self.outcome == self.expected


def expected_end(expected: str) -> tuple[list[str], dict[str, Any]]:
    """The service processes and routes a release leaves when it ends as `expected`."""
    promoted = expected == "Succeeded"
    versions = {s: CANARY if promoted and s in CHANGED else STABLE for s in SERVICES}
    return (sorted(f"{s}@{v}" for s, v in versions.items()),
            {"canary_weight": 0, "services": {s: {"stable": v, "canary": None} for s, v in versions.items()}})


def run_release(name: str, scenario: str, kills: int, workdir: Path, rng: random.Random, *, rps: float = 30.0,
                max_seconds: float = 240.0, echo: bool = True) -> ReleaseResult:
    """Drive one release to its end through `kills` SIGKILLs and restarts, checking all along."""
    faults, expected = SCENARIOS[scenario]
    workdir.mkdir(parents=True, exist_ok=True)
    spec_file = workdir / "release.yaml"
    spec_file.write_text(yaml.safe_dump(release_spec(name)))
    summary = workdir / "summary.json"
    argv = [sys.executable, "-m", "controller.cli.main", "--log-level", "info", "run", "-f", str(spec_file), "--local",
            "--rps", f"{rps:g}", "--metrics", "direct", "--workdir", str(workdir), "--summary", str(summary),
            "--max-seconds", "120", *(a for f in faults for a in ("--fault", f))]
    observer = Observer(workdir, name, erring=frozenset(f.partition(":")[0] for f in faults if ":error_rate=" in f))
    done: list[Kill] = []
    ports: set[str] = set()
    started = time.monotonic()
    outcome, incarnation, result_summary = None, 0, None
    try:
        while time.monotonic() - started < max_seconds:
            incarnation += 1
            summary.unlink(missing_ok=True)
            run = ControllerRun(argv, workdir / f"controller-{incarnation}.log")
            kill = len(done) < kills
            mode = rng.choices(MODES, [0.15, 0.4, 0.3, 0.15])[0] if kill else "none"
            try:
                killed_at = drive(run, observer, mode, rng, ports, deadline=started + max_seconds)
                if killed_at is None:  # the run ended by itself
                    code = run.proc.wait(timeout=30)
                    if code != 0:
                        observer.violation(f"run {incarnation} exited with code {code}")
                    if summary.exists():
                        result_summary = json.loads(summary.read_text())
                    run.close()
                    _check_run_log(observer, workdir / f"controller-{incarnation}.log", incarnation)
                    break
                phase_step = observer.last_status or {"phase": "-", "step": -1}
            finally:
                run.close()
            _check_run_log(observer, workdir / f"controller-{incarnation}.log", incarnation)
            gone, leftovers = wait_gone(workdir, ports)
            if leftovers:
                observer.violation(f"processes outlived killed run {incarnation}: {leftovers}")
            record = Kill(name, incarnation, mode, round(killed_at, 2), phase_step["phase"], phase_step["step"],
                          None if gone is None else round(gone, 2))
            done.append(record)
            if echo:
                print(f"{name:<22} kill {len(done):>2}/{kills} ({mode:<10} at {killed_at:5.1f}s, "
                      f"{record.phase} step {record.step + 1}); children gone in "
                      f"{'-' if gone is None else f'{gone:.1f}s'}", flush=True)
        else:
            observer.violation(f"no end within {max_seconds:.0f}s")
        observer.check_status()
        gone, leftovers = wait_gone(workdir, ports)
        if leftovers:
            observer.violation(f"processes left after the end: {leftovers}")
        if result_summary is not None:
            outcome = result_summary["phase"]
            want_workloads, want_routes = expected_end(expected)
            if result_summary.get("final_workloads") != want_workloads:
                observer.violation(f"end state: processes {result_summary.get('final_workloads')}, "
                                   f"expected {want_workloads}")
            if result_summary.get("final_routes") != want_routes:
                observer.violation(f"end state: routes {result_summary.get('final_routes')}, expected {want_routes}")
            if result_summary.get("mixed_version_responses"):
                observer.violation(f"{result_summary['mixed_version_responses']} load responses mixed versions")
        elif not observer.violations:
            observer.violation("the last run wrote no summary")
    finally:
        observer.close()
    return ReleaseResult(
        name, scenario, expected, outcome, incarnation, done, observer.violations, observer.phases_seen,
        asdict(observer.tally), round(time.monotonic() - started, 1),
        None if result_summary is None else result_summary.get("final_workloads"),
        None if result_summary is None else result_summary.get("final_routes"),
        None if result_summary is None else served(result_summary))


def served(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The load's latency and errors, and each process's CPU seconds, from a run's summary."""
    load = summary.get("load") or {}
    return {"latency_p50_ms": load.get("latency_p50_ms"), "latency_p99_ms": load.get("latency_p99_ms"),
            "errors": load.get("error_kinds"), "sent": load.get("sent"), "cpu_seconds": summary.get("cpu_seconds")}


def drive(run: ControllerRun, observer: Observer, mode: str, rng: random.Random, ports: set[str],
          deadline: float) -> float | None:
    """Observe `run` until it ends (None) or the kill point of `mode` comes (seconds since start)."""
    kill_at = None
    if mode == "startup":
        kill_at = rng.uniform(0.2, 3.0)
    first = observer.read_status()
    status_path = observer.workdir / "state" / "status.json"
    mtime = status_path.stat().st_mtime_ns if status_path.exists() else 0
    next_observation = 0.0
    while run.alive():
        now = time.monotonic()
        elapsed = now - run.started
        if now > deadline or elapsed > 150:
            observer.violation(f"a run was still going after {elapsed:.0f}s")
            run.kill()
            return elapsed
        if run.router_port is not None:
            ports.add(run.router_port)
        if mode == "running" and kill_at is None and run.loaded.is_set():
            kill_at = elapsed + rng.uniform(0.0, 4.0)
        if mode == "late" and kill_at is None:
            status = observer.read_status()
            if status is not None and status["phase"] in LATE:
                kill_at = elapsed + rng.uniform(0.0, 0.8)
        if mode == "transition":
            # Kill as soon as a new status lands: often between the persist and the actions it calls for.
            new_mtime = status_path.stat().st_mtime_ns if status_path.exists() else 0
            if new_mtime != mtime and (first is None or observer.read_status() != first):
                run.kill()
                observer.check_status()
                return elapsed
        if kill_at is not None and elapsed >= kill_at:
            run.kill()
            observer.check_status()
            return elapsed
        if now >= next_observation:
            observe(run, observer)
            next_observation = time.monotonic() + 0.1
        time.sleep(0.02 if mode in ("transition", "late") else 0.03)
    return None


def observe(run: ControllerRun, observer: Observer) -> None:
    observer.tally.observations += 1
    status = observer.check_status()
    if run.admin is not None:
        observer.check_routes(run.admin, status, run.alive)
    if run.router is not None and run.loaded.is_set():
        observer.probe(run.router)
    observer.check_processes(run.router_port)


def _check_run_log(observer: Observer, log: Path, incarnation: int) -> None:
    """No run starts one version of a service twice (unless it died, which nothing here makes happen)."""
    starts = collections.Counter(re.findall(r"started (\S+@\S+) on", log.read_text(errors="replace")))
    for workload, n in starts.items():
        if n > 1:
            observer.violation(f"run {incarnation} started {workload} {n} times")


# ---------------------------------------------------------------------------------------------------------
# The campaign


def campaign(scenarios: list[str], kills: int, root: Path, seed: int, echo: bool = True) -> list[ReleaseResult]:
    rng = random.Random(seed)
    results = []
    for i, scenario in enumerate(scenarios):
        name = f"crash-{i + 1}-{scenario}"
        result = run_release(name, scenario, kills, root / name, rng, echo=echo)
        results.append(result)
        if echo:
            print(f"{name:<22} -> {result.outcome} (expected {result.expected}) after {result.incarnations} runs "
                  f"in {result.wall_seconds:.0f}s; violations: {len(result.violations)}", flush=True)
            for v in result.violations[:5]:
                print(f"    ! {v}", flush=True)
    return results


def table(results: list[ReleaseResult]) -> str:
    kills = [k for r in results for k in r.kills]
    tallies: collections.Counter[str] = collections.Counter()
    for r in results:
        tallies.update({k: v for k, v in r.tally.items() if k != "most_processes_in_a_scan"})
    by_phase = collections.Counter(k.phase for k in kills)
    by_mode = collections.Counter(k.mode for k in kills)
    gone = sorted(k.children_gone_seconds for k in kills if k.children_gone_seconds is not None)
    lines = [
        f"{'release':<22}{'expected':>12}{'outcome':>12}{'runs':>6}{'kills':>7}{'wall s':>8}{'violations':>12}",
        *(f"{r.name:<22}{r.expected:>12}{r.outcome or '-':>12}{r.incarnations:>6}{len(r.kills):>7}"
          f"{r.wall_seconds:>8.0f}{len(r.violations):>12}" for r in results),
        "",
        f"releases {len(results)}, as expected {sum(r.outcome == r.expected for r in results)}, "
        f"kills {len(kills)}, invariant violations {sum(len(r.violations) for r in results)}",
        "kills by last persisted phase: " + ", ".join(f"{p} {n}" for p, n in by_phase.most_common()),
        "kills by mode: " + ", ".join(f"{m} {n}" for m, n in by_mode.most_common()),
        f"children of a killed run gone after: median {gone[len(gone) // 2] if gone else '-'}s, "
        f"max {gone[-1] if gone else '-'}s",
        "checked: " + ", ".join(f"{k} {v}" for k, v in tallies.items()),
        f"most stack processes seen in one process-table scan: "
        f"{max((r.tally['most_processes_in_a_scan'] for r in results), default=0)}",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _workroot(path: Path | None) -> Iterator[Path]:
    import tempfile

    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="local-crash-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--releases", type=int, default=8, help="releases, cycling healthy/errors/healthy/slow")
    p.add_argument("--kills", type=int, default=5, help="SIGKILLs per release before it may finish")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, help="keep the work directories here (default: a temporary one)")
    p.add_argument("--out", type=Path, default=Path("bench/results/local_crash.json"))
    args = p.parse_args(argv)
    cycle = ["healthy", "errors", "healthy", "slow"]
    scenarios = [cycle[i % len(cycle)] for i in range(args.releases)]
    started = time.time()
    with _workroot(args.workdir) as root:
        results = campaign(scenarios, args.kills, root, args.seed)
    text = table(results)
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "started": started, "seconds": round(time.time() - started, 1), "seed": args.seed,
        "kills_per_release": args.kills,
        "releases": [{**asdict(r), "ok": r.ok} for r in results],
    }, indent=1))
    args.out.with_suffix(".txt").write_text(f"python -m bench.local_crash --releases {args.releases} "
                                            f"--kills {args.kills} --seed {args.seed}\n\n{text}\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
