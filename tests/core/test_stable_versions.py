"""A stack on several versions (an earlier release changed part of it): `spec.stable.versions` gives those services
their own stable version, and the routes, the judge's baseline, the workloads retired, the hold before a start and
the operator's undo all follow it service by service."""

from __future__ import annotations

from typing import Any

import pytest

from controller.adapters.kubernetes.workloads import DeploymentWorkloads, ReleaseRef
from controller.cli.cluster import what_runs
from controller.core import machine
from controller.core.machine import ApplyRouting, Observation, RetireWorkloads
from controller.core.machine.routes import retiring_workloads
from controller.core.observation import Readiness
from controller.core.operations import (
    Planned,
    Refused,
    Running,
    VersionRef,
    merge_patch,
    next_revision_stable,
    plan,
    serving,
    undo_target,
)
from controller.core.queries import business_query, metrics_query
from controller.core.spec.release import InvalidSpec, parse_release, version_order
from controller.core.status import Phase, ReleasedVersions, ReleaseStatus, RevisionRecord
from tests.support.scenario import SERVICES, World, release

NOW = 1_000_000.0
# The stack after a release of a new model (ml-infer and ml-search on v2-model), the rest on v1.
MIXED = {"version": "v1", "versions": {"ml-infer": "v2-model", "ml-search": "v2-model"}}


def keyword_release(**over: Any) -> dict[str, Any]:
    """keyword v3 on the mixed stack."""
    return release(stable=MIXED, canary={"version": "v3", "images": {"keyword": "registry.example/keyword:v3"}},
                   **over)


def problems(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidSpec) as info:
        parse_release(spec)
    return list(info.value.problems)


def test_each_service_has_the_stable_version_it_runs() -> None:
    spec = parse_release(keyword_release())
    assert [spec.stable_version_of(s) for s in SERVICES] == ["v1", "v2-model", "v2-model", "v1", "v1"]
    assert spec.stable_groups() == (("v1", ("master-search", "keyword", "text-search")),
                                    ("v2-model", ("ml-infer", "ml-search")))
    assert spec.stable_described() == "v1 (ml-infer v2-model, ml-search v2-model)"
    routes = machine.base_plan(spec)
    assert {s.service: (s.stable, s.canary) for s in routes.services} == {
        "master-search": ("v1", None), "ml-infer": ("v2-model", None), "ml-search": ("v2-model", None),
        "keyword": ("v1", "v3"), "text-search": ("v1", None)}
    assert {s.service: s.stable for s in routes.promoted().services}["ml-infer"] == "v2-model"


def test_the_judge_compares_a_service_with_the_version_it_runs() -> None:
    spec = parse_release(release(stable=MIXED, canary={"version": "v3", "images": {"ml-infer": "r/ml-infer:v3"}}))
    assert metrics_query(spec).versions == ("v2-model", "v3")  # ml-infer's baseline, not v1
    assert business_query(spec) is None
    world = World()
    world.workloads.running |= {("ml-infer", "v2-model"), ("ml-search", "v2-model")}
    world.workloads.running -= {("ml-infer", "v1"), ("ml-search", "v1")}
    status = world.run(release(stable=MIXED, canary={"version": "v3", "images": {"ml-infer": "r/ml-infer:v3"}}))
    assert status.phase is Phase.SUCCEEDED, status.message
    baselines = [d.counts["ml-infer"]["baseline"]["requests"] for d in status.history if "ml-infer" in d.counts]
    assert baselines and min(baselines) > 0  # v2-model's requests: v1 serves none
    assert ("ml-infer", "v2-model") not in world.workloads.running and ("ml-infer", "v3") in world.workloads.running
    assert ("ml-search", "v2-model") in world.workloads.running  # not changed: left serving


def test_a_promotion_retires_each_changed_service_s_own_stable_version() -> None:
    spec = parse_release(release(stable=MIXED, canary={"version": "v3", "services": ["ml-infer", "keyword"]}))
    done = ReleaseStatus(phase=Phase.SUCCEEDED, started_at=NOW - 100)
    _, actions = machine.step(spec, done, Observation(), NOW)
    retired = {(a.version, a.services) for a in actions if isinstance(a, RetireWorkloads)}
    assert retired == {("v1", ("keyword",)), ("v2-model", ("ml-infer",))}


