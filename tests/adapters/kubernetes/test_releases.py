"""Whole releases through the Kubernetes adapters and the official client, against the API emulator.

The controller runs in-process on a fake clock (`KubeWorld.drive` jumps to the next due tick), talking
HTTP to `tests.support.kmock_server` on 127.0.0.1. Every object the controller writes is checked against Istio's
CRDs (strict) and kubernetes-validate (strict), and the release's status against the project's CRD.
"""

from __future__ import annotations

import json

import pytest

from controller.adapters.kubernetes.client import DESTINATION_RULES, RELEASES, VIRTUAL_SERVICES, KubeApi
from controller.adapters.kubernetes.finalizing import FINALIZER
from controller.adapters.kubernetes.routing import ANNOTATION_ADOPTED, IstioRouter
from controller.core.status import Phase
from tests.support.fakes import VersionModel
from tests.support.kmock_server import ETCD_MAX_BYTES, RunningEmulator
from tests.support.kube_world import NAMESPACE, SERVICES, KubeWorld, cluster_world


@pytest.fixture
def world(emulator: RunningEmulator) -> KubeWorld:
    """The cluster-like world: 4 pods per service, new pods ready after 2-10 s (tests/support/cluster.py)."""
    return cluster_world(emulator, hpa_on=())


def event_reasons(world: KubeWorld) -> list[str]:
    return [e["reason"] for e in world.objects("events")]


def entry_weight(world: KubeWorld) -> int | None:
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    return None if plan is None else plan.canary_weight


def test_healthy_release_is_promoted_and_then_writes_nothing(world: KubeWorld, emulator: RunningEmulator) -> None:
    world.create_release()
    controller = world.controller()
    status = world.drive(controller)
    assert status.phase is Phase.SUCCEEDED, status.message
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    assert plan is not None and plan.canary_weight == 0 and {s.stable for s in plan.services} == {"v2"}
    deployments = {d["metadata"]["name"]: d for d in world.objects("deployments")}
    for service in SERVICES:
        new, old = deployments[f"{service}-v2"], deployments[f"{service}-v1"]
        assert new["spec"]["template"]["spec"]["containers"][0]["image"] == f"registry.example/{service}:2.0"
        assert new["spec"]["template"]["metadata"]["labels"] == {"app": service, "version": "v2"}
        assert new["spec"]["replicas"] == 4 and old["spec"]["replicas"] == 0  # the stable's 4 pods
        # Promoted: the new stable version no longer belongs to the (deletable) release.
        assert not new["metadata"].get("ownerReferences")
    reasons = event_reasons(world)
    assert (reasons.count("Initialized"), reasons.count("WeightIncreased"), reasons.count("Promoted")) == (1, 3, 1)
    world.assert_valid_writes()

    writes, before = emulator.emulator.writes(), dict(emulator.emulator.counts)
    for _ in range(3):
        controller.resync()
        controller.run_due()
        world.clock.sleep(30)
    changed = {k: n - before.get(k, 0) for k, n in emulator.emulator.counts.items() if n != before.get(k, 0)}
    assert emulator.emulator.writes() == writes, f"a steady state must not write: {changed}"


def test_failing_canary_is_rolled_back(emulator: RunningEmulator) -> None:
    world = KubeWorld(emulator, models={"v2": VersionModel(error_rate=0.25)})
    world.seed_stack()
    world.create_release()
    status = world.drive(world.controller())
    assert status.phase is Phase.ROLLED_BACK, status.message
    assert status.last_verdict == "fail"
    assert entry_weight(world) == 0
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    assert plan is not None and {s.stable for s in plan.services} == {"v1"} and not any(s.canary for s in plan.services)
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in world.objects("deployments")}
    assert all(replicas[f"{s}-v2"] == 0 and replicas[f"{s}-v1"] == 2 for s in SERVICES)
    warnings = [e for e in world.objects("events") if e["type"] == "Warning"]
    assert {"AnalysisFailed", "RolledBack"} <= {e["reason"] for e in warnings}
    world.assert_valid_writes()


def test_canary_past_its_progress_deadline_fails_the_release(emulator: RunningEmulator) -> None:
    world = KubeWorld(emulator)
    world.seed_stack()
    emulator.emulator.failing_images.add("registry.example/ml-infer:2.0")
    world.create_release()
    status = world.drive(world.controller())
    assert status.phase is Phase.FAILED
    assert "progress deadline exceeded" in status.message


