"""The pure state machine, transition by transition (no reconciler, no ports)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from analysis.observations import ISTIO_BUCKETS_MS, VersionCounts, WindowCounts
from controller.core import machine
from controller.core.machine import ApplyRouting, EnsureWorkloads, Notify, Observation, RetireWorkloads
from controller.core.machine.phases import IN_FLIGHT_WAIT_S
from controller.core.plan import RoutingPlan
from controller.core.spec.release import InvalidSpec, ReleaseSpec, parse_release
from controller.core.status import Phase, ReleaseStatus
from controller.ports import Readiness
from controller.present.view import headline

SERVICES = ("master-search", "ml-infer", "ml-search", "keyword", "text-search")
NOW = 1_000_000.0
N = len(ISTIO_BUCKETS_MS)


def spec(**over: Any) -> ReleaseSpec:
    s: dict[str, Any] = {"stable": {"version": "v1"}, "canary": {"version": "v2", "services": ["ml-search"]},
                         # no warm-up: windows open `settle` after a weight change (warm-up has its own tests)
                         "strategy": {"canary": {"steps": [{"weight": 10}, {"weight": 50}], "interval": "60s",
                                                 "minCanaryRequests": 50, "settle": "5s", "warmup": "0s"}},
                         "analysis": {"minCanaryRequests": 50, "tailThresholdMs": 250}}
    s.update(over)
    return parse_release({"metadata": {"name": "r", "namespace": "ns", "generation": 4}, "spec": s})


def counts(requests: int, errors: int, bucket: int = 5) -> VersionCounts:
    b = [0] * N
    b[bucket] = requests
    return VersionCounts(requests, errors, tuple(b))


def window(stable: VersionCounts, canary: VersionCounts, start: float = NOW - 60, end: float = NOW
           ) -> WindowCounts:
    return WindowCounts(start, end, {("ml-search", "v1"): stable, ("ml-search", "v2"): canary})


def progressing(sp: ReleaseSpec, **over: Any) -> ReleaseStatus:
    from analysis.judges import make_judge
    base = ReleaseStatus(phase=Phase.PROGRESSING, observed_generation=4, step=0, canary_weight=10,
                         started_at=NOW - 300, phase_since=NOW - 200, step_started_at=NOW - 65,
                         last_analysis_at=NOW - 60, first_canary_traffic_at=NOW - 65,
                         judge_state=make_judge(sp.analysis).initial_state(services=sp.analysed_services))
    return replace(base, **over)


def routing(sp: ReleaseSpec, status: ReleaseStatus) -> RoutingPlan | None:
    return machine.desired_plan(sp, status)


def of(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def test_pending_starts_the_new_version_and_owns_the_routes_at_zero() -> None:
    sp = spec()
    status, actions = machine.step(sp, ReleaseStatus(), Observation(), NOW)
    assert status.phase is Phase.INITIALIZING and status.started_at == NOW
    assert status.observed_generation == 4 and status.judge_state
    assert of(actions, EnsureWorkloads) == [EnsureWorkloads("v2", ("ml-search",), {})]
    [apply] = of(actions, ApplyRouting)
    assert apply.plan.canary_weight == 0 and apply.plan.service("ml-search").canary == "v2"
    assert apply.plan.service("keyword").canary is None


@pytest.mark.parametrize("readiness,phase,weight", [
    ({"ml-search": Readiness(False, "starting")}, Phase.INITIALIZING, 0),
    ({}, Phase.INITIALIZING, 0),
    ({"ml-search": Readiness(True)}, Phase.PROGRESSING, 10),
    ({"ml-search": Readiness(False, "CrashLoopBackOff", failed=True)}, Phase.ROLLING_BACK, 0),
])
def test_initializing_waits_for_readiness(readiness: dict[str, Readiness], phase: Phase, weight: int) -> None:
    sp = spec()
    status = ReleaseStatus(phase=Phase.INITIALIZING, observed_generation=4, started_at=NOW, phase_since=NOW)
    new, actions = machine.step(sp, status, Observation(readiness=readiness), NOW + 5)
    assert new.phase is phase and new.canary_weight == weight
    if phase is Phase.PROGRESSING:
        assert new.last_analysis_at is None  # the first window opens `settle` after the routes read back
        assert [a.plan.canary_weight for a in of(actions, ApplyRouting)] == [10]


def test_progress_deadline_ends_in_failed_after_rolling_back() -> None:
    sp = spec(progressDeadline="30s")
    status = ReleaseStatus(phase=Phase.INITIALIZING, observed_generation=4, started_at=NOW, phase_since=NOW)
    new, _ = machine.step(sp, status, Observation(readiness={"ml-search": Readiness(False, "pulling")}), NOW + 31)
    assert new.phase is Phase.ROLLING_BACK and new.ending == "Failed"
    assert "ProgressDeadlineExceeded" in [c.reason for c in new.conditions]


@pytest.mark.parametrize("obs,verdict,phase,weight,action", [
    # a clear error regression, one interval of it: no interval alone can show harm (an error burst would
    # look the same), but the weight is held, not raised on "no harm seen"
    (Observation(metrics=window(counts(5400, 5), counts(600, 90))), "inconclusive", Phase.PROGRESSING, 10, "wait"),
    # clean and plentiful: shown within the margins, pass, next step (its weight moves once the new version
    # is scaled for it)
    (Observation(metrics=window(counts(27000, 0), counts(3000, 0))), "pass", Phase.PROGRESSING, 10, "next step"),
    # clean but too little to show the margins: no harm seen, so the weight may still grow (not promote)
    (Observation(metrics=window(counts(5400, 0), counts(600, 0))), "inconclusive", Phase.PROGRESSING, 10,
     "next step (no harm seen; safety not yet shown)"),
    # too few canary requests: inconclusive, wait
    (Observation(metrics=window(counts(90, 0), counts(10, 0))), "inconclusive", Phase.PROGRESSING, 10, "wait"),
    # metrics backend down: error, hold
    (Observation(metrics_error="connection refused"), "error", Phase.PROGRESSING, 10, "hold"),
])
def test_verdicts_and_their_actions(obs: Observation, verdict: str, phase: Phase, weight: int, action: str) -> None:
    sp = spec()
    status = progressing(sp)
    new, actions = machine.step(sp, status, replace(obs, routing=routing(sp, status)), NOW)
    assert new.last_verdict == verdict
    assert new.phase is phase and new.canary_weight == weight
    assert new.history[-1].action == action
    assert new.scaling_to == (50 if action.startswith("next step") else None)
    if weight != 10:
        [apply] = of(actions, ApplyRouting)
        assert apply.plan.canary_weight == weight
    else:
        assert of(actions, ApplyRouting) == []


def test_a_clear_error_regression_is_rolled_back_on_its_second_interval() -> None:
    sp = spec()
    status = progressing(sp)
    bad = Observation(metrics=window(counts(5400, 5), counts(600, 90)))
    held, _ = machine.step(sp, status, replace(bad, routing=routing(sp, status)), NOW)
    assert (held.last_verdict, held.canary_weight) == ("inconclusive", 10)
    assert "holding the weight" in held.history[-1].reason
    later = Observation(metrics=window(counts(5400, 5), counts(600, 90), start=NOW, end=NOW + 60))
    new, actions = machine.step(sp, held, replace(later, routing=routing(sp, held)), NOW + 60)
    assert (new.last_verdict, new.phase, new.canary_weight) == ("fail", Phase.ROLLING_BACK, 0)
    assert new.history[-1].action == "roll back"
    assert [a.plan.canary_weight for a in of(actions, ApplyRouting)] == [0]


def test_the_last_step_promotes_only_once_the_canary_is_shown_within_its_margins() -> None:
    sp = spec()
    status = progressing(sp, step=1, canary_weight=50)
    obs = Observation(metrics=window(counts(300, 0), counts(300, 0)), routing=routing(sp, status))
    new, actions = machine.step(sp, status, obs, NOW)
    assert new.last_verdict == "inconclusive" and new.phase is Phase.PROGRESSING and new.canary_weight == 50
    assert new.history[-1].action == "wait" and "not yet shown safe" in new.history[-1].reason
    assert new.history[-1].reason.endswith("at the current rate")  # how long the missing requests take
    assert of(actions, ApplyRouting) == []


def test_srm_is_an_error_never_a_pass() -> None:
    sp = spec()
    status = progressing(sp)
    # 10% intended, 40% observed: the routing is not what the controller thinks it is.
    obs = Observation(metrics=window(counts(3000, 0), counts(2000, 0)), routing=routing(sp, status))
    new, _ = machine.step(sp, status, obs, NOW)
    assert new.last_verdict == "error"
    assert new.phase is Phase.PROGRESSING and new.canary_weight == 10


def test_repeated_errors_roll_back_after_the_configured_count() -> None:
    sp = spec(policies={"rollbackAfterErrors": 2})
    status = progressing(sp, consecutive_errors=1)
    new, _ = machine.step(sp, status, Observation(metrics_error="timeout", routing=routing(sp, status)), NOW)
    assert new.phase is Phase.ROLLING_BACK and new.ending == "RolledBack"


def test_last_step_pass_promotes_with_capacity_first() -> None:
    sp = spec()
    status = progressing(sp, step=1, canary_weight=50)
    obs = Observation(metrics=window(counts(3000, 0), counts(3000, 0)), routing=routing(sp, status))
    new, actions = machine.step(sp, status, obs, NOW)
    assert new.phase is Phase.PROMOTING and "Promoting" in [n.reason for n in of(actions, Notify)]
    # First the new version is scaled to the stable's size; the routes stay at 50% meanwhile.
    assert new.scaling_to == 100 and new.canary_weight == 50 and of(actions, ApplyRouting) == []
    assert machine.capacity_weight(new) == 100 and machine.wants(sp, new, NOW + 1).readiness
    short = {"ml-search": Readiness(False, "ml-search-v2: 3/10 ready", ready_replicas=3)}
    held, actions = machine.step(sp, new, Observation(readiness=short, routing=routing(sp, new)), NOW + 1)
    assert held.phase is Phase.PROMOTING and held.canary_weight == 50 and of(actions, ApplyRouting) == []
    ready = {"ml-search": Readiness(True, ready_replicas=10)}
    moved, actions = machine.step(sp, held, Observation(readiness=ready, routing=routing(sp, held)), NOW + 2)
    # Stage one: every new request into the canary lane; requests in flight keep their lane routes.
    [apply] = of(actions, ApplyRouting)
    assert apply.plan.service("ml-search").stable == "v1" and apply.plan.canary_weight == 100
    assert moved.scaling_to is None and not machine.wants(sp, moved, NOW + 3).readiness


def test_a_step_moves_its_weight_once_the_new_version_has_the_capacity() -> None:
    sp = spec()
    status = progressing(sp, step=1, canary_weight=10, scaling_to=50, last_analysis_at=None)
    assert machine.capacity_weight(status) == 50  # the workloads are sized for the coming weight
    short = {"ml-search": Readiness(False, "ml-search-v2: 2/5 ready", ready_replicas=2)}
    held, actions = machine.step(sp, status, Observation(readiness=short, routing=routing(sp, status)), NOW)
    assert held.phase is Phase.PROGRESSING and held.canary_weight == 10 and held.scaling_to == 50
    assert of(actions, ApplyRouting) == [] and "2/5 ready" in held.message
    assert machine.wants(sp, held, NOW + 120).metrics_window is None  # no window while scaling
    ready = {"ml-search": Readiness(True, ready_replicas=5)}
    moved, actions = machine.step(sp, held, Observation(readiness=ready, routing=routing(sp, held)), NOW + 9)
    assert moved.canary_weight == 50 and moved.scaling_to is None and moved.unready_since is None
    assert [a.plan.canary_weight for a in of(actions, ApplyRouting)] == [50]
    assert "WeightIncreased" in [n.reason for n in of(actions, Notify)]
    assert moved.last_analysis_at is None and moved.step_started_at == NOW + 9  # no window until read back
    seen, _ = machine.step(sp, moved, Observation(readiness=ready, routing=routing(sp, moved)), NOW + 10)
    assert seen.last_analysis_at == NOW + 10 + sp.strategy.settle


@pytest.mark.parametrize("readiness,phase,reason", [
    # an autoscaler scaling up, or evicted pods being replaced: held, the window dropped
    ({"ml-search": Readiness(False, "3/5 ready", ready_replicas=3)}, Phase.PROGRESSING, "WaitingForCapacity"),
    # no pod left serving its traffic: rolled back at once
    ({"ml-search": Readiness(False, "0/5 ready", ready_replicas=0)}, Phase.ROLLING_BACK, "CanaryNotReady"),
    # a platform that does not count pods: not ready is lost (the local mode's processes)
    ({"ml-search": Readiness(False, "exited")}, Phase.ROLLING_BACK, "CanaryNotReady"),
    ({"ml-search": Readiness(False, "progress deadline exceeded", failed=True, ready_replicas=3)},
     Phase.ROLLING_BACK, "CanaryFailed"),
])
def test_a_serving_canary_short_of_pods_is_held_unless_lost(readiness: dict[str, Readiness], phase: Phase,
                                                             reason: str) -> None:
    sp = spec(progressDeadline="60s")
    status = progressing(sp)
    obs = Observation(readiness=readiness, metrics=window(counts(5400, 0), counts(600, 0)),
                      routing=routing(sp, status))
    new, actions = machine.step(sp, status, obs, NOW)
    assert new.phase is phase and reason in [n.reason for n in of(actions, Notify)]
    if phase is Phase.PROGRESSING:
        assert new.history == status.history and new.canary_weight == 10  # the window was not judged
        assert new.unready_since == NOW
        later, _ = machine.step(sp, new, replace(obs, metrics=None), NOW + 30)
        assert later.phase is Phase.PROGRESSING and later.unready_since == NOW
        whole = {"ml-search": Readiness(True, ready_replicas=5)}
        healed, _ = machine.step(sp, later, Observation(readiness=whole, routing=obs.routing), NOW + 40)
        assert healed.unready_since is None and healed.last_analysis_at == NOW + 40 + sp.strategy.settle
        timed_out, _ = machine.step(sp, later, replace(obs, metrics=None), NOW + 61)
        assert timed_out.phase is Phase.ROLLING_BACK and timed_out.ending == "RolledBack"
        assert timed_out.condition("Release").reason == "ProgressDeadlineExceeded"


@pytest.mark.parametrize("pods_told_apart, opens_after", [(False, 30.0), (True, 5.0)])
def test_back_at_full_capacity_the_next_window_waits_the_replacements_warm_up_unless_the_judge_leaves_them_out(
        pods_told_apart: bool, opens_after: float) -> None:
    """Replacement pods are new pods: the next window opens after their warm-up, or after `settle` when the
    last window told the canary's pods apart (the judge then leaves the new ones out while they warm up)."""
    sp = spec(strategy={"canary": {"steps": [{"weight": 10}, {"weight": 50}], "interval": "60s",
                                   "minCanaryRequests": 50, "settle": "5s", "warmup": "30s"}})
    status = progressing(sp, unready_since=NOW - 20, pod_warmup=pods_told_apart)
    whole = {"ml-search": Readiness(True, ready_replicas=5)}
    healed, _ = machine.step(sp, status, Observation(readiness=whole, routing=routing(sp, status)), NOW)
    assert healed.unready_since is None and healed.last_analysis_at == NOW + opens_after
    assert ("warming up" in headline(sp, healed, NOW)) is not pods_told_apart


