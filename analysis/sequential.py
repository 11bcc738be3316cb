"""Anytime-valid e-processes for comparing a canary with its baseline, interval by interval.

Each e-process is kept as a few running sums (its sufficient statistics), so one update is O(#buckets)
and the whole state fits in a release's status. Every function broadcasts over leading axes: the judge
calls them on scalars, the benchmark on arrays of replications.

- Rate ratio (errors, slow tail): given an interval's total events k = k_c + k_b, the canary's share is
  Binomial(k, pi_t(r)) with pi_t(r) = r n_c / (r n_c + n_b) whatever the interval's base rate, so the
  likelihood ratio of r0*g against r0, multiplied over intervals and averaged over a grid of g, is an
  e-process for H0: r <= r0 (intervals are strata; weights and base rates may change freely). When the
  baseline's events come in bursts, the split's likelihood under them (`analysis.bursts`) replaces the binomial.
- Latency shift: per interval the binned rank-sum z_t, weighted by a_t = sqrt(n_c n_b / N_t), summed to
  S, V; a half-normal mixture over the drift gives a one-sided e-value for H0: Delta <= Delta0.
- Sample-ratio mismatch: the canary's share of requests against the intended weight, with a two-sided
  grid of log-odds shifts.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

from analysis.bursts import BURST_KAPPA_MARGIN, BURST_RATE_MARGIN, burst_increment, kappa_level
from analysis.config import AnalysisConfig
from analysis.decisions import CheckResult, Decision
from analysis.histogram import (
    FloatArray,
    quantile,
    reference_tail_index,
    shift_increment,
    tail_index,
)
from analysis.numeric import logsumexp
from analysis.observations import (
    ISTIO_BUCKETS_MS,
    IntervalObservation,
    InvalidObservation,
    Verdict,
    VersionCounts,
)
from analysis.pods import fold_pods, fold_rate_pods, placement_factor, pod_weight, rate_tau2_of, serving, tau2_of
from analysis.safety import excess_upper_bound, requests_needed

# Alternatives of the rate-ratio e-process, as multiples of r0. The issue proposed (1.25, 1.5, 2, 3, 4, 6);
# dropping the ends measured more power at x2 and no loss at x4 (docs/analysis.md, "Tuning").
RATIO_GRID: tuple[float, ...] = (1.5, 2.0, 3.0, 4.0)
# Alternatives of the sample-ratio e-process: shifts of the canary share's log-odds, both directions.
SRM_GRID: tuple[float, ...] = (-4.0, -2.0, -1.0, -0.5, -0.25, -0.1, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
# Confidence sequence of the ratio: log-likelihood on r = 2^(k/8), 1/64 .. 64; alternatives k + offsets
# (x1.19, 1.54, 2, 3.08, 4, 6.17: the test's grid rounded onto the lattice).
CS_STEPS_PER_DOUBLING = 8
CS_GRID: tuple[float, ...] = tuple(2.0 ** (k / CS_STEPS_PER_DOUBLING) for k in range(-48, 49))
CS_OFFSETS: tuple[int, ...] = (2, 5, 8, 13, 16, 21)
SQRT3 = math.sqrt(3.0)
# Pseudo-intervals of phi = 1 that the dispersion estimate is shrunk with.
DISPERSION_PRIOR = 3.0
# The most one interval can add to a rate check's harm evidence at any alternative, in units of that interval's
# dispersion phi_t, fixed before the interval is seen (e^3 = 20 times the evidence). Each interval's factor
# min(LR, e^(3 phi_t))^(1/phi_t) still has expectation <= 1 when requests are independent, so the e-process keeps
# its guarantee there; an error burst confined to one minute (bench.worlds "bursts") can no longer roll back
# identical versions on its own, while a regression that lasts crosses in a few intervals (docs/analysis.md,
# "Error bursts").
RATE_INTERVAL_LLR_CAP = 3.0
# The last intervals on which a bursty rate check measures the dispersion its burst likelihood leaves unexplained
# (`burst_excess`): an hour, so that the state stays bounded however long a release holds.
EXCESS_WINDOW = 60
# How far above its estimate the burstiness the versions' split shows is taken (`split_burstiness`), in standard
# errors, and the intervals it needs first. Bursts shared by both versions (a bad dependency, a burst of bad
# queries) make the baseline's own rate bursty but cancel in the split of the errors between the versions.
SPLIT_BURST_Z = 2.0
SPLIT_BURST_MIN_INTERVALS = 10
# The dispersion from which a waiting release's reason says that the requests a pass needs hold the bursts as they
# are (`_not_yet_safe`).
BURSTY_SHOWN = 3.0
# A check whose e-value reached 10 (half of what one capped interval can give) keeps the weight where it is: "no
# harm seen" raises the weight only while no check carries that much evidence of harm.
HOLD_E_VALUE = 10.0
# Terms of the regression sum within this log-distance of the strongest are tied with it (1%): all are marked.
TIED_LOG_E = 0.01
# A fail reason names every check carrying at least this share of the regression sum, failed or not.
CARRIER_SHARE = 0.1


def _f(x: npt.ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def log_share(n_c: npt.ArrayLike, n_b: npt.ArrayLike, r: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """(ln pi(r), ln(1 - pi(r))) with pi(r) = r n_c / (r n_c + n_b); 0 where an arm has no requests
    (such an interval carries no information and must contribute nothing)."""
    nc, nb, rr = _f(n_c), _f(n_b), _f(r)
    both = (nc > 0) & (nb > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = -np.log1p(nb / (rr * nc))
        lq = -np.log1p(rr * nc / nb)
    return np.where(both, lp, 0.0), np.where(both, lq, 0.0)


def ratio_log_likelihood(
    k_c: npt.ArrayLike, k_b: npt.ArrayLike, n_c: npt.ArrayLike, n_b: npt.ArrayLike, r: npt.ArrayLike
) -> FloatArray:
    """One interval's conditional binomial log-likelihood of ratio r (up to a constant in r)."""
    lp, lq = log_share(n_c, n_b, r)
    return _f(k_c) * lp + _f(k_b) * lq


def ratio_increment(
    k_c: npt.ArrayLike,
    k_b: npt.ArrayLike,
    n_c: npt.ArrayLike,
    n_b: npt.ArrayLike,
    r0: float,
    grid: tuple[float, ...] = RATIO_GRID,
    cap: npt.ArrayLike = math.inf,
) -> FloatArray:
    """min(l_t(r0*g), cap) for every g of `grid`: the interval's log-likelihood ratios, each at most `cap` (fixed
    before the interval is seen, the factor min(LR, e^cap) has expectation <= 1 under the null as LR does; the
    judge passes RATE_INTERVAL_LLR_CAP times phi), grid on the last axis; `cap` broadcasts against the counts."""
    g = np.asarray(grid)
    kc, kb, nc, nb = (np.expand_dims(_f(a), -1) for a in (k_c, k_b, n_c, n_b))
    alt = ratio_log_likelihood(kc, kb, nc, nb, r0 * g)
    null = ratio_log_likelihood(kc, kb, nc, nb, r0)
    return np.minimum(alt - null, np.expand_dims(_f(cap), -1))


def log_mixture(cumulative_llr: npt.ArrayLike) -> FloatArray:
    """ln of the grid-average e-value from the cumulative log-likelihood ratios (grid on the last axis)."""
    llr = _f(cumulative_llr)
    return _f(logsumexp(llr, axis=-1)) - math.log(llr.shape[-1])


def ratio_cs_increment(k_c: npt.ArrayLike, k_b: npt.ArrayLike, n_c: npt.ArrayLike, n_b: npt.ArrayLike) -> FloatArray:
    """One interval's log-likelihood on CS_GRID (grid on the last axis), for the confidence sequence."""
    kc, kb, nc, nb = (np.expand_dims(_f(a), -1) for a in (k_c, k_b, n_c, n_b))
    return ratio_log_likelihood(kc, kb, nc, nb, np.asarray(CS_GRID))


def _ratio_rejected(loglik: npt.ArrayLike, sign: int, log_threshold: float) -> npt.NDArray[np.bool_]:
    """Which CS_GRID ratios the grid mixture of alternatives on one side (sign +1: larger ratios) rejects."""
    ll = _f(loglik)
    n = ll.shape[-1]
    offsets = np.asarray(CS_OFFSETS)
    pad = int(offsets.max())
    padded = np.concatenate((np.full(pad, -np.inf), ll, np.full(pad, -np.inf)))
    j = np.arange(n)[:, None] + pad
    terms = padded[j + sign * offsets] - ll[:, None]
    available = np.isfinite(terms).sum(axis=1)
    with np.errstate(divide="ignore"):
        log_e = logsumexp(terms, axis=1) - np.log(np.maximum(available, 1))
    return np.asarray((available > 0) & (log_e >= log_threshold))


