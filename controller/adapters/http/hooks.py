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
Payloads are JSON and signed exactly like notifications (`controller.adapters.http.signing`) when `secretFile` is set.
This module decides nothing about phases: `HookResult.passed` is what the machine reads.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

from controller.adapters.http.signing import Secret, SecretError
from controller.adapters.http.webhook import RetryPolicy, WebhookClient
from controller.core.spec.hooks import FailurePolicy, HookKind, HookResult, HookSpec

__all__ = ["HttpHooks"]

log = logging.getLogger(__name__)


class HttpHooks:
    """Runs hooks over HTTP with the shared webhook client (URL policy, timeouts, retries, signing)."""

    def __init__(self, client: WebhookClient | None = None) -> None:
        self.client = client or WebhookClient()

    def run(self, hook: HookSpec, payload: Mapping[str, Any]) -> HookResult:
        try:
            secret = Secret.from_file(hook.secret_file) if hook.secret_file else None
        except SecretError as exc:
            # Sending unsigned would let a receiver that checks signatures fail for an unclear reason.
            return self._judge(hook, False, None, f"secret: {exc}", 0.0, 0)
        body = json.dumps({**hook.metadata, **payload, "hook": hook.name, "kind": hook.kind.value},
                          separators=(",", ":"), default=str).encode()
        d = self.client.post(hook.url, body, secret=secret, timeout=hook.timeout,
                             retry=RetryPolicy(hook.retries + 1, self.client.retry.backoff,
                                               self.client.retry.max_backoff))
        ok = d.status == 200 if hook.kind is HookKind.CONFIRM_PROMOTION else d.ok
        return self._judge(hook, ok, d.status, d.reason, d.duration, d.attempts)

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
