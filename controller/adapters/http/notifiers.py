"""Notifier implementations for chat and webhooks: Slack-compatible, generic JSON, fan-out and queued.

Each implements the `Notifier` port (`notify(notice)`) and never raises: a delivery failure is logged
(without the URL's path, which holds Slack's token, and without any secret) and swallowed, because a dead
webhook must not stop a rollback. Deliveries go through `controller.adapters.http.webhook` (timeouts, bounded retries
with backoff, URL policy) and, for the JSON webhook, are signed as `controller.adapters.http.signing` describes.

A `Notice` carries the machine's message (which already names the deciding check and its e-value) and, from
the reconciler, the numbers of the latest decision (`decision_details(status)`), so that every message
carries the numbers behind it; a `describe` callback may replace those details.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from controller.adapters.http.signing import Secret
from controller.adapters.http.webhook import Delivery, WebhookClient, redact_url
from controller.logs import remember_secret
from controller.ports import Notice, Notifier

log = logging.getLogger(__name__)

Describe = Callable[[Notice], Mapping[str, Any] | None]
_ICONS = {"Promoted": ":white_check_mark:", "RolledBack": ":rewind:", "Initializing": ":hatching_chick:",
          "WeightIncreased": ":arrow_up:", "AwaitingPromotion": ":raised_hand:",
          "AwaitingConfirmation": ":raised_hand:", "RevisionStarted": ":repeat:", "Retrying": ":repeat:",
          "OperatorPromoted": ":fast_forward:", "StepSkipped": ":fast_forward:",
          "ExperimentEnded": ":checkered_flag:"}


def notice_payload(notice: Notice, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The generic JSON body: the notice's fields, plus the decision's numbers when known."""
    payload: dict[str, Any] = {"release": notice.release, "reason": notice.reason, "message": notice.message,
                               "severity": "warning" if notice.warning else "info"}
    if notice.namespace:
        payload["namespace"] = notice.namespace
    if details:
        payload["details"] = dict(details)
    return payload


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats <...> as links and mentions (<!channel>); escape exactly what Slack asks for.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def slack_text(notice: Notice, details: Mapping[str, Any] | None = None) -> str:
    """One Slack message: headline, the machine's message, then the decision's numbers."""
    icon = ":warning:" if notice.warning else _ICONS.get(notice.reason, ":information_source:")
    lines = [f"{icon} *{_slack_escape(notice.release)}* — {_slack_escape(notice.reason)}",
             _slack_escape(notice.message)]
    if details and details.get("verdict"):
        # An experiment's look: its own decision (`decision`), not its guardrails' verdict.
        shown = details.get("decision") or details["verdict"]
        lines.append(f"analysis at t={_number(details.get('t'))}s, weight {details.get('weight')}%: "
                     f"*{_slack_escape(str(shown))}* → {_slack_escape(str(details.get('action', '')))}")
        for c in details.get("checks", ()):
            lines.append(f"• {_slack_escape(str(c.get('service')))} {_slack_escape(str(c.get('check')))}: "
                         f"e-value {_number(c.get('eValue'))} / threshold {_number(c.get('threshold'))} "
                         f"({_slack_escape(str(c.get('verdict')))})")
        if "timeToDecisionSeconds" in details:
            lines.append(f"time to decision: {details['timeToDecisionSeconds']:.1f}s")
    return "\n".join(lines)


def _read_url(url: str | None, url_file: str | Path | None) -> str:
    if (url is None) == (url_file is None):
        raise ValueError("give exactly one of url and url_file")
    if url_file is not None:
        # The whole URL is the credential for Slack: keep it in a Secret file, not in the spec.
        return Secret.from_file(url_file).text()
    assert url is not None
    return url


class _WebhookNotifier:
    def __init__(self, url: str | None, url_file: str | Path | None, client: WebhookClient | None,
                 describe: Describe | None) -> None:
        self._url = _read_url(url, url_file)
        self.client = client or WebhookClient()
        self.describe = describe
        self.client.policy.check(self._url)  # refuse a bad URL at configuration time, loudly

    def _details(self, notice: Notice) -> Mapping[str, Any] | None:
        if self.describe is None:
            return notice.details
        try:
            return self.describe(notice)
        except Exception:  # the numbers are a nicety; the notice itself must still go out
            log.exception("describing notice %s of %s failed", notice.reason, notice.release)
            return None

    def notify(self, notice: Notice) -> None:
        try:
            self.deliver(notice)
        except Exception:  # a notifier must never break the tick that called it
            log.exception("notifier %r failed", self)

    def deliver(self, notice: Notice) -> Delivery:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self._url)})"


class SlackWebhookNotifier(_WebhookNotifier):
    """Slack (and Mattermost, Rocket.Chat...) incoming webhooks: `{"text": ...}` in mrkdwn."""

    def __init__(self, url: str | None = None, *, url_file: str | Path | None = None,
                 client: WebhookClient | None = None, describe: Describe | None = None) -> None:
        super().__init__(url, url_file, client, describe)
        # An incoming-webhook URL is the credential itself, however it was given.
        remember_secret(self._url)

    def deliver(self, notice: Notice) -> Delivery:
        body = json.dumps({"text": slack_text(notice, self._details(notice))}).encode()
        return self.client.post(self._url, body)


class JsonWebhookNotifier(_WebhookNotifier):
    """A generic JSON webhook, HMAC-signed when a secret (or a secret file) is given."""

    def __init__(self, url: str | None = None, *, url_file: str | Path | None = None, secret: Secret | None = None,
                 secret_file: str | Path | None = None, client: WebhookClient | None = None,
                 describe: Describe | None = None) -> None:
        super().__init__(url, url_file, client, describe)
        if secret is not None and secret_file is not None:
            raise ValueError("give at most one of secret and secret_file")
        self.secret = Secret.from_file(secret_file) if secret_file is not None else secret

    def deliver(self, notice: Notice) -> Delivery:
        body = json.dumps(notice_payload(notice, self._details(notice)), separators=(",", ":")).encode()
        return self.client.post(self._url, body, secret=self.secret)


class MultiNotifier:
    """Tells every notifier, in order; one failing does not keep the others from hearing."""

    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self.notifiers = tuple(notifiers)

    def notify(self, notice: Notice) -> None:
        for notifier in self.notifiers:
            try:
                notifier.notify(notice)
            except Exception:
                log.exception("notifier %r failed", notifier)


class QueuedNotifier:
    """Delivers on a worker thread of its own, in order, so slow webhooks never lengthen a tick.

    The queue is bounded: when the receivers are down for long, new notices are dropped (and logged)
    rather than held in memory without limit. `close()` delivers what is queued, up to a deadline.
    """

    _STOP = object()

    def __init__(self, inner: Notifier, maxsize: int = 1000) -> None:
        self.inner = inner
        self.dropped = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)
        self._thread.start()

    def notify(self, notice: Notice) -> None:
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            self.dropped += 1
            log.warning("notification queue full: dropped %s of %s", notice.reason, notice.release)

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._STOP:
            assert isinstance(item, Notice)
            try:
                self.inner.notify(item)
            except Exception:
                log.exception("notifier %r failed", self.inner)
            finally:
                self._queue.task_done()

    def close(self, timeout: float = 10.0) -> None:
        try:
            self._queue.put(self._STOP, timeout=timeout)
        except queue.Full:
            log.warning("notification queue still full at shutdown; %d notices not sent", self._queue.qsize())
            return
        self._thread.join(timeout)
