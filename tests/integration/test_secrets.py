"""Secrets never reach logs, events, status or reports.

Three secrets are in play in every test: a webhook HMAC key (a `secretFile`, used by the release hooks and
the JSON webhook notifier), a Slack incoming-webhook URL (its token is in the path; read from a file), and
a token in the query of a hook's URL (URLs are treated as credentials: only scheme, host and port may be
shown). Every receiver answers 500, and the canary is bad, so the release rolls back and every delivery
fails and is logged: the paths where a careless message would carry a secret are all taken. Then the
secrets are looked for in everything an operator or a third party can see:

- through the reconciler on a fake clock, with text and with JSON logs: captured logs, notices, the
  persisted status, the HTML report, the bodies sent to the receivers;
- through the Kubernetes controller against the API emulator: Kubernetes Events, the StackRelease's
  status, logs, the report built from the cluster object;
- through `canary --log-format json run --local` (the real local platform): stderr and stdout, the run's
  summary JSON, the state files and the HTML report.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.http.hooks import HttpHooks
from controller.adapters.http.notifiers import JsonWebhookNotifier, MultiNotifier, SlackWebhookNotifier
from controller.adapters.http.signing import SIGNATURE_HEADER, Secret, verify
from controller.adapters.http.webhook import RetryPolicy, WebhookClient
from controller.adapters.kubernetes.client import RELEASES
from controller.adapters.kubernetes.running import Controller, ControllerConfig
from controller.adapters.kubernetes.secrets import KubeSecrets
from controller.core.spec.hooks import HookRules, HookSpec
from controller.core.spec.release import parse_release
from controller.core.status import Phase, ReleaseStatus
from controller.logs import configure_logging
from controller.present.report import render_report
from controller.reconciler import Ports, Reconciler
from tests.support.fakes import FakeClock, FakeMetrics, FakeRouter, FakeWorkloads, ListNotifier, VersionModel
from tests.support.kmock_server import RunningEmulator
from tests.support.kube_world import KubeWorld, release_body
from tests.support.webhook_receiver import Receiver

HMAC_KEY = "hmac-K3y-never-in-logs-5d1e9a"
SLACK_TOKEN = "xoxSlackT0kenInThePath77"
HOOK_TOKEN = "h00kT0kenInTheQuery31"
SECRETS = (HMAC_KEY, SLACK_TOKEN, HOOK_TOKEN)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(statuses=[500])  # every delivery fails: the failures get logged
    yield r
    r.stop()


@pytest.fixture
def files(tmp_path: Path, receiver: Receiver) -> dict[str, Path]:
    hmac_file = tmp_path / "hmac-key"
    hmac_file.write_text(HMAC_KEY + "\n")
    slack_file = tmp_path / "slack-url"
    slack_file.write_text(f"{receiver.url}/services/T000/B000/{SLACK_TOKEN}\n")
    return {"hmac": hmac_file, "slack": slack_file}


def hooks(receiver: Receiver, hmac_file: Path | None) -> list[dict[str, Any]]:
    """The release's hooks, keyed by a file (local runs) or, without one, by a Kubernetes Secret (cluster)."""
    url = f"{receiver.url}/hooks/release?token={HOOK_TOKEN}"
    key = {"secretFile": str(hmac_file)} if hmac_file else {"secretRef": {"name": "hook-hmac", "key": "hmac"}}
    common = {"url": url, **key, "retries": 1, "timeout": "2s"}
    return [{"name": "pre", "kind": "preRollout", "failurePolicy": "ignore", **common},
            {"name": "told-rollback", "kind": "onRollback", **common}]


def client() -> WebhookClient:
    return WebhookClient(timeout=2.0, sleep=lambda seconds: None, retry=RetryPolicy(attempts=2))


def notifiers(receiver: Receiver, files: dict[str, Path]) -> list[JsonWebhookNotifier | SlackWebhookNotifier]:
    return [JsonWebhookNotifier(f"{receiver.url}/notify", secret_file=files["hmac"], client=client()),
            SlackWebhookNotifier(url_file=files["slack"], client=client())]


def assert_no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} found in {where}"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "stack-canary"]:
        root.removeHandler(handler)


def local_release(receiver: Receiver, hmac_file: Path) -> dict[str, Any]:
    return {
        "apiVersion": "stackcanary.dev/v1alpha1", "kind": "StackRelease",
        "metadata": {"name": "secretive-v2", "namespace": "local", "generation": 1},
        "spec": {
            "stack": {"entry": "master-search",
                      "services": ["master-search", "ml-infer", "ml-search", "keyword", "text-search"]},
            "stable": {"version": "v1"},
            "canary": {"version": "v2", "services": ["ml-search", "keyword"]},
            "strategy": {"canary": {"steps": [{"weight": 25}, {"weight": 50}], "interval": "2s", "settle": "1s",
                                    "minCanaryRequests": 10, "stepDeadline": "30s"}},
            "analysis": {"judge": "sequential", "alpha": 0.05, "minCanaryRequests": 10},
            "policies": {"onInconclusive": "hold", "rollbackAfterErrors": 3},
            "progressDeadline": "30s",
            "drainTime": "1s",
            "hooks": hooks(receiver, hmac_file),
        },
    }


