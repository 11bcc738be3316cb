"""Pod placement: how much identical code differs from pod to pod, learnt from the baseline's own pods.

A version runs on pods, and pods of the same code are not equally fast: node, neighbours, cache and JIT
luck make one pod a few percent slower than another for as long as it lives. A canary of one to three
pods compared with a fleet of ten therefore differs from it by a few percent in one release and by
another few in the next, persistently within the release. To the rank test that is a real shift, and a
judge that ignores it rolls back identical code.

The judge models it as a random effect. Pod p's latency offset u_p (on the rank test's Delta scale,
P(C>B) - P(C<B)) is drawn from a distribution of variance tau^2; the canary's offset against the
baseline is then delta = mean(u over canary pods) - mean(u over baseline pods), of variance
s^2 = tau^2 (1/k_c + 1/k_b) under identical code. With S = sum a_t z_t ~ N(sqrt(3) delta V, V) given
delta (`analysis.sequential`), integrating delta ~ N(mu, s^2) out gives likelihood ratios in mu that are
exactly those of the fixed-effect test on S/g and V/g, with

    g = 1 + 3 s^2 V,

so the sequential judge's e-value, confidence sequence and safety bound for the latency shift are its usual
ones on (S/g, V/g): a ratio of marginal likelihoods, a martingale under the random-effect null. As V grows,
V/g tends to 1/(3 s^2): the interval of the code's effect never gets narrower than the pods' spread allows,
so a canary is neither rolled back nor promoted on its pods' luck.

tau^2 is estimated from the baseline's pods, each against the version's other pods in every interval
(`pod_shift_increments`), by the method of moments (`pod_variance`). The canary's pod count comes from its
per-pod counts, interval by interval: s^2 V = tau^2 sum_t a_t^2 (1/k_c,t + 1/k_b,t) (`pod_weight`), an upper
bound of the pooled offset's variance when pods join during the release (Jensen). Without per-pod counts, or
with fewer than two baseline pods, tau^2 is 0 and the judge is the fixed-effect one.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from analysis.histogram import rank_sum, shift_weight
from analysis.observations import VersionCounts

FloatArray = npt.NDArray[np.float64]

# The most pods of one service whose running sums a judge state keeps (autoscaling churns pods; the
# first ones seen carry the estimate).
MAX_PODS = 64


def pod_shift_increments(pod_buckets: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """One interval of one version's pods, bucket counts (..., P, K) -> per pod (a z, a^2) (..., P): the
    rank test of the pod against the version's other pods, weighted as the judge weighs canary against
    baseline (`shift_weight`)."""
    b = np.asarray(pod_buckets, dtype=np.float64)
    rest = b.sum(axis=-2, keepdims=True) - b
    test = rank_sum(b, rest)
    a = shift_weight(b.sum(axis=-1), rest.sum(axis=-1), test.variance)
    return np.asarray(a * test.z, dtype=np.float64), np.asarray(a * a, dtype=np.float64)


def pod_variance(s: npt.ArrayLike, v: npt.ArrayLike) -> FloatArray:
    """tau^2, the variance of one pod's offset on the Delta scale, from the baseline pods' running sums
    S_p = sum a z and V_p = sum a^2 (..., P) of each pod against the others.

    E[S_p^2] = V_p + 3 V_p^2 Var(Delta_p), and a pod against the other k - 1 varies by
    Var(Delta_p) = tau^2 k / (k - 1), so tau^2 = (k - 1) / k * sum(S_p^2 - V_p) / (3 sum V_p^2), floored at 0.
    0 with fewer than two pods that served requests."""
    ss, vv = np.asarray(s, dtype=np.float64), np.asarray(v, dtype=np.float64)
    k = np.sum(vv > 0, axis=-1)
    num = np.sum(ss * ss - vv, axis=-1)
    den = 3.0 * np.sum(vv * vv, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau2 = np.where((k >= 2) & (den > 0), np.maximum(num / np.where(den > 0, den, 1.0), 0.0), 0.0)
        return np.asarray(tau2 * np.where(k >= 2, (k - 1.0) / np.maximum(k, 1), 0.0), dtype=np.float64)


def pod_weight(a2: npt.ArrayLike, pods_c: npt.ArrayLike, pods_b: npt.ArrayLike) -> FloatArray:
    """One interval's term of sum_t a_t^2 (1/k_c,t + 1/k_b,t); 0 when either version's pods are unknown."""
    kc, kb = np.asarray(pods_c, dtype=np.float64), np.asarray(pods_b, dtype=np.float64)
    known = (kc > 0) & (kb > 0)
    inv = np.where(known, 1.0 / np.where(kc > 0, kc, 1.0) + 1.0 / np.where(kb > 0, kb, 1.0), 0.0)
    return np.asarray(np.asarray(a2, dtype=np.float64) * inv, dtype=np.float64)


def placement_factor(tau2: npt.ArrayLike, weight: npt.ArrayLike, phi: npt.ArrayLike = 1.0) -> FloatArray:
    """g = 1 + 3 s^2 V / phi with s^2 V = tau^2 * `weight` (the running sum of `pod_weight`): the latency
    statistic's S and V are divided by g. `phi` is the per-interval dispersion already applied to V."""
    return np.asarray(1.0 + 3.0 * np.asarray(tau2) * np.asarray(weight) / np.asarray(phi), dtype=np.float64)


def serving(pods: Mapping[str, VersionCounts]) -> int:
    """How many pods served requests in the interval."""
    return sum(1 for c in pods.values() if c.requests > 0)


def fold_pods(sums: dict[str, list[float]], pods: Mapping[str, VersionCounts]) -> None:
    """Add one interval of the baseline's pods to their running sums {pod: [S_p, V_p]} (at most MAX_PODS
    pods; a pod first seen when the state is full is left out)."""
    names = [p for p, c in pods.items() if c.requests > 0]
    if len(names) < 2:
        return
    az, a2 = pod_shift_increments([pods[p].buckets for p in names])
    for name, x, y in zip(names, az.tolist(), a2.tolist(), strict=True):
        if name in sums or len(sums) < MAX_PODS:
            acc = sums.setdefault(name, [0.0, 0.0])
            acc[0] += x
            acc[1] += y


def tau2_of(sums: Mapping[str, list[float]]) -> float:
    if not sums:
        return 0.0
    s, v = zip(*sums.values(), strict=True)
    return float(pod_variance(np.asarray(s), np.asarray(v)))
