"""What every local demo shares: the release it runs, its console, load, ports, driving loop and summary.

The canary demo (`demo.canary`) and the A/B demo (`demo.experiment`) both run one StackRelease of the
search stack against the local platform. This module owns the parts they have in common:

- `demo_release`: the release of v2 of the whole stack that the demos start from;
- `Console`: the run's log lines, plus a live countdown line on a terminal;
- `LaneAudit`: the client-side check that every response stayed on one version along its path;
- `search_load` and `local_ports`: the load through the mesh router, and the controller's ports;
- `drive_release`: tick the reconciler until the release reaches a final phase;
- `load_dict`, `write_report`, `publish_summary`: the outcome as JSON, HTML and lines on the console;
- `data_plane_summary`: which mesh served the run (Envoy, and its version).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from controller.adapters.http.hooks import HttpHooks
from controller.adapters.http.notifiers import MultiNotifier
from controller.adapters.http.outgoing import Outgoing
from controller.adapters.local.platform import LocalRouter, LocalWorkloads, LogNotifier, SystemClock
from controller.adapters.local.stack import SEARCH_SERVICES, LocalStack
from controller.adapters.local.state import StateDir, write_json_atomic
from controller.core.observation import served_path
from controller.core.spec.release import ReleaseSpec
from controller.core.status import ReleaseStatus
from controller.logs import release_context
from controller.ports import BusinessMetrics, History, Metrics, Notifier, ShadowPairs
from controller.present import view
from controller.present.report import render_report
from controller.reconciler import Ports, Reconciler
from demo.loadgen import LoadReport, LoadRunner
from localmesh.envoy.in_flight import EnvoyInFlight
from localmesh.envoy.process import envoy_version


def demo_release(interval: float, changed: tuple[str, ...] = SEARCH_SERVICES) -> dict[str, Any]:
    """The demos' StackRelease: v2 of `changed` beside v1, in 10/25/50% steps every `interval` seconds."""
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
            # Promotion needs the canary shown within its margins, loosened for a demo: its ten processes share
            # two cores with the load generator, so an identical version runs 10-20% slower or faster and has
            # more or fewer slow requests depending on what runs beside it, and a few minutes at 40 req/s see
            # about a thousand canary requests per service. So harm starts at Delta 0.15 and a pass needs Delta
            # under 0.3, slow-request and error ratios under 2 or rates within 3 points (+50 ms on a 13 ms
            # search is Delta ~0.9). A release on a cluster keeps the defaults (docs/analysis.md).
            "analysis": {"judge": "sequential", "alpha": 0.05, "minCanaryRequests": 40,
                         "latencyTolerance": 0.15, "latencyNonInferiorityMargin": 0.3,
                         "nonInferiorityMargin": 2.0, "absoluteNonInferiorityMargin": 0.03},
            # No proof by a step's deadline: keep analysing (never promote blind).
            "policies": {"onInconclusive": "hold", "rollbackAfterErrors": 3},
            "progressDeadline": "60s",
            # Searches take milliseconds, but on a machine whose cores are busy a request can stall for
            # seconds: the default 5 s lets every one in flight finish before the subsets change.
            "drainTime": "5s",
            # v1 stays up 2 s after the cutover (a cluster's default is 30 s, for a fast undo; here a
            # process restarts in a second).
            "scaleDownDelay": "2s",
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
        versions = {version for service, version in served_path(served) if service in self.changed}
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


def _on_a_terminal(stream: object) -> bool:
    try:
        return bool(getattr(stream, "isatty", lambda: False)())
    except (ValueError, OSError):  # a closed stream
        return False


