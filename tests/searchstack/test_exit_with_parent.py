"""A service of the local platform stops when its supervisor is gone, even without the kernel's signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(60)

WATCH = ("import sys, time; from searchstack.__main__ import exit_with_parent; "
         "exit_with_parent(int(sys.argv[1]), poll_s=0.05); print('watching', flush=True); time.sleep(30)")


def test_a_service_whose_parent_is_gone_stops_as_on_sigterm() -> None:
    # The recorded parent is not this child's parent (as after the real one died and init adopted the child).
    child = subprocess.run([sys.executable, "-c", WATCH, str(os.getpid() + 10**6)], cwd=REPO, timeout=20,
                           capture_output=True, text=True)
    assert child.returncode == -signal.SIGTERM, child.stderr


def test_a_service_whose_parent_lives_keeps_running() -> None:
    with subprocess.Popen([sys.executable, "-c", WATCH, str(os.getpid())], cwd=REPO, stdout=subprocess.PIPE,
                          text=True) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "watching"
            with pytest.raises(subprocess.TimeoutExpired):
                child.wait(timeout=1.0)  # several polls went by and its parent (this process) is still there
        finally:
            child.kill()
            child.wait(timeout=10)
            if child.stdout is not None:
                child.stdout.close()