def test_promotion_cuts_over_after_the_drain_time() -> None:
    sp = spec(drainTime="5s")
    status = replace(progressing(sp), phase=Phase.PROMOTING, canary_weight=100, phase_since=NOW)
    all_canary = machine.base_plan(sp).with_weight(100)
    new, actions = machine.step(sp, status, Observation(routing=all_canary), NOW)
    assert new.phase is Phase.PROMOTING and not new.cutover and new.stage_since == NOW
    assert of(actions, ApplyRouting) == []
    new, actions = machine.step(sp, new, Observation(routing=all_canary), NOW + 5)
    assert new.cutover
    [apply] = of(actions, ApplyRouting)
    assert apply.plan.service("ml-search").stable == "v2" and apply.plan.canary_weight == 0


def test_lost_canary_readiness_rolls_back() -> None:
    sp = spec()
    status = progressing(sp)
    obs = Observation(readiness={"ml-search": Readiness(False, "probe failed")}, routing=routing(sp, status))
    new, _ = machine.step(sp, status, obs, NOW - 30)
    assert new.phase is Phase.ROLLING_BACK and new.canary_weight == 0


def test_rolling_back_drains_then_removes_the_canary_routes_then_ends() -> None:
    sp = spec(drainTime="5s")
    status = replace(progressing(sp), phase=Phase.ROLLING_BACK, canary_weight=0, ending="RolledBack")
    # Stage one: the entry split goes to 0%; the lane routes stay so requests in flight finish in their lane.
    still_split = machine.base_plan(sp).with_weight(10)
    new, actions = machine.step(sp, status, Observation(routing=still_split), NOW)
    assert new.phase is Phase.ROLLING_BACK and not new.cutover
    [apply] = of(actions, ApplyRouting)
    assert apply.plan.canary_weight == 0 and apply.plan.service("ml-search").canary == "v2"
    no_new_canary = machine.base_plan(sp).with_weight(0)
    new, _ = machine.step(sp, new, Observation(routing=no_new_canary), NOW + 1)
    assert not new.cutover and new.stage_since == NOW + 1
    new, actions = machine.step(sp, new, Observation(routing=no_new_canary), NOW + 6)
    assert new.cutover and new.phase is Phase.ROLLING_BACK
    [apply] = of(actions, ApplyRouting)
    assert not apply.plan.canary_reachable() and apply.plan.service("ml-search").canary is None
    assert of(actions, RetireWorkloads) == []
    new, actions = machine.step(sp, new, Observation(routing=machine.base_plan(sp).all_stable()), NOW + 7)
    assert new.phase is Phase.ROLLED_BACK
    assert of(actions, RetireWorkloads) == [RetireWorkloads("v2", ("ml-search",))]


