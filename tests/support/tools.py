"""The programs the tests run (kubectl, Prometheus, Chromium, hadolint, ...): found, or the test fails saying how
to install them. A test never skips for a missing tool: `scripts/setup --test` installs every one of them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def require_tool(*names: str, install: str) -> str:
    """The path of the first of `names` on PATH or beside this Python (the venv's bin), else fail the test."""
    search = os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent)])
    for name in names:
        found = shutil.which(name, path=search)
        if found is not None:
            return found
    pytest.fail(f"{' or '.join(names)} is not installed ({install}; `scripts/setup --test` installs it)",
                pytrace=False)
