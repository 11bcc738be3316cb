"""Outgoing webhook deliveries: URL policy, signing, timeouts, bounded retries with backoff.

One small client serves the notifiers (`notifiers.py`) and the release hooks (`hooks.py`) beside it, so
both refuse the same URLs, sign the same way and retry the same way. A delivery never raises: it returns a
`Delivery` saying what happened, and the caller decides whether that matters (a dead chat webhook must not
stop a rollback; a failed pre-rollout hook must stop a start).

URLs are treated as credentials: a Slack incoming-webhook URL carries its token in the path, so only the
scheme, host and port of a URL ever reach a log line or a `repr`.

What a delivery says about the network is kept apart: `Delivery.reason` is the detail for the controller's
log (`HTTP 503 Service Unavailable`, `connection failed (ConnectError)`), `Delivery.outcome` the sanitised
class a status may show (`outcome_of`), so a release cannot map the network through its hooks' answers.
A reply is streamed and read up to `MAX_REPLY_BYTES`, never further.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from controller.adapters.http.signing import DELIVERY_HEADER, Secret, signed_headers
from controller.core.urls import RefusedUrl, UrlPolicy, redact_url

__all__ = ["DELIVERY_HEADER", "MAX_REPLY_BYTES", "Delivery", "RefusedUrl", "RetryPolicy", "UrlPolicy", "WebhookClient",
           "outcome_of",
           "redact_url"]
log = logging.getLogger(__name__)

USER_AGENT = "stack-canary-webhook/1"
MAX_REPLY_BYTES = 65536
REFUSED = "refused by policy"
TIMED_OUT = "timed out"
UNREACHABLE = "unreachable"
INVALID_URL = "invalid URL"


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
    reason: str  # the detail, for the controller's log only
    attempts: int
    duration: float
    body: bytes = field(default=b"", repr=False)
    # Without a status: REFUSED, TIMED_OUT, UNREACHABLE or INVALID_URL (what `outcome` shows).
    failure: str = ""

    @property
    def outcome(self) -> str:
        """The sanitised result a status may show: pass/fail and the class of the answer, nothing more."""
        return outcome_of(self.status, self.failure)


def outcome_of(status: int | None, failure: str = "") -> str:
    """`ok`, `rejected (4xx)`, `server error (5xx)`, `unexpected answer (3xx)`, or a failure without answer."""
    if status is None:
        return failure or UNREACHABLE
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500:
        return "rejected (4xx)"
    if status >= 500:
        return "server error (5xx)"
    return f"unexpected answer ({status // 100}xx)"


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
            return Delivery(False, None, f"refused: {exc}", 0, 0.0, failure=REFUSED)
        retry = retry or self.retry
        delivery_id = str(uuid.uuid4())
        status, reason, answer, attempt, failure = None, "", b"", 0, ""
        with httpx.Client(timeout=timeout or self.timeout, transport=self.transport, trust_env=self.trust_env,
                          follow_redirects=False) as client:
            for attempt in range(1, max(1, retry.attempts) + 1):
                # Signed again on every try: the timestamp is part of the signed content, and so is the
                # delivery id (the same for every try), which a receiver keeps to drop replays.
                sent = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "Accept-Encoding": "identity",
                        **(headers or {}),
                        DELIVERY_HEADER: delivery_id, **signed_headers(secret, body, self.clock(), delivery_id)}
                status, reason, answer, again, failure = self._attempt(client, url, body, sent)
                if not again or attempt >= retry.attempts:
                    break
                log.info("webhook %s: %s; try %d of %d in %.2gs", redact_url(url), reason, attempt + 1,
                         retry.attempts, retry.delay(attempt))
                self.sleep(retry.delay(attempt))
        ok = status is not None and 200 <= status < 300
        if not ok:
            log.warning("webhook %s failed after %d tries: %s", redact_url(url), attempt, reason)
        return Delivery(ok, status, reason, attempt, time.monotonic() - started, answer, failure)

    @staticmethod
    def _attempt(client: httpx.Client, url: str, body: bytes, headers: Mapping[str, str]
                 ) -> tuple[int | None, str, bytes, bool, str]:
        """(status, reason, response body, whether to try again, the failure when there is no status)."""
        try:
            with client.stream("POST", url, content=body, headers=dict(headers)) as response:
                answer = _read_limited(response)
        except (httpx.InvalidURL, UnicodeError) as exc:
            # A host name that does not encode (IDNA) or a URL httpx cannot send: asking again won't help.
            return None, f"invalid URL ({type(exc).__name__})", b"", False, INVALID_URL
        except httpx.TimeoutException as exc:
            return None, f"timed out ({type(exc).__name__})", b"", True, TIMED_OUT
        except httpx.TransportError as exc:
            return None, f"connection failed ({type(exc).__name__})", b"", True, UNREACHABLE
        text = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        return response.status_code, text, answer, _retryable(response.status_code), ""


def _read_limited(response: httpx.Response) -> bytes:
    """At most MAX_REPLY_BYTES of the reply; the rest is never read (the connection is closed instead)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_raw(chunk_size=16384):
        chunks.append(chunk[:MAX_REPLY_BYTES - size])
        size += len(chunks[-1])
        if size >= MAX_REPLY_BYTES:
            break
    return b"".join(chunks)
