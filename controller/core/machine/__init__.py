"""The release state machine: `step(spec, status, observation, now) -> (status, actions)`.

Pure: it reads no clock and calls no network. It is level-triggered: every tick it derives what the
mesh and the workloads should look like from the persisted status, compares with what was observed, and
asks for the difference. So a tick whose actions were lost (a crash after the status was persisted, an
API error) is repaired by the next one, and actions are always safe to repeat.

Phases: Pending -> Initializing -> Progressing (<-> Paused) -> Promoting -> Succeeded, or
-> RollingBack -> RolledBack | Aborted | Failed. Failed also ends a release whose spec is invalid before
it started; an invalid spec on a release in flight holds it where it is (see `invalid_spec`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from analysis.abtest import PrimaryCounts
from analysis.config import AnalysisConfig
from analysis.judges import make_judge
from analysis.observations import Verdict, WindowCounts, interval_of
from controller.core.machine import hooks as hook_points
from controller.core.observation import Readiness
from controller.core.plan import RoutingPlan, ServiceVersions
from controller.core.spec.hooks import HookKind, HookResult, HookSpec
from controller.core.spec.release import InvalidSpec, ReleaseSpec
from controller.core.status import DecisionRecord, Phase, ReleaseStatus

# Ticks come about one interval apart; a window slightly shorter than the interval still counts, so the
# analysis does not skip a beat when the reconciler wakes a little early.
_WINDOW_SLACK = 0.95


@dataclass(frozen=True)
class Observation:
    """What the reconciler saw this tick. None means "not looked at" (or the look failed, see *_error)."""

    readiness: Mapping[str, Readiness] | None = None
    routing: RoutingPlan | None = None
    routing_error: str | None = None
    metrics: WindowCounts | None = None
    metrics_error: str | None = None
    # A/B experiments: the primary metric's counts per version over the same window.
    business: Mapping[str, PrimaryCounts] | None = None
    business_error: str | None = None
    # Answers of the hooks `wants` asked for, by hook name.
    hooks: Mapping[str, HookResult] = field(default_factory=dict)


@dataclass(frozen=True)
class EnsureWorkloads:
    version: str
    services: tuple[str, ...]
    images: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RetireWorkloads:
    version: str
    services: tuple[str, ...]


@dataclass(frozen=True)
class ApplyRouting:
    plan: RoutingPlan


@dataclass(frozen=True)
class Notify:
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class FireHook:
    """Call a hook without waiting for its answer (a load test)."""

    hook: HookSpec


Action = EnsureWorkloads | RetireWorkloads | ApplyRouting | Notify | FireHook


@dataclass(frozen=True)
class Wants:
    """What the reconciler should observe before the next step."""

    readiness: bool
    routing: bool
    metrics_window: tuple[float, float] | None
    hooks: tuple[HookSpec, ...] = ()


# --------------------------------------------------------------------------------------------------
# What the world should look like, derived from spec + status
# --------------------------------------------------------------------------------------------------
def base_plan(spec: ReleaseSpec) -> RoutingPlan:
    return RoutingPlan(
        namespace=spec.namespace,
        entry=spec.stack.entry,
        services=tuple(ServiceVersions(s, spec.stable.version, spec.canary_version_of(s))
                       for s in spec.stack.services),
        canary_weight=0,
        lane_header=spec.lane_header,
        owner=spec.name,
    )


def desired_plan(spec: ReleaseSpec, status: ReleaseStatus) -> RoutingPlan | None:
    """The routes the status calls for.

    Promotion and rollback each change the routes in two stages, so that no request in flight mixes
    versions: first only the entry split moves (100% into the canary lane, or 0%), leaving the lane routes
    of requests already inside the stack untouched; after `drainTime` the subsets are re-pointed
    (stable -> new version) or the canary subsets removed.
    """
    base = base_plan(spec)
    match status.phase:
        case Phase.PENDING:
            return None
        case Phase.INITIALIZING:
            return base
        case Phase.PROGRESSING | Phase.PAUSED if spec.experiment is not None:
            return base.with_experiment(spec.experiment.routes)
        case Phase.PROGRESSING | Phase.PAUSED:
            return base.with_weight(status.canary_weight)
        case Phase.PROMOTING:
            return base.promoted() if status.cutover else base.with_weight(100)
        case Phase.SUCCEEDED:
            return base.promoted()
        case Phase.ROLLING_BACK:
            return base.all_stable() if status.cutover else base.with_weight(0)
        case Phase.FAILED if status.started_at is None:
            return None  # failed before it started (bad spec, a failed preRollout hook): routes untouched
        case _:
            return base.all_stable()


def wants(spec: ReleaseSpec | None, status: ReleaseStatus, now: float) -> Wants:
    if spec is None or status.phase.final:
        return Wants(readiness=False, routing=status.phase is not Phase.PENDING and spec is not None,
                     metrics_window=None, hooks=hook_points.due(spec, status) if spec is not None else ())
    window = None
    if status.phase is Phase.PROGRESSING and status.last_analysis_at is not None \
            and now - status.last_analysis_at >= spec.strategy.interval * _WINDOW_SLACK:
        window = (status.last_analysis_at, now)
    canary_up = status.phase in (Phase.INITIALIZING, Phase.PROGRESSING, Phase.PAUSED)
    return Wants(readiness=canary_up, routing=status.phase is not Phase.PENDING, metrics_window=window,
                 hooks=hook_points.due(spec, status))


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------
def step(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float
         ) -> tuple[ReleaseStatus, list[Action]]:
    actions: list[Action] = []
    if status.observed_generation != spec.generation:
        status = replace(status, observed_generation=spec.generation)
    status = status.with_condition("SpecValid", "True", "Valid", "", now)
    status = _hook_answers(spec, status, obs, now, actions)
    from controller.core.machine import revisions  # restarts (retry, new versions) build on this module's transitions

    status = revisions.begin_tick(spec, status, actions)
    before = status
    status = _transition(spec, status, obs, now, actions)
    actions = _reconcile_world(spec, status, obs) + actions
    actions += [FireHook(h) for h in hook_points.load_tests_to_fire(spec, before, status)]
    return status, actions


def _hook_answers(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float,
                  actions: list[Action]) -> ReleaseStatus:
    """Keep the hooks' answers; announce the failures that change nothing (they are easy to miss)."""
    for failure in hook_points.failures(spec, obs.hooks, (HookKind.ON_ROLLBACK, HookKind.POST_ROLLOUT)):
        actions.append(Notify("HookFailed", failure, warning=True))
    return hook_points.record(status, obs.hooks, now)


