"""A cluster that takes its time: pods, the Deployment controller and the HPA controller, on the fake clock.

The emulator (`tests.support.kmock_server`) on its own makes a Deployment ready the instant it is written.
`ClusterModel` replaces that, for the tests that opt in (`KubeWorld(emulator, cluster=ClusterModel())`),
with what a cluster does over time, written into the emulator's store as the tests' fake clock passes, so
that the controller (reading over HTTP), watches and store observers all see it:

- **pods**: each Deployment runs pods of its current pod template; a new pod is ready after a start delay
  drawn (seeded) from `start_delay` seconds, or from `start_delays[image or version]`. A pod whose image or
  version is in `never_ready` (crash loop, image pull error) never gets ready, nor do pods of the emulator's
  `slow_images`; the emulator's `failing_images` are past their progress deadline at once, as before.
- **the Deployment controller**: scaling up starts new pods; scaling down removes pods at once (not-ready
  ones first); a new pod template starts a full set of new pods and removes the old ones as the new ones
  get ready. The status follows as the real controller writes it: `observedGeneration`, `replicas`,
  `updatedReplicas`, `readyReplicas`, `availableReplicas` (ready for `minReadySeconds`),
  `unavailableReplicas` (zeros left out, as the API server does), `Available` (at most `maxUnavailable`
  short) and `Progressing` (`NewReplicaSetCreated`, `ReplicaSetUpdated`, `NewReplicaSetAvailable`, and
  `ProgressDeadlineExceeded` once `spec.progressDeadlineSeconds` pass without progress; a rollout that
  completed is not timed again when it is later scaled or loses pods, like the real one).
- **evictions**: `evict(deployment, n)` removes ready pods at once; replacements start with their delay.
- **the HPA controller**: every autoscaling/v2 HorizontalPodAutoscaler whose `scaleTargetRef` is a
  Deployment is synced when first written and every `hpa_period` seconds after: it sets the Deployment's
  `spec.replicas` to the load the test sets (`set_load(service or deployment, replicas)`) kept within
  `[minReplicas, maxReplicas]` (no load set: it keeps the current count), and writes its status
  (`currentReplicas` as it found them, `desiredReplicas`, the `AbleToScale`, `ScalingActive`,
  `ScalingLimited` conditions). A Deployment at 0 replicas is not autoscaled (`ScalingDisabled`).

Time only moves when the test moves it: `advance(now)` plays every event up to `now` in order (a pod
ready, a deadline, an HPA sync), and `next_event()` says when the next one is, so a driver can stop the
clock there (`KubeWorld.drive` does). Writes through the API reach the model at once (the emulator's
`cluster` hook), at the clock's current time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from tests.support.kmock_server import DEPLOYMENTS, KubeEmulator, RunningEmulator, Store

Obj = dict[str, Any]
HPAS = ("autoscaling", "v2", "horizontalpodautoscalers")
Where = tuple[str, str]  # namespace, name


class Clock(Protocol):
    def now(self) -> float: ...


@dataclass
class Pod:
    """One pod: the template it runs, when it started, when it is (or was) ready; None: never."""

    name: str
    template: str
    started: float
    ready_at: float | None
    waiting: str = ""  # why a pod that never gets ready waits (CrashLoopBackOff, ImagePullBackOff, ...)

    def ready(self, now: float) -> bool:
        return self.ready_at is not None and self.ready_at <= now

    def available(self, now: float, min_ready: float) -> bool:
        return self.ready_at is not None and self.ready_at + min_ready <= now


@dataclass
class Rollout:
    """The Deployment controller's memory of one Deployment: its pods (its ReplicaSets, in short), the
    current template, and the counts it last wrote (progress is measured against them)."""

    template: str
    pods: list[Pod] = field(default_factory=list)
    progress_at: float = 0.0  # the Progressing condition's lastUpdateTime
    last: dict[str, int] = field(default_factory=dict)
    new_set: bool = True  # a new ReplicaSet was started and not yet written as such
    made: int = 0

    def current(self) -> list[Pod]:
        return [p for p in self.pods if p.template == self.template]

    def old(self) -> list[Pod]:
        return [p for p in self.pods if p.template != self.template]


@dataclass
class ClusterModel:
    """Pods, Deployments and HPAs that take their time (see the module docstring)."""

    seed: int = 0
    start_delay: tuple[float, float] = (2.0, 10.0)
    start_delays: dict[str, tuple[float, float]] = field(default_factory=dict)  # by image or version label
    never_ready: dict[str, str] = field(default_factory=dict)  # image or version label -> waiting reason
    hpa_period: float = 15.0
    loads: dict[str, int] = field(default_factory=dict)  # service or Deployment name -> replicas wanted
    rollouts: dict[Where, Rollout] = field(default_factory=dict)
    hpa_syncs: dict[Where, float] = field(default_factory=dict)  # HPA -> its next sync
    now: float = 0.0  # the last moment played
    started: list[Pod] = field(default_factory=list)  # every pod ever started, in order (for the tests' checks)
    _emulator: KubeEmulator | None = None
    _clock: Clock | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # --- wiring ------------------------------------------------------------------------------------------
    def attach(self, emulator: RunningEmulator, clock: Clock) -> ClusterModel:
        """Take over the emulator's Deployment status; what exists already is adopted as running and ready."""
        self._emulator, self._clock = emulator.emulator, clock
        with self.store.lock:
            self.now = clock.now()
            for ns, name in self._deployment_names():
                obj = self.store.objects[(DEPLOYMENTS, ns, name)]
                rollout = Rollout(_template_hash(obj), new_set=False)
                rollout.pods = [Pod(f"{name}-{i}", rollout.template, self.now, self.now)
                                for i in range(_replicas(obj))]
                self.rollouts[(ns, name)] = rollout
                self._sync_deployment(ns, name)
            emulator.emulator.cluster = self
        return self

    @property
    def store(self) -> Store:
        assert self._emulator is not None, "attach() the model to an emulator first"
        return self._emulator.store

    def written(self, key: tuple[str, str, str], ns: str, obj: Obj) -> None:
        """The emulator's hook: an object was written through the API (on the server's thread)."""
        if key not in (DEPLOYMENTS, HPAS):
            return
        with self.store.lock:
            self.advance()
            name = obj["metadata"]["name"]
            if key == DEPLOYMENTS:
                self._sync_deployment(ns, name)
            else:
                self._sync_hpa(ns, name)

    # --- what tests call ---------------------------------------------------------------------------------
    def advance(self, now: float | None = None) -> None:
        """Play every event up to `now` (default: the clock's time), in order, writing each into the store."""
        assert self._clock is not None, "attach() the model first"
        until = self._clock.now() if now is None else now
        with self.store.lock:
            while (event := self._next_event()) is not None and event <= until:
                self._play(max(event, self.now))
            self._play(max(until, self.now))

    def next_event(self) -> float | None:
        """When the next thing happens that changes what the store holds (None: nothing will by itself)."""
        with self.store.lock:
            return self._next_event()

    def evict(self, deployment: str, n: int = 1, namespace: str = "search") -> list[str]:
        """Evict `n` pods of a Deployment (ready ones first): gone at once, replacements start now."""
        with self.store.lock:
            self.advance()
            rollout = self.rollouts[(namespace, deployment)]
            victims = sorted(rollout.pods, key=lambda p: not p.ready(self.now))[:n]
            rollout.pods = [p for p in rollout.pods if p not in victims]
            self._sync_deployment(namespace, deployment)
            return [p.name for p in victims]

    def set_load(self, target: str, replicas: int) -> None:
        """The replicas the load on a service (every Deployment `app=<service>`) or on one Deployment asks
        for; HPAs act on it at their next sync."""
        with self.store.lock:
            self.loads[target] = replicas

    def pods(self, deployment: str, namespace: str = "search") -> list[Pod]:
        with self.store.lock:
            rollout = self.rollouts.get((namespace, deployment))
            return copy.deepcopy(rollout.pods) if rollout else []

    # --- the clock ---------------------------------------------------------------------------------------
    def _next_event(self) -> float | None:
        times = [t for t in self._event_times() if t > self.now]
        return min(times) if times else None

    def _event_times(self) -> Iterator[float]:
        for (ns, name), rollout in self.rollouts.items():
            obj = self.store.objects.get((DEPLOYMENTS, ns, name))
            if obj is not None:
                yield from self._deployment_times(obj, rollout)
        for where, at in self.hpa_syncs.items():
            if self._hpa_pending(*where):
                yield at

    @staticmethod
    def _deployment_times(obj: Obj, rollout: Rollout) -> Iterator[float]:
        """One Deployment's event times: its pods getting ready and available, its progress deadline."""
        min_ready = float(obj["spec"].get("minReadySeconds", 0) or 0)
        for pod in rollout.pods:
            if pod.ready_at is not None:
                yield pod.ready_at
                yield pod.ready_at + min_ready
        progressing = _progressing_of(obj)
        if _watched(rollout, progressing) and (progressing or {}).get("reason") != "ProgressDeadlineExceeded":
            yield rollout.progress_at + _deadline(obj)

    def _play(self, at: float) -> None:
        self.now = at
        for where, due in list(self.hpa_syncs.items()):
            if due <= at:
                self._sync_hpa(*where)
        for ns, name in sorted(set(self.rollouts) | set(self._deployment_names())):
            self._sync_deployment(ns, name)
        for where in [w for w in self.hpa_syncs if (HPAS, *w) not in self.store.objects]:
            del self.hpa_syncs[where]
        for ns, name in self._hpa_names():
            if (ns, name) not in self.hpa_syncs:
                self._sync_hpa(ns, name)

    def _deployment_names(self) -> list[Where]:
        return [(ns, name) for (key, ns), names in self.store.index.items() if key == DEPLOYMENTS for name in names]

    def _hpa_names(self) -> list[Where]:
        return [(ns, name) for (key, ns), names in self.store.index.items() if key == HPAS for name in names]

    # --- the Deployment controller -----------------------------------------------------------------------
    def _sync_deployment(self, ns: str, name: str) -> None:
        obj = self.store.objects.get((DEPLOYMENTS, ns, name))
        if obj is None:
            self.rollouts.pop((ns, name), None)
            return
        template = _template_hash(obj)
        rollout = self.rollouts.setdefault((ns, name), Rollout(template))
        if rollout.template != template:
            rollout.template, rollout.new_set = template, True
        self._scale(obj, rollout)
        status = self._status(obj, rollout)
        if obj.get("status") != status:
            self.store.update(DEPLOYMENTS, ns, name, {**obj, "status": status}, patch=False, status=True)

    def _scale(self, obj: Obj, rollout: Rollout) -> None:
        """The ReplicaSets' part: the current template at `spec.replicas` pods, old pods only while needed."""
        want = _replicas(obj)
        current = rollout.current()
        if len(current) < want:
            rollout.pods += [self._new_pod(obj, rollout) for _ in range(want - len(current))]
        elif len(current) > want:
            doomed = _least_ready_first(current, self.now)[: len(current) - want]
            rollout.pods = [p for p in rollout.pods if p not in doomed]
        ready_new = sum(p.ready(self.now) for p in rollout.current())
        old = rollout.old()
        keep = _least_ready_first(old, self.now)[len(old) - max(0, min(len(old), want - ready_new)):]
        rollout.pods = [p for p in rollout.pods if p.template == rollout.template or p in keep]

    def _new_pod(self, obj: Obj, rollout: Rollout) -> Pod:
        rollout.made += 1
        name = f"{obj['metadata']['name']}-{rollout.template[:6]}-{rollout.made}"
        keys = [*_images(obj), _version(obj)]
        assert self._emulator is not None
        waiting = next((self.never_ready[k] for k in keys if k in self.never_ready), "")
        if not waiting and set(keys) & (self._emulator.slow_images | self._emulator.failing_images):
            waiting = "ImagePullBackOff"
        lo, hi = next((self.start_delays[k] for k in keys if k in self.start_delays), self.start_delay)
        delay = self.rng.uniform(lo, hi)
        pod = Pod(name, rollout.template, self.now, None if waiting else self.now + delay, waiting)
        self.started.append(pod)
        return pod

    def _status(self, obj: Obj, rollout: Rollout) -> Obj:
        want, min_ready = _replicas(obj), float(obj["spec"].get("minReadySeconds", 0) or 0)
        counts = {
            "replicas": len(rollout.pods),
            "updatedReplicas": len(rollout.current()),
            "readyReplicas": sum(p.ready(self.now) for p in rollout.pods),
            "availableReplicas": sum(p.available(self.now, min_ready) for p in rollout.pods),
        }
        counts["unavailableReplicas"] = max(0, want + len(rollout.old()) - counts["availableReplicas"])
        previous = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
        progressing = self._progressing(obj, rollout, counts, previous.get("Progressing"))
        rollout.last = counts
        enough = counts["availableReplicas"] >= want - _max_unavailable(obj["spec"], want)
        available = _condition("Available", *(
            ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.") if enough else
            ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")),
            now=self.now, previous=previous.get("Available"))
        status: Obj = {"observedGeneration": obj["metadata"].get("generation", 1)}
        status.update({k: v for k, v in counts.items() if v})
        status["conditions"] = [available, progressing]
        return status

    def _progressing(self, obj: Obj, rollout: Rollout, counts: dict[str, int], previous: Obj | None) -> Obj:
        """The Progressing condition as the Deployment controller's rollout status sync writes it."""
        replica_set = f"{obj['metadata']['name']}-{rollout.template[:10]}"
        want = _replicas(obj)
        timed_out = ("Progressing", "False", "ProgressDeadlineExceeded",
                     f'ReplicaSet "{replica_set}" has timed out progressing.')
        if self._failing(obj) and counts["availableReplicas"] < want:  # the emulator's knob: at once
            rollout.new_set = False
            return _condition(*timed_out, now=self.now, previous=previous)
        if rollout.new_set or previous is None:
            rollout.new_set, rollout.progress_at = False, self.now
            return _condition("Progressing", "True", "NewReplicaSetCreated",
                              f'Created new replica set "{replica_set}"', now=self.now, previous=previous)
        if not _watched(rollout, previous):
            return previous
        if counts["updatedReplicas"] == counts["replicas"] == counts["availableReplicas"] == want:
            return _condition("Progressing", "True", "NewReplicaSetAvailable",
                              f'ReplicaSet "{replica_set}" has successfully progressed.', now=self.now,
                              previous=previous)
        if _progressed(rollout.last, counts):
            rollout.progress_at = self.now
            return _condition("Progressing", "True", "ReplicaSetUpdated", f'ReplicaSet "{replica_set}" is '
                              "progressing.", now=self.now, previous=previous, touch=True)
        if self.now >= rollout.progress_at + _deadline(obj):
            return _condition(*timed_out, now=self.now, previous=previous)
        return previous

    def _failing(self, obj: Obj) -> bool:
        assert self._emulator is not None
        return bool(set(_images(obj)) & self._emulator.failing_images)

    # --- the HPA controller ------------------------------------------------------------------------------
    def _hpa_plan(self, ns: str, name: str) -> tuple[int, int, Obj | None, str]:
        """(current, desired, target, why) for one HPA now: why is '' when it may scale its target."""
        hpa = self.store.objects[(HPAS, ns, name)]
        spec = hpa.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        target = self.store.objects.get((DEPLOYMENTS, ns, ref.get("name", ""))) if ref.get(
            "kind") == "Deployment" else None
        if target is None:
            return 0, 0, None, "FailedGetScale"
        current = _replicas(target)
        if current == 0:
            return 0, 0, target, "ScalingDisabled"
        labels = target["metadata"].get("labels") or {}
        load = self.loads.get(target["metadata"]["name"], self.loads.get(labels.get("app", ""), current))
        lowest, highest = int(spec.get("minReplicas", 1) or 1), int(spec.get("maxReplicas", current))
        return current, min(highest, max(lowest, load)), target, ""

    def _hpa_pending(self, ns: str, name: str) -> bool:
        if (HPAS, ns, name) not in self.store.objects:
            return False
        current, desired, _, _ = self._hpa_plan(ns, name)
        status = self.store.objects[(HPAS, ns, name)].get("status") or {}
        return desired != current or (status.get("currentReplicas"), status.get("desiredReplicas")) != (current,
                                                                                                         desired)

    def _sync_hpa(self, ns: str, name: str) -> None:
        self.hpa_syncs[(ns, name)] = self.now + self.hpa_period
        hpa = self.store.objects.get((HPAS, ns, name))
        if hpa is None:
            return
        current, desired, target, why = self._hpa_plan(ns, name)
        previous = {c["type"]: c for c in (hpa.get("status") or {}).get("conditions") or []}
        status: Obj = {"currentReplicas": current, "desiredReplicas": desired}
        if last := (hpa.get("status") or {}).get("lastScaleTime"):
            status["lastScaleTime"] = last
        if target is not None and not why and desired != current:
            tname = target["metadata"]["name"]
            self.store.update(DEPLOYMENTS, ns, tname, {"spec": {"replicas": desired}}, patch=True, status=False)
            self._sync_deployment(ns, tname)
            status["lastScaleTime"] = _stamp(self.now)
        status["conditions"] = _hpa_conditions(hpa, current, desired, why, self.now, previous)
        if hpa.get("status") != status:
            self.store.update(HPAS, ns, name, {**hpa, "status": status}, patch=False, status=False)


@dataclass
class IncrementalClusterModel(ClusterModel):
    """`ClusterModel` for clusters of hundreds of Deployments played in real time (the crash campaign's 80
    namespaces): each moment played syncs only the Deployments it can change, those new, written or deleted since
    their last sync or with an event of their own due (a pod ready or available, the progress deadline), where
    the full model syncs every one; the next event is found among times kept per Deployment. What it writes is
    what the full model writes, but for one thing: a change to the emulator's `failing_images` reaches a
    Deployment at its next write or event, not at the next moment played."""

    _versions: dict[Where, str] = field(default_factory=dict)  # the resourceVersion each was last synced at
    _times: dict[Where, list[float]] = field(default_factory=dict)  # its event times after that sync
    _window: tuple[float, float] | None = None  # (from, to] while a moment is played

    def _play(self, at: float) -> None:
        self._window = (self.now, at)
        try:
            super()._play(at)
        finally:
            self._window = None

    def _sync_deployment(self, ns: str, name: str) -> None:
        where = (ns, name)
        if self._window is not None and not self._due(where, *self._window):
            return
        super()._sync_deployment(ns, name)
        obj = self.store.objects.get((DEPLOYMENTS, ns, name))
        if obj is None:
            self._versions.pop(where, None)
            self._times.pop(where, None)
            return
        self._versions[where] = obj["metadata"]["resourceVersion"]
        self._times[where] = [t for t in self._deployment_times(obj, self.rollouts[where]) if t > self.now]

    def _due(self, where: Where, after: float, until: float) -> bool:
        obj = self.store.objects.get((DEPLOYMENTS, *where))
        if obj is None or obj["metadata"]["resourceVersion"] != self._versions.get(where):
            return True
        return any(after < t <= until for t in self._times.get(where, ()))

    def _event_times(self) -> Iterator[float]:
        for (ns, name), times in self._times.items():
            if (DEPLOYMENTS, ns, name) in self.store.objects:  # (deleted: nothing happens to it any more)
                yield from times
        for where, at in self.hpa_syncs.items():
            if self._hpa_pending(*where):
                yield at


class WallClock:
    """The machine's clock, for a model played in real time (`RealTimeCluster`)."""

    def now(self) -> float:
        return time.time()


class RealTimeCluster:
    """A model played by a thread of its own as the wall clock passes, for tests whose controller runs in real
    time (threads on the system clock, or a process of its own): `with RealTimeCluster(model, emulator):`
    attaches the model with `WallClock()` and plays each event within `poll` seconds of its moment (watches
    see the writes at their next poll, as those of any writer)."""

    def __init__(self, model: ClusterModel, emulator: RunningEmulator, poll: float = 0.02) -> None:
        self.model, self.poll = model, poll
        model.attach(emulator, WallClock())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-model", daemon=True)

    def start(self) -> ClusterModel:
        self._thread.start()
        return self.model

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def __enter__(self) -> ClusterModel:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.model.advance()
            event = self.model.next_event()
            self._stop.wait(self.poll if event is None else min(self.poll, max(0.0, event - time.time())))


def _hpa_conditions(hpa: Obj, current: int, desired: int, why: str, now: float, previous: dict[str, Obj]
                    ) -> list[Obj]:
    spec = hpa.get("spec") or {}
    if why == "FailedGetScale":
        return [_condition("AbleToScale", "False", why, "the HPA controller was unable to get the target's "
                           "current scale", now=now, previous=previous.get("AbleToScale"))]
    able = _condition("AbleToScale", "True", "SucceededRescale" if desired != current else "ReadyForNewScale",
                      "the HPA controller was able to update the target scale" if desired != current else
                      "recommended size matches current size", now=now, previous=previous.get("AbleToScale"))
    if why == "ScalingDisabled":
        active = _condition("ScalingActive", "False", why, "scaling is disabled since the replica count of the "
                            "target is zero", now=now, previous=previous.get("ScalingActive"))
        return [able, active]
    active = _condition("ScalingActive", "True", "ValidMetricFound", "the HPA was able to successfully calculate "
                        "a replica count", now=now, previous=previous.get("ScalingActive"))
    top, bottom = int(spec.get("maxReplicas", desired)), int(spec.get("minReplicas", 1) or 1)
    limited = (("True", "TooManyReplicas", "the desired replica count is more than the maximum replica count")
               if desired == top else
               ("True", "TooFewReplicas", "the desired replica count is less than the minimum replica count")
               if desired == bottom else ("False", "DesiredWithinRange", "the desired count is within the "
                                                                           "acceptable range"))
    return [able, active, _condition("ScalingLimited", *limited, now=now, previous=previous.get("ScalingLimited"))]


def _condition(kind: str, status: str, reason: str, message: str, *, now: float, previous: Obj | None,
               touch: bool = False) -> Obj:
    """A condition as the controllers set it: unchanged when nothing changed; the transition time kept
    while the status stays; `touch` (Progressing with progress) moves only lastUpdateTime."""
    same = previous is not None and (previous.get("status"), previous.get("reason"), previous.get("message")) == (
        status, reason, message)
    if same and not touch:
        assert previous is not None
        return previous
    # (a condition the emulator wrote before the model was attached may have no transition time)
    transition = previous.get("lastTransitionTime") or _stamp(now) if previous is not None and previous.get(
        "status") == status else _stamp(now)
    condition = {"type": kind, "status": status, "reason": reason, "message": message,
                 "lastTransitionTime": transition}
    if kind in ("Progressing", "Available"):
        condition["lastUpdateTime"] = _stamp(now)
    return condition


def _progressing_of(obj: Obj) -> Obj | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Progressing"),
                None)


