"""`controller.adapters.signals.stop_on_signals`: SIGTERM/SIGINT as an event, with no locking code in a handler.

Each case runs in its own interpreter (signal dispositions belong to the process), bounded by a timeout."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A thread other than the main one, where the kernel may deliver a process-directed signal (Linux picks any thread
# that does not block it); the script sends it there on purpose with pthread_kill.
WORKER = """
import signal, threading, time
from controller.adapters.signals import stop_on_signals
ready = threading.Event()
def worker():
    ready.set()
    while True:
        time.sleep(0.01)
t = threading.Thread(target=worker, daemon=True)
t.start()
ready.wait()
def fire(sig, after=0.2):
    time.sleep(after)
    signal.pthread_kill(t.ident, sig)
"""


def run(script: str) -> str:
    done = subprocess.run([sys.executable, "-c", WORKER + textwrap.dedent(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.timeout(60)
def test_a_signal_delivered_to_another_thread_wakes_a_main_thread_waiting_without_timeout() -> None:
    """A handler that sets the event runs only in the main thread, between bytecodes: with the main thread blocked
    in `wait()` and the signal taken by another thread, such a handler never runs. The relay thread sets it."""
    out = run("""
        with stop_on_signals() as stop:
            threading.Thread(target=fire, args=(signal.SIGTERM,), daemon=True).start()
            print("set" if stop.wait(10) else "not set")
    """)
    assert out == "set"


@pytest.mark.timeout(60)
def test_sigint_sets_it_too_and_other_signals_do_not() -> None:
    out = run("""
        seen = []
        signal.signal(signal.SIGUSR1, lambda *_: seen.append("usr1"))
        with stop_on_signals() as stop:
            signal.raise_signal(signal.SIGUSR1)
            usr1 = stop.wait(0.5)
            threading.Thread(target=fire, args=(signal.SIGINT,), daemon=True).start()
            print(usr1, stop.wait(10), seen)
    """)
    assert out == "False True ['usr1']"


@pytest.mark.timeout(60)
def test_the_previous_handlers_and_wakeup_fd_come_back_on_exit() -> None:
    out = run("""
        def mine(*_):
            pass
        signal.signal(signal.SIGTERM, mine)
        before = signal.set_wakeup_fd(-1)
        int_before = signal.getsignal(signal.SIGINT)  # inherited: ignored under some runners, Python's own else
        with stop_on_signals():
            inside = signal.getsignal(signal.SIGTERM) is mine
        after = signal.set_wakeup_fd(-1)
        restored = signal.getsignal(signal.SIGTERM) is mine
        int_restored = signal.getsignal(signal.SIGINT) is int_before
        print(inside, restored, int_restored, before, after, threading.active_count())
    """)
    assert out == "False True True -1 -1 2"  # the main thread and the script's worker: the relay has ended
