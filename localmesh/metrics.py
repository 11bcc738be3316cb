"""The local mesh router's request metrics, under Istio's names, labels and default buckets.

This module owns counting (exact, and cheap on the hot path: plain dict counters keyed by label tuple)
and rendering the Prometheus text exposition on scrape: `istio_requests_total` and
`istio_request_duration_milliseconds_{bucket,sum,count}` with reporter="destination".
"""

from __future__ import annotations

import bisect
import math

from analysis.observations import ISTIO_BUCKETS_MS

__all__ = ["MeshMetrics", "SeriesKey"]

# (source_workload, destination_service_name, destination_namespace, destination_version,
#  destination_workload, response_code, response_flags)
SeriesKey = tuple[str, str, str, str, str, int, str]

_LABEL_NAMES = (
    "reporter",
    "source_workload",
    "destination_workload",
    "destination_workload_namespace",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "request_protocol",
    "response_code",
    "response_flags",
)
_HIST = "istio_request_duration_milliseconds"
_FINITE_BOUNDS = tuple(b for b in ISTIO_BUCKETS_MS if not math.isinf(b))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_bound(bound: float) -> str:
    if math.isinf(bound):
        return "+Inf"
    return str(int(bound)) if bound == int(bound) else repr(bound)


class MeshMetrics:
    """Counters per series; `record` is the only hot-path call."""

    def __init__(self) -> None:
        # series -> [count, sum_ms, bucket_0, ..., bucket_inf] (per-bucket, not cumulative)
        self._series: dict[SeriesKey, list[float]] = {}

    def record(self, key: SeriesKey, duration_ms: float) -> None:
        stats = self._series.get(key)
        if stats is None:
            stats = self._series[key] = [0, 0.0] + [0] * len(ISTIO_BUCKETS_MS)
        stats[0] += 1
        stats[1] += duration_ms
        stats[2 + bisect.bisect_left(_FINITE_BOUNDS, duration_ms)] += 1

    def total_requests(self) -> int:
        return int(sum(s[0] for s in list(self._series.values())))

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of every series seen so far."""
        series = [(k, list(v)) for k, v in list(self._series.items())]
        counter = [
            "# HELP istio_requests_total Total requests handled by the local mesh router.",
            "# TYPE istio_requests_total counter",
        ]
        histogram = [
            "# HELP istio_request_duration_milliseconds Request duration, request received to response end.",
            "# TYPE istio_request_duration_milliseconds histogram",
        ]
        for key, stats in series:
            labels = self._labels(key)
            counter.append(f"istio_requests_total{{{labels}}} {int(stats[0])}")
            cumulative = 0
            for bound, count in zip(ISTIO_BUCKETS_MS, stats[2:], strict=True):
                cumulative += int(count)
                le = _format_bound(bound)
                histogram.append(f'{_HIST}_bucket{{{labels},le="{le}"}} {cumulative}')
            histogram.append(f"{_HIST}_sum{{{labels}}} {stats[1]!r}")
            histogram.append(f"{_HIST}_count{{{labels}}} {int(stats[0])}")
        return "\n".join(counter + histogram) + "\n"

    @staticmethod
    def _labels(key: SeriesKey) -> str:
        source, service, namespace, version, workload, code, flags = key
        values = (
            "destination",
            source,
            workload,
            namespace,
            service,
            version,
            f"{service}.{namespace}.svc.cluster.local",
            service,
            namespace,
            service,
            version,
            "http",
            str(code),
            flags,
        )
        return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(_LABEL_NAMES, values, strict=True))
