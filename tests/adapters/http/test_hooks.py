"""Release hooks: spec parsing with precise messages, and each kind's rule against a loopback receiver."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.adapters.http.hooks import HttpHooks
from controller.adapters.http.signing import Secret, verify
from controller.adapters.http.webhook import RetryPolicy, UrlPolicy, WebhookClient
from controller.core.machine import hooks as hook_points
from controller.core.spec.hooks import FailurePolicy, HookKind, HookSpec, InvalidHook, hooks_from_list
from controller.core.spec.release import parse_release
from controller.core.status import Phase, ReleaseStatus
from tests.support.webhook_receiver import Receiver, SilentReceiver

PAYLOAD = {"release": "search-v2", "namespace": "shop", "phase": "Progressing", "canaryVersion": "v2"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def _hooks() -> HttpHooks:
    return HttpHooks(WebhookClient(timeout=2.0, sleep=lambda s: None, retry=RetryPolicy(backoff=0.01)))


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
                            FailurePolicy.IGNORE, "/etc/hooks/hmac", {"suite": "search"})


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
    assert not result.passed and result.status == 503 and result.attempts == 3
    assert len(receiver.requests) == 3


def test_pre_rollout_retry_recovers(receiver: Receiver) -> None:
    receiver.statuses = [500, 200]
    result = _hooks().run(_hook("preRollout", receiver.url), PAYLOAD)
    assert result.passed and result.attempts == 2


def test_ignore_policy_passes_a_failed_hook(receiver: Receiver) -> None:
    receiver.statuses = [500]
    result = _hooks().run(_hook("postRollout", receiver.url, retries=0), PAYLOAD)
    assert result.passed and result.status == 500 and result.reason.startswith("failed but ignored")


@pytest.mark.parametrize(("status", "passed"), [(200, True), (201, False), (202, False), (403, False),
                                                (500, False)])
def test_confirm_promotion_gate_needs_exactly_200(receiver: Receiver, status: int, passed: bool) -> None:
    receiver.statuses = [status]
    result = _hooks().run(_hook("confirmPromotion", receiver.url), PAYLOAD)
    assert result.passed is passed and result.status == status
    assert len(receiver.requests) == 1  # never retried within one call: the next tick asks again
    if not passed:
        assert result.reason.startswith("waiting for confirmation")


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
    _hooks().run(_hook("onRollback", receiver.url, secretFile=str(tmp_path / "hmac")), PAYLOAD)
    got = receiver.requests[0]
    assert verify(Secret(b"hook-secret-value"), got.body, got.headers, now=time.time())


def test_missing_secret_file_fails_without_sending(receiver: Receiver, tmp_path: Path) -> None:
    result = _hooks().run(_hook("preRollout", receiver.url, secretFile=str(tmp_path / "nope")), PAYLOAD)
    assert not result.passed and result.reason.startswith("secret: cannot read secret file")
    assert receiver.requests == []


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
