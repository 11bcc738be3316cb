"""`canary demo`: a real canary release of the whole search stack on this machine.

The stable version (v1) of the five services serves load through the local mesh router; the controller
releases v2 beside it with the chosen scenario's fault injection, shifts traffic through VirtualService
weights, judges the two versions from the router's Istio metrics (through a real Prometheus when one is
installed) and promotes or rolls back by itself. Everything started here is stopped at the end.

This module owns the canary scenarios, `run_demo` (the `canary demo` command: a canary scenario here, `ab`
and `abn` in `demo.experiment`) and `run_local` (any release on the local platform, also `canary run
--local`), with its resume from a state directory and its summary. What both demos share is `demo.harness`.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

from controller.adapters.http.outgoing import Outgoing
from controller.adapters.local.metrics import open_metrics_source
from controller.adapters.local.platform import LocalRouter, SystemClock
from controller.adapters.local.stack import Faults, LocalStack
from controller.adapters.local.state import StateDir
from controller.adapters.shadow.client import HttpShadowPairs
from controller.adapters.signals import stop_on_signals
from controller.core.machine import base_plan, desired_plan, revisions, summary
from controller.core.spec.release import ReleaseSpec, parse_release
from controller.core.status import Phase, ReleaseStatus
from controller.ports import PortError
from controller.reconciler import Reconciler
from demo.experiment import run_ab_demo
from demo.harness import (
    Console,
    LaneAudit,
    cpu_line,
    data_plane_summary,
    demo_release,
    drive_release,
    load_dict,
    local_ports,
    publish_summary,
    search_load,
    write_report,
)
from demo.loadgen import LoadReport, LoadRunner
from localmesh.envoy.metrics import scrape_job
from localmesh.envoy.process import envoy_version

log = logging.getLogger(__name__)

# What is wrong with v2 in each scenario: per service, the searchstack fault knobs of its process.
SCENARIOS: dict[str, dict[str, dict[str, float]]] = {
    "healthy": {},
    "slow": {"ml-search": {"latency_ms": 50.0}},
    "errors": {"ml-infer": {"error_rate": 0.2}},
    "tail": {"keyword": {"slow_prob": 0.15, "slow_ms": 400.0}},
    # As fast, no errors, worse rankings: only a shadow phase (docs/shadow.md), which it always has, sees it.
    "shadow-broken": {"ml-search": {"rank_noise": 3.0}},
}
# The demo's shadow phase: half the searches mirrored (each costs the stable version two more searches).
DEMO_SHADOW = {"mirrorPercent": 50, "maxDuration": "120s"}
IN_FLIGHT = (Phase.INITIALIZING, Phase.SHADOWING, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING, Phase.ROLLING_BACK)
OUTCOMES = {Phase.SUCCEEDED: "promoted", Phase.ROLLED_BACK: "rolled_back", Phase.FAILED: "failed",
            Phase.ABORTED: "aborted"}


def run_demo(scenario: str = "healthy", rps: float = 40.0, interval: float = 10.0,
             summary_path: Path | None = None, workdir: Path | None = None, metrics: str = "auto",
             max_seconds: float = 600.0, out: TextIO = sys.stdout,
             on_tick: Callable[[ReleaseStatus], None] | None = None,
             outgoing: Outgoing | None = None, shadow: bool = False) -> dict[str, Any]:
    """`canary demo --scenario S`: a canary release with S's faults, or (ab, abn) an A/B experiment; with
    `shadow` (always for shadow-broken) a shadow phase comes before the first step."""
    if scenario in ("ab", "abn"):
        return run_ab_demo(rps=rps, interval=interval, summary_path=summary_path, workdir=workdir,
                           metrics=metrics, max_seconds=max_seconds, out=out, on_tick=on_tick,
                           variants=3 if scenario == "abn" else 2, outgoing=outgoing)
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}, ab, abn")
    release = demo_release(interval)
    if shadow or scenario == "shadow-broken":
        release["spec"]["strategy"]["shadow"] = dict(DEMO_SHADOW)
    return run_local(release, {"v2": SCENARIOS[scenario]}, rps=rps, summary_path=summary_path,
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
    state = StateDir(workdir / "state")
    if state.exists() and state.load_release().get("metadata", {}).get("name") != spec.name:
        raise ValueError(f"{state.root} holds another release; use a fresh --workdir")
    with ExitStack() as ctx, stop_on_signals() as stop:
        ctx.enter_context(console)  # off the log handlers last, once the platform is down
        stack, router = _start_platform(ctx, spec, state, workdir, faults, console)
        shadow = _start_comparator(ctx, spec, stack, console)
        source = ctx.enter_context(open_metrics_source(metrics, stack.admin_url, workdir / "prometheus",
                                                                [scrape_job([stack.envoy_admin_target])]))
        console.say(f"metrics: {source.description}")
        load = _start_load(ctx, stack, spec, rps, max_seconds, audit)
        console.say(f"load: {rps:g} searches/s through the router; releasing {spec.canary.version}"
                    f"{f' ({label})' if label else ''} with steps {list(spec.strategy.steps)}% "
                    f"every {spec.strategy.interval:g}s")
        if not state.exists():
            state.save_release(release)
        clock = SystemClock()
        reconciler = Reconciler(local_ports(stack, router, source.metrics, clock, outgoing,
                                            metrics_delay=source.delay, shadow=shadow,
                                            history=source.history))
        status = drive_release(reconciler, state, spec, clock, stop, max_seconds, console, on_tick)
        report = load.stop() if load is not None else None
        result = _summary(label, status, audit, source.name, workdir, report)
        result["shadow"] = shadow_summary(status)
        result.update(final_platform(stack, router))
        result.update(data_plane_summary())
        result["cpu_seconds"] = stack.cpu_seconds()
        result["interrupted"] = stop.is_set()
        result["report"] = str(write_report(state, workdir / "report.html"))
    publish_summary(result, _summary_text(result), console, summary_path)
    return result


def _start_platform(ctx: ExitStack, spec: ReleaseSpec, state: StateDir, workdir: Path, faults: Faults,
                    console: Console) -> tuple[LocalStack, LocalRouter]:
    """The stack's stable version behind the mesh router on stable routes, or what a resumed release ran."""
    stack = ctx.enter_context(LocalStack(workdir / "stack", faults=faults, lane_header=spec.lane_header))
    console.say(f"search stack {spec.stable_described()} starting (router {stack.router_url}, "
                f"admin {stack.admin_url}) ...")
    console.say(f"data plane: Envoy {envoy_version()} (its log: {stack.workdir / 'envoy' / 'envoy.log'})")
    for version, services in spec.stable_groups():
        stack.start_version(version, services)
    assert stack.admin is not None
    router = LocalRouter(stack.admin)
    # Routes first, before any process of the new version registers: a router without a VirtualService
    # for a service round-robins over all its endpoints, which would send stable traffic to the canary.
    router.apply(base_plan(spec).all_stable())  # owned by the release, like every route it writes
    _resume(spec, state, stack, router, console)
    return stack, router


