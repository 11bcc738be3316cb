"""Outgoing webhook deliveries: URL policy, signing, timeouts, bounded retries with backoff.

One small client serves the notifiers (`controller.notify`) and the release hooks (`controller.hooks`), so
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from controller.signing import Secret, signed_headers

log = logging.getLogger(__name__)

DELIVERY_HEADER = "X-Stack-Canary-Delivery"
USER_AGENT = "stack-canary-webhook/1"


class RefusedUrl(ValueError):
    """A URL the policy does not allow; the message names the scheme and host, never the path."""


def redact_url(url: str) -> str:
    """`scheme://host:port/…`: enough to find the receiver, nothing of a token in the path or query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable url>"
    return f"{parts.scheme or '?'}://{host}{port}/…"


@dataclass(frozen=True)
class UrlPolicy:
    """http(s) only, with credentials never in the URL; optionally only hosts of an allow-list.

    `allowed_hosts` entries are host names (exact, case-insensitive) or `*.example.com` for subdomains.
    """

    allowed_hosts: frozenset[str] | None = None

    @classmethod
    def allowing(cls, hosts: Iterable[str] | None) -> UrlPolicy:
        return cls(None if hosts is None else frozenset(h.lower().strip() for h in hosts if h.strip()))

    def check(self, url: str) -> None:
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            _ = parts.port  # raises on a malformed port
        except ValueError as exc:
            raise RefusedUrl(f"{redact_url(url)}: not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https"):
            raise RefusedUrl(f"{parts.scheme or 'no'} scheme in {redact_url(url)}: only http and https are allowed")
        if not host:
            raise RefusedUrl(f"{redact_url(url)}: the URL has no host")
        if parts.username or parts.password:
            raise RefusedUrl(f"{redact_url(url)}: credentials in the URL are not allowed; use a secret file")
        if self.allowed_hosts is not None and not self._allowed(host):
            raise RefusedUrl(f"host {host} is not in the webhook allow-list")

    def _allowed(self, host: str) -> bool:
        assert self.allowed_hosts is not None
        return any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in self.allowed_hosts)


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
        except httpx.TimeoutException as exc:
            return None, f"timed out ({type(exc).__name__})", b"", True
        except httpx.TransportError as exc:
            return None, f"connection failed ({type(exc).__name__})", b"", True
        text = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        return response.status_code, text, response.content[:65536], _retryable(response.status_code)
