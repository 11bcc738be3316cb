"""A warm parent that forks controller processes on demand, for the crash campaign.

`python -m tests.support.controller_zygote LOG ARG...` imports the controller's modules once, then for each line
`spawn` on stdin forks a child that runs `canary ARG...` (`controller.cli.main.main`, the same entry point as
the `canary` script) with stdout/stderr appended to LOG, and answers the child's PID on stdout. Each
restart then costs a fork instead of an interpreter start and ~1 s of imports, so a campaign of 100+
SIGKILLs spends its time in the controller's work rather than in its imports. Children are reaped by
the zygote (SIGCHLD ignored); the test kills them by PID, and the zygote by PID at teardown (its
children get SIGKILL when it dies: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import signal
import sys

import kubernetes

import controller.adapters.prometheus.metrics
import controller.cli.cluster  # imported here so that children start warm
import controller.cli.main
from controller.adapters.parent_death import die_with_parent

# The official client imports its API classes lazily, on first use (~0.8 s): do it once, here.
_WARM = (kubernetes.client.ApiClient, kubernetes.client.CustomObjectsApi, kubernetes.client.CoreV1Api)


def main() -> None:
    log_path, argv = sys.argv[1], sys.argv[2:]
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped at once, never zombies
    die_with_zygote = die_with_parent(signal.SIGKILL)
    for line in sys.stdin:
        if line.strip() != "spawn":
            continue
        pid = os.fork()
        if pid == 0:  # the child: a controller process
            die_with_zygote()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = 1
            try:
                code = controller.cli.main.main(argv)
            finally:
                os._exit(code)
        print(pid, flush=True)


if __name__ == "__main__":
    main()
