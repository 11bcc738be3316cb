"""The local process supervisor: start, health-wait with useful errors, stop (SIGTERM then SIGKILL), and no
child outliving the supervisor, even a SIGKILLed one."""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from controller.adapters.local.processes import (
    ProcessError,
    ProcessGroup,
    bound_socket,
    free_port,
    search_service_env,
    start_search_service,
)
from tests.support.paths import REPO
from tests.support.pids import alive, gone, wait_until

PYTHON = sys.executable
SLEEPER = [PYTHON, "-c", "import time; time.sleep(60)"]
ROOT = REPO


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.integration
def test_a_search_service_serves_on_the_socket_held_for_it_and_its_port_is_never_free(tmp_path: Path) -> None:
    """A port only looked up free can be taken (an outgoing connection's local port, under load) before the
    service binds it, and the service then exits with "address already in use". The supervisor binds it
    instead and the service listens on the inherited socket: from the bind on, nothing else gets the port."""
    listener = bound_socket()
    port = listener.getsockname()[1]
    with socket.socket() as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", port))  # held already, before the service even starts
    with ProcessGroup(tmp_path) as group:
        proc = start_search_service(group, "keyword", "v1", listener, "http://127.0.0.1:9")
        assert listener.fileno() == -1  # handed over: the supervisor keeps no copy that would outlive the service
        group.wait_healthy(proc, timeout=30)
        answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5, trust_env=False)
        assert answer.status_code == 200
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        group.stop(proc)
    with socket.socket() as after:  # and it is free again once the service is gone
        after.bind(("127.0.0.1", port))


@pytest.mark.integration
def test_stop_terminates_and_reaps(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        proc = group.start("sleeper", SLEEPER)
        assert proc.alive()
        code = group.stop(proc, grace=5)
        assert code == -signal.SIGTERM
        assert not alive(proc.pid)


@pytest.mark.integration
def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        "time.sleep(60)"
    )
    with ProcessGroup(tmp_path) as group:
        proc = group.start("stubborn", [PYTHON, "-c", script])
        assert wait_until(lambda: "ready" in proc.log_tail(), 10)
        started = time.monotonic()
        assert group.stop(proc, grace=0.3) == -signal.SIGKILL
        assert time.monotonic() - started < 3
        assert not alive(proc.pid)


@pytest.mark.integration
def test_stop_is_idempotent_and_a_name_can_be_reused(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        proc = group.start("worker", SLEEPER)
        with pytest.raises(ProcessError, match="already running"):
            group.start("worker", SLEEPER)
        assert group.stop(proc) == group.stop(proc) == -signal.SIGTERM
        again = group.start("worker", SLEEPER)
        assert again.pid != proc.pid and again.alive()
    assert not alive(again.pid)


@pytest.mark.integration
def test_leaving_the_group_stops_every_process(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        pids = [group.start(f"sleeper-{i}", SLEEPER).pid for i in range(3)]
        assert all(alive(pid) for pid in pids)
    assert all(not alive(pid) for pid in pids)


@pytest.mark.integration
def test_wait_healthy_reports_an_early_exit_with_the_log_tail(tmp_path: Path) -> None:
    script = "import sys; print('config broken: boom-marker', file=sys.stderr); sys.exit(3)"
    with ProcessGroup(tmp_path) as group:
        proc = group.start("crasher", [PYTHON, "-c", script], health_url=f"http://127.0.0.1:{free_port()}/healthz")
        with pytest.raises(ProcessError, match=r"(?s)exited with code 3.*boom-marker"):
            group.wait_healthy(proc, timeout=10)


@pytest.mark.integration
def test_wait_healthy_times_out_with_a_clear_error(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        proc = group.start("silent", SLEEPER, health_url=f"http://127.0.0.1:{free_port()}/healthz")
        started = time.monotonic()
        with pytest.raises(ProcessError, match="not healthy"):
            group.wait_healthy(proc, timeout=0.5)
        assert time.monotonic() - started < 3


@pytest.mark.integration
def test_wait_healthy_returns_once_the_url_answers(tmp_path: Path) -> None:
    port = free_port()
    server = [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    with ProcessGroup(tmp_path / "logs") as group:
        proc = group.start("http", server, health_url=f"http://127.0.0.1:{port}/")
        group.wait_healthy(proc, timeout=10)
        assert proc.alive()


@pytest.mark.integration
def test_children_die_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    # A supervisor process starts a grandchild through ProcessGroup, prints its pid, and is then SIGKILLed:
    # it gets no chance to clean up, so only PR_SET_PDEATHSIG can take the grandchild down.
    supervisor = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from controller.adapters.local.processes import ProcessGroup
        group = ProcessGroup({str(tmp_path / "inner")!r})
        proc = group.start("grandchild", [sys.executable, "-c", "import time; time.sleep(60)"])
        print("grandchild", proc.pid, flush=True)
        time.sleep(60)
    """)
    with ProcessGroup(tmp_path) as group:
        outer = group.start("supervisor", [PYTHON, "-c", supervisor])
        assert wait_until(lambda: "grandchild" in outer.log_tail(), 15), outer.log_tail()
        grandchild = int(outer.log_tail().split("grandchild")[1].split()[0])
        assert alive(grandchild)
        os.kill(outer.pid, signal.SIGKILL)
        assert gone(grandchild, 5), "the grandchild outlived its SIGKILLed supervisor"


def test_search_service_env_points_every_downstream_at_the_router() -> None:
    env = search_service_env(
        "master-search", "v2", "http://127.0.0.1:7000", {"error_rate": 0.5, "latency_ms": 20}, 3.0, "x-lane",
        host_suffix=".default.svc.cluster.local",
    )
    assert env["ML_INFER_URL"] == env["TEXT_SEARCH_URL"] == "http://127.0.0.1:7000"
    assert env["ML_SEARCH_HOST"] == "ml-search.default.svc.cluster.local"
    assert env["SEARCHSTACK_WORKLOAD"] == "master-search-v2"
    assert env["FAULT_ERROR_RATE"] == "0.5" and env["FAULT_LATENCY_MS"] == "20.0"
    assert env["SEARCHSTACK_WORK_MS"] == "3.0" and env["LANE_HEADER"] == "x-lane"
    with pytest.raises(ValueError, match="unknown fault"):
        search_service_env("keyword", "v1", "http://r", {"explode": 1})
    with pytest.raises(ValueError, match="unknown search role"):
        search_service_env("frontend", "v1", "http://r")


def test_cpu_seconds_tell_a_busy_process_from_an_idle_one_and_are_kept_once_stopped(tmp_path: Path) -> None:
    """A process that computed for 0.5 s of CPU time has used at least that; one that only slept, almost none.
    Once stopped, each keeps what it used in all, read between its exit and its reaping (they had read None, so
    the demo's summary left out every version a release retired)."""
    busy = [PYTHON, "-c", "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"
                          "print('done', flush=True)\ntime.sleep(60)"]
    with ProcessGroup(tmp_path) as group:
        worker, sleeper = group.start("busy", busy), group.start("sleeper", SLEEPER)
        assert wait_until(lambda: "done" in worker.log_tail(), 30)
        used, idle = worker.cpu_seconds(), sleeper.cpu_seconds()
        assert used is not None and used >= 0.5
        assert idle is not None and idle < used
        group.stop(worker, grace=5)
        group.stop(sleeper, grace=5)
        final = worker.cpu_seconds()
        assert final is not None and used <= final < used + 1
        assert sleeper.cpu_seconds() is not None and sleeper.cpu_seconds() < used  # type: ignore[operator]
        assert not worker.alive() and worker.stopped
