"""Waiting for a real Prometheus to have scraped: on the scrape's own timestamp, never on a sleep."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

from controller.adapters.prometheus.server import PrometheusProcess


def last_scrape(prometheus: PrometheusProcess, instance: str | None = None) -> float:
    """The timestamp of the newest scrape of `instance` (host:port; None: of the only target), 0.0 before any."""
    selector = f'up{{instance="{instance}"}}' if instance is not None else "up"
    query = urllib.parse.urlencode({"query": f"timestamp({selector})"})
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/query?{query}", timeout=2) as r:
        result = json.loads(r.read())["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def scrape_after(prometheus: PrometheusProcess, instance: str | None = None, t: float | None = None,
                 timeout_s: float = 15.0) -> float:
    """Wait (bounded) until a scrape of `instance` stamped after `t` (default: now) has landed; its timestamp."""
    t = time.time() if t is None else t
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        landed = last_scrape(prometheus, instance)
        if landed > t:
            return landed
        time.sleep(0.1)
    raise AssertionError(f"no scrape of {instance or 'the target'} stamped after {t} landed within {timeout_s} s")
