"""Logging for the controller: one JSON object per line, release context on every line, secrets redacted.

- `JsonFormatter` writes `time`, `level`, `logger`, `message` and, when known, `release`, `namespace`,
  `phase` and `step`: from `extra={...}` of the call, else from the context set by `release_context()`
  around a tick (a contextvar, so worker threads each carry their own release).
- `RedactingFilter` replaces every known secret value in the final message (and exception text) by `***`.
  Secrets read through `controller.adapters.http.signing.Secret` register themselves with `remember_secret()`. URLs are
  credentials too (a hook's or a chat webhook's token is in its path or query), and HTTP libraries log
  whole request URLs (httpx: `HTTP Request: POST <url>` at INFO): in their lines, and in every exception
  text, a URL keeps only its scheme, host and port (`controller.core.urls.redact_url`).
- `configure_logging(level, json=True)` installs one handler on the root logger; calling it again
  replaces that handler instead of adding another.
"""

from __future__ import annotations

import contextlib
import contextvars
import json as jsonlib
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from controller.core.urls import redact_url

CONTEXT_FIELDS = ("release", "namespace", "phase", "step")
REDACTED = "***"
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("stack_canary_log_context",
                                                                                 default=None)
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_HANDLER_NAME = "stack-canary"
# Loggers of HTTP client libraries, which put whole request URLs into their lines.
_URL_LOGGERS = ("httpx", "httpcore", "urllib3", "requests")
_URL = re.compile(r"\bhttps?://[^\s\"'<>]+", re.IGNORECASE)


def remember_secret(value: str | bytes) -> None:
    """Redact this value from every log line from now on (values shorter than 4 characters are not
    remembered: redacting them would mangle ordinary words and reveal more than it hides)."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if len(text) >= 4:
        with _secrets_lock:
            _secrets.add(text)


def known_secrets() -> frozenset[str]:
    with _secrets_lock:
        return frozenset(_secrets)


def restore_secrets(values: frozenset[str]) -> None:
    """Make `values` the whole set of redacted values again (what `known_secrets()` returned before): for a
    process that runs several independent jobs in turn, such as the test suite."""
    with _secrets_lock:
        _secrets.clear()
        _secrets.update(values)


@contextlib.contextmanager
def release_context(**fields: Any) -> Iterator[None]:
    """Tag every log line inside the block with these fields (merged over any outer context)."""
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get() or {})


class JsonFormatter(logging.Formatter):
    """One JSON object per line; non-JSON values are written as their `str`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _context.get() or {}
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, context.get(key))
            if value is not None:
                entry[key] = value
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return jsonlib.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The human format, with the release context appended when there is one; times in UTC, marked `Z`, as
    `canary get`, the history and the report give them."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context.get() or {}
        tags = [f"{k}={getattr(record, k, context.get(k))}" for k in CONTEXT_FIELDS
                if getattr(record, k, context.get(k)) is not None]
        return f"{line} [{' '.join(tags)}]" if tags else line


class RedactingFilter(logging.Filter):
    """Replaces known secret values in the rendered message and exception text of every record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.extra = frozenset(s for s in secrets if len(s) >= 4)

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self.extra | known_secrets()
        url_logger = record.name.split(".", 1)[0] in _URL_LOGGERS
        if not secrets and not url_logger and not record.exc_info and not record.exc_text:
            return True
        message = record.getMessage()
        redacted = _redact(message, secrets)
        if url_logger:
            redacted = redact_urls(redacted)
        if redacted != message:
            # Freeze the rendered message: the arguments may hold the secret too.
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_urls(_redact(record.exc_text, secrets))
        return True


def redact_urls(text: str) -> str:
    """Every http(s) URL in `text` cut down to `scheme://host:port/…`."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def _redact(text: str, secrets: Iterable[str]) -> str:
    # Longest first, so a secret that contains another is hidden whole.
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def configure_logging(level: str | int = "INFO", json: bool = True, stream: TextIO | None = None,
                      secrets: Iterable[str] = ()) -> logging.Handler:
    """Install the controller's single root handler (replacing an earlier one) and return it."""
    level_number = _level(level)  # refuse a bad level before touching the handlers
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root.addHandler(handler)
    root.setLevel(level_number)
    return handler


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r} (use debug, info, warning, error or critical)")
    return value
