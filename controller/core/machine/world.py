"""The idempotent actions that make the world (workloads and routes) match a release's status.

`step` asks for them every tick, whatever the transition decided, so actions lost to a crash or an API
error are repeated by the next tick.
"""

from __future__ import annotations

from controller.core.machine.actions import Action, ApplyRouting, EnsureWorkloads, RetireWorkloads
from controller.core.machine.routes import desired_plan
from controller.core.observation import Observation
from controller.core.spec.release import ReleaseSpec
from controller.core.status import Phase, ReleaseStatus


def reconcile_world(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation) -> list[Action]:
    """The idempotent actions that make the world match the status (repeated every tick)."""
    actions: list[Action] = []
    canary_images = {s: i for s, i in spec.canary.images.items() if s in spec.changed}
    phase = status.phase
    if phase in (Phase.INITIALIZING, Phase.SHADOWING, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING):
        actions.append(EnsureWorkloads(spec.canary.version, spec.changed, canary_images))
    # A finished release never writes routes again: its final routes were read back before it finished, and
    # a later release of the same services may have changed them since.
    plan = None if phase.final else desired_plan(spec, status)
    if plan is not None and not plan.equivalent(obs.routing) and obs.routing_error is None:
        actions.append(ApplyRouting(plan))
    elif plan is not None and obs.routing_error is not None:
        # The read failed: write anyway, since writes are idempotent and the mesh may be wrong.
        actions.append(ApplyRouting(plan))
    if phase is Phase.SUCCEEDED:
        actions += [RetireWorkloads(v, services) for v, services in spec.stable_groups(spec.changed)]
    if phase in (Phase.ROLLED_BACK, Phase.ABORTED) or (phase is Phase.FAILED and status.started_at):
        actions.append(RetireWorkloads(spec.canary.version, spec.changed))
    return actions + variant_workloads(spec, status)


def variant_workloads(spec: ReleaseSpec, status: ReleaseStatus) -> list[Action]:
    """A/B/n: the experiment's variants beyond the canary run while the canary does (same services, their
    own images) and are retired once the release has ended, whichever way it ended."""
    extra = spec.experiment.extra if spec.experiment is not None else ()
    if status.phase in (Phase.INITIALIZING, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING):
        return [EnsureWorkloads(v.version, spec.changed, {s: i for s, i in v.images.items() if s in spec.changed})
                for v in extra]
    if status.phase.final and status.started_at:
        return [RetireWorkloads(v.version, spec.changed) for v in extra]
    return []
