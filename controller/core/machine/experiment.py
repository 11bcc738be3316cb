"""The A/B experiment's transitions inside the release state machine (pure, like the rest of the machine).

An experiment reuses the release phases: Initializing (the new version starts) -> Progressing (the
experiment runs: users are assigned to variants, each interval is judged) -> Promoting/Succeeded (the
winner becomes stable) or RollingBack/RolledBack (stable stays), or Paused (waiting for an operator).

Each look, in order:
1. guardrails (latency, errors) through the sequential judge, every treatment against stable, per service
   (the canary's judge state in `status.judgeState`, each further A/B/n variant's in
   `status.experimentState["guardrails"][variant]`): `fail` on any variant stops the whole experiment at
   once (that variant is harmful to users) and rolls it back;
2. the primary metric through `analysis.abtest.ab_update` (a confidence sequence per comparison, SRM on
   assigned users when the source knows them);
3. `harmful` rolls back; `winner` / `no_difference` (the analysis applies the minimum duration) or the
   maximum duration end the experiment with the spec's `onEnd`: keepStable, promoteWinner or
   waitForOperator. `error`s (metrics or business source down, SRM) count towards
   `policies.rollbackAfterErrors`, like the canary's.
Every look is one `DecisionRecord` in `status.history` (the canary's guardrail checks, the other
variants' guardrail verdicts in `counts["guardrails"]` and their requests per service in
`counts[service]["variants"]`, the primary metric's look in `counts["primary"]`, whose `decision` is the
experiment's at that look: what the views show as the look's verdict, the record's `verdict` being the
guardrails') and the latest result is `status.experiment`.

Only `spec.canary` can be promoted (the release re-points stable at it): when another A/B/n variant wins,
`promoteWinner` keeps stable and says which variant won (release it next), and `waitForOperator` says
that approving promotes `spec.canary`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from analysis.abtest import ABDecision, ABResult, VariantComparison, ab_initial_state, ab_update
from analysis.decisions import json_clean
from analysis.judges import make_judge
from analysis.observations import Verdict, WindowCounts, interval_of
from controller.core.machine.actions import Notify, Outcome
from controller.core.machine.analysing import analyse, note_action
from controller.core.machine.moves import promote_or_gate, roll_back
from controller.core.observation import Observation
from controller.core.spec.experiment import ExperimentSpec
from controller.core.spec.release import ReleaseSpec
from controller.core.status import Phase, ReleaseStatus

__all__ = ["look", "result_dict", "start"]


def _experiment(spec: ReleaseSpec) -> ExperimentSpec:
    if spec.experiment is None:
        raise ValueError("not an experiment")
    return spec.experiment


def start(spec: ReleaseSpec, status: ReleaseStatus, now: float) -> Outcome:
    """The new version is ready: put the experiment's routes in effect and start the clock."""
    exp = _experiment(spec)
    arms = ", ".join(f"{a.name} {a.weight}%" for a in exp.routes.arms)
    notice = Notify("ExperimentStarted", f"A/B experiment on {exp.config.primary.name}: {arms}")
    state = status.experiment_state or ab_initial_state(exp.config)
    if exp.extra and "guardrails" not in state:
        judge = make_judge(exp.config.guardrails)
        state = {**state, "guardrails": {v.version: judge.initial_state(services=spec.analysed_services)
                                         for v in exp.extra}}
    # The canary's guardrails judge it against stable alone: its intended share is that of the pair. No
    # window yet: the routes are written after this status is persisted; the first look opens max(settle, warmup)
    # after a tick reads them back in effect (`phases._progressing`).
    status = replace(
        status, step=0, canary_weight=pair_share(exp, exp.treatment), step_started_at=now, step_canary_requests=0,
        last_analysis_at=None, first_canary_traffic_at=status.first_canary_traffic_at or now,
        experiment_state=state,
    )
    return Outcome(status.with_phase(Phase.PROGRESSING, now, f"experiment running ({arms})"), (notice,))


def pair_share(exp: ExperimentSpec, variant: str) -> int:
    """The variant's intended share, in percent, of the traffic of the pair (variant, control)."""
    w_v, w_c = exp.config.weight_of(variant), exp.config.weight_of(exp.config.control)
    return round(100 * w_v / (w_v + w_c)) if w_v + w_c > 0 else 0