def test_the_drain_waits_on_each_service_s_own_retiring_version() -> None:
    spec = parse_release(release(stable=MIXED, canary={"version": "v3", "services": ["ml-infer", "keyword"]}))
    promoting = ReleaseStatus(phase=Phase.PROMOTING, started_at=NOW - 100, canary_weight=100)
    assert retiring_workloads(spec, promoting) == (("ml-infer", "v2-model"), ("keyword", "v1"))
    rolling_back = ReleaseStatus(phase=Phase.ROLLING_BACK, started_at=NOW - 100, canary_weight=0)
    assert retiring_workloads(spec, rolling_back) == (("ml-infer", "v3"), ("keyword", "v3"))


@pytest.mark.parametrize("stable,canary,expected", [
    ({"version": "v1", "versions": {"payments": "v2"}}, {"version": "v3"},
     "spec.stable.versions.payments: is not a service of spec.stack.services"),
    ({"version": "v1", "versions": {"ml-infer": "V2_Model"}}, {"version": "v3"},
     "spec.stable.versions.ml-infer: 'V2_Model' is not a lower-case DNS label"),
    ({"version": "v1", "versions": {"keyword": "v3"}}, {"version": "v3", "services": ["keyword"]},
     "spec.stable.versions.keyword: 'v3' is the new version: keyword runs it already"),
    ({"version": "v3", "versions": {"ml-infer": "v2"}}, {"version": "v3", "services": ["ml-infer", "keyword"]},
     "spec.canary.version: 'v3' is the stable version already"),
    ({"version": "v1", "versions": {"ml-infer": ["v2"]}}, {"version": "v3"},
     "spec.stable.versions.ml-infer: must be a non-empty string, not list"),
])
def test_a_wrong_stable_version_of_a_service_is_named(stable: dict[str, Any], canary: dict[str, Any],
                                                      expected: str) -> None:
    found = problems(release(stable=stable, canary=canary))
    assert any(p.startswith(expected) for p in found), found


def test_a_lagging_service_can_be_brought_up_to_the_stack_s_version() -> None:
    """Everything runs v3 but keyword, still on v1: a release of v3 for keyword alone is the same version name as
    the stable one, and that is fine, since keyword does not run it."""
    spec = parse_release(release(stable={"version": "v3", "versions": {"keyword": "v1"}},
                                 canary={"version": "v3", "services": ["keyword"]}))
    assert [(s.service, s.stable, s.canary) for s in machine.base_plan(spec).services if s.canary] == [
        ("keyword", "v1", "v3")]


def test_an_experiment_s_entry_runs_its_control() -> None:
    ab = {"abTest": {"variants": [{"name": "v1", "weight": 50}, {"name": "v3", "weight": 50}],
                     "primaryMetric": {"kind": "proportion", "name": "click-through"}}}
    found = problems(release(stable={"version": "v1", "versions": {"master-search": "v2"}},
                             canary={"version": "v3"}, strategy=ab))
    assert any(p.startswith("spec.stable.versions.master-search: an A/B experiment counts its primary metric")
               for p in found), found
    fine = parse_release(release(stable=MIXED, canary={"version": "v3"}, strategy=ab))
    assert fine.experiment is not None and metrics_query(fine).versions == ("v1", "v2-model", "v3")
    assert business_query(fine).versions == ("v1", "v3")  # type: ignore[union-attr]


def test_a_release_whose_stable_version_is_not_deployed_where_another_runs_waits_and_says_what_runs() -> None:
    """The whole stack named v2 after a release of ml-infer alone: master-search-v2 and the rest do not exist, v1
    serves them. Started, its routes would send their stable traffic nowhere; it waits and gives the spec that
    describes the stack."""
    spec = parse_release(release(stable={"version": "v2"}, canary={"version": "v3", "services": ["ml-infer"]}))
    missing = {s: Readiness(False, f"Deployment {s}-v2 does not exist yet", exists=False, others_ready=("v1",))
               for s in SERVICES if s != "ml-infer"}
    stable = {**missing, "ml-infer": Readiness(True)}
    status, actions = machine.step(spec, ReleaseStatus(), Observation(stable=stable), NOW)
    assert status.phase is Phase.PENDING and not [a for a in actions if isinstance(a, ApplyRouting)]
    assert status.condition("StableServing").reason == "OtherVersionServes"  # type: ignore[union-attr]
    assert status.message.endswith("set spec.stable to what each service runs, {version: v1, versions: "
                                   "{ml-infer: v2}}"), status.message
    # Not found and nothing else seen (a stack deployed some other way): not judged, as before.
    unknown = {s: Readiness(False, "not deployed", exists=False) for s in SERVICES}
    started, _ = machine.step(spec, ReleaseStatus(), Observation(stable=unknown), NOW)
    assert started.phase is Phase.INITIALIZING