@pytest.mark.parametrize("phase, retiring", [(Phase.ROLLING_BACK, "v2"), (Phase.PROMOTING, "v1")])
def test_the_cutover_waits_for_requests_in_flight_on_the_retiring_lane_at_most_a_minute_more(
        phase: Phase, retiring: str) -> None:
    """After `drainTime` the machine asks for the requests still in flight on the lane the cutover retires (the
    canary's on a rollback, the stable version's on a promotion, of the changed services only) and waits while
    there are any, at most IN_FLIGHT_WAIT_S more; a mesh that cannot count them (None) gets `drainTime` alone."""
    sp = spec(drainTime="5s")
    status = replace(progressing(sp), phase=phase, canary_weight=0 if phase is Phase.ROLLING_BACK else 100,
                     phase_since=NOW, stage_since=NOW, ending="RolledBack" if phase is Phase.ROLLING_BACK else None)
    stage_one = machine.base_plan(sp).with_weight(status.canary_weight)
    assert machine.wants(sp, status, NOW + 4.9).in_flight == ()  # within drainTime: not asked
    assert machine.wants(sp, status, NOW + 5).in_flight == (("ml-search", retiring),)
    waits, actions = machine.step(sp, status, Observation(routing=stage_one, in_flight=3), NOW + 5)
    assert not waits.cutover and waits.stage_since == NOW and of(actions, Notify) == []
    waiting = waits.condition("Drained")
    assert waiting is not None and (waiting.status, waiting.reason) == ("False", "RequestsInFlight")
    assert waiting.message.startswith("3 requests still in flight on the retiring version")
    ended = {0: ("True", "RequestsAnswered"), None: ("Unknown", "NotCounted"), 2: ("False", "TimedOut")}
    for in_flight, at in ((0, NOW + 6), (None, NOW + 5), (2, NOW + 5 + IN_FLIGHT_WAIT_S)):
        cut, actions = machine.step(sp, waits, Observation(routing=stage_one, in_flight=in_flight), at)
        assert cut.cutover and cut.stage_since == at, (in_flight, at)
        assert machine.wants(sp, cut, at + 10).in_flight == ()  # after the cutover: not asked
        # Only a cutover that ran out of time with requests still counted is a warning, with the count.
        warned = [(n.reason, n.warning) for n in of(actions, Notify)]
        assert warned == ([("DrainTimedOut", True)] if in_flight else []), (in_flight, warned)
        drained = cut.condition("Drained")
        assert drained is not None and (drained.status, drained.reason) == ended[in_flight]
    # A drain that never waited (nothing in flight at drainTime) adds no condition.
    quiet = machine.step(sp, status, Observation(routing=stage_one, in_flight=0), NOW + 5)[0]
    assert quiet.cutover and quiet.condition("Drained") is None
    [notice] = of(actions, Notify)
    assert "cut over with 2 requests still in flight on the retiring version after 65s" in notice.message
    if phase is Phase.ROLLING_BACK:
        assert cut.canary_off_at is not None  # the rollback's bookkeeping kept with the notice


