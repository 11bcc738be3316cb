"""`canary start`, `canary status` and `canary controller` (as a real process) against the API emulator."""

from __future__ import annotations

import os
import re
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
from controller.cli.cluster import (
    OPERATE_HELP,
    _get_parser,
    _history_parser,
    _list_parser,
    _operate_parser,
    _start_parser,
    get_main,
    history_main,
    new_version,
    operate_main,
    parse_images,
    start_main,
    status_main,
    version_of,
)
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


@pytest.mark.timeout(30)
def test_a_service_given_twice_is_refused_before_anything_is_asked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="ml-search is given twice"):
        parse_images(["ml-search=r:v2", "ml-search=r:v3"])
    # Refused before the API is asked: nothing listens on port 9.
    twice = ["--image", "ml-search=r:v2", "--image", "ml-search=r:v3"]
    assert start_main(["r", *twice, "--server", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err == ("canary start: --image: ml-search is given twice (r:v2 and r:v3); give each "
                                       "service once\n")


@pytest.mark.timeout(30)
def test_the_new_version_is_the_first_images_tag_and_an_image_that_names_none_needs_version() -> None:
    assert new_version(None, {"ml-infer": "reg:5000/ml-infer:2.1", "ml-search": "reg/ml-search:3.0"}, SERVICES) == "2-1"
    # REPO:TAG@DIGEST: the tag names the version, not the digest
    assert new_version(None, {"ml-search": "reg/ml-search:2.1@sha256:abcd"}, SERVICES) == "2-1"
    for image, why in [("reg:5000/ml-search", "has no tag (latest)"), ("r:latest", "is tagged latest"),
                       ("r@sha256:abcd", "is named by its digest only")]:
        said = f"--image ml-search={image} {why}, which names no version: tag the image (REPO:TAG) or give --version"
        with pytest.raises(ValueError, match=re.escape(said)):
            new_version(None, {"ml-search": image}, SERVICES)
        assert new_version("v2", {"ml-search": image}, SERVICES) == "v2"


@pytest.mark.timeout(60)
def test_start_refuses_an_untagged_image_without_version_and_takes_it_with_one(
        emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    world = KubeWorld(emulator)
    world.seed_stack()
    conn = ["--server", emulator.url, "-n", NAMESPACE]
    assert start_main(["search-v2", "--image", "ml-search=reg.example/ml-search", *conn]) == 2
    assert "ml-search=reg.example/ml-search has no tag (latest)" in capsys.readouterr().err
    assert world.api.get_or_none(RELEASES, NAMESPACE, "search-v2") is None
    assert start_main(["search-v2", "--image", "ml-search=reg.example/ml-search", "--version", "v2", *conn]) == 0
    assert world.api.get(RELEASES, NAMESPACE, "search-v2")["spec"]["canary"]["version"] == "v2"


@pytest.mark.timeout(30)
def test_steps_that_are_not_whole_numbers_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        _start_parser().parse_args(["r", "--image", "ml-search=r:v2", "--steps", "10,half"])
    assert stopped.value.code == 2
    assert "argument --steps: '10,half' is not whole-number weights" in capsys.readouterr().err
    assert _start_parser().parse_args(["r", "--image", "a=r:1", "--steps", "10,50"]).steps == [10, 50]


@pytest.mark.timeout(30)
def test_the_commands_on_one_release_document_workdir_and_never_ignore_it(capsys: pytest.CaptureFixture[str]) -> None:
    parsers = [_get_parser("canary get"), _get_parser("canary status"), _history_parser(),
               *(_operate_parser(command) for command in OPERATE_HELP)]
    for parser in [*parsers, _list_parser(), _start_parser()]:
        assert [a.dest for a in parser._actions if not a.help] == [], parser.prog
    for parser in parsers:
        text = " ".join(parser.format_help().split())
        assert f"{parser.prog} --workdir DIR" in text and "--workdir DIR instead of RELEASE" in text, parser.prog
    # `canary CMD --workdir DIR` goes to the local mode (controller.cli.main); here it is refused, not ignored.
    for run in (lambda: operate_main("pause", ["r", "--workdir", "w"]), lambda: get_main(["r", "--workdir", "w"]),
                lambda: history_main(["r", "--workdir", "w"])):
        with pytest.raises(SystemExit) as stopped:
            run()
        assert stopped.value.code == 2
        assert "--workdir w: a local release" in capsys.readouterr().err


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