def invalid_spec(error: InvalidSpec, status: ReleaseStatus, generation: int, now: float
                 ) -> tuple[ReleaseStatus, list[Action]]:
    """A spec that does not parse: a release not yet started fails; one in flight holds where it is.

    Holding is the safe choice in flight: the last good routes stay in effect (no traffic change) and
    nothing is deployed or removed until the operator fixes the spec, which then resumes the release.
    """
    message = "; ".join(error.problems)
    before = status
    status = replace(status, observed_generation=generation)
    status = status.with_condition("SpecValid", "False", "InvalidSpec", message, now)
    if status.phase is Phase.PENDING:
        status = replace(status.with_phase(Phase.FAILED, now, f"invalid spec: {message}"))
    notify = before.condition("SpecValid") != status.condition("SpecValid")
    return status, [Notify("InvalidSpec", message, warning=True)] if notify else []


def _transition(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float,
                actions: list[Action]) -> ReleaseStatus:
    if spec.abort and not status.phase.final and status.phase is not Phase.ROLLING_BACK:
        return _roll_back(status, now, Phase.ABORTED, "Aborted", "aborted by an operator", actions)
    from controller.core.machine import revisions

    if (overridden := revisions.operator_override(spec, status, now, actions)) is not None:
        return overridden  # promoteFull / skipStep: this tick's window (if any) belonged to the old step
    match status.phase:
        case Phase.PENDING:
            return _start(spec, status, now, actions)
        case Phase.INITIALIZING:
            return _initializing(spec, status, obs, now, actions)
        case Phase.PROGRESSING:
            return _progressing(spec, status, obs, now, actions)
        case Phase.PAUSED:
            return _paused(spec, status, obs, now, actions)
        case Phase.PROMOTING:
            return _promoting(spec, status, obs, now, actions)
        case Phase.ROLLING_BACK:
            return _rolling_back(spec, status, obs, now, actions)
        case _:
            return status


