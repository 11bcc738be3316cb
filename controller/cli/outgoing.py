"""Command-line flags of where notifications go and how hooks are called, for every runner.

The Kubernetes controller and the local runs (`canary demo`, `canary run --local`) take the same flags:

    --slack-webhook-file FILE     a Slack-compatible incoming webhook; the file holds the URL (a Secret)
    --notify-url URL              a generic JSON webhook (repeatable)
    --notify-url-file FILE        the same, with the URL kept in a file
    --notify-secret-file FILE     HMAC key that signs the JSON webhooks' payloads (controller.adapters.http.signing)
    --webhook-allow-host HOST     only these hosts may be called by notifications and hooks (repeatable;
                                  `*.example.com` for subdomains); default: any http(s) host

`from_args` builds them with `controller.adapters.http.outgoing.build_outgoing`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the HTTP modules load only when a runner starts, not for every `canary --help`
    from controller.adapters.http.outgoing import Outgoing


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


def from_args(args: argparse.Namespace) -> Outgoing:
    """Build the notifiers and the hook caller; raises ValueError (bad URL, unreadable file) with a message."""
    from controller.adapters.http.outgoing import build_outgoing

    return build_outgoing(slack_webhook_file=args.slack_webhook_file, notify_urls=args.notify_url,
                          notify_url_files=args.notify_url_file, notify_secret_file=args.notify_secret_file,
                          allow_hosts=args.webhook_allow_host)
