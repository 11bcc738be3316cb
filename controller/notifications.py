"""Command-line configuration of where notifications go and how hooks are called, for every runner.

The Kubernetes controller and the local runs (`canary demo`, `canary run --local`) take the same flags:

    --slack-webhook-file FILE     a Slack-compatible incoming webhook; the file holds the URL (a Secret)
    --notify-url URL              a generic JSON webhook (repeatable)
    --notify-url-file FILE        the same, with the URL kept in a file
    --notify-secret-file FILE     HMAC key that signs the JSON webhooks' payloads (controller.signing)
    --webhook-allow-host HOST     only these hosts may be called by notifications and hooks (repeatable;
                                  `*.example.com` for subdomains); default: any http(s) host

Deliveries run on a worker thread (`QueuedNotifier`) so a slow receiver never lengthens a tick; `close()`
the returned notifier at shutdown to deliver what is queued.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the HTTP modules load only when a runner starts, not for every `canary --help`
    from controller.hooks import HttpHooks
    from controller.notify import QueuedNotifier


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("notifications and hooks")
    g.add_argument("--slack-webhook-file", metavar="FILE",
                   help="file holding a Slack-compatible incoming-webhook URL (mount it from a Secret)")
    g.add_argument("--notify-url", action="append", default=[], metavar="URL",
                   help="a generic JSON webhook told about every step, promotion, rollback and result")
    g.add_argument("--notify-url-file", action="append", default=[], metavar="FILE",
                   help="a generic JSON webhook whose URL is kept in a file")
    g.add_argument("--notify-secret-file", metavar="FILE", help="HMAC key that signs the JSON webhooks' payloads")
    g.add_argument("--webhook-allow-host", action="append", default=None, metavar="HOST",
                   help="only call these hosts from notifications and hooks (repeatable; *.example.com)")


@dataclass
class Outgoing:
    """What a runner needs: the notifier (None when none is configured) and the hooks' caller."""

    notifier: QueuedNotifier | None
    hooks: HttpHooks

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()


def from_args(args: argparse.Namespace) -> Outgoing:
    """Build the notifiers and the hook caller; raises ValueError (bad URL, unreadable file) with a message."""
    from controller.hooks import HttpHooks
    from controller.notify import JsonWebhookNotifier, MultiNotifier, QueuedNotifier, SlackWebhookNotifier
    from controller.ports import Notifier
    from controller.webhook import UrlPolicy, WebhookClient

    client = WebhookClient(policy=UrlPolicy.allowing(args.webhook_allow_host))
    notifiers: list[Notifier] = []
    # Unreadable files raise SecretError and refused URLs RefusedUrl: both ValueErrors naming the problem.
    if args.slack_webhook_file:
        notifiers.append(SlackWebhookNotifier(url_file=args.slack_webhook_file, client=client))
    for url in args.notify_url:
        notifiers.append(JsonWebhookNotifier(url, secret_file=args.notify_secret_file, client=client))
    for path in args.notify_url_file:
        notifiers.append(JsonWebhookNotifier(url_file=path, secret_file=args.notify_secret_file, client=client))
    notifier = QueuedNotifier(MultiNotifier(notifiers)) if notifiers else None
    return Outgoing(notifier, HttpHooks(client))
