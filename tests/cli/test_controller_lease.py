"""`canary controller`'s Lease name: `--lease-name`, defaulting to `$LEADER_ELECTION_LEASE` (which the shipped
Deployment sets), else `stack-canary-controller`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from controller.cli.cluster import _controller_parser
from tests.support.kmock_server import RunningEmulator
from tests.support.paths import REPO

NS = "stack-canary-system"


def test_lease_name_comes_from_the_flag_else_the_environment_else_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADER_ELECTION_LEASE", raising=False)
    assert _controller_parser().parse_args([]).lease_name == "stack-canary-controller"
    monkeypatch.setenv("LEADER_ELECTION_LEASE", "")  # set but empty: as if unset
    assert _controller_parser().parse_args([]).lease_name == "stack-canary-controller"
    monkeypatch.setenv("LEADER_ELECTION_LEASE", "search-leader")
    assert _controller_parser().parse_args([]).lease_name == "search-leader"
    assert _controller_parser().parse_args(["--lease-name", "other"]).lease_name == "other"


@pytest.mark.integration
@pytest.mark.slow
def test_controller_process_elects_itself_on_the_lease_its_environment_names(emulator: RunningEmulator) -> None:
    code = "import sys; from controller.cli.cluster import controller_main; sys.exit(controller_main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "LEADER_ELECTION_LEASE": "search-leader", "POD_NAMESPACE": NS}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--server", emulator.url, "--prometheus-url", "http://127.0.0.1:9",
         "--prometheus-scrape-interval", "0", "--health-host", "127.0.0.1", "--health-port", "0",
         "--identity", "pod-a", "--no-business-metrics", "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not emulator.objects("leases", NS) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        leases = {lease["metadata"]["name"]: lease for lease in emulator.objects("leases", NS)}
        assert set(leases) == {"search-leader"}, set(leases)
        assert leases["search-leader"]["spec"]["holderIdentity"] == "pod-a"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_windows_are_read_behind_the_scrapes_and_open_no_sooner_than_that_after_a_weight_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """By default the controller reads each window edge 2 x 15 s + 5 s behind on a scrape boundary (the Istio
    addon scrapes every 15 s), and so opens a window no sooner than 35 + 15 s after a weight change."""
    from controller.adapters.prometheus.client import PrometheusConfig
    from controller.cli.cluster import prometheus_config

    monkeypatch.delenv("PROMETHEUS_SCRAPE_INTERVAL", raising=False)
    config = PrometheusConfig.from_dict(prometheus_config(_controller_parser().parse_args([])))
    assert (config.scrape_interval_seconds, config.lag, config.settle_delay) == (15.0, 35.0, 50.0)
    monkeypatch.setenv("PROMETHEUS_SCRAPE_INTERVAL", "30")
    assert PrometheusConfig.from_dict(prometheus_config(_controller_parser().parse_args([]))).lag == 65.0
    off = _controller_parser().parse_args(["--prometheus-scrape-interval", "0"])
    assert PrometheusConfig.from_dict(prometheus_config(off)).settle_delay == 0.0