def check_deliveries(receiver: Receiver) -> None:
    """The secrets really were in play: deliveries were signed with the key and went to the Slack URL."""
    key = Secret(HMAC_KEY.encode())
    signed = [r for r in receiver.requests if SIGNATURE_HEADER in r.headers]
    assert signed and all(verify(key, r.body, r.headers, now=float(r.headers["X-Stack-Canary-Timestamp"]))
                          for r in signed)
    assert any(SLACK_TOKEN in r.path for r in receiver.requests)
    assert any(HOOK_TOKEN in r.path for r in receiver.requests)
    for r in receiver.requests:  # nor do the bodies sent to third parties carry them
        assert_no_secret(f"a body sent to {r.path.split('?')[0]}", r.body.decode())


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_failing_release_leaks_no_secret_through_the_reconciler(
        fmt: str, receiver: Receiver, files: dict[str, Path], log_stream: io.StringIO, tmp_path: Path) -> None:
    configure_logging("DEBUG", json=fmt == "json", stream=log_stream)
    release = local_release(receiver, files["hmac"])
    release["metadata"]["namespace"] = "search"
    clock = FakeClock()
    router = FakeRouter()
    notices = ListNotifier()
    fanout = MultiNotifier([notices, *notifiers(receiver, files)])
    ports = Ports(FakeWorkloads(), router, FakeMetrics(router, rps=80, models={"v2": VersionModel(error_rate=0.3)}),
                  clock, fanout, hooks=HttpHooks(client(), HookRules.local([str(tmp_path)])))
    reconciler = Reconciler(ports)
    saved: list[ReleaseStatus] = []
    status = ReleaseStatus()
    for _ in range(200):
        result = reconciler.tick(release, status, saved.append)
        status = result.status
        if result.requeue_after is None:
            break
        clock.sleep(result.requeue_after)
    assert status.phase is Phase.ROLLED_BACK, status.message
    assert status.hooks["told-rollback"]["reason"] == "failed but ignored: server error (5xx)"
    logs = log_stream.getvalue()
    assert "failed after 2 tries" in logs  # the failures were logged (with the receiver's host and port)
    if fmt == "json":
        assert all(json.loads(line)["message"] for line in logs.splitlines())
    check_deliveries(receiver)
    stored = json.dumps([s.for_storage() for s in saved])
    assert "server error (5xx)" in stored and "HTTP 500" not in stored  # the failures, sanitised, are in the status...
    for where, text in (("logs", logs), ("status", stored), ("notices", repr(notices.notices)),
                        ("report", render_report(release, status.for_storage())),
                        ("reprs", repr(fanout.notifiers) + repr(parse_release(release).hooks))):
        assert_no_secret(where, text)  # ...without a secret


def test_kubernetes_events_and_status_carry_no_secret(
        emulator: RunningEmulator, receiver: Receiver, files: dict[str, Path], log_stream: io.StringIO) -> None:
    configure_logging("DEBUG", json=True, stream=log_stream)
    world = KubeWorld(emulator, models={"v2": VersionModel(error_rate=0.3)})
    world.seed_stack()
    body = release_body(hooks=hooks(receiver, None))
    namespace = body["metadata"]["namespace"]
    world.api.core.create_namespaced_secret(namespace, {  # type: ignore[arg-type]
        "metadata": {"name": "hook-hmac"}, "data": {"hmac": base64.b64encode(HMAC_KEY.encode()).decode()}})
    world.api.create(RELEASES, namespace, body)
    # The cluster's rules; the admin allows the receiver's host (an IP literal is refused by default).
    cluster_hooks = HttpHooks(client(), HookRules.cluster(["127.0.0.1"]), KubeSecrets(world.api))
    controller = Controller(world.api, ControllerConfig(identity="replica-a"), world.metrics, world.clock,
                            notifier=MultiNotifier(notifiers(receiver, files)), hooks=cluster_hooks)
    status = world.drive(controller)
    assert status.phase is Phase.ROLLED_BACK, status.message
    events = world.objects("events")
    assert {"AnalysisFailed", "RolledBack"} <= {e["reason"] for e in events}
    obj = world.api.get(RELEASES, body["metadata"]["namespace"], body["metadata"]["name"])
    assert "told-rollback" in obj["status"]["hooks"]
    check_deliveries(receiver)
    logs = log_stream.getvalue()
    assert "failed after 2 tries" in logs
    for where, text in (("events", json.dumps(events)), ("status", json.dumps(obj["status"])), ("logs", logs),
                        ("report", render_report(obj, obj["status"]))):
        assert_no_secret(where, text)