def ratio_confidence_sequence(loglik: npt.ArrayLike, alpha: float) -> tuple[float, float]:
    """Bounds of the (1 - alpha) confidence sequence for the ratio from the cumulative CS_GRID
    log-likelihood: the grid ratios that neither the upward nor the downward grid mixture rejects at
    2/alpha. Bounds at the ends of the lattice mean "beyond"."""
    ll = _f(loglik)
    log_threshold = math.log(2.0 / alpha)
    keep = ~(_ratio_rejected(ll, 1, log_threshold) | _ratio_rejected(ll, -1, log_threshold))
    inside = np.flatnonzero(keep)
    if inside.size == 0:  # the lattice cannot hold the ratio: report the likeliest lattice point
        best = int(np.argmax(ll))
        return CS_GRID[best], CS_GRID[best]
    return CS_GRID[int(inside[0])], CS_GRID[int(inside[-1])]


def ratio_upper_bound(loglik: npt.ArrayLike, alpha: float) -> float:
    """Upper end of the one-sided (1 - alpha) confidence sequence for the ratio: the largest lattice ratio
    r' whose H0: ratio >= r' the downward mixture does not reject at 1/alpha (the lattice's top when none
    is rejected, e.g. before any event)."""
    kept = np.flatnonzero(~_ratio_rejected(loglik, -1, math.log(1.0 / alpha)))
    return CS_GRID[int(kept[-1])] if kept.size else CS_GRID[0]


def log_half_normal_mixture(s: npt.ArrayLike, v: npt.ArrayLike, tau: float) -> FloatArray:
    """ln M with M = 2 (1+tau^2 V)^(-1/2) exp(tau^2 S^2 / (2(1+tau^2 V))) Phi(tau S / sqrt(1+tau^2 V)):
    the e-value of exp(theta S - theta^2 V / 2) averaged over theta ~ half-normal(tau)."""
    ss, vv = _f(s), _f(v)
    d = 1.0 + tau * tau * vv
    log_phi = _f(special.log_ndtr(tau * ss / np.sqrt(d)))
    return math.log(2.0) - 0.5 * np.log(d) + tau * tau * ss * ss / (2.0 * d) + log_phi


def dispersion(rss: float, expected: float, dof: float) -> float:
    """phi >= 1: how much more the intervals' statistics vary than the model says, from the data.

    `rss` is a sum of squared deviations whose expectation is `expected` under the model, from `dof`
    intervals. The estimate rss / expected is shrunk towards 1 with DISPERSION_PRIOR pseudo-intervals, so
    the first intervals cannot swing it, and never goes below 1: independent requests keep the exact
    model. Pod-to-pod speed differences, per-minute jitter and error bursts make requests within an
    interval move together; phi then widens every bound and divides every log-likelihood ratio
    (quasi-likelihood) instead of reading that noise as a regression. A plug-in: the bounds stay
    anytime-valid only approximately (the benchmark measures it on noisy worlds, docs/analysis.md).
    """
    if dof <= 0 or expected <= 0:
        return 1.0
    return max(1.0, float((rss / expected * dof + DISPERSION_PRIOR) / (dof + DISPERSION_PRIOR)))


def shift_dispersion(shift: Mapping[str, Any]) -> float:
    """phi of the latency statistic from its running sums: deviations a_t z_t - sqrt(3) Delta a_t^2 around the
    weighted least-squares Delta, rss = q - c3^2 / a4 (q = sum (a z)^2, c3 = sum a^3 z, a4 = sum a^4), whose
    expectation is about V (T - 1) / T over T intervals."""
    a4, n, v = float(shift.get("a4", 0.0)), int(shift.get("n", 0)), float(shift["v"])
    if a4 <= 0 or n < 2:
        return 1.0
    rss = max(float(shift.get("q", 0.0)) - float(shift.get("c3", 0.0)) ** 2 / a4, 0.0)
    return dispersion(rss, v * (n - 1) / n, n - 1)


def shift_effective(shift: Mapping[str, Any]) -> tuple[float, float, float]:
    """(S/g, V/g, phi): the latency statistic's running sums with the pods' placement integrated out
    (g = `analysis.pods.placement_factor`; 1 without per-pod counts) and its per-interval dispersion."""
    phi = shift_dispersion(shift)
    g = float(placement_factor(tau2_of(shift.get("pods", {})), float(shift.get("wk", 0.0)), phi))
    return float(shift["s"]) / g, float(shift["v"]) / g, phi


def shift_log_evalue(s: npt.ArrayLike, v: npt.ArrayLike, delta0: float, delta_min: float,
                     phi: npt.ArrayLike = 1.0) -> FloatArray:
    """ln e-value of H0: Delta <= delta0 from the running sums S = sum a_t z_t and V = sum a_t^2, the
    variance of S taken as phi V (phi from `dispersion`; 1 for independent requests)."""
    centred = _f(s) - SQRT3 * delta0 * _f(v)
    return log_half_normal_mixture(centred, _f(v) * _f(phi), SQRT3 * delta_min)


def shift_upper_bound(s: float, v: float, phi: float, alpha: float, delta_min: float) -> float:
    """Upper end of the one-sided (1 - alpha) confidence sequence for Delta: the smallest Delta' on a
    1/200 grid from which on every H0: Delta >= Delta' is rejected by the mirrored e-process (canary better
    than Delta'). 1.0 (nothing shown) before any data."""
    if v <= 0:
        return 1.0
    grid = np.linspace(-1.0, 1.0, 401)
    log_e = log_half_normal_mixture(SQRT3 * grid * v - s, v * phi, SQRT3 * delta_min)
    kept = np.flatnonzero(log_e < math.log(1.0 / alpha))
    return float(min(1.0, grid[kept[-1]] + 0.005)) if kept.size else -1.0


def shift_confidence_sequence(s: float, v: float, alpha: float, tau: float, phi: float = 1.0
                              ) -> tuple[float, float] | None:
    """Two-sided (1 - alpha) normal-mixture confidence sequence for Delta (S's variance phi V), or None before
    any data."""
    if v <= 0:
        return None
    d = 1.0 + tau * tau * v * phi
    radius = math.sqrt(d / (tau * tau) * (2.0 * math.log(1.0 / alpha) + math.log(d))) / v
    centre = s / v
    return (max(-1.0, (centre - radius) / SQRT3), min(1.0, (centre + radius) / SQRT3))


def srm_increment(n_c: npt.ArrayLike, n_b: npt.ArrayLike, weight_percent: npt.ArrayLike) -> FloatArray:
    """One interval's log-likelihood ratios of the canary share, shifted by each SRM_GRID log-odds step,
    against the intended weight (grid on the last axis). Weights of 0 or 100% carry no test."""
    w = _f(weight_percent) / 100.0
    inside = (w > 0) & (w < 1)
    ws = np.where(inside, w, 0.5)
    logit = np.log(ws) - np.log1p(-ws)
    x = np.expand_dims(logit, -1) + np.asarray(SRM_GRID)
    nc, nb = np.expand_dims(_f(n_c), -1), np.expand_dims(_f(n_b), -1)
    lp0, lq0 = np.expand_dims(np.log(ws), -1), np.expand_dims(np.log1p(-ws), -1)
    llr = nc * (-np.logaddexp(0.0, -x) - lp0) + nb * (-np.logaddexp(0.0, x) - lq0)
    return np.where(np.expand_dims(inside, -1), llr, 0.0)


# ---------------------------------------------------------------------------------------------------------
# The sequential judge: the e-processes above, per service and check, sharing one alpha budget.
# ---------------------------------------------------------------------------------------------------------

# 2: a rate check's `llr` holds each interval's tempered evidence (min(l, 3 phi_t) / phi_t); in 1 it held the raw
# sums, divided by the pooled phi when read (`_upgraded` converts a state a controller wrote before).
STATE_VERSION = 2


def _zeros(n: int) -> list[float]:
    return [0.0] * n


def _version_state(n_buckets: int) -> dict[str, Any]:
    return {"requests": 0, "errors": 0, "buckets": [0] * n_buckets}


def _add_counts(acc: dict[str, Any], counts: VersionCounts) -> None:
    acc["requests"] += counts.requests
    acc["errors"] += counts.errors
    acc["buckets"] = [a + b for a, b in zip(acc["buckets"], counts.buckets, strict=True)]


def _ratio_state() -> dict[str, Any]:
    return {
        "llr": _zeros(len(RATIO_GRID)),
        "cs": _zeros(len(CS_GRID)),
        "events": [0, 0],
        "exposure": [0, 0],
        # Pearson residuals of each interval's canary events against the ratio estimated before it: sum of
        # squares, their model variance, intervals (for `dispersion`).
        "disp": [0.0, 0.0, 0],
        # The baseline's own spread between intervals (for `rate_burstiness`): sum of (k - m)^2 - m, sum of m^2,
        # and the baseline's events and requests seen so far (m = requests x their ratio).
        "spread": [0.0, 0.0, 0, 0],
        # The last EXCESS_WINDOW intervals' [k_c, k_b, n_c, n_b] (for `burst_excess`).
        "recent": [],
        # The baseline's pods' running sums {pod: [E_p, M_p, B_p]} and W = sum v_t / phi_t (1/k_c + 1/k_b), for
        # the pod placement factor (`rate_placement`).
        "pods": {},
        "wk": 0.0,
        "logE": 0.0,
        "maxLogE": 0.0,
        "crossedAt": None,
    }