def test_promoting_waits_for_the_scale_down_delay() -> None:
    sp = spec(scaleDownDelay="30s")
    status = replace(progressing(sp), phase=Phase.PROMOTING, phase_since=NOW, cutover=True, stage_since=NOW)
    promoted = machine.base_plan(sp).promoted()
    assert machine.step(sp, status, Observation(routing=promoted), NOW + 10)[0].phase is Phase.PROMOTING
    new, actions = machine.step(sp, status, Observation(routing=promoted), NOW + 31)
    assert new.phase is Phase.SUCCEEDED
    assert of(actions, RetireWorkloads) == [RetireWorkloads("v1", ("ml-search",))]


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.ABORTED])
def test_final_phases_do_not_move(phase: Phase) -> None:
    sp = spec(abort=True, paused=True)
    status = replace(progressing(sp), phase=phase)
    new, actions = machine.step(sp, status, Observation(routing=machine.desired_plan(sp, status)), NOW)
    assert new.phase is phase
    assert of(actions, ApplyRouting) == [] and of(actions, Notify) == []


def test_abort_from_progressing() -> None:
    sp = spec(abort=True)
    new, actions = machine.step(sp, progressing(sp), Observation(), NOW)
    assert new.phase is Phase.ROLLING_BACK and new.ending == "Aborted"
    assert [a.plan.canary_weight for a in of(actions, ApplyRouting)] == [0]


