"""`canary demo`: a real canary release of the whole search stack on this machine.

The stable version (v1) of the five services serves load through the local mesh router; the controller
releases v2 beside it with the chosen scenario's fault injection, shifts traffic through VirtualService
weights, judges the two versions from the router's Istio metrics (through a real Prometheus when one is
installed) and promotes or rolls back by itself. Everything started here is stopped at the end.
"""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from controller.adapters.http.hooks import HttpHooks
from controller.adapters.http.notifiers import MultiNotifier
from controller.adapters.http.outgoing import Outgoing
from controller.adapters.local.metrics import open_metrics_source
from controller.adapters.local.platform import LocalRouter, LocalWorkloads, LogNotifier, SystemClock
from controller.adapters.local.stack import SEARCH_SERVICES, Faults, LocalStack
from controller.adapters.local.state import StateDir, write_json_atomic
from controller.core.machine import base_plan, desired_plan, revisions, summary
from controller.core.spec.release import parse_release
from controller.core.status import Phase, ReleaseStatus
from controller.logs import release_context
from controller.ports import Notifier, PortError
from controller.present import view
from controller.present.report import render_report
from controller.reconciler import Ports, Reconciler
from demo.loadgen import LoadReport, LoadRunner

log = logging.getLogger(__name__)

# What is wrong with v2 in each scenario: per service, the searchstack fault knobs of its process.
SCENARIOS: dict[str, dict[str, dict[str, float]]] = {
    "healthy": {},
    "slow": {"ml-search": {"latency_ms": 25.0}},
    "errors": {"ml-infer": {"error_rate": 0.2}},
    "tail": {"keyword": {"slow_prob": 0.15, "slow_ms": 400.0}},
}
IN_FLIGHT = (Phase.INITIALIZING, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING, Phase.ROLLING_BACK)
OUTCOMES = {Phase.SUCCEEDED: "promoted", Phase.ROLLED_BACK: "rolled_back", Phase.FAILED: "failed",
            Phase.ABORTED: "aborted"}


def demo_release(interval: float, changed: tuple[str, ...] = SEARCH_SERVICES) -> dict[str, Any]:
    return {
        "apiVersion": "stackcanary.dev/v1alpha1",
        "kind": "StackRelease",
        "metadata": {"name": "search-v2", "namespace": "local", "generation": 1},
        "spec": {
            "stack": {"entry": "master-search", "services": list(SEARCH_SERVICES)},
            "stable": {"version": "v1"},
            "canary": {"version": "v2", "services": list(changed)},
            "strategy": {"canary": {"steps": [{"weight": 10}, {"weight": 25}, {"weight": 50}],
                                    "interval": f"{interval:g}s", "minCanaryRequests": 40,
                                    "stepDeadline": f"{interval * 6:g}s",
                                    # > Prometheus' scrape interval (1s) + the evaluation lag (2s)
                                    "settle": f"{min(4.0, interval / 2):g}s"}},
            "analysis": {"judge": "sequential", "alpha": 0.05, "minCanaryRequests": 40},
            "policies": {"onInconclusive": "continue", "rollbackAfterErrors": 3},
            "progressDeadline": "60s",
            "drainTime": "2s",  # searches take milliseconds; 2 s lets every one in flight finish
        },
    }


@dataclass
class LaneAudit:
    """Client-side check of every response: versions seen along its path (from `x-served-by`)."""

    canary: str
    changed: tuple[str, ...]
    responses: int = 0
    canary_responses: int = 0
    mixed: int = 0
    first_canary_at: float | None = None
    examples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, status: int, latency_ms: float, headers: Mapping[str, str]) -> None:
        served = headers.get("x-served-by", "")
        versions = {part.partition("@")[2] for part in served.split(",")
                    if part.partition("@")[0] in self.changed}
        with self.lock:
            self.responses += 1
            if len(versions) > 1:
                self.mixed += 1
                if len(self.examples) < 5:
                    self.examples.append(served)
            if self.canary in versions:
                self.canary_responses += 1
                if self.first_canary_at is None:
                    self.first_canary_at = time.time()


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM/SIGINT end the demo cleanly: the loop sees the event, then everything is torn down."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_demo(scenario: str = "healthy", rps: float = 40.0, interval: float = 10.0,
             summary_path: Path | None = None, workdir: Path | None = None, metrics: str = "auto",
             max_seconds: float = 600.0, out: TextIO = sys.stdout,
             on_tick: Callable[[ReleaseStatus], None] | None = None,
             outgoing: Outgoing | None = None) -> dict[str, Any]:
    if scenario in ("ab", "abn"):
        from demo.experiment import run_ab_demo  # the A/B demo builds on this module

        return run_ab_demo(rps=rps, interval=interval, summary_path=summary_path, workdir=workdir,
                           metrics=metrics, max_seconds=max_seconds, out=out, on_tick=on_tick,
                           variants=3 if scenario == "abn" else 2, outgoing=outgoing)
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}, ab, abn")
    return run_local(demo_release(interval), {"v2": SCENARIOS[scenario]}, rps=rps, summary_path=summary_path,
                     workdir=workdir, metrics=metrics, max_seconds=max_seconds, out=out, on_tick=on_tick,
                     label=scenario, outgoing=outgoing)


