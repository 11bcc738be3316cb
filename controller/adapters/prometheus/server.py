"""A real Prometheus server for the local demo and the tests, started and stopped by us.

This module owns one Prometheus process: its generated config (scraping the given targets every second),
its temporary storage, a free loopback port, readiness (`/-/ready`, then a first successful scrape of
every target), and stopping it (SIGTERM, then SIGKILL) and deleting its files. The child is tied to our
process with PR_SET_PDEATHSIG, so it cannot outlive us even when we are killed.

Note: Prometheus applies new scrape targets in 5 s batches, so the first scrape lands about 5 s after start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from controller.adapters.parent_death import die_with_parent

__all__ = ["PrometheusProcess", "PrometheusStartError", "prometheus_binary"]

log = logging.getLogger(__name__)

_PORT_ATTEMPTS = 3


class PrometheusStartError(RuntimeError):
    """Prometheus did not start, become ready, or scrape its targets in time."""


def prometheus_binary() -> str | None:
    """The path of the `prometheus` executable on PATH, or None (then use the direct scrape)."""
    return shutil.which("prometheus")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get_json(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback http only
        return json.loads(response.read())


def scrape_config(targets: Sequence[str], metrics_path: str, interval_s: float,
                  jobs: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The Prometheus configuration, scraping every `interval_s`: the given scrape `jobs` (e.g. with relabelling
    rules), or one job scraping `targets` (host:port) at `metrics_path`."""
    interval = f"{int(interval_s * 1000)}ms"
    default = {"job_name": "stack-canary", "metrics_path": metrics_path, "static_configs": [{"targets": list(targets)}]}
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": "1m"},
        "scrape_configs": [dict(j) for j in jobs] if jobs else [default],
    }


def job_targets(jobs: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """Every static target (host:port) of these scrape jobs."""
    return tuple(t for j in jobs for c in j.get("static_configs", []) for t in c.get("targets", []))


class PrometheusProcess:
    """Prometheus scraping `targets` (or the given scrape `jobs`) on a free loopback port; a context manager.

    Start it from the thread that will stop it: PR_SET_PDEATHSIG fires when the *thread* that started
    the child exits.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        jobs: Sequence[Mapping[str, Any]] | None = None,
        metrics_path: str = "/metrics",
        scrape_interval_s: float = 1.0,
        binary: str | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.jobs = tuple(jobs or ())
        self.targets = job_targets(self.jobs) if self.jobs else tuple(targets)
        self.metrics_path = metrics_path
        self.scrape_interval_s = scrape_interval_s
        self.startup_timeout_s = startup_timeout_s
        self._binary = binary or prometheus_binary()
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path | None:
        return self._dir / "prometheus.log" if self._dir else None

    def __enter__(self) -> PrometheusProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self, wait_for_targets: bool = True) -> None:
        """Start, wait until ready and (by default) until every target has been scraped once."""
        if self._binary is None:
            raise PrometheusStartError("no prometheus binary on PATH (apt-get install prometheus)")
        self._dir = Path(tempfile.mkdtemp(prefix="stack-canary-prometheus-"))
        config = self._dir / "prometheus.yml"
        # JSON is YAML: no YAML writer needed for the config.
        config.write_text(json.dumps(scrape_config(self.targets, self.metrics_path, self.scrape_interval_s, self.jobs)))
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            self._launch(config, deadline)
            if wait_for_targets:
                self.wait_for_scrapes(deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise

    def _launch(self, config: Path, deadline: float) -> None:
        assert self._dir is not None and self._binary is not None
        for attempt in range(_PORT_ATTEMPTS):
            # The port may be taken between probing it and Prometheus binding it: try another one.
            self.port = _free_port()
            with open(self._dir / "prometheus.log", "ab") as log_file:
                self._process = subprocess.Popen(
                    [
                        self._binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={self._dir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--log.level=warn",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent(signal.SIGKILL),  # runs between fork and exec: only a prctl call
                )
            if self._wait_ready(deadline):
                log.info("prometheus pid %s ready at %s", self._process.pid, self.url)
                return
            self._terminate()
            if attempt + 1 < _PORT_ATTEMPTS and time.monotonic() < deadline:
                continue
        raise PrometheusStartError(f"prometheus did not become ready; log: {self._log_tail()}")

    def _wait_ready(self, deadline: float) -> bool:
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(  # noqa: S310
                f"{self.url}/-/ready", timeout=1
            ) as response:
                if response.status == 200:
                    return True
            time.sleep(0.05)
        return False

    def wait_for_scrapes(self, timeout_s: float) -> None:
        """Block until every target's last scrape succeeded (bounded by `timeout_s`)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                last = _get_json(f"{self.url}/api/v1/targets?state=active", timeout=1)
                active = last["data"]["activeTargets"]
                up = {t["labels"]["instance"] for t in active if t.get("health") == "up"}
                if set(self.targets) <= up:
                    return
            time.sleep(0.1)
        raise PrometheusStartError(f"targets {list(self.targets)} not scraped in time; last status: {last}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; then delete the storage. Idempotent."""
        self._terminate()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def _log_tail(self) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        return path.read_text(errors="replace")[-2000:]


def main() -> None:  # pragma: no cover - manual use: python -m controller.adapters.prometheus.server HOST:PORT
    import sys

    with PrometheusProcess(sys.argv[1:]) as prometheus:
        print(f"prometheus at {prometheus.url} (pid {prometheus.pid}); Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":  # pragma: no cover
    main()
