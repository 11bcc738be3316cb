"""What a runner calls outward: the chat/webhook notifier and the release hooks' caller, built together.

Both share one `WebhookClient`, so notifications and hooks refuse the same URLs, time out and retry the
same way. The cluster controller (`cluster=True`) calls in-cluster Services and the `allow_hosts` only,
and its hooks take their keys from Kubernetes Secrets (`secrets`), never from files; a local run calls any
http(s) host unless `allow_hosts` is given, and reads a hook's `secretFile` only under `secret_dirs`.
Deliveries run on a worker thread (`QueuedNotifier`) so a slow receiver never lengthens a tick; `close()`
at shutdown delivers what is queued. The command-line flags that fill these values are
`controller.cli.outgoing`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from controller.adapters.http.hooks import HttpHooks
from controller.adapters.http.notifiers import JsonWebhookNotifier, MultiNotifier, QueuedNotifier, SlackWebhookNotifier
from controller.adapters.http.signing import Secret
from controller.adapters.http.webhook import UrlPolicy, WebhookClient
from controller.core.spec.hooks import HookRules
from controller.ports import Notifier, Secrets

T = TypeVar("T")


@dataclass
class Outgoing:
    """What a runner needs: the notifier (None when none is configured) and the hooks' caller."""

    notifier: QueuedNotifier | None
    hooks: HttpHooks

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()


def build_outgoing(*, slack_webhook_file: str | None = None, notify_urls: Sequence[str] = (),
                   notify_url_files: Sequence[str] = (), notify_secret_file: str | None = None,
                   allow_hosts: Sequence[str] | None = None, cluster: bool = False,
                   secret_dirs: Sequence[str] = (), secrets: Secrets | None = None) -> Outgoing:
    """Build the notifiers and the hook caller; raises ValueError (bad URL, unreadable file) with a message."""
    policy = UrlPolicy.in_cluster(allow_hosts) if cluster else UrlPolicy.allowing(allow_hosts)
    rules = HookRules.cluster(allow_hosts) if cluster else HookRules.local(secret_dirs, policy)
    client = WebhookClient(policy=policy)
    notifiers: list[Notifier] = []
    # Unreadable files raise SecretError and refused URLs RefusedUrl: both ValueErrors naming the problem, here
    # prefixed with the flag that gave the value (a URL is not repeated: the policy's message shows what it may).
    secret = (_flagged("--notify-secret-file", lambda: Secret.from_file(notify_secret_file))
              if notify_secret_file else None)
    if secret is not None and not (notify_urls or notify_url_files):
        raise ValueError("--notify-secret-file signs the JSON webhooks' payloads, but no --notify-url or "
                         "--notify-url-file is given")
    if slack_webhook_file:
        notifiers.append(_flagged(f"--slack-webhook-file {slack_webhook_file}",
                                  lambda: SlackWebhookNotifier(url_file=slack_webhook_file, client=client)))
    for url in notify_urls:
        notifiers.append(_flagged("--notify-url", partial(JsonWebhookNotifier, url, secret=secret, client=client)))
    for path in notify_url_files:
        notifiers.append(_flagged(f"--notify-url-file {path}",
                                  partial(JsonWebhookNotifier, url_file=path, secret=secret, client=client)))
    notifier = QueuedNotifier(MultiNotifier(notifiers)) if notifiers else None
    return Outgoing(notifier, HttpHooks(client, rules, secrets))


def _flagged(flag: str, build: Callable[[], T]) -> T:
    try:
        return build()
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None
