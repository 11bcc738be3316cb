"""Release hooks: spec parsing with precise messages, each kind's rule against a loopback receiver, and the
runner's rules (URL policy, where secrets may come from) enforced before anything is read or sent."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.adapters.http.hooks import HttpHooks
from controller.adapters.http.signing import Secret, verify
from controller.adapters.http.webhook import RetryPolicy, UrlPolicy, WebhookClient
from controller.adapters.local.secrets import DirectorySecrets
from controller.core.machine import hooks as hook_points
from controller.core.spec.hooks import (
    FailurePolicy,
    HookKind,
    HookRules,
    HookSpec,
    InvalidHook,
    SecretRef,
    hooks_from_list,
)
from controller.core.spec.release import parse_release
from controller.core.status import Phase, ReleaseStatus
from controller.ports import SecretUnavailable
from tests.support.webhook_receiver import Receiver, SilentReceiver

PAYLOAD = {"release": "search-v2", "namespace": "shop", "phase": "Progressing", "canaryVersion": "v2"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def _hooks(rules: HookRules | None = None, secrets: DirectorySecrets | None = None) -> HttpHooks:
    return HttpHooks(WebhookClient(timeout=2.0, sleep=lambda s: None, retry=RetryPolicy(backoff=0.01)), rules, secrets)


def _local(tmp_path: Path) -> HttpHooks:
    """A local run whose hooks may read secrets under `tmp_path` (its workdir) only."""
    return _hooks(HookRules.local([str(tmp_path)]), DirectorySecrets([tmp_path]))


def _hook(kind: str, url: str, **extra: object) -> HookSpec:
    return HookSpec.from_dict({"kind": kind, "url": url, **extra})


# --- parsing -------------------------------------------------------------------------------------

def test_defaults_per_kind() -> None:
    pre = _hook("preRollout", "http://gate.local/check")
    assert (pre.name, pre.kind, pre.timeout, pre.retries, pre.failure_policy) == (
        "preRollout", HookKind.PRE_ROLLOUT, 10.0, 2, FailurePolicy.FAIL)
    assert _hook("postRollout", "http://x/").failure_policy is FailurePolicy.IGNORE
    assert _hook("loadTest", "http://x/").retries == 0
    gate = _hook("confirmPromotion", "http://x/")
    assert (gate.retries, gate.failure_policy) == (0, FailurePolicy.FAIL)


def test_full_spec() -> None:
    hook = HookSpec.from_dict({"name": "smoke", "kind": "preRollout", "url": "https://ci.example.com/smoke",
                               "timeout": "1500ms", "retries": 4, "failurePolicy": "ignore",
                               "secretFile": "/etc/hooks/hmac", "metadata": {"suite": "search"}})
    assert hook == HookSpec("smoke", HookKind.PRE_ROLLOUT, "https://ci.example.com/smoke", 1.5, 4,
                            FailurePolicy.IGNORE, "/etc/hooks/hmac", None, {"suite": "search"})
    ref = _hook("preRollout", "http://ci.tools.svc/smoke", secretRef={"name": "hook-hmac", "key": "key"})
    assert ref.secret_ref == SecretRef("hook-hmac", "key") and ref.secret_file is None


@pytest.mark.parametrize(("spec", "problem"), [
    ({"url": "http://x/"}, "spec.hooks[3].kind: is required"),
    ({"kind": "preDeploy", "url": "http://x/"}, "spec.hooks[3].kind: 'preDeploy' is not one of preRollout, loadTest"),
    ({"kind": "preRollout"}, "spec.hooks[3].url: is required"),
    ({"kind": "preRollout", "url": "file:///etc/passwd"}, "spec.hooks[3].url: file scheme"),
    ({"kind": "preRollout", "url": "http://x/", "timeout": "soon"}, "spec.hooks[3].timeout: 'soon' is not a duration"),
    ({"kind": "preRollout", "url": "http://x/", "timeout": "10m"}, "spec.hooks[3].timeout: '10m' is not between 0"),
    ({"kind": "preRollout", "url": "http://x/", "retries": -1}, "spec.hooks[3].retries: -1 is not between 0 and 10"),
    ({"kind": "preRollout", "url": "http://x/", "retries": "2"}, "spec.hooks[3].retries: must be a whole number"),
    ({"kind": "confirmPromotion", "url": "http://x/", "retries": 2}, "spec.hooks[3].retries: a confirmPromotion gate"),
    ({"kind": "confirmPromotion", "url": "http://x/", "failurePolicy": "ignore"},
     "spec.hooks[3].failurePolicy: a confirmPromotion gate cannot ignore"),
    ({"kind": "preRollout", "url": "http://x/", "failurePolicy": "retry"},
     "spec.hooks[3].failurePolicy: 'retry' is not one of fail, ignore"),
    ({"kind": "preRollout", "url": "http://x/", "secretFile": "hmac"},
     "spec.hooks[3].secretFile: 'hmac' is not an absolute file path"),
    ({"kind": "preRollout", "url": "http://x/", "secret": "inline"}, "spec.hooks[3].secret: is not a known field"),
    ({"kind": "preRollout", "url": "http://x/", "secretRef": {"name": "s"}},
     "spec.hooks[3].secretRef.key: is required"),
    ({"kind": "preRollout", "url": "http://x/", "secretRef": {"name": "../etc", "key": "k"}},
     "spec.hooks[3].secretRef.name: '../etc' is not a Secret's name"),
    ({"kind": "preRollout", "url": "http://x/", "secretRef": {"name": "s", "key": "a/b"}},
     "spec.hooks[3].secretRef.key: 'a/b' is not a Secret's key"),
    ({"kind": "preRollout", "url": "http://x/", "secretRef": {"name": "s", "key": "k"}, "secretFile": "/h"},
     "spec.hooks[3]: give at most one of secretRef and secretFile"),
    ({"kind": "preRollout", "url": "http://x/", "name": "Bad Name"}, "spec.hooks[3].name: 'Bad Name' is not a DNS"),
    ({"kind": "preRollout", "url": "http://x/", "metadata": {"a": 1}}, "spec.hooks[3].metadata: must be a mapping"),
    ("preRollout", "spec.hooks[3]: must be a mapping, not str"),
])
def test_precise_messages(spec: object, problem: str) -> None:
    with pytest.raises(InvalidHook) as err:
        HookSpec.from_dict(spec, "spec.hooks[3]")
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_all_problems_at_once_and_list_parsing() -> None:
    with pytest.raises(InvalidHook) as err:
        hooks_from_list([{"kind": "x"}, {"kind": "postRollout", "url": "http://a/", "timeout": 0},
                         {"name": "n", "kind": "postRollout", "url": "http://a/"},
                         {"name": "n", "kind": "onRollback", "url": "http://a/"}])
    problems = err.value.problems
    assert "spec.hooks[0].url: is required" in problems
    assert any(p.startswith("spec.hooks[0].kind:") for p in problems)
    assert any(p.startswith("spec.hooks[1].timeout:") for p in problems)
    assert "spec.hooks: the name 'n' is used more than once" in problems
    assert hooks_from_list(None) == ()


def test_allow_list_applies_at_parse_time() -> None:
    with pytest.raises(InvalidHook, match="not in the webhook allow-list"):
        HookSpec.from_dict({"kind": "preRollout", "url": "http://evil.example/"},
                           policy=UrlPolicy.allowing(["ci.internal"]))


def test_repr_hides_the_url_path() -> None:
    hook = _hook("postRollout", "https://hooks.example.com/T0/B0/token123")
    assert "token123" not in repr(hook)


# --- running -------------------------------------------------------------------------------------

def test_pre_rollout_passes_on_2xx_and_sends_payload(receiver: Receiver) -> None:
    result = _hooks().run(_hook("preRollout", receiver.url, metadata={"suite": "smoke"}), PAYLOAD)
    assert result.passed and result.status == 200 and result.attempts == 1 and result.duration >= 0
    body = json.loads(receiver.requests[0].body)
    assert body == {**PAYLOAD, "suite": "smoke", "hook": "preRollout", "kind": "preRollout"}


def test_pre_rollout_failure_blocks_after_retries(receiver: Receiver) -> None:
    receiver.statuses = [503]
    result = _hooks().run(_hook("preRollout", receiver.url, retries=2), PAYLOAD)
    # The status learns the class of the answer, never the code itself (a release must not map the network).
    assert not result.passed and result.status is None and result.attempts == 3
    assert result.reason == "server error (5xx)"
    assert len(receiver.requests) == 3


def test_pre_rollout_retry_recovers(receiver: Receiver) -> None:
    receiver.statuses = [500, 200]
    result = _hooks().run(_hook("preRollout", receiver.url), PAYLOAD)
    assert result.passed and result.attempts == 2


def test_ignore_policy_passes_a_failed_hook(receiver: Receiver) -> None:
    receiver.statuses = [500]
    result = _hooks().run(_hook("postRollout", receiver.url, retries=0), PAYLOAD)
    assert result.passed and result.status is None and result.reason == "failed but ignored: server error (5xx)"


@pytest.mark.parametrize(("status", "passed"), [(200, True), (201, False), (202, False), (403, False),
                                                (500, False)])
def test_confirm_promotion_gate_needs_exactly_200(receiver: Receiver, status: int, passed: bool) -> None:
    receiver.statuses = [status]
    result = _hooks().run(_hook("confirmPromotion", receiver.url), PAYLOAD)
    assert result.passed is passed and result.status == (status if passed else None)
    assert len(receiver.requests) == 1  # never retried within one call: the next tick asks again
    if not passed:
        shown = {201: "not confirmed (2xx other than 200)", 202: "not confirmed (2xx other than 200)",
                 403: "rejected (4xx)", 500: "server error (5xx)"}[status]
        assert result.reason == f"waiting for confirmation: {shown}"


def test_gate_opens_on_a_later_tick(receiver: Receiver) -> None:
    receiver.statuses = [403, 403, 200]
    hooks, gate = _hooks(), _hook("confirmPromotion", receiver.url)
    assert [hooks.run(gate, PAYLOAD).passed for _ in range(3)] == [False, False, True]


def test_silent_gate_waits_within_its_timeout() -> None:
    silent = SilentReceiver()
    try:
        started = time.monotonic()
        result = _hooks().run(_hook("confirmPromotion", silent.url, timeout="300ms"), PAYLOAD)
        elapsed = time.monotonic() - started
    finally:
        silent.stop()
    assert not result.passed and result.status is None and "timed out" in result.reason
    assert elapsed < 2.0


def test_signed_payload(receiver: Receiver, tmp_path: Path) -> None:
    (tmp_path / "hmac").write_text("hook-secret-value\n")
    _local(tmp_path).run(_hook("onRollback", receiver.url, secretFile=str(tmp_path / "hmac")), PAYLOAD)
    got = receiver.requests[0]
    assert verify(Secret(b"hook-secret-value"), got.body, got.headers, now=time.time())


def test_missing_secret_file_fails_without_sending(receiver: Receiver, tmp_path: Path) -> None:
    result = _local(tmp_path).run(_hook("preRollout", receiver.url, secretFile=str(tmp_path / "nope")), PAYLOAD)
    assert not result.passed and result.reason.startswith("secret: cannot read secret file")
    assert receiver.requests == []


def test_secret_ref_signs_with_the_named_secret(receiver: Receiver, tmp_path: Path) -> None:
    (tmp_path / "hook-hmac").mkdir()
    (tmp_path / "hook-hmac" / "key").write_text("ref-secret-value\n")  # a Secret mounted at <dir>/<name>
    hook = _hook("onRollback", receiver.url, secretRef={"name": "hook-hmac", "key": "key"})
    assert _local(tmp_path).run(hook, PAYLOAD).passed
    got = receiver.requests[0]
    assert verify(Secret(b"ref-secret-value"), got.body, got.headers, now=time.time())
    missing = _hook("preRollout", receiver.url, secretRef={"name": "other", "key": "key"})
    result = _local(tmp_path).run(missing, PAYLOAD)
    assert not result.passed and result.reason == "secret: secret other/key is in none of the secret directories"
    assert len(receiver.requests) == 1  # the hook without its key was not called unsigned


# --- the runner's rules: refused before anything is read or sent --------------------------------

def test_cluster_refuses_a_secret_file_before_reading_or_calling(receiver: Receiver, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("service-account-token\n")
    rules = HookRules(UrlPolicy.in_cluster(["127.0.0.1"]), secret_files=False)  # the receiver's host allowed
    result = _hooks(rules).run(_hook("preRollout", receiver.url, secretFile=str(tmp_path / "token")), PAYLOAD)
    assert not result.passed and result.attempts == 0 and result.status is None
    assert result.reason.startswith("refused by policy: hook preRollout: secretFile: the cluster controller reads "
                                    "no file for a release; name a Kubernetes Secret")
    assert receiver.requests == []


def test_cluster_refuses_a_url_outside_its_policy(receiver: Receiver) -> None:
    result = _hooks(HookRules.cluster()).run(_hook("preRollout", receiver.url), PAYLOAD)
    assert not result.passed and result.attempts == 0
    assert result.reason.startswith("refused by policy: hook preRollout: url: host 127.0.0.1 is refused by the "
                                    "controller's URL policy: only in-cluster Services")
    assert receiver.requests == []


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://smoke.test-tools.svc/run", True), ("http://smoke.test-tools.svc.cluster.local:8080/x", True),
    ("http://smoke/run", True), ("https://ci.example.com/x", True), ("http://127.0.0.1:8080/", False),
    ("http://[::1]/", False), ("http://2130706433/", False), ("http://0x7f000001/", False),
    ("http://localhost:8080/", False), ("http://169.254.169.254/latest/meta-data", False),
    ("http://kubernetes.default.svc.evil.example/", False), ("http://evil.example/", False),
])
def test_cluster_url_policy(url: str, allowed: bool) -> None:
    rules = HookRules.cluster(["ci.example.com"])
    assert (not any("url:" in p for p in _refusals(url, rules))) is allowed


def _refusals(url: str, rules: HookRules) -> list[str]:
    from controller.core.spec.hooks import refusals

    return refusals(_hook("postRollout", url), rules)


def test_local_refuses_a_secret_file_outside_the_allowed_places(receiver: Receiver, tmp_path: Path) -> None:
    workdir, outside = tmp_path / "work", tmp_path / "elsewhere"
    workdir.mkdir()
    outside.mkdir()
    (outside / "key").write_text("outside-secret\n")
    (workdir / "link").symlink_to(outside / "key")
    hooks = _hooks(HookRules.local([str(workdir)]))
    result = hooks.run(_hook("preRollout", receiver.url, secretFile=str(outside / "key")), PAYLOAD)
    assert not result.passed and result.reason == (
        f"refused by policy: hook preRollout: secretFile: {outside / 'key'} is outside the directories a local "
        f"run reads secrets from (the release's workdir and --hook-secret-dir: {workdir})")
    dotted = hooks.run(_hook("preRollout", receiver.url, secretFile=f"{workdir}/../elsewhere/key"), PAYLOAD)
    assert dotted.reason.startswith("refused by policy")
    linked = hooks.run(_hook("preRollout", receiver.url, secretFile=str(workdir / "link")), PAYLOAD)
    assert not linked.passed and linked.reason == (
        f"secret: secret file {workdir / 'link'} resolves outside the allowed directories")
    assert receiver.requests == []


def test_secret_ref_without_a_secret_store_is_refused(receiver: Receiver) -> None:
    hook = _hook("preRollout", receiver.url, secretRef={"name": "hmac", "key": "key"})
    result = _hooks().run(hook, PAYLOAD)
    assert not result.passed and result.reason == "secret: this runner reads no Secrets (secretRef)"
    assert receiver.requests == []


def test_directory_secrets_stay_in_their_directory(tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("x")
    secrets = DirectorySecrets([tmp_path / "dir"])
    for name, key in (("..", "outside"), ("a/..", "b"), (".", "k")):
        with pytest.raises(SecretUnavailable):
            secrets.read("ns", name, key)


def test_load_test_fire_returns_at_once(receiver: Receiver) -> None:
    thread = _hooks().fire(_hook("loadTest", receiver.url, metadata={"cmd": "hey -z 1m http://search/"}), PAYLOAD)
    thread.join(timeout=5)
    assert not thread.is_alive()
    body = json.loads(receiver.requests[0].body)
    assert body["kind"] == "loadTest" and body["cmd"] == "hey -z 1m http://search/"


def test_hook_payload_describes_the_release() -> None:
    spec = parse_release({"metadata": {"name": "search-v2", "namespace": "shop"},
                          "spec": {"stable": {"version": "v1"},
                                   "canary": {"version": "v2", "images": {"ml-infer": "ml:2"}},
                                   "hooks": [{"kind": "loadTest", "url": "http://load.test/"}]}})
    status = ReleaseStatus(phase=Phase.PROGRESSING, started_at=1000.0, step=1, canary_weight=25, last_verdict="pass")
    payload = hook_points.payload(spec, status, spec.hooks[0])
    assert payload["release"] == "search-v2" and payload["namespace"] == "shop"
    assert payload["phase"] == "Progressing" and payload["canaryWeight"] == 25
    assert payload["canary"] == {"version": "v2", "images": {"ml-infer": "ml:2"}}
    assert payload["services"] == ["ml-infer"]
    assert payload["id"] == "shop/search-v2/1000.000/loadTest"  # stable across repeated calls of one run
    json.dumps(payload)  # JSON-able as it is