def partial(outcome: Phase) -> ReleaseStatus:
    """keyword v1 -> v3 on the mixed stack, ended with `outcome`; an earlier revision (v0 -> v1) succeeded."""
    versions = ReleasedVersions("v1", "v3", {"keyword": "r/keyword:v1"}, {"keyword": "r/keyword:v3"},
                                MIXED["versions"], ("keyword",))
    earlier = ReleasedVersions("v0", "v1", {}, {}, MIXED["versions"], ("keyword",))
    return ReleaseStatus(phase=outcome, revision=2, versions=versions, started_at=NOW - 100, finished_at=NOW - 10,
                         revisions=(RevisionRecord(1, 1, earlier, Phase.SUCCEEDED.value),))


def test_what_serves_after_a_release_of_part_of_the_stack() -> None:
    assert serving(partial(Phase.SUCCEEDED).versions, Phase.SUCCEEDED) == VersionRef(  # type: ignore[arg-type]
        "v1", {"keyword": "r/keyword:v3"}, {"ml-infer": "v2-model", "ml-search": "v2-model", "keyword": "v3"})
    assert serving(partial(Phase.ROLLED_BACK).versions, Phase.ROLLED_BACK).described() == (  # type: ignore[arg-type]
        "v1 (ml-infer v2-model, ml-search v2-model)")
    stored = partial(Phase.SUCCEEDED).for_storage()["versions"]
    assert stored["stableVersions"] == MIXED["versions"] and stored["changed"] == ["keyword"]
    assert ReleasedVersions.from_storage(stored) == partial(Phase.SUCCEEDED).versions


def test_undo_of_a_release_of_part_of_the_stack_brings_back_that_part_alone() -> None:
    status = partial(Phase.SUCCEEDED)
    planned = plan("undo", keyword_release(), status)
    assert isinstance(planned, Planned), planned
    assert planned.patch["stable"] == {"version": "v1", "images": {"keyword": "r/keyword:v3"},
                                       "versions": {"ml-infer": "v2-model", "ml-search": "v2-model",
                                                    "keyword": "v3"}}
    assert planned.patch["canary"]["version"] == "v1" and planned.patch["canary"]["images"] == {
        "keyword": "r/keyword:v1"}
    assert "releases v1 again in place of v1 (ml-infer v2-model, ml-search v2-model, keyword v3)" in planned.message


def test_undo_refuses_what_it_could_not_release_as_one_version() -> None:
    """A release of the whole stack (v3) from a stack on two versions: going back is two versions at once."""
    status = ReleaseStatus(phase=Phase.SUCCEEDED, versions=ReleasedVersions("v1", "v3", {}, {},
                                                                            {"ml-infer": "v2-model"}))
    refused = undo_target(status)
    assert isinstance(refused, Refused) and "ran several versions (v1 (ml-infer v2-model))" in refused.message



