"""The Metrics port on Prometheus: `controller.adapters.prometheus.client` with its failures as `MetricsUnavailable`.

This module owns only the translation between the analysis-side provider (which may not import the
controller) and the controller's port: every `PrometheusUnavailable` becomes `MetricsUnavailable` with the
same reason, so the reconciler records an `error` verdict and never a count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from analysis.observations import MetricsQuery, WindowCounts
from controller.adapters.prometheus.client import (
    CustomWindow,
    PrometheusConfig,
    PrometheusMetrics,
    PrometheusUnavailable,
)
from controller.ports import MetricsUnavailable

__all__ = ["PrometheusSource"]


class PrometheusSource:
    """Implements `controller.ports.History` (so `Metrics`); also serves the configured custom metrics."""

    def __init__(self, provider: PrometheusMetrics) -> None:
        self.provider = provider

    @classmethod
    def from_config(
        cls, config: PrometheusConfig | Mapping[str, Any], path: str = "prometheus"
    ) -> PrometheusSource:
        if not isinstance(config, PrometheusConfig):
            config = PrometheusConfig.from_dict(config, path)
        return cls(PrometheusMetrics(config))

    def __repr__(self) -> str:
        return f"PrometheusSource({self.provider!r})"

    def window(self, query: MetricsQuery, start: float, end: float) -> WindowCounts:
        try:
            return self.provider.window(query, start, end)
        except PrometheusUnavailable as error:
            raise MetricsUnavailable(error.reason) from error

    def windows(self, query: MetricsQuery, edges: Sequence[tuple[float, float]]) -> tuple[WindowCounts, ...]:
        try:
            return self.provider.windows(query, edges)
        except PrometheusUnavailable as error:
            raise MetricsUnavailable(error.reason) from error

    def custom(self, name: str, query: MetricsQuery, start: float, end: float) -> CustomWindow:
        try:
            return self.provider.custom(name, query, start, end)
        except PrometheusUnavailable as error:
            raise MetricsUnavailable(error.reason) from error

    def close(self) -> None:
        self.provider.close()