def test_operator_abort_ends_in_aborted(world: KubeWorld) -> None:
    world.create_release()
    controller = world.controller()
    assert world.drive(controller, until=Phase.PROGRESSING).phase is Phase.PROGRESSING
    world.patch_spec({"abort": True})
    status = world.drive(controller)
    assert status.phase is Phase.ABORTED
    assert entry_weight(world) == 0


def test_pause_holds_the_weight_and_resume_continues(world: KubeWorld) -> None:
    world.create_release()
    controller = world.controller()
    world.drive(controller, until=Phase.PROGRESSING)
    world.patch_spec({"paused": True})
    paused = world.drive(controller, until=Phase.PAUSED)
    assert paused.phase is Phase.PAUSED
    held = entry_weight(world)
    for _ in range(20):
        world.clock.sleep(60)
        controller.run_due()
    assert world.status().phase is Phase.PAUSED and entry_weight(world) == held
    world.patch_spec({"paused": False})
    assert world.drive(controller).phase is Phase.SUCCEEDED


def test_release_of_two_services_keeps_the_others_on_stable(world: KubeWorld) -> None:
    changed = ("ml-infer", "ml-search")
    world.create_release(canary={"version": "v2", "images": {s: f"registry.example/{s}:2.0" for s in changed}})
    controller = world.controller()
    world.drive(controller, until=Phase.PROGRESSING)
    names = {d["metadata"]["name"] for d in world.objects("deployments")}
    assert {n for n in names if n.endswith("-v2")} == {f"{s}-v2" for s in changed}
    routes = {vs["metadata"]["name"]: vs for vs in world.objects("virtualservices")}
    for service in ("keyword", "text-search"):
        assert [r["name"] for r in routes[service]["spec"]["http"]] == ["stable-lane"]
    for service in changed:
        assert [r["name"] for r in routes[service]["spec"]["http"]] == ["canary-lane", "stable-lane"]
    # The entry has no canary: its canary lane is served by the stable entry, and sets the lane header.
    split = routes["master-search"]["spec"]["http"][0]["route"]
    assert {d["destination"]["subset"] for d in split} == {"stable"}
    assert world.drive(controller).phase is Phase.SUCCEEDED
    world.assert_valid_writes()


def test_controller_killed_mid_release_resumes_from_the_status(world: KubeWorld) -> None:
    world.create_release()
    first = world.controller(identity="replica-a")
    world.drive(first, until=Phase.PROGRESSING)
    for _ in range(200):  # tick on until step 2, then it "dies"
        if world.status().step >= 1:
            break
        world.drive(first, rounds=1, relist=False)
    before = world.status()
    assert before.phase is Phase.PROGRESSING and before.step >= 1
    del first
    second = world.controller(identity="replica-b")  # a new process: nothing in memory
    status = world.drive(second)
    assert status.phase is Phase.SUCCEEDED
    assert status.started_at == before.started_at
    assert event_reasons(world).count("Initialized") == 1
    assert [h.step for h in status.history][: len(before.history)] == [h.step for h in before.history]


def test_standby_replica_waits_for_the_lease_then_continues(world: KubeWorld, emulator: RunningEmulator) -> None:
    world.create_release()
    leader, standby = world.controller("replica-a", elector=True), world.controller("replica-b", elector=True)
    assert leader.elect() and not standby.elect()
    leader.relist()
    standby.relist()
    world.drive(leader, until=Phase.PROGRESSING, relist=False)
    writes = emulator.emulator.writes()
    for _ in range(5):  # the standby ticks nothing while the lease is held and renewed
        world.clock.sleep(2)
        assert leader.elect() and not standby.elect()
        standby.run_due()
    assert emulator.emulator.writes() == writes + 5  # the leader's five renewals, nothing else
    world.clock.sleep(10)  # the leader is gone: no renewal; not yet expired
    assert not standby.elect()
    world.clock.sleep(6)  # now past leaseDurationSeconds (15 s)
    assert standby.elect()
    assert not leader.may_write()  # the old leader stopped calling itself leader before expiry
    lease = emulator.objects("leases", "stack-canary-system")[0]
    assert lease["spec"]["holderIdentity"] == "replica-b" and lease["spec"]["leaseTransitions"] == 1
    assert world.drive(standby, relist=False).phase is Phase.SUCCEEDED
    world.assert_valid_writes()


