"""`canary demo --scenario ab`: a real A/B experiment between v1 and v2 of the search stack, on this machine.

v2 ranks better, so simulated users click its results more often (p = 0.16 against 0.10 on v1). The
controller starts v2 beside v1, puts the experiment's routes in the local mesh router (new users are
assigned 50/50 by weight and keep their variant through the `ab` cookie; the lane header keeps the whole
stack path on it), judges guardrails from the router's Istio metrics and click-through from master-search's
own counters every interval, and ends the experiment with a winner and the effect's confidence interval.

The experiment ends with `onEnd: waitForOperator` and this demo plays the operator: the load stops while
the experiment's routes are still in effect, so "every user saw exactly one variant" is measured over the
whole load (no user straddles the experiment's start or end), then it approves the promotion of the
winner (`spec.approvePromotion`) and the release runs to Succeeded; when the winner is not `spec.canary`
(or there is none) it aborts instead (`spec.abort`), which keeps stable.

`canary demo --scenario abn` is the A/B/n version: three variants (v1 the control, v2 the canary and v3 a
further variant, 34/33/33), users click with p = 0.10 on v1, 0.30 on v2 and 0.10 on v3, every variant has
its own guardrails and confidence sequence (alpha split between the two comparisons), and v2 must be
separated from v3 as well as from v1 before it is named the winner. The reconciler asks its ports for every
variant's version (`controller.core.queries.release_versions`) and waits for every variant's workloads.

This module owns the experiment's release (`ab_release`), its run (`run_ab_demo`: load only while the
experiment's routes are in effect, then the operator's decision) and its summary; the console, the lane
audit, the ports and the driving loop it shares with the canary demo are `demo.harness`'s.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

from controller.adapters.http.outgoing import Outgoing
from controller.adapters.local.business import LocalBusinessMetrics
from controller.adapters.local.metrics import open_metrics_source
from controller.adapters.local.platform import LocalRouter, SystemClock
from controller.adapters.local.stack import LocalStack
from controller.adapters.local.state import StateDir
from controller.adapters.signals import stop_on_signals
from controller.core.spec.release import ReleaseSpec, parse_release
from controller.core.status import Phase, ReleaseStatus
from controller.reconciler import Reconciler
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

CLICK_PROBABILITY = {"v1": 0.10, "v2": 0.16}
CLICK_PROBABILITY_ABN = {"v1": 0.10, "v2": 0.30, "v3": 0.10}
VARIANTS = {
    2: [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
    3: [{"name": "v1", "weight": 34}, {"name": "v2", "weight": 33}, {"name": "v3", "weight": 33}],
}


def ab_release(interval: float, variants: int = 2) -> dict[str, Any]:
    release = demo_release(interval)
    release["metadata"]["name"] = "search-ab" if variants == 2 else "search-abn"
    release["spec"]["strategy"] = {"abTest": {
        "variants": VARIANTS[variants],
        "primaryMetric": {"kind": "proportion", "name": "click-through"},
        "interval": f"{interval:g}s", "settle": f"{min(4.0, interval / 2):g}s",
        "minDuration": f"{3 * interval:g}s", "maxDuration": f"{30 * interval:g}s", "minSamples": 300,
        # Users as the unit (the default); the interval is narrowest where the demo's experiments end, at a
        # few hundred users per variant (the default, 1,000, suits a production experiment).
        "confidenceSequence": {"tuningUsers": 200},
        # Guardrails guard against harm, not against any difference: with thousands of requests per
        # variant a 1 ms shift between two processes is "significant", so allow a small latency shift
        # (Delta = P(v2 slower) - P(v2 faster) up to 0.1) and up to 1.5x the error rate before stopping.
        "guardrails": {"judge": "sequential", "alpha": 0.05, "minCanaryRequests": 40,
                       "latencyTolerance": 0.1, "errorRatioTolerance": 1.5},
        "onEnd": "waitForOperator",
    }}
    del release["spec"]["analysis"]
    return release


def run_ab_demo(rps: float = 40.0, interval: float = 10.0, summary_path: Path | None = None,
                workdir: Path | None = None, metrics: str = "auto", max_seconds: float = 600.0,
                out: TextIO = sys.stdout, on_tick: Callable[[ReleaseStatus], None] | None = None,
                variants: int = 2, outgoing: Outgoing | None = None) -> dict[str, Any]:
    if variants not in VARIANTS:
        raise ValueError(f"the A/B demo runs {' or '.join(map(str, VARIANTS))} variants, not {variants}")
    release = ab_release(interval, variants)
    spec = parse_release(release)
    assert spec.experiment is not None
    clicks = CLICK_PROBABILITY if variants == 2 else CLICK_PROBABILITY_ABN
    workdir = Path(workdir or tempfile.mkdtemp(prefix="canary-ab-"))
    console, state = Console(out), StateDir(workdir / "state")
    audit = LaneAudit(canary=spec.canary.version, changed=spec.changed)
    with ExitStack() as ctx, stop_on_signals() as stop:
        ctx.enter_context(console)  # off the log handlers last, once the platform is down
        stack, router = _start_platform(ctx, spec, workdir, console)
        source = ctx.enter_context(open_metrics_source(metrics, stack.admin_url, workdir / "prometheus",
                                                                [scrape_job([stack.envoy_admin_target])]))
        business = _business_metrics(ctx, stack, spec)
        load = search_load(stack, spec, rps, max_seconds, audit, keep_cookies=True, click_probability=clicks)
        ctx.callback(load.stop)
        state.save_release(release)
        console.say(f"metrics: {source.description}; clicks: master-search /metrics of each version")
        split = "/".join(f"{a.name} {a.weight}%" for a in spec.experiment.routes.arms)
        console.say(f"A/B experiment {split} (sticky cookie `ab`), users click with {clicks}")
        clock = SystemClock()
        reconciler = Reconciler(local_ports(stack, router, source.metrics, clock, outgoing, business,
                                            metrics_delay=source.delay))
        ended, load_started = threading.Event(), threading.Event()
        watch = _load_while_experimenting(load, load_started, ended, stop, on_tick)
        status = drive_release(reconciler, state, spec, clock, ended, max_seconds, console, watch)
        report = load.stop() if load_started.is_set() else None
        if status.phase is Phase.PAUSED and not stop.is_set():
            _play_the_operator(status, spec, state, console)
            status = drive_release(reconciler, state, spec, clock, stop, max_seconds, console, on_tick,
                                   shown=len(status.history))
        result = _summary(status, audit, report, source.name, workdir, clicks)
        result["scenario"] = "ab" if variants == 2 else "abn"
        result.update(data_plane_summary())
        result["cpu_seconds"] = stack.cpu_seconds()
        result["interrupted"] = stop.is_set()
        result["report"] = str(write_report(state, workdir / "report.html"))
    publish_summary(result, _summary_text(result), console, summary_path)
    return result


def _start_platform(ctx: ExitStack, spec: ReleaseSpec, workdir: Path,
                    console: Console) -> tuple[LocalStack, LocalRouter]:
    """The stack's stable version behind the mesh router, every service on it."""
    stack = ctx.enter_context(LocalStack(workdir / "stack", lane_header=spec.lane_header))
    console.say(f"search stack {spec.stable_described()} starting (router {stack.router_url}) ...")
    for version, services in spec.stable_groups():
        stack.start_version(version, services)
    assert stack.admin is not None
    router = LocalRouter(stack.admin)
    router.apply(stack.baseline_plan(spec.stable.version, versions=spec.stable.versions))
    return stack, router


