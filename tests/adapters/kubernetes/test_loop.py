"""The controller process's machinery over a real socket: watch resume, 410 Gone, disconnects, the work
queue, the emulator's API semantics, health endpoints and a graceful stop.

These run the loop's threads in real time with short timeouts (the watch ends every second), so each
test waits on conditions with a bounded deadline instead of sleeping a fixed time.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable

import pytest

from controller.adapters.kubernetes.client import DEPLOYMENTS, HPAS, RELEASES, ApiConflict, ApiGone, KubeApi
from controller.adapters.kubernetes.health import HealthServer
from controller.adapters.kubernetes.leader import LeaseElector
from controller.adapters.kubernetes.queue import WorkQueue
from controller.adapters.kubernetes.running import Controller, ControllerConfig
from controller.adapters.kubernetes.workloads import ReplicaPolicy, deployment_readiness
from controller.cli.cluster import SystemClock
from controller.core.status import Phase
from controller.ports import TemporaryError
from tests.support.fakes import FakeClock
from tests.support.kmock_server import RunningEmulator, selector_matches
from tests.support.kube_world import NAMESPACE, KubeWorld, RouteMetrics, release_body


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def watching_controller(emulator: RunningEmulator) -> tuple[Controller, threading.Event, threading.Thread]:
    world = KubeWorld(emulator)
    controller = Controller(world.api, ControllerConfig(watch_timeout=1), world.metrics, world.clock)
    stop = threading.Event()
    thread = threading.Thread(target=controller.watch_forever, args=(stop,), daemon=True)
    thread.start()
    return controller, stop, thread


def create(api: KubeApi, name: str) -> None:
    api.create(RELEASES, NAMESPACE, release_body(name=name))


def test_watch_resumes_after_disconnects_and_relists_after_410(emulator: RunningEmulator) -> None:
    controller, stop, thread = watching_controller(emulator)
    api = KubeApi.for_url(emulator.url)
    try:
        assert wait_for(controller.synced.is_set)
        create(api, "one")
        assert wait_for(lambda: (NAMESPACE, "one") in controller.cache)
        lists = emulator.emulator.counts.get(("GET", "stackreleases", ""), 0)

        emulator.emulator.disconnect_watches()  # the connection drops: resume from the last version
        create(api, "two")
        assert wait_for(lambda: (NAMESPACE, "two") in controller.cache)

        api.delete(RELEASES, NAMESPACE, "one")
        assert wait_for(lambda: (NAMESPACE, "one") not in controller.cache)

        emulator.emulator.compact()  # history gone: the next watch gets 410 and must list again
        emulator.emulator.disconnect_watches()
        create(api, "three")
        assert wait_for(lambda: (NAMESPACE, "three") in controller.cache)
        assert set(controller.cache) == {(NAMESPACE, "two"), (NAMESPACE, "three")}
        assert emulator.emulator.counts.get(("GET", "stackreleases", ""), 0) > lists
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_watch_of_a_compacted_version_raises_gone(emulator: RunningEmulator) -> None:
    api = KubeApi.for_url(emulator.url)
    create(api, "one")
    rv = api.list(RELEASES, NAMESPACE)["metadata"]["resourceVersion"]
    emulator.emulator.compact()
    create(api, "two")
    with pytest.raises(ApiGone):
        list(api.watch(RELEASES, NAMESPACE, str(int(rv) - 1), timeout_seconds=1))


def test_status_only_changes_queue_nothing_and_spec_changes_queue_the_release(emulator: RunningEmulator) -> None:
    world = KubeWorld(emulator)
    controller = world.controller()
    obj = world.create_release()
    controller.apply_event({"type": "ADDED", "object": obj})
    assert controller.queue.pop_due() == (NAMESPACE, "search-v2")
    controller.queue.done((NAMESPACE, "search-v2"))
    status_only = {**obj, "metadata": {**obj["metadata"], "resourceVersion": "99999"}, "status": {"phase": "X"}}
    controller.apply_event({"type": "MODIFIED", "object": status_only})
    assert controller.queue.pop_due() is None
    new_spec = {**status_only, "metadata": {**status_only["metadata"], "generation": 2, "resourceVersion": "99998"}}
    controller.apply_event({"type": "MODIFIED", "object": new_spec})
    assert controller.queue.pop_due() is None, "an event older than the cached object is ignored"
    newer = {**new_spec, "metadata": {**new_spec["metadata"], "resourceVersion": "100000"}}
    controller.apply_event({"type": "MODIFIED", "object": newer})
    assert controller.queue.pop_due() == (NAMESPACE, "search-v2")
    controller.queue.done((NAMESPACE, "search-v2"))
    deleting = {**newer, "metadata": {**newer["metadata"], "resourceVersion": "100001",
                                      "deletionTimestamp": "2026-01-01T00:00:01Z"}}
    controller.apply_event({"type": "MODIFIED", "object": deleting})
    assert controller.queue.pop_due() == (NAMESPACE, "search-v2"), "a deletion is handled at once"
    controller.queue.done((NAMESPACE, "search-v2"))
    controller.apply_event({"type": "DELETED", "object": deleting})
    assert (NAMESPACE, "search-v2") not in controller.cache and controller.queue.pop_due() is None


def test_work_queue_runs_one_tick_per_key_and_backs_off_boundedly() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock, backoff_base=1.0, backoff_max=8.0)
    queue.add(("ns", "a"))
    queue.add(("ns", "a"), delay=5)  # the earlier time wins
    key = queue.pop_due()
    assert key == ("ns", "a")
    queue.add(("ns", "a"))  # while in flight: runs again after done(), not concurrently
    assert queue.pop_due() is None
    queue.done(("ns", "a"))
    assert queue.pop_due() == ("ns", "a")
    assert [queue.backoff(("ns", "a")) for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    queue.forget(("ns", "a"))
    assert queue.backoff(("ns", "a")) == 1
    queue.add(("ns", "b"), delay=3)
    assert queue.pop_due() is None
    clock.sleep(3)
    assert queue.pop_due() == ("ns", "b")


def test_emulator_conflicts_selectors_and_status_subresource(emulator: RunningEmulator) -> None:
    api = KubeApi.for_url(emulator.url)
    obj = api.create(RELEASES, NAMESPACE, release_body(name="one"))
    rv = obj["metadata"]["resourceVersion"]
    ignored = api.patch(RELEASES, NAMESPACE, "one", {"status": {"phase": "Succeeded"}})
    assert "status" not in ignored and ignored["metadata"]["generation"] == 1
    written = api.replace_status(RELEASES, NAMESPACE, "one", {**obj, "status": {"phase": "Progressing"}})
    assert written["status"] == {"phase": "Progressing"} and written["metadata"]["generation"] == 1
    with pytest.raises(ApiConflict):
        api.replace_status(RELEASES, NAMESPACE, "one", {**obj, "metadata": {**obj["metadata"], "resourceVersion": rv}})
    bumped = api.patch(RELEASES, NAMESPACE, "one", {"spec": {"paused": True}})
    assert bumped["metadata"]["generation"] == 2
    with pytest.raises(ApiConflict):
        api.create(RELEASES, NAMESPACE, release_body(name="one"))
    assert selector_matches("app in (a,b),version!=v1,!gone", {"app": "b", "version": "v2"})
    assert not selector_matches("app=a", {"app": "b"})


def test_api_errors_are_classified() -> None:
    api = KubeApi.for_url("http://127.0.0.1:9")  # nothing listens on the discard port
    api.timeout = 1.0
    api.api_client.configuration.retries = 0
    with pytest.raises(TemporaryError) as info:
        api.get(RELEASES, NAMESPACE, "x")
    assert info.value.retryable and "reading stackreleases/x" in info.value.reason


def test_deployment_readiness_reads_status_and_progress_deadline() -> None:
    base = {"metadata": {"name": "d", "generation": 2}, "spec": {"replicas": 2}}
    assert not deployment_readiness({**base, "status": {"observedGeneration": 1, "readyReplicas": 2,
                                                        "updatedReplicas": 2}}).ready
    assert deployment_readiness({**base, "status": {"observedGeneration": 2, "readyReplicas": 2,
                                                    "updatedReplicas": 2}}).ready
    stuck = deployment_readiness({**base, "status": {"observedGeneration": 2, "conditions": [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "timed out"}]}})
    assert stuck.failed and "progress deadline exceeded" in stuck.reason
    assert ReplicaPolicy().canary_replicas(10, 25) == 3
    assert ReplicaPolicy().canary_replicas(3, 1) == 1
    assert ReplicaPolicy(fixed=2).canary_replicas(10, 90) == 2


def test_hpa_on_the_stable_version_is_copied_for_the_canary(emulator: RunningEmulator) -> None:
    world = KubeWorld(emulator)
    world.seed_stack()
    world.api.create(HPAS, NAMESPACE, {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "ml-infer"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ml-infer-v1"},
                 "minReplicas": 2, "maxReplicas": 10,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                     "type": "Utilization", "averageUtilization": 70}}}]}})
    world.create_release()
    controller = world.controller()
    world.drive(controller, until=Phase.PROGRESSING)
    hpas = {h["metadata"]["name"]: h for h in world.objects("horizontalpodautoscalers")}
    assert hpas["ml-infer-v2"]["spec"]["scaleTargetRef"]["name"] == "ml-infer-v2"
    assert hpas["ml-infer-v2"]["spec"]["minReplicas"] == 1
    assert hpas["ml-infer"]["spec"]["scaleTargetRef"]["name"] == "ml-infer-v1"  # untouched
    # The HPA owns the canary's replicas: the controller does not fight it.
    world.api.patch(DEPLOYMENTS, NAMESPACE, "ml-infer-v2", {"spec": {"replicas": 4}})
    world.clock.sleep(5)
    controller.resync()
    controller.run_due()
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in world.objects("deployments")}
    assert replicas["ml-infer-v2"] == 4 and replicas["keyword-v2"] == 1
    world.assert_valid_writes()


@pytest.mark.slow
def test_running_controller_serves_health_and_metrics_and_stops_gracefully(emulator: RunningEmulator) -> None:
    world = KubeWorld(emulator)
    world.seed_stack()
    api = KubeApi.for_url(emulator.url)
    clock = SystemClock()
    elector = LeaseElector(api, "stack-canary-system", "replica-a", clock, lease_duration=3, renew_deadline=2,
                           retry_period=0.5, local_clock=time.monotonic)
    controller = Controller(api, ControllerConfig(watch_timeout=1, resync_period=1), RouteMetrics(api), clock,
                            elector)
    api.observer = controller.telemetry.api_call
    health = HealthServer(controller.telemetry, controller.healthy, controller.synced.is_set, "127.0.0.1", 0)
    health.start()
    stop = threading.Event()
    runner = threading.Thread(target=controller.run, args=(stop,), daemon=True)
    runner.start()
    try:
        world.create_release(strategy={"canary": {"steps": [{"weight": 50}], "interval": "1s",
                                                  "minCanaryRequests": 0, "settle": "0s"}})
        assert wait_for(lambda: world.status().phase.value not in ("Pending",), timeout=10)
        base = f"http://127.0.0.1:{health.port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "stack_canary_reconcile_duration_seconds_count" in text
        assert 'stack_canary_api_requests_total{code="200",resource="stackreleases",verb="list"}' in text
        assert "stack_canary_leader 1.0" in text
    finally:
        stop.set()
        runner.join(timeout=15)
        health.stop()
    assert not runner.is_alive(), "the loop did not stop"
    lease = emulator.objects("leases", "stack-canary-system")[0]
    assert lease["spec"]["holderIdentity"] == "", "a graceful stop releases the lease"
