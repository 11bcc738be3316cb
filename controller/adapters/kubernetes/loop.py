"""The controller loop: list+watch StackReleases, queue them, tick each with the reconciler.

- **Cache**: a list fills it and gives a resourceVersion; a watch from there keeps it current. A watch
  that ends (server timeout, disconnect) resumes from the last resourceVersion seen; 410 Gone (that
  version was compacted away) re-lists. Events that change only the status (our own writes) update the
  cache but queue nothing; a new object or a new generation (the spec changed) is queued at once.
- **Queue** (`WorkQueue`): at most one tick per release at a time, each release requeued at the time its
  tick asked for (`requeue_after`); a failed tick (API error, 409 conflict, a failed action) waits a
  bounded exponential backoff. Every `resync_period`, every cached release is queued again (finished
  ones too: a tick of a finished release re-reads routes and workloads and repairs drift; when nothing
  drifted it writes nothing).
- **Leadership**: with a `LeaseElector`, only the leader ticks (standbys keep their cache warm); a replica
  that becomes leader queues every release.
- **Deletion**: a release in flight carries the finalizer `stackcanary.dev/restore-routes`. Deleting
  it then first sends all traffic back to the stable subsets (the canary Deployments it owns are about to
  be garbage-collected), and only then removes the finalizer. Finished releases carry none.
- **One tick** builds the ports of that release (Deployments, Istio routes, Events, the shared Metrics
  source and, for A/B experiments, the shared business-metrics source), reads the status from the cached
  object and persists through the status subresource with the object's resourceVersion: a 409 re-reads
  the object and ticks again shortly.

`run(stop)` runs the threads (watch, election, workers) until `stop` is set, then lets the ticks in flight
finish and releases the lease. `relist`, `elect` and `run_due` are the same steps, synchronous, for
tests and benchmarks that drive the loop with a fake clock.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from controller.adapters.http.hooks import HttpHooks
from controller.adapters.http.notifiers import MultiNotifier
from controller.adapters.kubernetes.client import RELEASES, ApiConflict, ApiGone, KubeApi, LeaderOnlyApi, Obj
from controller.adapters.kubernetes.events import EventNotifier
from controller.adapters.kubernetes.health import Telemetry
from controller.adapters.kubernetes.leader import LeaseElector
from controller.adapters.kubernetes.queue import Key, WorkQueue
from controller.adapters.kubernetes.routing import IstioRouter
from controller.adapters.kubernetes.store import StatusStore
from controller.adapters.kubernetes.workloads import DeploymentWorkloads, ReleaseRef, ReplicaPolicy, WeightBox
from controller.core.machine import base_plan
from controller.core.spec.release import InvalidSpec, ReleaseSpec, parse_release
from controller.core.status import Phase, ReleaseStatus
from controller.logs import release_context
from controller.ports import BusinessMetrics, Clock, Hooks, Metrics, Notice, Notifier, PortError
from controller.reconciler import Ports, Reconciler, TickResult

log = logging.getLogger(__name__)

FINALIZER = "stackcanary.dev/restore-routes"


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


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata", {})
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


def _rv(obj: Obj | None) -> int:
    """resourceVersion as a number, for "which copy is newer": opaque by the API's contract, but an integer
    on every etcd-backed server; anything else compares as -1 (then the event simply wins)."""
    value = (obj or {}).get("metadata", {}).get("resourceVersion", "")
    return int(value) if str(value).isdigit() else -1


def effective_weight(status: ReleaseStatus) -> int:
    """The share of traffic the new version gets: all of it once promotion re-pointed `stable`."""
    return 100 if status.phase in (Phase.PROMOTING, Phase.SUCCEEDED) else status.canary_weight


class Controller:
    def __init__(self, api: KubeApi, config: ControllerConfig, metrics: Metrics, clock: Clock,
                 elector: LeaseElector | None = None, telemetry: Telemetry | None = None,
                 business: BusinessMetrics | None = None, notifier: Notifier | None = None,
                 hooks: Hooks | None = None) -> None:
        self.config = config
        self.metrics = metrics
        # A/B experiments' primary metric (None: an experiment's looks are errors, see docs/experiments.md).
        self.business = business
        # Chat/webhook notifications besides the release's Kubernetes Events, and the release hooks' caller.
        self.notifier = notifier
        self.hooks = hooks or HttpHooks()
        self.clock = clock
        self.elector = elector
        # Who wrote is in every request's User-Agent; with an election, writes are refused the moment this
        # replica stops being the leader, even in the middle of a tick (LeaderOnlyApi).
        api.identify(config.identity)
        self.api = LeaderOnlyApi(api, self.may_write) if elector is not None else api
        self.telemetry = telemetry or Telemetry()
        self.queue = WorkQueue(clock, config.backoff_base, config.backoff_max)
        self.store = StatusStore(self.api, on_written=self._remember)
        self.cache: dict[Key, Obj] = {}
        self.resource_version: str | None = None
        self.synced = threading.Event()
        self.ticks = 0
        self.last_results: dict[Key, TickResult] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # --- cache: list + watch -----------------------------------------------------------------------------
    def relist(self) -> None:
        listed = self.api.list(RELEASES, self.config.namespace)
        fresh = {key_of(o): o for o in listed.get("items", [])}
        with self._lock:
            for gone in set(self.cache) - set(fresh):
                self._forget(gone)
            self.cache.update(fresh)
            self.resource_version = str(listed.get("metadata", {}).get("resourceVersion", ""))
        for key in fresh:
            self.queue.add(key)
        self.synced.set()

    def apply_event(self, event: Obj) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        rv = obj.get("metadata", {}).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        if kind == "BOOKMARK":
            return
        key = key_of(obj)
        with self._lock:
            if kind == "DELETED":
                self._forget(key)
                return
            old = self.cache.get(key)
            if old is not None and _rv(obj) < _rv(old):
                return  # older than what our own write returned: keep the newer
            self.cache[key] = obj
        old_meta, meta = (old or {}).get("metadata", {}), obj.get("metadata", {})
        spec_changed = old is None or old_meta.get("generation") != meta.get("generation")
        being_deleted = bool(meta.get("deletionTimestamp")) and not old_meta.get("deletionTimestamp")
        if spec_changed or being_deleted:
            self.queue.add(key)

    def _forget(self, key: Key) -> None:
        self.cache.pop(key, None)
        self.queue.drop(key)
        self.last_results.pop(key, None)
        self.telemetry.release_gone(*key)

    def _remember(self, written: Obj) -> None:
        with self._lock:
            key = key_of(written)
            if _rv(written) >= _rv(self.cache.get(key)):
                self.cache[key] = written

    def watch_once(self, stop: threading.Event | None = None) -> None:
        """Follow one watch stream until the server ends it; re-list first when there is no version yet."""
        if self.resource_version is None:
            self.relist()
        assert self.resource_version is not None
        for event in self.api.watch(RELEASES, self.config.namespace, self.resource_version,
                                    self.config.watch_timeout):
            self.apply_event(event)
            if stop is not None and stop.is_set():
                return

    def watch_forever(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                self.watch_once(stop)
                failures = 0
            except ApiGone as exc:
                log.info("watch expired (%s); listing again", exc.reason)
                self.resource_version = None
            except PortError as exc:
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                log.warning("watch failed (%s); again in %.1fs", exc.reason, delay)
                stop.wait(delay)

    # --- leadership ----------------------------------------------------------------------------------------
    def may_write(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    def elect(self) -> bool:
        """One election round; a replica that just became leader queues every release."""
        if self.elector is None:
            return True
        was = self.elector.is_leader()
        now = self.elector.try_acquire_or_renew()
        self.telemetry.leader.set(1.0 if now else 0.0)
        if now and not was:
            log.info("%s is the leader now", self.elector.identity)
            for key in list(self.cache):
                self.queue.add(key)
        return now

    def resync(self) -> None:
        for key in list(self.cache):
            self.queue.add(key)

    # --- one tick ------------------------------------------------------------------------------------------
    def reconcile(self, key: Key) -> TickResult | None:
        obj = self.cache.get(key)
        if obj is None:
            return None
        if not self.may_write():
            self.queue.add(key, self.elector.retry_period if self.elector else 1.0)
            return None
        if obj.get("metadata", {}).get("deletionTimestamp"):
            self._finalize_safely(key, obj)
            return None
        started = time.perf_counter()
        error: str | None = None
        result: TickResult | None = None
        try:
            status = obj.get("status") or {}
            with release_context(release=key[1], namespace=key[0], phase=status.get("phase"), step=status.get("step")):
                result = self._tick(obj)
        except ApiConflict as exc:  # the status write, or the finalizer's, was based on a stale object
            error = "conflict"
            self._reread(key, exc.reason)
            self.queue.add(key, self.config.conflict_retry)
        except PortError as exc:
            error = "api"
            log.warning("tick of %s/%s failed: %s", *key, exc.reason)
            self.queue.add(key, self.queue.backoff(key))
        except Exception:  # a bug must not stop the other releases; back off and say so loudly
            error = "internal"
            log.exception("tick of %s/%s crashed", *key)
            self.queue.add(key, self.queue.backoff(key))
        finally:
            self.ticks += 1
            self.telemetry.reconcile_seconds.observe(time.perf_counter() - started)
        if error is not None:
            self.telemetry.reconcile_errors.labels(error).inc()
            return None
        assert result is not None
        self.last_results[key] = result
        self.telemetry.release_state(key[0], key[1], result.status.phase, result.status.canary_weight,
                                     result.status)
        if result.failed_actions:
            self.telemetry.reconcile_errors.labels("action").inc()
            delay = self.queue.backoff(key)
            self.queue.add(key, delay if result.requeue_after is None else min(delay, max(result.requeue_after, 1.0)))
        else:
            self.queue.forget(key)
            if result.requeue_after is not None:
                self.queue.add(key, result.requeue_after)
        return result

    def _reread(self, key: Key, why: str) -> None:
        log.info("status of %s/%s was stale (%s); reading it again", *key, why)
        try:
            fresh = self.api.get(RELEASES, key[0], key[1])
        except PortError as exc:
            log.warning("re-reading %s/%s: %s", *key, exc.reason)
            return
        self._remember(fresh)

    def _tick(self, obj: Obj) -> TickResult:
        try:
            status = ReleaseStatus.from_storage(obj.get("status"))
        except (KeyError, ValueError, TypeError) as exc:
            raise PortError(f"the stored status is unreadable: {exc!r}") from exc
        spec = _spec_or_none(obj)
        self._sync_finalizer(obj, wanted=spec is not None and not status.phase.final)
        box = WeightBox(effective_weight(status))
        ports = self.ports_for(obj, spec, box)

        def size_for(new: ReleaseStatus) -> None:
            box.weight = effective_weight(new)

        result = Reconciler(ports).tick(obj, status, self.store.persister(obj, before=size_for))
        # Also at once when a finished release just started its next revision or a retry (now in flight).
        self._sync_finalizer(obj, wanted=spec is not None and not result.status.phase.final)
        return result

    # --- deletion ----------------------------------------------------------------------------------------
    def _sync_finalizer(self, obj: Obj, wanted: bool) -> None:
        """Carry the finalizer while the release is in flight, and not after (one write each way)."""
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if (FINALIZER in finalizers) == wanted:
            return
        new = [*finalizers, FINALIZER] if wanted else [f for f in finalizers if f != FINALIZER]
        written = self.api.patch(RELEASES, meta["namespace"], meta["name"],
                                 {"metadata": {"finalizers": new or None,
                                               "resourceVersion": meta["resourceVersion"]}})
        obj["metadata"] = written.get("metadata", meta)  # the tick goes on with the new resourceVersion
        self._remember(written)

    def _finalize_safely(self, key: Key, obj: Obj) -> None:
        try:
            self._finalize(obj)
        except PortError as exc:
            log.warning("finalizing %s/%s: %s", *key, exc.reason)
            self.telemetry.reconcile_errors.labels("finalize").inc()
            self.queue.add(key, self.queue.backoff(key))

    def _finalize(self, obj: Obj) -> None:
        """A release deleted in flight: all traffic back on stable first, then let the deletion go on."""
        meta = obj["metadata"]
        if FINALIZER not in (meta.get("finalizers") or []):
            return
        spec = _spec_or_none(obj)
        status = ReleaseStatus.from_storage(obj.get("status"))
        if spec is not None and status.phase is not Phase.PENDING and not status.phase.final:
            router = IstioRouter(self.api, meta["namespace"], spec.stack.services)
            router.apply(base_plan(spec).all_stable())
            EventNotifier(self.api, obj, self.clock, self.config.identity).notify(Notice(
                meta["name"], "RolledBack", f"deleted while {status.phase.value}: all traffic back on "
                f"{spec.stable.version}", warning=True))
        self._sync_finalizer(obj, wanted=False)

    def ports_for(self, obj: Obj, spec: ReleaseSpec | None, box: WeightBox) -> Ports:
        ref = ReleaseRef.of(obj)
        services = spec.stack.services if spec else ()
        workloads = DeploymentWorkloads(self.api, ref, services, spec.stable.version if spec else None,
                                        spec.canary.version if spec else None, self.config.replica_policy, box)
        router = IstioRouter(self.api, ref.namespace, services)
        notifier: Notifier = EventNotifier(self.api, obj, self.clock, self.config.identity)
        if self.notifier is not None:
            notifier = MultiNotifier([notifier, self.notifier])
        return Ports(workloads, router, self.metrics, self.clock, notifier, business=self.business, hooks=self.hooks)

    def run_due(self, limit: int | None = None) -> int:
        """Tick every release that is due now, one after the other (the synchronous driver)."""
        done = 0
        while limit is None or done < limit:
            key = self.queue.pop_due()
            if key is None:
                break
            try:
                self.reconcile(key)
            finally:
                self.queue.done(key)
            done += 1
        return done

    # --- the process -----------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        threads = [threading.Thread(target=self.watch_forever, args=(stop,), name="watch", daemon=True)]
        if self.elector is not None:
            threads.append(threading.Thread(target=self._elect_forever, args=(stop,), name="election",
                                            daemon=True))
        threads += [threading.Thread(target=self._work, args=(stop,), name=f"worker-{i}", daemon=True)
                    for i in range(self.config.workers)]
        self._threads = threads
        for t in threads:
            t.start()
        next_resync = self.clock.now() + self.config.resync_period
        while not stop.wait(0.2):
            if self.clock.now() >= next_resync:
                self.resync()
                next_resync = self.clock.now() + self.config.resync_period
        for t in threads[1:]:
            t.join(timeout=30)
        if self.elector is not None:
            self.elector.release()
            self.telemetry.leader.set(0.0)
        log.info("controller stopped after %d ticks", self.ticks)

    def _elect_forever(self, stop: threading.Event) -> None:
        assert self.elector is not None
        while not stop.is_set():
            self.elect()
            stop.wait(self.elector.retry_period)

    def _work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            key = self.queue.get(stop)
            if key is None:
                continue
            try:
                self.reconcile(key)
            finally:
                self.queue.done(key)

    def healthy(self) -> bool:
        """Every thread of the loop is still running (a dead watch or worker means a stuck controller)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def summary(self) -> dict[str, Any]:
        return {"releases": len(self.cache), "ticks": self.ticks, "status_writes": self.store.writes,
                "leader": self.may_write()}


def _spec_or_none(obj: Obj) -> ReleaseSpec | None:
    try:
        return parse_release(obj)
    except InvalidSpec:
        return None
