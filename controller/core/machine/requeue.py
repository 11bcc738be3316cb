"""When a release wants its next tick: pure timing policy on spec and status, with `now` passed in."""

from __future__ import annotations

from controller.core.machine.hooks import due
from controller.core.spec.release import ReleaseSpec
from controller.core.status import Phase, ReleaseStatus


def requeue_after(spec: ReleaseSpec | None, status: ReleaseStatus, now: float) -> float | None:
    """Seconds until the release's next tick, or None when it needs none (finished, or its spec is invalid)."""
    if spec is None:
        return None
    if status.phase.final:
        # A finished release may still owe its tell-hooks (postRollout, onRollback) one call.
        return 1.0 if due(spec, status) else None
    if status.phase is Phase.PROGRESSING and status.last_analysis_at is not None:
        # Wake at the next analysis window, and often enough between to notice a canary that died.
        window_due = status.last_analysis_at + spec.strategy.interval - now
        return max(0.05, min(window_due, max(5.0, spec.strategy.interval / 3)))
    if status.phase is Phase.PENDING and (queued := status.condition("Queued")) and queued.status == "True":
        return 5.0  # queued behind another release: look again every few seconds
    if status.phase is Phase.SHADOWING:
        return min(2.0, spec.strategy.interval)  # each tick reads the comparator's new pairs
    if status.phase is Phase.PAUSED:
        return min(2.0, spec.strategy.interval)
    return min(1.0, spec.strategy.interval)