def _watched(rollout: Rollout, progressing: Obj | None) -> bool:
    """Whether a rollout is still timed: not completed (a completed one is never timed again, however it is
    scaled later or whatever pods it loses, as with the real Deployment controller)."""
    return progressing is None or progressing.get("reason") != "NewReplicaSetAvailable" or bool(rollout.old())


def _progressed(before: dict[str, int], after: dict[str, int]) -> bool:
    """The Deployment controller's notion of progress: more updated, ready or available pods, fewer old."""
    if not before or not after:
        return False
    old_before = before["replicas"] - before["updatedReplicas"]
    old_after = after["replicas"] - after["updatedReplicas"]
    return (after["updatedReplicas"] > before["updatedReplicas"] or old_after < old_before
            or after["readyReplicas"] > before["readyReplicas"]
            or after["availableReplicas"] > before["availableReplicas"])


def _least_ready_first(pods: list[Pod], now: float) -> list[Pod]:
    """The order a ReplicaSet deletes pods in: not ready before ready, the youngest first."""
    return sorted(pods, key=lambda p: (p.ready(now), -p.started, p.name))


def _max_unavailable(spec: Obj, replicas: int) -> int:
    strategy = spec.get("strategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate" or replicas == 0:
        return 0
    rolling = strategy.get("rollingUpdate") or {}
    surge = _fencepost(rolling.get("maxSurge", "25%"), replicas, up=True)
    unavailable = _fencepost(rolling.get("maxUnavailable", "25%"), replicas, up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return min(unavailable, replicas)


def _fencepost(value: int | str, replicas: int, up: bool) -> int:
    if isinstance(value, int):
        return value
    share = replicas * float(value.rstrip("%")) / 100
    return math.ceil(share) if up else math.floor(share)


def _deadline(obj: Obj) -> float:
    return float(obj["spec"].get("progressDeadlineSeconds", 600))


def _replicas(obj: Obj) -> int:
    value = obj.get("spec", {}).get("replicas", 1)
    return int(value) if isinstance(value, int) else 1


def _images(obj: Obj) -> list[str]:
    return [str(c.get("image", "")) for c in obj["spec"]["template"].get("spec", {}).get("containers", [])]


def _version(obj: Obj) -> str:
    return str((obj["spec"]["template"].get("metadata", {}).get("labels") or {}).get("version", ""))


def _template_hash(obj: Obj) -> str:
    return hashlib.sha256(json.dumps(obj["spec"]["template"], sort_keys=True).encode()).hexdigest()[:16]


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
