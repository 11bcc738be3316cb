"""Who may touch a service's routes and workloads when several releases of one stack come one after another.

- One release in flight per stack: a new release waits in Pending, with the reason in its status, while an
  unfinished release (one started, or one created earlier and still waiting) changes one of the same services
  or routes one of them: a release writes the routes of its whole stack (every service's stable subset, the
  canary lane through the services it leaves alone), so two releases of one stack would fight over them even
  when they change different services, and the later one would start on stable versions the earlier one is
  about to promote away. Two releases never interleave their route writes.
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
    """The unfinished release this one (not yet started) must wait for, if any: it changes or routes one of
    this one's services and has started, or was created before this one (ties broken by name)."""
    mine = frozenset(spec.stack.services)
    for peer in sorted(peers or (), key=lambda p: _order(p.created, p.name)):
        if peer.name == spec.name or peer.final or not ((peer.stack or peer.services) & mine):
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
