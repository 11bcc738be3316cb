"""Drains on a cluster wait for the requests the sidecars count in flight on the retiring subsets.

Whole releases through the Kubernetes adapters against the API emulator, with a scripted source of the sidecars'
gauges (`RequestsInFlight`; on Prometheus, tests/adapters/prometheus/test_in_flight.py): the controller must ask
about the subsets that serve the retiring version, as the live DestinationRules say, and cut over only once the
source counts none, or when it cannot tell, after `drainTime` alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from controller.adapters.kubernetes.client import DESTINATION_RULES
from controller.adapters.kubernetes.in_flight import SubsetInFlight
from controller.adapters.kubernetes.routing import IstioRouter
from controller.core.machine.phases import IN_FLIGHT_WAIT_S
from controller.core.status import Phase
from controller.ports import TemporaryError
from tests.support.fakes import FakeClock, VersionModel
from tests.support.kmock_server import RunningEmulator
from tests.support.kube_world import NAMESPACE, SERVICES, KubeWorld

pytestmark = pytest.mark.timeout(120)

BUSY_FOR_S = 25.0  # how long after the first question the retiring subsets keep requests in flight


@dataclass
class ScriptedGauges:
    """Requests in flight: 3 for BUSY_FOR_S of the fake clock after the first question, then none; every
    question and answer is kept. `unknown` makes every question fail as a Prometheus without the gauge does."""

    clock: FakeClock
    unknown: bool = False
    busy_for: float = BUSY_FOR_S
    asked: list[tuple[float, str, tuple[tuple[str, str], ...], int]] = field(default_factory=list)

    def requests_in_flight(self, namespace: str, subsets: Sequence[tuple[str, str]]) -> int:
        if self.unknown:
            self.asked.append((self.clock.t, namespace, tuple(subsets), -1))
            raise TemporaryError("no series")
        first = self.asked[0][0] if self.asked else self.clock.t
        answer = 3 if self.clock.t - first < self.busy_for else 0
        self.asked.append((self.clock.t, namespace, tuple(subsets), answer))
        return answer


def seeded(emulator: RunningEmulator, models: dict[str, VersionModel] | None = None) -> KubeWorld:
    world = KubeWorld(emulator, models=models)
    world.seed_stack()
    return world


def test_a_rollback_asks_about_the_canary_subsets_and_cuts_over_once_none_is_in_flight(
        emulator: RunningEmulator) -> None:
    world = seeded(emulator, {"v2": VersionModel(error_rate=0.25)})
    gauges = ScriptedGauges(world.clock)
    world.create_release(drainTime="5s")
    status = world.drive(world.controller(in_flight=gauges))
    assert status.phase is Phase.ROLLED_BACK, status.message
    assert {(ns, subsets) for _, ns, subsets, _ in gauges.asked} == {
        (NAMESPACE, tuple(sorted((s, "canary") for s in SERVICES)))}
    answers = [answer for *_, answer in gauges.asked]
    # Asked again while requests were in flight; not once more after the count that let the cutover go.
    assert answers[-1] == 0 and set(answers[:-1]) == {3} and len(answers) >= 2
    assert gauges.asked[-1][0] - gauges.asked[0][0] >= BUSY_FOR_S
    plan = IstioRouter(world.api, NAMESPACE, SERVICES).in_effect()
    assert plan is not None and not any(s.canary for s in plan.services)
    assert "DrainTimedOut" not in [e["reason"] for e in world.objects("events")]
    drained = status.condition("Drained")
    assert drained is not None and (drained.status, drained.reason) == ("True", "RequestsAnswered")
    world.assert_valid_writes()


def test_requests_that_never_finish_hold_the_cutover_a_minute_then_a_warning_says_how_many(
        emulator: RunningEmulator) -> None:
    world = seeded(emulator, {"v2": VersionModel(error_rate=0.25)})
    gauges = ScriptedGauges(world.clock, busy_for=float("inf"))
    world.create_release(drainTime="5s")
    status = world.drive(world.controller(in_flight=gauges))
    assert status.phase is Phase.ROLLED_BACK, status.message
    assert gauges.asked[-1][0] - gauges.asked[0][0] >= IN_FLIGHT_WAIT_S
    [event] = [e for e in world.objects("events") if e["reason"] == "DrainTimedOut"]
    assert event["type"] == "Warning" and "cut over with 3 requests still in flight" in event["message"]
    drained = status.condition("Drained")
    assert drained is not None and (drained.status, drained.reason) == ("False", "TimedOut")
    world.assert_valid_writes()


def test_a_promotion_asks_about_the_stable_subsets(emulator: RunningEmulator) -> None:
    world = seeded(emulator)
    gauges = ScriptedGauges(world.clock)
    world.create_release()
    status = world.drive(world.controller(in_flight=gauges))
    assert status.phase is Phase.SUCCEEDED, status.message
    assert {subsets for _, _, subsets, _ in gauges.asked} == {tuple(sorted((s, "stable") for s in SERVICES))}
    assert [answer for *_, answer in gauges.asked][-1] == 0


def test_a_count_that_cannot_be_had_leaves_the_drain_to_drain_time(emulator: RunningEmulator) -> None:
    world = seeded(emulator, {"v2": VersionModel(error_rate=0.25)})
    gauges = ScriptedGauges(world.clock, unknown=True)
    world.create_release()
    status = world.drive(world.controller(in_flight=gauges))
    assert status.phase is Phase.ROLLED_BACK, status.message
    # Asked once drainTime was over; the failure let the cutover go on that same tick.
    assert len(gauges.asked) == 1


def test_no_subset_for_the_versions_is_an_unknown_count(emulator: RunningEmulator) -> None:
    world = seeded(emulator)
    port = SubsetInFlight(IstioRouter(world.api, NAMESPACE, SERVICES), ScriptedGauges(world.clock))
    with pytest.raises(TemporaryError, match=r"no DestinationRule subset in \S+ selects ml-infer@v9"):
        port.in_flight([("ml-infer", "v9")])


def test_subsets_are_found_by_host_and_version_label_whatever_their_names(emulator: RunningEmulator) -> None:
    """A user's subsets count as well as the controller's; a rule for a host in another namespace does not."""
    world = seeded(emulator)
    rules = [("ml-infer", "ml-infer.search.svc.cluster.local", [("blue", "v1"), ("green", "v2")]),
             ("keyword-long", f"keyword.{NAMESPACE}.svc.cluster.local", [("old", "v1")]),
             ("elsewhere", "ml-infer.other.svc.cluster.local", [("v1", "v1")])]
    for name, host, subsets in rules:
        world.api.create(DESTINATION_RULES, NAMESPACE, {
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"host": host.replace("search", NAMESPACE),
                     "subsets": [{"name": n, "labels": {"version": v}} for n, v in subsets]}})
    router = IstioRouter(world.api, NAMESPACE, SERVICES)
    assert router.subsets_serving([("ml-infer", "v1"), ("keyword", "v1")]) == (("keyword", "old"), ("ml-infer", "blue"))
    assert router.subsets_serving([("ml-infer", "v2")]) == (("ml-infer", "green"),)
