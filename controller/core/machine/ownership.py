"""Who may touch a service's routes and workloads when several releases of one stack come one after another.

- One release in flight per service: a new release that changes a service an unfinished release (one
  started, or one created earlier and still waiting) also changes waits in Pending, with the reason in
  its status, until that one has finished. Two releases never interleave their route writes.
- A finished release is done with the world: it never writes routes again (its last routes were read
  back before it finished), and once a later release of one of its services has started, it no longer
  retires anything either: the latest release of a service owns its versions (a v2 -> v3 release must
  not see v2's finished release scale its own stable back down, nor an undo see v3's).
"""

from __future__ import annotations

from controller.core.observation import Peer
from controller.core.spec.release import ReleaseSpec
from controller.core.status import ReleaseStatus


def _order(peer_created: str, peer_name: str) -> tuple[str, str]:
    return peer_created, peer_name


def queued_behind(spec: ReleaseSpec, created: str, peers: tuple[Peer, ...] | None) -> Peer | None:
    """The unfinished release this one (not yet started) must wait for, if any: it changes one of the same
    services and has started, or was created before this one (ties broken by name)."""
    mine = frozenset(spec.changed)
    for peer in sorted(peers or (), key=lambda p: _order(p.created, p.name)):
        if peer.name == spec.name or peer.final or not (peer.services & mine):
            continue
        if peer.started_at is not None or _order(peer.created, peer.name) < _order(created, spec.name):
            return peer
    return None


def superseded_by(spec: ReleaseSpec, status: ReleaseStatus, peers: tuple[Peer, ...] | None) -> Peer | None:
    """A release of one of this finished release's services that started after it did, if any."""
    if status.started_at is None:
        return None
    mine = frozenset(spec.changed)
    later = [p for p in peers or () if p.name != spec.name and p.services & mine
             and p.started_at is not None and p.started_at > status.started_at]
    return max(later, key=lambda p: p.started_at or 0.0, default=None)
