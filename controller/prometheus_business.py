"""The business-metrics port on Prometheus: an experiment's primary metric as a configured custom metric.

This module owns the translation from `analysis.prometheus` custom metrics to `PrimaryCounts`. The
experiment's `primaryMetric.name` names a `counter_pair` custom metric of the Prometheus config
(numerator: the successes, e.g. `searchstack_clicks_total`; denominator: the trials, e.g.
`searchstack_impressions_total`, both PromQL templates), which the provider differences exactly per
(service, version). Only proportions: a mean metric needs a sum of squares, which a counter pair lacks.
A window in which no version has a series at all is `MetricsUnavailable`, not zero counts: the counters
are not scraped or the templates select nothing, and an experiment must not run on silence. A version
without series (not scraped yet) is absent from the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from analysis.abtest import PrimaryCounts
from analysis.observations import MetricsQuery
from analysis.prometheus import CustomWindow
from controller.business import BusinessQuery
from controller.ports import MetricsUnavailable

__all__ = ["PrometheusBusinessMetrics"]


class CustomMetrics(Protocol):
    def custom(self, name: str, query: MetricsQuery, start: float, end: float) -> CustomWindow: ...


class PrometheusBusinessMetrics:
    """Implements `controller.business.BusinessMetrics` over a `PrometheusSource` (or anything with `custom`)."""

    def __init__(self, source: CustomMetrics) -> None:
        self.source = source

    def business(self, query: BusinessQuery, start: float, end: float) -> Mapping[str, PrimaryCounts]:
        if query.kind != "proportion":
            raise MetricsUnavailable(f"primary metric {query.metric!r}: only proportion metrics come from "
                                     "Prometheus counter pairs (a mean needs a sum of squares)")
        window_query = MetricsQuery(namespace=query.namespace, services=(query.service,), versions=query.versions)
        try:
            window = self.source.custom(query.metric, window_query, start, end)
        except KeyError as error:
            raise MetricsUnavailable(f"primary metric {query.metric!r} is not a configured custom metric: "
                                     f"{error}") from None
        wanted = {(query.service, version) for version in query.versions}
        if wanted <= window.absent:
            raise MetricsUnavailable(f"primary metric {query.metric!r}: no series for {query.service} "
                                     f"{', '.join(query.versions)} in {query.namespace} (not scraped, or the "
                                     "templates select nothing)")
        out: dict[str, PrimaryCounts] = {}
        for (service, version), value in window.values.items():
            if (service, version) in window.absent or value.denominator is None:
                continue
            if service != query.service or version not in query.versions:
                continue
            trials = round(value.denominator)
            out[version] = PrimaryCounts.proportion(min(round(value.numerator), trials), trials)
        return out