def _shift_state() -> dict[str, Any]:
    # s = sum a z, v = sum a^2; q, c3, a4, n (intervals): the sums shift_dispersion needs;
    # pods: the baseline's pods' running sums {pod: [S_p, V_p]}; wk = sum a^2 (1/k_c + 1/k_b) (analysis.pods).
    return {"s": 0.0, "v": 0.0, "q": 0.0, "c3": 0.0, "a4": 0.0, "n": 0, "pods": {}, "wk": 0.0, "logE": 0.0,
            "maxLogE": 0.0, "crossedAt": None}


class SequentialJudge:
    """The default judge: anytime-valid e-processes per service x check sharing one alpha.

    With K = services x checks, each check's e-value is compared with K/alpha (its Bonferroni share),
    and the regression checks (errors, tail, latency) of all services are also judged together: the
    release fails as soon as their e-values sum to K/alpha or more. The average of e-processes is an
    e-process, and the sum reaches K/alpha whenever one of them does, so this keeps the same alpha and
    is never slower than Bonferroni; it is faster when a regression shows in two checks at once (a slow
    tail moves the tail check and the rank test). Sample-ratio mismatch keeps its own K/alpha test
    because its verdict is `error`, not `fail`.

    Tail threshold L*: `tailThresholdMs` from the spec when set; else fixed from a stable-only
    reference passed to `initial_state(reference=...)`; else fixed from the first interval's baseline
    counts only, and then the slow-tail e-process starts with the second interval, so L* is chosen from
    data the test never uses (and never from canary data).
    """

    name = "sequential"

    def __init__(self, config: AnalysisConfig) -> None:
        self.config = config

    # -- state ----------------------------------------------------------------------------------------
    def initial_state(
        self,
        reference: Mapping[str, VersionCounts] | VersionCounts | None = None,
        services: Sequence[str] | None = None,
        bounds_ms: Sequence[float] = ISTIO_BUCKETS_MS,
    ) -> dict[str, Any]:
        """A fresh state. `services` fixes the alpha split up front (else the first tick's services do);
        `reference` gives stable-only counts to fix the tail threshold from: per service, or one
        VersionCounts for every service."""
        state: dict[str, Any] = {
            "judge": self.name,
            "version": STATE_VERSION,
            "ticks": 0,
            "t": None,
            "services": {},
            "plan": list(services) if services is not None else None,
        }
        per_service = {"*": reference} if isinstance(reference, VersionCounts) else (reference or {})
        for name, counts in per_service.items():
            start = int(reference_tail_index(counts.buckets, self.config.tail_reference_quantile))
            state.setdefault("references", {})[name] = start
        state["boundsMs"] = [float(x) for x in bounds_ms[:-1]]  # the last bound is +Inf, not JSON
        return state

    def _service_state(self, state: dict[str, Any], name: str, obs: IntervalObservation) -> dict[str, Any]:
        n = len(obs.bounds_ms)
        svc: dict[str, Any] = {
            "alpha": self.alpha_each(state),
            "baseline": _version_state(n),
            "canary": _version_state(n),
            "tailStart": None,
            "tailSource": None,
            "tailFromInterval": None,
            "errorRate": _ratio_state(),
            "slowTail": _ratio_state(),
            "latencyShift": _shift_state(),
            "sampleRatio": {
                "llr": _zeros(len(SRM_GRID)),
                "expected": 0.0,
                "logE": 0.0,
                "maxLogE": 0.0,
                "crossedAt": None,
            },
        }
        if self.config.tail_threshold_ms is not None:
            svc["tailStart"], svc["tailSource"] = (
                tail_index(obs.bounds_ms, self.config.tail_threshold_ms),
                "spec",
            )
        elif name in state.get("references", {}) or "*" in state.get("references", {}):
            refs = state["references"]
            source = "history" if state.get("priors", {}).get(name, {}).get("tailFromHistory") else "reference"
            svc["tailStart"], svc["tailSource"] = refs.get(name, refs.get("*")), source
        prior = state.get("priors", {}).get(name)
        if prior:
            for check in ("errorRate", "slowTail"):
                svc[check]["spread"] = list(prior[check])
                svc[check]["pods"] = copy.deepcopy(dict(prior.get(f"{check}Pods", {})))
        return svc

    def prime(self, state: Mapping[str, Any], history: Sequence[Mapping[str, IntervalObservation]]
              ) -> dict[str, Any]:
        """The stable version's own intervals from before the release (its traffic alone, oldest first, per
        service) folded into a fresh state: they fix a service's slow-tail threshold (unless the spec sets one;
        as a `reference` does, so the tail test starts with the release's first interval) and each rate check's
        burstiness (`rate_burstiness`) and the spread of its pods' rates (`rate_placement`), so the first
        intervals of the release are judged with the noise the stable version is known to have, not as if its
        errors were independent and its pods alike. Intervals without baseline
        requests or with other bucket bounds are left out. A state that has judged an interval already is
        returned as it is. Pure."""
        new = copy.deepcopy(dict(state))
        if new["ticks"]:
            return new
        priors: dict[str, Any] = {}
        for name in new.get("plan") or sorted({n for h in history for n in h}):
            intervals = [h[name] for h in history if name in h and h[name].baseline.requests > 0
                         and list(h[name].bounds_ms[:-1]) == new["boundsMs"]]
            if not intervals:
                continue
            start, learnt = self._prior_tail_start(new, name, [o.baseline for o in intervals])
            errors, slow = _ratio_state(), _ratio_state()
            for obs in intervals:
                counts = obs.baseline
                _fold_spread(errors, counts.errors, counts.requests)
                _fold_spread(slow, int(sum(counts.buckets[start:])), counts.requests)
                fold_rate_pods(errors["pods"], _pod_events(obs.baseline_pods))
                fold_rate_pods(slow["pods"], _pod_events(obs.baseline_pods, start))
            priors[name] = {"intervals": len(intervals), "errorRate": errors["spread"], "slowTail": slow["spread"],
                            "errorRatePods": errors["pods"], "slowTailPods": slow["pods"], "tailFromHistory": learnt}
        new["priors"] = priors
        return new

    def _prior_tail_start(self, state: dict[str, Any], name: str, usable: Sequence[VersionCounts]
                          ) -> tuple[int, bool]:
        """The slow-tail threshold's bucket index: the spec's, a reference's, or one from the history's sum (then
        recorded as the service's reference); and whether it came from the history."""
        if self.config.tail_threshold_ms is not None:
            return int(tail_index((*state["boundsMs"], math.inf), self.config.tail_threshold_ms)), False
        refs = state.setdefault("references", {})
        if name in refs or "*" in refs:
            return int(refs.get(name, refs.get("*"))), False
        summed = [sum(col) for col in zip(*(c.buckets for c in usable), strict=True)]
        refs[name] = int(reference_tail_index(summed, self.config.tail_reference_quantile))
        return refs[name], True

    # -- one tick -------------------------------------------------------------------------------------
    def update(
        self, state: Mapping[str, Any], observations: Mapping[str, IntervalObservation]
    ) -> tuple[dict[str, Any], Decision]:
        """Fold one interval of every service into the state and decide. Pure: `state` is not modified."""
        try:
            for name, obs in observations.items():
                obs.validate(f"observations[{name}]")
                if list(obs.bounds_ms[:-1]) != state["boundsMs"]:
                    raise InvalidObservation(
                        f"observations[{name}].buckets_ms",
                        "differ from the bucket bounds the analysis started with",
                    )
        except InvalidObservation as exc:
            return copy.deepcopy(dict(state)), Decision(Verdict.ERROR, f"unusable data: {exc}", judge=self.name)
        new = _upgraded(copy.deepcopy(dict(state)))
        # .get: a Kubernetes status may drop keys whose value is null.
        if new.get("plan") is None:
            new["plan"] = sorted(observations)
        unplanned = sorted(set(observations) - set(new["plan"]))
        if unplanned:
            return copy.deepcopy(dict(state)), Decision(
                Verdict.ERROR,
                f"service {unplanned[0]} is not among the analysed services {new['plan']}",
                judge=self.name,
            )
        t = max((o.t for o in observations.values()), default=new["t"])
        new["ticks"] += 1
        new["t"] = t
        n_buckets = len(new["boundsMs"]) + 1
        judged: dict[str, IntervalObservation] = {}
        warming: dict[str, list[str]] = {}
        for name in new["plan"]:
            obs = observations.get(name) or IntervalObservation(
                t or 0.0,
                0.0,
                VersionCounts.empty(n_buckets),
                VersionCounts.empty(n_buckets),
                bounds_ms=(*new["boundsMs"], math.inf),
            )
            if name not in new["services"]:
                new["services"][name] = self._service_state(new, name, obs)
            young = warming_pods(new["services"][name], obs, new["ticks"], self.config.pod_warmup_intervals)
            if young:
                warming[name] = sorted(young)
            judged[name] = obs.without_canary_pods(young)
            self._fold(new["services"][name], judged[name], new["ticks"], t, served=obs)
        self._judge_family(new, t)
        bounds = (*new["boundsMs"], math.inf)
        checks = [c for name in new["plan"] for c in self._records(name, new["services"][name], bounds)]
        pods_told_apart = self.config.pod_warmup_intervals > 0 and all(
            bool(o.canary_pods) for o in observations.values()) and set(observations) >= set(new["plan"])
        return new, self._decide(new, {n: judged[n] for n in observations}, checks, t, (warming, pods_told_apart))

    def regression_checks(self) -> tuple[str, ...]:
        return tuple(c for c in self.config.checks if c != "sampleRatio")

    def _judge_family(self, state: dict[str, Any], t: float | None) -> None:
        """Sum the regression e-values of every service; at K/alpha mark the checks that carry it."""
        recs = [svc[c] for svc in state["services"].values() for c in self.regression_checks()]
        if not recs:
            return
        log_sum = float(logsumexp([r["logE"] for r in recs]))
        state["regressionLogESum"] = log_sum
        log_threshold = math.log(1.0 / self.alpha_each(state))
        if log_sum < log_threshold:
            return
        # The strongest term carries the sum; terms tied with it carry it as much (one service's errors that its
        # callers pass on have the same counts at each), so none of them is singled out by the plan's order.
        strongest = max(r["logE"] for r in recs)
        for rec in recs:
            if rec.get("crossedAt") is None and (rec["logE"] >= strongest - TIED_LOG_E or rec["logE"] >= log_threshold):
                rec["crossedAt"] = t

    def alpha_each(self, state: Mapping[str, Any]) -> float:
        """Each (service, check)'s share of alpha: Bonferroni over the planned services x checks."""
        plan = state.get("plan") or [None]
        return self.config.alpha / (len(plan) * len(self.config.checks))

    def _fold(self, svc: dict[str, Any], obs: IntervalObservation, tick: int, t: float | None,
              served: IntervalObservation | None = None) -> None:
        """Add one interval to a service's running sums (regression crossings are marked afterwards,
        across services, by _judge_family). `obs` is what the checks judge; `served` (default `obs`) what the
        versions served, warming pods included, which the sample-ratio check compares with the weight."""
        b, c = obs.baseline, obs.canary
        _add_counts(svc["baseline"], b)
        _add_counts(svc["canary"], c)
        r0 = self.config.error_ratio_tolerance
        _fold_ratio(svc["errorRate"], c.errors, b.errors, c.requests, b.requests, r0, _placement(obs))
        self._fold_tail(svc, obs, tick)
        self._fold_shift(svc, obs)
        self._fold_srm(svc["sampleRatio"], served or obs, float(svc["alpha"]), t)
        for key in ("errorRate", "slowTail", "latencyShift", "sampleRatio"):
            svc[key]["maxLogE"] = max(svc[key]["maxLogE"], svc[key]["logE"])

    def _fold_tail(self, svc: dict[str, Any], obs: IntervalObservation, tick: int) -> None:
        b, c = obs.baseline, obs.canary
        if svc["tailStart"] is None:
            if b.requests > 0:  # L* from this baseline only; this interval is then left out of the test
                svc["tailStart"] = int(reference_tail_index(b.buckets, self.config.tail_reference_quantile))
                svc["tailSource"], svc["tailFromInterval"] = "first-interval-baseline", tick + 1
            return
        if svc["tailFromInterval"] is not None and tick < svc["tailFromInterval"]:
            return
        start = svc["tailStart"]
        k_c, k_b = int(sum(c.buckets[start:])), int(sum(b.buckets[start:]))
        _fold_ratio(svc["slowTail"], k_c, k_b, c.requests, b.requests, self.config.error_ratio_tolerance,
                    _placement(obs, start))

    def _fold_shift(self, svc: dict[str, Any], obs: IntervalObservation) -> None:
        """Add the interval's terms of S and V (`shift_increment`, from the counts before this interval: _fold
        has already added it to the cumulative ones). The harm e-value counts from `minCanaryRequests`
        on: with fewer, a rank statistic on a few tied requests is too far from normal to trust."""
        shift, c, b = svc["latencyShift"], obs.canary, obs.baseline
        before_c = np.subtract(svc["canary"]["buckets"], c.buckets)
        before_b = np.subtract(svc["baseline"]["buckets"], b.buckets)
        st, vt = (float(x) for x in shift_increment(c.buckets, b.buckets, before_c, before_b))
        for key, add in (("s", st), ("v", vt), ("q", st * st), ("c3", vt * st), ("a4", vt * vt), ("n", vt > 0)):
            shift[key] = shift.get(key, 0.0) + add
        fold_pods(shift.setdefault("pods", {}), obs.baseline_pods)
        shift["wk"] = shift.get("wk", 0.0) + float(pod_weight(vt, serving(obs.canary_pods), serving(obs.baseline_pods)))
        cfg = self.config
        if svc["canary"]["requests"] < cfg.min_canary_requests:
            shift["logE"] = 0.0
            return
        s, v, phi = shift_effective(shift)
        shift["logE"] = float(shift_log_evalue(s, v, cfg.latency_tolerance, cfg.latency_min_effect, phi))

    def _fold_srm(self, srm: dict[str, Any], obs: IntervalObservation, alpha_i: float, t: float | None) -> None:
        n_c, n_b = obs.canary.requests, obs.baseline.requests
        srm["llr"] = (np.asarray(srm["llr"]) + srm_increment(n_c, n_b, obs.weight)).tolist()
        srm["expected"] += (n_c + n_b) * obs.weight / 100.0
        srm["logE"] = float(log_mixture(srm["llr"]))
        if "sampleRatio" in self.config.checks and srm.get("crossedAt") is None and srm["logE"] >= -math.log(alpha_i):
            srm["crossedAt"] = t

    # -- records and verdict --------------------------------------------------------------------------
    def _records(self, name: str, svc: Mapping[str, Any], bounds: tuple[float, ...]) -> list[CheckResult]:
        """Each check's record: `fail` once harm crossed, `pass` once safety is shown, else `inconclusive`
        (sample-ratio: `error` once crossed, else `pass`: it has no margin to show)."""
        alpha_i = float(svc["alpha"])
        out: list[CheckResult] = []
        for check in self.config.checks:
            rec = svc[check]
            crossed = rec.get("crossedAt") is not None
            estimates = self._estimates(check, svc, alpha_i, bounds)
            if check == "sampleRatio":
                verdict = Verdict.ERROR if crossed else Verdict.PASS
            else:
                estimates["safety"] = self._safety(check, svc)
                verdict = Verdict.FAIL if crossed else (
                    Verdict.PASS if estimates["safety"]["shown"] else Verdict.INCONCLUSIVE)
            out.append(
                CheckResult(
                    service=name,
                    check=check,
                    verdict=verdict,
                    e_value=math.exp(min(rec["logE"], 700.0)),
                    threshold=1.0 / alpha_i,
                    p_value=min(1.0, math.exp(-rec["maxLogE"])),
                    samples={"canary": svc["canary"]["requests"], "baseline": svc["baseline"]["requests"]},
                    estimates=estimates,
                    reason=f"crossed at t={rec['crossedAt']:.1f}" if crossed else "",
                )
            )
        return out

    def _safety(self, check: str, svc: Mapping[str, Any]) -> dict[str, Any]:
        """Is the check shown within its margin? Upper confidence bounds at the whole alpha (see
        analysis.safety: pass needs every check, an intersection-union test)."""
        cfg, alpha = self.config, self.config.alpha
        n_c = float(svc["canary"]["requests"])
        if check == "latencyShift":
            shift, margin = svc["latencyShift"], cfg.latency_non_inferiority_margin
            if margin is None:
                return {"shown": True, "margin": None}
            s, v, phi = shift_effective(shift)
            bound = shift_upper_bound(s, v, phi, alpha, cfg.latency_min_effect)
            estimate = shift["s"] / shift["v"] / SQRT3 if shift["v"] > 0 else math.nan
            needed = requests_needed(n_c, estimate, bound, margin)
            if needed and _placement_floor(shift, phi, alpha, cfg.latency_min_effect) >= margin:
                return {"shown": False, "bound": bound, "margin": margin, "on": "delta", "requestsNeeded": None,
                        "why": "the canary's few pods could explain it: more canary pods can show it"}
            return {"shown": bound < margin, "bound": bound, "margin": margin, "on": "delta",
                    "requestsNeeded": needed}
        rec = svc[check]
        (k_c, k_b), (e_c, e_b) = rec["events"], rec["exposure"]
        phi = bound_dispersion(rec)
        routes: list[dict[str, Any]] = []
        estimates: list[tuple[str, float | None, float]] = []
        if cfg.non_inferiority_margin is not None:
            bound = ratio_upper_bound(np.asarray(rec["cs"]) / phi, alpha)
            ratio = _ratio(k_c, e_c, k_b, e_b)
            estimates.append(("ratio", ratio, cfg.non_inferiority_margin))
            routes.append({"shown": bound < cfg.non_inferiority_margin, "bound": bound,
                           "margin": cfg.non_inferiority_margin, "on": "ratio",
                           "requestsNeeded": None if ratio is None or ratio <= 0 else requests_needed(
                               e_c, math.log(ratio), math.log(bound), math.log(cfg.non_inferiority_margin))})
        if cfg.absolute_non_inferiority_margin is not None:
            margin = cfg.absolute_non_inferiority_margin
            prior = margin if check == "errorRate" else max(margin, 1.0 - cfg.tail_reference_quantile)
            bound = excess_upper_bound(k_c / phi, e_c / phi, k_b / phi, e_b / phi, alpha, prior)
            excess = (k_c / e_c if e_c else 0.0) - (k_b / e_b if e_b else 0.0)
            estimates.append(("excess rate", excess if e_c and e_b else None, margin))
            routes.append({"shown": bound < margin, "bound": bound, "margin": margin, "on": "excess",
                           "requestsNeeded": requests_needed(e_c, excess, bound, margin)})
        if not routes:
            return {"shown": True, "margin": None}
        shown = [r for r in routes if r["shown"]]
        chosen = shown[0] if shown else min(routes, key=_needed_order)
        return {**chosen, "beyond": _beyond(estimates)}

    def _estimates(
        self, check: str, svc: Mapping[str, Any], alpha_i: float, bounds: tuple[float, ...]
    ) -> dict[str, Any]:
        c, b = svc["canary"], svc["baseline"]
        if check in ("errorRate", "slowTail"):
            rec = svc[check]
            (k_c, k_b), (n_c, n_b) = rec["events"], rec["exposure"]
            phi = bound_dispersion(rec)
            lo, hi = ratio_confidence_sequence(np.asarray(rec["cs"]) / phi, alpha_i)
            est: dict[str, Any] = {
                "rateCanary": _rate(k_c, n_c),
                "rateBaseline": _rate(k_b, n_b),
                "ratio": _ratio(k_c, n_c, k_b, n_b),
                "ratioConfidenceSequence": [lo, hi],
                "ratioTolerance": self.config.error_ratio_tolerance,
                "eventsCanary": k_c,
                "eventsBaseline": k_b,
                "dispersion": phi,
                # analysis.pods: the spread of the baseline's pods' rates (relative), and the factor g the summed
                # log-likelihood ratios are divided by for the canary's pod placement.
                "podSpread": math.sqrt(rate_tau2_of(rec.get("pods", {}))),
                "placementFactor": rate_placement(rec),
            }
            if check == "slowTail":
                est["thresholdMs"] = _bound_of(svc["tailStart"], len(c["buckets"]), bounds)
                est["thresholdSource"] = svc["tailSource"]
            return est
        if check == "latencyShift":
            shift = svc["latencyShift"]
            tau = SQRT3 * self.config.latency_min_effect
            s, v, phi = shift_effective(shift)
            cs = shift_confidence_sequence(s, v, alpha_i, tau, phi)
            est = {
                "delta": shift["s"] / shift["v"] / SQRT3 if shift["v"] > 0 else None,
                "deltaConfidenceSequence": list(cs) if cs else None,
                "deltaTolerance": self.config.latency_tolerance,
                "dispersion": phi,
                # analysis.pods: the spread of one pod's offset (Delta scale) learnt from the baseline's pods,
                # and the factor g the statistic is divided by for the canary's pod placement.
                "podSpread": math.sqrt(tau2_of(shift.get("pods", {}))),
                "placementFactor": shift["v"] / v if v > 0 else 1.0,
            }
            for version, counts in (("Canary", c), ("Baseline", b)):
                for q in (0.5, 0.95, 0.99):
                    est[f"p{round(q * 100)}{version}Ms"] = quantile(counts["buckets"], bounds, q)
            return est
        srm = svc["sampleRatio"]
        total = c["requests"] + b["requests"]
        return {
            "canaryShare": c["requests"] / total if total else None,
            "intendedShare": srm["expected"] / total if total else None,
        }

    def _decide(
        self,
        state: Mapping[str, Any],
        observations: Mapping[str, IntervalObservation],
        checks: list[CheckResult],
        t: float | None,
        pods: tuple[Mapping[str, list[str]], bool] = ({}, False),
    ) -> Decision:
        warming, pod_warmup = pods

        def made(verdict: Verdict, reason: str, safety_pending: bool = False, needed: float | None = None
                 ) -> Decision:
            return Decision(
                verdict,
                reason,
                checks,
                judge=self.name,
                t=t,
                details={
                    "alphaPerCheck": self.alpha_each(state),
                    "ticks": state["ticks"],
                    "regressionEValueSum": math.exp(min(state.get("regressionLogESum", 0.0), 700.0)),
                    "regressionThreshold": 1.0 / self.alpha_each(state),
                    # No harm shown and data enough; only safety is not shown yet (weight may grow, no promotion).
                    "safetyPending": safety_pending,
                    # ... and the canary requests the furthest check is expected to need still (None: unknown).
                    "canaryRequestsNeeded": needed,
                    # New canary pods left out of this interval while they warm up, by service.
                    "canaryPodsWarming": dict(warming),
                    # This interval told every service's canary pods apart and new ones are left out while
                    # they warm up: after a weight change the next window need not wait for the warm-up.
                    "podWarmup": pod_warmup,
                },
            )

        mismatch = _mismatch(checks)
        failed = [c for c in checks if c.verdict is Verdict.FAIL]
        if failed:
            # Harm shown goes before a mismatch: both keep the canary from promotion, and the way out of harm
            # (roll back) is safe whatever was compared. A canary too slow to keep up (its answers pile up in
            # flight) also looks under-served: its latency is the cause, and what the operator must read.
            return made(
                Verdict.FAIL,
                _harm_shown(checks, failed, math.exp(min(state["regressionLogESum"], 700.0)))
                + (f"; also a {mismatch}" if mismatch else ""),
            )
        if mismatch:
            return made(Verdict.ERROR, mismatch)
        short = self._short_of_data(state, observations, warming)
        if short:
            return made(Verdict.INCONCLUSIVE, short)
        unsafe = [c for c in checks if c.verdict is Verdict.INCONCLUSIVE]
        if unsafe:
            holding = _holding(checks)
            return made(Verdict.INCONCLUSIVE, _not_yet_safe(unsafe) + holding, safety_pending=not holding,
                        needed=_more_needed(unsafe))
        return made(Verdict.PASS, "every check is shown within its margin")

    def _short_of_data(self, state: Mapping[str, Any], observations: Mapping[str, IntervalObservation],
                       warming: Mapping[str, list[str]]) -> str:
        """Why a verdict cannot be given yet for want of canary requests (this interval's or in all), or ""."""
        for name in state["plan"]:
            obs = observations.get(name)
            if obs is None or obs.canary.requests == 0:
                young = warming.get(name)
                return f"no canary requests for {name} in this interval" if not young \
                    else f"{name}: every canary pod that served this interval is warming up ({len(young)})"
            seen = state["services"][name]["canary"]["requests"]
            if seen < self.config.min_canary_requests:
                return f"{name}: {seen} canary requests so far, {self.config.min_canary_requests} needed"
        return ""


