"""Release hooks and notifications wired through the reconciler: whole releases on a fake clock, every hook
and notification a real HTTP call to a receiver on 127.0.0.1 that checks signatures and order."""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.http.hooks import HttpHooks
from controller.adapters.http.notifiers import JsonWebhookNotifier, MultiNotifier, SlackWebhookNotifier
from controller.adapters.http.signing import Secret, verify
from controller.adapters.http.webhook import RetryPolicy, WebhookClient
from controller.adapters.kubernetes.running import Controller, ControllerConfig
from controller.cli import outgoing as notifications
from controller.cli.main import main
from controller.core.machine import FireHook
from controller.core.spec.hooks import HookRules
from controller.core.status import Phase
from controller.logs import configure_logging
from controller.ports import Notice, Notifier
from controller.reconciler import Ports, Reconciler
from tests.support.fakes import VersionModel
from tests.support.kmock_server import RunningEmulator
from tests.support.kube_world import KubeWorld
from tests.support.scenario import World, release
from tests.support.webhook_receiver import Receiver

SECRET = b"hook-secret-0123456789"


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made: dict[str, Receiver] = {}

    class Pool(dict[str, Receiver]):
        def __missing__(self, name: str) -> Receiver:
            made[name] = self[name] = Receiver()
            return made[name]

    yield Pool()
    for r in made.values():
        r.stop()


def client() -> WebhookClient:
    return WebhookClient(timeout=2.0, retry=RetryPolicy(attempts=3, backoff=0.0), sleep=lambda _: None)


