"""Command-line flags of where notifications go and how hooks are called, for every runner.

The Kubernetes controller and the local runs (`canary demo`, `canary run --local`) take the same flags:

    --slack-webhook-file FILE     a Slack-compatible incoming webhook; the file holds the URL (a Secret)
    --notify-url URL              a generic JSON webhook (repeatable; seen in `ps` and the pod spec)
    --notify-url-file FILE        the same, with the URL kept in a file
    --notify-secret-file FILE     HMAC key that signs the JSON webhooks' payloads (controller.adapters.http.signing)
    --webhook-allow-host HOST     hosts notifications and hooks may call (repeatable; `*.example.com` for
                                  subdomains). The cluster controller: in-cluster Services (`*.svc`,
                                  `*.svc.cluster.local`, one label; no IP address) plus these. A local
                                  run: only these when given, else any http(s) host.
    --hook-secret-dir DIR         local runs: a directory a hook's `secretFile` (or `secretRef`, as
                                  DIR/<name>/<key>) may be read from (repeatable), besides the release's
                                  `--workdir`. The cluster controller reads no files for a release: its
                                  hooks name Kubernetes Secrets (`secretRef`).

`from_args` builds them with `controller.adapters.http.outgoing.build_outgoing`.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the HTTP modules load only when a runner starts, not for every `canary --help`
    from controller.adapters.http.outgoing import Outgoing
    from controller.ports import Secrets


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("notifications and hooks")
    g.add_argument("--slack-webhook-file", metavar="FILE",
                   help="file holding a Slack-compatible incoming-webhook URL (mount it from a Secret)")
    g.add_argument("--notify-url", action="append", default=[], metavar="URL",
                   help="a generic JSON webhook told about every step, promotion, rollback and result (the "
                        "URL shows in the pod spec and the process list: one that carries a token belongs in "
                        "--notify-url-file)")
    g.add_argument("--notify-url-file", action="append", default=[], metavar="FILE",
                   help="a generic JSON webhook whose URL is kept in a file")
    g.add_argument("--notify-secret-file", metavar="FILE", help="HMAC key that signs the JSON webhooks' payloads")
    g.add_argument("--webhook-allow-host", action="append", default=None, metavar="HOST",
                   help="hosts notifications and hooks may call (repeatable; *.example.com); the cluster "
                        "controller also calls in-cluster Services, a local run any host when none is given")
    g.add_argument("--hook-secret-dir", action="append", default=[], metavar="DIR",
                   help="local runs: a directory hooks' secretFile/secretRef may be read from (repeatable; "
                        "besides --workdir); the cluster controller reads Kubernetes Secrets only")


def secret_dirs(args: argparse.Namespace) -> list[str]:
    """Where a local run's hooks may read secrets: the `--hook-secret-dir`s and the release's workdir."""
    dirs = [*getattr(args, "hook_secret_dir", []), *([args.workdir] if getattr(args, "workdir", None) else [])]
    return [os.path.abspath(d) for d in dirs]


def from_args(args: argparse.Namespace, *, secrets: Secrets | None = None) -> Outgoing:
    """Build the notifiers and the hook caller; raises ValueError (bad URL, unreadable file) with a message.

    With `secrets` (the cluster controller's Kubernetes Secrets) the cluster's rules apply; else a local
    run's, with its hooks' secrets read from `secret_dirs(args)`.
    """
    from controller.adapters.http.outgoing import build_outgoing

    cluster = secrets is not None
    if secrets is None:
        from controller.adapters.local.secrets import DirectorySecrets

        secrets = DirectorySecrets(secret_dirs(args))
    return build_outgoing(slack_webhook_file=args.slack_webhook_file, notify_urls=args.notify_url,
                          notify_url_files=args.notify_url_file, notify_secret_file=args.notify_secret_file,
                          allow_hosts=args.webhook_allow_host, cluster=cluster,
                          secret_dirs=[] if cluster else secret_dirs(args), secrets=secrets)
