"""bench/router.py's CPU accounting: a router's CPU is its own and that of every process below it (Envoy runs
under its server), so a busy grandchild must count."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.router import process_tree_cpu

# A child that burns 0.3 s of CPU, says so, and then waits for its stdin to close; and a parent that only starts it
# and waits.
CHILD = (
    "import sys, time\n"
    "while time.process_time() < 0.3:\n"
    "    pass\n"
    "print('burnt', flush=True)\n"
    "sys.stdin.read()\n"
)
PARENT = (
    "import subprocess, sys\n"
    f"child = subprocess.Popen([sys.executable, '-c', {CHILD!r}], stdin=subprocess.PIPE, stdout=sys.stdout)\n"
    "sys.stdin.read()\n"
    "child.stdin.close()\n"
    "child.wait(10)\n"
)


@pytest.mark.timeout(60)
def test_the_cpu_of_a_process_counts_its_childrens() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "burnt"
        # The parent itself only waits; the 0.3 s were burnt by its child.
        assert process_tree_cpu(parent.pid) >= 0.25
    finally:
        assert parent.stdin is not None and parent.stdout is not None
        parent.stdin.close()
        parent.wait(20)
        parent.stdout.close()
    assert parent.returncode == 0


def test_a_process_that_is_gone_counts_nothing() -> None:
    gone = 2**22 + 12345  # above Linux' default pid_max, so no such process
    assert process_tree_cpu(gone) == 0.0
