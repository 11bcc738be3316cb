"""Release hooks: HTTP calls the release makes at fixed points, and what their answers mean.

Kinds (the `kind` field of a hook in the release spec):
- `preRollout`: called before the canary is deployed; it must pass (2xx) for the release to start.
- `loadTest`: asks a load generator to drive traffic during analysis when natural traffic is too low;
  fire-and-forget (`HttpHooks.fire`): the release does not wait for the load, only for the request.
- `confirmPromotion`: a manual gate; exactly HTTP 200 proceeds, any other answer (or none) means wait.
  It is asked again on later ticks, so it is never retried within one call.
- `postRollout`: told after a promotion; `onRollback`: told when a rollback starts.

A hook's `failurePolicy` says whether a failed call matters: `fail` (the default for preRollout and
confirmPromotion) or `ignore` (the default for the others: their result is logged and the release goes on).
Payloads are JSON and signed exactly like notifications (`controller.adapters.http.signing`) when the hook
names a secret: `secretRef` (a Kubernetes Secret of the release's namespace, read through the `Secrets`
port) or, in a local run only, `secretFile` under one of the allowed directories. Before anything is
read or sent, the runner's `HookRules` (`controller.core.spec.hooks.refusals`) may refuse the hook: its
URL is outside the URL policy, or its secret's source is not allowed here. The result written into the
status says pass/fail and a sanitised reason (`Delivery.outcome`: "refused by policy", "timed out",
"rejected (4xx)", "server error (5xx)", "unreachable"), and a status code only when the call passed: a
release must not learn from its hooks' answers what listens where. The detail goes to the log.
This module decides nothing about phases: `HookResult.passed` is what the machine reads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from controller.adapters.http.signing import Secret, SecretError
from controller.adapters.http.webhook import REFUSED, RetryPolicy, WebhookClient
from controller.core.spec.hooks import FailurePolicy, HookKind, HookResult, HookRules, HookSpec, refusals
from controller.ports import Secrets, SecretUnavailable

__all__ = ["HttpHooks"]

log = logging.getLogger(__name__)


class HttpHooks:
    """Runs hooks over HTTP with the shared webhook client (URL policy, timeouts, retries, signing).

    `rules` say what this runner lets a hook do (default: the client's URL policy and no secret files);
    `secrets` reads a hook's `secretRef` (None: a hook with one is refused).
    """

    def __init__(self, client: WebhookClient | None = None, rules: HookRules | None = None,
                 secrets: Secrets | None = None) -> None:
        self.client = client or WebhookClient()
        self.rules = rules or HookRules(self.client.policy)
        self.secrets = secrets

    def refusals(self, hook: HookSpec) -> list[str]:
        return refusals(hook, self.rules)

    def run(self, hook: HookSpec, payload: Mapping[str, Any]) -> HookResult:
        refused = refusals(hook, self.rules)
        if refused:
            log.warning("hook %s refused before any call: %s", hook.name, "; ".join(refused))
            return self._judge(hook, False, None, f"{REFUSED}: {'; '.join(refused)}", 0.0, 0)
        try:
            secret = self._secret(hook, str(payload.get("namespace", "")))
        except (SecretError, SecretUnavailable) as exc:
            # Sending unsigned would let a receiver that checks signatures fail for an unclear reason.
            return self._judge(hook, False, None, f"secret: {exc}", 0.0, 0)
        body = json.dumps({**hook.metadata, **payload, "hook": hook.name, "kind": hook.kind.value},
                          separators=(",", ":"), default=str).encode()
        d = self.client.post(hook.url, body, secret=secret, timeout=hook.timeout,
                             retry=RetryPolicy(hook.retries + 1, self.client.retry.backoff,
                                               self.client.retry.max_backoff))
        ok = d.status == 200 if hook.kind is HookKind.CONFIRM_PROMOTION else d.ok
        reason = "not confirmed (2xx other than 200)" if d.ok and not ok else d.outcome
        return self._judge(hook, ok, d.status if ok else None, reason, d.duration, d.attempts)

    def _secret(self, hook: HookSpec, namespace: str) -> Secret | None:
        """The hook's signing key from where the rules allow it; raises SecretError or SecretUnavailable."""
        if hook.secret_ref is not None:
            if self.secrets is None:
                raise SecretUnavailable("this runner reads no Secrets (secretRef)")
            return Secret(self.secrets.read(namespace, hook.secret_ref.name, hook.secret_ref.key))
        if hook.secret_file is None:
            return None
        # `refusals` checked the path as written; a symbolic link must not lead out of the allowed places.
        real = os.path.realpath(hook.secret_file)
        if not self.rules.allows_file(real):
            raise SecretError(f"secret file {hook.secret_file} resolves outside the allowed directories")
        return Secret.from_file(real)

    def fire(self, hook: HookSpec, payload: Mapping[str, Any]) -> threading.Thread:
        """Run a hook on a thread of its own and return at once (the load test driver); the result is logged."""
        def call() -> None:
            result = self.run(hook, payload)
            log.info("hook %s (%s): %s in %.2fs", hook.name, hook.kind.value, result.reason, result.duration)

        thread = threading.Thread(target=call, name=f"hook-{hook.name}", daemon=True)
        thread.start()
        return thread

    @staticmethod
    def _judge(hook: HookSpec, ok: bool, status: int | None, reason: str, duration: float,
               attempts: int) -> HookResult:
        if ok:
            return HookResult(True, status, reason or "ok", duration, attempts)
        if hook.kind is HookKind.CONFIRM_PROMOTION:
            return HookResult(False, status, f"waiting for confirmation: {reason}", duration, attempts)
        if hook.failure_policy is FailurePolicy.IGNORE:
            log.warning("hook %s (%s) failed, ignored by its failurePolicy: %s", hook.name, hook.kind.value, reason)
            return HookResult(True, status, f"failed but ignored: {reason}", duration, attempts)
        return HookResult(False, status, reason, duration, attempts)
