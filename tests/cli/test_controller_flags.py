"""`canary controller` and `canary comparator` refuse what would stop or break them, with one line naming the flag
and exit 2: a health or serving address they cannot bind (no traceback, so a pod does not crash-loop on one), a
number out of range, a bad default from the environment (while `--help` works whatever the environment), and
`--business-metric-user-sums` that is not four templates. Every flag says what it is in `--help`."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from controller.cli import cluster, comparator
from controller.cli.cluster import _controller_parser, controller_main
from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(60)
# The controller without a cluster, a Prometheus or an election: what it does before it runs is tested here.
OFFLINE = ["--server", "http://127.0.0.1:9", "--prometheus-url", "http://127.0.0.1:9", "--no-business-metrics",
           "--no-leader-election"]
# ... and a flag that stops it at start should a test's bad input get through: a failing test, not a running one.
TRIPWIRE = ["--server", "http://127.0.0.1:9", "--no-business-metrics", "--no-leader-election", "--health-port", "0",
            "--prometheus-bearer-token-file", "/nonexistent/token"]
ENVIRONMENT = ("PROMETHEUS_SCRAPE_INTERVAL", "PROMETHEUS_URL", "LOG_FORMAT", "POD_NAMESPACE",
               "LEADER_ELECTION_LEASE", "BUSINESS_METRIC_USER_SUMS")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket listens on for the test's length."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


# --- the health endpoints' address -------------------------------------------------------------------------------

def test_a_health_port_in_use_is_one_line_naming_it_and_exit_2(
        busy_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = controller_main([*OFFLINE, "--health-host", "127.0.0.1", "--health-port", str(busy_port)])
    said = capsys.readouterr().err
    assert (code, said) == (2, f"canary controller: --health-port {busy_port}: address already in use\n")


def test_a_health_host_not_of_this_machine_or_unknown_is_named(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # 192.0.2.1 (TEST-NET-1) is no interface's address: the bind fails here, nothing goes out.
    assert controller_main([*OFFLINE, "--health-host", "192.0.2.1", "--health-port", "0"]) == 2
    assert capsys.readouterr().err == "canary controller: --health-host 192.0.2.1: cannot assign requested address\n"

    def unresolved(*args: object) -> None:  # as binding to a name the resolver does not know (no DNS asked here)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(cluster, "HealthServer", unresolved)
    assert controller_main([*OFFLINE, "--health-host", "256.1.1.1", "--health-port", "0"]) == 2
    assert capsys.readouterr().err == "canary controller: --health-host 256.1.1.1: name or service not known\n"


# --- numbers in range ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("flag", "bad", "good"), [
    ("--health-port", "99999", "65535"), ("--health-port", "-1", "0"),
    ("--workers", "0", "1"), ("--workers", "1000000", "256"),
    ("--resync", "-1", "1"), ("--resync", "0", "86400"), ("--resync", "inf", "30"),
    ("--canary-replicas", "-3", "1"), ("--canary-replicas", "0", "3"),
    ("--prometheus-scrape-interval", "-5", "0"), ("--prometheus-scrape-interval", "nan", "3600"),
    ("--log-format", "xml", "json"),
])
def test_a_controller_setting_that_would_stop_or_break_it_is_refused_by_the_parser(
        flag: str, bad: str, good: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        _controller_parser().parse_args([flag, bad])
    assert stopped.value.code == 2
    assert f"argument {flag}: '{bad}' is not " in capsys.readouterr().err
    assert getattr(_controller_parser().parse_args([flag, good]), flag[2:].replace("-", "_")) is not None


# --- defaults from the environment --------------------------------------------------------------------------------

BAD_ENVIRONMENT = [
    ("PROMETHEUS_SCRAPE_INTERVAL", "15s", "--prometheus-scrape-interval"),
    ("PROMETHEUS_URL", "prometheus:9090", "--prometheus-url"),
    ("LOG_FORMAT", "xml", "--log-format"),
    ("POD_NAMESPACE", "Stack_Canary", "--lease-namespace"),
    ("LEADER_ELECTION_LEASE", "-leader", "--lease-name"),
]


def test_help_works_whatever_the_environment(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    for variable, value, _ in BAD_ENVIRONMENT:
        monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stopped:
        controller_main(["--help"])
    assert stopped.value.code == 0
    assert "--prometheus-scrape-interval" in capsys.readouterr().out


@pytest.mark.parametrize(("variable", "value", "flag"), BAD_ENVIRONMENT)
def test_a_bad_default_from_the_environment_names_the_variable_and_its_flag_when_run(
        variable: str, value: str, flag: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stopped:
        controller_main(TRIPWIRE)
    assert stopped.value.code == 2
    assert f"argument {flag}: '{value}' (from ${variable}) is not " in capsys.readouterr().err


def test_good_defaults_from_the_environment_are_converted_as_the_flags_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_SCRAPE_INTERVAL", "30")
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("POD_NAMESPACE", "")  # set but empty: as if unset
    args = _controller_parser().parse_args([])
    assert (args.prometheus_scrape_interval, args.log_format, args.lease_namespace) == (
        30.0, "json", "stack-canary-system")
    assert _controller_parser().parse_args(["--prometheus-scrape-interval", "5"]).prometheus_scrape_interval == 5.0


@pytest.mark.parametrize(("argv", "variable"), [(["--business-metric-user-sums", "a;b"], None),
                                                ([], "BUSINESS_METRIC_USER_SUMS")])
def test_user_sums_that_are_not_four_templates_are_bad_input(
        argv: list[str], variable: str | None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    if variable:
        monkeypatch.setenv(variable, "a;b")
    code = controller_main([*TRIPWIRE, *argv])
    err = capsys.readouterr().err
    source = f" (from ${variable})" if variable else ""
    assert code == 2
    assert err.startswith(f"canary controller: --business-metric-user-sums 'a;b'{source}: four PromQL templates")


# --- the comparator -----------------------------------------------------------------------------------------------

def _comparator(*argv: str) -> subprocess.CompletedProcess[str]:
    """`canary comparator ...` as its own process (it would start its pairing threads in this one)."""
    return subprocess.run([sys.executable, "-m", "controller.cli", "comparator", "--entry", "http://127.0.0.1:9",
                           *argv], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=30, check=False)


def test_a_comparator_port_in_use_or_a_bad_fd_is_one_line_naming_it_and_exit_2(busy_port: int) -> None:
    for argv, says in [(["--listen", "127.0.0.1", "--port", str(busy_port)],
                        f"--port {busy_port}: address already in use"),
                       (["--fd", "999"], "--fd 999: bad file descriptor"),  # the child inherits 0, 1, 2 only
                       (["--listen", "192.0.2.1", "--port", "0"],
                        "--listen 192.0.2.1: cannot assign requested address")]:
        done = _comparator(*argv)
        assert (done.returncode, done.stderr) == (2, f"canary comparator: {says}\n")


@pytest.mark.parametrize(("flag", "bad"), [("--port", "99999"), ("--port", "-1"), ("--workers", "0"),
                                           ("--queue", "0"), ("--k", "0"), ("--fd", "-1"), ("--workers", "x"),
                                           ("--header", "X-Shadow-Version"), ("--header", "")])
def test_a_comparator_number_out_of_range_or_a_bad_header_is_refused_by_the_parser(
        flag: str, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        comparator._parser().parse_args(["--entry", "http://127.0.0.1:9", flag, bad])
    assert stopped.value.code == 2
    assert f"argument {flag}: '{bad}' is not " in capsys.readouterr().err


# --- help ---------------------------------------------------------------------------------------------------------

def _unexplained(parser: argparse.ArgumentParser) -> list[str]:
    return [a.dest for a in parser._actions if not a.help]


def test_every_flag_of_the_controller_and_the_comparator_says_what_it_is() -> None:
    assert _unexplained(_controller_parser()) == []
    assert _unexplained(comparator._parser()) == []
    assert "the namespace of the Lease" in " ".join(_controller_parser().format_help().split())
