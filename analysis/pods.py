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

The rate checks (error rate, slow tail) get the same for the pods' rates: pod p fails 1 + u_p times as often
as its version, Var u_p = tau_r^2, estimated from the baseline's pods' events against their share of each
interval's events (`rate_pod_increments`, `rate_pod_variance`); the judge divides a rate check's summed
log-likelihood ratios by g = 1 + tau_r^2 W (`analysis.sequential.rate_placement`).
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
# How many of its own noise's sds the pods' rate spread must stand above before it counts (`rate_pod_variance`).
RATE_SPREAD_NOISE_SDS = 1.0


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


def rate_pod_increments(events: npt.ArrayLike, requests: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """One interval of one version's pods, events and requests (..., P) -> per pod (e_p, m_p, b_p) (..., P): its
    events, the events its share q_p of the version's requests would have had of the interval's total, and their
    binomial variance m_p (1 - q_p). Conditioning on the interval's total removes what the pods share (an error
    burst, the day's load). All 0 with fewer than two pods serving."""
    e, n = np.asarray(events, dtype=np.float64), np.asarray(requests, dtype=np.float64)
    total_n = n.sum(axis=-1, keepdims=True)
    ok = np.sum(n > 0, axis=-1, keepdims=True) >= 2
    q = np.where(ok, n / np.where(total_n > 0, total_n, 1.0), 0.0)
    m = e.sum(axis=-1, keepdims=True) * q
    return np.where(ok, e, 0.0), m, m * (1.0 - q)


def rate_pod_variance(e: npt.ArrayLike, m: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """tau^2 of the pods' relative rates (pod p's rate is the version's times 1 + u_p, Var u_p = tau^2), from the
    running sums (..., P) of `rate_pod_increments`: E_p - M_p has mean M_p (u_p - u_bar) and, around it, variance
    B_p, so sum(E_p - M_p)^2 - B_p estimates tau^2 sum M_p^2 (1 - 2 q_p + sum q^2), q_p = M_p / sum M.

    With few events per pod that sum is mostly noise (its sd under alike pods is about sqrt(sum 2 B_p^2 + B_p)),
    and a noisy positive estimate would cost power where there is nothing to correct. So RATE_SPREAD_NOISE_SDS of
    that sd are taken off before dividing: alike pods give 0 about five times in six, and a real spread is
    underestimated by that much, which matters less and less as the pods' events grow. Floored at 0; 0 with
    fewer than two pods."""
    ee, mm, bb = (np.asarray(x, dtype=np.float64) for x in (e, m, b))
    total = mm.sum(axis=-1, keepdims=True)
    q = mm / np.where(total > 0, total, 1.0)
    spread = 1.0 - 2.0 * q + np.sum(q * q, axis=-1, keepdims=True)
    noise = np.sqrt(np.sum(2.0 * bb * bb + bb, axis=-1))
    num = np.sum((ee - mm) ** 2 - bb, axis=-1) - RATE_SPREAD_NOISE_SDS * noise
    den = np.sum(mm * mm * spread, axis=-1)
    k = np.sum(mm > 0, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.where((k >= 2) & (den > 0), np.maximum(num / np.where(den > 0, den, 1.0), 0.0), 0.0),
                          dtype=np.float64)


def fold_rate_pods(sums: dict[str, list[float]], pods: Mapping[str, tuple[int, int]]) -> None:
    """Add one interval of the baseline's pods, {pod: (events, requests)}, to their running sums
    {pod: [E_p, M_p, B_p]} (at most MAX_PODS pods, as `fold_pods`)."""
    names = [p for p, (_, n) in pods.items() if n > 0]
    if len(names) < 2:
        return
    e, m, b = rate_pod_increments([pods[p][0] for p in names], [pods[p][1] for p in names])
    for name, x, y, z in zip(names, e.tolist(), m.tolist(), b.tolist(), strict=True):
        if name in sums or len(sums) < MAX_PODS:
            acc = sums.setdefault(name, [0.0, 0.0, 0.0])
            acc[0] += x
            acc[1] += y
            acc[2] += z


def rate_tau2_of(sums: Mapping[str, list[float]]) -> float:
    if not sums:
        return 0.0
    e, m, b = zip(*sums.values(), strict=True)
    return float(rate_pod_variance(np.asarray(e), np.asarray(m), np.asarray(b)))


def tau2_of(sums: Mapping[str, list[float]]) -> float:
    if not sums:
        return 0.0
    s, v = zip(*sums.values(), strict=True)
    return float(pod_variance(np.asarray(s), np.asarray(v)))