def analysis_config(spec: ReleaseSpec) -> AnalysisConfig:
    """What judges latency and errors: the experiment's guardrails, or the canary's analysis."""
    return spec.experiment.config.guardrails if spec.experiment is not None else spec.analysis


def _start(spec: ReleaseSpec, status: ReleaseStatus, now: float, actions: list[Action]) -> ReleaseStatus:
    gate, why = hook_points.pre_rollout_gate(spec, status)
    if gate == "failed":
        message = f"preRollout hook failed, nothing was deployed: {why}"
        actions.append(Notify("PreRolloutFailed", message, warning=True))
        return status.with_phase(Phase.FAILED, now, message)
    if gate == "waiting":
        return status.with_phase(Phase.PENDING, now, f"waiting for preRollout hooks: {why}")
    judge = make_judge(analysis_config(spec))
    status = replace(status, started_at=now, judge_state=judge.initial_state(services=spec.analysed_services))
    actions.append(Notify("Initializing", f"deploying {spec.canary.version} of {', '.join(spec.changed)} "
                                          f"beside {spec.stable.version}"))
    return status.with_phase(Phase.INITIALIZING, now, "waiting for the new version to become ready")


def _initializing(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float,
                  actions: list[Action]) -> ReleaseStatus:
    readiness = obs.readiness or {}
    broken = {s: r for s, r in readiness.items() if r.failed}
    if broken:
        why = "; ".join(f"{s}: {r.reason}" for s, r in broken.items())
        return _roll_back(status, now, Phase.FAILED, "CanaryFailed", f"new version cannot start: {why}", actions)
    missing = [s for s in spec.changed if s in readiness and not readiness[s].exists]
    if missing:
        # Not created yet (the controller was down, or this is the tick that creates them): the progress
        # deadline starts once every workload exists, so controller downtime never fails a release.
        status = replace(status, phase_since=now)
        return status.with_phase(Phase.INITIALIZING, now, f"creating {', '.join(missing)}")
    waited = now - (status.phase_since or now)
    not_ready = [s for s in spec.changed if not readiness.get(s, Readiness(False)).ready]
    if not_ready:
        if waited > spec.progress_deadline:
            return _roll_back(status, now, Phase.FAILED, "ProgressDeadlineExceeded",
                              f"{', '.join(not_ready)} not ready after {waited:.0f}s "
                              f"(progressDeadline {spec.progress_deadline:.0f}s)", actions)
        return status.with_phase(Phase.INITIALIZING, now, f"waiting for {', '.join(not_ready)} to become ready")
    actions.append(Notify("Initialized", f"{spec.canary.version} is ready on {', '.join(spec.changed)}"))
    if spec.experiment is not None:
        from controller.core.machine import (
            experiment as experiment_machine,  # the experiment builds on this module's transitions
        )

        return experiment_machine.start(spec, status, now, actions)
    return _enter_step(spec, status, 0, now, actions)


def _enter_step(spec: ReleaseSpec, status: ReleaseStatus, index: int, now: float,
                actions: list[Action]) -> ReleaseStatus:
    weight = spec.strategy.steps[index]
    actions.append(Notify("WeightIncreased", f"step {index + 1}/{len(spec.strategy.steps)}: "
                                             f"{weight}% of traffic in the canary lane"))
    # The next window opens once the new weight has settled (see CanaryStrategy.settle): traffic of the
    # old weight in between is left out rather than judged against the new weight.
    status = replace(
        status, step=index, canary_weight=weight, step_started_at=now, step_canary_requests=0,
        last_analysis_at=now + spec.strategy.settle,
        first_canary_traffic_at=status.first_canary_traffic_at or now,
    )
    return status.with_phase(Phase.PROGRESSING, now, f"analysing step {index + 1} at {weight}%")


