"""The `Peers` port over the controller's release cache: the other StackReleases of a namespace, as the
ownership rules (`controller.core.machine.ownership`) need them. No request: the watch keeps the cache."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from controller.adapters.kubernetes.client import Obj
from controller.core.observation import Peer
from controller.core.spec.release import InvalidSpec, parse_release
from controller.core.status import Phase


class CachedPeers:
    """Reads `releases()` (the watch cache's objects) on every call; a release whose spec does not parse
    counts as changing every service its `stack.services` names (it may still hold routes)."""

    def __init__(self, releases: Callable[[], list[Obj]]) -> None:
        self.releases = releases

    def peers(self, namespace: str, name: str) -> tuple[Peer, ...]:
        return tuple(peer_of(obj) for obj in self.releases()
                     if obj.get("metadata", {}).get("namespace") == namespace
                     and obj.get("metadata", {}).get("name") != name)


def peer_of(obj: Obj) -> Peer:
    meta, status = obj.get("metadata", {}), obj.get("status") or {}
    phase = status.get("phase") or Phase.PENDING.value
    started = status.get("startedAt")
    changed, stack = _services(obj)
    return Peer(name=str(meta.get("name", "")), services=changed, created=str(meta.get("creationTimestamp", "")),
                started_at=float(started) if isinstance(started, int | float) else None,
                final=phase in {p.value for p in Phase if p.final}, stack=stack)


def _services(obj: Obj) -> tuple[frozenset[str], frozenset[str]]:
    """The services a release changes and those of its stack."""
    try:
        spec = parse_release(obj)
        return frozenset(spec.changed), frozenset(spec.stack.services)
    except InvalidSpec:
        stack: Any = (obj.get("spec") or {}).get("stack")
        listed = stack.get("services") if isinstance(stack, Mapping) else None
        named = frozenset(s for s in listed if isinstance(s, str)) if isinstance(listed, list) else frozenset()
        return named, named