@pytest.mark.parametrize("phase,last,now,window", [
    (Phase.PROGRESSING, NOW - 60, NOW, (NOW - 60, NOW)),
    (Phase.PROGRESSING, NOW - 58, NOW, (NOW - 58, NOW)),  # a little early still counts
    (Phase.PROGRESSING, NOW - 30, NOW, None),
    (Phase.PROGRESSING, NOW + 5, NOW, None),  # still settling after a weight change
    (Phase.PAUSED, NOW - 60, NOW, None),
    (Phase.INITIALIZING, None, NOW, None),
])
def test_metrics_windows_are_asked_for_once_per_interval(phase: Phase, last: float | None, now: float,
                                                         window: tuple[float, float] | None) -> None:
    status = ReleaseStatus(phase=phase, last_analysis_at=last)
    assert machine.wants(spec(), status, now).metrics_window == window


def test_workloads_that_cannot_be_created_fail_the_release_at_the_deadline() -> None:
    """Missing workloads after a controller restart restart the readiness clock; a create the API keeps
    refusing (say a name it will not take) fails the release once `progressDeadline` has passed."""
    sp = spec(progressDeadline="60s")
    missing = {"ml-search": Readiness(False, "does not exist yet", exists=False)}
    status = ReleaseStatus(phase=Phase.INITIALIZING, observed_generation=4, started_at=NOW - 3600,
                           phase_since=NOW - 3600)
    first, _ = machine.step(sp, status, Observation(readiness=missing), NOW)
    assert first.phase is Phase.INITIALIZING and first.phase_since == NOW  # downtime never counts
    still, _ = machine.step(sp, first, Observation(readiness=missing), NOW + 59)
    assert still.phase is Phase.INITIALIZING
    created, _ = machine.step(sp, still, Observation(readiness={"ml-search": Readiness(False, "starting")}), NOW + 30)
    assert created.unready_since is None and created.phase is Phase.INITIALIZING
    failed, _ = machine.step(sp, still, Observation(readiness=missing), NOW + 61)
    assert failed.phase is Phase.ROLLING_BACK and failed.ending == "Failed"
    assert "could not be created in 61s" in failed.message


