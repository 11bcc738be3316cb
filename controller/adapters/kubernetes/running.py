"""Running the Kubernetes controller: its parts tied together, and the threads that drive them.

The parts, each in the module named after its activity:

- `watching.py`: the StackRelease cache, kept by list + watch, and which changes are queued;
- `queue.py`: the work queue (one tick per release at a time, requeue times, backoff) and its workers;
- `leader.py`: the Lease election and what the controller does around it (writes only while leader);
- `ticking.py`: one tick of one release, its errors, and when it runs again;
- `finalizing.py`: the finalizer that sends traffic back to stable when a release is deleted in flight;
- `wiring.py`: the reconciler's ports for one release (Deployments, Istio, Events, metrics, hooks);
- `store.py`: the status writes.

`run(stop)` runs the threads (watch, election, workers) until `stop` is set, queues every cached release
each `resync_period` (finished ones too: their tick re-reads routes and workloads and repairs drift; when
nothing drifted it writes nothing), then lets the ticks in flight finish and releases the lease. `relist`,
`elect` and `run_due` are the same steps, synchronous, for tests and benchmarks that drive the controller
with a fake clock.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from controller.adapters.kubernetes import queue as queueing
from controller.adapters.kubernetes.client import KubeApi, Obj
from controller.adapters.kubernetes.finalizing import Finalizer
from controller.adapters.kubernetes.health import Telemetry
from controller.adapters.kubernetes.in_flight import RequestsInFlight
from controller.adapters.kubernetes.leader import Leadership, LeaseElector
from controller.adapters.kubernetes.peers import CachedPeers
from controller.adapters.kubernetes.queue import Key, WorkQueue
from controller.adapters.kubernetes.store import StatusStore
from controller.adapters.kubernetes.ticking import ReleaseTicker
from controller.adapters.kubernetes.watching import ReleaseWatch
from controller.adapters.kubernetes.wiring import ReleaseWiring
from controller.adapters.kubernetes.workloads import ReplicaPolicy, WeightBox
from controller.core.spec.release import ReleaseSpec
from controller.ports import BusinessMetrics, Clock, History, Hooks, Metrics, Notifier
from controller.reconciler import Ports, TickResult

log = logging.getLogger(__name__)


@dataclass
class ControllerConfig:
    namespace: str | None = None  # None: every namespace
    identity: str = "stack-canary"
    resync_period: float = 30.0
    workers: int = 2
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    conflict_retry: float = 0.2
    watch_timeout: int = 300
    replica_policy: ReplicaPolicy = field(default_factory=ReplicaPolicy)
    # Seconds after a weight change before the metrics source counts only that weight's traffic
    # (`PrometheusConfig.settle_delay`); no analysis window opens sooner.
    metrics_delay: float = 0.0


class Controller:
    def __init__(self, api: KubeApi, config: ControllerConfig, metrics: Metrics, clock: Clock,
                 elector: LeaseElector | None = None, telemetry: Telemetry | None = None,
                 business: BusinessMetrics | None = None, notifier: Notifier | None = None,
                 hooks: Hooks | None = None, history: History | None = None,
                 in_flight: RequestsInFlight | None = None) -> None:
        self.config = config
        self.clock = clock
        self.elector = elector
        self.telemetry = telemetry or Telemetry()
        self.leadership = Leadership(elector, self.telemetry, on_elected=self.resync)
        # Who wrote is in every request's User-Agent; with an election, writes are refused the moment this
        # replica stops being the leader, even in the middle of a tick (LeaderOnlyApi).
        api.identify(config.identity)
        self.api = self.leadership.guard(api)
        self.queue = WorkQueue(clock, config.backoff_base, config.backoff_max)
        self.watch = ReleaseWatch(self.api, config.namespace, self.queue, config.watch_timeout,
                                  on_gone=self._forget)
        self.store = StatusStore(self.api, on_written=self.watch.remember)
        self.wiring = ReleaseWiring(self.api, clock, config.identity, config.replica_policy, metrics,
                                    business, notifier, hooks, CachedPeers(lambda: list(self.watch.cache.values())),
                                    config.metrics_delay, history, in_flight)
        self.ticker = ReleaseTicker(self.watch, self.queue, self.leadership, self.wiring,
                                    Finalizer(self.api, self.wiring, on_written=self.watch.remember),
                                    self.store, self.telemetry, config.conflict_retry)
        self._threads: list[threading.Thread] = []

    # --- the parts' state, as tests and the health endpoints read it ------------------------------------
    @property
    def cache(self) -> dict[Key, Obj]:
        return self.watch.cache

    @property
    def synced(self) -> threading.Event:
        return self.watch.synced

    @property
    def last_results(self) -> dict[Key, TickResult]:
        return self.ticker.last_results

    @property
    def ticks(self) -> int:
        return self.ticker.ticks

    @property
    def metrics(self) -> Metrics:
        return self.wiring.metrics

    @metrics.setter
    def metrics(self, value: Metrics) -> None:
        self.wiring.metrics = value

    def _forget(self, key: Key) -> None:
        self.ticker.forget(key)
        self.telemetry.release_gone(*key)

    # --- the steps, synchronous ----------------------------------------------------------------------------
    def relist(self) -> None:
        self.watch.relist()

    def apply_event(self, event: Obj) -> None:
        self.watch.apply_event(event)

    def watch_once(self, stop: threading.Event | None = None) -> None:
        self.watch.watch_once(stop)

    def watch_forever(self, stop: threading.Event) -> None:
        self.watch.watch_forever(stop)

    def may_write(self) -> bool:
        return self.leadership.may_write()

    def elect(self) -> bool:
        """One election round; a replica that just became leader queues every release."""
        return self.leadership.elect()

    def resync(self) -> None:
        self.watch.queue_all()

    def reconcile(self, key: Key) -> TickResult | None:
        return self.ticker.reconcile(key)

    def ports_for(self, obj: Obj, spec: ReleaseSpec | None, box: WeightBox) -> Ports:
        return self.wiring.ports_for(obj, spec, box)

    def run_due(self, limit: int | None = None) -> int:
        """Tick every release that is due now, one after the other (the synchronous driver)."""
        return queueing.run_due(self.queue, self.reconcile, limit)

    # --- the process -----------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        threads = [threading.Thread(target=self.watch.watch_forever, args=(stop,), name="watch", daemon=True)]
        if self.elector is not None:
            threads.append(threading.Thread(target=self.leadership.elect_forever, args=(stop,), name="election",
                                            daemon=True))
        threads += [threading.Thread(target=queueing.work, args=(self.queue, self.reconcile, stop),
                                     name=f"worker-{i}", daemon=True) for i in range(self.config.workers)]
        self._threads = threads
        for t in threads:
            t.start()
        self._resync_until(stop)
        for t in threads[1:]:
            t.join(timeout=30)
        self.leadership.step_down()
        log.info("controller stopped after %d ticks", self.ticks)

    def _resync_until(self, stop: threading.Event) -> None:
        next_resync = self.clock.now() + self.config.resync_period
        while not stop.wait(0.2):
            if self.clock.now() >= next_resync:
                self.resync()
                next_resync = self.clock.now() + self.config.resync_period

    def healthy(self) -> bool:
        """Every thread of the controller is still running (a dead watch or worker means a stuck controller)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def summary(self) -> dict[str, Any]:
        return {"releases": len(self.cache), "ticks": self.ticks, "status_writes": self.store.writes,
                "leader": self.may_write()}