def _business_metrics(ctx: ExitStack, stack: LocalStack, spec: ReleaseSpec) -> LocalBusinessMetrics:
    """Clicks and impressions scraped from the entry service's processes, counted from now on."""
    business = LocalBusinessMetrics(lambda service: _processes(stack, service))
    ctx.callback(business.close)
    business.prime(spec.stack.entry)
    return business


def _load_while_experimenting(load: LoadRunner, load_started: threading.Event, ended: threading.Event,
                              stop: threading.Event, on_tick: Callable[[ReleaseStatus], None] | None
                              ) -> Callable[[ReleaseStatus], None]:
    """A tick watcher that starts the load when the experiment's routes take effect and sets `ended` when
    the experiment is over (or the demo is stopped)."""

    def watch(status: ReleaseStatus) -> None:
        # Load runs exactly while the experiment's routes are in effect (see the module docstring).
        if status.phase is Phase.PROGRESSING and not load_started.is_set():
            load_started.set()
            load.start()
        if status.phase not in (Phase.PROGRESSING, Phase.INITIALIZING) or stop.is_set():
            ended.set()
        if on_tick is not None:
            on_tick(status)

    return watch


def _play_the_operator(status: ReleaseStatus, spec: ReleaseSpec, state: StateDir, console: Console) -> None:
    """The experiment waits for the operator: approve the winner's promotion when it is the canary, else
    abort (which keeps stable), as `canary approve` / `canary abort` would patch the spec."""
    winner = (status.experiment or {}).get("winner")
    choice = "approvePromotion" if winner == spec.canary.version else "abort"
    console.say(f"experiment ended (winner {winner}); the demo sets spec.{choice}")
    decided = state.load_release()
    decided["spec"][choice] = True
    decided["metadata"]["generation"] = decided["metadata"].get("generation", 1) + 1
    state.save_release(decided)


