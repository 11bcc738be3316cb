"""bench/router.py's CPU accounting: a router's CPU is its own and that of every process below it (Envoy runs
under its server), so a busy grandchild must count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", ["envoy-bare", "envoy-uring"])
def test_the_bare_envoy_proxies_to_the_upstream_and_counts_every_answer(name: str) -> None:
    """`--routers envoy-bare`: Envoy with the least configuration that proxies, beside the local mesh. Its count
    (the listener's own counter) must be the answers it gave, as every router's is checked against hey's.
    `envoy-uring` is the same Envoy with io_uring as its socket interface, in its configuration."""
    import httpx

    from bench.router import _start_router, bare_envoy_total, start, stop

    upstream, up = start([sys.executable, "bench/router.py", "--serve-upstream"], "upstream ready")
    try:
        router, info = _start_router(name, Path("."), Path("."), f"127.0.0.1:{up['port']}")
        try:
            with httpx.Client(timeout=10) as client:
                answers = [client.get(f"http://{info['proxy']}/search") for _ in range(25)]
            assert [a.status_code for a in answers] == [200] * 25
            assert answers[0].json() == {"service": "bench", "ok": True}  # the upstream's body, through Envoy
            assert bare_envoy_total(f"http://{info['admin']}") == 25
            bootstrap = httpx.get(f"http://{info['admin']}/config_dump", timeout=10).json()["configs"][0]
            assert ("io_uring_options" in json.dumps(bootstrap)) == (name == "envoy-uring")
        finally:
            stop(router)
        assert router.returncode == 0
    finally:
        stop(upstream)


def test_strace_summary_is_read_per_answered_request() -> None:
    """`--syscalls`: strace -c's table, with and without an errors column, per answered request; the total row
    and the headers are not calls."""
    from bench.router import _strace_counts

    summary = (
        "% time     seconds  usecs/call     calls    errors syscall\n"
        "------ ----------- ----------- --------- --------- ----------------\n"
        " 70.21    9.879387        1246      7925           epoll_wait\n"
        "  5.76    0.809981          10     80007     40000 readv\n"
        "  4.51    0.635125          15     40000           sendto\n"
        "------ ----------- ----------- --------- --------- ----------------\n"
        "100.00   14.070490         109    128544     40058 total\n"
    )
    counts = _strace_counts(summary, 20000)
    assert list(counts) == ["readv", "sendto", "epoll_wait"]  # most calls first
    assert counts["readv"] == {"calls": 80007 / 20000, "errors": 2.0}
    assert counts["sendto"] == {"calls": 2.0, "errors": 0.0}


def test_the_wait_for_strace_to_attach_ends_when_strace_stops_or_the_deadline_passes() -> None:
    """`--syscalls` waits until every thread of the router has strace as its tracer (/proc's TracerPid); a tracer
    that never attaches, or that exits, ends the wait with False instead of leaving the benchmark waiting."""
    import time

    from bench.router import _wait_traced

    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as watched, \
            subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as idle:
        try:
            start = time.monotonic()
            assert not _wait_traced(idle, {watched.pid}, time.monotonic() + 0.5)  # never attaches
            assert 0.5 <= time.monotonic() - start < 10
            assert idle.stdin is not None
            idle.stdin.close()
            idle.wait(10)
            start = time.monotonic()
            assert not _wait_traced(idle, {watched.pid}, time.monotonic() + 30)  # the tracer is gone
            assert time.monotonic() - start < 10
            gone = idle.pid  # reaped: no threads left to wait for
            with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                  stdin=subprocess.PIPE) as tracer:
                assert _wait_traced(tracer, {gone}, time.monotonic() + 30)
                assert tracer.stdin is not None
                tracer.stdin.close()
        finally:
            assert watched.stdin is not None
            watched.stdin.close()
