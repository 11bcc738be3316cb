"""Hooks' signing keys in a local run: the `Secrets` port over directories laid out like mounted Secrets.

`secretRef: {name, key}` reads `<dir>/<name>/<key>` from the first allowed directory that has it (the
release's workdir, the `--hook-secret-dir` flags): the layout of a Kubernetes Secret mounted as a volume
under `<dir>/<name>`, so one release spec runs locally and in a cluster. Names are DNS subdomains and keys
have no `/` (the release spec's reader checks both), so a reference cannot climb out of its directory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from controller.ports import SecretUnavailable


class DirectorySecrets:
    """`Secrets` over directories; the namespace is the release's and plays no part locally."""

    def __init__(self, dirs: Sequence[str | Path]) -> None:
        self.dirs = tuple(Path(d) for d in dirs)

    def read(self, namespace: str, name: str, key: str) -> bytes:
        if "/" in name or "/" in key or name in (".", "..") or key in (".", ".."):
            raise SecretUnavailable(f"secret {name}/{key}: not a Secret's name and key")
        for base in self.dirs:
            path = base / name / key
            real = os.path.realpath(path)
            if not real.startswith(os.path.realpath(base) + os.sep) or not os.path.isfile(real):
                continue
            try:
                value = Path(real).read_bytes().strip()
            except OSError:
                raise SecretUnavailable(f"secret {name}/{key} could not be read") from None
            if not value:
                raise SecretUnavailable(f"secret {name}/{key} is empty")
            return value
        raise SecretUnavailable(f"secret {name}/{key} is in none of the secret directories")
