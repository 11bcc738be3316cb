"""Queueing: releases due for a tick, at most one tick per release at a time, with backoff; the workers.

A key (namespace, name) is either waiting (with the time it is due), in flight (a worker ticks it), or
absent. Adding a key that is in flight marks it to run again when the worker is done, at the earliest of
the times asked for; adding a waiting key keeps the earlier due time. Failures grow a per-key
exponential backoff (base * 2^n, capped) that `forget` resets after a good tick.

The workers pop keys and hand each to a `tick` callable: `work` blocks in real time until `stop` is set
(one per worker thread), `run_due` ticks what is due now and returns (the synchronous driver of tests and
benchmarks that move a fake clock).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from controller.ports import Clock

Key = tuple[str, str]


class WorkQueue:
    def __init__(self, clock: Clock, backoff_base: float = 1.0, backoff_max: float = 300.0) -> None:
        self.clock = clock
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._due: dict[Key, float] = {}
        self._active: set[Key] = set()
        self._again: dict[Key, float] = {}
        self._failures: dict[Key, int] = {}
        self._cond = threading.Condition()

    def add(self, key: Key, delay: float = 0.0) -> None:
        at = self.clock.now() + max(0.0, delay)
        with self._cond:
            if key in self._active:
                self._again[key] = min(at, self._again.get(key, at))
            else:
                self._due[key] = min(at, self._due.get(key, at))
            self._cond.notify()

    def pop_due(self) -> Key | None:
        """The key due earliest, if one is due now and not in flight; it is in flight afterwards."""
        now = self.clock.now()
        with self._cond:
            due = [(at, key) for key, at in self._due.items() if at <= now]
            if not due:
                return None
            _, key = min(due)
            del self._due[key]
            self._active.add(key)
            return key

    def get(self, stop: threading.Event, max_wait: float = 0.5) -> Key | None:
        """Block (in real time) until a key is due or `stop` is set."""
        while not stop.is_set():
            key = self.pop_due()
            if key is not None:
                return key
            with self._cond:
                nxt = self.next_due()
                wait = max_wait if nxt is None else min(max_wait, max(0.0, nxt - self.clock.now()))
                self._cond.wait(wait)
        return None

    def done(self, key: Key) -> None:
        with self._cond:
            self._active.discard(key)
            if key in self._again:
                at = self._again.pop(key)
                self._due[key] = min(at, self._due.get(key, at))
                self._cond.notify()

    def next_due(self) -> float | None:
        return min(self._due.values(), default=None)

    def backoff(self, key: Key) -> float:
        """Count a failure of `key` and return how long to wait before its next try."""
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        return float(min(self.backoff_max, self.backoff_base * 2 ** n))

    def forget(self, key: Key) -> None:
        self._failures.pop(key, None)

    def drop(self, key: Key) -> None:
        with self._cond:
            self._due.pop(key, None)
            self._again.pop(key, None)
            self._failures.pop(key, None)

    def waiting(self) -> int:
        return len(self._due)


def run_due(queue: WorkQueue, tick: Callable[[Key], object], limit: int | None = None) -> int:
    """Tick every release that is due now, one after the other; how many were ticked."""
    done = 0
    while limit is None or done < limit:
        key = queue.pop_due()
        if key is None:
            break
        try:
            tick(key)
        finally:
            queue.done(key)
        done += 1
    return done


def work(queue: WorkQueue, tick: Callable[[Key], object], stop: threading.Event) -> None:
    """One worker thread: tick each key as it falls due, until `stop` is set."""
    while not stop.is_set():
        key = queue.get(stop)
        if key is None:
            continue
        try:
            tick(key)
        finally:
            queue.done(key)
