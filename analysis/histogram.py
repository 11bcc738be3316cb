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


def shift_weight(n_c: npt.ArrayLike, n_b: npt.ArrayLike, variance: npt.ArrayLike | None = None) -> FloatArray:
    """a_t, the interval's weight, chosen so that E[a_t z_t] = sqrt(3) Delta a_t^2 whatever the ties.

    The rank-sum's U - n_c n_b / 2 has mean n_c n_b Delta / 2, so with the tie-corrected `variance` of U,
    E[z_t] = n_c n_b Delta / (2 sd_t) and a_t = n_c n_b / (2 sqrt(3) sd_t). Ties shrink sd_t, so an interval
    with many ties weighs more and the tolerance's centring sqrt(3) Delta0 V stays exact. Without a
    variance (no ties assumed): a_t = sqrt(n_c n_b / N_t), the untied form.
    """
    nc, nb = np.asarray(n_c, dtype=np.float64), np.asarray(n_b, dtype=np.float64)
    n = nc + nb
    with np.errstate(divide="ignore", invalid="ignore"):
        if variance is None:
            return np.where(n > 0, np.sqrt(nc * nb / np.where(n > 0, n, 1.0)), 0.0)
        # An interval whose requests all fall in one bucket has no tie-corrected variance (and z = 0): it
        # counts with the untied variance, as an interval that saw no difference.
        given = np.asarray(variance, dtype=np.float64)
        var = np.where(given > 0, given, nc * nb * (n + 1.0) / 12.0)
        return np.where(var > 0, nc * nb / (2.0 * math.sqrt(3.0) * np.sqrt(np.where(var > 0, var, 1.0))), 0.0)


def u_variance(p_c: npt.ArrayLike, p_b: npt.ArrayLike, n_c: npt.ArrayLike, n_b: npt.ArrayLike) -> FloatArray:
    """Var(U) of the binned Mann-Whitney U (kernel 1{x>y} + 1/2 1{x=y}) for n_c and n_b independent requests
    from the bucket distributions p_c and p_b (buckets on the last axis): n_c n_b (sigma_h^2 +
    (n_b - 1) sigma_10^2 + (n_c - 1) sigma_01^2), Hoeffding's U-statistic variance. With p_c = p_b it is the
    tie-corrected null variance; when the versions differ it can be several times that (ties: a canary that
    moves part of its requests out of a bucket holding nearly all of them)."""
    pc, pb = np.asarray(p_c, dtype=np.float64), np.asarray(p_b, dtype=np.float64)
    below_b = np.cumsum(pb, axis=-1) - pb
    g1 = below_b + 0.5 * pb  # E_Y h(x, Y), per canary bucket x
    g2 = 1.0 - np.cumsum(pc, axis=-1) + 0.5 * pc  # E_X h(X, y), per baseline bucket y
    theta = np.sum(pc * g1, axis=-1)
    s10 = np.sum(pc * g1 * g1, axis=-1) - theta**2
    s01 = np.sum(pb * g2 * g2, axis=-1) - theta**2
    sh = np.sum(pc * below_b, axis=-1) + 0.25 * np.sum(pc * pb, axis=-1) - theta**2
    nc, nb = np.asarray(n_c, dtype=np.float64), np.asarray(n_b, dtype=np.float64)
    return np.asarray(nc * nb * (sh + (nb - 1.0) * s10 + (nc - 1.0) * s01), dtype=np.float64)


# Pseudo-requests from the baseline's distribution that the canary's is shrunk with in `model_variance`.
CANARY_PRIOR_REQUESTS = 20.0


def model_variance(before_c: npt.ArrayLike, before_b: npt.ArrayLike, n_c: npt.ArrayLike, n_b: npt.ArrayLike
                   ) -> FloatArray:
    """Var(U) of an interval with n_c, n_b requests, from the cumulative bucket counts `before_c`,
    `before_b` of the intervals before it (so it is fixed before the interval is seen): the larger of the
    variance under the versions' own distributions and under the null's pooled one. The canary's
    distribution is shrunk towards the baseline's with CANARY_PRIOR_REQUESTS pseudo-requests, so a few canary
    requests cannot swing it. 0 (unknown) without baseline history."""
    c, b = np.asarray(before_c, dtype=np.float64), np.asarray(before_b, dtype=np.float64)
    nb_before = b.sum(axis=-1, keepdims=True)
    pb = b / np.where(nb_before > 0, nb_before, 1.0)
    pc = (c + CANARY_PRIOR_REQUESTS * pb) / (c.sum(axis=-1, keepdims=True) + CANARY_PRIOR_REQUESTS)
    nc, nbn = np.asarray(n_c, dtype=np.float64), np.asarray(n_b, dtype=np.float64)
    pooled = (nc[..., None] * pc + nbn[..., None] * pb) / np.maximum(nc + nbn, 1.0)[..., None]
    both = np.maximum(u_variance(pc, pb, nc, nbn), u_variance(pooled, pooled, nc, nbn))
    return np.asarray(np.where(nb_before[..., 0] > 0, both, 0.0), dtype=np.float64)


def shift_increment(c_buckets: npt.ArrayLike, b_buckets: npt.ArrayLike, before_c: npt.ArrayLike,
                    before_b: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """One interval's terms (s_t, v_t) of the latency statistic S = sum s_t, V = sum v_t, with
    E[s_t] = sqrt(3) Delta v_t and Var(s_t) = v_t whatever the ties and whether or not the versions differ.

    With x = U - n_c n_b / 2 (E[x] = n_c n_b Delta / 2) and W its variance: s_t = n_c n_b x / (2 sqrt(3) W),
    v_t = (n_c n_b)^2 / (12 W). W is `model_variance`, fixed before the interval from the counts before it:
    under the null's variance alone a canary that differs in shape (ties: it moves some requests out of the
    bucket holding nearly all) varies up to three times more than the statistic says, and its tolerance and
    margin tests were anti-conservative (bench/ties.py). Without history, or when the model gives 0, W is the
    interval's own tie-corrected null variance (`shift_weight`'s); an interval whose requests all fall in one
    bucket has x = 0 and counts with the untied variance.
    """
    c, b = np.asarray(c_buckets, dtype=np.float64), np.asarray(b_buckets, dtype=np.float64)
    test = rank_sum(c, b)
    nc, nb = test.n_x, test.n_y
    untied = nc * nb * (nc + nb + 1.0) / 12.0
    w = model_variance(before_c, before_b, nc, nb)
    w = np.where(w > 0, w, np.where(test.variance > 0, test.variance, untied))
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(w > 0, nc * nb * (test.u - test.mean) / (2.0 * math.sqrt(3.0) * np.where(w > 0, w, 1.0)), 0.0)
        v = np.where(w > 0, (nc * nb) ** 2 / (12.0 * np.where(w > 0, w, 1.0)), 0.0)
    return np.asarray(s, dtype=np.float64), np.asarray(v, dtype=np.float64)


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
