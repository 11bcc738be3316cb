"""A small supervisor for the local processes of local mode: start, health-check, stop, never leak.

Owns `ProcessGroup` (a context manager over the processes it started) and `start_search_service`, which
knows how to launch one version of one search-stack service behind the local mesh router.

Children never outlive the supervisor: each gets `PR_SET_PDEATHSIG=SIGTERM` (Linux) before exec, so even
a SIGKILLed parent takes them down. Note that Linux sends that signal when the *thread* that forked the
child exits, so start processes from a long-lived thread (normally the main thread). Each child runs in its
own session, so `stop` signals its whole process group, and logs stdout+stderr to `<log_dir>/<name>.log`.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from controller.adapters.parent_death import die_with_parent
from searchstack.faults import FAULT_ENV
from searchstack.settings import DOWNSTREAM_ENV_PREFIX
from searchstack.settings import ROLES as SEARCH_ROLES


class ProcessError(RuntimeError):
    """A supervised process failed to start, exited early or never became healthy."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it).

    Only *looked up*: until a process binds it, anything may take it, an outgoing connection's local port
    included (they come from the same range), and the process then fails with "address already in use". A
    process that can listen on an inherited socket gets a `bound_socket` instead.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket bound to a port the OS picked on `host`, not listening yet: the port is held from here on.

    Hand it to the child that serves on it (`ProcessGroup.start(..., listener=sock)`: the child listens on the
    inherited descriptor, the supervisor's copy is closed). Until the child listens, connections to the port are
    refused, as to a process still starting.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Proc:
    """One supervised process."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    health_url: str | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)
    stopped: bool = False  # reaped by stop(); its pid may belong to someone else from now on
    # The CPU seconds it had used when it ended, read by stop() between its exit and its reaping (None: stop() found
    # it reaped already, or /proc could not be read).
    cpu_at_exit: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.log_path, lines)

    def cpu_seconds(self) -> float | None:
        """CPU time the process has used so far (user + system, from /proc), or all it used once stop() ended it;
        None when it cannot be read (it was reaped before stop() could read it, or not Linux). A service that
        queues requests with little CPU used was starved of it; with much, it was busy."""
        if self.stopped:
            return self.cpu_at_exit
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        # After the command's closing parenthesis: state is field 3, utime and stime fields 14 and 15 (proc(5)).
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def last_error(self, lines: int = 5) -> str:
        """The last few log lines on one line: what to show in a status reason when the process died."""
        return " | ".join(line.strip() for line in self.log_tail(lines).splitlines() if line.strip())


def _exited(proc: Proc, timeout: float) -> bool:
    """Whether the process has exited, waiting up to `timeout` seconds; it is left unreaped (`WNOWAIT`), so its
    /proc entry stays readable until `Popen.wait()` reaps it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:  # reaped already, by a poll()
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file ("" when it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16_384))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class ProcessGroup:
    """The processes of one local run. Leaving the `with` block stops them all."""

    def __init__(self, log_dir: Path | str) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, Proc] = {}

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        health_url: str | None = None,
        *,
        inherit_env: bool = True,
        cwd: Path | str | None = None,
        listener: socket.socket | None = None,
    ) -> Proc:
        """Start `argv` as `name`; `env` is added to (or, with inherit_env=False, replaces) os.environ.

        `listener`, a `bound_socket` the child serves on, is inherited under its own descriptor number (name it
        in `argv`) and closed here once the child holds it, or when the start fails: the port stays the child's.
        """
        try:
            return self._start(name, argv, env, health_url, inherit_env, cwd,
                               () if listener is None else (listener.fileno(),))
        finally:
            if listener is not None:
                listener.close()

    def _start(self, name: str, argv: list[str], env: Mapping[str, str] | None, health_url: str | None,
               inherit_env: bool, cwd: Path | str | None, pass_fds: tuple[int, ...]) -> Proc:
        previous = self.procs.get(name)
        if previous is not None and previous.alive():
            raise ProcessError(f"{name}: already running as pid {previous.pid}")
        if previous is not None:
            self.stop(previous)  # reap it and close its log before the name is reused
        # The search stack's services also watch for the supervisor's death themselves (the kernel's signal
        # belongs to the thread that started them); a child that does not know the variable ignores it.
        full_env = {**(os.environ if inherit_env else {}), **(env or {}), "EXIT_WITH_PARENT_PID": str(os.getpid())}
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("ab")
        try:
            popen = subprocess.Popen(
                argv, env=full_env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM), pass_fds=pass_fds,
            )
        except OSError as exc:
            log.close()
            raise ProcessError(f"{name}: cannot start {argv[0]!r}: {exc}") from exc
        proc = Proc(name=name, argv=list(argv), popen=popen, log_path=log_path, health_url=health_url, _log=log)
        self.procs[name] = proc
        return proc

    def wait_healthy(self, proc: Proc, timeout: float = 20.0) -> None:
        """Poll `proc.health_url` until it answers 2xx; raise `ProcessError` with its log tail otherwise."""
        if proc.health_url is None:
            raise ProcessError(f"{proc.name}: no health URL to wait for")
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with httpx.Client(timeout=1.0, trust_env=False) as client:  # loopback: never via an env proxy
            while True:
                if not proc.alive():
                    raise ProcessError(
                        f"{proc.name} (pid {proc.pid}) exited with code {proc.popen.returncode} before it was "
                        f"healthy; last log lines:\n{proc.log_tail()}"
                    )
                try:
                    if client.get(proc.health_url).is_success:
                        return
                    last = "not ready"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}"
                if time.monotonic() >= deadline:
                    raise ProcessError(
                        f"{proc.name} (pid {proc.pid}) not healthy at {proc.health_url} after {timeout:.1f}s "
                        f"({last}); last log lines:\n{proc.log_tail()}"
                    )
                time.sleep(0.05)

    def wait_all_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            if proc.health_url is not None:
                self.wait_healthy(proc, max(0.1, deadline - time.monotonic()))

    def stop(self, proc: Proc, grace: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds, reap; returns the exit code."""
        if proc.stopped:
            return proc.popen.returncode
        if proc.popen.returncode is None:  # not reaped yet
            if not _exited(proc, 0.0):
                _signal_group(proc, signal.SIGTERM)
                if not _exited(proc, grace):
                    _signal_group(proc, signal.SIGKILL)
                    _exited(proc, math.inf)
            # Exited and not yet reaped: its /proc entry still holds all the CPU time it used.
            proc.cpu_at_exit = proc.cpu_seconds()
        proc.popen.wait()
        # The leader is gone; make sure nothing it forked lingers in its group. (The kernel does not reuse
        # a pid while a process group of that id has members, so this reaches only the leader's own group.)
        _signal_group(proc, signal.SIGKILL)
        proc.stopped = True
        if proc._log is not None:
            proc._log.close()
            proc._log = None
        return proc.popen.returncode

    def stop_all(self, grace: float = 5.0) -> None:
        """Stop every process: all get SIGTERM at once, then each is waited for (SIGKILL after `grace`)."""
        procs = list(self.procs.values())
        for proc in procs:
            if not proc.stopped and proc.alive():
                _signal_group(proc, signal.SIGTERM)
        for proc in procs:
            self.stop(proc, grace)


def _signal_group(proc: Proc, sig: signal.Signals) -> None:
    # start_new_session made the child a group leader: its pgid is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def search_service_env(
    role: str,
    version: str,
    upstream_url: str,
    faults: Mapping[str, float] | None = None,
    work_ms: float = 0.0,
    lane_header: str = "x-canary-lane",
    *,
    host_suffix: str = "",
    upstream_urls: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of one search-stack service process.

    Every downstream URL is `upstream_url` (the mesh router) unless `upstream_urls` names a service, and
    `<NAME>_HOST` is the service name plus `host_suffix` (e.g. ".default.svc.cluster.local"), the Host the
    router matches VirtualService hosts against. `faults` uses the keys of `PUT /admin/faults`.
    """
    if role not in SEARCH_ROLES:
        raise ValueError(f"unknown search role {role!r}; expected one of {', '.join(SEARCH_ROLES)}")
    env = {
        "SEARCHSTACK_VERSION": version,
        "SEARCHSTACK_WORKLOAD": f"{role}-{version}",
        "SEARCHSTACK_WORK_MS": repr(float(work_ms)),
        "LANE_HEADER": lane_header,
        # One BLAS thread: the services' matrix products are tiny, and spinning BLAS threads burn the cores.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    for service, prefix in DOWNSTREAM_ENV_PREFIX.items():
        env[f"{prefix}_URL"] = (upstream_urls or {}).get(service, upstream_url)
        env[f"{prefix}_HOST"] = service + host_suffix
    for key, value in (faults or {}).items():
        if key not in FAULT_ENV:
            raise ValueError(f"unknown fault {key!r}; expected one of {', '.join(FAULT_ENV)}")
        env[FAULT_ENV[key]] = repr(float(value))
    return env


def start_search_service(
    group: ProcessGroup,
    role: str,
    version: str,
    port: int | socket.socket,
    upstream_url: str,
    faults: Mapping[str, float] | None = None,
    work_ms: float = 0.0,
    lane_header: str = "x-canary-lane",
    *,
    host_suffix: str = "",
    upstream_urls: Mapping[str, str] | None = None,
    bind_host: str = "127.0.0.1",
    name: str | None = None,
) -> Proc:
    """Start `python -m searchstack` for one version of one service; call `group.wait_healthy` after.

    `port` is a port number the service binds on `bind_host`, or a `bound_socket` it serves on (handed over:
    closed here once the child holds it, so no other process can take the port in between).
    The process is named `<role>-<version>` unless `name` is given; its health URL is `/healthz`.
    """
    env = search_service_env(
        role, version, upstream_url, faults, work_ms, lane_header,
        host_suffix=host_suffix, upstream_urls=upstream_urls,
    )
    listener = port if isinstance(port, socket.socket) else None
    if listener is None:
        host, number, where = bind_host, port, ["--port", str(port), "--host", bind_host]
    else:
        (host, number), where = listener.getsockname()[:2], ["--fd", str(listener.fileno())]
    argv = [sys.executable, "-m", "searchstack", "--role", role, *where]
    return group.start(name or f"{role}-{version}", argv, env, health_url=f"http://{host}:{number}/healthz",
                       cwd=_project_root(), listener=listener)


def _project_root() -> Path:
    # So `-m searchstack` resolves even when the package is not installed (a source checkout).
    return Path(__file__).resolve().parents[3]
