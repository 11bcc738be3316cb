"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

One Lease (default `stack-canary-controller` in the controller's namespace) names the holder. The holder
renews `renewTime` every `retry_period`; a replica that finds the lease expired (`renewTime +
leaseDurationSeconds` in the past) takes it over with a resourceVersion-guarded update, so of two
replicas racing for it exactly one wins (the other gets 409). A holder that has not managed to renew for
`renew_deadline` stops calling itself leader *before* the lease can expire for the others, so two
leaders never write at once. On a graceful stop the holder releases the lease (empty holder, 1 s
duration) so that a standby takes over at once instead of after expiry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from controller.adapters.kubernetes.client import LEASES, ApiConflict, ApiNotFound, KubeApi, Obj
from controller.adapters.kubernetes.events import rfc3339
from controller.ports import Clock, PortError

log = logging.getLogger(__name__)

DEFAULT_LEASE = "stack-canary-controller"


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return None


@dataclass
class LeaseElector:
    api: KubeApi
    namespace: str
    identity: str
    clock: Clock
    name: str = DEFAULT_LEASE
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    _renewed_at: float | None = field(default=None, init=False)
    transitions_seen: int = field(default=0, init=False)

    def is_leader(self) -> bool:
        return self._renewed_at is not None and self.clock.now() - self._renewed_at < self.renew_deadline

    def try_acquire_or_renew(self) -> bool:
        """One round of the election; True when this replica holds the lease afterwards."""
        now = self.clock.now()
        try:
            lease = self.api.get(LEASES, self.namespace, self.name)
        except ApiNotFound:
            return self._create(now)
        except PortError as exc:
            log.warning("leader election: %s", exc.reason)
            return self.is_leader()
        spec = lease.get("spec", {})
        holder = spec.get("holderIdentity") or ""
        renewed = parse_time(spec.get("renewTime")) or 0.0
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and renewed + duration > now:
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
        self._renewed_at = now
        return True

    def _create(self, now: float) -> bool:
        try:
            self.api.create(LEASES, self.namespace, self._body(now, 0, None, None))
        except PortError as exc:  # 409: another replica created it first
            log.info("leader election: %s", exc.reason)
            return False
        self._renewed_at = now
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