class Console:
    """Lines for the log of a run, plus (on a terminal) one live line that counts down to the next step.
    `close()` (or the end of a `with` block) takes its hook off the log handlers again."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._live = False
        self._hooked: list[logging.Handler] = []
        if self.tty:  # a log line on the same terminal first clears the live line, so neither overwrites the other
            for handler in logging.getLogger().handlers:
                if _on_a_terminal(getattr(handler, "stream", None)):
                    handler.addFilter(self._clear_for_log)
                    self._hooked.append(handler)

    def close(self) -> None:
        for handler in self._hooked:
            handler.removeFilter(self._clear_for_log)
        self._hooked = []

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _clear_for_log(self, record: logging.LogRecord) -> bool:
        if self._live:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self._live = False
        return True

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


def search_load(stack: LocalStack, spec: ReleaseSpec, rps: float, max_seconds: float, audit: LaneAudit,
                keep_cookies: bool = False, click_probability: Mapping[str, float] | None = None) -> LoadRunner:
    """Searches at `rps` through the mesh router's entry route for `max_seconds`, each checked by `audit`
    (not started: the caller starts it when the load should begin)."""
    return LoadRunner(url=f"{stack.router_url}/master-service/search", rate=rps, duration=max_seconds,
                      max_requests=int(rps * max_seconds) + 1, host=spec.stack.entry, on_response=audit,
                      keep_cookies=keep_cookies, click_probability=click_probability)


def local_ports(stack: LocalStack, router: LocalRouter, metrics: Metrics, clock: SystemClock,
                outgoing: Outgoing | None, business: BusinessMetrics | None = None,
                metrics_delay: float = 0.0, shadow: ShadowPairs | None = None, history: History | None = None
                ) -> Ports:
    """The controller's ports on the local platform; notices go to the log and to `outgoing`'s notifiers.
    `metrics_delay`: how long after a weight change the metrics source counts only the new weight's
    traffic (`MetricsSource.delay`); no window opens sooner. `history`: a source of past windows (Prometheus)."""
    notifier: Notifier = LogNotifier()
    if outgoing is not None and outgoing.notifier is not None:
        notifier = MultiNotifier([notifier, outgoing.notifier])
    return Ports(LocalWorkloads(stack), router, metrics, clock, notifier, business=business,
                 hooks=outgoing.hooks if outgoing is not None else HttpHooks(), metrics_delay=metrics_delay,
                 shadow=shadow, history=history, in_flight=EnvoyInFlight(stack.envoy_admin_target))


def drive_release(reconciler: Reconciler, state: StateDir, spec: Any, clock: SystemClock, stop: threading.Event,
                  max_seconds: float, console: Console,
                  on_tick: Callable[[ReleaseStatus], None] | None = None, shown: int = 0) -> ReleaseStatus:
    """Tick one release until it reaches a final phase, `stop` is set or `max_seconds` pass. `shown`: how many
    of its decisions an earlier drive of the same attempt printed already (they are not printed again)."""
    deadline = clock.now() + max_seconds
    seen = shown
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
                for line in view.decision_lines(record, spec.stable.version, spec.canary.version,
                                                spec.stable.versions):
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


def load_dict(report: LoadReport | None) -> dict[str, Any] | None:
    """The load generator's report as JSON-ready data (None when no load ran)."""
    if report is None:
        return None
    d = asdict(report)
    d["status_counts"] = {str(k): v for k, v in report.status_counts.items()}
    d["achieved_rate"] = report.achieved_rate
    d["error_answers"] = report.error_answers  # answered 5xx: `errors` counts requests that got no answer
    return d


def write_report(state: StateDir, path: Path) -> Path:
    """The release's self-contained HTML report (charts and the decision log) from its persisted state."""
    path.write_text(render_report(state.load_release(), state.load_status().for_storage()))
    return path


def data_plane_summary() -> dict[str, Any]:
    """The summary's `data_plane` ("envoy") and `envoy_version`."""
    return {"data_plane": "envoy", "envoy_version": envoy_version()}


def cpu_line(cpu_seconds: Mapping[str, float]) -> str:
    """The summary's CPU seconds per service process, on one line ("-" when none could be read)."""
    return ", ".join(f"{name} {seconds:.1f}" for name, seconds in cpu_seconds.items()) or "-"


def publish_summary(result: dict[str, Any], text: str, console: Console, summary_path: Path | None) -> None:
    """Print the run's summary and, when asked, write its JSON to `summary_path`."""
    console.say(text)
    if summary_path is not None:
        write_json_atomic(Path(summary_path), result)
