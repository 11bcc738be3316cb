"""A search service's log says what it is and which faults are injected on purpose: the first place an
operator looks for why its answers fail (before, the services' logs were empty)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)


def first_line(env: dict[str, str]) -> str:
    proc = subprocess.Popen([sys.executable, "-m", "searchstack", "--role", "ml-infer", "--port", "0",
                             "--host", "127.0.0.1"], env={**os.environ, **env, "SEARCHSTACK_VERSION": "v2"},
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    with proc.stderr:
        try:
            return proc.stderr.readline().strip()
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def test_the_first_line_names_the_service_and_its_faults() -> None:
    line = first_line({"FAULT_ERROR_RATE": "0.2", "FAULT_LATENCY_MS": "30"})
    assert line == "searchstack: ml-infer-v2 (ml-infer v2) starting; faults injected: latency_ms=30, error_rate=0.2"
    assert first_line({}).endswith("faults injected: none")
