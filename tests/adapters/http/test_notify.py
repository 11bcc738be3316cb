"""Notifiers against a real webhook receiver on loopback: bodies, signatures, ordering, retries,
timeouts, URL policy, and that no secret reaches a log line or a repr."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.adapters.http.notifiers import (
    JsonWebhookNotifier,
    MultiNotifier,
    QueuedNotifier,
    SlackWebhookNotifier,
    slack_text,
)
from controller.adapters.http.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ReplayGuard,
    Secret,
    SecretError,
    verify,
)
from controller.adapters.http.webhook import (
    DELIVERY_HEADER,
    MAX_REPLY_BYTES,
    RefusedUrl,
    RetryPolicy,
    UrlPolicy,
    WebhookClient,
    outcome_of,
)
from controller.core.status import decision_details
from controller.logs import configure_logging
from controller.ports import Notice
from tests.support.webhook_receiver import Receiver, SilentReceiver

SECRET = "s3cr3t-hmac-key-do-not-log"
ROLLBACK = Notice("search-v2", "RolledBack", "keyword latencyShift: e-value 1.16e+03 >= 400", warning=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "hmac"
    path.write_text(SECRET + "\n")
    return path


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def _client(**kw: object) -> WebhookClient:
    return WebhookClient(timeout=2.0, sleep=Sleeps(), **kw)  # type: ignore[arg-type]


def _status() -> dict[str, object]:
    check = {"service": "keyword", "check": "latencyShift", "verdict": "fail", "eValue": 1160.0, "threshold": 400.0,
             "pValue": 0.0009}
    return {"phase": "RollingBack", "canaryWeight": 50, "decidedAt": 1045.3, "firstCanaryTrafficAt": 1003.3,
            "history": [{"t": 45.3, "step": 2, "weight": 50, "verdict": "fail", "action": "roll back",
                         "reason": "keyword latencyShift crossed", "checks": [check],
                         "counts": {"keyword": {"canary": {"requests": 266, "errors": 0}}}}]}


def test_json_webhook_signs_the_exact_body(receiver: Receiver, secret_file: Path) -> None:
    notifier = JsonWebhookNotifier(receiver.url, secret_file=secret_file, client=_client())
    notifier.notify(ROLLBACK)
    [got] = receiver.requests
    assert verify(Secret(SECRET.encode()), got.body, got.headers, now=time.time())
    assert got.headers[SIGNATURE_HEADER].startswith("sha256=")
    body = json.loads(got.body)
    assert body == {"release": "search-v2", "reason": "RolledBack", "message": ROLLBACK.message,
                    "severity": "warning"}
    # Tampering with the body, the timestamp or the key breaks the signature.
    assert not verify(Secret(SECRET.encode()), got.body + b" ", got.headers, now=time.time())
    assert not verify(Secret(b"another-key"), got.body, got.headers, now=time.time())
    forged = {**got.headers, TIMESTAMP_HEADER: str(int(got.headers[TIMESTAMP_HEADER]) + 1)}
    assert not verify(Secret(SECRET.encode()), got.body, forged, now=time.time())


def test_replayed_delivery_is_rejected_after_the_tolerance(receiver: Receiver, secret_file: Path) -> None:
    JsonWebhookNotifier(receiver.url, secret_file=secret_file, client=_client()).notify(ROLLBACK)
    [got] = receiver.requests
    assert verify(Secret(SECRET.encode()), got.body, got.headers, now=time.time() + 60)
    assert not verify(Secret(SECRET.encode()), got.body, got.headers, now=time.time() + 3600)


def test_unsigned_without_secret(receiver: Receiver) -> None:
    JsonWebhookNotifier(receiver.url, client=_client()).notify(ROLLBACK)
    assert SIGNATURE_HEADER not in receiver.requests[0].headers


def test_slack_message_carries_the_numbers(receiver: Receiver) -> None:
    notifier = SlackWebhookNotifier(receiver.url, client=_client(), describe=lambda n: decision_details(_status()))
    notifier.notify(ROLLBACK)
    text = json.loads(receiver.requests[0].body)["text"]
    assert text.startswith(":warning: *search-v2* — RolledBack")
    assert "e-value 1.16e+03 / threshold 400" in text
    assert "weight 50%: *fail* → roll back" in text
    assert "time to decision: 42.0s" in text


def test_slack_shows_an_experiments_decision_and_the_webhook_keeps_the_guardrails_verdict() -> None:
    """An experiment's look: the guardrails found no harm (`inconclusive`) and the experiment named a winner. Slack
    read "*inconclusive* → winner: promote v2"; the webhook's `verdict` stays the guardrails' (an API)."""
    look = {"at": 1.0, "t": 60.0, "step": 0, "weight": 50, "verdict": "inconclusive", "action": "promote v2",
            "reason": "guardrails: no harm shown; primary: v2 beats v1",
            "counts": {"primary": {"decision": "winner", "reason": "v2 beats v1"}}}
    details = decision_details({"phase": "Promoting", "history": [look]})
    assert (details["verdict"], details["decision"]) == ("inconclusive", "winner")
    text = slack_text(Notice("search-v2", "ExperimentEnded", "v2 won"), details)
    assert "weight 50%: *winner* → promote v2" in text
    canary = decision_details({"history": [{**look, "verdict": "pass", "counts": {}}]})
    assert canary["decision"] == "pass"


def test_slack_text_escapes_mentions_and_links() -> None:
    text = slack_text(Notice("<!channel>", "X", "see <http://evil|here> & more"))
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    assert "&lt;http://evil|here&gt; &amp; more" in text


def test_notices_arrive_in_order(receiver: Receiver) -> None:
    notifier = JsonWebhookNotifier(receiver.url, client=_client())
    reasons = ["Initializing", "Initialized", "WeightIncreased", "WeightIncreased", "Promoting", "Promoted"]
    for i, reason in enumerate(reasons):
        notifier.notify(Notice("r", reason, f"message {i}"))
    assert [json.loads(r.body)["message"] for r in receiver.requests] == [f"message {i}" for i in range(6)]


def test_queued_notifier_keeps_order_and_flushes_on_close(receiver: Receiver) -> None:
    queued = QueuedNotifier(JsonWebhookNotifier(receiver.url, client=_client()))
    for i in range(20):
        queued.notify(Notice("r", "WeightIncreased", f"step {i}"))
    queued.close(timeout=10)
    assert [json.loads(r.body)["message"] for r in receiver.requests] == [f"step {i}" for i in range(20)]


def test_queued_notifier_drops_when_full_and_never_blocks() -> None:
    release = threading.Event()
    seen: list[str] = []

    class Stuck:
        def notify(self, notice: Notice) -> None:
            release.wait(5)
            seen.append(notice.message)

    queued = QueuedNotifier(Stuck(), maxsize=2)
    started = time.monotonic()
    for i in range(6):
        queued.notify(Notice("r", "WeightIncreased", f"step {i}"))
    assert time.monotonic() - started < 1.0
    assert queued.dropped >= 3  # one in the worker, two queued, the rest dropped
    release.set()
    queued.close(timeout=5)
    assert seen[0] == "step 0" and len(seen) == 6 - queued.dropped


def test_retries_on_500_with_backoff_and_one_delivery_id(receiver: Receiver) -> None:
    receiver.statuses = [500, 503, 200]
    sleeps = Sleeps()
    client = WebhookClient(timeout=2.0, sleep=sleeps, retry=RetryPolicy(attempts=4, backoff=0.5))
    delivery = JsonWebhookNotifier(receiver.url, client=client).deliver(ROLLBACK)
    assert delivery.ok and delivery.status == 200 and delivery.attempts == 3
    assert len(receiver.requests) == 3
    assert sleeps.calls == [0.5, 1.0]
    assert len({r.headers[DELIVERY_HEADER] for r in receiver.requests}) == 1


def test_retries_are_bounded_and_failure_is_swallowed(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.statuses = [500]
    client = WebhookClient(timeout=2.0, sleep=Sleeps(), retry=RetryPolicy(attempts=3))
    notifier = JsonWebhookNotifier(receiver.url, client=client)
    with caplog.at_level(logging.WARNING):
        notifier.notify(ROLLBACK)  # must not raise
    assert len(receiver.requests) == 3
    assert "failed after 3 tries: HTTP 500" in caplog.text


def test_client_errors_are_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [404]
    delivery = JsonWebhookNotifier(receiver.url, client=_client()).deliver(ROLLBACK)
    assert not delivery.ok and delivery.status == 404 and delivery.attempts == 1


def test_silent_socket_times_out() -> None:
    silent = SilentReceiver()
    try:
        client = WebhookClient(timeout=0.3, sleep=Sleeps(), retry=RetryPolicy(attempts=2))
        started = time.monotonic()
        delivery = JsonWebhookNotifier(silent.url, client=client).deliver(ROLLBACK)
        elapsed = time.monotonic() - started
    finally:
        silent.stop()
    assert not delivery.ok and delivery.status is None
    assert "timed out" in delivery.reason and delivery.attempts == 2
    assert elapsed < 3.0


def test_dead_port_fails_fast() -> None:
    silent = SilentReceiver()
    url = silent.url
    silent.stop()  # nothing listens there now
    delivery = JsonWebhookNotifier(url, client=_client()).deliver(ROLLBACK)
    assert not delivery.ok and "connection failed" in delivery.reason


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://h/", "http:///nohost",
                                 "http://user:pw@example.com/hook", "javascript:alert(1)"])
def test_refuses_urls_that_are_not_plain_http(url: str) -> None:
    with pytest.raises(RefusedUrl):
        JsonWebhookNotifier(url, client=_client())
    delivery = _client().post(url, b"{}")
    assert not delivery.ok and delivery.reason.startswith("refused") and delivery.attempts == 0


def test_allow_list(receiver: Receiver) -> None:
    with pytest.raises(RefusedUrl, match="not in the webhook allow-list"):
        JsonWebhookNotifier(receiver.url, client=_client(policy=UrlPolicy.allowing(["hooks.slack.com"])))
    allowed = _client(policy=UrlPolicy.allowing(["hooks.slack.com", "127.0.0.1"]))
    JsonWebhookNotifier(receiver.url, client=allowed).notify(ROLLBACK)
    assert len(receiver.requests) == 1
    wildcard = UrlPolicy.allowing(["*.example.com"])
    wildcard.check("https://a.b.example.com/x")
    with pytest.raises(RefusedUrl):
        wildcard.check("https://evilexample.com/x")


def test_multi_notifier_tells_everyone_even_when_one_breaks(receiver: Receiver) -> None:
    class Broken:
        def notify(self, notice: Notice) -> None:
            raise RuntimeError("boom")

    multi = MultiNotifier([Broken(), JsonWebhookNotifier(receiver.url, client=_client()),
                           SlackWebhookNotifier(receiver.url, client=_client())])
    multi.notify(ROLLBACK)
    assert len(receiver.requests) == 2
    assert "text" in json.loads(receiver.requests[1].body)


def test_broken_describe_still_sends(receiver: Receiver) -> None:
    def describe(notice: Notice) -> dict[str, object]:
        raise KeyError("no status")

    JsonWebhookNotifier(receiver.url, client=_client(), describe=describe).notify(ROLLBACK)
    assert "details" not in json.loads(receiver.requests[0].body)


def test_secrets_never_in_logs_or_repr(receiver: Receiver, secret_file: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    receiver.statuses = [500]
    slack_token_url = receiver.url + "/T000/B000/XXXXsecretTokenXXXX"
    url_file = tmp_path / "slack-url"
    url_file.write_text(slack_token_url)
    handler = configure_logging("DEBUG", json=True)
    try:
        client = WebhookClient(timeout=1.0, sleep=Sleeps(), retry=RetryPolicy(attempts=2))
        json_notifier = JsonWebhookNotifier(receiver.url, secret_file=secret_file, client=client)
        slack = SlackWebhookNotifier(url_file=url_file, client=client)
        direct = SlackWebhookNotifier(receiver.url + "/T1/B1/directTokenZZZ", client=client)
        logging.getLogger("careless").warning("direct url %s", receiver.url + "/T1/B1/directTokenZZZ")
        json_notifier.notify(ROLLBACK)
        slack.notify(ROLLBACK)
        # Even code that logs the secret by mistake does not leak it.
        logging.getLogger("careless").warning("the key is %s", SECRET)
        logging.getLogger("careless").warning("posting to %s", slack_token_url)
        texts = [repr(json_notifier), repr(slack), repr(direct), repr(json_notifier.secret), str(json_notifier.secret)]
    finally:
        logging.getLogger().removeHandler(handler)
    err = capsys.readouterr().err
    assert "failed after 2 tries" in err  # the failures were logged...
    for text in [err, *texts]:
        assert SECRET not in text  # ...without the secret
        assert "XXXXsecretTokenXXXX" not in text
        assert "directTokenZZZ" not in text
    assert "***" in err


def test_secret_file_errors_name_the_path_not_the_content(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="cannot read secret file"):
        Secret.from_file(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SecretError, match="is empty"):
        Secret.from_file(empty)


# --- the delivery id is signed; replays are dropped; replies are read up to the limit ----------

def test_the_delivery_id_is_covered_by_the_signature(receiver: Receiver) -> None:
    secret = Secret(b"delivery-id-key")
    JsonWebhookNotifier(receiver.url, secret=secret, client=_client()).deliver(ROLLBACK)
    got = receiver.requests[0]
    headers = dict(got.headers)
    assert verify(secret, got.body, headers, now=time.time())
    # The same body and signature passed off as another delivery (to slip past a replay check) fails.
    forged = {**headers, DELIVERY_HEADER: "00000000-0000-0000-0000-000000000000"}
    assert not verify(secret, got.body, forged, now=time.time())
    assert not verify(secret, got.body, {k: v for k, v in headers.items() if k != DELIVERY_HEADER},
                      now=time.time())
    expected = hmac.new(b"delivery-id-key", f"{headers[TIMESTAMP_HEADER]}.{headers[DELIVERY_HEADER]}.".encode()
                        + got.body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"sha256={expected}"  # the documented recipe, byte for byte


def test_a_receiver_drops_replays_within_the_window(receiver: Receiver) -> None:
    secret = Secret(b"replay-key")
    receiver.statuses = [500, 200]  # one delivery, two tries: the same id, signed twice
    JsonWebhookNotifier(receiver.url, secret=secret,
                        client=_client(retry=RetryPolicy(attempts=2))).deliver(ROLLBACK)
    first, retry = receiver.requests
    guard, now = ReplayGuard(), time.time()
    assert verify(secret, retry.body, retry.headers, now) and guard.first_time(retry.headers[DELIVERY_HEADER], now)
    # A captured request sent again is verified (inside the window) but recognised by its signed id.
    assert verify(secret, retry.body, retry.headers, now + 60)
    assert not guard.first_time(retry.headers[DELIVERY_HEADER], now + 60)
    # Outside the window the timestamp itself is refused, so the guard may forget old ids.
    assert not verify(secret, retry.body, retry.headers, now + 301)
    assert first.headers[DELIVERY_HEADER] == retry.headers[DELIVERY_HEADER]


class EndlessReply:
    """A receiver that answers 200 and then sends body bytes until the client hangs up; counts what it sent."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10000000000\r\n\r\n")
            chunk = b"x" * 65536
            try:
                while self.sent < 2 * 1024**3:
                    conn.sendall(chunk)
                    self.sent += len(chunk)
            except OSError:
                pass  # the client hung up: what it had read was enough

    def stop(self) -> None:
        self.thread.join(timeout=10)
        self.sock.close()


