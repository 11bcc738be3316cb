"""The shadow phase in the pure state machine (docs/shadow.md): spec, routes, looks at the comparator, decisions."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from analysis.shadow import ShadowPair
from controller.core import machine
from controller.core.machine import ApplyRouting, Notify, Observation
from controller.core.machine.shadowing import served_as_asked
from controller.core.observation import MirroredPair, ShadowBatch
from controller.core.spec.release import InvalidSpec, ReleaseSpec, parse_release
from controller.core.status import Phase, ReleaseStatus
from controller.ports import Readiness

NOW = 1_000_000.0
PATH_V1 = "master-search@v1,ml-infer@v1,ml-search@v1,keyword@v1,text-search@v1"
PATH_V2 = "master-search@v1,ml-infer@v1,ml-search@v2,keyword@v1,text-search@v1"
READY = {"ml-search": Readiness(True)}


def spec(shadow: dict[str, Any] | None = None, **over: Any) -> ReleaseSpec:
    s: dict[str, Any] = {"stable": {"version": "v1"}, "canary": {"version": "v2", "services": ["ml-search"]},
                         "strategy": {"canary": {"steps": [{"weight": 10}, {"weight": 50}], "interval": "60s"},
                                      "shadow": {"minPairs": 20, "maxDuration": "5m", **(shadow or {})}}}
    s.update(over)
    return parse_release({"metadata": {"name": "r", "namespace": "ns", "generation": 1}, "spec": s})


def pairs(n: int, new: tuple[str, ...], served_new: str = PATH_V2, start: int = 0) -> tuple[MirroredPair, ...]:
    stable = tuple(f"d{i}" for i in range(10))
    return tuple(MirroredPair(ShadowPair(f"q{start + i}", stable, stable, new),
                              {"stable": PATH_V1, "stableAgain": PATH_V1, "new": served_new}) for i in range(n))


SAME = tuple(f"d{i}" for i in range(10))
OTHER = tuple(f"x{i}" for i in range(10))


def shadowing(sp: ReleaseSpec, now: float = NOW) -> ReleaseStatus:
    """A release that just became ready and entered its shadow phase."""
    status = ReleaseStatus(phase=Phase.INITIALIZING, observed_generation=1, started_at=now - 30, phase_since=now - 30)
    new, _ = machine.step(sp, status, Observation(readiness=READY), now)
    assert new.phase is Phase.SHADOWING
    return new


def look(sp: ReleaseSpec, status: ReleaseStatus, batch: ShadowBatch | None, now: float,
         error: str | None = None) -> tuple[ReleaseStatus, list[Any]]:
    obs = Observation(readiness=READY, routing=machine.desired_plan(sp, status), shadow=batch, shadow_error=error)
    return machine.step(sp, status, obs, now)


def test_the_spec_reads_the_shadow_with_defaults_and_names_every_bad_field() -> None:
    sp = spec()
    assert sp.shadow is not None
    assert (sp.shadow.routes.comparator, sp.shadow.routes.percent, sp.shadow.judge.min_overlap) == \
        ("canary-shadow", 100.0, 0.8)
    with pytest.raises(InvalidSpec) as info:
        spec({"mirrorPercent": 0, "minOverlap": 1.5, "header": "x-canary-lane", "comparator": "Bad_Name"})
    problems = "\n".join(info.value.problems)
    for field in ("mirrorPercent", "minOverlap", "header", "comparator"):
        assert f"spec.strategy.shadow.{field}" in problems
    with pytest.raises(InvalidSpec, match="not before an A/B experiment"):
        parse_release({"metadata": {"name": "r"}, "spec": {
            "stable": {"version": "v1"}, "canary": {"version": "v2"}, "strategy": {"shadow": {}, "abTest": {
                "variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
                "primaryMetric": {"kind": "proportion", "name": "click-through"}}}}})


def test_a_ready_release_mirrors_searches_with_no_user_traffic_on_the_new_version() -> None:
    sp = spec({"mirrorPercent": 25})
    status = shadowing(sp)
    plan = machine.desired_plan(sp, status)
    assert plan is not None and plan.canary_weight == 0 and not plan.canary_reachable()
    assert plan.shadow is not None and plan.shadow.percent == 25.0
    wants = machine.wants(sp, status, NOW + 1)
    assert wants.shadow_after == ("", -1) and wants.readiness and wants.metrics_window is None
    # A release without a shadow phase goes straight to its first step.
    plain = spec()
    plain = replace(plain, shadow=None)
    new, _ = machine.step(plain, ReleaseStatus(phase=Phase.INITIALIZING, observed_generation=1, started_at=NOW,
                                               phase_since=NOW), Observation(readiness=READY), NOW)
    assert new.phase is Phase.PROGRESSING


def test_the_first_look_reads_only_where_the_comparator_stands_then_pairs_after_it() -> None:
    sp = spec()
    status = shadowing(sp)
    # Pairs the comparator made before this release mirrored anything are not judged.
    status, _ = look(sp, status, ShadowBatch("e1", head=500, pairs=pairs(30, OTHER)), NOW + 2)
    assert status.shadow is not None and status.shadow["state"]["n"] == 0
    assert machine.wants(sp, status, NOW + 3).shadow_after == ("e1", 500)
    status, _ = look(sp, status, ShadowBatch("e1", head=510, pairs=pairs(10, SAME)), NOW + 4)
    assert status.shadow["state"]["n"] == 10 and status.phase is Phase.SHADOWING
    assert machine.wants(sp, status, NOW + 5).shadow_after == ("e1", 510)


def test_pairs_not_served_by_the_versions_asked_are_counted_not_judged() -> None:
    sp = spec()
    assert served_as_asked(sp, pairs(1, SAME)[0])
    assert not served_as_asked(sp, pairs(1, SAME, served_new=PATH_V1)[0])  # the new answer came from v1
    assert served_as_asked(sp, pairs(1, SAME, served_new="")[0])  # a stack that does not say
    status = shadowing(sp)
    status, _ = look(sp, status, ShadowBatch("e1", head=0), NOW + 2)
    status, _ = look(sp, status, ShadowBatch("e1", head=40, pairs=pairs(40, SAME, served_new=PATH_V1)), NOW + 4)
    assert status.phase is Phase.SHADOWING
    assert status.shadow is not None and status.shadow["state"]["n"] == 0 and status.shadow["foreign"] == 40


def test_different_rankings_end_the_release_before_any_user_traffic_moved() -> None:
    sp = spec()
    status = shadowing(sp)
    status, _ = look(sp, status, ShadowBatch("e1", head=0), NOW + 2)
    status, actions = look(sp, status, ShadowBatch("e1", head=40, pairs=pairs(40, OTHER)), NOW + 4)
    assert status.phase is Phase.ROLLING_BACK and status.ending == Phase.ROLLED_BACK.value
    assert status.canary_weight == 0 and status.first_canary_traffic_at is None
    assert status.shadow is not None and status.shadow["verdict"]["decision"] == "fail"
    assert any(isinstance(a, Notify) and a.reason == "ShadowFailed" for a in actions)
    # The rollback's routes carry no mirror and no canary weight.
    [apply] = [a for a in actions if isinstance(a, ApplyRouting)]
    assert apply.plan.shadow is None and apply.plan.canary_weight == 0


def test_same_rankings_pass_to_the_first_step() -> None:
    sp = spec()
    status = shadowing(sp)
    status, _ = look(sp, status, ShadowBatch("e1", head=0), NOW + 2)
    status, _ = look(sp, status, ShadowBatch("e1", head=10, pairs=pairs(10, SAME)), NOW + 4)
    assert status.phase is Phase.SHADOWING  # fewer than minPairs never decide
    status, actions = look(sp, status, ShadowBatch("e1", head=60, pairs=pairs(50, SAME, start=10)), NOW + 6)
    assert status.phase is Phase.PROGRESSING and status.step == 0
    assert status.condition("Shadow") is not None and status.condition("Shadow").reason == "Passed"
    assert any(isinstance(a, Notify) and a.reason == "ShadowPassed" for a in actions)
    plan = machine.desired_plan(sp, status)
    assert plan is not None and plan.shadow is None


def test_a_restarted_comparator_is_read_from_its_first_pair() -> None:
    sp = spec()
    status = shadowing(sp)
    status, _ = look(sp, status, ShadowBatch("e1", head=100), NOW + 2)
    status, _ = look(sp, status, ShadowBatch("e2", head=5, pairs=pairs(5, SAME)), NOW + 4)
    assert status.shadow is not None and status.shadow["state"]["n"] == 5 and status.shadow["epoch"] == "e2"


@pytest.mark.parametrize("policy,phase,weight", [
    ("rollback", Phase.ROLLING_BACK, 0), ("continue", Phase.PROGRESSING, 10), ("hold", Phase.SHADOWING, 0)])
def test_no_decision_by_max_duration_follows_on_inconclusive(policy: str, phase: Phase, weight: int) -> None:
    sp = spec(policies={"onInconclusive": policy})
    status = shadowing(sp)
    status, _ = look(sp, status, ShadowBatch("e1", head=0), NOW + 2)
    status, _ = look(sp, status, None, NOW + 301, error="comparator unreachable")
    assert status.phase is phase and status.canary_weight == weight
    assert status.shadow is not None and status.shadow["error"] == "comparator unreachable"


def test_an_unreachable_comparator_holds_the_phase_and_never_passes_it() -> None:
    sp = spec()
    status = shadowing(sp)
    for t in range(1, 100, 5):
        status, _ = look(sp, status, None, NOW + t, error="connection refused")
        assert status.phase is Phase.SHADOWING
    assert status.condition("Shadow") is not None and status.condition("Shadow").reason == "ComparatorUnreachable"


def test_recorded_only_goes_on_at_max_duration_whatever_the_rankings() -> None:
    sp = spec({"enforce": False})
    status = shadowing(sp)
    status, _ = look(sp, status, ShadowBatch("e1", head=0), NOW + 2)
    status, _ = look(sp, status, ShadowBatch("e1", head=40, pairs=pairs(40, OTHER)), NOW + 4)
    assert status.phase is Phase.SHADOWING  # recorded, not judged
    status, actions = look(sp, status, ShadowBatch("e1", head=40), NOW + 301)
    assert status.phase is Phase.PROGRESSING
    assert any(isinstance(a, Notify) and a.reason == "ShadowRecorded" for a in actions)
    assert status.shadow is not None and status.shadow["state"]["n"] == 40


def test_score_drift_is_summed_beside_the_judge_from_the_pairs_that_have_one() -> None:
    sp = spec()
    status = shadowing(sp)
    status, _ = look(sp, status, ShadowBatch("e1", head=0), NOW + 2)
    drifting = tuple(replace(p, score_drift=0.5, score_drift_noise=0.1) for p in pairs(4, SAME))
    status, _ = look(sp, status, ShadowBatch("e1", head=6, pairs=(*drifting, *pairs(2, OTHER))), NOW + 4)
    assert status.shadow is not None
    assert status.shadow["scoreDrift"] == {"n": 4, "sum": 2.0, "noiseSum": pytest.approx(0.4), "mean": 0.5,
                                           "noiseMean": pytest.approx(0.1)}
    assert status.shadow["state"]["n"] == 6  # the judge has every pair; the drift only those with one


def test_the_shadow_survives_storage() -> None:
    sp = spec()
    status = shadowing(sp)
    status, _ = look(sp, status, ShadowBatch("e1", head=0), NOW + 2)
    status, _ = look(sp, status, ShadowBatch("e1", head=10, pairs=pairs(10, SAME)), NOW + 4)
    assert ReleaseStatus.from_storage(status.for_storage()) == status


def test_operator_commands_in_the_shadow_phase_say_what_they_will_do() -> None:
    from controller.core.operations import Planned, Refused, plan

    sp = spec()
    release = {"metadata": {"name": "r", "namespace": "ns"}, "spec": {
        "stable": {"version": "v1"}, "canary": {"version": "v2", "services": ["ml-search"]},
        "strategy": {"canary": {"steps": [{"weight": 10}, {"weight": 50}]}, "shadow": {}}}}
    status = shadowing(sp)
    paused = plan("pause", release, status)
    assert isinstance(paused, Planned) and paused.patch == {"paused": True} and "shadow phase goes on" in paused.message
    refused = plan("promote", release, status)
    assert isinstance(refused, Refused) and "shadow phase" in refused.message
    full = plan("promote", release, status, full=True)
    assert isinstance(full, Planned) and "once its shadow phase passes" in full.message
    aborted, _ = machine.step(replace(sp, abort=True), status, Observation(readiness=READY), NOW + 1)
    assert aborted.phase is Phase.ROLLING_BACK and aborted.canary_weight == 0


def test_a_pair_s_stable_side_is_checked_against_each_service_s_own_stable_version() -> None:
    """ml-search runs v1-model while the rest runs v1: its stable answers come from v1-model, and the v1 of the
    whole stack's version would be a version it does not run."""
    sp = spec(stable={"version": "v1", "versions": {"ml-search": "v1-model"}})
    own = PATH_V1.replace("ml-search@v1", "ml-search@v1-model")
    pair = ShadowPair("q0", SAME, SAME, SAME)
    assert served_as_asked(sp, MirroredPair(pair, {"stable": own, "stableAgain": own, "new": PATH_V2}))
    assert not served_as_asked(sp, MirroredPair(pair, {"stable": PATH_V1, "stableAgain": own, "new": PATH_V2}))
