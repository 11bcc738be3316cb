"""Which URLs the controller may call (webhooks, hooks), and how a URL appears in logs.

Pure (no I/O), so the release spec can refuse a bad hook URL while it is parsed. URLs are treated as
credentials: a Slack incoming-webhook URL carries its token in the path, so only the scheme, host and
port of a URL ever reach a log line, a status or a `repr`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

# Host names of in-cluster Services: `name.namespace.svc[.cluster.local]`, or one label (the own namespace).
CLUSTER_SUFFIXES = (".svc", ".svc.cluster.local")
# Single labels that name this very pod, not a Service: the controller's own ports are not a hook receiver.
_NOT_SERVICES = frozenset({"localhost"})
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# What inet_aton (and so a resolver) would read as an address: `2130706433`, `0x7f000001`, `127.1`.
_NUMERIC_HOST = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*")


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


def is_ip_literal(host: str) -> bool:
    if _NUMERIC_HOST.fullmatch(host.lower()):
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def is_cluster_service(host: str) -> bool:
    """`*.svc`, `*.svc.cluster.local` or a single label; never an IP literal nor `localhost`."""
    host = host.lower().rstrip(".")
    if not _DNS_NAME.fullmatch(host) or is_ip_literal(host) or host in _NOT_SERVICES:
        return False
    return "." not in host or any(host.endswith(s) and len(host) > len(s) for s in CLUSTER_SUFFIXES)


@dataclass(frozen=True)
class UrlPolicy:
    """http(s) only, with credentials never in the URL; optionally only hosts of an allow-list.

    `allowed_hosts` entries are host names (exact, case-insensitive) or `*.example.com` for subdomains.
    With `cluster_services` (the cluster controller's default) in-cluster Service names are allowed too
    (`is_cluster_service`) and nothing else but the allow-list: no IP literal, no outside name.
    """

    allowed_hosts: frozenset[str] | None = None
    cluster_services: bool = False

    @classmethod
    def allowing(cls, hosts: Iterable[str] | None) -> UrlPolicy:
        return cls(None if hosts is None else frozenset(h.lower().strip() for h in hosts if h.strip()))

    @classmethod
    def in_cluster(cls, hosts: Iterable[str] | None = None) -> UrlPolicy:
        """The cluster controller's policy: in-cluster Services, plus the hosts the cluster admin allows."""
        return cls(frozenset(h.lower().strip() for h in hosts or () if h.strip()), cluster_services=True)

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
        if self.cluster_services and not (is_cluster_service(host) or self._allowed(host)):
            raise RefusedUrl(f"host {host} is refused by the controller's URL policy: only in-cluster Services "
                             "(*.svc, *.svc.cluster.local, one label; no IP address) and the hosts its "
                             "--webhook-allow-host flags name")
        if not self.cluster_services and self.allowed_hosts is not None and not self._allowed(host):
            raise RefusedUrl(f"host {host} is not in the webhook allow-list")

    def _allowed(self, host: str) -> bool:
        if self.allowed_hosts is None:
            return False
        return any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in self.allowed_hosts)
