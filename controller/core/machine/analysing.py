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
from controller.core.observation import Observation
from controller.core.spec.release import ReleaseSpec
from controller.core.status import DecisionRecord, ReleaseStatus


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
    return spec.experiment.config.guardrails if spec.experiment is not None else spec.analysis


def analyse(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float
            ) -> tuple[ReleaseStatus, Verdict, str]:
    t = now - (status.started_at or now)
    window_end = now if obs.metrics is None else obs.metrics.end
    if obs.metrics is None:
        verdict, reason = Verdict.ERROR, f"metrics unavailable: {obs.metrics_error}"
        record = DecisionRecord(now, t, status.step, status.canary_weight, verdict.value, reason, "")
        return replace(status, last_analysis_at=window_end).with_decision(record), verdict, reason
    observations = {
        s: interval_of(obs.metrics, s, spec.stable.version, spec.canary.version, t, status.canary_weight)
        for s in spec.analysed_services
    }
    judge = make_judge(analysis_config(spec))
    state, decision = judge.update(dict(status.judge_state), observations)
    canary_requests = max((o.canary.requests for o in observations.values()), default=0)
    counts = {s: {"baseline": {"requests": o.baseline.requests, "errors": o.baseline.errors},
                  "canary": {"requests": o.canary.requests, "errors": o.canary.errors}}
              for s, o in observations.items()}
    d = decision.to_dict()
    record = DecisionRecord(now, t, status.step, status.canary_weight, decision.verdict.value,
                            decision.reason, "", tuple(d.get("checks", ())), counts)
    status = replace(
        status, judge_state=state, last_analysis_at=window_end,
        step_canary_requests=status.step_canary_requests + canary_requests,
        total_canary_requests=status.total_canary_requests + canary_requests,
    ).with_decision(record)
    return status, decision.verdict, decision.reason


def note_action(status: ReleaseStatus, action: str) -> ReleaseStatus:
    """Say in the latest decision record what the machine did about it."""
    if not status.history:
        return status
    last = replace(status.history[-1], action=action)
    return replace(status, history=(*status.history[:-1], last))
