"""Children started with `die_with_parent` go when their parent goes, even a SIGKILLed one, and get the signal
asked for; a child whose parent went before the request took effect signals itself."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.paths import REPO
from tests.support.pids import alive, gone, wait_until

pytestmark = pytest.mark.timeout(60)

PARENT = """
    import signal, subprocess, sys, time
    sys.path.insert(0, {repo!r})
    from controller.adapters.parent_death import die_with_parent
    child = subprocess.Popen([sys.executable, "-c", {child!r}], preexec_fn=die_with_parent(signal.{sig}))
    print("child", child.pid, flush=True)
    time.sleep(60)
"""

# Writes the signal it receives to a file, or says it was never signalled.
CHILD = """
import signal, sys, time
def record(signum, frame):
    open({out!r}, "w").write(str(signum))
    sys.exit(0)
signal.signal(signal.SIGTERM, record)
open({ready!r}, "w").write("ready")
time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_child_gets_the_signal_asked_for_when_its_parent_is_sigkilled(tmp_path: Path, sig: signal.Signals) -> None:
    out, ready = tmp_path / "signal", tmp_path / "ready"
    child = CHILD.format(out=str(out), ready=str(ready))
    script = textwrap.dedent(PARENT).format(repo=str(REPO), child=child, sig=sig.name)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as parent:
        try:
            assert parent.stdout is not None
            pid = int(parent.stdout.readline().split()[1])
            assert wait_until(ready.exists, 20), "the child never started"
            assert alive(pid)
            parent.kill()
            assert gone(pid, 10), "the child outlived its SIGKILLed parent"
        finally:
            parent.kill()
    if sig == signal.SIGTERM:
        assert wait_until(out.exists, 5) and out.read_text() == str(int(signal.SIGTERM))
    else:
        assert not out.exists()  # SIGKILL cannot be handled: the child was killed, not asked

def test_a_child_whose_parent_went_before_the_request_signals_itself(tmp_path: Path) -> None:
    # The preexec function is made in one process and run in a child of another (a fork of the first): to the
    # child, its parent is not the process that asked, as when the asker died between fork and prctl.
    ran = tmp_path / "ran"
    script = textwrap.dedent(f"""
        import os, signal, subprocess, sys
        sys.path.insert(0, {str(REPO)!r})
        from controller.adapters.parent_death import die_with_parent
        asked = die_with_parent(signal.SIGTERM)
        pid = os.fork()
        if pid == 0:
            child = subprocess.Popen([sys.executable, "-c", "open({str(ran)!r}, 'w')"], preexec_fn=asked)
            print(child.wait(timeout=30), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=40, check=True)
    assert done.stdout.split() == [str(-int(signal.SIGTERM))], done.stderr
    assert not ran.exists()  # the program was never run

