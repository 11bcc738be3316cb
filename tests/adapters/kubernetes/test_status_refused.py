"""A release whose status the API will not take: the operator is told where they look, and nothing moves.

The status conditions cannot say it (they are what is not written), so the controller sends a Warning
notice `StatusNotWritten` (an Event on the release), once per kind of failure: at once when the API refuses
the write (too large for etcd, forbidden), at the third write in a row when the API fails. The release holds
its weight meanwhile (its decision is not recorded, so none is acted on), and `StatusWritten` follows when a
write goes through again. Through the official client against the API emulator, on a fake clock.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from controller.adapters.kubernetes.client import RELEASES, ApiTooLarge, classify
from controller.adapters.kubernetes.running import Controller
from controller.adapters.kubernetes.ticking import UNWRITTEN_TOLD_AFTER
from controller.core.status import Phase
from tests.support import kmock_server
from tests.support.kmock_server import Fault, RunningEmulator
from tests.support.kube_world import NAMESPACE, KubeWorld

pytestmark = pytest.mark.timeout(120)

AGENT = "replica-a"  # the controller's identity, in the User-Agent of its requests


def holding_world(emulator: RunningEmulator) -> KubeWorld:
    """A release that analyses every minute and holds at 10% (too few canary requests to step on)."""
    world = KubeWorld(emulator)
    world.seed_stack()
    world.create_release(strategy={"canary": {"steps": [{"weight": 10}, {"weight": 50}], "interval": "60s",
                                              "minCanaryRequests": 10**9, "stepDeadline": "100h"}})
    return world


def events(world: KubeWorld, reason: str) -> list[dict[str, Any]]:
    return [e for e in world.objects("events") if e["reason"] == reason]


def status_errors(controller: Controller) -> float:
    return float(controller.telemetry.reconcile_errors.labels("status")._value.get())


def test_a_status_too_large_for_etcd_is_told_once_and_the_release_holds(
        emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    world = holding_world(emulator)
    controller = world.controller()
    world.drive(controller, until=Phase.PROGRESSING)
    world.drive(controller, rounds=3, relist=False)  # a first decision or two
    before = world.status()
    size = len(json.dumps(world.api.get(RELEASES, NAMESPACE, "search-v2"), separators=(",", ":")))
    monkeypatch.setattr(kmock_server, "ETCD_MAX_BYTES", size + 1000)  # the next decision (about 11 KiB) is too much
    world.drive(controller, rounds=30, relist=False)

    held = world.status()
    assert held == before, "a status the API refused was taken as written"
    assert status_errors(controller) >= 5
    told = events(world, "StatusNotWritten")
    assert len(told) == 1, [e["message"] for e in told]
    assert told[0]["type"] == "Warning"
    message = told[0]["message"]
    assert "request is too large" in message and "bytes of JSON" in message, message
    assert "holds where it is" in message, message
    assert not events(world, "StatusWritten")

    monkeypatch.undo()
    after = world.drive(controller, rounds=5, relist=False)
    assert len(after.history) > len(before.history) and after.phase is Phase.PROGRESSING
    again = events(world, "StatusWritten")
    assert len(again) == 1 and again[0]["type"] == "Normal", [e["message"] for e in again]
    assert len(events(world, "StatusNotWritten")) == 1


@pytest.mark.parametrize(("code", "told_at"), [(403, 1), (503, UNWRITTEN_TOLD_AFTER)])
def test_a_refusal_is_told_at_once_and_a_failing_api_after_a_few_writes(
        emulator: RunningEmulator, code: int, told_at: int) -> None:
    world = holding_world(emulator)
    controller = world.controller()
    world.drive(controller, until=Phase.PROGRESSING)
    world.drive(controller, rounds=3, relist=False)
    before = world.status()
    fault = Fault(code=code, method="PUT", plural="stackreleases", subresource="status", agent=AGENT, times=None)
    emulator.emulator.faults.append(fault)
    hits = []
    for _ in range(8):
        world.drive(controller, rounds=1, relist=False)
        hits.append((fault.hits, len(events(world, "StatusNotWritten"))))
    assert fault.hits >= told_at + 1, hits
    told_after = next(h for h, n in hits if n)
    assert told_after == told_at, f"told after {told_after} failed writes, not {told_at}: {hits}"
    assert hits[-1][1] == 1, hits
    assert world.status() == before
    emulator.emulator.faults.remove(fault)
    after = world.drive(controller, rounds=5, relist=False)
    assert len(after.history) > len(before.history)
    assert len(events(world, "StatusWritten")) == 1


def test_a_failure_told_of_never_is_not_followed_by_written_again(emulator: RunningEmulator) -> None:
    """One failed write is not news, and neither is its end."""
    world = holding_world(emulator)
    controller = world.controller()
    world.drive(controller, until=Phase.PROGRESSING)
    emulator.emulator.faults.append(Fault(code=503, method="PUT", plural="stackreleases", subresource="status",
                                          agent=AGENT, times=1))
    world.drive(controller, rounds=6, relist=False)
    assert emulator.emulator.faults[0].hits == 1
    assert not events(world, "StatusNotWritten") and not events(world, "StatusWritten")


@pytest.mark.parametrize(("status", "body"), [
    (413, '{"message": "Request entity too large: limit is 3145728"}'),
    (500, '{"message": "etcdserver: request is too large"}'),
])
def test_too_large_is_permanent_whatever_the_api_server_answers(status: int, body: str) -> None:
    exc = ApiException(status=status, reason="x")
    exc.body = body
    error = classify(exc, "PUT stackreleases/search-v2/status")
    assert isinstance(error, ApiTooLarge) and not error.retryable
    assert classify(ApiException(status=500, reason="etcdserver: leader changed"), "x").retryable
