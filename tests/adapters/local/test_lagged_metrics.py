"""The local platform's lagged metrics source hands the judge the whole window: counts, pods, bucket edges."""

from __future__ import annotations

from collections.abc import Sequence

from analysis.observations import ISTIO_BUCKETS_MS, MetricsQuery, VersionCounts, WindowCounts
from controller.adapters.local.metrics import LaggedMetrics

N = len(ISTIO_BUCKETS_MS)


class Source:
    def __init__(self) -> None:
        self.asked: list[tuple[float, float]] = []

    def windows(self, query: MetricsQuery, edges: Sequence[tuple[float, float]]) -> tuple[WindowCounts, ...]:
        return tuple(self.window(query, start, end) for start, end in edges)

    def window(self, query: MetricsQuery, start: float, end: float) -> WindowCounts:
        self.asked.append((start, end))
        one = VersionCounts(3, 1, tuple([3] + [0] * (N - 1)))
        return WindowCounts(start, end, {("ml-search", "v2"): one}, frozenset({("ml-search", "v1")}),
                            bucket_edges={"ml-search": (5.0, 10.0)}, pods={("ml-search", "v2"): {"pod-a": one}})


def test_a_lagged_window_is_read_behind_and_keeps_pods_and_bucket_edges() -> None:
    source = Source()
    counts = LaggedMetrics(source, 2.0).window(MetricsQuery("local", ("ml-search",), ("v1", "v2")), 100.0, 110.0)
    assert source.asked == [(98.0, 108.0)]
    assert (counts.start, counts.end) == (100.0, 110.0)  # stamped with the window asked, so windows partition
    assert counts.absent == frozenset({("ml-search", "v1")}) and counts.counts[("ml-search", "v2")].requests == 3
    assert counts.bucket_edges == {"ml-search": (5.0, 10.0)}
    assert set(counts.pods_of("ml-search", "v2")) == {"pod-a"}


def test_lagged_past_windows_are_read_behind_together_and_stamped_as_asked() -> None:
    source = Source()
    edges = [(40.0, 50.0), (50.0, 60.0), (60.0, 70.0)]
    counts = LaggedMetrics(source, 2.0).windows(MetricsQuery("local", ("ml-search",), ("v1", "v2")), edges)
    assert source.asked == [(38.0, 48.0), (48.0, 58.0), (58.0, 68.0)]
    assert [(c.start, c.end) for c in counts] == edges
