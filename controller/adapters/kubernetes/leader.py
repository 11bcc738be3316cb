"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

One Lease (default `stack-canary-controller` in the controller's namespace, `--lease-name`) names the
holder. The holder renews `renewTime` every `retry_period`. Whether the lease expired is never read from
the times written in it, which come from another replica's clock: like client-go's `observedTime`, each
replica notes on its own clock (`local_clock`, the process's monotonic clock) when it last saw the lease
record change, and takes the lease over only `leaseDurationSeconds` after that, with a
resourceVersion-guarded update, so of two replicas racing for it exactly one wins (the other gets 409). A
holder whose clock is minutes off therefore neither loses its lease early nor keeps it forever once it
stops renewing. A holder that has not managed to renew for `renew_deadline` stops calling itself leader
*before* the lease can expire for the others, so two leaders never write at once. On a graceful stop the
holder releases the lease (empty holder, 1 s duration) so that a standby takes over at once instead of
after expiry.

`Leadership` is what the controller does around the election: without an elector every replica leads;
with one, writes go through `LeaderOnlyApi` (refused the moment this replica stops being the leader, even
in the middle of a tick), a replica that just became leader is told (`on_elected`: it queues every
release), the `stack_canary_leader` gauge follows, and a graceful stop releases the lease.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from controller.adapters.kubernetes.client import LEASES, ApiConflict, ApiNotFound, KubeApi, LeaderOnlyApi, Obj
from controller.adapters.kubernetes.events import rfc3339
from controller.adapters.kubernetes.health import Telemetry
from controller.ports import Clock, PortError

log = logging.getLogger(__name__)

DEFAULT_LEASE = "stack-canary-controller"


def parse_time(value: str | None) -> float | None:
    """A Lease's RFC 3339 time (`renewTime`, `acquireTime`) in seconds since the epoch; None if unreadable."""
    if not value:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return None


def _record(spec: Obj) -> tuple[object, ...]:
    """What a renewal or takeover changes in a Lease: seen to change, the holder is alive."""
    return tuple(spec.get(k) for k in ("holderIdentity", "renewTime", "acquireTime", "leaseDurationSeconds",
                                       "leaseTransitions"))


@dataclass
class LeaseElector:
    api: KubeApi
    namespace: str
    identity: str
    # The wall clock: the times written into the Lease (read by people and `kubectl`, not by the election).
    clock: Clock
    name: str = DEFAULT_LEASE
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # This replica's own clock for every interval of the election (default `clock.now`; the controller
    # process passes `time.monotonic`, which no clock adjustment moves).
    local_clock: Callable[[], float] | None = None
    _renewed_at: float | None = field(default=None, init=False)
    # The lease record last seen and when (local clock) it was first seen so.
    _observed: tuple[object, ...] | None = field(default=None, init=False)
    _observed_at: float = field(default=0.0, init=False)
    transitions_seen: int = field(default=0, init=False)

    def _local(self) -> float:
        return self.local_clock() if self.local_clock is not None else self.clock.now()

    def is_leader(self) -> bool:
        """Renewed less than `renew_deadline` ago on the local clock. A local clock that went back past the
        last renewal (a wall clock stepped back, when no steady one was given) says nothing about how long
        ago that was: not the leader until the next renewal, rather than leader again for as long as the step."""
        if self._renewed_at is None:
            return False
        return 0.0 <= self._local() - self._renewed_at < self.renew_deadline

    def _observe(self, spec: Obj, local: float) -> None:
        record = _record(spec)
        if record != self._observed:
            self._observed, self._observed_at = record, local

    def try_acquire_or_renew(self) -> bool:
        """One round of the election; True when this replica holds the lease afterwards."""
        now, local = self.clock.now(), self._local()
        try:
            lease = self.api.get(LEASES, self.namespace, self.name)
        except ApiNotFound:
            return self._create(now, local)
        except PortError as exc:
            log.warning("leader election: %s", exc.reason)
            return self.is_leader()
        spec = lease.get("spec", {})
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        self._observe(spec, local)
        if holder and holder != self.identity and local < self._observed_at + duration:
            self._renewed_at = None
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        body = self._body(now, transitions, lease, acquired=spec.get("acquireTime") if holder == self.identity
                          else None)
        try:
            self.api.replace(LEASES, self.namespace, self.name, body)
        except ApiConflict:
            self._renewed_at = None
            return False
        except PortError as exc:
            log.warning("leader election: %s", exc.reason)
            return self.is_leader()
        if holder != self.identity:
            log.info("%s took the lease %s/%s over from %r", self.identity, self.namespace, self.name, holder)
            self.transitions_seen = transitions
        self._observe(body["spec"], local)
        self._renewed_at = local
        return True

    def _create(self, now: float, local: float) -> bool:
        body = self._body(now, 0, None, None)
        try:
            self.api.create(LEASES, self.namespace, body)
        except PortError as exc:  # 409: another replica created it first
            log.info("leader election: %s", exc.reason)
            return False
        self._observe(body["spec"], local)
        self._renewed_at = local
        return True

    def _body(self, now: float, transitions: int, lease: Obj | None, acquired: str | None) -> Obj:
        meta: Obj = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_duration),
                     "acquireTime": acquired or rfc3339(now, micro=True), "renewTime": rfc3339(now, micro=True),
                     "leaseTransitions": transitions},
        }

    def release(self) -> None:
        """Give the lease up (graceful stop), so that a standby need not wait for it to expire."""
        if not self.is_leader():
            return
        try:
            lease = self.api.get(LEASES, self.namespace, self.name)
            if lease.get("spec", {}).get("holderIdentity") != self.identity:
                return
            body = self._body(self.clock.now(), int(lease["spec"].get("leaseTransitions") or 0), lease, None)
            body["spec"].update(holderIdentity="", leaseDurationSeconds=1)
            self.api.replace(LEASES, self.namespace, self.name, body)
        except PortError as exc:
            log.warning("could not release the lease: %s", exc.reason)
        self._renewed_at = None


class Leadership:
    """The controller's side of the election: who may write, one round, the election thread, stepping down."""

    def __init__(self, elector: LeaseElector | None, telemetry: Telemetry,
                 on_elected: Callable[[], None] | None = None) -> None:
        self.elector = elector
        self.telemetry = telemetry
        self.on_elected = on_elected

    def guard(self, api: KubeApi) -> KubeApi:
        """`api`, or with an election, `api` refusing writes whenever this replica is not the leader."""
        return LeaderOnlyApi(api, self.may_write) if self.elector is not None else api

    def may_write(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    @property
    def retry_period(self) -> float:
        """How long a standby waits before it asks again (and a tick it may not run is put off)."""
        return self.elector.retry_period if self.elector is not None else 1.0

    def elect(self) -> bool:
        """One election round; a replica that just became leader tells `on_elected`."""
        if self.elector is None:
            return True
        was = self.elector.is_leader()
        now = self.elector.try_acquire_or_renew()
        self.telemetry.leader.set(1.0 if now else 0.0)
        if now and not was:
            log.info("%s is the leader now", self.elector.identity)
            if self.on_elected is not None:
                self.on_elected()
        return now

    def elect_forever(self, stop: threading.Event) -> None:
        """The election thread: a round every retry period until `stop` is set."""
        assert self.elector is not None
        while not stop.is_set():
            self.elect()
            stop.wait(self.elector.retry_period)

    def step_down(self) -> None:
        """On a graceful stop: give the lease up so that a standby takes over at once."""
        if self.elector is not None:
            self.elector.release()
            self.telemetry.leader.set(0.0)
