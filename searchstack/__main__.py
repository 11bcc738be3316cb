"""Run one search-stack service: `python -m searchstack --role ROLE --port P [--host 127.0.0.1]`.

`--role` defaults to $SEARCHSTACK_ROLE (how the container image picks it).

Configuration beyond role and address comes from the environment (see searchstack/README.md).
"""

from __future__ import annotations

import os

# Before numpy loads: the services' matrix products are tiny, and idle BLAS threads spinning on 2 cores
# cost more CPU than the work itself (measured: ml-search used ~3x the CPU per request without this).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The *_created series double every metric and nothing here reads them.
os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "True")

import argparse
import signal
import socket
import sys
import threading
import time

import uvicorn

from searchstack.app import create_app
from searchstack.settings import ROLES, Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m searchstack", description=__doc__)
    role = os.environ.get("SEARCHSTACK_ROLE") or None  # container images choose the role by env
    parser.add_argument("--role", required=role is None, default=role, choices=ROLES)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fd", type=int, default=None,
                        help="serve on this inherited, already bound socket instead of binding --host/--port")
    return parser.parse_args(argv)


def exit_with_parent(parent_pid: int, poll_s: float = 0.5) -> threading.Thread:
    """Stop as on SIGTERM once process `parent_pid` is no longer this one's parent (it died: the process was
    handed to init). The local platform's supervisor sets EXIT_WITH_PARENT_PID: its kernel parent-death signal
    is tied to the thread that started the service and was once lost, which left a service running after its
    run was killed."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if parent := os.environ.get("EXIT_WITH_PARENT_PID", "").strip():
        exit_with_parent(int(parent))
    try:
        settings = Settings.from_env(args.role)
    except ValueError as exc:
        print(f"searchstack: invalid configuration: {exc}", file=sys.stderr)
        return 2
    # The one line of its log that says what it is, and any faults injected on purpose (why its answers fail).
    injected = settings.faults.model_dump(exclude_defaults=True)
    print(f"searchstack: {settings.workload} ({settings.role} {settings.version}) starting; faults injected: "
          + (", ".join(f"{k}={v:g}" for k, v in injected.items()) or "none"), file=sys.stderr, flush=True)
    config = uvicorn.Config(
        create_app(settings),
        host=args.host,
        port=args.port,
        workers=1,
        log_level="warning",
        access_log=False,
        # Keep-alive connections from callers must not hold up a SIGTERM for long.
        timeout_graceful_shutdown=3,
    )
    # An inherited socket (the local supervisor binds the port itself, so nothing takes it before we listen).
    sockets = None if args.fd is None else [socket.socket(fileno=args.fd)]
    uvicorn.Server(config).run(sockets=sockets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