def test_a_huge_reply_is_not_read_past_the_limit() -> None:
    server = EndlessReply()
    started = time.monotonic()
    delivery = _client().post(server.url, b"{}")
    server.stop()
    assert delivery.ok and len(delivery.body) == MAX_REPLY_BYTES
    assert time.monotonic() - started < 5.0
    # What the server got out before the client hung up is bounded by the socket buffers, not the body size.
    assert not server.thread.is_alive() and server.sent < 64 * 1024**2


@pytest.mark.parametrize(("status", "failure", "shown"), [
    (200, "", "ok"), (204, "", "ok"), (302, "", "unexpected answer (3xx)"), (401, "", "rejected (4xx)"),
    (404, "", "rejected (4xx)"), (500, "", "server error (5xx)"), (502, "", "server error (5xx)"),
    (None, "timed out", "timed out"), (None, "unreachable", "unreachable"),
    (None, "refused by policy", "refused by policy"), (None, "", "unreachable"),
])
def test_outcomes_are_sanitised(status: int | None, failure: str, shown: str) -> None:
    assert outcome_of(status, failure) == shown


def test_cluster_policy_for_notifications(receiver: Receiver) -> None:
    with pytest.raises(RefusedUrl, match="refused by the controller's URL policy"):
        JsonWebhookNotifier(receiver.url, client=_client(policy=UrlPolicy.in_cluster()))
    JsonWebhookNotifier("http://alerts.monitoring.svc:9093/hook", client=_client(policy=UrlPolicy.in_cluster()))
    allowed = _client(policy=UrlPolicy.in_cluster(["127.0.0.1"]))  # the admin's explicit allow-list
    assert JsonWebhookNotifier(receiver.url, client=allowed).deliver(ROLLBACK).ok