def test_undo_starts_from_what_runs_where_a_later_release_moved_another_service() -> None:
    """A release of keyword (v1 -> v3) succeeded; since then a later release moved ml-infer to v5. Its undo starts
    from what runs (ml-infer v5, with v5's image) and brings keyword alone back; if the later release had moved
    keyword itself, the undo would take back that release's work, and is refused."""
    done = ReleaseStatus(phase=Phase.SUCCEEDED, versions=ReleasedVersions(
        "v1", "v3", {"keyword": "r/keyword:v1"}, {"keyword": "r/keyword:v3"}, {}, ("keyword",)))
    runs = Running({"ml-infer": ("v5",), "keyword": ("v3",)},
                   {("ml-infer", "v5"): "r/ml-infer:v5", ("keyword", "v3"): "r/keyword:v3"})
    target = undo_target(done, runs)
    assert not isinstance(target, Refused), target
    now, previous, services = target
    assert now == VersionRef("v1", {"keyword": "r/keyword:v3", "ml-infer": "r/ml-infer:v5"},
                             {"keyword": "v3", "ml-infer": "v5"})
    assert previous == VersionRef("v1", {"keyword": "r/keyword:v1"}) and services == ("keyword",)
    assert undo_target(done) != target  # without what runs: the record alone, ml-infer on v1
    moved = undo_target(done, Running({"keyword": ("v4",)}))
    assert isinstance(moved, Refused) and "keyword runs v4, not the v3 it left" in moved.message


def test_an_experiment_s_undo_and_next_revision_keep_the_entry_on_the_stable_version() -> None:
    """An A/B experiment of master-search and ml-infer (v1 -> v2) won: the entry runs v2, the rest v1. Its undo and
    its next revision name the entry's version as spec.stable.version (the control), the others by their own.
    Before, both wrote `{version: v1, versions: {master-search: v2, ...}}`, a spec the controller refuses."""
    ab = {"abTest": {"variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
                     "primaryMetric": {"kind": "proportion", "name": "click-through"}}}
    experiment = release(canary={"version": "v2", "services": ["master-search", "ml-infer"]}, strategy=ab)
    won = ReleaseStatus(phase=Phase.SUCCEEDED, revision=1, started_at=NOW - 100, finished_at=NOW - 10,
                        versions=ReleasedVersions("v1", "v2", {}, {}, {}, ("master-search", "ml-infer")))
    planned = plan("undo", experiment, won)
    assert isinstance(planned, Planned), planned
    assert planned.patch["stable"] == {"version": "v2", "images": {}, "versions": {
        "ml-search": "v1", "keyword": "v1", "text-search": "v1"}}
    undone = parse_release({**experiment, "spec": merge_patch(experiment["spec"], planned.patch)})
    assert undone.experiment is not None and undone.experiment.config.control == "v2"
    assert [undone.stable_version_of(s) for s in SERVICES] == ["v2", "v2", "v1", "v1", "v1"]
    assert "(v2 now the control" in planned.message
    nxt = next_revision_stable(won, experiment["spec"])
    assert nxt == VersionRef("v2", {}, {"ml-search": "v1", "keyword": "v1", "text-search": "v1"})
    # A canary's stays on the version most of the stack ran.
    assert next_revision_stable(won, release()["spec"]) == VersionRef("v1", {}, {"master-search": "v2",
                                                                                  "ml-infer": "v2"})


@pytest.mark.parametrize("stack", [{}, {"entry": "master-search"}])
def test_an_experiment_on_the_default_stack_keeps_its_entry_on_the_stable_version(stack: dict[str, Any]) -> None:
    """The experiment above with `spec.stack.services` left out (the search stack, by default). Before, the undo
    and the next revision found no services: with no stack they named v1 for the entry (a spec the controller
    refuses), and with only the entry given they named v2 for every service."""
    ab = {"abTest": {"variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
                     "primaryMetric": {"kind": "proportion", "name": "click-through"}}}
    experiment = release(canary={"version": "v2", "services": ["master-search", "ml-infer"]}, strategy=ab,
                         stack=stack)
    won = ReleaseStatus(phase=Phase.SUCCEEDED, revision=1, started_at=NOW - 100, finished_at=NOW - 10,
                        versions=ReleasedVersions("v1", "v2", {}, {}, {}, ("master-search", "ml-infer")))
    others = {"ml-search": "v1", "keyword": "v1", "text-search": "v1"}
    planned = plan("undo", experiment, won)
    assert isinstance(planned, Planned), planned
    assert planned.patch["stable"] == {"version": "v2", "images": {}, "versions": others}
    undone = parse_release({**experiment, "spec": merge_patch(experiment["spec"], planned.patch)})
    assert [undone.stable_version_of(s) for s in SERVICES] == ["v2", "v2", "v1", "v1", "v1"]
    assert next_revision_stable(won, experiment["spec"]) == VersionRef("v2", {}, others)