def _progressing(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float,
                 actions: list[Action]) -> ReleaseStatus:
    if obs.readiness is not None:
        lost = [s for s in spec.changed if not obs.readiness.get(s, Readiness(False)).ready]
        if lost:
            return _roll_back(status, now, Phase.ROLLED_BACK, "CanaryNotReady",
                              f"canary of {', '.join(lost)} is no longer ready", actions, decided=True)
    plan = desired_plan(spec, status)
    if obs.routing_error is None and plan is not None and not plan.equivalent(obs.routing):
        # The step's weight is not in effect (its write failed, or the controller died before it): the
        # next window opens `settle` after it is, and a window observed now, judged against a weight the
        # mesh does not have, is dropped (as `_drained` waits for the read-back at promotion and rollback).
        status = replace(status, last_analysis_at=max(status.last_analysis_at or now, now + spec.strategy.settle))
        if obs.metrics is not None or obs.metrics_error is not None:
            return status
    if obs.metrics is None and obs.metrics_error is None:
        if spec.paused:
            actions.append(Notify("Paused", "paused by an operator"))
            return status.with_phase(Phase.PAUSED, now, "paused by an operator")
        return status
    if spec.experiment is not None:
        from controller.core.machine import experiment as experiment_machine

        return experiment_machine.look(spec, status, obs, now, actions)
    status, verdict, reason = _analyse(spec, status, obs, now)
    return _act_on_verdict(spec, status, verdict, reason, now, actions)


