"""Statistics of latency histograms: quantiles from bucket counts and the binned rank-sum test.

A latency histogram is a vector of per-bucket counts over fixed bounds (the last bound +Inf). Every
function here takes counts with the bucket axis last and broadcasts over any leading axes, so the live
judge (one service, one interval) and the benchmark (thousands of replications at once) run the same code.

The rank-sum test on a 2 x K table is the Mann-Whitney test on the expanded samples with every bucket a
tie group: an observation's mid-rank is the count below its bucket plus half its bucket (plus 1/2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _as_counts(counts: npt.ArrayLike) -> FloatArray:
    # float64 holds integers exactly up to 2**53 and makes the sums of cubes below overflow-free.
    return np.asarray(counts, dtype=np.float64)


def quantiles(counts: npt.ArrayLike, bounds_ms: Sequence[float], q: float) -> FloatArray:
    """The q-quantile of each histogram, interpolated linearly inside its bucket (as Prometheus does).

    The first bucket starts at 0; a quantile that lands in the +Inf bucket is reported as the last finite
    bound (a lower bound of the truth). Empty histograms give NaN.
    """
    c = _as_counts(counts)
    upper = np.asarray(bounds_ms, dtype=np.float64)
    finite_top = float(upper[-2]) if len(upper) > 1 else 0.0
    lower = np.concatenate(([0.0], upper[:-1]))
    cum = np.cumsum(c, axis=-1)
    total = cum[..., -1]
    rank = q * total
    idx = np.minimum(np.sum(cum < rank[..., None], axis=-1), c.shape[-1] - 1)
    below = np.where(idx > 0, np.take_along_axis(cum, np.maximum(idx - 1, 0)[..., None], -1)[..., 0], 0.0)
    in_bucket = np.take_along_axis(c, idx[..., None], -1)[..., 0]
    lo, hi = lower[idx], upper[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(in_bucket > 0, (rank - below) / in_bucket, 1.0)
        value = np.where(np.isinf(hi), finite_top, lo + (hi - lo) * frac)
    return np.where(total > 0, value, np.nan)


def quantile(counts: Sequence[int], bounds_ms: Sequence[float], q: float) -> float | None:
    """One histogram's q-quantile in ms, or None when it is empty."""
    value = float(quantiles(counts, bounds_ms, q))
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class RankSum:
    """Mann-Whitney statistics of x against y (arrays broadcast over leading axes).

    `u` counts pairs with x above y (ties count 1/2), as `scipy.stats.mannwhitneyu(x, y).statistic`;
    `variance` carries the tie correction; `z` is the standardised statistic without continuity
    correction (0 when the variance is 0); `delta` = P(X>Y) - P(X<Y), the effect on bucket labels.
    """

    u: FloatArray
    mean: FloatArray
    variance: FloatArray
    z: FloatArray
    delta: FloatArray
    n_x: FloatArray
    n_y: FloatArray

    def p_value_two_sided(self, continuity: bool = True) -> FloatArray:
        """The asymptotic two-sided p-value, as scipy's `method="asymptotic"` computes it."""
        big_u = np.maximum(self.u, self.n_x * self.n_y - self.u)
        sd = np.sqrt(self.variance)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (big_u - self.mean - (0.5 if continuity else 0.0)) / sd
        p = np.where(sd > 0, 2.0 * special.ndtr(-z), 1.0)
        return np.clip(p, 0.0, 1.0)

    def p_value_greater(self, continuity: bool = True) -> FloatArray:
        """One-sided p-value for "x tends to be larger than y"."""
        sd = np.sqrt(self.variance)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (self.u - self.mean - (0.5 if continuity else 0.0)) / sd
        return np.where(sd > 0, special.ndtr(-z), 1.0)


def rank_sum(x_counts: npt.ArrayLike, y_counts: npt.ArrayLike) -> RankSum:
    """The binned Mann-Whitney test of histogram x against histogram y (same bounds)."""
    x, y = _as_counts(x_counts), _as_counts(y_counts)
    y_below = np.cumsum(y, axis=-1) - y
    u = np.sum(x * (y_below + 0.5 * y), axis=-1)
    n_x, n_y = x.sum(axis=-1), y.sum(axis=-1)
    n = n_x + n_y
    tied = x + y
    tie_term = np.sum(tied**3 - tied, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        correction = np.where(n > 1, tie_term / (n * (n - 1)), 0.0)
        variance = np.maximum(n_x * n_y / 12.0 * ((n + 1.0) - correction), 0.0)
        mean = n_x * n_y / 2.0
        z = np.where(variance > 0, (u - mean) / np.sqrt(variance), 0.0)
        delta = np.where(n_x * n_y > 0, 2.0 * u / (n_x * n_y) - 1.0, 0.0)
    return RankSum(u=u, mean=mean, variance=variance, z=z, delta=delta, n_x=n_x, n_y=n_y)


def tail_index(bounds_ms: Sequence[float], threshold_ms: float) -> int:
    """Index of the first bucket wholly above `threshold_ms`: requests slower than the smallest bound >=
    the threshold are those in buckets from this index on."""
    for i, bound in enumerate(bounds_ms):
        if bound >= threshold_ms:
            return min(i + 1, len(bounds_ms) - 1)
    return len(bounds_ms) - 1


def tail_edge(bounds_ms: Sequence[float], edges: Sequence[float], threshold_ms: float) -> float:
    """The latency the tail check splits at when the counts resolve only `edges`, a subset of `bounds_ms`
    (the bucket edges both versions' histograms share: `WindowCounts.bucket_edges`).

    The requests counted from `tail_index(bounds_ms, threshold_ms)` on are those slower than this edge:
    the bound that index stands for when it is one of `edges` (so a threshold on a common edge is exact),
    else the nearest common edge below it (0 when there is none), because a count only says which common
    bucket a request fell in, and the whole bucket is on the slow side. Below, not above: every request
    slower than the threshold stays in the tail of both versions alike, so a canary that got slower than
    the threshold cannot hide in a wide common bucket; the price is that some requests slightly faster
    than the threshold count as slow too, in both versions, which dilutes the tail but hides no
    regression. (The next common edge above could be far away, say 1000 ms for a 250 ms threshold, and
    every regression below it would go unseen.)
    """
    k = tail_index(bounds_ms, threshold_ms)
    split = bounds_ms[k - 1] if k > 0 else 0.0
    return max((float(e) for e in edges if e <= split), default=0.0)


def reference_tail_index(counts: npt.ArrayLike, q: float) -> IntArray:
    """The tail start chosen from a reference (stable-only) histogram: the first bucket such that at most
    a share 1-q of the reference requests lie at or above it (broadcasts; empty histograms give the
    +Inf bucket)."""
    c = _as_counts(counts)
    total = c.sum(axis=-1, keepdims=True)
    above = np.cumsum(c[..., ::-1], axis=-1)[..., ::-1]  # requests in bucket i and beyond
    ok = above <= (1.0 - q) * total
    first = np.argmax(ok, axis=-1)
    start: IntArray = np.where(ok.any(axis=-1) & (total[..., 0] > 0), first, c.shape[-1] - 1).astype(np.int64)
    return start


def tail_counts(counts: npt.ArrayLike, start: npt.ArrayLike) -> FloatArray:
    """Requests in buckets from index `start` on (start broadcasts against the leading axes)."""
    c = _as_counts(counts)
    above = np.cumsum(c[..., ::-1], axis=-1)[..., ::-1]
    s = np.broadcast_to(np.asarray(start, dtype=np.int64), c.shape[:-1])
    return np.take_along_axis(above, s[..., None], -1)[..., 0]