def _resume(spec: ReleaseSpec, state: StateDir, stack: LocalStack, router: LocalRouter, console: Console) -> None:
    """Resuming a release whose process died: bring back what its status says runs (the new version, also
    when it was already promoted) and, once that is ready, the routes it had, before the first tick."""
    resumed = state.load_status() if state.exists() else None
    if resumed is not None and revisions.should_restart(spec, resumed) is not None:
        # A finished release whose spec now asks for other versions (undo, next version) or a retry:
        # it starts from Pending, on the stable routes above, not from the routes it ended with.
        console.say(f"{spec.name} ended {resumed.phase.value}; starting it again for {spec.canary.version}")
        resumed = None
    if resumed is not None and (resumed.phase in IN_FLIGHT or resumed.phase is Phase.SUCCEEDED):
        console.say(f"resuming {spec.name} from {resumed.phase.value} (step {resumed.step + 1}) in {state.root}")
        stack.start_version(spec.canary.version, spec.changed)
    in_flight_plan = desired_plan(spec, resumed) if resumed is not None else None
    if in_flight_plan is None:
        return
    stable = base_plan(spec).all_stable()
    if {s.service: s.stable for s in in_flight_plan.services} != {s.service: s.stable for s in stable.services}:
        # Its stable lanes were re-pointed at the new version (promoted): in two stages, as the promotion
        # itself did, so that no search already inside the stack on the stable routes above mixes versions.
        router.apply(base_plan(spec).with_weight(100))
        time.sleep(spec.drain_time)
    router.apply(in_flight_plan)


