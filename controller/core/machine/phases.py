"""The canary release's phase transitions: one function per phase, and `transition` that picks it.

Pending -> Initializing (-> Shadowing) -> Progressing (<-> Paused) -> Promoting -> Succeeded, or -> RollingBack ->
RolledBack | Aborted | Failed. An experiment shares the phases and hands its looks to `experiment`; an
abort and the operator's overrides (`revisions.operator_override`) go before the phase's own transition.
Each transition returns an `Outcome`: the new status and the actions it decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from analysis.judges import make_judge
from analysis.observations import Verdict
from controller.core.machine.actions import Notify, Outcome
from controller.core.machine.analysing import analyse_window, analysis_config, note_action, prime_judge
from controller.core.machine.capacity import check_capacity
from controller.core.machine.experiment import look as look_at_experiment
from controller.core.machine.experiment import start as start_experiment
from controller.core.machine.hooks import awaiting_confirmation, pre_rollout_gate
from controller.core.machine.moves import (
    apply_step_weight,
    enter_step,
    first_step,
    hold_inconclusive,
    promote_or_gate,
    roll_back,
)
from controller.core.machine.revisions import operator_override
from controller.core.machine.routes import base_plan, desired_plan
from controller.core.machine.shadowing import begin as begin_shadow
from controller.core.machine.shadowing import transition as shadow_transition
from controller.core.observation import Observation, Readiness
from controller.core.spec.release import ReleaseSpec
from controller.core.status import Phase, ReleaseStatus, main_and_own

# The most a promotion's or rollback's drain waits beyond `drainTime` for requests still in flight on the lane
# it retires (a canary that answers in more than a minute is not served by waiting longer).
IN_FLIGHT_WAIT_S = 60.0
# The condition that shows a drain waiting for requests in flight, and how it ended (`_drained`).
DRAINED = "Drained"


def transition(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> Outcome:
    if spec.abort and not status.phase.final and status.phase is not Phase.ROLLING_BACK:
        return roll_back(status, now, Phase.ABORTED, "Aborted", "aborted by an operator")
    if (overridden := operator_override(spec, status, now)) is not None:
        return overridden  # promoteFull / skipStep: this tick's window (if any) belonged to the old step
    match status.phase:
        case Phase.PENDING:
            return _start(spec, status, obs, now)
        case Phase.INITIALIZING:
            return _initializing(spec, status, obs, now)
        case Phase.SHADOWING:
            return shadow_transition(spec, status, obs, now)
        case Phase.PROGRESSING:
            return _progressing(spec, status, obs, now)
        case Phase.PAUSED:
            return _paused(spec, status, now)
        case Phase.PROMOTING:
            return _promoting(spec, status, obs, now)
        case Phase.ROLLING_BACK:
            return _rolling_back(spec, status, obs, now)
        case _:
            return Outcome(status)


# The condition of a release that waits to start because its stable version serves nothing (`_stable_not_serving`).
STABLE_SERVING = "StableServing"


def _stable_not_serving(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> Outcome | None:
    """Wait in Pending while a service's stable version serves nothing there: its workload exists with no pod
    ready (the version an earlier release promoted from, scaled to 0), or does not exist while another version of
    the service has pods ready (a stack an earlier release changed in part). The first routes would point every
    stable request of that service at it. A workload not found and no other version seen, or readiness not read,
    is not judged here."""
    idle = {s: r for s, r in (obs.stable or {}).items() if (r.exists and r.lost) or (not r.exists and r.others_ready)}
    if not idle:
        return None
    condition = status.condition(STABLE_SERVING)
    message = _stable_not_serving_message(spec, idle)
    reason = "OtherVersionServes" if any(r.others_ready for r in idle.values()) else "NoReadyPods"
    new = status.with_condition(STABLE_SERVING, "False", reason, message, now)
    notices = (Notify("StableNotServing", message, warning=True),) if new.condition(STABLE_SERVING) != condition \
        else ()
    return Outcome(new.with_phase(Phase.PENDING, now, message), notices)


def _stable_not_serving_message(spec: ReleaseSpec, idle: Mapping[str, Readiness]) -> str:
    """What serves nothing, and the spec that would describe what serves: `spec.stable.versions` for the
    services another version serves, else the stable version scaled up."""
    why = "; ".join(r.reason for r in idle.values())
    head = f"not started: the release's routes would send the stable traffic of {', '.join(idle)} to " + (
        f"{spec.stable_version_of(next(iter(idle)))}, which serves no request there ({why})" if
        len(set(spec.stable_versions(tuple(idle)))) == 1 else f"versions that serve no request there ({why})")
    serving = {s: r.others_ready[0] for s, r in idle.items() if r.others_ready}
    if not serving:
        versions = "/".join(spec.stable_versions(tuple(idle)))
        return f"{head}: set spec.stable.version to the version serving now, or scale {versions} up"
    found = ", ".join(f"{s} {v}" for s, v in serving.items())
    runs = {s: serving.get(s, spec.stable_version_of(s)) for s in spec.stack.services}
    # Most services' version; an experiment's is its entry's, its control.
    main, own = main_and_own(runs, runs[spec.stack.entry] if spec.experiment is not None else None)
    listed = ", ".join(f"{s}: {v}" for s, v in own.items())
    wanted = f"{{version: {main}, versions: {{{listed}}}}}" if own else f"{{version: {main}}}"
    return f"{head}; pods of {found} are ready: set spec.stable to what each service runs, {wanted}"


def _stable_serving_again(status: ReleaseStatus, now: float) -> ReleaseStatus:
    waited = status.condition(STABLE_SERVING)
    if waited is None or waited.status == "True":
        return status
    return status.with_condition(STABLE_SERVING, "True", "Serving", "the stable version serves every service", now)


def _start(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> Outcome:
    waiting = _stable_not_serving(spec, status, obs, now)
    if waiting is not None:
        return waiting
    status = _stable_serving_again(status, now)
    gate, why = pre_rollout_gate(spec, status)
    if gate == "failed":
        message = f"preRollout hook failed, nothing was deployed: {why}"
        return Outcome(status.with_phase(Phase.FAILED, now, message),
                       (Notify("PreRolloutFailed", message, warning=True),))
    if gate == "waiting":
        return Outcome(status.with_phase(Phase.PENDING, now, f"waiting for preRollout hooks: {why}"))
    judge = make_judge(analysis_config(spec))
    # The new version starts at the size the first step needs, so that step's weight can move at once.
    first = None if spec.experiment is not None else spec.strategy.steps[0]
    status = replace(status, started_at=now, judge_state=judge.initial_state(services=spec.analysed_services),
                     scaling_to=first, pod_warmup=False)
    notice = Notify("Initializing", f"deploying {spec.canary.version} of {', '.join(spec.changed)} "
                                    f"beside {spec.stable_described()}")
    return Outcome(status.with_phase(Phase.INITIALIZING, now, "waiting for the new version to become ready"),
                   (notice,))


def _initializing(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> Outcome:
    status, notice = prime_judge(spec, status, obs)
    moved = _wait_for_workloads(spec, status, obs, now)
    return moved.after(notice) if notice is not None else moved


def _wait_for_workloads(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> Outcome:
    readiness = obs.readiness or {}
    broken = {s: r for s, r in readiness.items() if r.failed}
    if broken:
        why = "; ".join(f"{s}: {r.reason}" for s, r in broken.items())
        return roll_back(status, now, Phase.FAILED, "CanaryFailed", f"new version cannot start: {why}")
    missing = [s for s in spec.changed if s in readiness and not readiness[s].exists]
    if missing:
        # Not created yet (the controller was down, or this is the tick that creates them): the progress
        # deadline for readiness starts once every workload exists, so controller downtime never fails a
        # release. But a create that keeps failing (the API refuses the object) fails it at the deadline,
        # counted from the first tick that found the workloads missing.
        since = status.unready_since if status.unready_since is not None else now
        if now - since > spec.progress_deadline:
            return roll_back(status, now, Phase.FAILED, "ProgressDeadlineExceeded",
                             f"{', '.join(missing)} of {spec.canary.version} could not be created in "
                             f"{now - since:.0f}s (progressDeadline {spec.progress_deadline:.0f}s); the "
                             "controller's log and the failed actions say why")
        status = replace(status, phase_since=now, unready_since=since)
        return Outcome(status.with_phase(Phase.INITIALIZING, now, f"creating {', '.join(missing)}"))
    status = replace(status, unready_since=None)
    waited = now - (status.phase_since or now)
    not_ready = [s for s in spec.changed if not readiness.get(s, Readiness(False)).ready]
    if not_ready:
        if waited > spec.progress_deadline:
            return roll_back(status, now, Phase.FAILED, "ProgressDeadlineExceeded",
                             f"{', '.join(not_ready)} not ready after {waited:.0f}s "
                             f"(progressDeadline {spec.progress_deadline:.0f}s)")
        # What each one lacks (`<service>-<version>: 0/4 ready, 4/4 updated`): a crash loop shows before the deadline.
        lacking = "; ".join(r.reason for s in not_ready if (r := readiness.get(s)) is not None and r.reason)
        return Outcome(status.with_phase(Phase.INITIALIZING, now, f"waiting for {', '.join(not_ready)} to become "
                                                                  f"ready" + (f" ({lacking})" if lacking else "")))
    ready = Notify("Initialized", f"{spec.canary.version} is ready on {', '.join(spec.changed)}")
    if spec.experiment is not None:
        return start_experiment(spec, status, now).after(ready)
    if spec.shadow is not None:
        return begin_shadow(spec, status, now).after(ready)
    return first_step(spec, status, now).after(ready)


def _progressing(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> Outcome:
    capacity = check_capacity(spec, status, obs, now)
    if capacity.held is not None:
        return capacity.held
    status = capacity.status
    if status.scaling_to is not None:
        return apply_step_weight(spec, status, now)
    plan = desired_plan(spec, status)
    if obs.routing_error is None and plan is not None and not plan.equivalent(obs.routing):
        # The step's weight is not in effect (its write failed, is still to come, or the controller died
        # before it): no window until a tick reads it back, and a window observed now, judged against a
        # weight the mesh does not have, is dropped (as `_drained` waits for the read-back at promotion).
        status = replace(status, last_analysis_at=None)
        if obs.metrics is not None or obs.metrics_error is not None:
            return Outcome(status)
    elif obs.routing_error is None and plan is not None and status.last_analysis_at is None:
        # Read back in effect, so written before `now`: the next window opens once the weight has settled (and
        # the new pods, or an experiment's variants, have warmed up: its strategy carries its settle and warm-up).
        status = replace(status, last_analysis_at=now + spec.strategy.window_after_change(status.pod_warmup))
    if obs.metrics is None and obs.metrics_error is None:
        if spec.paused:
            return Outcome(status.with_phase(Phase.PAUSED, now, "paused by an operator"),
                           (Notify("Paused", "paused by an operator"),))
        return Outcome(status)
    if spec.experiment is not None:
        return look_at_experiment(spec, status, obs, now)
    status, verdict, reason, safety_pending = analyse_window(spec, status, obs, now)
    return _act_on_verdict(spec, status, verdict, reason, now, safety_pending)


def _act_on_verdict(spec: ReleaseSpec, status: ReleaseStatus, verdict: Verdict, reason: str, now: float,
                    safety_pending: bool = False) -> Outcome:
    """Advance on `pass`; before the last step also on no harm seen while safety is still pending (the
    weight grows only while nothing is wrong; promotion needs the canary shown within its margins)."""
    strategy = spec.strategy
    if verdict is Verdict.FAIL:
        status = note_action(status, "roll back")
        return roll_back(status, now, Phase.ROLLED_BACK, "AnalysisFailed", reason, decided=True)
    if verdict is Verdict.ERROR:
        return _analysis_error(spec, status, reason, now)
    status = replace(status, consecutive_errors=0)
    enough = status.step_canary_requests >= strategy.min_canary_requests
    if verdict is Verdict.PASS and enough:
        return _advance(spec, status, now)
    if safety_pending and enough and status.step + 1 < len(strategy.steps):
        status = status.with_condition("Analysis", "True", "NoHarmSeen", reason, now)
        return enter_step(spec, note_action(status, "next step (no harm seen; safety not yet shown)"),
                          status.step + 1, now)
    overdue = now - (status.step_started_at or now) >= strategy.step_deadline
    if not overdue:
        return Outcome(note_action(status, "wait"))
    why = reason if verdict is Verdict.INCONCLUSIVE else (
        f"{status.step_canary_requests} canary requests at this step, fewer than {strategy.min_canary_requests}")
    return _overdue(spec, status, why, now)


def _analysis_error(spec: ReleaseSpec, status: ReleaseStatus, reason: str, now: float) -> Outcome:
    """An `error` verdict holds the step, until `rollbackAfterErrors` of them in a row roll it back."""
    limit = spec.policies.rollback_after_errors
    errors = status.consecutive_errors + 1
    status = replace(status, consecutive_errors=errors)
    if errors >= limit:
        status = note_action(status, "roll back")
        return roll_back(status, now, Phase.ROLLED_BACK, "AnalysisError",
                         f"{errors} analysis errors in a row; last: {reason}", decided=True)
    notice = Notify("AnalysisError", f"holding at {status.canary_weight}% ({errors}/{limit}): {reason}", True)
    return Outcome(note_action(status, "hold"), (notice,))


def _overdue(spec: ReleaseSpec, status: ReleaseStatus, why: str, now: float) -> Outcome:
    """No pass by the step deadline (`why`): roll back, continue or hold, as `policies.onInconclusive` says."""
    match spec.policies.on_inconclusive:
        case "rollback":
            status = note_action(status, "roll back")
            return roll_back(status, now, Phase.ROLLED_BACK, "AnalysisInconclusive",
                             f"no pass by the step deadline: {why}", decided=True)
        case "continue":
            return _advance(spec, status, now).after(
                Notify("AnalysisInconclusive", f"continuing without a pass: {why}", True))
        case _:
            deadline = f"{spec.strategy.step_deadline:g} s"
            held = hold_inconclusive(status, "Analysis", f"holding at {status.canary_weight}%: no pass by the step "
                                     f"deadline ({deadline}), and policies.onInconclusive is hold, so the analysis "
                                     "goes on at this weight (`canary promote` or `canary abort` decides sooner)",
                                     why, now)
            return Outcome(note_action(held.status, "hold"), held.actions)


def _advance(spec: ReleaseSpec, status: ReleaseStatus, now: float) -> Outcome:
    status = status.with_condition("Analysis", "True", "Passed", f"step {status.step + 1} passed", now)
    if status.step + 1 < len(spec.strategy.steps):
        status = note_action(status, "next step")
        return enter_step(spec, status, status.step + 1, now)
    status = note_action(status, "promote")
    return promote_or_gate(spec, status, now)


def _paused(spec: ReleaseSpec, status: ReleaseStatus, now: float) -> Outcome:
    gate = status.condition("Paused")
    if gate is not None and gate.status == "True" and gate.reason == "AwaitingPromotion":
        return promote_or_gate(spec, status, now) if spec.approve_promotion else Outcome(status)
    if awaiting_confirmation(status):
        return promote_or_gate(spec, status, now)
    if spec.paused:
        return Outcome(status)
    status = status.with_condition("Paused", "False", "Resumed", "", now)
    return Outcome(status.with_phase(Phase.PROGRESSING, now,
                                     f"analysing step {status.step + 1} at {status.canary_weight}%"),
                   (Notify("Resumed", "resumed by an operator"),))


def _drained(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> Outcome | None:
    """Stage one of a promotion or rollback: once its routes read back, wait `drainTime`, then cut over; while
    the mesh counts requests still in flight on the retiring lane (`routes.retiring_workloads`), wait for them
    too, at most IN_FLIGHT_WAIT_S more. A mesh that cannot count them (None) gets `drainTime` alone. A cutover
    with requests still counted (the wait ran out) is a Warning: those requests finish on the other version.

    Returns the outcome to carry on with, or None while the routes are not yet in effect.
    """
    plan = desired_plan(spec, status)
    if plan is None or not plan.equivalent(obs.routing):
        return None
    since = status.stage_since or now
    waited = now - since
    if waited < spec.drain_time:
        return Outcome(replace(status, stage_since=since))
    if obs.in_flight and waited < spec.drain_time + IN_FLIGHT_WAIT_S:
        return Outcome(replace(status, stage_since=since).with_condition(
            DRAINED, "False", "RequestsInFlight", f"{obs.in_flight} requests still in flight on the retiring "
            f"version: the cutover waits for them, at most {IN_FLIGHT_WAIT_S:g}s past drainTime", now))
    cut = replace(status, cutover=True, stage_since=now)
    waiting = status.condition(DRAINED)
    if not obs.in_flight:
        # Said only where the drain had to wait (the condition is there): a drain of drainTime alone says nothing.
        if waiting is not None and waiting.status == "False":
            ended, reason = ("True", "RequestsAnswered") if obs.in_flight == 0 else ("Unknown", "NotCounted")
            cut = cut.with_condition(DRAINED, ended, reason, "", now)
        return Outcome(cut)
    timed_out = (f"cut over with {obs.in_flight} requests still in flight on the retiring version after "
                 f"{waited:.0f}s (drainTime {spec.drain_time:g}s and {IN_FLIGHT_WAIT_S:g}s more): their later hops "
                 "take the other version")
    return Outcome(cut.with_condition(DRAINED, "False", "TimedOut", timed_out, now),
                   (Notify("DrainTimedOut", timed_out, warning=True),))


def _promoting(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> Outcome:
    if status.scaling_to is not None:
        capacity = check_capacity(spec, status, obs, now)
        if capacity.held is not None:
            return capacity.held
        # The new version has the stable's capacity: now the entry split moves all traffic to it.
        return Outcome(replace(capacity.status, canary_weight=100, scaling_to=None, stage_since=None)
                       .with_phase(Phase.PROMOTING, now, "stable now points at the new version"))
    if not status.cutover:
        return _drained(spec, status, obs, now) or Outcome(status)
    if not base_plan(spec).promoted().equivalent(obs.routing):
        return Outcome(status)
    if now - (status.stage_since or now) < spec.scale_down_delay:
        return Outcome(status.with_phase(Phase.PROMOTING, now, "promoted; waiting to scale the old version down"))
    notice = Notify("Promoted", f"{spec.canary.version} serves all traffic for {', '.join(spec.changed)}")
    return Outcome(replace(status, canary_weight=0).with_phase(Phase.SUCCEEDED, now,
                                                               f"promoted {spec.canary.version}"), (notice,))


def _rolling_back(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> Outcome:
    if not status.cutover:
        drained = _drained(spec, status, obs, now)
        if drained is None:
            return Outcome(status)
        # The mesh reads back 0% into the canary lane: no new request reaches the canary from here on.
        return replace(drained, status=replace(drained.status, canary_off_at=status.canary_off_at or now))
    if not base_plan(spec).all_stable().equivalent(obs.routing):
        return Outcome(status)
    ending = Phase(status.ending or Phase.ROLLED_BACK.value)
    notice = Notify("RolledBack" if ending is Phase.ROLLED_BACK else ending.value,
                    f"all traffic on {spec.stable_described()}; {status.message}", warning=True)
    return Outcome(status.with_phase(ending, now, status.message), (notice,))
