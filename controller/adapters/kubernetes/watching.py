"""Watching StackReleases: the cache kept by list + watch, and which changes are worth a tick.

A list fills the cache and gives a resourceVersion; a watch from there keeps it current. A watch that ends
(server timeout, disconnect) resumes from the last resourceVersion seen; 410 Gone (that version was
compacted away) re-lists; any other API error waits a bounded exponential backoff before watching again.

What is queued: every release a list returns; a new object, a new generation (the spec changed) or the
start of a deletion at once. Events that change only the status (our own writes) update the cache but
queue nothing, and a copy older than the cached one (the cache already holds what our own write returned)
is ignored. A release that disappears leaves the cache and the queue, and `on_gone` is told.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from controller.adapters.kubernetes.client import RELEASES, ApiGone, KubeApi, Obj
from controller.adapters.kubernetes.queue import Key, WorkQueue
from controller.ports import PortError

log = logging.getLogger(__name__)


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata", {})
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


def _rv(obj: Obj | None) -> int:
    """resourceVersion as a number, for "which copy is newer": opaque by the API's contract, but an integer
    on every etcd-backed server; anything else compares as -1 (then the event simply wins)."""
    value = (obj or {}).get("metadata", {}).get("resourceVersion", "")
    return int(value) if str(value).isdigit() else -1


def worth_a_tick(old: Obj | None, new: Obj) -> bool:
    """A new release, a changed spec (new generation) or a deletion just begun; not a status-only change."""
    old_meta, meta = (old or {}).get("metadata", {}), new.get("metadata", {})
    spec_changed = old is None or old_meta.get("generation") != meta.get("generation")
    being_deleted = bool(meta.get("deletionTimestamp")) and not old_meta.get("deletionTimestamp")
    return spec_changed or being_deleted


class ReleaseWatch:
    """The StackReleases of `namespace` (None: every namespace), cached, and queued when worth a tick."""

    def __init__(self, api: KubeApi, namespace: str | None, queue: WorkQueue, watch_timeout: int = 300,
                 on_gone: Callable[[Key], None] | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self.queue = queue
        self.watch_timeout = watch_timeout
        self.on_gone = on_gone
        self.cache: dict[Key, Obj] = {}
        self.resource_version: str | None = None
        self.synced = threading.Event()
        self._lock = threading.Lock()

    def get(self, key: Key) -> Obj | None:
        return self.cache.get(key)

    def queue_all(self) -> None:
        """Queue every cached release (a resync, or a replica that just became leader)."""
        for key in list(self.cache):
            self.queue.add(key)

    def relist(self) -> None:
        listed = self.api.list(RELEASES, self.namespace)
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
        if worth_a_tick(old, obj):
            self.queue.add(key)

    def _forget(self, key: Key) -> None:
        self.cache.pop(key, None)
        self.queue.drop(key)
        if self.on_gone is not None:
            self.on_gone(key)

    def remember(self, written: Obj) -> None:
        """Cache a copy the controller wrote (or read) itself, unless the cache holds a newer one."""
        with self._lock:
            key = key_of(written)
            if _rv(written) >= _rv(self.cache.get(key)):
                self.cache[key] = written

    def reread(self, key: Key, why: str) -> None:
        """Read one release again into the cache (its cached copy turned out to be stale)."""
        log.info("status of %s/%s was stale (%s); reading it again", *key, why)
        try:
            fresh = self.api.get(RELEASES, key[0], key[1])
        except PortError as exc:
            log.warning("re-reading %s/%s: %s", *key, exc.reason)
            return
        self.remember(fresh)

    def watch_once(self, stop: threading.Event | None = None) -> None:
        """Follow one watch stream until the server ends it; re-list first when there is no version yet."""
        if self.resource_version is None:
            self.relist()
        assert self.resource_version is not None
        for event in self.api.watch(RELEASES, self.namespace, self.resource_version, self.watch_timeout):
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
