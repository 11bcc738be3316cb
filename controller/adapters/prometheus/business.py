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

Users as the unit: two more optional counter pairs give each version's per-user sums (`PerUser`), where
Y_u and N_u are user u's totals of the metric's numerator and denominator: `<name>.user-squares` (numerator
the sum over users of Y_u^2, denominator of N_u^2) and `<name>.user-cross` (numerator the sum of Y_u N_u,
denominator the users). `user_sums_metric_config` writes both; `USER_SUMS` and `USER_VALUE_SUMS` are the search
stack's (click-through; value per click). Without them `per_user` is None, and an experiment judging users
(`unit: user`, the default) says that the sums are missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from analysis.abtest import PerUser, PrimaryCounts
from analysis.observations import MetricsQuery
from controller.adapters.prometheus.client import CustomWindow
from controller.ports import BusinessQuery, MetricsUnavailable

__all__ = ["ASSIGNMENTS", "CLICK_VALUE", "SQUARES_SUFFIX", "UNITS_SUFFIX", "USER_CROSS_SUFFIX", "USER_SQUARES_SUFFIX",
           "USER_SUMS", "USER_VALUE_SUMS", "PrometheusBusinessMetrics", "mean_metric_config", "units_metric_config",
           "user_sums_metric_config"]

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


USER_SQUARES_SUFFIX = ".user-squares"  # numerator: sum of Y_u^2; denominator: sum of N_u^2
USER_CROSS_SUFFIX = ".user-cross"  # numerator: sum of Y_u N_u; denominator: users
# The search stack's per-user sums (searchstack/README.md) as (Y^2, N^2, Y N, users) templates: click-through
# (Y = clicks, N = impressions) and value per click (Y = click values, N = clicks).
USER_SUMS = tuple("searchstack_user_" + m + "_total" + _PAIR.format() for m in (
    "clicks_squares", "impressions_squares", "clicks_impressions", "units"))
USER_VALUE_SUMS = tuple("searchstack_user_" + m + "_total" + _PAIR.format() for m in (
    "click_value_squares", "clicks_squares", "click_value_clicks", "units"))


def user_sums_metric_config(name: str, yy: str, nn: str, yn: str, users: str) -> dict[str, dict[str, str]]:
    """The optional `custom_metrics` entries that give primary metric `name` its per-user sums (PromQL
    templates of counters: sums over users of Y_u^2, N_u^2, Y_u N_u, and the users)."""
    return {name + USER_SQUARES_SUFFIX: {"kind": "counter_pair", "numerator": yy, "denominator": nn},
            name + USER_CROSS_SUFFIX: {"kind": "counter_pair", "numerator": yn, "denominator": users}}


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
        counts = self._with_per_user(query, self._counts(query, start, end), start, end)
        units = self._pairs_or_none(query, query.metric + UNITS_SUFFIX, start, end, optional=True)
        if units is None:
            return counts
        return {v: replace(c, units=round(units[v][0]) if v in units else None) for v, c in counts.items()}

    def _with_per_user(self, query: BusinessQuery, counts: dict[str, PrimaryCounts], start: float, end: float
                       ) -> dict[str, PrimaryCounts]:
        squares = self._pairs_or_none(query, query.metric + USER_SQUARES_SUFFIX, start, end, optional=True)
        cross = self._pairs_or_none(query, query.metric + USER_CROSS_SUFFIX, start, end, optional=True)
        if squares is None or cross is None:
            return counts
        out = {}
        for version, c in counts.items():
            if version not in squares or version not in cross:
                out[version] = c  # no series for it yet: no per-user sums this window
                continue
            (yy, nn), (yn, users) = squares[version], cross[version]
            out[version] = replace(c, per_user=PerUser(round(users), max(yy, 0.0), max(nn, 0.0), max(yn, 0.0)))
        return out

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
