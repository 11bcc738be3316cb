"""Judging one analysis window of latency and errors, and the record each look leaves in `status.history`.

`analyse` runs the sequential judge (the canary's analysis, or an experiment's guardrails) over a window
and records the decision with its numbers; `note_action` adds what the machine did about it. The canary's
transitions (`phases`) and the experiment's (`experiment`) both build on these.
"""

from __future__ import annotations

from dataclasses import replace

from analysis.config import AnalysisConfig
from analysis.judges import make_judge
from analysis.observations import Verdict, interval_of
from controller.core.machine.actions import Notify
from controller.core.observation import Observation
from controller.core.spec.release import ReleaseSpec
from controller.core.status import DecisionRecord, Phase, ReleaseStatus


def settled_for(spec: ReleaseSpec, metrics_delay: float) -> ReleaseSpec:
    """The spec as this runner must run it: a window opens no sooner after a weight change than the metrics
    source needs to count only that weight's traffic (`metrics_delay`: Prometheus reads each window edge
    some seconds behind, so that no scrape lands after it; a window starting earlier than that after a
    change would count the old weight's traffic too)."""
    if metrics_delay <= spec.strategy.settle and (spec.experiment is None or metrics_delay <= spec.experiment.settle):
        return spec
    strategy = replace(spec.strategy, settle=max(spec.strategy.settle, metrics_delay))
    experiment = None if spec.experiment is None else replace(
        spec.experiment, settle=max(spec.experiment.settle, metrics_delay))
    return replace(spec, strategy=strategy, experiment=experiment)


def analysis_config(spec: ReleaseSpec) -> AnalysisConfig:
    """What judges latency and errors: the experiment's guardrails, or the canary's analysis."""
    if spec.experiment is not None:
        return spec.experiment.config.guardrails
    return replace(spec.analysis, pod_warmup_intervals=spec.strategy.pod_warmup_intervals)


def history_windows(spec: ReleaseSpec, status: ReleaseStatus) -> tuple[tuple[float, float], ...]:
    """The stable version's windows before the release that the judge has not seen yet (`prime_judge`): while
    the new version starts, `historyIntervals` windows of one interval each, oldest first, ending one interval
    before the release started (the last one's samples may not all be scraped yet). None (an empty tuple) for an A/B
    experiment, whose guardrails judge each variant from its first window, or a judge that learns nothing from them."""
    count = spec.analysis.history_intervals
    if status.phase is not Phase.INITIALIZING or spec.experiment is not None or status.started_at is None \
            or count <= 0 or spec.analysis.judge != "sequential" or "priors" in status.judge_state:
        return ()
    step, end = spec.strategy.interval, status.started_at - spec.strategy.interval
    return tuple((end - (count - i) * step, end - (count - i - 1) * step) for i in range(count))


def prime_judge(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation) -> tuple[ReleaseStatus, Notify | None]:
    """The judge's state given the stable version's history, once, when the windows `history_windows` asked for
    were read (or could not be: then the judge starts without them, and a notice says why)."""
    if not history_windows(spec, status) or (obs.history is None and obs.history_error is None):
        return status, None
    judge = make_judge(analysis_config(spec))  # the judge that will judge the windows
    started = status.started_at or 0.0
    if obs.history is None:
        state = judge.prime(dict(status.judge_state), [])
        notice = Notify("HistoryUnavailable", "the judge starts without the stable version's history (its "
                                              f"error bursts are learnt from the release alone): {obs.history_error}")
        return replace(status, judge_state=state), notice
    history = [{s: interval_of(w, s, spec.stable_version_of(s), spec.canary.version, w.end - started, 0.0)
                for s in spec.analysed_services} for w in obs.history]
    return replace(status, judge_state=judge.prime(dict(status.judge_state), history)), None


def analyse(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float
            ) -> tuple[ReleaseStatus, Verdict, str]:
    """Judge one window and record it: the new status, the verdict and its one-line reason."""
    status, verdict, reason, _ = analyse_window(spec, status, obs, now)
    return status, verdict, reason


def analyse_window(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float
                   ) -> tuple[ReleaseStatus, Verdict, str, bool]:
    """`analyse`, plus whether the verdict is inconclusive only because the canary is not yet shown within
    its margins (no harm seen and data enough: a canary step may raise the weight, it may not promote)."""
    t = now - (status.started_at or now)
    window_end = now if obs.metrics is None else obs.metrics.end
    if obs.metrics is None:
        verdict, reason = Verdict.ERROR, f"metrics unavailable: {obs.metrics_error}"
        record = DecisionRecord(now, t, status.step, status.canary_weight, verdict.value, reason, "")
        return replace(status, last_analysis_at=window_end).with_decision(record), verdict, reason, False
    observations = {
        s: interval_of(obs.metrics, s, spec.stable_version_of(s), spec.canary.version, t, status.canary_weight)
        for s in spec.analysed_services
    }
    judge = make_judge(analysis_config(spec))
    state, decision = judge.update(dict(status.judge_state), observations)
    canary_requests = max((o.canary.requests for o in observations.values()), default=0)
    counts = {s: {"baseline": {"requests": o.baseline.requests, "errors": o.baseline.errors},
                  "canary": {"requests": o.canary.requests, "errors": o.canary.errors}}
              for s, o in observations.items()}
    d = decision.to_dict()
    reason = decision.reason + _time_to_go(decision.details.get("canaryRequestsNeeded"), canary_requests,
                                           obs.metrics.end - obs.metrics.start)
    record = DecisionRecord(now, t, status.step, status.canary_weight, decision.verdict.value,
                            reason, "", tuple(d.get("checks", ())), counts)
    status = replace(
        status, judge_state=state, last_analysis_at=window_end, pod_warmup=bool(decision.details.get("podWarmup")),
        step_canary_requests=status.step_canary_requests + canary_requests,
        total_canary_requests=status.total_canary_requests + canary_requests,
    ).with_decision(record)
    return status, decision.verdict, reason, bool(decision.details.get("safetyPending"))


def _time_to_go(needed: object, canary_requests: int, window_seconds: float) -> str:
    """", about 12 min at the current rate" for the canary requests a pass still needs, when known."""
    if not isinstance(needed, int | float) or canary_requests <= 0 or window_seconds <= 0:
        return ""
    minutes = needed / (canary_requests / window_seconds) / 60.0
    return f", about {minutes:.0f} min at the current rate" if minutes >= 1 else ", under a minute at the current rate"


def note_action(status: ReleaseStatus, action: str) -> ReleaseStatus:
    """Say in the latest decision record what the machine did about it."""
    if not status.history:
        return status
    last = replace(status.history[-1], action=action)
    return replace(status, history=(*status.history[:-1], last))
