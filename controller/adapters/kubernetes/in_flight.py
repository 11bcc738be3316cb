"""The InFlight port on a cluster: the retiring workloads' requests in flight, counted on the subsets that serve them.

The machine asks about (service, version) workloads (`controller.core.machine.routes.retiring_workloads`); the
mesh counts requests per DestinationRule subset (the `stable` and `canary` subsets point at versions until the
cutover re-points them). So a version is looked up in the live DestinationRules (`IstioRouter.subsets_serving`)
and the subsets' requests are counted by a source of the sidecars' gauges (on Prometheus:
`controller.adapters.prometheus.in_flight`). Either failing, or no subset selecting the versions, leaves the count
unknown (TemporaryError): the drain then waits `drainTime` alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.adapters.kubernetes.routing import IstioRouter
from controller.ports import TemporaryError

__all__ = ["RequestsInFlight", "SubsetInFlight"]


class RequestsInFlight(Protocol):
    def requests_in_flight(self, namespace: str, subsets: Sequence[tuple[str, str]]) -> int:
        """Requests the mesh has sent to these (service, subset) pairs and not yet seen answered; raises
        PortError when it cannot tell."""


@dataclass
class SubsetInFlight:
    """Implements `controller.ports.InFlight` for one release's stack."""

    router: IstioRouter
    source: RequestsInFlight

    def in_flight(self, workloads: Sequence[tuple[str, str]]) -> int:
        subsets = self.router.subsets_serving(workloads)
        if not subsets:
            names = ", ".join(f"{service}@{version}" for service, version in workloads)
            raise TemporaryError(f"no DestinationRule subset in {self.router.namespace} selects {names}")
        return self.source.requests_in_flight(self.router.namespace, subsets)