def _start_comparator(ctx: ExitStack, spec: ReleaseSpec, stack: LocalStack, console: Console
                      ) -> HttpShadowPairs | None:
    """A release with a shadow phase gets its comparator, as the endpoint of the Service its spec names."""
    if spec.shadow is None:
        return None
    url = stack.start_comparator(spec.shadow.routes, spec.stack.entry)
    console.say(f"shadow comparator: {url} ({spec.shadow.routes.percent:g}% of searches mirrored to it "
                "during the shadow phase)")
    source = HttpShadowPairs(url)
    ctx.callback(source.close)
    return source


def shadow_summary(status: ReleaseStatus) -> dict[str, Any] | None:
    """A shadow phase's outcome for the summary: pairs compared, mean overlap, the difference beyond noise with
    its interval (what the judge decides on), the verdict, and the seconds from the phase's start to it."""
    shadow = status.shadow or {}
    verdict = shadow.get("verdict")
    if not verdict:
        return None
    decided = status.condition("Shadow")
    seconds = None
    if decided is not None and decided.status != "Unknown" and shadow.get("since") is not None:
        seconds = round(decided.last_transition - float(shadow["since"]), 1)
    return {"verdict": verdict["decision"], "pairs": verdict["pairs"], "mean_overlap": verdict["meanOverlap"],
            "mean_overlap_bounds": verdict.get("meanOverlapBounds"),
            "mean_noise_overlap": verdict["meanNoiseOverlap"], "difference": verdict["difference"],
            "difference_bounds": list(verdict["differenceBounds"]), "margin": verdict["margin"],
            "top1_changed": verdict["top1Changed"], "reason": verdict["reason"], "seconds": seconds,
            "score_drift": (shadow.get("scoreDrift") or {}).get("mean"),
            "score_drift_noise": (shadow.get("scoreDrift") or {}).get("noiseMean"),
            "mirrored": shadow.get("mirrored"), "foreign_pairs": shadow.get("foreign")}


def _start_load(ctx: ExitStack, stack: LocalStack, spec: ReleaseSpec, rps: float, max_seconds: float,
                audit: LaneAudit) -> LoadRunner | None:
    """Load from the start of the run (none at `rps` 0), stopped at teardown at the latest."""
    if rps <= 0:
        return None
    load = search_load(stack, spec, rps, max_seconds, audit)
    load.start()
    ctx.callback(load.stop)
    return load


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


def _summary_text(r: dict[str, Any]) -> str:
    def secs(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}s"

    shadow = r.get("shadow")
    shadow_line = [] if not shadow else [
        f"  shadow phase: {shadow['verdict']} after {shadow['pairs']} pairs in {secs(shadow['seconds'])}: mean RBO "
        f"{shadow['mean_overlap'] if shadow['mean_overlap'] is None else round(shadow['mean_overlap'], 3)} "
        f"in {shadow['mean_overlap_bounds']} "
        f"(margin {shadow['margin']:.2f} beyond the stable version's own noise)"]
    return "\n".join([
        "",
        f"outcome: {r['outcome']}  ({r['message']})",
        *shadow_line,
        f"  seconds from first canary traffic to decision: {secs(r['decision_seconds'])}"
        + (f", to 0% canary: {secs(r['rollback_seconds'])}, to canary removed: "
           f"{secs(r['rollback_complete_seconds'])}" if r["rollback_seconds"] is not None else ""),
        f"  canary requests served: {r['canary_requests']} of {r['responses']} "
        f"(requests mixing versions along their path: {r['mixed_version_responses']})",
        f"  metrics source: {r['metrics_source']}",
        f"  CPU seconds per process: {cpu_line(r['cpu_seconds'])}",
        f"  report: {r.get('report', '-')}",
        f"  state: {r['state_dir']}   logs: {r['logs']}",
    ])
