"""Children that cannot outlive the process that started them: Linux' parent-death signal, asked for safely.

`die_with_parent(sig)` returns the function to pass as `subprocess.Popen(preexec_fn=...)`. It runs in the child
between fork and exec and asks the kernel (prctl PR_SET_PDEATHSIG) for `sig` when the parent goes, so a parent
that is SIGKILLed still takes its children down. Two details make it safe:

- prctl is looked up here, in the parent. Looking it up in the child (`ctypes.CDLL(None)`, a dlopen) can deadlock
  when the parent has threads: another thread may have held the loader's lock at the fork.
- The parent may die between the fork and the prctl; then the kernel never sends the signal, so the child
  checks that its parent is still the process that forked it and signals itself if not.

Linux sends the signal when the *thread* that forked the child exits, not the process: start children from a
thread that lives as long as they should (normally the main thread of a server).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

__all__ = ["die_with_parent"]

PR_SET_PDEATHSIG = 1

# Resolved once, at import, in the parent (see the module docstring).
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None]:
    """The `preexec_fn` that makes the child receive `sig` when the calling thread's process goes."""
    parent = os.getpid()

    def ask_the_kernel() -> None:
        if _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent went before the prctl took effect: nobody will signal us
            os.kill(os.getpid(), sig)

    return ask_the_kernel
