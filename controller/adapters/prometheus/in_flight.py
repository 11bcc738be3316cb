"""Requests in flight on a cluster, from the Istio sidecars' own gauges as Prometheus scraped them.

Every Envoy of the mesh (each sidecar, the ingress gateway) keeps `upstream_rq_active` per upstream cluster: the
requests it sent there and has not yet seen answered. Istio names a subset's cluster
`outbound|<port>|<subset>|<service>.<namespace>.svc.<cluster domain>` and exports the gauge as
`envoy_cluster_upstream_rq_active{cluster_name="..."}`. Summed over every Envoy, the gauges of a subset's clusters
are the requests inside that subset's pods, as the callers see them: what a promotion's or rollback's drain waits
for (`controller.core.machine.phases`).

Istio records no cluster statistics by default: the sidecars' `proxyStatsMatcher` must include the gauge
(docs/kubernetes.md, "Draining on a cluster"). With no series at all the count is unknown (TemporaryError) and the
drain waits `drainTime` alone. A value is as old as the last scrape: a request that started
after it is seen at the next one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from controller.adapters.prometheus.client import PrometheusMetrics, PrometheusUnavailable, promql_string, regex_literal
from controller.ports import TemporaryError

__all__ = ["ACTIVE_METRIC", "PrometheusInFlight", "in_flight_query"]

ACTIVE_METRIC = "envoy_cluster_upstream_rq_active"
CLUSTER_LABEL = "cluster_name"


def cluster_pattern(namespace: str, service: str, subset: str) -> str:
    """An RE2 pattern matching the outbound cluster names of one subset of a service, on any port and under any
    cluster domain."""
    return (rf"outbound\|[0-9]+\|{regex_literal(subset)}\|"
            rf"{regex_literal(service)}\.{regex_literal(namespace)}\.svc\..+")


def in_flight_query(namespace: str, subsets: Sequence[tuple[str, str]]) -> str:
    """The sum of the gauges of every (service, subset) in `namespace`; every name is escaped."""
    if not subsets:
        raise ValueError("no subsets to count requests in flight on")
    patterns = sorted({cluster_pattern(namespace, service, subset) for service, subset in subsets})
    return f"sum({ACTIVE_METRIC}{{{CLUSTER_LABEL}=~{promql_string('|'.join(patterns))}}})"


class PrometheusInFlight:
    """Counts the requests in flight on subsets of a namespace's services (`requests_in_flight`)."""

    def __init__(self, provider: PrometheusMetrics, clock: Callable[[], float]) -> None:
        self.provider = provider
        self.clock = clock

    def requests_in_flight(self, namespace: str, subsets: Sequence[tuple[str, str]]) -> int:
        """The requests the mesh's Envoys have sent to these (service, subset) pairs and not yet seen answered;
        raises TemporaryError when Prometheus fails or has no series of the gauge for them."""
        try:
            vector = self.provider.instant(in_flight_query(namespace, subsets), self.clock(), "requests in flight")
        except PrometheusUnavailable as error:
            raise TemporaryError(error.reason) from error
        if not vector:
            raise TemporaryError(f"Prometheus has no {ACTIVE_METRIC} of {_names(subsets)} in {namespace}: the "
                                 "sidecars' proxyStatsMatcher does not include it (docs/kubernetes.md)")
        value = vector[0][1]
        if not math.isfinite(value):
            raise TemporaryError(f"Prometheus answered {value} for the requests in flight on {_names(subsets)}")
        return max(0, round(value))


def _names(subsets: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{service}/{subset}" for service, subset in subsets)
