"""Revisions of a release and the operator's overrides: pure functions that the machine's `step` calls.

One StackRelease lives through many releases of its stack. The status says which one is running: its
`revision` (1 for the first), its `attempt` (1, then one more per retry) and the `versions` it moves
between (stable and canary, with their images: the model versions). Earlier revisions and attempts are
archived in `status.revisions` (the newest `REVISIONS_LIMIT`), each with its outcome and times.

- **New revision**: a release in a final phase whose spec now names other versions or images than the
  ones it ran (the operator edited it for the next version, or `canary undo` swapped stable and canary)
  archives the current revision and starts revision + 1 from Pending, with a fresh judge.
- **Retry**: `spec.retry` is a counter. When it exceeds `status.retries` and the release ended
  RolledBack, Aborted or Failed, the attempt is archived and the same versions start again from Pending
  (attempt + 1). A counter raised while the release is in flight, or after it succeeded, is absorbed:
  it retries nothing.
- **Refused, then fixed**: a release that failed because its spec was refused before it started ran nothing;
  once its spec is valid it starts from Pending as the same revision and attempt, with nothing archived.
- **Overrides** (Progressing or Paused only; an abort goes first): `spec.promoteFull` promotes now,
  skipping the remaining steps and their analysis, and counts as approval at a manual gate;
  `spec.skipStep: N` skips the analysis of step N (1-based) once, when the release is at that step.
  Each is recorded as a decision with the verdict "operator". Neither skips confirmPromotion hooks: an
  outside system's gate is not the operator's to overrule.

Like `experiment`, this module builds on the moves of `moves` (enter a step, promote); each function that
decides returns an `Outcome`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from controller.core.machine.actions import Notify, Outcome
from controller.core.machine.moves import enter_step, promote_or_gate
from controller.core.spec.release import ReleaseSpec
from controller.core.status import (
    REVISIONS_LIMIT,
    DecisionRecord,
    Phase,
    ReleasedVersions,
    ReleaseStatus,
    RevisionRecord,
)

RETRYABLE = (Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED)
OPERATOR = "operator"
PROMOTED_BY_OPERATOR = "promoted by an operator (promote --full)"
Restart = Literal["revision", "retry"]


def versions_of(spec: ReleaseSpec) -> ReleasedVersions:
    """What a spec asks to release: both versions and their images."""
    partial = spec.changed if spec.changed != spec.stack.services else ()
    return ReleasedVersions(spec.stable.version, spec.canary.version, dict(spec.stable.images),
                            dict(spec.canary.images), dict(spec.stable.versions), partial)


def should_restart(spec: ReleaseSpec, status: ReleaseStatus) -> Restart | None:
    """Whether a finished release starts again: with new versions (a new revision), or as a retry."""
    if not status.phase.final:
        return None
    if status.versions is not None and versions_of(spec) != status.versions:
        return "revision"
    if status.phase in RETRYABLE and spec.retry > status.retries:
        return "retry"
    return None


def refused_before_start(status: ReleaseStatus) -> bool:
    """Failed because its spec was refused before anything ran (`step.invalid_spec`): no versions were ever
    released, so the spec the operator fixes starts it (`begin_tick`), with nothing to archive."""
    valid = status.condition("SpecValid")
    return (status.phase is Phase.FAILED and status.versions is None and status.started_at is None
            and valid is not None and valid.status == "False")


def archive(status: ReleaseStatus, versions: ReleasedVersions) -> RevisionRecord:
    """The record of the attempt that `status` describes."""
    return RevisionRecord(revision=status.revision, attempt=status.attempt, versions=versions,
                          outcome=status.phase.value, started_at=status.started_at, finished_at=status.finished_at,
                          decided_at=status.decided_at, first_canary_traffic_at=status.first_canary_traffic_at,
                          message=status.message)


def restart(spec: ReleaseSpec, status: ReleaseStatus, how: Restart) -> ReleaseStatus:
    """Archive the current attempt and start over from Pending: everything per attempt (the judge, the
    decisions, the step, the conditions other than SpecValid) begins anew."""
    record = archive(status, status.versions or versions_of(spec))
    new_revision = how == "revision"
    return ReleaseStatus(
        observed_generation=status.observed_generation,
        conditions=tuple(c for c in status.conditions if c.type == "SpecValid"),
        revision=status.revision + 1 if new_revision else status.revision,
        attempt=1 if new_revision else status.attempt + 1,
        retries=max(status.retries, spec.retry),
        versions=versions_of(spec),
        revisions=(*status.revisions, record)[-REVISIONS_LIMIT:],
    )


def begin_tick(spec: ReleaseSpec, status: ReleaseStatus, refused: bool = False) -> Outcome:
    """Before the transition: restart a finished release when asked to, else keep `versions` current.

    In flight, the versions follow the spec (an edit in flight applies to the running release, as it
    always did) and raised retry counters are absorbed; once final they are what the release ran. `refused`:
    the status was `refused_before_start` before this tick found the spec valid; the release starts.
    """
    if refused:
        v = versions_of(spec)
        fresh = ReleaseStatus(observed_generation=status.observed_generation, revision=status.revision,
                              conditions=tuple(c for c in status.conditions if c.type == "SpecValid"),
                              attempt=status.attempt, retries=max(status.retries, spec.retry), versions=v,
                              revisions=status.revisions)
        return Outcome(fresh, (Notify("SpecFixed", f"the spec is valid now: {v.stable_described()} -> {v.canary} "
                                                   "starts"),))
    how = should_restart(spec, status)
    if how is None:
        if status.phase.final:
            return Outcome(status)
        return Outcome(replace(status, versions=versions_of(spec), retries=max(status.retries, spec.retry)))
    fresh = restart(spec, status, how)
    v = fresh.versions or versions_of(spec)
    if how == "revision":
        notices = [Notify("RevisionStarted", f"revision {fresh.revision}: {v.stable_described()} -> {v.canary} "
                                             f"(revision {status.revision} ended {status.phase.value})")]
    else:
        notices = [Notify("Retrying", f"attempt {fresh.attempt} of revision {fresh.revision}: "
                                      f"{v.stable_described()} -> {v.canary} again (attempt {status.attempt} ended "
                                      f"{status.phase.value})")]
    leftover = leftover_overrides(spec)
    if leftover:
        notices.append(Notify("OperatorFieldsSet", f"{', '.join(leftover)} still set from before: they apply "
                                                   "to this attempt too", warning=True))
    return Outcome(fresh, tuple(notices))


def leftover_overrides(spec: ReleaseSpec) -> list[str]:
    """One-shot operator fields that a new attempt would inherit (the CLI clears them when it restarts)."""
    fields = {"spec.abort": spec.abort, "spec.promoteFull": spec.promote_full,
              "spec.approvePromotion": spec.approve_promotion, "spec.skipStep": spec.skip_step > 0}
    return [name for name, on in fields.items() if on]


def operator_override(spec: ReleaseSpec, status: ReleaseStatus, now: float) -> Outcome | None:
    """promoteFull or skipStep acted on, or None when neither applies now."""
    if status.phase not in (Phase.PROGRESSING, Phase.PAUSED):
        return None
    if spec.promote_full:
        return _promote_full(spec, status, now)
    t = now - (status.started_at or now)
    number = status.step + 1
    if spec.skip_step != number or spec.experiment is not None or _at_gate(status):
        return None
    last = number >= len(spec.strategy.steps)
    status = status.with_decision(DecisionRecord(now, t, status.step, status.canary_weight, OPERATOR,
                                                 f"step {number} skipped by an operator (promote)",
                                                 "promote" if last else "next step"))
    skipped = Notify("StepSkipped", f"the analysis of step {number} was skipped by an operator", warning=True)
    status = status.with_condition("Analysis", "True", "Skipped", f"step {number} skipped by an operator", now)
    if last:
        return promote_or_gate(spec, status, now).after(skipped)
    return enter_step(spec, status, number, now).after(skipped)


def _promote_full(spec: ReleaseSpec, status: ReleaseStatus, now: float) -> Outcome:
    """promoteFull: promote now (it counts as approval at the manual gate), recorded once as the operator's
    decision, since it may wait at a confirmPromotion hook's gate after."""
    if promoted_by_operator(status):
        return promote_or_gate(replace(spec, approve_promotion=True), status, now)
    t = now - (status.started_at or now)
    status = status.with_decision(DecisionRecord(now, t, status.step, status.canary_weight, OPERATOR,
                                                 PROMOTED_BY_OPERATOR, "promote"))
    promoted = Notify("OperatorPromoted", f"{PROMOTED_BY_OPERATOR}: the remaining steps and their analysis are "
                                          "skipped", warning=True)
    return promote_or_gate(replace(spec, approve_promotion=True), status, now).after(promoted)


def promoted_by_operator(status: ReleaseStatus) -> bool:
    return any(h.verdict == OPERATOR and h.reason == PROMOTED_BY_OPERATOR for h in status.history[-1:])


def _at_gate(status: ReleaseStatus) -> bool:
    """Waiting after the last step (the manual gate, confirmPromotion hooks): there is no step to skip.
    An operator's pause sets no Paused=True condition."""
    gate = status.condition("Paused")
    return status.phase is Phase.PAUSED and gate is not None and gate.status == "True"