def _processes(stack: LocalStack, service: str) -> Iterable[tuple[str, str]]:
    return [(w.version, w.address) for (s, _), w in list(stack.workloads.items())
            if s == service and w.proc.popen.poll() is None]


def _summary(status: ReleaseStatus, audit: LaneAudit, report: LoadReport | None, metrics_source: str,
             workdir: Path, clicks: dict[str, float]) -> dict[str, Any]:
    experiment = dict(status.experiment or {})
    effect = experiment.get("effect") or {}
    load = load_dict(report)
    return {
        "scenario": "ab",
        "outcome": {Phase.SUCCEEDED: "promoted", Phase.ROLLED_BACK: "kept_stable", Phase.ABORTED: "kept_stable"}.get(
            status.phase, status.phase.value.lower()),
        "phase": status.phase.value,
        "decision": experiment.get("decision"),
        "winner": experiment.get("winner"),
        "treatment": experiment.get("treatment"),
        "effect": effect.get("difference"),
        "effect_interval": effect.get("interval"),
        "ratio": effect.get("ratio"),
        "ratio_interval": effect.get("ratioInterval"),
        "rates": experiment.get("rates"),
        "samples": experiment.get("samples"),
        "unit": experiment.get("unit"),
        "users": experiment.get("users"),
        "comparisons": experiment.get("comparisons"),
        "experiment_seconds": experiment.get("durationSeconds"),
        "click_probability": clicks,
        "responses": audit.responses,
        "mixed_version_responses": audit.mixed,
        "mixed_users": None if load is None else load["mixed_users"],
        "assigned_users": None if load is None else load["assigned_users"],
        "last_verdict": status.last_verdict,
        "message": status.message,
        "metrics_source": metrics_source,
        "load": load,
        "state_dir": str(workdir / "state"),
        "logs": str(workdir / "stack" / "logs"),
    }


def _summary_text(r: dict[str, Any]) -> str:
    interval = r["effect_interval"] or [None, None]

    def num(x: Any) -> str:
        return "-" if x is None else f"{x:+.4f}"

    return "\n".join([
        "",
        f"outcome: {r['outcome']}  ({r['message']})",
        f"  experiment: {r['decision']}, winner {r['winner']}; click-through {r['rates']}",
        f"  effect {r['treatment'] or '-'} - v1: {num(r['effect'])}, "
        f"confidence interval [{num(interval[0])}, {num(interval[1])}] "
        f"after {r['experiment_seconds'] or 0:.0f}s, samples {r['samples']}, users {r['users']} "
        f"(unit: {r['unit']})",
        f"  users on more than one variant: {r['mixed_users']}; responses mixing versions along their path: "
        f"{r['mixed_version_responses']} of {r['responses']}",
        f"  CPU seconds per process: {cpu_line(r['cpu_seconds'])}",
        f"  report: {r.get('report', '-')}",
    ])
