"""The moves every path through the machine shares: enter a canary step, promote (or wait at a gate
before promoting), roll back. The canary's phases, the experiment and the operator's overrides
(`phases`, `experiment`, `revisions`) all end in one of these; each returns an `Outcome`.
"""

from __future__ import annotations

from dataclasses import replace

from controller.core.machine.actions import Notify, Outcome
from controller.core.machine.hooks import AWAITING_CONFIRMATION, confirmation_gate
from controller.core.spec.release import ReleaseSpec
from controller.core.status import Phase, ReleaseStatus


def enter_step(spec: ReleaseSpec, status: ReleaseStatus, index: int, now: float) -> Outcome:
    """Start step `index`: scale the new version for the step's weight first; the weight itself moves
    once that capacity is ready (`apply_step_weight`). Until then no window is open."""
    weight = spec.strategy.steps[index]
    status = replace(status, step=index, scaling_to=weight, unready_since=None, step_started_at=now,
                     step_canary_requests=0, last_analysis_at=None)
    return Outcome(status.with_phase(Phase.PROGRESSING, now, f"step {index + 1}: scaling the new version for "
                                                             f"{weight}% before moving traffic"))


def first_step(spec: ReleaseSpec, status: ReleaseStatus, now: float) -> Outcome:
    """The release's first canary step, at once (the new version started at its size)."""
    return apply_step_weight(spec, enter_step(spec, status, 0, now).status, now)


def hold_inconclusive(status: ReleaseStatus, condition: str, holding: str, why: str, now: float) -> Outcome:
    """Hold past a deadline without a decision: condition `condition` Unknown/Inconclusive, and a warning
    (`<condition>Inconclusive`) only when the hold begins."""
    held = status.condition(condition)
    notices = () if held is not None and held.reason == "Inconclusive" else (
        Notify(f"{condition}Inconclusive", f"{holding}: {why}", True),)
    return Outcome(status.with_condition(condition, "Unknown", "Inconclusive", why, now), notices)


def apply_step_weight(spec: ReleaseSpec, status: ReleaseStatus, now: float) -> Outcome:
    """The new version is ready for the step's weight: move it (`scaling_to` -> `canary_weight`)."""
    index, weight = status.step, status.scaling_to if status.scaling_to is not None else status.canary_weight
    notice = Notify("WeightIncreased", f"step {index + 1}/{len(spec.strategy.steps)}: "
                                       f"{weight}% of traffic in the canary lane")
    # No window yet: the routes are written after this status is persisted, which may be well after `now`
    # (a slow tick) or never (a crash). `_progressing` opens the next window `settle` after a tick that reads
    # the new weight back in effect, so that old-weight traffic is never judged against the new weight.
    status = replace(
        status, canary_weight=weight, scaling_to=None, step_started_at=now, step_canary_requests=0,
        last_analysis_at=None,
        first_canary_traffic_at=status.first_canary_traffic_at or now,
    )
    return Outcome(status.with_phase(Phase.PROGRESSING, now, f"analysing step {index + 1} at {weight}%"), (notice,))


def promote_or_gate(spec: ReleaseSpec, status: ReleaseStatus, now: float) -> Outcome:
    """Promote, unless the manual gate or a confirmPromotion hook holds the release (Paused) first."""
    if spec.policies.manual_gate and not spec.approve_promotion:
        return _await_approval(status, now)
    confirmed, why = confirmation_gate(spec, status)
    if not confirmed:
        return _await_confirmation(status, why, now)
    notice = Notify("Promoting", f"{spec.canary.version} becomes stable for {', '.join(spec.changed)}")
    # Capacity first: the new version is scaled to the stable's size before the entry split moves to it.
    status = replace(status, decided_at=status.decided_at or now, scaling_to=100, unready_since=None,
                     cutover=False, stage_since=None)
    status = status.with_condition("Paused", "False", "Promoting", "", now)
    return Outcome(status.with_phase(Phase.PROMOTING, now, f"scaling {spec.canary.version} to the stable's "
                                                           "capacity before moving all traffic"), (notice,))


def _await_approval(status: ReleaseStatus, now: float) -> Outcome:
    notices = () if status.phase is Phase.PAUSED else (
        Notify("AwaitingPromotion", "analysis passed; waiting for an operator to approve promotion "
                                    "(spec.approvePromotion)"),)
    status = status.with_condition("Paused", "True", "AwaitingPromotion", "manual gate", now)
    return Outcome(status.with_phase(Phase.PAUSED, now, "analysis passed; awaiting approval to promote"), notices)


def _await_confirmation(status: ReleaseStatus, why: str, now: float) -> Outcome:
    gate = status.condition("Paused")
    notices = () if gate is not None and gate.reason == AWAITING_CONFIRMATION else (
        Notify(AWAITING_CONFIRMATION, "analysis passed; waiting for the confirmPromotion hooks to answer 200"),)
    status = status.with_condition("Paused", "True", AWAITING_CONFIRMATION, "confirmPromotion hooks", now)
    return Outcome(status.with_phase(Phase.PAUSED, now, f"analysis passed; waiting for confirmation: {why}"), notices)


def roll_back(status: ReleaseStatus, now: float, ending: Phase, reason: str, message: str,
              decided: bool = False) -> Outcome:
    """Start rolling back; the release ends in `ending` once all traffic is on stable again."""
    notice = Notify(reason, f"rolling back: {message}", warning=True)
    status = replace(status, canary_weight=0, scaling_to=None, unready_since=None, ending=ending.value,
                     cutover=False, stage_since=None,
                     decided_at=(status.decided_at or now) if decided else status.decided_at)
    status = status.with_condition("Analysis" if reason.startswith("Analysis") else "Release", "False",
                                   reason, message, now)
    return Outcome(status.with_phase(Phase.ROLLING_BACK, now, message), (notice,))
