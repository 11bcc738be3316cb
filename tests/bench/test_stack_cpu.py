"""bench/stack_cpu.py hides sniffio as an absent package is absent: its import fails every time it is tried."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.stack_cpu import HIDE_SNIFFIO
from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(60)

TRY_TWICE = """
failed = 0
for _ in range(2):
    try:
        import sniffio
    except ModuleNotFoundError:
        failed += 1
print(failed)
"""


def imports_failed(env: dict[str, str]) -> int:
    child = subprocess.run([sys.executable, "-c", TRY_TWICE], cwd=REPO, env={**os.environ, **env},
                           capture_output=True, text=True, timeout=30, check=True)
    return int(child.stdout)


def test_hidden_sniffio_fails_every_import_and_installed_sniffio_none(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(HIDE_SNIFFIO)
    assert imports_failed({"PYTHONPATH": str(tmp_path)}) == 2
    assert imports_failed({}) == 0  # the project's dependency is installed