def look(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> Outcome:
    """One analysis window of a running experiment: guardrails, then the primary metric, then act."""
    exp = _experiment(spec)
    status, verdict, reason = analyse(spec, status, obs, now)
    if verdict in (Verdict.PASS, Verdict.INCONCLUSIVE):
        reason = NO_HARM
    status = _guardrails_said(status, verdict, reason)
    harmful = spec.canary.version if verdict is Verdict.FAIL else None
    if exp.extra and verdict is not Verdict.FAIL:
        status, verdict, reason, harmful = _extra_guardrails(spec, status, obs, now, verdict, reason)
    if verdict is Verdict.FAIL:
        status = _with_primary(status, None, "stopped by a guardrail", ABDecision.HARMFUL)
        status = note_action(status, "stop experiment, roll back")
        status = replace(status, experiment={**(status.experiment or {}), "decision": ABDecision.HARMFUL.value,
                                             "stoppedBy": "guardrail", "harmful": harmful, "reason": reason})
        return roll_back(status, now, Phase.ROLLED_BACK, "AnalysisFailed",
                         f"{harmful} fails a guardrail: {reason}", decided=True)
    if verdict is Verdict.ERROR:
        return _error(spec, status, reason, now)
    if obs.business is None:
        status = _with_primary(status, None, f"business metrics unavailable: {obs.business_error}")
        return _error(spec, status, f"business metrics unavailable: {obs.business_error}", now)
    elapsed = now - (status.step_started_at or now)
    state, result = ab_update(dict(status.experiment_state or ab_initial_state(exp.config)),
                              dict(obs.business), elapsed)
    result = _at_max_duration(result, exp, elapsed)
    status = replace(status, experiment_state=state, experiment=result_dict(result, exp, elapsed))
    status = _with_primary(status, result, result.reason)
    return _act(spec, status, result, now)


def _at_max_duration(result: ABResult, exp: ExperimentSpec, elapsed: float) -> ABResult:
    """The look's result once the spec's `maxDuration` is over: no decision yet is `no_difference`. The statistics
    end at the maximum duration frozen in their state when the experiment started (`ab_initial_state`), which is
    the spec's unless the spec changed since."""
    if result.decision is not ABDecision.CONTINUE or elapsed < exp.config.max_duration_s:
        return result
    return replace(result, decision=ABDecision.NO_DIFFERENCE, reason=f"maximum duration reached: {result.reason}")


def _extra_guardrails(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float, verdict: Verdict,
                      reason: str) -> tuple[ReleaseStatus, Verdict, str, str | None]:
    """A/B/n: the guardrails of every variant beyond the canary, each against stable with its own judge
    state; folded into the look's record (worst verdict, reasons appended, `counts["guardrails"]`, and each
    variant's requests and errors per service beside the control's and the canary's:
    `counts[service]["variants"][version]`)."""
    exp = _experiment(spec)
    if obs.metrics is None:
        return status, verdict, reason, None  # `analyse` recorded the outage already
    missing = [v.version for v in exp.extra if _not_counted(obs.metrics, spec.analysed_services, v.version)]
    if missing:
        why = (f"the metrics source did not count version(s) {', '.join(missing)} (the query must cover every "
               f"variant: {', '.join(exp.versions)})")
        return _merge_record(status, Verdict.ERROR, why, {}), Verdict.ERROR, f"{reason}; {why}", None
    judge = make_judge(exp.config.guardrails)
    state = dict(status.experiment_state or {})
    states = dict(state.get("guardrails") or {})
    t = now - (status.started_at or now)
    verdicts: dict[str, dict[str, Any]] = {}
    traffic: dict[str, dict[str, dict[str, int]]] = {s: {} for s in spec.analysed_services}
    worst, harmful, harmful_reason, reasons = verdict, None, "", [reason]
    for v in exp.extra:
        observations = {s: interval_of(obs.metrics, s, spec.stable_version_of(s), v.version, t,
                                    pair_share(exp, v.version)) for s in spec.analysed_services}
        for s, o in observations.items():
            traffic[s][v.version] = {"requests": o.canary.requests, "errors": o.canary.errors}
        initial = states.get(v.version) or judge.initial_state(services=spec.analysed_services)
        states[v.version], decision = judge.update(dict(initial), observations)
        verdicts[v.version] = {"verdict": decision.verdict.value, "reason": decision.reason}
        reasons.append(f"{v.version}: {_said(decision.verdict, decision.reason)}")
        if _SEVERITY[decision.verdict] > _SEVERITY[worst]:
            worst = decision.verdict
        if decision.verdict is Verdict.FAIL and harmful is None:
            harmful, harmful_reason = v.version, decision.reason
    status = replace(status, experiment_state={**state, "guardrails": states})
    merged = "; ".join(reasons)
    status = _merge_record(status, worst, merged, verdicts, traffic)
    return status, worst, harmful_reason if harmful else merged, harmful


_SEVERITY = {Verdict.PASS: 0, Verdict.INCONCLUSIVE: 1, Verdict.ERROR: 2, Verdict.FAIL: 3}
# An experiment's guardrails stop it on harm only: a look without harm says so, not a canary's "not yet shown
# safe ... about 7 min at the current rate" (an experiment never waits for its guardrails to show safety).
NO_HARM = "guardrails: no harm shown"


def _said(verdict: Verdict, reason: str) -> str:
    """The guardrails' reason in a look's record: `NO_HARM`, or the harm they found, said to be theirs
    ("guardrails: errorRate worse on ..."): the look's verdict is the experiment's decision (`_with_primary`:
    `harmful`), so its reason says what stopped it. An error's reason stays as the judge gave it ("metrics
    unavailable: ...", which the controller's own metrics count by)."""
    if verdict in (Verdict.PASS, Verdict.INCONCLUSIVE):
        return NO_HARM
    return f"guardrails: {reason}" if verdict is Verdict.FAIL else reason


def _guardrails_said(status: ReleaseStatus, verdict: Verdict, reason: str) -> ReleaseStatus:
    """The look's record with the guardrails' reason as an experiment reads it (`_said`)."""
    if not status.history:
        return status
    last = status.history[-1]
    return replace(status, history=(*status.history[:-1], replace(last, reason=_said(verdict, reason))))


def _not_counted(window: WindowCounts, services: tuple[str, ...], version: str) -> bool:
    """No (service, version) pair was asked for: neither counted nor reported absent."""
    return all((s, version) not in window.counts and (s, version) not in window.absent for s in services)


def _merge_record(status: ReleaseStatus, verdict: Verdict, reason: str, verdicts: dict[str, Any],
                  traffic: Mapping[str, Mapping[str, Any]] | None = None) -> ReleaseStatus:
    if not status.history:
        return status
    last = status.history[-1]
    counts = {**last.counts, "guardrails": verdicts}
    for service, variants in (traffic or {}).items():
        if isinstance(counts.get(service), Mapping):
            counts[service] = {**counts[service], "variants": dict(variants)}
    merged = replace(last, verdict=verdict.value, reason=reason, counts=counts)
    return replace(status, history=(*status.history[:-1], merged), last_verdict=merged.verdict)


def _error(spec: ReleaseSpec, status: ReleaseStatus, reason: str, now: float) -> Outcome:
    errors = status.consecutive_errors + 1
    status = replace(status, consecutive_errors=errors)
    if errors >= spec.policies.rollback_after_errors:
        status = note_action(status, "stop experiment, roll back")
        return roll_back(status, now, Phase.ROLLED_BACK, "AnalysisError",
                         f"{errors} analysis errors in a row; last: {reason}", decided=True)
    notice = Notify("AnalysisError", f"experiment holding ({errors}/{spec.policies.rollback_after_errors})"
                                     f": {reason}", True)
    return Outcome(note_action(status, "hold"), (notice,))


def _act(spec: ReleaseSpec, status: ReleaseStatus, result: ABResult, now: float) -> Outcome:
    if result.decision is ABDecision.ERROR:
        return _error(spec, status, result.reason, now)
    status = replace(status, consecutive_errors=0)
    if result.decision is ABDecision.HARMFUL:
        status = note_action(status, "stop experiment, roll back")
        return roll_back(status, now, Phase.ROLLED_BACK, "ExperimentHarmful", result.reason, decided=True)
    if result.decision is ABDecision.CONTINUE:
        return Outcome(note_action(status, "continue"))
    return _end(spec, status, result.decision, result.winner, result.reason, now)


def _end(spec: ReleaseSpec, status: ReleaseStatus, decision: ABDecision, winner: str | None, reason: str,
         now: float) -> Outcome:
    exp = _experiment(spec)
    status = replace(status, decided_at=status.decided_at or now)
    ended = Notify("ExperimentEnded", f"{decision.value}: {reason}")
    treatment_won = winner == exp.treatment
    other_won = "" if winner is None or treatment_won else (
        f"; the winner {winner} is not spec.canary ({spec.canary.version}): release {winner} to promote it")
    match exp.config.on_end:
        case "promoteWinner" if treatment_won:
            status = note_action(status, f"promote {winner}")
            return promote_or_gate(spec, status, now).after(ended)
        case "waitForOperator":
            status = note_action(status, "wait for an operator")
            waiting = Notify("AwaitingPromotion", "experiment ended; set spec.approvePromotion to promote "
                                                  f"{spec.canary.version}, or spec.abort to keep stable{other_won}")
            status = status.with_condition("Paused", "True", "AwaitingPromotion", "experiment ended", now)
            return Outcome(status.with_phase(Phase.PAUSED, now, f"experiment ended ({decision.value}); "
                                                                "awaiting an operator"), (ended, waiting))
        case _:
            status = note_action(status, f"keep {spec.stable_described()}")
            return roll_back(status, now, Phase.ROLLED_BACK, "ExperimentEnded",
                             f"experiment ended ({decision.value}): {reason}; keeping {spec.stable_described()}"
                             f"{other_won}", decided=True).after(ended)


def _with_primary(status: ReleaseStatus, result: ABResult | None, reason: str,
                  decision: ABDecision | None = None) -> ReleaseStatus:
    """Add the primary metric's look to the interval's decision record.

    It goes in `counts["primary"]`, not among the `checks`: those are per-service guardrail checks, which
    the CLI and the report draw per service; the look's reason is appended to the record's reason. Its
    `decision` is the experiment's at this look (`decision`, else the result's, else `error`: the metric
    could not be read), which the views show as the look's verdict; the record's `verdict` stays the
    guardrails' (`fail` or `error` also when the primary metric finds harm or cannot be read).
    """
    if not status.history:
        return status
    last = status.history[-1]
    decided = decision or (result.decision if result else ABDecision.ERROR)
    primary: dict[str, Any] = {"decision": decided.value, "reason": reason}
    if result is not None:
        primary.update({"samples": dict(result.samples),
                        "comparisons": [c.to_dict() for c in result.comparisons]})
    merged = replace(last, counts={**last.counts, "primary": primary}, reason=f"{last.reason}; primary: {reason}")
    if last.verdict == Verdict.FAIL.value:
        pass  # a guardrail's `fail` stays the record's verdict
    elif decided is ABDecision.ERROR:
        merged = replace(merged, verdict="error")
    elif decided is ABDecision.HARMFUL:
        merged = replace(merged, verdict="fail")
    return replace(status, history=(*status.history[:-1], merged), last_verdict=merged.verdict)


def result_dict(result: ABResult, exp: ExperimentSpec, elapsed: float) -> dict[str, Any]:
    """The experiment's result for `status.experiment`, the CLI and the demo summary.

    `effect` is the winner's (or, without a winner, the promotable treatment's) difference from the control
    with its anytime-valid confidence interval (at the per-comparison alpha); `comparisons` has every
    treatment's, A/B/n included."""
    shown = result.winner or exp.treatment
    comparison = result.comparison(shown)
    ended = result.decision is not ABDecision.CONTINUE
    stopped_by = ("maxDuration" if elapsed >= exp.config.max_duration_s else "primary") if ended else None
    out = {
        "decision": result.decision.value,
        "reason": result.reason,
        "winner": result.winner,
        "metric": result.metric,
        "control": result.control,
        "treatment": shown,
        "effect": _effect(comparison),
        "comparisons": {c.variant: {**_effect(c), "verdict": c.verdict, "sampleRatio": {
            "eValue": c.srm_e_value, "share": c.share, "intendedShare": c.intended_share}}
            for c in result.comparisons},
        "alphaPerComparison": result.alpha_each,
        "rates": {result.control: comparison.control_mean, **{c.variant: c.mean for c in result.comparisons}},
        "samples": dict(result.samples),
        # What the intervals treat as independent: users (their per-user totals), or every sample.
        "unit": result.unit,
        "users": None if comparison.users is None else {
            result.control: comparison.control_users, **{c.variant: c.users for c in result.comparisons}},
        "durationSeconds": elapsed,
        "looks": result.looks,
        "stoppedBy": stopped_by,
    }
    return json_clean(out)  # type: ignore[no-any-return]  # infinite interval ends become null


def _effect(c: VariantComparison) -> dict[str, Any]:
    return {"difference": c.difference, "interval": list(c.difference_cs), "ratio": c.ratio,
            "ratioInterval": list(c.ratio_cs)}
