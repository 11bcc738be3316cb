"""Kubernetes API faults (issue 9): 409s, 500s (before and after the write), answers slower than the
client's timeout, dropped watches and 410 Gone, injected by the emulator while whole releases run.

The controller runs in-process on a fake clock (`KubeWorld.drive`) with its watch thread running for
real (the watch ends every second), in the cluster-like world (issue 14, `tests.support.cluster`): 4 pods
per service, an HPA on ml-infer, every new pod ready after a seeded 2-10 s of the fake clock, so the faults
also land while the canary is being scaled for its weights. It talks HTTP to the emulator, which
answers the controller's requests (told apart by their User-Agent, `stack-canary-controller/<identity>`)
with the faults. The traffic model reads the routes with a client of its own, which the faults leave
alone: the faults are the controller's problem, not the test's. Every state the emulator stores is checked by
`tests.support.invariants`; each release must end as it should, with no duplicated side effect.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from controller.adapters.kubernetes.client import KubeApi
from controller.adapters.kubernetes.running import Controller, ControllerConfig
from controller.core.status import Phase, ReleaseStatus
from tests.support.fakes import VersionModel
from tests.support.invariants import FINAL, InvariantChecker
from tests.support.kmock_server import Fault, Key, RunningEmulator
from tests.support.kube_world import NAMESPACE, KubeWorld, RouteMetrics, cluster_world

AGENT = "stack-canary-controller/"
ONCE = ("Initializing", "Initialized", "Promoting", "Promoted", "RolledBack", "AnalysisFailed")
SEED = 9
REPLICAS = 4


def api_faults() -> list[Fault]:
    """The mix: every kind of answer an API server under stress gives, at rates that still let a tick through."""
    return [
        Fault(code=409, method="PUT", plural="stackreleases", subresource="status", probability=0.3, times=None,
              agent=AGENT),
        Fault(code=500, method="PUT", plural="stackreleases", subresource="status", probability=0.15, times=None,
              after_apply=True, agent=AGENT),  # written, but the client is told it failed
        Fault(code=500, method="PATCH", probability=0.15, times=None, agent=AGENT),
        Fault(code=500, method="POST", plural="deployments", times=2, after_apply=True,
              agent=AGENT),  # created, but the client is told it failed: the next tick must not create again
        Fault(code=503, method="GET", probability=0.05, times=None, agent=AGENT),
        Fault(code=0, delay=1.3, method="PATCH", probability=0.1, times=6, agent=AGENT),  # late, past the timeout
        Fault(code=0, delay=1.3, method="PUT", subresource="status", probability=0.1, times=4, agent=AGENT),
    ]


@dataclass
class Faulty:
    world: KubeWorld
    controller: Controller
    checker: InvariantChecker
    watch_stop: threading.Event
    api: KubeApi  # the controller's own client
    finished: bool = False
    route_changes_after_end: int = 0
    drops: int = 0
    gones: int = 0

    def observe(self, rv: int, key: Key, event: str, obj: dict[str, Any]) -> None:
        if key[2] == "stackreleases" and (obj.get("status") or {}).get("phase") in FINAL:
            self.finished = True
        elif key[2] in ("virtualservices", "destinationrules") and self.finished:
            self.route_changes_after_end += 1


@pytest.fixture
def faulty(emulator: RunningEmulator, invariants: InvariantChecker, request: pytest.FixtureRequest
           ) -> Iterator[Faulty]:
    models = getattr(request, "param", {})
    world = cluster_world(emulator, replicas=REPLICAS, models=models)
    world.metrics = RouteMetrics(KubeApi.for_url(emulator.url), models=models)  # the faults' client is not this
    checker = invariants  # every rule on; the fixture's teardown fails the test on any violation
    api = KubeApi.for_url(emulator.url)  # the controller's own client: the test's reads see no faults
    api.timeout = 1.0  # the slow answers (1.3 s) time out
    controller = Controller(api, ControllerConfig(identity="faulty", watch_timeout=1), world.metrics, world.clock)
    stop = threading.Event()
    watcher = threading.Thread(target=controller.watch_forever, args=(stop,), daemon=True)
    watcher.start()
    faulty = Faulty(world, controller, checker, stop, api)
    emulator.store.observers.append(faulty.observe)
    try:
        yield faulty
    finally:
        stop.set()
        emulator.emulator.faults.clear()
        emulator.emulator.disconnect_watches()
        watcher.join(timeout=10)


def drive_through_faults(f: Faulty, emulator: RunningEmulator, rng: random.Random, rounds: int = 1500
                         ) -> ReleaseStatus:
    """Tick the release to its end, dropping the watch and compacting the history (410) now and then."""
    f.drops = f.gones = 0
    for i in range(rounds):
        status = f.world.drive(f.controller, rounds=1, relist=i == 0)
        if status.phase.final:
            return status
        draw = rng.random()
        if draw < 0.08:
            emulator.emulator.disconnect_watches()
            f.drops += 1
        elif draw < 0.12:
            emulator.emulator.compact()
            emulator.emulator.disconnect_watches()
            f.gones += 1
        if f.controller.queue.next_due() is None:  # nothing queued: the watch or a resync must bring it
            f.world.pass_time(f.controller.config.resync_period)
            f.controller.resync()
    return f.world.status()


def assert_no_duplicates(f: Faulty, emulator: RunningEmulator, steps: int) -> None:
    reasons = [e["reason"] for e in f.world.objects("events")]
    assert not {r for r in ONCE if reasons.count(r) > 1}, reasons
    assert reasons.count("WeightIncreased") <= steps, reasons
    # A create answered 500 after it was applied is seen by the next tick's list: never created again (of any
    # kind: Deployments, routes, Events; a create of an existing name is answered 409 and stores nothing).
    again = [w for w in emulator.emulator.write_log
             if w.method == "POST" and w.code == 409 and w.agent.startswith(AGENT)]
    assert again == [], again[:5]
    names = {d["metadata"]["name"] for d in f.world.objects("deployments")}
    assert names == {f"{s}-{v}" for s in ("master-search", "ml-infer", "ml-search", "keyword", "text-search")
                     for v in ("v1", "v2")}


def fault_hits(emulator: RunningEmulator) -> dict[str, int]:
    return {f"{f.code or 'slow'} {f.method} {f.plural or ''}{'/' + f.subresource if f.subresource else ''}"
            f"{' after apply' if f.after_apply else ''}": f.hits for f in emulator.emulator.faults}


@pytest.mark.slow
@pytest.mark.parametrize("faulty, expected", [({}, Phase.SUCCEEDED),
                                              ({"v2": VersionModel(error_rate=0.25)}, Phase.ROLLED_BACK)],
                         indirect=["faulty"], ids=["healthy-promoted", "failing-rolled-back"])
def test_release_converges_through_api_faults(faulty: Faulty, emulator: RunningEmulator, expected: Phase) -> None:
    f = faulty
    emulator.emulator.fault_rng.seed(SEED)
    emulator.emulator.faults.extend(api_faults())
    f.world.create_release()
    status = drive_through_faults(f, emulator, random.Random(SEED))
    hits = fault_hits(emulator)
    emulator.emulator.faults.clear()
    print(f"\n{expected.value}: faults injected {hits}, watches dropped {f.drops}, compacted (410) {f.gones}; "
          f"{f.checker.states} states checked")
    assert status.phase is expected, status.message
    assert sum(hits.values()) >= 20 and all(hits.values()), hits  # every kind of fault did happen
    f.checker.assert_clean()
    assert f.checker.check_final(emulator, [NAMESPACE]) == []
    assert_no_duplicates(f, emulator, steps=3)
    errors = f.controller.telemetry.reconcile_errors
    assert sum(errors.labels(reason)._value.get() for reason in ("conflict", "api", "status")) > 0
    # Once finished and the faults gone, actions that failed are repeated once (a canary not yet scaled to 0)
    # and then nothing more is written; the routes were never written after the end. "Once" needs the cache to
    # have caught up first: when the last status write was answered 500 after it was applied, the cache holds
    # the status before it until the watch thread (real time) delivers the change. On a starved machine that came
    # after the first round, whose tick then got a 409, and the repairs (the finalizer, the canary's scale-down:
    # 7 writes) came a round later. A re-list is the watch caught up. The client also gets back its usual
    # timeout: the 1 s the slow faults needed could cut a fault-free answer short on such a machine.
    f.api.timeout = 10.0
    f.controller.relist()
    f.world.pass_time(30)
    f.controller.resync()
    f.controller.run_due()
    writes, logged = emulator.emulator.writes(), len(emulator.emulator.write_log)
    for _ in range(3):
        f.world.pass_time(30)
        f.controller.resync()
        f.controller.run_due()
    extra = [(w.method, w.plural, w.subresource, w.name, w.agent, w.code)
             for w in emulator.emulator.write_log[logged:]]
    assert emulator.emulator.writes() == writes, f"requests after the end: {extra}"
    assert f.route_changes_after_end == 0
    f.world.assert_valid_writes()


def test_a_stale_cache_after_a_lost_status_answer_is_healed_by_a_conflict(faulty: Faulty,
                                                                          emulator: RunningEmulator) -> None:
    """A status write that was applied but answered 500 leaves the cache one version behind; the next
    write must be refused (409) and the release re-read, never a second copy of the same transition."""
    f = faulty
    f.world.create_release()
    f.world.drive(f.controller, until=Phase.PROGRESSING)
    before = f.world.status()
    emulator.emulator.faults.append(Fault(code=500, method="PUT", subresource="status", after_apply=True,
                                          times=1, agent=AGENT))
    f.watch_stop.set()  # the watch would heal the cache: stop it to see the 409 path
    emulator.emulator.disconnect_watches()
    status = f.world.drive(f.controller, relist=False)
    assert emulator.emulator.faults[0].hits == 1
    assert status.phase is Phase.SUCCEEDED
    assert f.controller.telemetry.reconcile_errors.labels("conflict")._value.get() >= 1
    assert [h.at for h in status.history][: len(before.history)] == [h.at for h in before.history]
    assert len({h.at for h in status.history}) == len(status.history), "a decision was recorded twice"
    f.checker.assert_clean()


def drive_with_the_watch(f: Faulty, budget: float = 60.0) -> ReleaseStatus:
    """Drive to the end; `drive` returns when nothing is queued, which with the watch running can be the
    moment between a write and its watch event: wait for the event to queue the release, then go on."""
    deadline = time.monotonic() + budget
    status = f.world.drive(f.controller, relist=False)
    while not status.phase.final and time.monotonic() < deadline:
        while f.controller.queue.next_due() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # polls a condition: the watch thread queues the release
        status = f.world.drive(f.controller, relist=False)
    return status


def test_route_writes_failing_for_a_while_do_not_roll_back_a_healthy_release(faulty: Faulty,
                                                                             emulator: RunningEmulator) -> None:
    f = faulty
    f.world.create_release()
    assert f.world.drive(f.controller, until=Phase.INITIALIZING).phase is Phase.INITIALIZING
    # The API server refuses the controller's route patches for a while (8 attempts, about 3 minutes).
    emulator.emulator.faults.append(Fault(code=500, method="PATCH", plural="virtualservices", times=8, agent=AGENT))
    status = drive_with_the_watch(f)
    assert emulator.emulator.faults[0].hits == 8
    f.checker.assert_clean()
    assert status.phase is Phase.SUCCEEDED, status.message