def test_stale_resource_version_is_retried_after_a_fresh_read(world: KubeWorld) -> None:
    world.create_release()
    controller = world.controller()
    controller.relist()
    controller.run_due()
    # Someone edits the release behind the controller's back (no watch here): its cached copy is stale.
    world.api.patch(RELEASES, NAMESPACE, "search-v2", {"metadata": {"labels": {"team": "search"}}})
    world.drive(controller, until=Phase.PROGRESSING, relist=False)
    errors = controller.telemetry.reconcile_errors.labels("conflict")._value.get()
    assert errors >= 1
    assert world.api.get(RELEASES, NAMESPACE, "search-v2")["metadata"]["labels"] == {"team": "search"}
    assert world.drive(controller, relist=False).phase is Phase.SUCCEEDED


def test_invalid_release_fails_with_an_event(world: KubeWorld) -> None:
    world.create_release(strategy={"canary": {"steps": [{"weight": 50}, {"weight": 20}]}})
    status = world.drive(world.controller())
    assert status.phase is Phase.FAILED
    condition = status.condition("SpecValid")
    assert condition is not None and "does not increase" in condition.message
    assert "InvalidSpec" in event_reasons(world)


def test_a_canary_that_never_gets_ready_says_what_it_lacks_while_the_release_waits(world: KubeWorld) -> None:
    """The old message was "waiting for ml-infer to become ready" alone, for as long as the Deployment's progress
    deadline (120 s here): nothing said whether one pod of four was late or none had started."""
    assert world.cluster is not None
    world.cluster.never_ready["registry.example/ml-infer:2.0"] = "CrashLoopBackOff"
    world.create_release()
    controller = world.controller()
    world.drive(controller, until=Phase.INITIALIZING)
    waiting = world.drive(controller, rounds=40)
    assert waiting.phase is Phase.INITIALIZING
    assert waiting.message == "waiting for ml-infer to become ready (ml-infer-v2: 0/1 ready, 1/1 updated)"
    failed = world.drive(controller)
    assert failed.phase is Phase.FAILED and "ml-infer-v2: progress deadline exceeded" in failed.message


def test_a_release_refused_before_it_started_starts_once_its_spec_is_fixed(world: KubeWorld) -> None:
    """Applying the fixed spec is all it takes: the old behaviour kept the release Failed with the old message
    ("invalid spec: spec.canary.version: 'v1' is the stable version already") beside SpecValid=True, and only a
    `canary retry` moved it."""
    world.create_release(canary={"version": "v1", "images": {"ml-infer": "registry.example/ml-infer:2.0"}})
    controller = world.controller()
    refused = world.drive(controller)
    assert refused.phase is Phase.FAILED
    assert refused.message == "invalid spec: spec.canary.version: 'v1' is the stable version already"
    world.patch_spec({"canary": {"version": "v2"}})
    status = world.drive(controller)
    assert status.phase is Phase.SUCCEEDED and (status.revision, status.attempt) == (1, 1)
    assert status.condition("SpecValid").status == "True"  # type: ignore[union-attr]
    assert status.revisions == ()  # nothing ran before: no attempt to archive
    reasons = event_reasons(world)
    assert reasons.count("InvalidSpec") == 1 and reasons.count("SpecFixed") == 1
    fixed = next(e for e in world.objects("events") if e["reason"] == "SpecFixed")
    assert fixed["type"] == "Normal" and fixed["message"] == "the spec is valid now: v1 -> v2 starts"
    world.assert_valid_writes()


