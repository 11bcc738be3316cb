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

from collections.abc import Sequence
from dataclasses import dataclass

from controller.adapters.http.hooks import HttpHooks
from controller.adapters.http.notifiers import JsonWebhookNotifier, MultiNotifier, QueuedNotifier, SlackWebhookNotifier
from controller.adapters.http.webhook import UrlPolicy, WebhookClient
from controller.core.spec.hooks import HookRules
from controller.ports import Notifier, Secrets


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
    # Unreadable files raise SecretError and refused URLs RefusedUrl: both ValueErrors naming the problem.
    if slack_webhook_file:
        notifiers.append(SlackWebhookNotifier(url_file=slack_webhook_file, client=client))
    for url in notify_urls:
        notifiers.append(JsonWebhookNotifier(url, secret_file=notify_secret_file, client=client))
    for path in notify_url_files:
        notifiers.append(JsonWebhookNotifier(url_file=path, secret_file=notify_secret_file, client=client))
    notifier = QueuedNotifier(MultiNotifier(notifiers)) if notifiers else None
    return Outgoing(notifier, HttpHooks(client, rules, secrets))