def _analyse(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float
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


def _note_action(status: ReleaseStatus, action: str) -> ReleaseStatus:
    if not status.history:
        return status
    last = replace(status.history[-1], action=action)
    return replace(status, history=(*status.history[:-1], last))


def _act_on_verdict(spec: ReleaseSpec, status: ReleaseStatus, verdict: Verdict, reason: str, now: float,
                    actions: list[Action]) -> ReleaseStatus:
    strategy, policies = spec.strategy, spec.policies
    if verdict is Verdict.FAIL:
        status = _note_action(status, "roll back")
        return _roll_back(status, now, Phase.ROLLED_BACK, "AnalysisFailed", reason, actions, decided=True)
    if verdict is Verdict.ERROR:
        errors = status.consecutive_errors + 1
        status = replace(status, consecutive_errors=errors)
        if errors >= policies.rollback_after_errors:
            status = _note_action(status, "roll back")
            return _roll_back(status, now, Phase.ROLLED_BACK, "AnalysisError",
                              f"{errors} analysis errors in a row; last: {reason}", actions, decided=True)
        actions.append(Notify("AnalysisError", f"holding at {status.canary_weight}% "
                                               f"({errors}/{policies.rollback_after_errors}): {reason}", True))
        return _note_action(status, "hold")
    status = replace(status, consecutive_errors=0)
    enough = status.step_canary_requests >= strategy.min_canary_requests
    if verdict is Verdict.PASS and enough:
        return _advance(spec, status, now, actions)
    overdue = now - (status.step_started_at or now) >= strategy.step_deadline
    if not overdue:
        return _note_action(status, "wait")
    why = reason if verdict is Verdict.INCONCLUSIVE else (
        f"{status.step_canary_requests} canary requests at this step, fewer than {strategy.min_canary_requests}")
    match policies.on_inconclusive:
        case "rollback":
            status = _note_action(status, "roll back")
            return _roll_back(status, now, Phase.ROLLED_BACK, "AnalysisInconclusive",
                              f"no pass by the step deadline: {why}", actions, decided=True)
        case "continue":
            actions.append(Notify("AnalysisInconclusive", f"continuing without a pass: {why}", True))
            return _advance(spec, status, now, actions)
        case _:
            analysis = status.condition("Analysis")
            if analysis is None or analysis.reason != "Inconclusive":
                actions.append(Notify("AnalysisInconclusive", f"holding at {status.canary_weight}%: {why}", True))
            status = status.with_condition("Analysis", "Unknown", "Inconclusive", why, now)
            return _note_action(status, "hold")


def _advance(spec: ReleaseSpec, status: ReleaseStatus, now: float, actions: list[Action]) -> ReleaseStatus:
    status = status.with_condition("Analysis", "True", "Passed", f"step {status.step + 1} passed", now)
    if status.step + 1 < len(spec.strategy.steps):
        status = _note_action(status, "next step")
        return _enter_step(spec, status, status.step + 1, now, actions)
    status = _note_action(status, "promote")
    return _promote_or_gate(spec, status, now, actions)


def _promote_or_gate(spec: ReleaseSpec, status: ReleaseStatus, now: float, actions: list[Action]
                     ) -> ReleaseStatus:
    if spec.policies.manual_gate and not spec.approve_promotion:
        if status.phase is not Phase.PAUSED:
            actions.append(Notify("AwaitingPromotion", "analysis passed; waiting for an operator to approve "
                                                       "promotion (spec.approvePromotion)"))
        status = status.with_condition("Paused", "True", "AwaitingPromotion", "manual gate", now)
        return status.with_phase(Phase.PAUSED, now, "analysis passed; awaiting approval to promote")
    confirmed, why = hook_points.confirmation_gate(spec, status)
    if not confirmed:
        gate = status.condition("Paused")
        if gate is None or gate.reason != hook_points.AWAITING_CONFIRMATION:
            actions.append(Notify(hook_points.AWAITING_CONFIRMATION,
                                  "analysis passed; waiting for the confirmPromotion hooks to answer 200"))
        status = status.with_condition("Paused", "True", hook_points.AWAITING_CONFIRMATION, "confirmPromotion hooks",
                                       now)
        return status.with_phase(Phase.PAUSED, now, f"analysis passed; waiting for confirmation: {why}")
    actions.append(Notify("Promoting", f"{spec.canary.version} becomes stable for {', '.join(spec.changed)}"))
    status = replace(status, decided_at=status.decided_at or now, canary_weight=100, cutover=False,
                     stage_since=None)
    status = status.with_condition("Paused", "False", "Promoting", "", now)
    return status.with_phase(Phase.PROMOTING, now, "stable now points at the new version")


def _paused(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float,
            actions: list[Action]) -> ReleaseStatus:
    gate = status.condition("Paused")
    if gate is not None and gate.status == "True" and gate.reason == "AwaitingPromotion":
        return _promote_or_gate(spec, status, now, actions) if spec.approve_promotion else status
    if hook_points.awaiting_confirmation(status):
        return _promote_or_gate(spec, status, now, actions)
    if spec.paused:
        return status
    actions.append(Notify("Resumed", "resumed by an operator"))
    status = status.with_condition("Paused", "False", "Resumed", "", now)
    return status.with_phase(Phase.PROGRESSING, now, f"analysing step {status.step + 1} at {status.canary_weight}%")


def _drained(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> ReleaseStatus | None:
    """Stage one of a promotion or rollback: once its routes read back, wait `drainTime`, then cut over.

    Returns the status to carry on with, or None while the routes are not yet in effect.
    """
    plan = desired_plan(spec, status)
    if plan is None or not plan.equivalent(obs.routing):
        return None
    since = status.stage_since or now
    if now - since < spec.drain_time:
        return replace(status, stage_since=since)
    return replace(status, cutover=True, stage_since=now)


def _promoting(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float,
               actions: list[Action]) -> ReleaseStatus:
    if not status.cutover:
        return _drained(spec, status, obs, now) or status
    if not base_plan(spec).promoted().equivalent(obs.routing):
        return status
    if now - (status.stage_since or now) < spec.scale_down_delay:
        return status.with_phase(Phase.PROMOTING, now, "promoted; waiting to scale the old version down")
    actions.append(Notify("Promoted", f"{spec.canary.version} serves all traffic for {', '.join(spec.changed)}"))
    return replace(status, canary_weight=0).with_phase(Phase.SUCCEEDED, now, f"promoted {spec.canary.version}")


def _roll_back(status: ReleaseStatus, now: float, ending: Phase, reason: str, message: str,
               actions: list[Action], decided: bool = False) -> ReleaseStatus:
    actions.append(Notify(reason, f"rolling back: {message}", warning=True))
    status = replace(status, canary_weight=0, ending=ending.value, cutover=False, stage_since=None,
                     decided_at=(status.decided_at or now) if decided else status.decided_at)
    status = status.with_condition("Analysis" if reason.startswith("Analysis") else "Release", "False",
                                   reason, message, now)
    return status.with_phase(Phase.ROLLING_BACK, now, message)


def _rolling_back(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float,
                  actions: list[Action]) -> ReleaseStatus:
    if not status.cutover:
        drained = _drained(spec, status, obs, now)
        if drained is None:
            return status
        # The mesh reads back 0% into the canary lane: no new request reaches the canary from here on.
        return replace(drained, canary_off_at=status.canary_off_at or now)
    if not base_plan(spec).all_stable().equivalent(obs.routing):
        return status
    ending = Phase(status.ending or Phase.ROLLED_BACK.value)
    actions.append(Notify("RolledBack" if ending is Phase.ROLLED_BACK else ending.value,
                          f"all traffic on {spec.stable.version}; {status.message}", warning=True))
    return status.with_phase(ending, now, status.message)


def _reconcile_world(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation) -> list[Action]:
    """The idempotent actions that make the world match the status (repeated every tick)."""
    actions: list[Action] = []
    canary_images = {s: i for s, i in spec.canary.images.items() if s in spec.changed}
    phase = status.phase
    if phase in (Phase.INITIALIZING, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING):
        actions.append(EnsureWorkloads(spec.canary.version, spec.changed, canary_images))
    plan = desired_plan(spec, status)
    if plan is not None and not plan.equivalent(obs.routing) and obs.routing_error is None:
        actions.append(ApplyRouting(plan))
    elif plan is not None and obs.routing_error is not None:
        # The read failed: write anyway, since writes are idempotent and the mesh may be wrong.
        actions.append(ApplyRouting(plan))
    if phase is Phase.SUCCEEDED:
        actions.append(RetireWorkloads(spec.stable.version, spec.changed))
    if phase in (Phase.ROLLED_BACK, Phase.ABORTED) or (phase is Phase.FAILED and status.started_at):
        actions.append(RetireWorkloads(spec.canary.version, spec.changed))
    return actions + _variant_workloads(spec, status)


def _variant_workloads(spec: ReleaseSpec, status: ReleaseStatus) -> list[Action]:
    """A/B/n: the experiment's variants beyond the canary run while the canary does (same services, their
    own images) and are retired once the release has ended, whichever way it ended."""
    extra = spec.experiment.extra if spec.experiment is not None else ()
    if status.phase in (Phase.INITIALIZING, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING):
        return [EnsureWorkloads(v.version, spec.changed, {s: i for s, i in v.images.items() if s in spec.changed})
                for v in extra]
    if status.phase.final and status.started_at:
        return [RetireWorkloads(v.version, spec.changed) for v in extra]
    return []


def summary(status: ReleaseStatus) -> dict[str, Any]:
    """The headline numbers of a release, for CLIs and the demo's summary."""
    decision_seconds = off_seconds = None
    if status.decided_at is not None and status.first_canary_traffic_at is not None:
        decision_seconds = status.decided_at - status.first_canary_traffic_at
    if status.canary_off_at is not None and status.first_canary_traffic_at is not None:
        off_seconds = status.canary_off_at - status.first_canary_traffic_at
    return {
        "phase": status.phase.value,
        "step": status.step,
        "canary_weight": status.canary_weight,
        "last_verdict": status.last_verdict,
        "decision_seconds": decision_seconds,
        # From the canary's first traffic until the mesh read back 0% into the canary lane.
        "canary_off_seconds": off_seconds,
        "canary_requests": status.total_canary_requests,
        "message": status.message,
    } | ({"experiment": dict(status.experiment)} if status.experiment is not None else {})
