"""One step of the release state machine: `wants` (what to observe), `step` (decide on what was observed)
and `invalid_spec` (a spec that does not parse).

`step(spec, status, observation, now) -> (status, actions)` is pure: it reads no clock and calls no network.
It is level-triggered: every tick it derives what the mesh and the workloads should look like from the
persisted status (`world`), compares with what was observed, and asks for the difference. So a tick whose
actions were lost (a crash after the status was persisted, an API error) is repaired by the next one, and
actions are always safe to repeat. A step, in order: record the hooks' answers, restart a finished release
when asked to (`revisions`), take the phase's transition (`phases`), then the world's actions.
"""

from __future__ import annotations

from dataclasses import replace

from controller.core.machine.actions import Action, FireHook, Notify, Outcome
from controller.core.machine.analysing import history_windows
from controller.core.machine.hooks import due, failures, load_tests_to_fire, record
from controller.core.machine.ownership import queued_behind, superseded_by
from controller.core.machine.phases import transition
from controller.core.machine.revisions import begin_tick, refused_before_start, should_restart
from controller.core.machine.routes import retiring_workloads
from controller.core.machine.shadowing import cursor as shadow_cursor
from controller.core.machine.world import reconcile_world
from controller.core.observation import Observation, Peer, Wants
from controller.core.spec.hooks import HookKind
from controller.core.spec.release import InvalidSpec, ReleaseSpec
from controller.core.status import Phase, ReleaseStatus

# Ticks come about one interval apart; a window slightly shorter than the interval still counts, so the
# analysis does not skip a beat when the reconciler wakes a little early.
WINDOW_SLACK = 0.95


def wants(spec: ReleaseSpec | None, status: ReleaseStatus, now: float, peers: tuple[Peer, ...] | None = None,
          created: str = "") -> Wants:
    """What to observe this tick. A finished release reads no routes (it never writes them again); a release
    queued behind another (`peers`, `created`: see `ownership`) asks nothing, not even its preRollout hooks."""
    if spec is None or status.phase.final:
        # A release that starts again this tick starts from Pending, which looks at the stable version first.
        starts = spec is not None and (should_restart(spec, status) is not None or refused_before_start(status))
        return Wants(readiness=False, routing=False, metrics_window=None,
                     hooks=due(spec, status) if spec is not None else (), stable_readiness=starts)
    if status.phase is Phase.PENDING and queued_behind(spec, created, peers) is not None:
        return Wants(readiness=False, routing=False, metrics_window=None)
    window = None
    if status.phase is Phase.PROGRESSING and status.last_analysis_at is not None \
            and now - status.last_analysis_at >= spec.strategy.interval * WINDOW_SLACK:
        window = (status.last_analysis_at, now)
    canary_up = status.phase in (Phase.INITIALIZING, Phase.SHADOWING, Phase.PROGRESSING, Phase.PAUSED) or (
        status.phase is Phase.PROMOTING and status.scaling_to is not None)
    # Requests still in flight on the retiring lane count once the drain's fixed time is over (`phases._drained`).
    drained_for = now - status.stage_since if status.stage_since is not None else -1.0
    return Wants(readiness=canary_up, routing=status.phase is not Phase.PENDING, metrics_window=window,
                 stable_readiness=status.phase is Phase.PENDING,
                 hooks=due(spec, status),
                 shadow_after=shadow_cursor(status) if status.phase is Phase.SHADOWING else None,
                 history_windows=history_windows(spec, status),
                 in_flight=retiring_workloads(spec, status) if drained_for >= spec.drain_time else ())



def step(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float
         ) -> tuple[ReleaseStatus, list[Action]]:
    if status.observed_generation != spec.generation:
        status = replace(status, observed_generation=spec.generation)
    refused = refused_before_start(status)
    status = status.with_condition("SpecValid", "True", "Valid", "", now)
    heard = _hook_answers(spec, status, obs, now)
    begun = begin_tick(spec, heard.status, refused)
    if begun.status.phase is Phase.PENDING:
        queued = _queue(spec, begun, obs, now)
        if queued is not None:
            return queued.status, [*heard.actions, *queued.actions]
        begun = Outcome(_unqueued(begun.status, now), begun.actions)
    moved = transition(spec, begun.status, obs, now)
    fired = [FireHook(h) for h in load_tests_to_fire(spec, begun.status, moved.status)]
    world = reconcile_world(spec, moved.status, obs)
    if moved.status.phase.final and superseded_by(spec, moved.status, obs.peers) is not None:
        world = []  # a later release of these services owns their versions now
    return moved.status, [*world, *heard.actions, *begun.actions, *moved.actions, *fired]


def _queue(spec: ReleaseSpec, begun: Outcome, obs: Observation, now: float) -> Outcome | None:
    """Wait in Pending while another unfinished release changes or routes one of the same services."""
    peer = queued_behind(spec, obs.created, obs.peers)
    if peer is None:
        return None
    shared = [s for s in spec.stack.services if s in peer.services and s in spec.changed]
    message = f"waiting for release {peer.name} to finish: " + (
        f"it changes {', '.join(shared)} too" if shared else
        f"it changes {', '.join(s for s in spec.stack.services if s in peer.services) or 'the same stack'} and "
        "routes the whole stack, whose stable versions this release starts from")
    status = begun.status.with_condition("Queued", "True", "WaitingForRelease", message, now)
    notices = (Notify("Queued", message),) if status.condition("Queued") != begun.status.condition("Queued") else ()
    return Outcome(status.with_phase(Phase.PENDING, now, message), (*begun.actions, *notices))


def _unqueued(status: ReleaseStatus, now: float) -> ReleaseStatus:
    queued = status.condition("Queued")
    if queued is None or queued.status != "True":
        return status
    return status.with_condition("Queued", "False", "Started", "the release it waited for has finished", now)


def _hook_answers(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> Outcome:
    """Keep the hooks' answers; announce the failures that change nothing (they are easy to miss)."""
    notices = tuple(Notify("HookFailed", failure, warning=True)
                    for failure in failures(spec, obs.hooks, (HookKind.ON_ROLLBACK, HookKind.POST_ROLLOUT)))
    return Outcome(record(status, obs.hooks, now), notices)


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
