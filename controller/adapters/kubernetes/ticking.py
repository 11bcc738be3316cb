"""Ticking one release, as a worker does it: the reconciler's tick, its errors, and when the release runs again.

- A release no longer cached is skipped; one this replica may not write (a standby) is put off by the
  election's retry period.
- A release being deleted is finalized (`finalizing.py`); one whose finalizer write fails backs off.
- Otherwise the tick reads the status from the cached object, carries or drops the finalizer, builds the
  release's ports (`wiring.py`), runs `Reconciler.tick` and persists through the status subresource with
  the object's resourceVersion (`StatusStore`).
- Errors are classified: a 409 (the status or finalizer write was based on a stale object) re-reads the
  object and ticks again after `conflict_retry`; an API error backs off exponentially; a crash (a bug) is
  logged loudly and backs off too, so that it does not stop the other releases.
- A status write the API refuses (too large, invalid, forbidden) or keeps failing holds the release where it
  is, and its conditions cannot say so: a Warning notice `StatusNotWritten` (an Event, and the chat/webhook
  notifier if any) tells the operator once per kind of failure, a refusal at once and a failing API at the
  `UNWRITTEN_TOLD_AFTER`th write in a row; `StatusWritten` follows when a write goes through again.
- After a good tick, the release runs again when it asked to (`requeue_after`); failed actions back off,
  but never later than the tick asked for.
"""

from __future__ import annotations

import logging
import time

from controller.adapters.kubernetes.client import ApiConflict, Obj
from controller.adapters.kubernetes.finalizing import Finalizer
from controller.adapters.kubernetes.health import Telemetry
from controller.adapters.kubernetes.leader import Leadership
from controller.adapters.kubernetes.queue import Key, WorkQueue
from controller.adapters.kubernetes.store import StatusNotWritten, StatusStore
from controller.adapters.kubernetes.watching import ReleaseWatch
from controller.adapters.kubernetes.wiring import ReleaseWiring, spec_or_none
from controller.adapters.kubernetes.workloads import WeightBox
from controller.core import machine
from controller.core.status import ReleaseStatus
from controller.logs import release_context
from controller.ports import Notice, PortError
from controller.reconciler import Reconciler, TickResult

log = logging.getLogger(__name__)

# A failing (not refusing) API is told of at this many status writes in a row: one 503 is not news.
UNWRITTEN_TOLD_AFTER = 3




class ReleaseTicker:
    """Ticks releases of the cache one key at a time; counts the ticks and keeps each release's last result."""

    def __init__(self, watch: ReleaseWatch, queue: WorkQueue, leadership: Leadership, wiring: ReleaseWiring,
                 finalizer: Finalizer, store: StatusStore, telemetry: Telemetry, conflict_retry: float) -> None:
        self.watch = watch
        self.queue = queue
        self.leadership = leadership
        self.wiring = wiring
        self.finalizer = finalizer
        self.store = store
        self.telemetry = telemetry
        self.conflict_retry = conflict_retry
        self.ticks = 0
        self.last_results: dict[Key, TickResult] = {}
        # Releases whose status writes fail: the kind of failure, how many in a row, and whether it was told.
        self.unwritten: dict[Key, tuple[str, int, bool]] = {}

    def forget(self, key: Key) -> None:
        self.last_results.pop(key, None)
        self.unwritten.pop(key, None)

    def reconcile(self, key: Key) -> TickResult | None:
        obj = self.watch.get(key)
        if obj is None:
            return None
        if not self.leadership.may_write():
            self.queue.add(key, self.leadership.retry_period)
            return None
        if obj.get("metadata", {}).get("deletionTimestamp"):
            self._finalize_safely(key, obj)
            return None
        result = self._attempt(key, obj)
        if result is not None:
            self._schedule(key, result)
        return result

    def _attempt(self, key: Key, obj: Obj) -> TickResult | None:
        """One tick with its errors classified and requeued; None when it failed."""
        started = time.perf_counter()
        error: str | None = None
        result: TickResult | None = None
        try:
            status = obj.get("status") or {}
            with release_context(release=key[1], namespace=key[0], phase=status.get("phase"), step=status.get("step")):
                result = self._tick(obj)
        except ApiConflict as exc:  # the status write, or the finalizer's, was based on a stale object
            error = "conflict"
            self.watch.reread(key, exc.reason)
            self.queue.add(key, self.conflict_retry)
        except StatusNotWritten as exc:
            error = "status"
            self._status_not_written(key, obj, exc)
            self.queue.add(key, self.queue.backoff(key))
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
        return result

    def _status_not_written(self, key: Key, obj: Obj, exc: StatusNotWritten) -> None:
        kind, count, told = self.unwritten.get(key, (exc.kind, 0, False))
        if kind != exc.kind:
            count, told = 0, False
        count += 1
        log.warning("tick of %s/%s: status not written (%d in a row): %s", *key, count, exc.reason)
        if not told and (exc.kind != "failing" or count >= UNWRITTEN_TOLD_AFTER):
            told = True
            what = ("the API refuses the release's status" if exc.kind != "failing"
                    else f"the release's status could not be written {count} times in a row")
            self._tell(obj, "StatusNotWritten", f"{what}, so the release holds where it is (its decisions are "
                                                f"not recorded and nothing is changed): {exc.reason}", True)
        self.unwritten[key] = (exc.kind, count, told)

    def _status_written(self, key: Key, obj: Obj) -> None:
        _, count, told = self.unwritten.pop(key)
        if told:
            self._tell(obj, "StatusWritten", f"the release's status is written again, after {count} failed "
                                             "writes; the release goes on", False)

    def _tell(self, obj: Obj, reason: str, message: str, warning: bool) -> None:
        meta = obj.get("metadata", {})
        notice = Notice(meta.get("name", ""), reason, message, warning, None, meta.get("namespace", ""))
        self.wiring.notifier_for(obj).notify(notice)

    def _schedule(self, key: Key, result: TickResult) -> None:
        """Record a tick that ran and queue the release for when it runs again."""
        if key in self.unwritten and result.persisted:
            self._status_written(key, self.watch.get(key) or {})
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

    def _tick(self, obj: Obj) -> TickResult:
        try:
            status = ReleaseStatus.from_storage(obj.get("status"))
        except (KeyError, ValueError, TypeError) as exc:
            raise PortError(f"the stored status is unreadable: {exc!r}") from exc
        spec = spec_or_none(obj)
        self.finalizer.sync(obj, wanted=spec is not None and not status.phase.final)
        box = WeightBox(machine.capacity_weight(status))
        ports = self.wiring.ports_for(obj, spec, box)

        def size_for(new: ReleaseStatus) -> None:
            box.weight = machine.capacity_weight(new)

        result = Reconciler(ports).tick(obj, status, self.store.persister(obj, before=size_for))
        # Also at once when a finished release just started its next revision or a retry (now in flight).
        self.finalizer.sync(obj, wanted=spec is not None and not result.status.phase.final)
        return result

    def _finalize_safely(self, key: Key, obj: Obj) -> None:
        try:
            self.finalizer.finalize(obj)
        except PortError as exc:
            log.warning("finalizing %s/%s: %s", *key, exc.reason)
            self.telemetry.reconcile_errors.labels("finalize").inc()
            self.queue.add(key, self.queue.backoff(key))