def run_local(release: dict[str, Any], faults: Faults, rps: float = 20.0, summary_path: Path | None = None,
              workdir: Path | None = None, metrics: str = "auto", max_seconds: float = 600.0,
              out: TextIO = sys.stdout, on_tick: Callable[[ReleaseStatus], None] | None = None,
              label: str = "", outgoing: Outgoing | None = None) -> dict[str, Any]:
    """Run one release against the local platform until it ends (or `max_seconds`), then tear down.

    A state directory that already holds this release's status is resumed from where it stopped.
    """
    spec = parse_release(release)  # InvalidSpec here is the caller's to report: nothing has started yet
    workdir = Path(workdir or tempfile.mkdtemp(prefix="canary-local-"))
    audit = LaneAudit(canary=spec.canary.version, changed=spec.changed)
    console = Console(out)
    say = console.say
    state = StateDir(workdir / "state")
    if state.exists() and state.load_release().get("metadata", {}).get("name") != spec.name:
        raise ValueError(f"{state.root} holds another release; use a fresh --workdir")
    with ExitStack() as stack_ctx, _stop_on_signals() as stop:
        stack = stack_ctx.enter_context(LocalStack(workdir / "stack", faults=faults,
                                                   lane_header=spec.lane_header))
        say(f"search stack {spec.stable.version} starting (router {stack.router_url}, "
            f"admin {stack.admin_url}) ...")
        stack.start_version(spec.stable.version, spec.stack.services)
        assert stack.admin is not None
        router = LocalRouter(stack.admin)
        # Routes first, before any process of the new version registers: a router without a VirtualService
        # for a service round-robins over all its endpoints, which would send stable traffic to the canary.
        router.apply(base_plan(spec).all_stable())  # owned by the release, like every route it writes
        # Resuming a release whose process died: bring back what its status says runs (the new version, also
        # when it was already promoted) and, once that is ready, the routes it had, before the first tick.
        resumed = state.load_status() if state.exists() else None
        if resumed is not None and revisions.should_restart(spec, resumed) is not None:
            # A finished release whose spec now asks for other versions (undo, next version) or a retry:
            # it starts from Pending, on the stable routes above, not from the routes it ended with.
            say(f"{spec.name} ended {resumed.phase.value}; starting it again for {spec.canary.version}")
            resumed = None
        if resumed is not None and (resumed.phase in IN_FLIGHT or resumed.phase is Phase.SUCCEEDED):
            say(f"resuming {spec.name} from {resumed.phase.value} (step {resumed.step + 1}) in {state.root}")
            stack.start_version(spec.canary.version, spec.changed)
        in_flight_plan = desired_plan(spec, resumed) if resumed is not None else None
        if in_flight_plan is not None:
            router.apply(in_flight_plan)
        source = stack_ctx.enter_context(open_metrics_source(metrics, stack.admin_url, workdir / "prometheus"))
        say(f"metrics: {source.description}")
        load = None
        if rps > 0:
            load = LoadRunner(url=f"{stack.router_url}/master-service/search", rate=rps,
                              duration=max_seconds, max_requests=int(rps * max_seconds) + 1,
                              host=spec.stack.entry, on_response=audit)
            load.start()
            stack_ctx.callback(load.stop)
        say(f"load: {rps:g} searches/s through the router; releasing {spec.canary.version}"
            f"{f' ({label})' if label else ''} with steps {list(spec.strategy.steps)}% "
            f"every {spec.strategy.interval:g}s")
        if not state.exists():
            state.save_release(release)
        notifier: Notifier = LogNotifier()
        if outgoing is not None and outgoing.notifier is not None:
            notifier = MultiNotifier([notifier, outgoing.notifier])
        clock = SystemClock()
        reconciler = Reconciler(Ports(LocalWorkloads(stack), router, source.metrics, clock, notifier,
                                      hooks=outgoing.hooks if outgoing is not None else HttpHooks()))
        status = drive_release(reconciler, state, spec, clock, stop, max_seconds, console, on_tick)
        report = load.stop() if load is not None else None
        result = _summary(label, status, audit, source.name, workdir, report)
        result.update(final_platform(stack, router))
        result["interrupted"] = stop.is_set()
        result["report"] = str(write_report(state, workdir / "report.html"))
    say(_summary_text(result))
    if summary_path is not None:
        write_json_atomic(Path(summary_path), result)
    return result