def test_windows_open_no_sooner_after_a_weight_change_than_the_metrics_source_can_count_it() -> None:
    """Prometheus read 35 s behind (lag + a scrape): a window starting 5 s after a weight change would count
    30 s of the old weight's traffic, so the runner's delay stretches `settle` (the spec itself is unchanged)."""
    sp = spec()
    assert machine.settled_for(sp, 0.0) is sp and machine.settled_for(sp, 3.0) is sp  # settle 5 s covers it
    slow = machine.settled_for(sp, 35.0)
    assert slow.strategy.settle == 35.0 and sp.strategy.settle == 5.0
    status = progressing(slow, step=1, canary_weight=10, scaling_to=50, last_analysis_at=None)
    ready = {"ml-search": Readiness(True, ready_replicas=5)}
    moved, _ = machine.step(slow, status, Observation(readiness=ready, routing=routing(slow, status)), NOW)
    seen, _ = machine.step(slow, moved, Observation(readiness=ready, routing=routing(slow, moved)), NOW + 1)
    assert moved.canary_weight == 50 and seen.last_analysis_at == NOW + 1 + 35.0
    exp = spec(strategy={"abTest": {"variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
                                    "primaryMetric": {"kind": "proportion", "name": "click-through"},
                                    "interval": "30s"}})
    assert exp.experiment is not None and machine.settled_for(exp, 40.0).experiment.settle == 40.0