class HookedWorld(World):
    def __init__(self, notifier: Notifier | None = None, secret_dir: Path | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.extra = notifier
        # A local run: hooks' secret files are read from the release's own directory only.
        self.rules = HookRules.local([str(secret_dir)] if secret_dir else [])

    def controller(self) -> Reconciler:
        notifier: Notifier = self.notifier if self.extra is None else MultiNotifier([self.notifier, self.extra])
        return Reconciler(Ports(self.workloads, self.router, self.metrics, self.clock, notifier,
                                hooks=HttpHooks(client(), self.rules)))


def hook(kind: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "url": url, **extra}


def bodies(r: Receiver) -> list[dict[str, Any]]:
    return [json.loads(x.body) for x in r.requests]


def canary_started(world: World) -> bool:
    return any(c[0] == "start" for c in world.workloads.calls)


def test_pre_rollout_passes_then_the_release_runs(receivers: dict[str, Receiver], tmp_path: Path) -> None:
    key = tmp_path / "hmac"
    key.write_bytes(SECRET)
    world = HookedWorld(secret_dir=tmp_path)
    obj = release(hooks=[hook("preRollout", receivers["pre"].url, name="smoke", secretFile=str(key),
                              metadata={"suite": "smoke"})])
    status = world.run(obj)
    assert status.phase is Phase.SUCCEEDED, status.message
    [call] = receivers["pre"].requests  # called once, before anything was deployed, never again
    body = json.loads(call.body)
    assert body["kind"] == "preRollout" and body["phase"] == "Pending" and body["suite"] == "smoke"
    assert body["id"] == "search/search-v2/pending/smoke"
    assert verify(Secret(SECRET), call.body, call.headers, time.time())
    assert status.hooks["smoke"]["passed"] is True and status.hooks["smoke"]["status"] == 200


def test_failed_pre_rollout_fails_the_release_and_touches_nothing(receivers: dict[str, Receiver]) -> None:
    receivers["pre"].statuses = [503]
    world = HookedWorld()
    status = world.run(release(hooks=[hook("preRollout", receivers["pre"].url, name="db-migrated", retries=2)]))
    assert status.phase is Phase.FAILED
    # The class of the answer, not its code: a release must not map the network through its hooks.
    assert "preRollout hook failed, nothing was deployed: db-migrated: server error (5xx)" in status.message
    assert "503" not in status.message and status.hooks["db-migrated"]["status"] is None
    assert len(receivers["pre"].requests) == 3  # its retries, in one call; the release is not retried
    assert not canary_started(world) and world.router.history == []
    assert "PreRolloutFailed" in world.notifier.reasons()


def test_a_hook_outside_the_policy_added_in_flight_holds_the_release_and_nothing_is_read_or_sent(
        receivers: dict[str, Receiver], tmp_path: Path) -> None:
    """The runner's policy is checked when the spec is read: a release in flight whose spec gains a hook
    with a secret file outside the allowed directories holds where it is (routes unchanged, SpecValid
    False, one InvalidSpec notice); no hook is called. Fixing the spec resumes it."""
    allowed, outside = tmp_path / "release", tmp_path / "elsewhere"
    allowed.mkdir(), outside.mkdir()
    (outside / "key").write_bytes(SECRET)
    world = HookedWorld(secret_dir=allowed)
    obj = release()
    status = world.run(obj, until=lambda s: s.phase is Phase.PROGRESSING and s.canary_weight > 0)
    writes, weight = world.router.writes, status.canary_weight
    obj["spec"]["hooks"] = [hook("loadTest", receivers["load"].url, name="load", secretFile=str(outside / "key"))]
    obj["metadata"]["generation"] = 2
    for _ in range(5):
        world.clock.sleep(60)
        status = world.controller().tick(obj, world.status(), world.persist).status
    assert status.phase is Phase.PROGRESSING and status.canary_weight == weight
    assert world.router.writes == writes and receivers["load"].requests == []
    assert status.condition("SpecValid").status == "False"
    assert "spec.hooks[0]: hook load: secretFile: " in status.condition("SpecValid").message
    assert world.notifier.reasons().count("InvalidSpec") == 1
    del obj["spec"]["hooks"]
    obj["metadata"]["generation"] = 3
    assert world.run(obj).phase is Phase.SUCCEEDED


def test_confirm_promotion_holds_until_exactly_200(receivers: dict[str, Receiver]) -> None:
    gate = receivers["gate"]
    gate.statuses = [403, 202, 500, 200]  # 202 and 500 are no confirmation either
    world = HookedWorld()
    status = world.run(release(hooks=[hook("confirmPromotion", gate.url, name="release-manager")]))
    assert status.phase is Phase.SUCCEEDED, status.message
    assert len(gate.requests) == 4
    phases = [t.status.phase for t in world.ticks]
    first_promoting = phases.index(Phase.PROMOTING)
    waiting = [t for t in world.ticks[:first_promoting] if t.status.phase is Phase.PAUSED]
    assert len(waiting) >= 3  # held (Paused) through each answer that was not 200
    assert all("waiting for confirmation: release-manager" in t.status.message for t in waiting)
    assert "AwaitingConfirmation" in world.notifier.reasons()
    # Every ask carries the analysis' outcome: the gate knows what it confirms.
    assert all(b["lastVerdict"] == "pass" and b["kind"] == "confirmPromotion" for b in bodies(gate))


def test_post_rollout_once_after_promotion_and_on_rollback_never(receivers: dict[str, Receiver]) -> None:
    world = HookedWorld()
    obj = release(hooks=[hook("postRollout", receivers["post"].url), hook("onRollback", receivers["back"].url)])
    status = world.run(obj)
    assert status.phase is Phase.SUCCEEDED
    assert [b["phase"] for b in bodies(receivers["post"])] == ["Succeeded"]
    world.run(obj, controller=world.controller())  # a restarted controller does not call it again
    assert len(receivers["post"].requests) == 1 and receivers["back"].requests == []


def test_on_rollback_once_when_the_canary_fails_and_its_failure_is_announced(
        receivers: dict[str, Receiver]) -> None:
    receivers["back"].statuses = [500]
    world = HookedWorld(models={"v2": VersionModel(error_rate=0.05)})
    obj = release(hooks=[hook("postRollout", receivers["post"].url), hook("onRollback", receivers["back"].url,
                                                                            name="page-oncall", retries=1)])
    status = world.run(obj)
    assert status.phase is Phase.ROLLED_BACK
    assert len(receivers["back"].requests) == 2  # one call: the first try and its one retry
    assert {b["phase"] for b in bodies(receivers["back"])} <= {"RollingBack", "RolledBack"}
    assert receivers["post"].requests == []
    assert status.hooks["page-oncall"]["passed"] is True  # onRollback ignores failures by default ...
    assert "failed but ignored" in status.hooks["page-oncall"]["reason"]  # ... but says so


def test_load_test_fires_with_every_analysis_window(receivers: dict[str, Receiver]) -> None:
    world = HookedWorld()
    obj = release(hooks=[hook("loadTest", receivers["load"].url, metadata={"cmd": "hey -z 1m http://search/"})])
    status = world.run(obj)
    assert status.phase is Phase.SUCCEEDED
    fired = sum(1 for t in world.ticks for a in t.actions if isinstance(a, FireHook))
    # One when the first step opens, then one per analysis after which the release kept analysing (a next
    # step or another window of the same step), none after the analysis that promoted.
    assert fired == 1 + sum(1 for h in status.history if h.action != "promote")
    assert fired >= 3
    deadline = time.monotonic() + 10
    while len(receivers["load"].requests) < fired and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(receivers["load"].requests) == fired
    assert all(b["cmd"] == "hey -z 1m http://search/" for b in bodies(receivers["load"]))


def test_notifications_in_order_signed_and_with_the_decisions_numbers(receivers: dict[str, Receiver],
                                                                      tmp_path: Path) -> None:
    key = tmp_path / "hmac"
    key.write_bytes(SECRET)
    slack_url = tmp_path / "slack-url"
    slack_url.write_text(receivers["slack"].url + "/T000/B000/token\n")
    notifier = MultiNotifier([JsonWebhookNotifier(receivers["json"].url, secret_file=key, client=client()),
                              SlackWebhookNotifier(url_file=slack_url, client=client())])
    world = HookedWorld(notifier=notifier)
    status = world.run(release())
    assert status.phase is Phase.SUCCEEDED
    sent = bodies(receivers["json"])
    assert [b["reason"] for b in sent] == world.notifier.reasons()  # every notice, in the order decided
    assert sent[0]["reason"] == "Initializing" and sent[-1]["reason"] == "Promoted"
    assert [b["reason"] for b in sent if b["reason"] == "WeightIncreased"] == ["WeightIncreased"] * 3  # one per step
    assert all(verify(Secret(SECRET), r.body, r.headers, time.time()) for r in receivers["json"].requests)
    assert all(b["namespace"] == "search" and b["release"] == "search-v2" for b in sent)
    promoting = next(b for b in sent if b["reason"] == "Promoting")
    numbers = promoting["details"]
    assert numbers["verdict"] == "pass" and numbers["checks"] and numbers["counts"]
    assert all(isinstance(c["eValue"], float) and c["threshold"] for c in numbers["checks"])
    slack = [json.loads(r.body)["text"] for r in receivers["slack"].requests]
    assert len(slack) == len(sent)
    assert any("e-value" in text and "threshold" in text for text in slack)


def test_on_kubernetes_events_and_webhooks_tell_the_same_story_and_the_gate_holds(
        emulator: RunningEmulator, receivers: dict[str, Receiver]) -> None:
    gate = receivers["gate"]
    gate.statuses = [409, 200]
    world = KubeWorld(emulator)
    world.seed_stack()
    world.create_release(hooks=[hook("confirmPromotion", gate.url, name="change-board"),
                                hook("postRollout", receivers["post"].url)])
    notifier = JsonWebhookNotifier(receivers["json"].url, client=client())
    controller = Controller(world.api, ControllerConfig(), world.metrics, world.clock, notifier=notifier,
                            hooks=HttpHooks(client()))
    status = world.drive(controller)
    assert status.phase is Phase.SUCCEEDED, status.message
    assert len(gate.requests) == 2 and status.hooks["change-board"]["status"] == 200
    world.drive(controller, rounds=5)  # the tick after Succeeded owes the postRollout call
    assert [json.loads(r.body)["phase"] for r in receivers["post"].requests] == ["Succeeded"]
    events = [e["reason"] for e in sorted(world.objects("events"), key=lambda e: e["metadata"]["name"])]
    sent = [b["reason"] for b in bodies(receivers["json"])]
    assert "AwaitingConfirmation" in sent and sent[-1] == "Promoted"
    assert set(sent) == set(events)
    world.assert_valid_writes()  # the status with its hook answers passes the CRD


def test_controller_log_lines_carry_the_release_and_where_it_is(emulator: RunningEmulator,
                                                                 receivers: dict[str, Receiver]) -> None:
    stream = io.StringIO()
    level = logging.getLogger().level
    handler = configure_logging("INFO", json=True, stream=stream)
    try:
        world = KubeWorld(emulator)
        world.seed_stack()
        world.create_release(hooks=[hook("loadTest", receivers["load"].url), hook("postRollout", receivers["p"].url)])
        controller = Controller(world.api, ControllerConfig(), world.metrics, world.clock, hooks=HttpHooks(client()))
        world.drive(controller)
        world.drive(controller, rounds=5)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    tick_lines = [r for r in lines if r["logger"] == "controller.reconciler"]
    assert tick_lines, "no log line from the ticks"
    for record in tick_lines:
        assert record["release"] == "search-v2" and record["namespace"] == "search", record
        assert record["phase"] in {p.value for p in Phase} and isinstance(record["step"], int), record
    assert any(r["phase"] == "Succeeded" and "postRollout" in r["message"] for r in tick_lines)


def test_runner_flags_build_the_notifiers_and_refuse_bad_urls(tmp_path: Path, receivers: dict[str, Receiver],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    notifications.add_arguments(parser)
    url_file = tmp_path / "slack"
    url_file.write_text(receivers["slack"].url + "/T1/B2/secret-token\n")
    outgoing = notifications.from_args(parser.parse_args(
        ["--slack-webhook-file", str(url_file), "--notify-url", receivers["json"].url,
         "--webhook-allow-host", "127.0.0.1"]))
    assert outgoing.notifier is not None
    outgoing.notifier.notify(Notice("search-v2", "Promoted", "v2 serves all traffic", namespace="search"))
    outgoing.close()  # delivers what is queued before it returns
    assert json.loads(receivers["json"].requests[0].body)["reason"] == "Promoted"
    assert "search-v2" in json.loads(receivers["slack"].requests[0].body)["text"]
    assert outgoing.hooks.client.policy.allowed_hosts == frozenset({"127.0.0.1"})

    for argv, message in ((["--notify-url", "ftp://files.example/x"], "only http and https"),
                          (["--notify-url", "https://hooks.example/x", "--webhook-allow-host", "other.example"],
                           "not in the webhook allow-list"),
                          (["--slack-webhook-file", str(tmp_path / "missing")], "cannot read")):
        with pytest.raises(ValueError, match=message):
            notifications.from_args(parser.parse_args(argv))
    assert main(["controller", "--notify-url", "gopher://x/", "--server", "http://127.0.0.1:9"]) == 2
    assert "only http and https" in capsys.readouterr().err