def _placement_floor(shift: Mapping[str, Any], phi: float, alpha: float, delta_min: float) -> float:
    """Where Delta's upper bound would settle with unlimited requests on today's pods, the estimate staying:
    V/g tends to phi V / (3 tau^2 wk) (analysis.pods). -1 without pod placement."""
    tau2, wk, v = tau2_of(shift.get("pods", {})), float(shift.get("wk", 0.0)), float(shift["v"])
    if tau2 <= 0 or wk <= 0 or v <= 0:
        return -1.0
    v_limit = phi * v / (3.0 * tau2 * wk)
    return shift_upper_bound(float(shift["s"]) / v * v_limit, v_limit, phi, alpha, delta_min)


def _needed_order(route: Mapping[str, Any]) -> float:
    needed = route.get("requestsNeeded")
    return math.inf if needed is None else float(needed)


def _harm_shown(checks: Sequence[CheckResult], failed: Sequence[CheckResult], total: float) -> str:
    """The fail reason: each regressed check with every service that carries it, the strongest first, each with
    its numbers in plain units, then the rule ("errorRate worse on ml-infer, ml-search and master-search (e-value
    327 each; canary 15.3% vs baseline 0.0% of requests failed); the regression e-values sum to 989 >= 400,
    crossed at t=34.9 s"). A service's errors or latency that its callers pass on show at each of them alike,
    so all are named, not the first in the plan's order."""
    carriers = [c for c in checks if c.check != "sampleRatio" and c.e_value is not None
                and (c.verdict is Verdict.FAIL or c.e_value >= CARRIER_SHARE * total)]
    carriers.sort(key=lambda c: -float(c.e_value or 0.0))  # stable: ties keep the plan's order
    by_check: dict[str, list[CheckResult]] = {}
    for c in carriers:
        by_check.setdefault(c.check, []).append(c)
    parts = []
    for check, cs in by_check.items():
        values = [float(c.e_value or 0.0) for c in cs]
        tied = max(values) <= min(values) * math.exp(TIED_LOG_E)
        evidence = (f"e-value {values[0]:.3g}" + (" each" if len(cs) > 1 else "") if tied
                    else "e-values " + ", ".join(f"{v:.3g}" for v in values))
        plain = _in_units(cs[0])
        parts.append(f"{check} worse on {_listed([c.service for c in cs])} ({evidence}{'; ' + plain if plain else ''})")
    first = failed[0]
    when = f", {first.reason} s after the release started" if first.reason else ""
    return f"{'; '.join(parts)}; the regression e-values sum to {total:.3g} >= {first.threshold:.3g}{when}"