def test_a_window_opens_settle_after_the_new_weight_is_read_back_not_after_it_was_decided() -> None:
    """The crash campaign in the cluster-like world: the status moving a step's weight is persisted first and
    the routes are written after it, 1-3 s after the tick's `now` on a loaded machine (settle 1 s). A window
    opened at `now + settle` then counted the old weight's traffic against the new weight, and sample-ratio
    errors rolled healthy releases back. No window until a tick reads the new weight back in effect."""
    sp = spec()  # settle 5 s, interval 60 s
    ready = {"ml-search": Readiness(True, ready_replicas=5)}
    status = progressing(sp, step=1, canary_weight=10, scaling_to=50, last_analysis_at=None)
    moved, actions = machine.step(sp, status, Observation(readiness=ready, routing=routing(sp, status)), NOW)
    assert moved.canary_weight == 50 and [a.plan.canary_weight for a in of(actions, ApplyRouting)] == [50]
    # The write lands at NOW + 8, after `settle`; the next tick comes an interval later and reads it back.
    later = NOW + 8 + sp.strategy.interval
    assert machine.wants(sp, moved, later).metrics_window is None  # was (NOW + 5, later]: 3 s at 10% in it
    seen, actions = machine.step(sp, moved, Observation(readiness=ready, routing=routing(sp, moved)), later)
    opened = later + sp.strategy.settle
    assert seen.last_analysis_at == opened and of(actions, ApplyRouting) == [] and seen.history == ()
    due = opened + sp.strategy.interval
    assert machine.wants(sp, seen, due).metrics_window == (opened, due)
    # Read back at the old weight (the write lost, or still to come): no window, and the routes are written again.
    old = routing(sp, status)
    lost, actions = machine.step(sp, moved, Observation(readiness=ready, routing=old), later)
    assert lost.last_analysis_at is None and [a.plan.canary_weight for a in of(actions, ApplyRouting)] == [50]
    stale = Observation(readiness=ready, routing=old, metrics=window(counts(5400, 0), counts(600, 0)))
    dropped, _ = machine.step(sp, replace(moved, last_analysis_at=NOW - 60), stale, later)
    assert dropped.history == () and dropped.last_analysis_at is None  # a window at a weight not in effect


def test_warmup_holds_a_steps_first_window_until_the_new_pods_have_served_a_while() -> None:
    """`warmup`: new canary pods are slower for a while (cold caches, JIT); what they serve then is not judged.
    The step's first window opens max(settle, warmup) after the weight is read back, and after a return to full
    capacity (the replacements are new pods too)."""
    sp = spec(strategy={"canary": {"steps": [{"weight": 10}, {"weight": 50}], "interval": "60s", "settle": "5s",
                                   "warmup": "2m", "minCanaryRequests": 50}})
    assert sp.strategy.warmup == 120.0 and sp.strategy.first_window_after == 120.0
    ready = {"ml-search": Readiness(True, ready_replicas=5)}
    status = progressing(sp, step=1, canary_weight=10, scaling_to=50, last_analysis_at=None)
    moved, _ = machine.step(sp, status, Observation(readiness=ready, routing=routing(sp, status)), NOW)
    seen, _ = machine.step(sp, moved, Observation(readiness=ready, routing=routing(sp, moved)), NOW + 1)
    assert seen.last_analysis_at == NOW + 1 + 120
    assert machine.wants(sp, seen, NOW + 100).metrics_window is None  # warming up
    assert machine.wants(sp, seen, NOW + 1 + 180).metrics_window == (NOW + 121, NOW + 181)
    short = {"ml-search": Readiness(False, "3/5 ready", ready_replicas=3)}
    held, _ = machine.step(sp, seen, Observation(readiness=short, routing=routing(sp, seen)), NOW + 200)
    healed, _ = machine.step(sp, held, Observation(readiness=ready, routing=routing(sp, held)), NOW + 230)
    assert healed.last_analysis_at == NOW + 230 + 120
    assert spec().strategy.warmup == 0.0 and spec().strategy.first_window_after == 5.0  # none
    default = spec(strategy={"canary": {"steps": [{"weight": 10}], "interval": "60s", "settle": "5s"}})
    assert default.strategy.warmup == 60.0  # the default: one interval
    short = spec(strategy={"canary": {"steps": [{"weight": 10}], "interval": "60s", "stepDeadline": "90s"}})
    assert short.strategy.warmup == 30.0  # as far as the step deadline leaves a whole interval