class Console:
    """Lines for the log of a run, plus (on a terminal) one live line that counts down to the next step."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._live = False

    def say(self, line: str) -> None:
        if self._live:
            self.out.write("\r\x1b[K")
            self._live = False
        self.out.write(line + "\n")
        self.out.flush()

    def live(self, line: str) -> None:
        if self.tty:
            self.out.write("\r\x1b[K" + line)
            self.out.flush()
            self._live = True


def drive_release(reconciler: Reconciler, state: StateDir, spec: Any, clock: SystemClock, stop: threading.Event,
                  max_seconds: float, console: Console,
                  on_tick: Callable[[ReleaseStatus], None] | None = None) -> ReleaseStatus:
    """Tick one release until it reaches a final phase, `stop` is set or `max_seconds` pass."""
    deadline = clock.now() + max_seconds
    seen = 0
    status = state.load_status()
    while not stop.is_set() and clock.now() < deadline:
        # Every log line of the tick carries the release, its namespace, phase and step.
        with release_context(release=spec.name, namespace=spec.namespace, phase=status.phase.value,
                             step=status.step):
            result = reconciler.tick(state.load_release(), state.load_status(), state.save_status)
        status = result.status
        if result.persisted:
            console.say(view.headline(spec, status, clock.now()))
            for record in status.history[seen:]:
                for line in view.decision_lines(record, spec.stable.version, spec.canary.version):
                    console.say(line)
            seen = len(status.history)
        for failure in result.failed_actions:
            console.say(f"  ! {failure}")
        if on_tick is not None:
            on_tick(status)
        if result.requeue_after is None:
            break
        wake = clock.now() + result.requeue_after
        while not stop.is_set() and clock.now() < wake:
            console.live(view.headline(spec, status, clock.now()))
            stop.wait(min(1.0, max(0.0, wake - clock.now())))
    return status


def _summary(scenario: str, status: ReleaseStatus, audit: LaneAudit, metrics_source: str, workdir: Path,
             report: LoadReport | None) -> dict[str, Any]:
    s = summary(status)
    cleanup_seconds = None
    if status.phase is Phase.ROLLED_BACK and status.first_canary_traffic_at and status.finished_at:
        cleanup_seconds = status.finished_at - status.first_canary_traffic_at
    return {
        "scenario": scenario,
        "outcome": OUTCOMES.get(status.phase, status.phase.value.lower()),
        "phase": status.phase.value,
        "decision_seconds": s["decision_seconds"],
        # Canary's first traffic -> 0% canary read back from the mesh (no new request reaches it).
        "rollback_seconds": s["canary_off_seconds"] if status.phase is Phase.ROLLED_BACK else None,
        # ... -> the canary's routes removed after the drain time and its processes stopped.
        "rollback_complete_seconds": cleanup_seconds,
        "canary_requests": audit.canary_responses,
        "canary_requests_analysed": status.total_canary_requests,
        "responses": audit.responses,
        "mixed_version_responses": audit.mixed,
        "mixed_examples": audit.examples,
        "last_verdict": status.last_verdict,
        "analyses": len(status.history),
        "message": status.message,
        "metrics_source": metrics_source,
        "load": load_dict(report),
        "state_dir": str(workdir / "state"),
        "logs": str(workdir / "stack" / "logs"),
    }


def final_platform(stack: LocalStack, router: LocalRouter) -> dict[str, Any]:
    """What the platform looked like when the run ended, just before teardown: the routes in effect and
    the service processes still running (`service@version`), so that a summary shows the end state."""
    try:
        plan = router.in_effect()
    except PortError as exc:
        routes: dict[str, Any] | None = {"error": exc.reason}
    else:
        routes = None if plan is None else {
            "canary_weight": plan.canary_weight,
            "services": {s.service: {"stable": s.stable, "canary": s.canary} for s in plan.services},
        }
    running = sorted(f"{service}@{version}" for (service, version), w in stack.workloads.items() if w.proc.alive())
    return {"final_routes": routes, "final_workloads": running}


def write_report(state: StateDir, path: Path) -> Path:
    """The release's self-contained HTML report (charts and the decision log) from its persisted state."""
    path.write_text(render_report(state.load_release(), state.load_status().for_storage()))
    return path


def load_dict(report: LoadReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    d = asdict(report)
    d["status_counts"] = {str(k): v for k, v in report.status_counts.items()}
    d["achieved_rate"] = report.achieved_rate
    return d


def _summary_text(r: dict[str, Any]) -> str:
    def secs(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}s"

    return "\n".join([
        "",
        f"outcome: {r['outcome']}  ({r['message']})",
        f"  seconds from first canary traffic to decision: {secs(r['decision_seconds'])}"
        + (f", to 0% canary: {secs(r['rollback_seconds'])}, to canary removed: "
           f"{secs(r['rollback_complete_seconds'])}" if r["rollback_seconds"] is not None else ""),
        f"  canary requests served: {r['canary_requests']} of {r['responses']} "
        f"(requests mixing versions along their path: {r['mixed_version_responses']})",
        f"  metrics source: {r['metrics_source']}",
        f"  report: {r.get('report', '-')}",
        f"  state: {r['state_dir']}   logs: {r['logs']}",
    ])