def _in_units(c: CheckResult) -> str:
    """A check's measure in the units an operator reads: rates of requests, or latency quantiles in ms."""
    est = c.estimates
    if c.check == "errorRate" and est.get("rateCanary") is not None and est.get("rateBaseline") is not None:
        return f"canary {est['rateCanary']:.1%} vs baseline {est['rateBaseline']:.1%} of requests failed"
    if c.check == "slowTail" and est.get("rateCanary") is not None and est.get("rateBaseline") is not None:
        over = f" slower than {est['thresholdMs']:g} ms" if est.get("thresholdMs") is not None else " in the slow tail"
        return f"canary {est['rateCanary']:.1%} vs baseline {est['rateBaseline']:.1%} of requests{over}"
    if c.check == "latencyShift" and est.get("p50CanaryMs") is not None and est.get("p50BaselineMs") is not None:
        return f"median {est['p50BaselineMs']:.3g} ms on the baseline, {est['p50CanaryMs']:.3g} ms on the canary"
    return ""


def _listed(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _more(c: CheckResult) -> float:
    needed = c.estimates["safety"].get("requestsNeeded")
    return math.inf if needed is None else max(needed - float(c.samples["canary"]), 1.0)


def _more_needed(unsafe: Sequence[CheckResult]) -> float | None:
    left = max(_more(c) for c in unsafe)
    return None if math.isinf(left) else left


def _holding(checks: Sequence[CheckResult]) -> str:
    """"; holding the weight: ..." when harm is not shown but the canary looks worse than allowed, else "": a check's
    harm e-value reached HOLD_E_VALUE (evidence of harm building), or the error rate's estimate is beyond its
    margin on every route to safety (the canary, as measured so far, fails more than a canary that could be shown
    safe). Either way the weight is not raised on "no harm seen": a canary that looks bad keeps the users it has,
    no more, while the evidence decides. The latency and slow-tail estimates do not hold it: at a few canary pods
    their differences can be where those pods run, which only more pods (a higher weight) tell apart, and their
    regressions are shown within minutes once there; error bursts can keep an error regression's evidence low for
    tens of minutes (docs/analysis.md, "Holding a canary that fails more than its margins allow")."""
    regressions = [c for c in checks if c.check != "sampleRatio"]
    evidence = [(c.e_value, c) for c in regressions if c.e_value is not None]
    e_value, suspect = max(evidence, key=lambda pair: pair[0], default=(0.0, None))
    if suspect is not None and e_value >= HOLD_E_VALUE:
        return f"; holding the weight: {suspect.service} {suspect.check} e-value {e_value:.3g} >= {HOLD_E_VALUE:g}"
    for c in regressions:
        beyond = c.estimates.get("safety", {}).get("beyond") if c.check == "errorRate" else ""
        if c.verdict is Verdict.INCONCLUSIVE and beyond:
            return f"; holding the weight: {c.service} {c.check} {beyond}"
    return ""


def _beyond(estimates: Sequence[tuple[str, float | None, float]]) -> str:
    """"ratio 4.1 > margin 1.5, ..." when every route's point estimate is beyond its margin, else "" (also when
    one is not known yet: too few events to say)."""
    if not estimates or any(value is None or not value > margin for _, value, margin in estimates):
        return ""
    return ", ".join(f"{what} {value:.3g} > margin {margin:g}" for what, value, margin in estimates)


def _not_yet_safe(unsafe: Sequence[CheckResult]) -> str:
    """"S check: upper bound B, margin M (about N more canary requests)" for the check furthest from safe."""
    c = max(unsafe, key=_more)
    safety = c.estimates["safety"]
    what = _measure(c.check, safety["on"])
    left = _more(c)
    tail = (safety.get("why", "its estimate is not under the margin") if math.isinf(left)
            else f"about {int(left):,} more canary request{'s' if int(left) != 1 else ''}")
    phi = c.estimates.get("dispersion")
    if not math.isinf(left) and c.check != "latencyShift" and isinstance(phi, int | float) and phi >= BURSTY_SHOWN:
        # The count holds the dispersion where it is; right after a burst it falls within minutes, often by orders of
        # magnitude (docs/analysis.md, "safety"): an operator reads why it is so large.
        events = "slow requests" if c.check == "slowTail" else "errors"
        shown = f"{phi:,.0f}" if phi >= 100 else f"{phi:.3g}"
        tail += f" if its {events} keep bursting as so far: dispersion {shown}"
    others = f"; {len(unsafe) - 1} other check(s) not shown yet" if len(unsafe) > 1 else ""
    return (f"not yet shown safe: {c.service} {c.check} {what} upper bound {_beside(safety['bound'], safety['margin'])}"
            f", margin {safety['margin']:g} ({tail}){others}")


def _measure(check: str, on: str) -> str:
    """What a safety bound is of, in words an operator reads without docs/analysis.md at hand."""
    events = "slow-request" if check == "slowTail" else "error"
    return {"delta": "latency shift P(slower)-P(faster)", "ratio": f"canary/baseline {events} ratio",
            "excess": f"excess {events} rate (canary minus baseline)"}[on]


def _beside(value: float, margin: float) -> str:
    """`value` with the digits that tell it from `margin` (a bound of 2.0004 is not "2" beside a margin of 2)."""
    for digits in (3, 4, 5, 6):
        text = f"{value:.{digits}g}"
        if text != f"{margin:g}" or value == margin:
            return text
    return f"{value:.6g}"


def _upgraded(state: dict[str, Any]) -> dict[str, Any]:
    """A state of STATE_VERSION 1 (a release judged by an earlier controller, resumed by this one) in today's form:
    each rate check's summed log-likelihood ratios divided by its pooled phi, as that version read them, so the
    e-values go on from where they were."""
    if state.get("version", STATE_VERSION) >= 2:
        return state
    for svc in state.get("services", {}).values():
        for check in ("errorRate", "slowTail"):
            rec = svc[check]
            rec["llr"] = (np.asarray(rec["llr"]) / rate_dispersion(rec)).tolist()
            rec.setdefault("spread", [0.0, 0.0, 0, 0])
    state["version"] = STATE_VERSION
    return state


@dataclass(frozen=True)
class _Placement:
    """What one interval tells a rate check about pod placement: the baseline's pods' (events, requests), and
    how many pods of each version served."""

    pods: Mapping[str, tuple[int, int]]
    canary_pods: int
    baseline_pods: int


_NO_PODS = _Placement({}, 0, 0)


def _pod_events(pods: Mapping[str, VersionCounts], tail_start: int | None = None) -> dict[str, tuple[int, int]]:
    """Each pod's (events, requests): its errors, or with `tail_start` its requests from that bucket on."""
    return {p: (x.errors if tail_start is None else int(sum(x.buckets[tail_start:])), x.requests)
            for p, x in pods.items()}


def _placement(obs: IntervalObservation, tail_start: int | None = None) -> _Placement:
    """The interval's `_Placement` for the error rate, or with `tail_start` for the slow tail."""
    return _Placement(_pod_events(obs.baseline_pods, tail_start), serving(obs.canary_pods),
                      serving(obs.baseline_pods))


def _fold_ratio(rec: dict[str, Any], k_c: int, k_b: int, n_c: int, n_b: int, r0: float,
                placed: _Placement = _NO_PODS) -> None:
    """Add one interval to a rate check: its likelihoods, the Pearson residual of its canary events against the
    ratio estimated from the intervals before it (for the dispersion phi, see `dispersion`), and the baseline's
    own spread (see `interval_dispersion`). The harm e-value adds each interval's log-likelihood ratios capped at
    RATE_INTERVAL_LLR_CAP times that interval's dispersion and divided by it, the dispersion fixed from what was
    known before the interval (and its total events): one interval adds at most the cap, however overdispersed
    the check. When the baseline's events burst (`_burst_inputs`), the interval's log-likelihood ratios are those
    of the split under bursts (`analysis.bursts`) instead, capped at RATE_INTERVAL_LLR_CAP and divided by the
    dispersion the bursts leave unexplained (`burst_excess`). The ratio's bounds use the log-likelihoods divided
    by the pooled phi. The e-value divides the summed log-likelihood ratios by the pod placement factor g
    (`rate_placement`)."""
    kappa = judged_burstiness(rec)  # from the intervals before this one; both below judge with it
    phi_t = interval_dispersion(rec, k_c + k_b, n_c, n_b, r0, kappa)
    bursts = _burst_inputs(rec, k_c + k_b, n_c, n_b, kappa)
    _fold_pearson(rec, k_c, k_b, n_c, n_b)
    _fold_spread(rec, k_b, n_b)
    _fold_recent(rec, k_c, k_b, n_c, n_b)
    fold_rate_pods(rec.setdefault("pods", {}), placed.pods)
    if n_c > 0 and n_b > 0 and k_c + k_b > 0:
        share = r0 * n_c / (r0 * n_c + n_b)
        rec["wk"] = rec.get("wk", 0.0) + float(
            pod_weight((k_c + k_b) * share * (1.0 - share) / phi_t, placed.canary_pods, placed.baseline_pods))
    if bursts is None:
        added = ratio_increment(k_c, k_b, n_c, n_b, r0, cap=RATE_INTERVAL_LLR_CAP * phi_t) / phi_t
    else:
        level, rate, excess, version_kappa = bursts
        added = burst_increment(k_c, k_b, n_c, n_b, r0, RATIO_GRID, level, rate, cap=RATE_INTERVAL_LLR_CAP,
                                version_kappa=version_kappa) / excess
    rec["llr"] = (np.asarray(rec["llr"]) + added).tolist()
    rec["cs"] = (np.asarray(rec["cs"]) + ratio_cs_increment(k_c, k_b, n_c, n_b)).tolist()
    rec["events"] = [rec["events"][0] + k_c, rec["events"][1] + k_b]
    rec["exposure"] = [rec["exposure"][0] + n_c, rec["exposure"][1] + n_b]
    rec["logE"] = float(log_mixture(np.asarray(rec["llr"]) / rate_placement(rec)))


def _burst_inputs(rec: Mapping[str, Any], events: int, n_c: int, n_b: int, kappa: float | None = None
                  ) -> tuple[int, float, float, float | None] | None:
    """What the burst likelihood (`analysis.bursts`) needs for one interval, from the intervals before it: the
    level of each version's own burstiness (`judged_burstiness` raised by BURST_KAPPA_MARGIN, rounded up), the
    baseline's event rate raised by BURST_RATE_MARGIN, the dispersion left beyond the bursts (`burst_excess`, at
    least 1), which divides the interval's log-likelihood ratios as phi_t divides the binomial's, and the
    burstiness of a version's rate as a whole (the baseline's, raised by BURST_KAPPA_MARGIN) when the split showed
    less than that (None: the same). None when the binomial split is used: no bursts learnt (kappa below the
    floor once raised), no baseline rate yet, or nothing to compare in the interval. `kappa`, when given, is
    `judged_burstiness(rec)` already computed."""
    whole = rate_burstiness(rec)
    kappa = judged_burstiness(rec) if kappa is None else kappa
    level = kappa_level(BURST_KAPPA_MARGIN * kappa)
    _, _, seen, exposure = rec.get("spread", [0.0, 0.0, 0, 0])
    if level is None or seen <= 0 or exposure <= 0 or not (n_c > 0 and n_b > 0 and events > 0):
        return None
    version_kappa = None if kappa >= whole else BURST_KAPPA_MARGIN * whole
    return level, BURST_RATE_MARGIN * seen / exposure, burst_excess(rec, kappa), version_kappa


def warming_pods(svc: dict[str, Any], obs: IntervalObservation, tick: int, intervals: int) -> set[str]:
    """The canary pods of this interval still warming up: first seen less than `intervals` intervals ago. The
    pods of the first interval with any are warm (the controller waits the warm-up before the release's first
    window); a pod seen later (a step's scale-up, an autoscaler's, a replacement) is new. Keeps the pods of this
    interval only, each with the tick it was first seen (`canaryPodsSince`), so the state stays as small as
    the canary."""
    if intervals <= 0 or not obs.canary_pods:
        return set()
    since = svc.get("canaryPodsSince")
    if since is None:
        svc["canaryPodsSince"] = {p: tick - intervals for p in obs.canary_pods}
        return set()
    now = {p: int(since.get(p, tick)) for p in obs.canary_pods}
    svc["canaryPodsSince"] = now
    return {p for p, first in now.items() if tick - first < intervals}


def burst_excess(rec: Mapping[str, Any], kappa: float) -> float:
    """The dispersion a rate check's burst likelihood leaves unexplained (>= 1): over its last EXCESS_WINDOW
    intervals, the squared deviations of the canary's events from the split the ratio estimated so far predicts,
    against the variance the bursts give them, v_t (1 + 2 kappa v_t) with v_t = k_t s_t (1 - s_t) at that ratio's
    share s_t (`interval_dispersion`), shrunk towards 1 as `dispersion` does. About 1 when the bursts explain the
    intervals' spread; more when something else spreads them (pods failing differently, bursts the model does not
    describe).

    Measured at the ratio estimated from every interval so far, not at each interval's ratio as known before it
    (the pooled Pearson phi, which this replaced): under a regression the first intervals' ratio lags the truth,
    and their deviations from it, kept in a pooled sum, read as noise the bursts do not explain and divided the
    evidence of the regression itself. Fixed before the interval it divides, like every input of the interval's
    likelihood."""
    split = _recent_split(rec)
    if split is None:
        return 1.0
    deviation, v = split
    return dispersion(float(np.sum(deviation**2)), float(np.sum(v * (1.0 + 2.0 * kappa * v))), len(v))


def _recent_split(rec: Mapping[str, Any]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """Over the intervals `burst_excess` keeps, the canary's events less what the split at the ratio estimated
    from every interval so far predicts, and the binomial variance v_t of that split; None before any."""
    recent = rec.get("recent") or []
    x_c, x_b = rec["exposure"]
    if not recent or x_c <= 0 or x_b <= 0:
        return None
    ratio = _estimated_ratio(rec)
    k_c, k_b, n_c, n_b = np.asarray(recent, dtype=np.float64).T
    events = k_c + k_b
    share = ratio * n_c / (ratio * n_c + n_b)
    return k_c - events * share, events * share * (1.0 - share)


def judged_burstiness(rec: Mapping[str, Any]) -> float:
    """The kappa a rate check's interval is judged with: the baseline's own burstiness (`rate_burstiness`), or
    less when the versions' split shows less (`split_burstiness`): the part of the bursts both versions share
    cancels in the split, and only the rest can make identical versions' errors look different."""
    kappa = rate_burstiness(rec)
    split = split_burstiness(rec)
    return kappa if split is None else min(kappa, split)


def split_burstiness(rec: Mapping[str, Any]) -> float | None:
    """An upper bound on each version's own burstiness from the split of the events between them, or None with
    fewer than SPLIT_BURST_MIN_INTERVALS intervals to measure it on.

    When each version's rate has a factor of its own per interval (squared coefficient of variation kappa_c,
    kappa_b), the canary's events given the interval's deviate from the split by E[d_t^2] = v_t (1 + theta v_t),
    theta = kappa_c + kappa_b; a factor both versions share cancels. theta is estimated by moments over the
    intervals `burst_excess` keeps, sum(d_t^2 - v_t) / sum(v_t^2), with its standard error from the same terms,
    and taken SPLIT_BURST_Z standard errors high (then halved: per version, as the burst likelihood's kappa), so
    that it is rarely below the truth; the judge still raises what it uses by BURST_KAPPA_MARGIN, and
    `burst_excess` still divides the evidence by whatever dispersion is left."""
    split = _recent_split(rec)
    if split is None or len(split[1]) < SPLIT_BURST_MIN_INTERVALS:
        return None
    deviation, v = split
    excess, squares = deviation**2 - v, float(np.sum(v * v))
    if squares <= 0:
        return None
    theta = float(np.sum(excess)) / squares
    error = math.sqrt(float(np.sum((excess - theta * v * v) ** 2))) / squares
    return (max(theta, 0.0) + SPLIT_BURST_Z * error) / 2.0


def _fold_recent(rec: dict[str, Any], k_c: int, k_b: int, n_c: int, n_b: int) -> None:
    """Keep the interval for `burst_excess` when it has something to compare; the last EXCESS_WINDOW only."""
    if n_c > 0 and n_b > 0 and k_c + k_b > 0:
        rec["recent"] = [*(rec.get("recent") or []), [k_c, k_b, n_c, n_b]][-EXCESS_WINDOW:]


def rate_placement(rec: Mapping[str, Any]) -> float:
    """g = 1 + tau^2 W for a rate check (analysis.pods): tau^2 the spread of the baseline's pods' rates, W the sum
    over intervals of the information each gave on the log ratio, v_t / phi_t, times 1/k_c + 1/k_b. The
    canary's few pods may fail a little more or less often than the fleet for as long as they live; the summed
    log-likelihood ratios divided by g are those of the random-effect model (about: the rate's likelihood ratio
    is Gaussian in its score only for many events). 1 without per-pod counts."""
    return 1.0 + rate_tau2_of(rec.get("pods", {})) * float(rec.get("wk", 0.0))


def interval_dispersion(rec: Mapping[str, Any], events: int, n_c: int, n_b: int, r0: float,
                        kappa: float | None = None) -> float:
    """phi_t of one interval with `events` events in all: the larger of the pooled Pearson phi and
    1 + 2 kappa v_t, where v_t = events s (1 - s) is the binomial variance of the canary's share of them (s at the
    ratio r0) and kappa the baseline's own burstiness, or less when the split shows less (`judged_burstiness`).

    Why a variance function: when each version's rate is multiplied every minute by a factor of squared
    coefficient of variation kappa (error bursts, a retry storm, a slow minute), the canary's count given the
    interval's events varies v_t (1 + (kappa_c + kappa_b) v_t): the excess grows with the events compared, so a
    pooled phi learnt at 10% understates the noise at 50%, and more so the busier the service. Under the null the
    canary's errors are as bursty as the baseline's (kappa_c = kappa_b), and the baseline, with most of the
    traffic, measures kappa far more precisely than the comparison can; but its kappa also counts the bursts both
    versions share, which cancel in the split, so the split's own bound is used when lower. `kappa`, when given,
    is `judged_burstiness(rec)` already computed."""
    if not (n_c > 0 and n_b > 0 and events > 0):
        return harm_dispersion(rec)
    share = r0 * n_c / (r0 * n_c + n_b)
    v_t = events * share * (1.0 - share)
    return max(harm_dispersion(rec), 1.0 + 2.0 * (judged_burstiness(rec) if kappa is None else kappa) * v_t)


def harm_dispersion(rec: Mapping[str, Any]) -> float:
    """The Pearson phi that divides a rate check's harm evidence (`interval_dispersion`): over its last
    EXCESS_WINDOW intervals, the canary's deviations from the split at the ratio estimated from every interval
    so far, against the binomial variance (`burst_excess` without bursts).

    Not the pooled phi of each interval against the ratio known before it (`rate_dispersion`, which the bounds
    keep): under a regression the first intervals' ratio lags the truth (the estimate starts from a few
    events), and their deviations from it read as noise and divided the evidence of the regression itself
    (a local canary failing 8 of 18 requests in its first window was judged with phi 2.3-2.9). Fixed before the
    interval it divides, so each interval's factor keeps expectation <= 1 when requests are independent."""
    return burst_excess(rec, 0.0)


def _fold_spread(rec: dict[str, Any], k_b: int, n_b: int) -> None:
    """Add one baseline interval to the moments of its own burstiness: the squared deviation of its events from
    its rate before the interval (deflated for that rate's own error), less the Poisson part, and m^2; then the
    interval to that rate. The rate and the moments may start from the stable version's intervals before the
    release (`SequentialJudge.prime`)."""
    a, b, seen, exposure = rec.get("spread", [0.0, 0.0, 0, 0])
    if exposure > 0 and n_b > 0 and seen > 0:
        m = n_b * seen / exposure
        a, b = a + (k_b - m) ** 2 / (1.0 + n_b / exposure) - m, b + m * m
    rec["spread"] = [a, b, seen + k_b, exposure + n_b]


def rate_burstiness(rec: Mapping[str, Any]) -> float:
    """kappa >= 0: the squared coefficient of variation of the baseline's rate from interval to interval, by
    moments (Var k = m + kappa m^2 for an interval expecting m events); 0 until two intervals with events."""
    a, b = rec.get("spread", [0.0, 0.0])[:2]
    return max(0.0, a / b) if b > 0 else 0.0


def _estimated_ratio(rec: Mapping[str, Any]) -> float:
    """The rate ratio estimated from the intervals folded so far (half an event added to each side), for checks
    that have seen requests of both versions."""
    (e_c, e_b), (x_c, x_b) = rec["events"], rec["exposure"]
    return float(((e_c + 0.5) / x_c) / ((e_b + 0.5) / x_b))


def _canary_share(rec: Mapping[str, Any], n_c: int, n_b: int) -> float:
    """The canary's expected share of the interval's events at the ratio estimated before it."""
    ratio = _estimated_ratio(rec)
    return float(ratio * n_c / (ratio * n_c + n_b))


def _fold_pearson(rec: dict[str, Any], k_c: int, k_b: int, n_c: int, n_b: int) -> None:
    """Add one interval's squared residual k_c - events s and its variance under the model. s is the canary's
    share at the ratio estimated before the interval, so the variance is the binomial split's, events s (1 - s),
    plus what the estimate's own error adds, events^2 Var(s): by the delta method s (1 - s) times the log ratio's
    variance, 1 / (e_c + 1/2) + 1 / (e_b + 1/2) over the events seen before. Without it the first intervals' shares,
    estimated from a handful of events, read as overdispersion: a burst both versions shared, 35 and 46 slow
    requests judged against a ratio estimated from 2 events to 0, once gave phi 53 on identical versions, which
    held a healthy release for the rest of its run; and on independent requests phi averaged 1.35 where it now
    averages 1.15 (`python -m bench.dispersion`)."""
    x_c, x_b = rec["exposure"]
    events = k_c + k_b
    if not (x_c > 0 and x_b > 0 and n_c > 0 and n_b > 0 and events > 0):
        return  # no estimate before this interval, or nothing to compare in it
    share = _canary_share(rec, n_c, n_b)
    e_c, e_b = rec["events"]
    binomial = events * share * (1.0 - share)
    expected = binomial + binomial**2 * (1.0 / (e_c + 0.5) + 1.0 / (e_b + 0.5))
    q, v, n = rec.get("disp", [0.0, 0.0, 0])
    rec["disp"] = [q + (k_c - events * share) ** 2, v + expected, n + 1]


def rate_dispersion(rec: Mapping[str, Any]) -> float:
    """phi of a rate check (1 until two intervals with events have been compared)."""
    q, v, n = rec.get("disp", [0.0, 0.0, 0])
    return dispersion(q, v, n)


def bound_dispersion(rec: Mapping[str, Any]) -> float:
    """The phi a rate check's safety bounds and confidence sequence divide its evidence by: the pooled phi, or
    where its events come in bursts (`kappa_level` of `judged_burstiness`, as the burst likelihood) at least the
    dispersion its last interval's split has under them, 1 + 2 kappa v (`interval_dispersion`). The pooled phi
    averages the intervals, most of them compared at low weights; under bursts the split's noise grows with the
    events compared, so at 50% the pooled phi understates it, and a canary exactly at the excess-rate margin was
    shown safe in 6.4% of releases in `bench.worlds`' bursts at 50 req/s (alpha 5%)."""
    phi = rate_dispersion(rec)
    kappa = judged_burstiness(rec)
    recent = rec.get("recent") or []
    x_c, x_b = rec["exposure"]
    if not recent or kappa_level(BURST_KAPPA_MARGIN * kappa) is None or x_c <= 0 or x_b <= 0:
        return phi
    _, _, n_c, n_b = recent[-1]
    e_c, e_b = rec["events"]
    events = n_c * e_c / x_c + n_b * e_b / x_b  # events its requests would have at the rates so far
    share = _canary_share(rec, n_c, n_b)
    return max(phi, float(1.0 + 2.0 * kappa * events * share * (1.0 - share)))


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def _ratio(k_c: int, n_c: int, k_b: int, n_b: int) -> float | None:
    if not (n_c and n_b and k_b):
        return None
    return (k_c / n_c) / (k_b / n_b)


def _bound_of(start: int | None, n_buckets: int, bounds: Sequence[float]) -> float | None:
    if start is None or start <= 0 or len(bounds) != n_buckets:
        return None
    return float(bounds[start - 1])


def _mismatch(checks: Sequence[CheckResult]) -> str:
    """The first sample-ratio mismatch among the checks, in words ("" when none)."""
    srm = next((c for c in checks if c.check == "sampleRatio" and c.verdict is Verdict.ERROR), None)
    if srm is None:
        return ""
    return (f"sample-ratio mismatch on {srm.service}: canary got {_pct(srm.estimates['canaryShare'])} of requests, "
            f"intended {_pct(srm.estimates['intendedShare'])}")


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{100.0 * share:.1f}%"
