"""Local mode's persistence: a release's spec and status in a state directory.

The spec (`release.json`) is written by the operator's commands and the status (`status.json`) only by
the controller, so the two never race. Writes are atomic (a temporary file renamed over the old one): a
killed process leaves either the old status or the new one, never half of one, and the next run
continues from it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.core.status import ReleaseStatus


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.release_path = self.root / "release.json"
        self.status_path = self.root / "status.json"

    def exists(self) -> bool:
        return self.release_path.exists()

    def load_release(self) -> dict[str, Any]:
        data = json.loads(self.release_path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{self.release_path}: not a release object")
        return data

    def save_release(self, release: dict[str, Any]) -> None:
        write_json_atomic(self.release_path, release)

    def load_status(self) -> ReleaseStatus:
        if not self.status_path.exists():
            return ReleaseStatus()
        return ReleaseStatus.from_storage(json.loads(self.status_path.read_text()))

    def save_status(self, status: ReleaseStatus) -> None:
        write_json_atomic(self.status_path, status.for_storage())

    def update_spec(self, **fields: Any) -> dict[str, Any]:
        """Set top-level spec fields (paused, abort, promoteFull, skipStep, retry, ...)."""
        return self.patch_spec(fields)

    def patch_spec(self, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a JSON merge patch (RFC 7386: null deletes) to the spec and bump the generation when it
        changed, as the API server does for `kubectl patch --type merge`."""
        from controller.core.operations import merge_patch

        release = self.load_release()
        spec = merge_patch(release.get("spec") or {}, patch)
        if spec == release.get("spec"):
            return release
        release["spec"] = spec
        meta = release.setdefault("metadata", {})
        meta["generation"] = int(meta.get("generation", 1)) + 1
        self.save_release(release)
        return release
