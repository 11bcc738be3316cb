"""Persisting a release's status through the status subresource, guarded by resourceVersion.

`StatusStore.persister(release)` gives the reconciler its `persist` callback for one tick. The write is
a PUT of the whole object to `/status`, carrying the resourceVersion the tick read, so a write based on
a stale object (another replica, an operator's edit of the spec, our own previous write not yet seen)
gets 409: the callback raises `StatusConflict`, the reconciler's tick stops before any action, and the
loop re-reads the object and ticks again. The status written is `ReleaseStatus.for_storage()`, whole.
Not a merge-patch: in a merge patch `null` means "delete the key", and the status (and the judge's
state inside it) uses null values that must survive the round trip.

Any other failure of the write raises `StatusNotWritten`, which says that the release's own record, not
one of its actions, is what failed: the tick stops before acting (its decision was not recorded), and the
ticker tells the operator with an Event, since the status conditions are exactly what cannot be written.
A write refused as too large names the object's size.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from controller.adapters.kubernetes.client import RELEASES, ApiConflict, ApiTooLarge, KubeApi, NotLeader, Obj
from controller.core.status import ReleaseStatus
from controller.ports import PortError


class StatusConflict(ApiConflict):
    """The release changed since the tick read it; re-read and tick again."""


class StatusNotWritten(PortError):
    """The API refused or failed the status write (not a conflict). `retryable` is the cause's; `kind` groups
    the failures an operator is told about once: "too-large", "refused" (permanent) or "failing"."""

    def __init__(self, cause: PortError, size: int | None = None) -> None:
        too_large = isinstance(cause, ApiTooLarge)
        reason = cause.reason
        if too_large and size is not None:
            reason += f" (the release with this status is {size:,} bytes of JSON)"
        super().__init__(reason)
        self.retryable = cause.retryable
        self.kind = "too-large" if too_large else "failing" if cause.retryable else "refused"


class StatusStore:
    def __init__(self, api: KubeApi, on_written: Callable[[Obj], None] | None = None) -> None:
        self.api = api
        self.on_written = on_written
        self.writes = 0

    def persister(self, release: Obj, before: Callable[[ReleaseStatus], None] | None = None
                  ) -> Callable[[ReleaseStatus], None]:
        def persist(status: ReleaseStatus) -> None:
            if before is not None:
                before(status)
            self.write(release, status)
        return persist

    def write(self, release: Obj, status: ReleaseStatus) -> Obj:
        meta = release["metadata"]
        new = status.for_storage()
        body: dict[str, Any] = {**release, "status": new}
        try:
            written = self.api.replace_status(RELEASES, meta["namespace"], meta["name"], body)
        except ApiConflict as exc:
            raise StatusConflict(exc.reason) from exc
        except NotLeader:
            raise
        except ApiTooLarge as exc:
            raise StatusNotWritten(exc, len(json.dumps(body, separators=(",", ":"), default=str))) from exc
        except PortError as exc:
            raise StatusNotWritten(exc) from exc
        self.writes += 1
        # The tick goes on with the object as written (its new resourceVersion), as does the cache.
        release["metadata"] = written.get("metadata", meta)
        release["status"] = written.get("status", new)
        if self.on_written is not None:
            self.on_written(written)
        return written
