"""The finalizer `stackcanary.dev/restore-routes`: carried while a release is in flight, honoured on deletion.

A release in flight carries the finalizer; a finished one (or one whose spec does not parse) does not.
Deleting a release that carries it first sends all traffic back to the stable subsets (the canary
Deployments it owns are about to be garbage-collected), says so in a Kubernetes Event, and only then
removes the finalizer so that the deletion goes on. Every finalizer write carries the resourceVersion the
tick read (a stale object gets 409) and the object as written goes back to the cache.
"""

from __future__ import annotations

from collections.abc import Callable

from controller.adapters.kubernetes.client import RELEASES, KubeApi, Obj
from controller.adapters.kubernetes.wiring import ReleaseWiring, spec_or_none
from controller.core.machine import base_plan
from controller.core.status import Phase, ReleaseStatus
from controller.ports import Notice

FINALIZER = "stackcanary.dev/restore-routes"


class Finalizer:
    def __init__(self, api: KubeApi, wiring: ReleaseWiring, on_written: Callable[[Obj], None]) -> None:
        self.api = api
        self.wiring = wiring
        self.on_written = on_written

    def sync(self, obj: Obj, wanted: bool) -> None:
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
        self.on_written(written)

    def finalize(self, obj: Obj) -> None:
        """A release deleted in flight: all traffic back on stable first, then let the deletion go on."""
        meta = obj["metadata"]
        if FINALIZER not in (meta.get("finalizers") or []):
            return
        spec = spec_or_none(obj)
        status = ReleaseStatus.from_storage(obj.get("status"))
        if spec is not None and status.phase is not Phase.PENDING and not status.phase.final:
            self.wiring.router(meta["namespace"], spec.stack.services).apply(base_plan(spec).all_stable())
            self.wiring.events(obj).notify(Notice(
                meta["name"], "RolledBack", f"deleted while {status.phase.value}: all traffic back on "
                f"{spec.stable_described()}", warning=True))
        self.sync(obj, wanted=False)
