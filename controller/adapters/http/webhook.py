"""Outgoing webhook deliveries: URL policy, signing, timeouts, bounded retries with backoff.

One small client serves the notifiers (`notifiers.py`) and the release hooks (`hooks.py`) beside it, so
both refuse the same URLs, sign the same way and retry the same way. A delivery never raises: it returns a
`Delivery` saying what happened, and the caller decides whether that matters (a dead chat webhook must not
stop a rollback; a failed pre-rollout hook must stop a start).

URLs are treated as credentials: a Slack incoming-webhook URL carries its token in the path, so only the
scheme, host and port of a URL ever reach a log line or a `repr`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from controller.adapters.http.signing import Secret, signed_headers
from controller.core.urls import RefusedUrl, UrlPolicy, redact_url

__all__ = ["DELIVERY_HEADER", "Delivery", "RefusedUrl", "RetryPolicy", "UrlPolicy", "WebhookClient",
           "redact_url"]
log = logging.getLogger(__name__)

DELIVERY_HEADER = "X-Stack-Canary-Delivery"
USER_AGENT = "stack-canary-webhook/1"


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries in all; the wait before try n+1 is backoff * 2**(n-1), at most `max_backoff`."""

    attempts: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class Delivery:
    """The outcome of one delivery, after its retries."""

    ok: bool
    status: int | None
    reason: str
    attempts: int
    duration: float
    body: bytes = field(default=b"", repr=False)


def _check_sendable(url: str) -> None:
    """Refuse what the URL policy lets through but no HTTP client should send (and no log should show):
    control characters and whitespace, which `urlsplit` silently drops but httpx refuses by raising."""
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        shown = "".join(c if c.isprintable() and not c.isspace() else "?" for c in redact_url(url))
        raise RefusedUrl(f"{shown}: control characters or whitespace in the URL")


def _retryable(status: int) -> bool:
    # The receiver is overloaded or broken for now; any other answer will not change by asking again.
    return status >= 500 or status in (408, 429)


class WebhookClient:
    """Posts JSON bodies. `sleep` and `clock` are injectable so tests need not wait for backoffs."""

    def __init__(self, *, timeout: float = 5.0, policy: UrlPolicy | None = None, retry: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time,
                 transport: httpx.BaseTransport | None = None, trust_env: bool = False) -> None:
        self.timeout = timeout
        self.policy = policy or UrlPolicy()
        self.retry = retry or RetryPolicy()
        self.sleep, self.clock = sleep, clock
        self.transport, self.trust_env = transport, trust_env

    def post(self, url: str, body: bytes, *, secret: Secret | None = None, headers: Mapping[str, str] | None = None,
             retry: RetryPolicy | None = None, timeout: float | None = None) -> Delivery:
        """Deliver `body` (JSON bytes) to `url`; never raises."""
        started = time.monotonic()
        try:
            self.policy.check(url)
            _check_sendable(url)
        except RefusedUrl as exc:
            log.warning("webhook refused: %s", exc)
            return Delivery(False, None, f"refused: {exc}", 0, 0.0)
        retry = retry or self.retry
        delivery_id = str(uuid.uuid4())
        status, reason, answer, attempt = None, "", b"", 0
        with httpx.Client(timeout=timeout or self.timeout, transport=self.transport, trust_env=self.trust_env,
                          follow_redirects=False) as client:
            for attempt in range(1, max(1, retry.attempts) + 1):
                # Signed again on every try: the timestamp is part of the signed content.
                sent = {"Content-Type": "application/json", "User-Agent": USER_AGENT, DELIVERY_HEADER: delivery_id,
                        **(headers or {}), **signed_headers(secret, body, self.clock())}
                status, reason, answer, again = self._attempt(client, url, body, sent)
                if not again or attempt >= retry.attempts:
                    break
                log.info("webhook %s: %s; try %d of %d in %.2gs", redact_url(url), reason, attempt + 1,
                         retry.attempts, retry.delay(attempt))
                self.sleep(retry.delay(attempt))
        ok = status is not None and 200 <= status < 300
        if not ok:
            log.warning("webhook %s failed after %d tries: %s", redact_url(url), attempt, reason)
        return Delivery(ok, status, reason, attempt, time.monotonic() - started, answer)

    @staticmethod
    def _attempt(client: httpx.Client, url: str, body: bytes, headers: Mapping[str, str]
                 ) -> tuple[int | None, str, bytes, bool]:
        """(status, reason, response body, whether to try again)."""
        try:
            response = client.post(url, content=body, headers=dict(headers))
        except (httpx.InvalidURL, UnicodeError) as exc:
            # A host name that does not encode (IDNA) or a URL httpx cannot send: asking again won't help.
            return None, f"invalid URL ({type(exc).__name__})", b"", False
        except httpx.TimeoutException as exc:
            return None, f"timed out ({type(exc).__name__})", b"", True
        except httpx.TransportError as exc:
            return None, f"connection failed ({type(exc).__name__})", b"", True
        text = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        return response.status_code, text, response.content[:65536], _retryable(response.status_code)