@pytest.mark.realtime
@pytest.mark.integration
@pytest.mark.slow
def test_a_local_run_with_json_logs_leaks_no_secret(receiver: Receiver, files: dict[str, Path],
                                                    tmp_path: Path) -> None:
    spec_file = tmp_path / "release.yaml"
    spec_file.write_text(yaml.safe_dump(local_release(receiver, files["hmac"])))
    work, summary = tmp_path / "work", tmp_path / "summary.json"
    argv = [sys.executable, "-m", "controller.cli.main", "--log-format", "json", "--log-level", "debug", "run",
            "-f", str(spec_file), "--local", "--rps", "30", "--metrics", "direct", "--workdir", str(work),
            "--summary", str(summary), "--hook-secret-dir", str(tmp_path),
            "--fault", "ml-search:error_rate=0.5", "--max-seconds", "90"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(summary.read_text())
    assert result["outcome"] == "rolled_back", result["message"]
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any("webhook" in line["message"] and "failed" in line["message"] for line in lines)
    assert any(HOOK_TOKEN in r.path for r in receiver.requests)  # the hooks really were called
    for where, text in (("stderr", done.stderr), ("stdout", done.stdout), ("summary", summary.read_text()),
                        ("status", (work / "state" / "status.json").read_text()),
                        ("report", Path(result["report"]).read_text())):
        assert_no_secret(where, text)


def test_http_library_lines_and_tracebacks_show_no_url_path(receiver: Receiver, log_stream: io.StringIO) -> None:
    """Regression: httpx logs `HTTP Request: POST <whole url>` at INFO, which put a hook URL's token in the
    controller's log at --log-level info; the redaction filter now cuts URLs in such lines to scheme://host:port."""
    import httpx

    configure_logging("INFO", json=False, stream=log_stream)
    url = f"{receiver.url}/hooks/x?token={HOOK_TOKEN}"
    httpx.post(url, content=b"{}")
    try:
        raise RuntimeError(f"could not reach {url}")
    except RuntimeError:
        logging.getLogger("controller.somewhere").exception("delivery failed")
    logs = log_stream.getvalue()
    host = receiver.url.split("//", 1)[1].split("/", 1)[0]
    assert f"HTTP Request: POST http://{host}/…" in logs  # the line is there, cut down
    assert f"could not reach http://{host}/…" in logs  # and so is the traceback's message
    assert_no_secret("logs", logs)


class DictSecrets:
    """The cluster's `Secrets` port over a dict (namespace, name, key) -> value; records what was read."""

    def __init__(self, values: dict[tuple[str, str, str], bytes]) -> None:
        self.values, self.reads = values, []  # type: list[tuple[str, str, str]]

    def read(self, namespace: str, name: str, key: str) -> bytes:
        self.reads.append((namespace, name, key))
        return self.values[(namespace, name, key)]


def test_no_byte_of_a_secret_reaches_a_receiver_the_policy_does_not_allow(
        receiver: Receiver, tmp_path: Path) -> None:
    """The cluster's rules: a hook to a host outside the policy, or naming a file (the service-account
    token), is refused before anything is read or sent; the receiver gets nothing, the status says why."""
    token = tmp_path / "token"
    token.write_text(HMAC_KEY)
    secrets = DictSecrets({("search", "hook-hmac", "key"): HMAC_KEY.encode()})
    cluster = HttpHooks(client(), HookRules.cluster(), secrets)  # 127.0.0.1 is not an in-cluster Service
    url = f"{receiver.url}/hooks/release?token={HOOK_TOKEN}"
    for extra in ({"secretRef": {"name": "hook-hmac", "key": "key"}}, {"secretFile": str(token)}):
        release = local_release(receiver, token)
        release["metadata"]["namespace"] = "search"
        release["spec"]["hooks"] = [{"name": "pre", "kind": "preRollout", "url": url, **extra}]
        workloads, router, notices = FakeWorkloads(), FakeRouter(), ListNotifier()
        ports = Ports(workloads, router, FakeMetrics(router, rps=80), FakeClock(), notices, hooks=cluster)
        status = Reconciler(ports).tick(release, ReleaseStatus(), lambda s: None).status
        # Refused when the spec is read, as a spec that does not parse: nothing deployed, routed or called.
        assert status.phase is Phase.FAILED and not workloads.calls and router.writes == 0
        assert status.message.startswith("invalid spec: spec.hooks[0]: hook pre: "), status.message
        assert ("url: host 127.0.0.1" in status.message) if "secretRef" in extra else (
            "secretFile: the cluster controller reads no file" in status.message)
        assert status.condition("SpecValid").reason == "InvalidSpec"
        assert notices.reasons() == ["InvalidSpec"]
        assert_no_secret("status", json.dumps(status.for_storage()))
    assert receiver.requests == [] and secrets.reads == []
    # The same hooks inside the admin's allow-list are called and signed: the refusal was the policy's.
    allowed = HttpHooks(client(), HookRules.cluster(["127.0.0.1"]), secrets)
    hook = HookSpec.from_dict({"name": "pre", "kind": "preRollout", "url": url, "retries": 0,
                               "secretRef": {"name": "hook-hmac", "key": "key"}})
    allowed.run(hook, {"namespace": "search"})
    assert len(receiver.requests) == 1 and verify(Secret(HMAC_KEY.encode()), receiver.requests[0].body,
                                                  receiver.requests[0].headers, now=time.time())
