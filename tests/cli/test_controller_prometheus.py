"""`canary controller`'s Prometheus credentials: a bearer token or basic auth, and a CA bundle, each named by a file
(flag or environment variable) whose value is read for each query and never put on the command line; a file
that cannot be read stops the controller at start with the flag's name."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis.observations import MetricsQuery
from controller.adapters.local.processes import free_port
from controller.adapters.prometheus.client import PrometheusConfig
from controller.adapters.prometheus.metrics import PrometheusSource
from controller.cli.cluster import (
    SystemClock,
    _controller_parser,
    _probe_prometheus,
    controller_main,
    prometheus_config,
)
from tests.support.fake_prometheus import FakePrometheus, fake_prometheus, ok, url_of

pytestmark = pytest.mark.timeout(60)

FLAGS = ("PROMETHEUS_BEARER_TOKEN_FILE", "PROMETHEUS_BASIC_AUTH_USER", "PROMETHEUS_BASIC_AUTH_PASSWORD_FILE",
         "PROMETHEUS_CA_FILE")


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    with fake_prometheus() as start:
        yield start([ok([])])


@pytest.fixture(autouse=True)
def _no_credentials_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FLAGS:
        monkeypatch.delenv(name, raising=False)


def _authorization_sent(server: FakePrometheus, argv: list[str]) -> str | None:
    args = _controller_parser().parse_args(["--prometheus-url", url_of(server), "--no-business-metrics", *argv])
    source = PrometheusSource.from_config(prometheus_config(args))
    try:
        source.window(MetricsQuery("search", ("master-search",), ("v1", "v2")), 0.0, 60.0)
    finally:
        source.close()
    sent = [headers.get("Authorization") for headers in server.seen]
    assert sent, "no query reached Prometheus"
    assert len(set(sent)) == 1, sent
    return sent[-1]


def test_no_credentials_by_default(prometheus: FakePrometheus) -> None:
    assert _authorization_sent(prometheus, []) is None


def test_the_bearer_token_file_from_the_flag_or_the_environment_is_sent(
        prometheus: FakePrometheus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("eyJhbGciOi.token-of-the-pod\n")
    assert _authorization_sent(prometheus, ["--prometheus-bearer-token-file", str(token)]) == \
        "Bearer eyJhbGciOi.token-of-the-pod"
    prometheus.seen.clear()
    token.write_text("rotated-token")  # read again for each query
    monkeypatch.setenv("PROMETHEUS_BEARER_TOKEN_FILE", str(token))
    assert _authorization_sent(prometheus, []) == "Bearer rotated-token"


def test_basic_auth_sends_the_user_and_the_password_of_its_file(
        prometheus: FakePrometheus, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("correct horse battery staple\n")
    sent = _authorization_sent(prometheus, ["--prometheus-basic-auth-user", "canary",
                                             "--prometheus-basic-auth-password-file", str(password)])
    assert sent == "Basic " + base64.b64encode(b"canary:correct horse battery staple").decode()


def test_the_ca_file_is_the_one_certificates_are_checked_against(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    args = _controller_parser().parse_args(["--prometheus-url", "https://prometheus.monitoring:9090",
                                            "--prometheus-ca-file", str(ca), "--no-business-metrics"])
    config = PrometheusConfig.from_dict(prometheus_config(args))
    assert (config.ca_file, config.tls_verify) == (str(ca), True)


@pytest.mark.parametrize(("argv", "says"), [
    (["--prometheus-bearer-token-file", "{missing}"], "--prometheus-bearer-token-file: cannot read {missing}"),
    (["--prometheus-ca-file", "{missing}"], "--prometheus-ca-file: cannot read {missing}"),
    (["--prometheus-basic-auth-user", "canary"], "--prometheus-basic-auth-password-file go together"),
    (["--prometheus-basic-auth-password-file", "{password}"], "--prometheus-basic-auth-user and"),
    (["--prometheus-basic-auth-user", "canary", "--prometheus-basic-auth-password-file", "{missing}"],
     "--prometheus-basic-auth-password-file: cannot read {missing}"),
    (["--prometheus-bearer-token-file", "{password}", "--prometheus-basic-auth-user", "canary",
      "--prometheus-basic-auth-password-file", "{password}"], "not both"),
])
def test_credentials_that_cannot_work_stop_the_controller_at_start_with_the_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    password = tmp_path / "password"
    password.write_text("s3cr3t-password")
    paths = {"missing": str(tmp_path / "missing"), "password": str(password)}
    argv = [a.format(**paths) for a in argv]
    code = controller_main(["--server", "http://127.0.0.1:9", "--prometheus-url", "http://127.0.0.1:9",
                            "--no-business-metrics", "--no-leader-election", "--health-port", "0", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert says.format(**paths) in err
    assert "s3cr3t" not in err


def _probed(url: str, caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    args = _controller_parser().parse_args(["--prometheus-url", url, "--no-business-metrics"])
    source = PrometheusSource.from_config(prometheus_config(args))
    caplog.set_level(logging.INFO, logger="canary.kubernetes")
    try:
        _probe_prometheus(source, url, SystemClock())
    finally:
        source.close()
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "canary.kubernetes"]


def test_the_start_up_says_whether_prometheus_answers(prometheus: FakePrometheus,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    url = url_of(prometheus)
    assert _probed(url, caplog) == [(logging.INFO, f"Prometheus at {url} answers")]
    caplog.clear()
    closed = f"http://127.0.0.1:{free_port()}"
    [(level, message)] = _probed(closed, caplog)
    assert level == logging.WARNING and message.startswith(f"Prometheus at {closed} does not answer: "), message
    assert "releases analysing hold their weight" in message
