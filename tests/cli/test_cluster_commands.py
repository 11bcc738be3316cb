"""`canary start`, `canary status` and `canary controller` (as a real process) against the API emulator."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from controller.adapters.kubernetes.client import RELEASES, KubeApi
from controller.cli.cluster import parse_images, start_main, status_main, version_of
from controller.core.status import Phase, ReleaseStatus
from tests.support.kmock_server import KINDS, RunningEmulator
from tests.support.kube_world import NAMESPACE, SERVICES, KubeWorld
from tests.support.paths import REPO

ROOT = REPO


def test_image_arguments_and_versions() -> None:
    assert parse_images(["ml-infer=reg.example/ml-infer:2.1"]) == {"ml-infer": "reg.example/ml-infer:2.1"}
    with pytest.raises(ValueError, match="SERVICE=REPO:TAG"):
        parse_images(["ml-infer"])
    assert version_of("reg.example:5000/ml-infer:2.1+build") == "2-1-build"  # a DNS label: it names Deployments
    assert version_of("ml-infer") == "latest"
    assert version_of("reg/x@sha256:0123456789abcdef") == "0123456789ab"


def test_start_creates_then_updates_and_status_shows_it(emulator: RunningEmulator,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    world = KubeWorld(emulator)
    world.seed_stack()
    conn = ["--server", emulator.url, "-n", NAMESPACE]
    assert start_main(["search-v2", "--image", "ml-infer=reg.example/ml-infer:2.0", "--steps", "10,50", *conn]) == 0
    obj = world.api.get(RELEASES, NAMESPACE, "search-v2")
    # The stable version and its images are read from the running Deployments.
    assert obj["spec"]["stable"] == {"version": "v1", "images": {s: f"registry.example/{s}:1.0" for s in SERVICES}}
    assert obj["spec"]["canary"]["version"] == "2-0"
    assert start_main(["search-v2", "--image", "ml-search=reg.example/ml-search:2.0", *conn]) == 0
    images = world.api.get(RELEASES, NAMESPACE, "search-v2")["spec"]["canary"]["images"]
    assert set(images) == {"ml-infer", "ml-search"}
    assert start_main(["bad", "--image", "ml-infer=x:1", "--steps", "50,10", *conn]) == 2
    assert "does not increase" in capsys.readouterr().err
    assert status_main(["search-v2", *conn]) == 0
    assert "search-v2: Pending" in capsys.readouterr().out
    assert status_main(["missing", *conn]) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def controller_process(emulator: RunningEmulator) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = _free_port()
    code = "import sys; from controller.cli.cluster import controller_main; sys.exit(controller_main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--server", emulator.url, "--prometheus-url", "http://127.0.0.1:9",
         "--prometheus-scrape-interval", "0", "--health-host", "127.0.0.1", "--health-port", str(port),
         "--identity", "pod-a", "--resync", "1", "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    yield proc, port
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    if proc.stderr:
        proc.stderr.close()


@pytest.mark.integration
@pytest.mark.slow
def test_controller_process_reconciles_serves_health_and_stops_on_sigterm(
        emulator: RunningEmulator, controller_process: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, port = controller_process
    world = KubeWorld(emulator)
    world.seed_stack()
    world.create_release(strategy={"canary": {"steps": [{"weight": 20}], "interval": "1s", "settle": "0s"}},
                         policies={"rollbackAfterErrors": 2}, drainTime="1s")
    api = KubeApi.for_url(emulator.url)
    deadline = time.monotonic() + 60
    phase = Phase.PENDING
    while time.monotonic() < deadline and not phase.final:
        time.sleep(0.2)
        phase = ReleaseStatus.from_storage(api.get(RELEASES, NAMESPACE, "search-v2").get("status")).phase
    # Prometheus is unreachable: `error` verdicts, then the configured rollback.
    assert phase is Phase.ROLLED_BACK
    # The status is persisted before the tick's actions and metrics: give the tick a moment to finish.
    expected = 'stack_canary_release_phase{namespace="search",phase="RolledBack",release="search-v2"} 1.0'
    text = ""
    deadline = time.monotonic() + 10
    while expected not in text and time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        time.sleep(0.1)
    assert expected in text
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    lease = emulator.objects("leases", "stack-canary-system")[0]
    assert lease["spec"]["holderIdentity"] == ""


def test_status_watch_follows_the_release_until_it_finishes(emulator: RunningEmulator,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    world = KubeWorld(emulator)
    obj = world.create_release()
    key = next(k for k in KINDS if k[2] == "stackreleases")
    done: list[int] = []
    follower = threading.Thread(target=lambda: done.append(status_main(
        ["search-v2", "-n", NAMESPACE, "--server", emulator.url, "--watch", "--max-seconds", "10"])))
    follower.start()
    out = _printed_until("Pending", capsys)  # the follower has shown the release as it is
    for phase in ("Progressing", "Succeeded"):
        current = emulator.store.get(key, NAMESPACE, "search-v2")
        emulator.store.update(key, NAMESPACE, "search-v2", {**current, "status": {"phase": phase}},
                              patch=False, status=True)
        out += _printed_until(phase, capsys)
    follower.join(timeout=15)
    assert done == [0] and obj["metadata"]["name"] == "search-v2"
    out += capsys.readouterr().out
    assert out.index("Pending") < out.index("Progressing") < out.index("Succeeded")


def _printed_until(word: str, capsys: pytest.CaptureFixture[str], within: float = 10.0) -> str:
    """What the command printed, read until `word` appears (or `within` seconds pass)."""
    out, deadline = "", time.monotonic() + within
    while word not in out and time.monotonic() < deadline:
        out += capsys.readouterr().out
        time.sleep(0.02)
    return out
