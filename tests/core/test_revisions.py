"""Revisions, retries and the operator's overrides (`controller.core.machine.revisions`), alone and through `step`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from analysis.judges import make_judge
from analysis.observations import ISTIO_BUCKETS_MS, VersionCounts, WindowCounts
from controller.core import machine
from controller.core.machine import ApplyRouting, EnsureWorkloads, Notify, Observation, RetireWorkloads, revisions
from controller.core.spec.release import ReleaseSpec, parse_release
from controller.core.status import (
    REVISIONS_LIMIT,
    Condition,
    DecisionRecord,
    Phase,
    ReleasedVersions,
    ReleaseStatus,
    RevisionRecord,
)
from controller.ports import Readiness
from tests.support.scenario import World, release

NOW = 1_000_000.0
V1_V2 = ReleasedVersions("v1", "v2", {}, {"ml-search": "reg/ml-search:2"})


def spec(**over: Any) -> ReleaseSpec:
    s: dict[str, Any] = {"stable": {"version": "v1"},
                         "canary": {"version": "v2", "images": {"ml-search": "reg/ml-search:2"}},
                         "strategy": {"canary": {"steps": [{"weight": 10}, {"weight": 50}], "interval": "60s",
                                                 "minCanaryRequests": 50, "settle": "5s"}}}
    s.update(over)
    return parse_release({"metadata": {"name": "r", "namespace": "ns", "generation": 4}, "spec": s})


def at_step(sp: ReleaseSpec, step: int = 0, phase: Phase = Phase.PROGRESSING, **over: Any) -> ReleaseStatus:
    base = ReleaseStatus(phase=phase, observed_generation=4, step=step, canary_weight=sp.strategy.steps[step],
                         started_at=NOW - 300, phase_since=NOW - 200, step_started_at=NOW - 65,
                         last_analysis_at=NOW - 60, first_canary_traffic_at=NOW - 65, versions=V1_V2,
                         judge_state=make_judge(sp.analysis).initial_state(services=sp.analysed_services))
    return replace(base, **over)


def finished(phase: Phase, **over: Any) -> ReleaseStatus:
    base = ReleaseStatus(phase=phase, observed_generation=4, step=1, started_at=NOW - 500, finished_at=NOW - 100,
                         decided_at=NOW - 110, first_canary_traffic_at=NOW - 450, message="the end",
                         versions=V1_V2, judge_state={"x": 1},
                         history=(DecisionRecord(NOW - 110, 390.0, 1, 50, "fail", "errorRate", "roll back"),),
                         conditions=(Condition("SpecValid", "True", "Valid", "", NOW - 500),
                                     Condition("Analysis", "False", "AnalysisFailed", "errorRate", NOW - 110)))
    return replace(base, **over)


def of(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def reasons(actions: list[Any]) -> list[str]:
    return [a.reason for a in of(actions, Notify)]


# --- should_restart --------------------------------------------------------------------------------

@pytest.mark.parametrize("phase,over,retries,expected", [
    (Phase.ROLLED_BACK, {}, 0, None),                                          # nothing asked
    (Phase.ROLLED_BACK, {"retry": 1}, 0, "retry"),
    (Phase.ABORTED, {"retry": 1}, 0, "retry"),
    (Phase.FAILED, {"retry": 3}, 2, "retry"),
    (Phase.ROLLED_BACK, {"retry": 2}, 2, None),                                # already acted on
    (Phase.SUCCEEDED, {"retry": 1}, 0, None),                                  # nothing to retry
    (Phase.PROGRESSING, {"retry": 1}, 0, None),                                # in flight
    (Phase.SUCCEEDED, {"canary": {"version": "v3"}}, 0, "revision"),
    (Phase.ROLLED_BACK, {"canary": {"version": "v2", "images": {"ml-search": "reg/ml-search:2.1"}}}, 0,
     "revision"),                                                              # same label, new image
    (Phase.SUCCEEDED, {"stable": {"version": "v1", "images": {"keyword": "reg/k:1"}}}, 0, "revision"),
    (Phase.ROLLED_BACK, {"canary": {"version": "v3"}, "retry": 1}, 0, "revision"),  # new versions win
    (Phase.PROGRESSING, {"canary": {"version": "v3"}}, 0, None),               # an edit in flight applies
])
def test_should_restart(phase: Phase, over: dict[str, Any], retries: int, expected: str | None) -> None:
    assert revisions.should_restart(spec(**over), finished(phase, retries=retries)) == expected


def test_a_status_from_before_revisions_is_never_restarted_by_an_edit() -> None:
    assert revisions.should_restart(spec(canary={"version": "v3"}), finished(Phase.SUCCEEDED, versions=None)) is None


# --- restart and archive -----------------------------------------------------------------------------

def test_a_retry_archives_the_attempt_and_starts_it_again_with_a_fresh_judge() -> None:
    sp = spec(retry=1)
    old = finished(Phase.ROLLED_BACK)
    new, actions = machine.step(sp, old, Observation(), NOW)
    assert new.phase is Phase.INITIALIZING and new.started_at == NOW
    assert (new.revision, new.attempt, new.retries) == (1, 2, 1)
    assert new.history == () and new.decided_at is None and new.finished_at is None
    assert new.judge_state == make_judge(sp.analysis).initial_state(services=sp.analysed_services)
    assert [c.type for c in new.conditions] == ["SpecValid"]
    [record] = new.revisions
    assert record == RevisionRecord(1, 1, V1_V2, "RolledBack", NOW - 500, NOW - 100, NOW - 110, NOW - 450, "the end")
    assert reasons(actions)[:2] == ["Retrying", "Initializing"]
    assert of(actions, EnsureWorkloads) == [EnsureWorkloads("v2", ("ml-search",), {"ml-search": "reg/ml-search:2"})]
    assert of(actions, RetireWorkloads) == []


def test_new_versions_on_a_finished_release_start_the_next_revision() -> None:
    sp = spec(stable={"version": "v2", "images": {"ml-search": "reg/ml-search:2"}},
              canary={"version": "v3", "images": {"ml-search": "reg/ml-search:3"}}, retry=4)
    new, actions = machine.step(sp, finished(Phase.SUCCEEDED, revision=3, attempt=2, retries=1), Observation(), NOW)
    assert new.phase is Phase.INITIALIZING
    assert (new.revision, new.attempt, new.retries) == (4, 1, 4)  # a pending retry counter is absorbed
    assert new.versions == ReleasedVersions("v2", "v3", {"ml-search": "reg/ml-search:2"},
                                            {"ml-search": "reg/ml-search:3"})
    assert new.revisions[-1].revision == 3 and new.revisions[-1].outcome == "Succeeded"
    assert "revision 4: v2 -> v3 (revision 3 ended Succeeded)" in [a.message for a in of(actions, Notify)]
    # The routes go to the new pair at 0%, and the version now stable is not retired.
    [apply] = of(actions, ApplyRouting)
    assert apply.plan.service("ml-search").stable == "v2" and apply.plan.service("ml-search").canary == "v3"
    assert apply.plan.canary_weight == 0 and of(actions, RetireWorkloads) == []


def test_a_finished_release_left_alone_stays_finished() -> None:
    old = finished(Phase.SUCCEEDED)
    new, actions = machine.step(spec(retry=5), old, Observation(), NOW)
    assert new == old and reasons(actions) == []


def test_the_archive_is_bounded() -> None:
    many = tuple(RevisionRecord(i, 1, V1_V2, "RolledBack") for i in range(1, REVISIONS_LIMIT + 1))
    new = revisions.restart(spec(retry=1), finished(Phase.ROLLED_BACK, revisions=many, revision=51), "retry")
    assert len(new.revisions) == REVISIONS_LIMIT
    assert new.revisions[0].revision == 2 and new.revisions[-1].revision == 51


def test_in_flight_the_versions_follow_the_spec_and_raised_retries_are_absorbed() -> None:
    sp = spec(retry=2, canary={"version": "v2", "images": {"ml-search": "reg/ml-search:2.1"}})
    new, _ = machine.step(sp, at_step(sp), Observation(), NOW)
    assert new.retries == 2 and new.versions is not None
    assert new.versions.canary_images == {"ml-search": "reg/ml-search:2.1"}
    # It then rolls back: the counter raised in flight does not retry it.
    assert revisions.should_restart(sp, replace(new, phase=Phase.ROLLED_BACK)) is None


def test_leftover_operator_fields_are_announced_when_an_attempt_starts() -> None:
    _, actions = machine.step(spec(retry=1, skipStep=1, approvePromotion=True), finished(Phase.ROLLED_BACK),
                              Observation(), NOW)
    [warning] = [a for a in of(actions, Notify) if a.reason == "OperatorFieldsSet"]
    assert warning.warning and "spec.approvePromotion, spec.skipStep" in warning.message


# --- promoteFull -------------------------------------------------------------------------------------

N = len(ISTIO_BUCKETS_MS)


def _window() -> WindowCounts:
    b = [0] * N
    b[5] = 500
    c = [0] * N
    c[5] = 60
    return WindowCounts(NOW - 60, NOW, {("ml-search", "v1"): VersionCounts(500, 0, tuple(b)),
                                        ("ml-search", "v2"): VersionCounts(60, 0, tuple(c))})


@pytest.mark.parametrize("phase,policies,paused", [
    (Phase.PROGRESSING, {}, False),
    (Phase.PAUSED, {}, True),                          # paused by the operator: promote anyway
    (Phase.PROGRESSING, {"manualGate": True}, False),  # counts as the approval
])
def test_promote_full_promotes_now_and_records_an_operator_decision(phase: Phase, policies: dict[str, Any],
                                                                    paused: bool) -> None:
    sp = spec(promoteFull=True, policies=policies, paused=paused)
    new, actions = machine.step(sp, at_step(sp, 0, phase), Observation(metrics=_window()), NOW)
    assert new.phase is Phase.PROMOTING and new.decided_at == NOW
    [record] = new.history  # the window of the step is not judged
    assert (record.verdict, record.reason, record.action) == ("operator", revisions.PROMOTED_BY_OPERATOR, "promote")
    assert "OperatorPromoted" in reasons(actions) and "Promoting" in reasons(actions)
    # Capacity first: the new version is scaled to the stable's size, then the weight moves to 100.
    [apply] = of(actions, ApplyRouting)
    assert new.scaling_to == 100 and apply.plan.canary_weight == new.canary_weight < 100


@pytest.mark.parametrize("phase", [Phase.INITIALIZING, Phase.PROMOTING, Phase.ROLLING_BACK])
def test_promote_full_waits_for_a_release_that_is_analysing(phase: Phase) -> None:
    sp = spec(promoteFull=True)
    status = ReleaseStatus(phase=phase, observed_generation=4, started_at=NOW - 10, phase_since=NOW - 10,
                           versions=V1_V2)
    new, _ = machine.step(sp, status, Observation(readiness={"ml-search": Readiness(False, "starting")}), NOW)
    assert new.phase is phase and new.history == ()


def test_abort_goes_before_promote_full() -> None:
    sp = spec(promoteFull=True, abort=True)
    new, _ = machine.step(sp, at_step(sp), Observation(), NOW)
    assert new.phase is Phase.ROLLING_BACK and new.ending == "Aborted"


# --- skipStep ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("skip,step,phase,policies,expect_phase,expect_step,expect_weight", [
    (1, 0, Phase.PROGRESSING, {}, Phase.PROGRESSING, 1, 50),       # step 1 skipped: on to step 2
    (1, 0, Phase.PAUSED, {}, Phase.PROGRESSING, 1, 50),            # (paused: the next tick pauses again)
    (2, 1, Phase.PROGRESSING, {}, Phase.PROMOTING, 1, 100),        # the last step: promotion
    (2, 1, Phase.PROGRESSING, {"manualGate": True}, Phase.PAUSED, 1, 50),  # ... or the manual gate
    (1, 1, Phase.PROGRESSING, {}, Phase.PROGRESSING, 1, 50),       # already past it: nothing
    (2, 0, Phase.PROGRESSING, {}, Phase.PROGRESSING, 0, 10),       # not there yet: nothing now
])
def test_skip_step(skip: int, step: int, phase: Phase, policies: dict[str, Any], expect_phase: Phase,
                   expect_step: int, expect_weight: int) -> None:
    sp = spec(skipStep=skip, policies=policies)
    old = at_step(sp, step, phase)
    new, _ = machine.step(sp, old, Observation(), NOW)
    # The weight the new version is sized for: the skip's next step (or 100) moves once it is ready.
    assert (new.phase, new.step, machine.capacity_weight(new)) == (expect_phase, expect_step, expect_weight)
    skipped = old.step + 1 == skip
    assert [h.verdict for h in new.history] == (["operator"] if skipped else [])
    if skipped:
        assert new.history[0].reason == f"step {skip} skipped by an operator (promote)"


def test_a_skip_is_done_once_and_the_window_of_the_skipped_step_is_not_judged() -> None:
    sp = spec(skipStep=1)
    first, _ = machine.step(sp, at_step(sp), Observation(metrics=_window()), NOW)
    assert first.step == 1 and [h.verdict for h in first.history] == ["operator"]
    assert first.last_analysis_at is None and first.scaling_to == 50  # no window until the new weight is in
    ready = Observation(readiness={"ml-search": Readiness(True, ready_replicas=5)})
    again, _ = machine.step(sp, first, ready, NOW + 1)
    assert again.step == 1 and len(again.history) == 1 and again.canary_weight == 50
    assert again.last_analysis_at is None  # the next window opens `settle` after the new weight reads back


def test_skip_step_does_nothing_at_the_manual_gate() -> None:
    sp = spec(skipStep=2, policies={"manualGate": True})
    gated = at_step(sp, 1, Phase.PAUSED).with_condition("Paused", "True", "AwaitingPromotion", "manual gate", NOW)
    new, _ = machine.step(sp, gated, Observation(), NOW)
    assert new.phase is Phase.PAUSED and new.history == ()


# --- whole releases through the reconciler ---------------------------------------------------------

def test_a_rolled_back_release_retried_then_undone_through_the_reconciler() -> None:
    from tests.support.fakes import VersionModel

    world = World(models={"v2": VersionModel(error_rate=0.3)})
    obj = release()
    first = world.run(obj)
    assert first.phase is Phase.ROLLED_BACK and first.versions == ReleasedVersions("v1", "v2")
    # The fault is fixed (same version label); the operator retries.
    world.metrics.models.clear()
    obj["spec"]["retry"] = 1
    obj["metadata"]["generation"] = 2
    second = world.run(obj)
    assert second.phase is Phase.SUCCEEDED, second.message
    assert (second.revision, second.attempt, second.retries) == (1, 2, 1)
    assert [(r.revision, r.attempt, r.outcome) for r in second.revisions] == [(1, 1, "RolledBack")]
    assert ("master-search", "v2") in world.workloads.running and ("master-search", "v1") not in world.workloads.running
    # Undo: stable := v2 (serving), canary := v1 (the previous good version), through the steps again.
    obj["spec"]["stable"], obj["spec"]["canary"] = {"version": "v2"}, {"version": "v1"}
    obj["metadata"]["generation"] = 3
    third = world.run(obj)
    assert third.phase is Phase.SUCCEEDED, third.message
    assert (third.revision, third.attempt) == (2, 1)
    assert [(r.revision, r.attempt, r.outcome) for r in third.revisions] == [(1, 1, "RolledBack"),
                                                                             (1, 2, "Succeeded")]
    final = world.router.in_effect()
    assert final is not None and {s.stable for s in final.services} == {"v1"}
    assert ("master-search", "v1") in world.workloads.running and ("master-search", "v2") not in world.workloads.running
    assert [p.canary_weight for p in world.router.history].count(25) == 2  # the steps ran again


def test_promote_full_is_recorded_once_while_another_gate_holds_the_promotion() -> None:
    sp = spec(promoteFull=True)
    first, _ = machine.step(sp, at_step(sp, 1), Observation(), NOW)
    assert [h.verdict for h in first.history] == ["operator"]
    # Say a confirmPromotion hook holds it at its gate: the next ticks do not record the override again.
    held = replace(first, phase=Phase.PAUSED).with_condition("Paused", "True", "AwaitingConfirmation", "hooks", NOW)
    again, actions = machine.step(sp, held, Observation(), NOW + 1)
    assert [h.verdict for h in again.history] == ["operator"] and "OperatorPromoted" not in reasons(actions)
    assert again.phase is Phase.PROMOTING  # (no hook in this spec: the gate opens at once)


def test_skip_step_does_nothing_at_any_gate_after_the_last_step() -> None:
    sp = spec(skipStep=2)
    held = at_step(sp, 1, Phase.PAUSED).with_condition("Paused", "True", "AwaitingConfirmation", "hooks", NOW)
    assert revisions.operator_override(sp, held, NOW) is None


def test_a_restart_looks_at_the_stable_version_first_and_waits_while_it_serves_nothing() -> None:
    """A retry starts from Pending in the tick that takes it: that tick reads the stable version's readiness, and a
    stable version scaled to 0 since (another release promoted away from it) holds the retry in Pending."""
    sp, old = spec(retry=1), finished(Phase.ROLLED_BACK)
    assert machine.wants(sp, old, NOW).stable_readiness
    assert not machine.wants(spec(), old, NOW).stable_readiness  # nothing to restart: nothing to read
    gone = Readiness(False, "ml-search-v1: scaled to 0 replicas", ready_replicas=0)
    new, actions = machine.step(sp, old, Observation(stable={"ml-search": gone, "keyword": Readiness(True)}), NOW)
    assert new.phase is Phase.PENDING and new.attempt == 2
    assert new.condition("StableServing").reason == "NoReadyPods"  # type: ignore[union-attr]
    assert "ml-search-v1: scaled to 0 replicas" in new.message
    assert reasons(actions) == ["Retrying", "StableNotServing"] and of(actions, ApplyRouting) == []
    # The stable subsets point at the version serving: a workload not found under that name is not judged.
    unknown = Readiness(False, "not deployed", exists=False)
    started, _ = machine.step(sp, old, Observation(stable={"ml-search": unknown}), NOW)
    assert started.phase is Phase.INITIALIZING


def test_a_release_refused_before_it_started_starts_when_its_spec_parses() -> None:
    refused = ReleaseStatus(phase=Phase.FAILED, observed_generation=3, message="invalid spec: ...",
                            conditions=(Condition("SpecValid", "False", "InvalidSpec", "...", NOW - 60),))
    assert revisions.refused_before_start(refused) and machine.wants(spec(), refused, NOW).stable_readiness
    new, actions = machine.step(spec(), refused, Observation(), NOW)
    assert new.phase is Phase.INITIALIZING and (new.revision, new.attempt, new.revisions) == (1, 1, ())
    assert reasons(actions)[:2] == ["SpecFixed", "Initializing"]
    # A preRollout hook's failure also fails a release before it started, but with its versions recorded: it stays.
    assert not revisions.refused_before_start(replace(refused, versions=V1_V2))
