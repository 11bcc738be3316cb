"""The business-metrics port on Prometheus: an experiment's primary metric as a configured custom metric.

This module owns the translation from `controller.adapters.prometheus.client` custom metrics to `PrimaryCounts`. The
experiment's `primaryMetric.name` names a `counter_pair` custom metric of the Prometheus config (numerator:
the successes, e.g. `searchstack_clicks_total`; denominator: the trials, e.g. `searchstack_impressions_total`,
both PromQL templates), which the provider differences exactly per (service, version). A mean metric (`kind:
mean`) is two counter pairs over the same count: `<name>` (numerator: the sum of the values, denominator: how
many values) and `<name>.squares` (numerator: the sum of the values' squares, same denominator);
`mean_metric_config` writes both for a Prometheus config, and `CLICK_VALUE` are the search stack's (mean value
per click). A window in which no version has a series at all is `MetricsUnavailable`, not zero counts: the
counters are not scraped or the templates select nothing, and an experiment must not run on silence. A version
without series (not scraped yet) is absent from the answer. Optionally, a counter pair `<name>.units` gives
each version's users assigned in the window (its numerator: `ASSIGNMENTS` for the search stack), the
units of the experiment's sample-ratio check; without it `units` is None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from analysis.abtest import PrimaryCounts
from analysis.observations import MetricsQuery
from controller.adapters.prometheus.client import CustomWindow
from controller.ports import BusinessQuery, MetricsUnavailable

__all__ = ["ASSIGNMENTS", "CLICK_VALUE", "SQUARES_SUFFIX", "UNITS_SUFFIX", "PrometheusBusinessMetrics",
           "mean_metric_config", "units_metric_config"]

UNITS_SUFFIX = ".units"  # optional: its numerator's increase is the users assigned (the SRM check's units)
SQUARES_SUFFIX = ".squares"  # custom metric names allow letters, digits, _ . -
_PAIR = "{{namespace={{namespace}},service={{service}},version={{version}}}}"
# The search stack's click values (searchstack/telemetry.py): (sum, sum of squares, count) templates.
CLICK_VALUE = (
    "searchstack_click_value_total" + _PAIR.format(),
    "searchstack_click_value_squares_total" + _PAIR.format(),
    "searchstack_clicks_total" + _PAIR.format(),
)


# Users assigned per version (searchstack_assignments_total), over impressions (the pair's denominator is
# not used for units, but a counter pair needs one).
ASSIGNMENTS = (
    "searchstack_assignments_total" + _PAIR.format(),
    "searchstack_impressions_total" + _PAIR.format(),
)


def units_metric_config(name: str, assigned: str, other: str) -> dict[str, dict[str, str]]:
    """The optional `custom_metrics` entry that gives primary metric `name` its units (users assigned)."""
    return {name + UNITS_SUFFIX: {"kind": "counter_pair", "numerator": assigned, "denominator": other}}


def mean_metric_config(name: str, total: str, squares: str, count: str) -> dict[str, dict[str, str]]:
    """The `custom_metrics` entries of a mean primary metric `name` (PromQL templates of counters)."""
    return {name: {"kind": "counter_pair", "numerator": total, "denominator": count},
            name + SQUARES_SUFFIX: {"kind": "counter_pair", "numerator": squares, "denominator": count}}


class CustomMetrics(Protocol):
    def custom(self, name: str, query: MetricsQuery, start: float, end: float) -> CustomWindow: ...


class PrometheusBusinessMetrics:
    """Implements `controller.ports.BusinessMetrics` over a `PrometheusSource` (or anything with `custom`)."""

    def __init__(self, source: CustomMetrics) -> None:
        self.source = source

    def business(self, query: BusinessQuery, start: float, end: float) -> Mapping[str, PrimaryCounts]:
        counts = self._counts(query, start, end)
        units = self._pairs_or_none(query, query.metric + UNITS_SUFFIX, start, end, optional=True)
        if units is None:
            return counts
        return {v: replace(c, units=round(units[v][0]) if v in units else None) for v, c in counts.items()}

    def _counts(self, query: BusinessQuery, start: float, end: float) -> dict[str, PrimaryCounts]:
        pairs = self._pairs(query, query.metric, start, end)
        if query.kind != "mean":
            return {v: PrimaryCounts.proportion(min(round(num), round(den)), round(den))
                    for v, (num, den) in pairs.items()}
        squares = self._pairs(query, query.metric + SQUARES_SUFFIX, start, end)
        out: dict[str, PrimaryCounts] = {}
        for version, (total, count) in pairs.items():
            n = round(count)
            if version not in squares or n == 0:
                continue  # no squares yet (or no values): nothing usable for this version in this window
            total = max(total, 0.0)
            # Each counter is differenced on its own: keep total^2 <= n * squares despite rounding.
            out[version] = PrimaryCounts.mean(total, max(squares[version][0], total * total / n), n)
        return out

    def _pairs(self, query: BusinessQuery, name: str, start: float, end: float
               ) -> dict[str, tuple[float, float]]:
        """(numerator, denominator) increases per version of the counter-pair custom metric `name`."""
        pairs = self._pairs_or_none(query, name, start, end, optional=False)
        assert pairs is not None
        return pairs

    def _pairs_or_none(self, query: BusinessQuery, name: str, start: float, end: float, optional: bool
                       ) -> dict[str, tuple[float, float]] | None:
        window_query = MetricsQuery(namespace=query.namespace, services=(query.service,), versions=query.versions)
        try:
            window = self.source.custom(name, window_query, start, end)
        except KeyError as error:
            if optional:
                return None
            hint = f" (a mean metric needs {query.metric!r} and {name!r})" if name != query.metric else ""
            raise MetricsUnavailable(f"primary metric {name!r} is not a configured custom metric{hint}: "
                                     f"{error}") from None
        wanted = {(query.service, version) for version in query.versions}
        if wanted <= window.absent:
            raise MetricsUnavailable(f"primary metric {name!r}: no series for {query.service} "
                                     f"{', '.join(query.versions)} in {query.namespace} (not scraped, or the "
                                     "templates select nothing)")
        out: dict[str, tuple[float, float]] = {}
        for (service, version), value in window.values.items():
            if (service, version) in window.absent or value.denominator is None:
                continue
            if service != query.service or version not in query.versions:
                continue
            out[version] = (float(value.numerator), float(value.denominator))
        return out
