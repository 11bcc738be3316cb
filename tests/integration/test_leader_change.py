"""Leader change in the middle of a release (issue 9): the new leader continues; the old one stops writing.

Two replicas elect a leader on the Lease, each with a client of its own, so the emulator's write log
knows who wrote (User-Agent `stack-canary-controller/<identity>`):

- **partition**: the leader's requests all fail (the emulator answers its User-Agent 503) while a release
  progresses. It cannot renew; after `renew_deadline` it stops calling itself leader (and
  `LeaderOnlyApi` refuses its writes); the standby takes the lease once it expired and finishes the
  release. When the partition heals, the old leader finds the lease held and writes nothing at all.
- **kill**: two real `canary controller` processes; the leader is SIGKILLed mid-release; the standby takes
  over when the lease (15 s) expires and finishes the release.

The world is cluster-like (issue 14, `tests.support.cluster`): 4 pods per service and an HPA on ml-infer.
The partition and kill tests run in real time, so the cluster model is played by a thread on the wall
clock (`RealTimeCluster`), new pods ready after a seeded 0.2-1 s (short, since real seconds cost); the
fencing test runs on the fake clock, pods ready after 2-10 s. Every state the emulator stores is checked by
`tests.support.invariants` in all three tests, every rule on (the `invariants` fixture); the kill test
bounds the takeover by the lease timing read from the Lease itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from analysis.observations import MetricsQuery, WindowCounts
from controller.adapters.kubernetes.client import LEASES, KubeApi, LeaderOnlyApi
from controller.adapters.kubernetes.leader import LeaseElector, parse_time
from controller.adapters.kubernetes.running import Controller, ControllerConfig
from controller.cli.cluster import SystemClock
from controller.core.status import Phase
from tests.support.cluster import ClusterModel, RealTimeCluster
from tests.support.fakes import FakeClock
from tests.support.invariants import InvariantChecker
from tests.support.kmock_server import Fault, RunningEmulator
from tests.support.kube_world import NAMESPACE, KubeWorld, RouteMetrics, cluster_world
from tests.support.paths import REPO

LEASE_NS = "stack-canary-system"
LEASE_KEY = ("coordination.k8s.io", "v1", "leases")
# The `canary controller` process's election timing: LeaseElector's defaults (lease 15 s, retry 2 s).
LEASE_S, RETRY_S = LeaseElector.lease_duration, LeaseElector.retry_period
TAKEOVER_SLACK_S = 10.0
REPLICAS = 4
# These releases test leadership, not statistics: a pass needs no proof of safety (no alarm and 200 canary
# requests promote), which the margins' defaults would take minutes of this traffic to give.
NO_PROOF = {"nonInferiorityMargin": None, "absoluteNonInferiorityMargin": None, "latencyNonInferiorityMargin": None}


@pytest.fixture
def real_time_world(emulator: RunningEmulator, invariants: InvariantChecker
                    ) -> Iterator[tuple[KubeWorld, ClusterModel]]:
    """The stable stack (4 pods per service, an HPA on ml-infer), then the cluster model played in real time
    from there on (it adopts the stack as running): every pod started later is ready after 0.2-1 s."""
    world = KubeWorld(emulator)
    world.seed_stack(replicas=REPLICAS, hpa_on=("ml-infer",))
    cluster = RealTimeCluster(ClusterModel(seed=14, start_delay=(0.2, 1.0)), emulator)
    try:
        yield world, cluster.start()
    finally:
        cluster.stop()


def canary_pods_took_their_time(model: ClusterModel) -> bool:
    return any("-v2-" in p.name and p.ready_at is not None and p.ready_at - p.started >= 0.2 for p in model.started)


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def fast_release(world: KubeWorld) -> None:
    """One step that needs several looks (200 canary requests at 60 a second): the leader changes while the
    release is analysing (a change of leader between persisting a new weight and writing it was bug 3 of
    docs/reliability.md, since fixed; the crash campaign kills the controller at that point)."""
    world.create_release(strategy={"canary": {"steps": [{"weight": 20}], "interval": "1s", "minCanaryRequests": 200}},
                         analysis={"minCanaryRequests": 200, **NO_PROOF}, drainTime="500ms", scaleDownDelay="0s")


def takeover_gap(emulator: RunningEmulator, old: str, new: str) -> float:
    """Seconds from the old holder's last renewal to the new holder's acquisition, both as written into the
    Lease by the replicas themselves (from the store's history of the Lease, not from when the test looked)."""
    specs = [event["object"]["spec"] for _, event in emulator.store.events_after(LEASE_KEY, 0, LEASE_NS, None)]
    renewed = max(parse_time(s["renewTime"]) or 0.0 for s in specs if s.get("holderIdentity") == old)
    acquired = min(parse_time(s["acquireTime"]) or 0.0 for s in specs if s.get("holderIdentity") == new)
    return acquired - renewed


def holder(emulator: RunningEmulator) -> str:
    leases = emulator.objects("leases", LEASE_NS)
    return str(leases[0]["spec"].get("holderIdentity", "")) if leases else ""


def in_process_replicas(emulator: RunningEmulator, *identities: str
                        ) -> dict[str, tuple[Controller, threading.Event, threading.Thread]]:
    """Controllers with a client each (lease 3 s, renew deadline 2 s, retry 0.3 s), not started yet."""
    clock, metrics = SystemClock(), RouteMetrics(KubeApi.for_url(emulator.url), rps=300)
    replicas: dict[str, tuple[Controller, threading.Event, threading.Thread]] = {}
    for identity in identities:
        api = KubeApi.for_url(emulator.url)
        api.timeout = 2.0
        # The election's intervals on the steady clock, as in the `canary controller` process.
        elector = LeaseElector(api, LEASE_NS, identity, clock, lease_duration=3, renew_deadline=2, retry_period=0.3,
                               local_clock=time.monotonic)
        controller = Controller(api, ControllerConfig(identity=identity, watch_timeout=1, resync_period=1),
                                metrics, clock, elector)
        stop = threading.Event()
        replicas[identity] = (controller, stop, threading.Thread(target=controller.run, args=(stop,), daemon=True))
    return replicas


@pytest.mark.slow
def test_partitioned_leader_stops_writing_and_the_standby_finishes(
        emulator: RunningEmulator, invariants: InvariantChecker,
        real_time_world: tuple[KubeWorld, ClusterModel]) -> None:
    (world, model), checker = real_time_world, invariants
    replicas = in_process_replicas(emulator, "replica-a", "replica-b")
    replicas["replica-a"][2].start()
    try:
        assert wait_for(lambda: holder(emulator) == "replica-a", 10)
        replicas["replica-b"][2].start()
        fast_release(world)
        assert wait_for(lambda: world.status().phase is Phase.PROGRESSING and len(world.status().history) >= 1, 30)
        before = world.status()
        # The partition: everything replica-a sends fails from now on.
        emulator.emulator.faults.append(Fault(code=503, agent="/replica-a", times=None))
        cut = time.monotonic()
        assert wait_for(lambda: holder(emulator) == "replica-b", 15), "the standby never took the lease"
        taken = time.monotonic()
        assert wait_for(lambda: world.status().phase.final, 60), world.status().message
        emulator.emulator.faults.clear()  # the partition heals: replica-a must find the lease held
        healed = time.monotonic()
        a, b = replicas["replica-a"][0], replicas["replica-b"][0]
        # For 2 s after the heal replica-a never may write again. replica-b keeps the lease; on a loaded machine
        # one of its renewals can take longer than its renew deadline, and then it stops writing for a moment, as
        # it must, so its permission is waited for rather than sampled once.
        while time.monotonic() < healed + 2.0:
            assert not a.may_write()
            time.sleep(0.05)
        assert wait_for(lambda: b.may_write() and holder(emulator) == "replica-b", 10)
        print(f"\nreplica-b took the lease {taken - cut:.1f}s after replica-a was cut off (lease 3 s, renew "
              f"deadline 2 s); replica-a's writes refused by LeaderOnlyApi: {a.api.refused}")  # type: ignore[attr-defined]
    finally:
        for _, stop, _ in replicas.values():
            stop.set()
        for _, _, thread in replicas.values():
            thread.join(timeout=30)
    status = world.status()
    assert status.phase is Phase.SUCCEEDED, status.message
    assert [h.at for h in status.history][: len(before.history)] == [h.at for h in before.history]
    log = emulator.emulator.write_log
    by_a = [w for w in log if w.agent.endswith("/replica-a")]
    # Applied writes of replica-a stop at the partition (all it sent after it got 503).
    assert [w for w in by_a if w.at > cut and 200 <= w.code < 300] == []
    # It stopped even trying (LeaderOnlyApi) once its renew deadline passed: only lease renewals may follow,
    # and after the partition healed not one write. Its last renewal is the last one the emulator applied,
    # wherever it was logged: a renewal already past the fault check when the fault was added is logged after
    # `cut` and still counts.
    last_renewal = max(w.at for w in by_a if w.plural == "leases" and w.code == 200 and w.at < healed)
    tried = [w for w in by_a if w.plural != "leases" and w.at > last_renewal + 2.0 + 0.5]
    assert tried == [], tried[:5]
    assert [w for w in by_a if w.at > healed] == []
    assert any(w.agent.endswith("/replica-b") and w.plural == "stackreleases" and w.at > taken for w in log)
    checker.assert_clean()
    assert checker.check_final(emulator, [NAMESPACE]) == []
    reasons = [e["reason"] for e in world.objects("events")]
    # No event twice. One may be missing: past its renew deadline a replica sends none (best-effort, as in k8s).
    assert reasons.count("Initialized") <= 1 and reasons.count("Promoted") == 1, reasons
    assert canary_pods_took_their_time(model)


@pytest.mark.realtime
@pytest.mark.slow
def test_killed_leader_process_is_replaced_by_the_standby(emulator: RunningEmulator, invariants: InvariantChecker,
                                                          real_time_world: tuple[KubeWorld, ClusterModel],
                                                          tmp_path: Path) -> None:
    (world, model), checker = real_time_world, invariants
    processes: dict[str, subprocess.Popen[bytes]] = {}
    root = REPO
    try:
        for identity in ("proc-a", "proc-b"):
            with open(tmp_path / f"{identity}.log", "ab") as out:
                processes[identity] = subprocess.Popen(
                    [sys.executable, "-m", "controller.cli.main", "controller", "--server", emulator.url,
                     "--prometheus-url", "http://127.0.0.1:9",
                     "--prometheus-scrape-interval", "0", "--health-port", "0", "--health-host", "127.0.0.1",
                     "--identity", identity, "--lease-namespace", LEASE_NS, "--resync", "2",
                     "--no-business-metrics", "--log-level", "warning"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=root)
            if identity == "proc-a":
                assert wait_for(lambda: holder(emulator) == "proc-a", 20)
        # No Prometheus (port 9): every look is an `error`; with a generous budget the release holds at
        # its first step, which is all this test needs of it: a release in flight when the leader dies.
        world.create_release(strategy={"canary": {"steps": [{"weight": 20}], "interval": "1s"}},
                             policies={"rollbackAfterErrors": 1000})
        assert wait_for(lambda: world.status().phase is Phase.PROGRESSING, 30)
        os.kill(processes["proc-a"].pid, signal.SIGKILL)
        processes["proc-a"].wait(timeout=10)
        killed = time.monotonic()
        errors_then = len(world.status().history)
        assert wait_for(lambda: holder(emulator) == "proc-b", 30), "the standby never took the lease"
        took = time.monotonic() - killed
        # The new leader continues the release where it was: more decisions, same start.
        assert wait_for(lambda: len(world.status().history) > errors_then + 1, 20)
        world.patch_spec({"abort": True})
        assert wait_for(lambda: world.status().phase is Phase.ABORTED, 20), world.status().message
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
    gap = takeover_gap(emulator, "proc-a", "proc-b")
    print(f"\nthe standby took over {took:.1f}s after the leader was killed, {gap:.1f}s after the leader's last "
          f"renewal (lease {LEASE_S:.0f} s, retry {RETRY_S:.0f} s)")
    # Not before the lease expired (the election's guarantee: two leaders never write at once); and soon after:
    # the standby looks every retry period, so within one more of those, plus TAKEOVER_SLACK_S for a machine whose
    # two cores the suite keeps busy (25 s once, where 19 s is the most on an idle one).
    assert LEASE_S <= gap <= LEASE_S + 2 * RETRY_S + TAKEOVER_SLACK_S, gap
    assert took <= LEASE_S + 2 * RETRY_S + TAKEOVER_SLACK_S, took  # the kill came after the last renewal
    assert [w for w in emulator.emulator.write_log if w.agent.endswith("/proc-a") and w.at > killed] == []
    lease = emulator.objects("leases", LEASE_NS)[0]
    assert lease["spec"]["leaseTransitions"] >= 1
    checker.assert_clean()
    assert KubeApi.for_url(emulator.url).get(LEASES, LEASE_NS, "stack-canary-controller")["spec"][
        "holderIdentity"] == "proc-b"
    assert canary_pods_took_their_time(model)


class SlowMetrics(RouteMetrics):
    """A metrics source whose query takes `seconds` of the fake clock (a Prometheus near its timeout)."""

    def __init__(self, api: KubeApi, clock: FakeClock, seconds: float) -> None:
        super().__init__(api)
        self.clock, self.seconds = clock, seconds

    def window(self, query: MetricsQuery, start: float, end: float) -> WindowCounts:
        self.clock.sleep(self.seconds)
        return super().window(query, start, end)


def test_a_tick_that_outlives_its_leadership_writes_nothing(emulator: RunningEmulator,
                                                            invariants: InvariantChecker) -> None:
    """Regression (LeaderOnlyApi): leadership is checked before every write, not once per tick. A tick that
    started as leader and whose metrics query outlasted the renew deadline must not persist its decision
    nor act on it: another replica may be leader by then. (Fake clock, pods ready after 2-10 s of it.)"""
    world = cluster_world(emulator, replicas=REPLICAS)
    fast_release(world)
    api = KubeApi.for_url(emulator.url)
    elector = LeaseElector(api, LEASE_NS, "slow-a", world.clock, lease_duration=15, renew_deadline=10, retry_period=2)
    controller = Controller(api, ControllerConfig(identity="slow-a"), world.metrics, world.clock, elector)
    assert controller.elect()
    world.drive(controller, until=Phase.PROGRESSING)
    for _ in range(20):  # until a tick has read the step's weight back and opened its window
        if world.status().last_analysis_at is not None:
            break
        world.pass_time(1)
        controller.elect()
        controller.resync()
        controller.run_due()
    assert world.status().last_analysis_at is not None
    before = world.status()
    controller.metrics = SlowMetrics(KubeApi.for_url(emulator.url), world.clock, seconds=11)  # > renew deadline
    mark = len(emulator.emulator.write_log)
    world.pass_time(5)
    controller.elect()
    controller.resync()
    controller.run_due()
    assert not controller.may_write()
    written = [w for w in emulator.emulator.write_log[mark:] if w.plural != "leases"]
    assert written == [], written
    assert isinstance(controller.api, LeaderOnlyApi) and controller.api.refused >= 1
    assert world.status() == before
