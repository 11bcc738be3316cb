"""Capacity before traffic: the new version is scaled for a weight before the routes give it that weight,
and a new version short of ready pods is held, not rolled back, until the progress deadline.

A step that raises the weight (and a promotion, which raises it to 100) first sets `scaling_to`: the
workloads are sized for that weight (`capacity_weight`) while the routes keep the old one. Once every
changed service's new version reports ready at that size, the caller moves the weight. While a new
version that was serving is short of pods (an autoscaler scaling up, an evicted pod being replaced), no
analysis window is judged; when it is whole again a fresh window starts. Only a new version that can no
longer start (`Readiness.failed`), one with no ready pod left while it has traffic (`Readiness.lost`), or
one still short when `progressDeadline` has passed, rolls the release back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from controller.core.machine.actions import Notify, Outcome
from controller.core.machine.moves import roll_back
from controller.core.observation import Observation, Readiness
from controller.core.spec.release import ReleaseSpec
from controller.core.status import Phase, ReleaseStatus

UNKNOWN = Readiness(False, "readiness not reported")


def capacity_weight(status: ReleaseStatus) -> int:
    """The share of traffic the new version's workloads are sized for: the weight being scaled for, else
    the weight in effect; all of it once promotion has started (and after)."""
    if status.phase in (Phase.PROMOTING, Phase.SUCCEEDED):
        return 100
    return max(status.canary_weight, status.scaling_to or 0)


@dataclass(frozen=True)
class Capacity:
    """What the capacity check came to: `held` (wait or roll back: return it as this tick's outcome), or
    `status` to go on with (the new version has the pods its traffic needs)."""

    status: ReleaseStatus
    held: Outcome | None = None


def check_capacity(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> Capacity:
    """Hold, roll back or go on, from the new version's readiness at the size `capacity_weight` asks."""
    if obs.readiness is None:
        # Not looked at (or the look failed): never move the weight on an unknown capacity.
        return Capacity(status, Outcome(status) if status.scaling_to is not None else None)
    readiness = {s: obs.readiness.get(s, UNKNOWN) for s in spec.changed}
    failed = {s: r for s, r in readiness.items() if r.failed}
    if failed:
        why = "; ".join(f"{s}: {r.reason}" for s, r in failed.items())
        return Capacity(status, roll_back(status, now, Phase.ROLLED_BACK, "CanaryFailed",
                                          f"new version cannot start: {why}", decided=True))
    lost = [s for s, r in readiness.items() if r.lost]
    if lost and status.canary_weight > 0:
        why = "; ".join(f"{s}: {readiness[s].reason or 'not ready'}" for s in lost)
        return Capacity(status, roll_back(status, now, Phase.ROLLED_BACK, "CanaryNotReady",
                                          f"canary of {', '.join(lost)} is no longer ready ({why})", decided=True))
    short = {s: r for s, r in readiness.items() if not r.ready}
    if short:
        return Capacity(status, _short(spec, status, short, now))
    if status.unready_since is not None:
        # Whole again: the window that saw the shortage is dropped; a fresh one opens after the warm-up of the
        # pods that replaced the lost ones, or after `settle` when the judge leaves new pods out itself.
        status = replace(status, unready_since=None,
                         last_analysis_at=now + spec.strategy.window_after_change(status.pod_warmup)
                         if status.last_analysis_at is not None else None)
    return Capacity(status)


def _short(spec: ReleaseSpec, status: ReleaseStatus, short: dict[str, Readiness], now: float) -> Outcome:
    since = status.unready_since if status.unready_since is not None else now
    why = "; ".join(f"{s}: {r.reason or 'not ready'}" for s, r in short.items())
    if now - since > spec.progress_deadline:
        return roll_back(status, now, Phase.ROLLED_BACK, "ProgressDeadlineExceeded",
                         f"new version short of ready pods for {now - since:.0f}s "
                         f"(progressDeadline {spec.progress_deadline:.0f}s): {why}", decided=True)
    target = status.scaling_to if status.scaling_to is not None else status.canary_weight
    message = f"holding at {status.canary_weight}%: scaling the new version for {target}%: {why}"
    # Scaling for a new weight is the plan; pods lost from a version already serving are news.
    news = status.unready_since is None and status.scaling_to is None
    notices = (Notify("WaitingForCapacity", message, warning=True),) if news else ()
    status = replace(status, unready_since=since)
    return Outcome(status.with_phase(status.phase, now, message), notices)