def test_a_window_that_tells_the_canary_pods_apart_lets_the_next_step_open_after_settle() -> None:
    """When the metrics name the pods, the judge leaves a canary pod out of the first interval it serves in
    (warm-up per pod); the pods already serving are judged at once. So after a weight change the window opens
    `settle` later, not `warmup`; without per-pod counts it still waits the warm-up."""
    sp = spec(strategy={"canary": {"steps": [{"weight": 10}, {"weight": 50}], "interval": "60s", "settle": "5s",
                                   "warmup": "2m", "minCanaryRequests": 50}})
    assert sp.strategy.pod_warmup_intervals == 2
    ready = {"ml-search": Readiness(True, ready_replicas=5)}
    status = progressing(sp)
    stable_pods = {f"ml-search-v1-{i}": counts(540, 0) for i in range(10)}
    by_pod = replace(window(counts(5400, 0), counts(600, 0)),
                     pods={("ml-search", "v1"): stable_pods, ("ml-search", "v2"): {"ml-search-v2-a": counts(600, 0)}})
    looked, _ = machine.step(sp, status, Observation(readiness=ready, routing=routing(sp, status), metrics=by_pod),
                             NOW)
    assert looked.pod_warmup and looked.history[-1].verdict != "error"
    blind, _ = machine.step(sp, status, Observation(readiness=ready, routing=routing(sp, status),
                                                    metrics=window(counts(5400, 0), counts(600, 0))), NOW)
    assert not blind.pod_warmup
    for before, wait in ((looked, 5.0), (blind, 120.0)):
        moved = replace(before, step=1, scaling_to=None, canary_weight=50, last_analysis_at=None)
        seen, _ = machine.step(sp, moved, Observation(readiness=ready, routing=routing(sp, moved)), NOW + 10)
        assert seen.last_analysis_at == NOW + 10 + wait
    assert ReleaseStatus.from_storage(looked.for_storage()).pod_warmup  # kept in the status


def test_a_warmup_that_leaves_no_window_before_the_step_deadline_is_refused() -> None:
    with pytest.raises(InvalidSpec, match=r"strategy\.canary\.warmup: 600s leaves no whole interval"):
        spec(strategy={"canary": {"steps": [{"weight": 10}], "interval": "60s", "warmup": "10m"}})


def _bursty_history(sp: ReleaseSpec, started: float) -> tuple[WindowCounts, ...]:
    """`historyIntervals` windows of the stable version alone, its errors in bursts (5 to 120 per 5,000)."""
    errors = (45, 5, 120, 20, 60, 10, 90, 15)
    ends = [end for _, end in machine.history_windows(sp, initializing(sp, started))]
    return tuple(WindowCounts(end - 60, end, {("ml-search", "v1"): counts(5000, errors[i % len(errors)])})
                 for i, end in enumerate(ends))


def initializing(sp: ReleaseSpec, started: float = NOW) -> ReleaseStatus:
    from analysis.judges import make_judge
    return ReleaseStatus(phase=Phase.INITIALIZING, observed_generation=4, started_at=started, phase_since=started,
                         judge_state=make_judge(sp.analysis).initial_state(services=sp.analysed_services))


def test_a_starting_release_reads_the_stable_versions_history_once_and_the_judge_learns_its_bursts() -> None:
    from analysis.sequential import rate_burstiness
    sp = spec()
    status = initializing(sp)
    windows = machine.wants(sp, status, NOW + 5).history_windows
    # 30 intervals (the default), oldest first, ending one interval before the release started
    assert len(windows) == 30 and windows[-1] == (NOW - 120, NOW - 60) and windows[0] == (NOW - 1860, NOW - 1800)
    obs = Observation(readiness={"ml-search": Readiness(False, "starting")}, history=_bursty_history(sp, NOW))
    new, actions = machine.step(sp, status, obs, NOW + 5)
    priors = new.judge_state["priors"]["ml-search"]
    assert priors["intervals"] == 30 and not of(actions, Notify)
    assert rate_burstiness({"spread": priors["errorRate"]}) > 0.3
    assert machine.wants(sp, new, NOW + 10).history_windows == ()  # read once


def test_history_that_cannot_be_read_starts_the_judge_without_it_and_says_why() -> None:
    sp = spec()
    obs = Observation(readiness={"ml-search": Readiness(True)}, history_error="this metrics source keeps no history")
    new, actions = machine.step(sp, initializing(sp), obs, NOW + 5)
    assert new.phase is Phase.PROGRESSING and new.judge_state["priors"] == {}
    [notice] = [a for a in of(actions, Notify) if a.reason == "HistoryUnavailable"]
    assert "keeps no history" in notice.message


@pytest.mark.parametrize("over", [{"analysis": {"historyIntervals": 0}},
                                  {"analysis": {"judge": "kayenta"}}])
def test_no_history_is_asked_when_turned_off_or_the_judge_learns_nothing_from_it(over: dict[str, Any]) -> None:
    sp = spec(**over)
    assert machine.wants(sp, initializing(sp), NOW + 5).history_windows == ()