def test_user_routes_and_fields_survive_and_foreign_rules_are_refused(world: KubeWorld) -> None:
    api: KubeApi = world.api
    api.create(VIRTUAL_SERVICES, NAMESPACE, {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "master-search", "labels": {"team": "search"}},
        "spec": {"hosts": ["master-search", "search.example.com"], "gateways": ["search-gateway"],
                 "http": [{"name": "admin", "match": [{"uri": {"prefix": "/admin"}}],
                           "route": [{"destination": {"host": "admin"}}]},
                          {"name": "default", "route": [{"destination": {"host": "master-search"}}]}]}})
    api.create(DESTINATION_RULES, NAMESPACE, {
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "keyword"}, "spec": {"host": "keyword",
                                                   "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}})
    world.create_release()
    assert world.drive(world.controller()).phase is Phase.SUCCEEDED
    vs = next(v for v in world.objects("virtualservices") if v["metadata"]["name"] == "master-search")
    assert vs["spec"]["gateways"] == ["search-gateway"]
    assert vs["spec"]["hosts"] == ["master-search", "search.example.com"]
    assert [r["name"] for r in vs["spec"]["http"]] == ["admin", "release-split", "default"]
    assert vs["metadata"]["labels"]["team"] == "search"
    assert vs["metadata"]["annotations"][ANNOTATION_ADOPTED] == "true"
    dr = next(d for d in world.objects("destinationrules") if d["metadata"]["name"] == "keyword")
    assert dr["spec"]["trafficPolicy"] == {"tls": {"mode": "ISTIO_MUTUAL"}}
    world.assert_valid_writes()


def test_destination_rule_for_another_host_is_not_taken_over(world: KubeWorld) -> None:
    world.api.create(DESTINATION_RULES, NAMESPACE, {
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "keyword"}, "spec": {"host": "keyword.other.svc.cluster.local"}})
    world.create_release()
    controller = world.controller()
    status = world.drive(controller, rounds=30)
    assert status.phase is not Phase.SUCCEEDED
    failed = [r for r in controller.last_results.values() if r.failed_actions]
    assert failed and "refusing to take it over" in failed[-1].failed_actions[-1]
    dr = next(d for d in world.objects("destinationrules") if d["metadata"]["name"] == "keyword")
    assert dr["spec"] == {"host": "keyword.other.svc.cluster.local"}


def test_release_deleted_in_flight_restores_the_stable_routes_first(world: KubeWorld) -> None:
    world.create_release()
    controller = world.controller()
    world.drive(controller, until=Phase.PROGRESSING)
    assert world.api.get(RELEASES, NAMESPACE, "search-v2")["metadata"]["finalizers"] == [FINALIZER]
    assert entry_weight(world) == 10
    world.api.delete(RELEASES, NAMESPACE, "search-v2")
    held = world.api.get(RELEASES, NAMESPACE, "search-v2")  # the finalizer holds it
    assert held["metadata"]["deletionTimestamp"]
    controller.relist()
    controller.run_due()
    assert world.api.get_or_none(RELEASES, NAMESPACE, "search-v2") is None
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    assert plan is not None and plan.canary_weight == 0 and not any(s.canary for s in plan.services)
    # The canary Deployments were the release's: the garbage collector took them; stable stays.
    names = {d["metadata"]["name"] for d in world.objects("deployments")}
    assert names == {f"{s}-v1" for s in SERVICES}


def test_finished_release_carries_no_finalizer(world: KubeWorld) -> None:
    world.create_release()
    assert world.drive(world.controller()).phase is Phase.SUCCEEDED
    assert not world.api.get(RELEASES, NAMESPACE, "search-v2")["metadata"].get("finalizers")


def test_second_release_of_a_stack_waits_for_the_one_in_flight(world: KubeWorld) -> None:
    world.create_release()
    controller = world.controller()
    world.drive(controller, until=Phase.PROGRESSING)
    world.create_release(name="search-v3", canary={"version": "v3"})
    controller.relist()
    world.drive(controller, rounds=5, name="search-v3", relist=False)
    # Queued behind the release in flight: nothing asked, nothing written (controller.core.machine.ownership).
    waiting = world.status("search-v3")
    assert waiting.phase is Phase.PENDING and waiting.condition("Queued").reason == "WaitingForRelease"
    assert controller.last_results[(NAMESPACE, "search-v3")].actions == ()
    routes = {vs["metadata"]["labels"]["stack-canary.dev/release"] for vs in world.objects("virtualservices")}
    assert routes == {"search-v2"}


@pytest.mark.slow
def test_a_release_that_analyses_for_hours_keeps_writing_its_status(emulator: RunningEmulator) -> None:
    """Every decision names each check of the five services (about 11 KiB), and the emulator refuses an object
    over etcd's 1.5 MiB as the API server does: with 200 whole decisions the status could not be written after
    fewer than 160 looks (HTTP 413 at every try), and the release would stand still at its weight. It holds (too few
    canary requests to step on) for 160 looks, and each one is written."""
    world = KubeWorld(emulator)
    world.seed_stack()
    world.create_release(strategy={"canary": {"steps": [{"weight": 10}, {"weight": 50}], "interval": "60s",
                                              "minCanaryRequests": 10**9, "stepDeadline": "100h"}})
    controller = world.controller()
    status = world.drive(controller, until=Phase.PROGRESSING)
    started = world.clock.t
    while world.clock.t - started < 160 * 60:
        status = world.drive(controller, rounds=60, relist=False)  # about 20 looks
        assert status.phase is Phase.PROGRESSING, status.message
        assert status.last_analysis_at is not None and status.last_analysis_at >= world.clock.t - 2 * 60, (
            f"the status stopped at {len(status.history)} decisions, {status.last_analysis_at - started:.0f} s in")
    stored = world.api.get(RELEASES, NAMESPACE, "search-v2")
    assert len(json.dumps(stored)) < ETCD_MAX_BYTES // 2
    assert 20 < len(status.history) < 160 and status.history[-1].checks[0].get("estimates") is not None
