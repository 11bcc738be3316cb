"""Scenario tests: whole releases ticked through the reconciler with a fake clock and fake ports."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pytest

from controller.core.machine import ApplyRouting
from controller.core.status import Phase
from controller.reconciler import Ports, Reconciler
from tests.support.fakes import VersionModel
from tests.support.scenario import SERVICES, World, release


def weights_applied(world: World) -> list[int]:
    return [p.canary_weight for p in world.router.history]


def test_healthy_release_is_promoted_step_by_step() -> None:
    world = World()
    status = world.run(release())
    assert status.phase is Phase.SUCCEEDED, status.message
    assert weights_applied(world)[:4] == [0, 10, 25, 50]
    final = world.router.in_effect()
    assert final is not None and final.canary_weight == 0
    assert {s.stable for s in final.services} == {"v2"}
    assert all((s, "v1") not in world.workloads.running for s in SERVICES)
    assert all((s, "v2") in world.workloads.running for s in SERVICES)
    assert [r for r in world.notifier.reasons() if r in ("Initialized", "Promoting", "Promoted")] == \
        ["Initialized", "Promoting", "Promoted"]
    assert status.decided_at is not None and status.total_canary_requests > 0


def test_errors_roll_back_with_weight_zero_in_the_deciding_tick() -> None:
    world = World(models={"v2": VersionModel(error_rate=0.05)})
    status = world.run(release())
    assert status.phase is Phase.ROLLED_BACK
    fail_ticks = [t for t in world.ticks if t.status.last_verdict == "fail" and t.persisted
                  and t.status.phase is Phase.ROLLING_BACK]
    assert fail_ticks, "no tick rolled back on a fail verdict"
    routing = [a for a in fail_ticks[0].actions if isinstance(a, ApplyRouting)]
    assert routing and routing[0].plan.canary_weight == 0 and not routing[0].plan.canary_reachable()
    assert all((s, "v2") not in world.workloads.running for s in SERVICES)
    plan = world.router.in_effect()
    assert plan is not None and not plan.canary_reachable()
    assert "RolledBack" in world.notifier.reasons()
    assert status.history[-1].verdict == "fail"


class HeldRequests:
    """An InFlight port whose mesh still holds `busy` requests for the first `asks` times it is asked."""

    def __init__(self, world: World, asks: int, busy: int = 4) -> None:
        self.world, self.asks, self.busy = world, asks, busy
        self.asked: list[tuple[float, tuple[tuple[str, str], ...]]] = []

    def in_flight(self, workloads: Sequence[tuple[str, str]]) -> int:
        self.asked.append((self.world.clock.now(), tuple(workloads)))
        return self.busy if len(self.asked) <= self.asks else 0


def test_a_rollback_cuts_over_once_the_canarys_requests_in_flight_are_answered() -> None:
    """Through the reconciler: after `drainTime` it asks the InFlight port about the canary's workloads every tick,
    and the cutover (the canary's routes removed) comes only after the port said none was left."""
    world = World(models={"v2": VersionModel(error_rate=0.05)})
    held = HeldRequests(world, asks=10)
    controller = Reconciler(Ports(world.workloads, world.router, world.metrics, world.clock, world.notifier,
                                  in_flight=held))
    status = world.run(release(drainTime="5s"), controller=controller)
    assert status.phase is Phase.ROLLED_BACK, status.message
    assert len(held.asked) == 11 and {w for _, w in held.asked} == {tuple((s, "v2") for s in SERVICES)}
    cut = next(t for t in world.ticks if t.status.cutover)  # its stage starts at the cutover
    assert any(isinstance(a, ApplyRouting) and a.plan.service("ml-search").canary is None for a in cut.actions)
    assert cut.status.stage_since == held.asked[-1][0] > held.asked[-2][0] >= held.asked[0][0] + 9


def test_slow_canary_rolls_back() -> None:
    world = World(models={"v2": VersionModel(median_ms=55.0)})
    status = world.run(release())
    assert status.phase is Phase.ROLLED_BACK
    assert any(c.get("verdict") == "fail" for c in status.history[-1].checks)


def test_metrics_outage_holds_then_rolls_back_and_never_promotes() -> None:
    world = World()
    world.metrics.down = True
    status = world.run(release(policies={"rollbackAfterErrors": 3}))
    assert status.phase is Phase.ROLLED_BACK
    verdicts = [h.verdict for h in status.history]
    assert verdicts == ["error", "error", "error"]
    assert [h.action for h in status.history] == ["hold", "hold", "roll back"]
    assert max(weights_applied(world)) == 10  # held at the first step, never advanced
    assert "Promoted" not in world.notifier.reasons()


def test_restart_mid_release_resumes_from_persisted_status() -> None:
    world = World()
    obj = release()
    world.run(obj, until=lambda s: s.step >= 1)
    mid = world.status()
    assert mid.phase is Phase.PROGRESSING and mid.step >= 1
    history_before = len(mid.history)
    # A new controller process: nothing in memory, the same cluster, the persisted status.
    status = world.run(obj, controller=world.controller())
    assert status.phase is Phase.SUCCEEDED
    assert len(status.history) > history_before
    assert weights_applied(world)[:4] == [0, 10, 25, 50]
    starts = [c for c in world.workloads.calls if c[0] == "start"]
    assert len(starts) == len(SERVICES)  # no canary deployed twice


def test_invalid_spec_fails_before_start_with_the_precise_message() -> None:
    world = World()
    obj = release(strategy={"canary": {"steps": [{"weight": 10}, {"weight": 50}, {"weight": 120}]}})
    status = world.run(obj)
    assert status.phase is Phase.FAILED
    assert "spec.strategy.canary.steps[2].weight: 120 is above 100" in status.message
    cond = status.condition("SpecValid")
    assert cond is not None and cond.status == "False" and cond.reason == "InvalidSpec"
    assert world.router.writes == 0 and world.workloads.calls == []
    assert world.notifier.reasons() == ["InvalidSpec"]


def test_invalid_spec_in_flight_holds_routes_and_resumes_when_fixed() -> None:
    world = World()
    good = release()
    world.run(good, until=lambda s: s.phase is Phase.PROGRESSING)
    assert world.status().phase is Phase.PROGRESSING
    writes, weight = world.router.writes, world.router.in_effect().canary_weight  # type: ignore[union-attr]
    bad = copy.deepcopy(good)
    bad["metadata"]["generation"] = 2
    bad["spec"]["analysis"] = {"alpha": 3}
    for _ in range(3):
        world.controller().tick(bad, world.status(), world.persist)
        world.clock.sleep(60)
    held = world.status()
    assert held.phase is Phase.PROGRESSING
    assert held.condition("SpecValid").status == "False"  # type: ignore[union-attr]
    assert "spec.analysis.alpha" in held.condition("SpecValid").message  # type: ignore[union-attr]
    assert world.router.writes == writes and world.router.in_effect().canary_weight == weight  # type: ignore[union-attr]
    fixed = copy.deepcopy(good)
    fixed["metadata"]["generation"] = 3
    assert world.run(fixed).phase is Phase.SUCCEEDED


def test_progress_deadline_fails_and_removes_the_canary() -> None:
    world = World()
    for s in SERVICES:
        world.workloads.startup_ticks[(s, "v2")] = 10_000
    status = world.run(release(progressDeadline="30s"))
    assert status.phase is Phase.FAILED
    assert "ProgressDeadlineExceeded" in [c.reason for c in status.conditions]
    assert all((s, "v2") not in world.workloads.running for s in SERVICES)
    assert max(weights_applied(world)) == 0  # the canary never saw traffic


def test_crash_looping_canary_fails_the_release() -> None:
    world = World()
    world.workloads.broken.add(("ml-search", "v2"))
    status = world.run(release())
    assert status.phase is Phase.FAILED
    assert "ml-search: CrashLoopBackOff" in status.message


def test_two_of_five_services_changed_keep_the_others_on_stable() -> None:
    world = World()
    obj = release(canary={"version": "v2", "services": ["ml-search", "keyword"]})
    world.run(obj, until=lambda s: s.phase is Phase.PROGRESSING)
    plan = world.router.in_effect()
    assert plan is not None and plan.canary_weight == 10
    assert {s.service for s in plan.services if s.canary} == {"ml-search", "keyword"}
    assert ("master-search", "v2") not in world.workloads.running
    status = world.run(obj)
    assert status.phase is Phase.SUCCEEDED
    final = world.router.in_effect()
    assert final is not None
    assert {s.service: s.stable for s in final.services} == {
        "master-search": "v1", "ml-infer": "v1", "ml-search": "v2", "keyword": "v2", "text-search": "v1"}


def test_pause_holds_and_resume_continues() -> None:
    world = World()
    obj = release()
    world.run(obj, until=lambda s: s.phase is Phase.PROGRESSING)
    paused = copy.deepcopy(obj)
    paused["spec"]["paused"] = True
    for _ in range(10):
        world.controller().tick(paused, world.status(), world.persist)
        world.clock.sleep(60)
    status = world.status()
    assert status.phase is Phase.PAUSED
    step = status.step
    for _ in range(5):
        world.controller().tick(paused, world.status(), world.persist)
        world.clock.sleep(60)
    assert world.status().step == step
    assert world.run(obj).phase is Phase.SUCCEEDED


def test_abort_rolls_back_to_aborted() -> None:
    world = World()
    obj = release()
    world.run(obj, until=lambda s: s.phase is Phase.PROGRESSING)
    aborted = copy.deepcopy(obj)
    aborted["spec"]["abort"] = True
    status = world.run(aborted)
    assert status.phase is Phase.ABORTED
    plan = world.router.in_effect()
    assert plan is not None and not plan.canary_reachable()


def test_manual_gate_waits_for_approval() -> None:
    world = World()
    obj = release(policies={"manualGate": True})
    for _ in range(200):
        result = world.controller().tick(obj, world.status(), world.persist)
        world.clock.sleep(result.requeue_after or 1)
        if world.status().phase is Phase.PAUSED:
            break
    status = world.status()
    assert status.phase is Phase.PAUSED and status.canary_weight == 50
    assert status.condition("Paused").reason == "AwaitingPromotion"  # type: ignore[union-attr]
    for _ in range(3):
        world.controller().tick(obj, world.status(), world.persist)
        world.clock.sleep(60)
    assert world.status().phase is Phase.PAUSED
    approved = copy.deepcopy(obj)
    approved["spec"]["approvePromotion"] = True
    assert world.run(approved).phase is Phase.SUCCEEDED


def test_router_write_failure_is_repaired_on_the_next_tick() -> None:
    world = World(models={"v2": VersionModel(error_rate=0.08)})
    obj = release()
    world.run(obj, until=lambda s: s.phase is Phase.PROGRESSING)
    world.router.fail_next = 1  # the rollback's first routing write is lost
    status = world.run(obj)
    assert status.phase is Phase.ROLLED_BACK
    plan = world.router.in_effect()
    assert plan is not None and not plan.canary_reachable()


def test_status_is_written_only_when_it_changes() -> None:
    world = World()
    obj = release()
    world.run(obj)
    final_writes = world.writes
    for _ in range(5):
        world.controller().tick(obj, world.status(), world.persist)
    assert world.writes == final_writes


@pytest.mark.parametrize("policy,phase", [("rollback", Phase.ROLLED_BACK), ("continue", Phase.SUCCEEDED)])
def test_inconclusive_at_step_deadline_follows_policy(policy: str, phase: Phase) -> None:
    world = World(rps=0.5)  # far too little traffic to reach minCanaryRequests
    obj = release(policies={"onInconclusive": policy},
                  strategy={"canary": {"steps": [{"weight": 10}, {"weight": 20}], "interval": "60s",
                                       "minCanaryRequests": 1000, "stepDeadline": "5m"}})
    assert world.run(obj).phase is phase


def test_inconclusive_hold_policy_holds() -> None:
    world = World(rps=0.5)
    obj = release(policies={"onInconclusive": "hold"},
                  strategy={"canary": {"steps": [{"weight": 10}], "interval": "60s",
                                       "minCanaryRequests": 1000, "stepDeadline": "5m"}})
    status = world.run(obj, max_ticks=120)
    assert status.phase is Phase.PROGRESSING and status.step == 0
    assert status.condition("Analysis").reason == "Inconclusive"  # type: ignore[union-attr]
    assert world.notifier.reasons().count("AnalysisInconclusive") == 1
    [notice] = [n for n in world.notifier.notices if n.reason == "AnalysisInconclusive"]
    assert notice.message.startswith("holding at 10%: no pass by the step deadline (300 s), and "
                                      "policies.onInconclusive is hold"), notice.message


def test_the_judge_learns_the_stable_versions_noise_from_its_metrics_before_the_release() -> None:
    """With a source of past windows, the release's first Initializing tick reads `historyIntervals` windows of
    the stable version, once, all before the release started; without one, the judge starts without them and
    an event says so. Both releases are promoted."""
    world = World()
    ports = world.controller().ports
    ports.history = world.metrics
    status = world.run(release(), controller=Reconciler(ports))
    assert status.phase is Phase.SUCCEEDED, status.message
    assert status.started_at is not None
    before = [q for q in world.metrics.queries if q[1] <= status.started_at]
    assert len(before) == 30 and before[-1][1] == status.started_at - 60
    priors = status.judge_state["priors"]
    assert set(priors) == set(SERVICES) and {p["intervals"] for p in priors.values()} == {30}
    assert "HistoryUnavailable" not in world.notifier.reasons()

    alone = World()
    assert alone.run(release()).phase is Phase.SUCCEEDED
    assert "HistoryUnavailable" in alone.notifier.reasons()
