"""The business-metrics port of A/B experiments: per-version primary-metric counts for a window.

This module owns the seam between the experiment machine and whatever counts impressions and clicks (or
any primary metric): a `BusinessMetrics` source answers, for the experiment's entry service and versions,
one `analysis.abtest.PrimaryCounts` per version for the window (start, end]. It is a port of its own,
beside `controller.ports.Metrics`, so a canary-only deployment needs no business source at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from analysis.abtest import PrimaryCounts


@dataclass(frozen=True)
class BusinessQuery:
    """The primary metric `metric` (e.g. click-through) of `service` per version, in `namespace`."""

    namespace: str
    service: str
    versions: tuple[str, ...]
    metric: str
    kind: str  # proportion | mean


class BusinessMetrics(Protocol):
    def business(self, query: BusinessQuery, start: float, end: float) -> Mapping[str, PrimaryCounts]:
        """Counts per version in (start, end]; a version with no data is absent. Raises MetricsUnavailable."""
