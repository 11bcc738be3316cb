"""Which URLs the controller may call (webhooks, hooks), and how a URL appears in logs.

Pure (no I/O), so the release spec can refuse a bad hook URL while it is parsed. URLs are treated as
credentials: a Slack incoming-webhook URL carries its token in the path, so only the scheme, host and
port of a URL ever reach a log line, a status or a `repr`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit


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
    shown = f"{parts.scheme or '?'}://{host}{port}/…"
    return "".join(ch if ch.isprintable() else "?" for ch in shown)  # one log line, no terminal escapes


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
        if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
            # urlsplit drops some of these silently: the URL called would not be the one written.
            raise RefusedUrl(f"{redact_url(url)}: whitespace or control characters in the URL")
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
