"""Several releases of one stack: one in flight per service, finished releases done with the world."""

from __future__ import annotations

from typing import Any

from controller.core import machine
from controller.core.machine import ApplyRouting, EnsureWorkloads, Notify, Observation, RetireWorkloads
from controller.core.observation import Peer
from controller.core.spec.release import ReleaseSpec, parse_release
from controller.core.status import Phase, ReleaseStatus

NOW = 1_000_000.0


def spec(name: str = "r2", stable: str = "v1", canary: str = "v2", services: tuple[str, ...] = ("ml-infer",)
         ) -> ReleaseSpec:
    s: dict[str, Any] = {"stable": {"version": stable}, "canary": {"version": canary, "services": list(services)}}
    return parse_release({"metadata": {"name": name, "namespace": "ns", "generation": 1}, "spec": s})


def peer(name: str, services: tuple[str, ...] = ("ml-infer",), created: str = "2026-01-01T00:00:00Z",
         started_at: float | None = None, final: bool = False) -> Peer:
    return Peer(name, frozenset(services), created, started_at, final)


def of(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def test_a_release_waits_for_an_unfinished_one_of_the_same_service_and_starts_when_it_ends() -> None:
    sp = spec()
    running = peer("r1", started_at=NOW - 100)
    obs = Observation(peers=(running,), created="2026-01-01T00:01:00Z")
    assert machine.wants(sp, ReleaseStatus(), NOW, obs.peers, obs.created) == machine.Wants(False, False, None)
    status, actions = machine.step(sp, ReleaseStatus(), obs, NOW)
    assert status.phase is Phase.PENDING
    assert "waiting for release r1 to finish: it changes ml-infer too" in status.message
    assert [type(a) for a in actions] == [Notify] and actions[0].reason == "Queued"
    assert machine.requeue_after(sp, status, NOW) == 5.0
    again, actions = machine.step(sp, status, obs, NOW + 5)
    assert again.phase is Phase.PENDING and actions == []  # announced once
    done = Observation(peers=(peer("r1", started_at=NOW - 100, final=True),), created=obs.created)
    started, actions = machine.step(sp, again, done, NOW + 10)
    assert started.phase is Phase.INITIALIZING and of(actions, EnsureWorkloads)
    assert started.condition("Queued").status == "False"


def test_releases_of_one_stack_queue_those_of_another_stack_do_not_and_the_older_of_two_waiting_goes_first(
        ) -> None:
    sp = spec()
    other_service = Peer("r1", frozenset({"keyword"}), "2026-01-01T00:00:00Z", NOW - 100, False,
                         frozenset(sp.stack.services))
    status, _ = machine.step(sp, ReleaseStatus(), Observation(peers=(other_service,)), NOW)
    assert status.phase is Phase.PENDING  # it routes ml-infer too: every release writes its whole stack's routes
    assert status.message == ("waiting for release r1 to finish: it changes keyword and routes the whole stack, "
                              "whose stable versions this release starts from")
    other_stack = Peer("r1", frozenset({"payments"}), "2026-01-01T00:00:00Z", NOW - 100, False,
                       frozenset({"payments", "ledger"}))
    status, _ = machine.step(sp, ReleaseStatus(), Observation(peers=(other_stack,)), NOW)
    assert status.phase is Phase.INITIALIZING
    older = peer("r1", created="2026-01-01T00:00:00Z")
    newer = peer("r3", created="2026-01-01T00:05:00Z")
    mine = "2026-01-01T00:01:00Z"
    waiting, _ = machine.step(sp, ReleaseStatus(), Observation(peers=(older, newer), created=mine), NOW)
    assert waiting.phase is Phase.PENDING and "r1" in waiting.message
    first, _ = machine.step(sp, ReleaseStatus(), Observation(peers=(newer,), created=mine), NOW)
    assert first.phase is Phase.INITIALIZING  # a release created later waits for this one, not the reverse


def finished(sp: ReleaseSpec, phase: Phase) -> ReleaseStatus:
    return ReleaseStatus(phase=phase, observed_generation=1, started_at=NOW - 1000, phase_since=NOW - 10,
                         finished_at=NOW - 10)


def test_a_finished_release_never_writes_routes_and_a_superseded_one_retires_nothing() -> None:
    sp = spec()
    done = finished(sp, Phase.SUCCEEDED)
    assert not machine.wants(sp, done, NOW).routing
    # Routes changed since (a later release moved them): still not written by this one.
    _, actions = machine.step(sp, done, Observation(routing=None), NOW)
    assert of(actions, ApplyRouting) == [] and of(actions, RetireWorkloads) == [RetireWorkloads("v1", ("ml-infer",))]
    later = peer("r3", started_at=NOW - 500)
    _, actions = machine.step(sp, done, Observation(peers=(later,)), NOW)
    assert actions == []
    rolled_back = finished(sp, Phase.ROLLED_BACK)
    _, actions = machine.step(sp, rolled_back, Observation(peers=(later,)), NOW)
    assert actions == []
    earlier = peer("r0", started_at=NOW - 5000, final=True)  # an older release does not supersede it
    _, actions = machine.step(sp, done, Observation(peers=(earlier,)), NOW)
    assert of(actions, RetireWorkloads) == [RetireWorkloads("v1", ("ml-infer",))]
