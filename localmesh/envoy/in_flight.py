"""Requests the local mesh still has in flight per workload, from Envoy's own gauges: the controller's InFlight
port on the local platform (`controller.ports.InFlight`), so that a promotion's or rollback's drain waits for the
slow requests of the lane it retires (`controller.core.machine.phases`).

Envoy's `upstream_rq_active` of a cluster counts the requests it sent there and has not yet seen answered. A
cluster's statistics are named after the version it serves (`metrics.STAT_NAME`), every instance of it apart. The
local mesh is one Envoy for the entry and every hop, so a request is counted on each workload it is inside of.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import httpx

from controller.ports import TemporaryError
from localmesh.envoy.metrics import STAT_NAME
from localmesh.envoy.readback import parse_stats

__all__ = ["EnvoyInFlight"]

_ACTIVE = re.compile(rf"^cluster\.{STAT_NAME}\.upstream_rq_active$")


class EnvoyInFlight:
    """The InFlight port over Envoy's admin interface at `admin_target` (host:port)."""

    def __init__(self, admin_target: str, timeout_s: float = 5.0) -> None:
        self.admin_target = admin_target
        self.timeout_s = timeout_s

    def in_flight(self, workloads: Sequence[tuple[str, str]]) -> int:
        """The gauges summed over every cluster serving one of the (service, version) workloads."""
        wanted = set(workloads)
        try:
            response = httpx.get(f"http://{self.admin_target}/stats", timeout=self.timeout_s,
                                 params={"filter": "upstream_rq_active$"})
            response.raise_for_status()
            matches = ((_ACTIVE.match(name), value) for name, value in parse_stats(response.text).items())
            return sum(int(value) for m, value in matches if m and (m.group(2), m.group(1)) in wanted)
        except (httpx.HTTPError, ValueError) as exc:
            raise TemporaryError(f"Envoy's statistics unreadable: {exc!r}") from exc