def test_an_experiment_held_for_a_stable_version_that_serves_nothing_is_given_a_spec_it_accepts() -> None:
    """An A/B experiment of ml-infer named v1 for the whole stack, where master-search and ml-search run v2: the
    spec it is told to write keeps the entry's version as spec.stable.version (its control). Before, the version
    most services run came first, `{version: v1, versions: {master-search: v2, ...}}`, which it refuses."""
    ab = {"abTest": {"variants": [{"name": "v1", "weight": 50}, {"name": "v3", "weight": 50}],
                     "primaryMetric": {"kind": "proportion", "name": "click-through"}}}
    spec = parse_release(release(canary={"version": "v3", "services": ["ml-infer"]}, strategy=ab))
    moved = {s: Readiness(False, f"Deployment {s}-v1 does not exist yet", exists=False, others_ready=("v2",))
             for s in ("master-search", "ml-search")}
    stable = {**{s: Readiness(True) for s in SERVICES}, **moved}
    status, _ = machine.step(spec, ReleaseStatus(), Observation(stable=stable), NOW)
    assert status.phase is Phase.PENDING
    wanted = "{version: v2, versions: {ml-infer: v1, keyword: v1, text-search: v1}}"
    assert status.message.endswith(f"set spec.stable to what each service runs, {wanted}"), status.message
    fixed = {"version": "v2", "versions": {"ml-infer": "v1", "keyword": "v1", "text-search": "v1"}}
    ab["abTest"]["variants"][0]["name"] = "v2"
    assert parse_release(release(stable=fixed, canary={"version": "v3", "services": ["ml-infer"]}, strategy=ab))


def test_what_runs_corrects_a_record_only_where_its_version_no_longer_runs() -> None:
    """A next revision starts from the release's record; a service whose recorded version runs no more (a later
    release moved it) takes the version that runs, most pods ready first. Right after a promotion both versions
    run: the record's stays."""
    record = VersionRef("v1", {}, {"ml-infer": "v2"})
    assert record.running({"ml-infer": ("v1", "v2"), "keyword": ("v3",), "master-search": ("v1",)}) == VersionRef(
        "v1", {}, {"ml-infer": "v2", "keyword": "v3"})
    assert record.running({"ml-infer": ("v1",)}) == VersionRef("v1")


def _deployment(service: str, version: str, ready: int, replicas: int = 2) -> dict[str, Any]:
    return {"metadata": {"name": f"{service}-{version}", "labels": {"app": service, "version": version}},
            "spec": {"replicas": replicas}, "status": {"readyReplicas": ready}}


def test_versions_with_as_many_pods_ready_are_ordered_as_people_number_them() -> None:
    """Where two versions of a service have as many pods ready (a retirement that did not finish), what runs is
    read later-numbered first: v10 before v9. Compared as strings, v9 had come first, and a next revision would have
    started from it."""
    assert sorted(["v10", "v9", "v1", "v10-rc1", "v2"], key=version_order) == ["v1", "v2", "v9", "v10", "v10-rc1"]
    deployments = [_deployment("ml-infer", "v9", 2), _deployment("ml-infer", "v10", 2),
                   _deployment("keyword", "v9", 2), _deployment("keyword", "v10", 1),
                   _deployment("text-search", "v11", 0, replicas=0), _deployment("text-search", "v9", 1)]
    assert what_runs(deployments, SERVICES) == {"ml-infer": ("v10", "v9"), "keyword": ("v9", "v10"),
                                                "text-search": ("v9",)}
    api = _ListingApi(deployments)
    workloads = DeploymentWorkloads(api, ReleaseRef("r", "default", "uid"), SERVICES, "v1", "v11")  # type: ignore[arg-type]
    assert workloads.readiness("ml-infer", "v1").others_ready == ("v10", "v9")
    assert workloads.readiness("keyword", "v1").others_ready == ("v9", "v10")


class _ListingApi:
    """The one call `DeploymentWorkloads.readiness` makes: the stack's Deployments, listed."""

    def __init__(self, deployments: list[dict[str, Any]]) -> None:
        self.items = deployments

    def list(self, kind: Any, namespace: str, selector: str | None = None) -> dict[str, Any]:
        return {"items": self.items}
