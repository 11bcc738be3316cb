"""Shared secrets and HMAC signatures of outgoing webhook bodies (notifications and release hooks).

A receiver verifies a delivery by recomputing
    HMAC-SHA256(secret, f"{timestamp}.{delivery}.".encode() + body)
over the exact bytes received and comparing it with `X-Stack-Canary-Signature: sha256=<hex>`; the
timestamp (`X-Stack-Canary-Timestamp`, whole seconds since the epoch) and the delivery id
(`X-Stack-Canary-Delivery`, the same for every try of one delivery) are part of the signed content, so a
captured delivery can be neither replayed later with a fresh timestamp nor passed off as another delivery.
The receiver rejects old timestamps and, within the window, ids it has seen (`ReplayGuard`).

Secrets come from a Kubernetes Secret (`secretRef`, the cluster) or a file (a local run, the controller's
own flags), never from the command line or the release spec itself, and a `Secret` never shows its value
in `repr` or `str`; creating one registers it with the log redaction filter (`controller.logs`).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.logs import remember_secret

SIGNATURE_HEADER = "X-Stack-Canary-Signature"
TIMESTAMP_HEADER = "X-Stack-Canary-Timestamp"
DELIVERY_HEADER = "X-Stack-Canary-Delivery"
# Generous enough for clock skew and retries with backoff, short enough to make replays useless.
DEFAULT_TOLERANCE_SECONDS = 300.0


class SecretError(ValueError):
    """A secret file is missing, unreadable or empty; the message names the path, never the content."""


class Secret:
    """A secret value that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not value:
            raise SecretError("the secret is empty")
        self._value = value
        # From now on no log line shows it, whoever logs it.
        remember_secret(value)

    @classmethod
    def from_file(cls, path: str | Path) -> Secret:
        """Read a secret from a file; surrounding whitespace (a trailing newline) is not part of it."""
        try:
            value = Path(path).read_bytes().strip()
        except OSError as exc:
            raise SecretError(f"cannot read secret file {path}: {exc.strerror or type(exc).__name__}") from None
        if not value:
            raise SecretError(f"secret file {path} is empty")
        return cls(value)

    def reveal(self) -> bytes:
        return self._value

    def text(self) -> str:
        """The value as text, for redaction filters that must recognise it in log lines."""
        return self._value.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("a Secret cannot be pickled")


def signature(secret: Secret, body: bytes, timestamp: int, delivery: str) -> str:
    """The signature header value for this body at this timestamp, for this delivery id."""
    mac = hmac.new(secret.reveal(), f"{timestamp}.{delivery}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def signed_headers(secret: Secret | None, body: bytes, now: float, delivery: str) -> dict[str, str]:
    """The timestamp and signature headers (none when there is no secret); the caller sends the delivery id."""
    if secret is None:
        return {}
    timestamp = int(now)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature(secret, body, timestamp, delivery)}


def verify(secret: Secret, body: bytes, headers: Mapping[str, str], now: float,
           tolerance: float = DEFAULT_TOLERANCE_SECONDS) -> bool:
    """What a receiver does: the signature matches the exact body and delivery id, the timestamp is recent."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        timestamp = int(lowered.get(TIMESTAMP_HEADER.lower(), ""))
    except ValueError:
        return False
    delivery = lowered.get(DELIVERY_HEADER.lower(), "")
    if abs(now - timestamp) > tolerance or not delivery:
        return False
    given = lowered.get(SIGNATURE_HEADER.lower(), "")
    return hmac.compare_digest(given, signature(secret, body, timestamp, delivery))


class ReplayGuard:
    """A receiver's replay check: a verified delivery id is acted on once within the timestamp window.

    Call `first_time(delivery, now)` after `verify` passed; False means a replay (or a retry of a delivery
    already acted on): answer 2xx and do nothing. Ids older than twice the window are forgotten, since
    `verify` refuses their timestamps anyway.
    """

    def __init__(self, tolerance: float = DEFAULT_TOLERANCE_SECONDS) -> None:
        self.tolerance = tolerance
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first_time(self, delivery: str, now: float) -> bool:
        with self._lock:
            self._seen = {d: t for d, t in self._seen.items() if now - t <= 2 * self.tolerance}
            if delivery in self._seen:
                return False
            self._seen[delivery] = now
            return True
