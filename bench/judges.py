"""Judge benchmark: false rollbacks, power and detection delay of every judge on simulated canaries.

    python -m bench.judges                      # full grid (about 10 min on 2 cores)
    python -m bench.judges --reps 100 --aa-reps 200 --workers 1   # a quick look
    python -m bench.judges --world real --scenarios aa,aa240 --aa-reps 200   # A/A in a noisy world
    python -m bench.judges --world real --warmup 1 --history 30   # ... judged as the default release is

Generator (per 60 s interval): requests per version ~ Poisson(R * w * 60); latency 0.97 LogNormal(median
40 ms, sigma 0.5) + 0.03 LogNormal(median 300 ms, sigma 0.6), binned into Istio's buckets; errors
Binomial(n, 0.5%). Scenarios: A/A, A/A with drift (both versions slow down by up to 50% and fail up to 3x
more over the horizon), latency +10% / +25%, slow tail (slow mode 3% -> 6%), errors x2 / x4; A/A over
240 min too. Cells: 5, 20, 50 req/s x canary weight 5, 10, 25, 50% and a progressive 5 -> 50% schedule
(+5% every 3 min). Every judge sees the same draws. The sequential judge runs vectorised through the
same functions `analysis.sequential` uses (a check at start-up compares it with `SequentialJudge` itself).

`--world NAME` runs the grid on a world of bench/worlds.py (pods, jitter, bursts, warmup, diurnal, real, bursts-shared)
instead of the independent requests above (the default; its baseline now spread over 10 identical pods and
its canary over 1-3, whose counts the judge reads as in production); `--scenarios` picks scenarios (aa240 is
the 240-minute A/A); `--warmup N` leaves each replication's first N minutes unjudged, as
`strategy.canary.warmup` does (the grid's weight is fixed from minute 0, so its new pods warm up then);
`--history N` draws N minutes of the stable version alone before each replication and primes the judge with
them, as `analysis.historyIntervals` does (the default release: `--warmup 1 --history 30`).

Prints a table and writes bench/results/judges.json (judges_<world>.json for another world).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import special, stats

from analysis.bursts import BURST_KAPPA_MARGIN, BURST_RATE_MARGIN, burst_increment, kappa_level
from analysis.config import AnalysisConfig
from analysis.histogram import rank_sum, reference_tail_index, shift_increment, shift_weight, tail_counts
from analysis.kayenta import classify, direction_labels, metric_values, summary_score
from analysis.observations import ISTIO_BUCKETS_MS, IntervalObservation, Verdict, VersionCounts
from analysis.pods import (
    placement_factor,
    pod_shift_increments,
    pod_variance,
    pod_weight,
    rate_pod_increments,
    rate_pod_variance,
)
from analysis.sequential import (
    DISPERSION_PRIOR,
    EXCESS_WINDOW,
    RATE_INTERVAL_LLR_CAP,
    RATIO_GRID,
    SPLIT_BURST_MIN_INTERVALS,
    SPLIT_BURST_Z,
    SequentialJudge,
    log_mixture,
    ratio_increment,
    shift_log_evalue,
    srm_increment,
)
from analysis.threshold import interval_failures
from bench import worlds
from bench.worlds import Scenario, Sim, bucket_probs

BOUNDS = ISTIO_BUCKETS_MS
RATES = (5, 20, 50)
WEIGHTS: tuple[str, ...] = ("5", "10", "25", "50", "prog")
SCENARIOS = ("aa", "aa_drift", "lat10", "lat25", "tail", "err2", "err4")
REGRESSIONS = ("lat10", "lat25", "tail", "err2", "err4")
BASE_ERROR = 0.005
NEVER = 10**9


SCENARIO_SPECS = {
    "aa": Scenario(),
    "aa240": Scenario(),
    "aa_drift": Scenario(drift=True),
    "lat10": Scenario(latency_canary=1.10),
    "lat25": Scenario(latency_canary=1.25),
    "tail": Scenario(slow_canary=0.06),
    "err2": Scenario(error_canary=2.0),
    "err4": Scenario(error_canary=4.0),
}


def weight_schedule(weight: str, minutes: int) -> np.ndarray:
    t = np.arange(minutes)
    if weight == "prog":
        return np.minimum(5.0 * (t // 3 + 1), 50.0)
    return np.full(minutes, float(weight))


def simulate(rng: np.random.Generator, reps: int, minutes: int, rate: float, weight: str, sc: Scenario,
             world: str = "independent", history: int = 0) -> Sim:
    """The traffic of one cell, after `history` minutes of the stable version alone (weight 0); `world` other
    than independent comes from bench.worlds."""
    w = np.concatenate((np.zeros(history), weight_schedule(weight, minutes)))
    if world != "independent":
        return worlds.simulate(world, rng, reps, w, rate, sc)
    minutes += history
    # The baseline's errors per pod, split from its errors by a stream of its own (the draws above stay
    # those of earlier runs): with identical pods that is each pod's own binomial.
    split = rng.spawn(1)[0]
    n_c = rng.poisson(rate * 60 * w / 100.0, size=(reps, minutes))
    n_b = rng.poisson(rate * 60 * (1 - w / 100.0), size=(reps, minutes))
    k = len(BOUNDS)
    b_c = np.empty((reps, minutes, k), dtype=np.int64)
    b_b = np.empty((reps, minutes, k), dtype=np.int64)
    e_c = np.empty((reps, minutes), dtype=np.int64)
    e_b = np.empty((reps, minutes), dtype=np.int64)
    # Identical pods, as production has them: the baseline's requests spread over worlds.BASELINE_PODS pods,
    # the canary's over worlds.canary_pods(weight).
    pods_b, pods_c = worlds.BASELINE_PODS, worlds.MAX_CANARY_PODS
    pb_b = np.empty((reps, minutes, pods_b, k), dtype=np.int64)
    pn_c = np.zeros((reps, minutes, pods_c), dtype=np.int64)
    pe_b = np.zeros((reps, minutes, pods_b), dtype=np.int64)
    for t in range(minutes):
        frac = t / max(minutes - 1, 1) if sc.drift else 0.0
        mult, err = 1.0 + 0.5 * frac, BASE_ERROR * (1.0 + 2.0 * frac)
        per_pod = rng.multinomial(n_b[:, t], np.full(pods_b, 1.0 / pods_b))
        pb_b[:, t] = rng.multinomial(per_pod, bucket_probs(mult, 0.03))
        b_b[:, t] = pb_b[:, t].sum(axis=1)
        b_c[:, t] = rng.multinomial(n_c[:, t], bucket_probs(mult * sc.latency_canary, sc.slow_canary))
        k_c = int(worlds.canary_pods(w[t]))
        pn_c[:, t, :k_c] = rng.multinomial(n_c[:, t], np.full(k_c, 1.0 / k_c))
        e_b[:, t] = rng.binomial(n_b[:, t], err)
        e_c[:, t] = rng.binomial(n_c[:, t], min(err * sc.error_canary, 1.0))
        served = per_pod.sum(axis=1, keepdims=True)
        pe_b[:, t] = split.multinomial(e_b[:, t], np.where(served > 0, per_pod / np.maximum(served, 1), 1.0 / pods_b))
    return Sim(n_c, n_b, e_c, e_b, b_c, b_b, w, pn_c, pb_b.sum(axis=-1), pb_b, pe_b)


def first_true(flags: np.ndarray) -> np.ndarray:
    """1-based minute of the first True along the last axis, NEVER when none."""
    any_ = flags.any(axis=-1)
    return np.where(any_, np.argmax(flags, axis=-1) + 1, NEVER)


# --- the judges, vectorised over replications -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RatePods:
    """A rate check's per-pod view (reps, T, P) of the baseline's events and requests, and each version's serving
    pods (reps, T): what the judge's pod placement factor reads (`analysis.sequential.rate_placement`)."""

    events: np.ndarray
    requests: np.ndarray
    canary_pods: np.ndarray
    baseline_pods: np.ndarray


@dataclasses.dataclass(frozen=True)
class RatePrior:
    """What `SequentialJudge.prime` learns for one rate check from the stable version's minutes before the
    release, per replication: the spread sums [a, b, events, requests] (reps, 4) and the pods' sums (3, reps, P),
    None without per-pod counts."""

    spread: np.ndarray
    pods: np.ndarray | None


def history_priors(hist: Sim, cfg: AnalysisConfig) -> tuple[np.ndarray, dict[str, RatePrior]]:
    """The slow-tail threshold (reps,) and each rate check's prior from `hist`, the baseline's minutes alone."""
    start = reference_tail_index(hist.b_b.sum(axis=1), cfg.tail_reference_quantile)
    tail_b = tail_counts(hist.b_b, start[:, None])
    tail_pods = tail_counts(hist.pb_b, start[:, None, None]) if hist.pb_b is not None else None

    def prior(k_b: np.ndarray, pods: np.ndarray | None) -> RatePrior:
        e_b, x_b = np.cumsum(k_b, axis=1) - k_b, np.cumsum(hist.n_b, axis=1) - hist.n_b
        a, b = _spread_sums(k_b, hist.n_b, e_b, x_b)
        spread = np.stack([a[:, -1], b[:, -1], k_b.sum(axis=1), hist.n_b.sum(axis=1)], axis=1)
        if pods is None or hist.pn_b is None:
            return RatePrior(spread, None)
        return RatePrior(spread, np.stack([x.sum(axis=1) for x in rate_pod_increments(pods, hist.pn_b)]))

    return start, {"errorRate": prior(hist.e_b, hist.pe_b), "slowTail": prior(tail_b, tail_pods)}


def sequential_log_evalues(
    sim: Sim, cfg: AnalysisConfig, grid: tuple[float, ...] = RATIO_GRID, hist: Sim | None = None
) -> dict[str, np.ndarray]:
    """Each check's ln e-process per (rep, minute), as SequentialJudge computes them; primed with `hist`, the
    stable version's minutes before the release, when given."""
    r0 = cfg.error_ratio_tolerance
    start, priors = history_priors(hist, cfg) if hist is not None else (None, {})
    kc = (sim.pn_c > 0).sum(axis=-1) if sim.pn_c is not None else np.zeros(sim.n_c.shape, dtype=np.int64)
    kb = (sim.pn_b > 0).sum(axis=-1) if sim.pn_b is not None else np.zeros(sim.n_b.shape, dtype=np.int64)
    pods = RatePods(sim.pe_b, sim.pn_b, kc, kb) if sim.pe_b is not None and sim.pn_b is not None else None
    err = _rate_log_evalue(sim.e_c, sim.e_b, sim.n_c, sim.n_b, r0, grid, pods, priors.get("errorRate"))
    tested = np.ones(sim.n_c.shape, dtype=bool)
    if start is None:
        # L* came from interval 1's baseline: the tail test starts with interval 2.
        start = reference_tail_index(sim.b_b[:, 0, :], cfg.tail_reference_quantile)
        tested[:, 0] = False
    tc, tb = tail_counts(sim.b_c, start[:, None]), tail_counts(sim.b_b, start[:, None])
    tail_pods = None
    if pods is not None and sim.pb_b is not None:
        tail_pods = dataclasses.replace(pods, events=tail_counts(sim.pb_b, start[:, None, None]) * tested[..., None])
    tail = _rate_log_evalue(tc * tested, tb * tested, sim.n_c * tested, sim.n_b * tested, r0, grid, tail_pods,
                            priors.get("slowTail"))
    st, vt = shift_increment(sim.b_c, sim.b_b, np.cumsum(sim.b_c, axis=1) - sim.b_c,
                             np.cumsum(sim.b_b, axis=1) - sim.b_b)
    s, v = np.cumsum(st, axis=1), np.cumsum(vt, axis=1)
    q, c3, a4 = np.cumsum(st * st, axis=1), np.cumsum(vt * st, axis=1), np.cumsum(vt * vt, axis=1)
    n = np.cumsum(vt > 0, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rss = np.maximum(q - np.where(a4 > 0, c3 * c3 / np.where(a4 > 0, a4, 1.0), 0.0), 0.0)
        phi = dispersion_array(rss, v * (n - 1) / np.maximum(n, 1), n - 1)
    g = _placement(sim, vt, phi)
    lat = shift_log_evalue(s / g, v / g, cfg.latency_tolerance, cfg.latency_min_effect, phi)
    lat = np.where(np.cumsum(sim.n_c, axis=1) >= cfg.min_canary_requests, lat, 0.0)
    srm = log_mixture(np.cumsum(srm_increment(sim.n_c, sim.n_b, sim.weight[None, :]), axis=1))
    return {"errorRate": err, "slowTail": tail, "latencyShift": lat, "sampleRatio": srm}


def _placement(sim: Sim, vt: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """`analysis.pods.placement_factor` per (rep, minute) from the Sim's per-pod counts (1 without them)."""
    if sim.pb_b is None or sim.pn_c is None or sim.pn_b is None:
        return np.ones(vt.shape)
    az, a2 = pod_shift_increments(sim.pb_b)  # (reps, T, pods): a pod alone, or with no requests, adds 0
    tau2 = pod_variance(np.cumsum(az, axis=1), np.cumsum(a2, axis=1))
    wk = np.cumsum(pod_weight(vt, (sim.pn_c > 0).sum(axis=-1), (sim.pn_b > 0).sum(axis=-1)), axis=1)
    return placement_factor(tau2, wk, phi)


def dispersion_array(rss: np.ndarray, expected: np.ndarray, dof: np.ndarray) -> np.ndarray:
    """`analysis.sequential.dispersion`, vectorised."""
    with np.errstate(divide="ignore", invalid="ignore"):
        est = (np.where(expected > 0, rss / np.where(expected > 0, expected, 1.0), 1.0) * dof + DISPERSION_PRIOR) / (
            dof + DISPERSION_PRIOR)
    return np.where((dof > 0) & (expected > 0), np.maximum(est, 1.0), 1.0)


def _rate_log_evalue(k_c: np.ndarray, k_b: np.ndarray, n_c: np.ndarray, n_b: np.ndarray, r0: float,
                     grid: tuple[float, ...], pods: RatePods | None = None, prior: RatePrior | None = None
                     ) -> np.ndarray:
    """A rate check's ln e-process per (rep, minute), as `_fold_ratio` computes it: each interval's likelihood
    ratios capped at RATE_INTERVAL_LLR_CAP times its dispersion phi_t and divided by it, phi_t the larger of the
    Pearson dispersion known before the interval (`harm_dispersion`) and 1 + 2 kappa v_t (`interval_dispersion`);
    their sum divided by the pod placement factor g (`rate_placement`) when the baseline's pods are known."""
    e_c, e_b = np.cumsum(k_c, axis=1) - k_c, np.cumsum(k_b, axis=1) - k_b  # before each interval
    x_c, x_b = np.cumsum(n_c, axis=1) - n_c, np.cumsum(n_b, axis=1) - n_b
    events = k_c + k_b
    known = (x_c > 0) & (x_b > 0)
    both = (n_c > 0) & (n_b > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(known, ((e_c + 0.5) / np.where(known, x_c, 1)) / ((e_b + 0.5) / np.where(known, x_b, 1)),
                         1.0)
        share0 = np.where(both, r0 * n_c / np.where(both, r0 * n_c + n_b, 1.0), 0.0)
    kappa_before = _before(_burstiness(k_b, n_b, e_b, x_b, prior), _prior_burstiness(prior))
    # kappa as judged: the baseline's, lowered where the split between the versions shows less
    excess, phi_before, judged = _recent_dispersions((k_c, k_b, n_c, n_b), np.where(known, ratio, 0.0), kappa_before)
    v_t = np.where(both & (events > 0), events * share0 * (1.0 - share0), 0.0)
    phi_t = np.where(both & (events > 0), np.maximum(phi_before, 1.0 + 2.0 * judged * v_t), phi_before)
    added = ratio_increment(k_c, k_b, n_c, n_b, r0, grid, cap=RATE_INTERVAL_LLR_CAP * phi_t) / phi_t[..., None]
    _burst_added(added, (k_c, k_b, n_c, n_b), r0, grid, _baseline_rate(e_b, x_b, prior), (judged, kappa_before),
                 excess)
    g = np.ones(k_c.shape) if pods is None else _rate_placement(pods, v_t / phi_t, prior)
    return log_mixture(np.cumsum(added, axis=1) / g[..., None])


def _baseline_rate(e_b: np.ndarray, x_b: np.ndarray, prior: RatePrior | None) -> np.ndarray:
    """The baseline's events per request before each minute, the prior's included (the spread's seen / exposure);
    0 before any."""
    seen0, exp0 = (prior.spread.T[2:, :, None] if prior is not None else np.zeros((2, 1, 1)))
    seen, exposure = e_b + seen0, x_b + exp0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((seen > 0) & (exposure > 0), BURST_RATE_MARGIN * seen / np.where(exposure > 0, exposure, 1.0),
                        0.0)


_NO_LEVEL = -(10**6)  # kappa below the burst likelihood's floor


def _recent_dispersions(counts: tuple[np.ndarray, ...], ratio: np.ndarray, kappa: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`analysis.sequential.burst_excess`, `harm_dispersion` and `judged_burstiness` per (rep, minute), in one
    pass: over the last EXCESS_WINDOW minutes before it that had something to compare, the canary's deviations
    from the split at `ratio` (the estimate before the minute; 0 when none, then 1) against the bursts' variance
    and against the binomial's, each shrunk as `dispersion` does; and the baseline's burstiness `kappa`, lowered
    to the split's own bound where that is lower (the bursts' variance uses the lowered one)."""
    k_c, k_b, n_c, n_b = (np.asarray(x, dtype=np.float64) for x in counts)
    events = k_c + k_b
    used = (n_c > 0) & (n_b > 0) & (events > 0)
    excess, plain = np.ones(k_c.shape), np.ones(k_c.shape)
    judged = np.array(np.broadcast_to(kappa, k_c.shape), dtype=np.float64)
    for t in range(1, k_c.shape[1]):
        # The judge keeps the last EXCESS_WINDOW minutes that had something to compare, not the last minutes.
        kept = used[:, :t] & (np.cumsum(used[:, :t][:, ::-1], axis=1)[:, ::-1] <= EXCESS_WINDOW)
        r = ratio[:, t:t + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(kept, r * n_c[:, :t] / np.where(kept, r * n_c[:, :t] + n_b[:, :t], 1.0), 0.0)
        k = events[:, :t]
        v = np.where(kept, k * share * (1.0 - share), 0.0)
        deviation = np.where(kept, k_c[:, :t] - k * share, 0.0)
        known = (ratio[:, t] > 0) & kept.any(axis=1)
        judged[:, t] = np.where(known, np.minimum(judged[:, t], _split_burstiness(kept, deviation, v)), judged[:, t])
        rss = np.sum(deviation**2, axis=1)
        model = np.sum(v * (1.0 + 2.0 * judged[:, t:t + 1] * v), axis=1)
        dof = kept.sum(axis=1).astype(np.float64)
        excess[:, t] = np.where(known, dispersion_array(rss, model, dof), 1.0)
        plain[:, t] = np.where(known, dispersion_array(rss, np.sum(v, axis=1), dof), 1.0)
    return excess, plain, judged


def _split_burstiness(kept: np.ndarray, deviation: np.ndarray, v: np.ndarray) -> np.ndarray:
    """`analysis.sequential.split_burstiness` per rep from its kept minutes (0 elsewhere in `deviation`, `v`):
    inf where it has none (fewer than SPLIT_BURST_MIN_INTERVALS minutes, or no variance to measure it on)."""
    squares = np.sum(v * v, axis=1)
    ok = (kept.sum(axis=1) >= SPLIT_BURST_MIN_INTERVALS) & (squares > 0)
    terms = np.where(kept, deviation**2 - v, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.sum(terms, axis=1) / np.where(ok, squares, 1.0)
        error = np.sqrt(np.sum(np.where(kept, (terms - theta[:, None] * v * v) ** 2, 0.0), axis=1)) / np.where(
            ok, squares, 1.0)
    return np.where(ok, (np.maximum(theta, 0.0) + SPLIT_BURST_Z * error) / 2.0, np.inf)


def _burst_added(added: np.ndarray, counts: tuple[np.ndarray, ...], r0: float, grid: tuple[float, ...],
                 rate: np.ndarray, kappas: tuple[np.ndarray, np.ndarray], excess: np.ndarray) -> None:
    """Replace, in `added`, the intervals `_fold_ratio` judges by the burst likelihood (`_burst_inputs`): kappa's
    level from the burstiness known before each (as judged, and the baseline's whole where the split lowered it),
    the baseline's rate, the dispersion left beyond the bursts."""
    k_c, k_b, n_c, n_b = counts
    kappa, whole = kappas
    lowered = np.broadcast_to(kappa < whole, k_c.shape)
    events = k_c + k_b
    level_of = np.frompyfunc(lambda k: _NO_LEVEL if (v := kappa_level(BURST_KAPPA_MARGIN * float(k))) is None else v,
                             1, 1)
    levels = np.broadcast_to(level_of(kappa), k_c.shape).astype(np.int64)
    used = (levels != _NO_LEVEL) & (rate > 0) & (n_c > 0) & (n_b > 0) & (events > 0)
    version = BURST_KAPPA_MARGIN * np.broadcast_to(whole, k_c.shape)
    for level in set(levels[used].tolist()):
        for split in (False, True):
            at = used & (levels == level) & (lowered == split)
            if at.any():
                added[at] = burst_increment(k_c[at], k_b[at], n_c[at], n_b[at], r0, grid, int(level), rate[at],
                                            cap=RATE_INTERVAL_LLR_CAP, version_kappa=version[at] if split else None
                                            ) / excess[at][:, None]


def _rate_placement(pods: RatePods, info: np.ndarray, prior: RatePrior | None) -> np.ndarray:
    """`analysis.sequential.rate_placement` per (rep, minute): g = 1 + tau^2 W."""
    sums = [np.cumsum(x, axis=1) for x in rate_pod_increments(pods.events, pods.requests)]
    if prior is not None and prior.pods is not None:
        sums = [x + p[:, None, :] for x, p in zip(sums, prior.pods, strict=True)]
    wk = np.cumsum(pod_weight(info, pods.canary_pods, pods.baseline_pods), axis=1)
    return np.asarray(1.0 + rate_pod_variance(*sums) * wk)


def _before(after: np.ndarray, first: float | np.ndarray) -> np.ndarray:
    """A running estimate per (rep, minute) as known before each minute: shifted by one, `first` (a scalar or
    one per rep) at minute 1."""
    return np.concatenate([np.broadcast_to(np.reshape(first, (-1, 1)), after[:, :1].shape), after[:, :-1]], axis=1)


def _prior_burstiness(prior: RatePrior | None) -> float | np.ndarray:
    """kappa before the release's first minute: the history's, else 0."""
    return 0.0 if prior is None else _kappa(prior.spread[:, 0], prior.spread[:, 1])


def _kappa(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`analysis.sequential.rate_burstiness` of the spread sums a, b."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, np.maximum(a / np.where(b > 0, b, 1.0), 0.0), 0.0)


def _spread_sums(k_b: np.ndarray, n_b: np.ndarray, e_b: np.ndarray, x_b: np.ndarray,
                 prior: RatePrior | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`analysis.sequential._fold_spread`'s running sums (a, b) after each minute, from the baseline's counts and
    its events and exposure before each minute (those of the prior added)."""
    a0, b0, seen0, exp0 = (prior.spread.T[:, :, None] if prior is not None else np.zeros((4, 1, 1)))
    e_b, x_b = e_b + seen0, x_b + exp0
    seen = (x_b > 0) & (n_b > 0) & (e_b > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(seen, n_b * e_b / np.where(seen, x_b, 1), 0.0)
        a = a0 + np.cumsum(np.where(seen, (k_b - m) ** 2 / (1.0 + n_b / np.where(seen, x_b, 1)) - m, 0.0), axis=1)
    return a, b0 + np.cumsum(m * m, axis=1)


def _burstiness(k_b: np.ndarray, n_b: np.ndarray, e_b: np.ndarray, x_b: np.ndarray,
                prior: RatePrior | None = None) -> np.ndarray:
    """`analysis.sequential.rate_burstiness` after each minute (`_spread_sums`)."""
    return _kappa(*_spread_sums(k_b, n_b, e_b, x_b, prior))


def sequential_first(
    sim: Sim, cfg: AnalysisConfig, grid: tuple[float, ...] = RATIO_GRID, hist: Sim | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """First minute of fail/error: the regression e-values' sum or the SRM e-value reaching K/alpha.
    Also each check's own first crossing of K/alpha (a Bonferroni judge), for diagnosis."""
    return first_crossings(sequential_log_evalues(sim, cfg, grid, hist), cfg)


def first_crossings(logs: dict[str, np.ndarray], cfg: AnalysisConfig) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`sequential_first` of e-processes already computed."""
    threshold = math.log(len(cfg.checks) / cfg.alpha)
    per_check = {k: first_true(v >= threshold) for k, v in logs.items() if k in cfg.checks}
    family = special.logsumexp(np.stack([logs[k] for k in cfg.checks if k != "sampleRatio"]), axis=0)
    per_check["regressionSum"] = first_true(family >= threshold)
    first = np.minimum(per_check["regressionSum"], per_check.get("sampleRatio", NEVER))
    return first, per_check


def kayenta_fail_by_minute(sim: Sim, cfg: AnalysisConfig, looks: int) -> np.ndarray:
    """(reps, looks) whether Kayenta's judgment on the first t intervals is a fail."""
    kc = cfg.kayenta
    series = {}
    for m in kc.metrics:
        series[m] = (
            metric_values(m, sim.n_b, sim.e_b, sim.b_b, BOUNDS),
            metric_values(m, sim.n_c, sim.e_c, sim.b_c, BOUNDS),
        )
    out = np.zeros((sim.n_c.shape[0], looks), dtype=bool)
    for t in range(1, looks + 1):
        labels = {}
        for m, (base, can) in series.items():
            lab, _, _ = classify(base[:, :t], can[:, :t], kc)
            labels[f"svc/{m}"] = direction_labels(lab, m)
        out[:, t - 1] = summary_score(labels, kc) < kc.marginal_score
    return out


def naive_first(sim: Sim, alpha: float) -> np.ndarray:
    """Fixed-horizon Mann-Whitney (latency) + two-proportion z-test (errors) on the pooled data, redone
    every minute, each one-sided at alpha/2."""
    cb_c, cb_b = np.cumsum(sim.b_c, axis=1), np.cumsum(sim.b_b, axis=1)
    p_mw = rank_sum(cb_c, cb_b).p_value_greater()
    n_c, n_b = np.cumsum(sim.n_c, axis=1), np.cumsum(sim.n_b, axis=1)
    e_c, e_b = np.cumsum(sim.e_c, axis=1), np.cumsum(sim.e_b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = (e_c + e_b) / (n_c + n_b)
        z = (e_c / n_c - e_b / n_b) / np.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_b))
    p_z = np.where(np.isfinite(z), special.ndtr(-np.nan_to_num(z)), 1.0)
    return first_true((p_mw < alpha / 2) | (p_z < alpha / 2))


def threshold_first(sim: Sim, cfg: AnalysisConfig, failed_checks: int) -> np.ndarray:
    bad_rate, bad_p99 = interval_failures(sim.n_c, sim.e_c, sim.b_c, BOUNDS, cfg.threshold)
    return first_true(np.cumsum(bad_rate | bad_p99, axis=1) >= failed_checks)


def one_look(sim: Sim, cfg: AnalysisConfig, at: int) -> np.ndarray:
    """The same three comparisons tested once at minute `at` (normal theory, Bonferroni alpha/3)."""
    sl = slice(0, at)
    n_c, n_b = sim.n_c[:, sl], sim.n_b[:, sl]
    share = np.where(n_c + n_b > 0, n_c / np.maximum(n_c + n_b, 1), 0.0)

    def score(k_c: np.ndarray, k_b: np.ndarray) -> np.ndarray:
        k = k_c + k_b
        num = np.sum(k_c - k * share, axis=1)
        den = np.sqrt(np.sum(k * share * (1 - share), axis=1))
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)

    start = reference_tail_index(sim.b_b[:, 0, :], cfg.tail_reference_quantile)[:, None]
    tc, tb = tail_counts(sim.b_c[:, 1:at], start), tail_counts(sim.b_b[:, 1:at], start)
    k_c, k_b = tc, tb
    n_c2, n_b2 = sim.n_c[:, 1:at], sim.n_b[:, 1:at]
    share2 = np.where(n_c2 + n_b2 > 0, n_c2 / np.maximum(n_c2 + n_b2, 1), 0.0)
    kk = k_c + k_b
    den = np.sqrt(np.sum(kk * share2 * (1 - share2), axis=1))
    z_tail = np.where(den > 0, np.sum(k_c - kk * share2, axis=1) / np.where(den > 0, den, 1), 0.0)
    rs = rank_sum(sim.b_c[:, sl], sim.b_b[:, sl])
    a = shift_weight(n_c, n_b)
    v = np.sum(a * a, axis=1)
    z_lat = np.where(v > 0, np.sum(a * rs.z, axis=1) / np.sqrt(np.where(v > 0, v, 1)), 0.0)
    crit = stats.norm.isf(cfg.alpha / 3)
    hit = (score(sim.e_c[:, sl], sim.e_b[:, sl]) > crit) | (z_tail > crit) | (z_lat > crit)
    return np.where(hit, at, NEVER)


# --- one cell x scenario ----------------------------------------------------------------------------------


def summarise(first: np.ndarray, horizon: int, exposed: np.ndarray) -> dict[str, Any]:
    hit = first <= horizon
    idx = np.clip(first - 1, 0, exposed.shape[1] - 1)
    exp = np.take_along_axis(exposed, idx[:, None], 1)[:, 0]
    return {
        "rolledBackPct": 100.0 * float(hit.mean()),
        "medianMinute": float(np.median(first[hit])) if hit.any() else None,
        "medianCanaryRequestsExposed": float(np.median(exp[hit])) if hit.any() else None,
    }


def run_cell(task: tuple[Any, ...]) -> dict[str, Any]:
    """One cell: (rate, weight, scenario, reps, seed, alpha[, world[, warmup[, history]]])."""
    rate, weight, scenario, reps, seed, alpha = task[:6]
    world = str(task[6]) if len(task) > 6 else "independent"
    warmup = int(task[7]) if len(task) > 7 else 0
    history = int(task[8]) if len(task) > 8 else 0
    cfg = AnalysisConfig.from_dict({"alpha": alpha})
    horizon = 240 if scenario == "aa240" else 30
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    full = simulate(rng, reps, horizon + warmup, rate, weight, SCENARIO_SPECS[scenario], world, history)
    hist = minutes_of(full, 0, history) if history else None
    sim = minutes_of(full, history + warmup)
    exposed = np.cumsum(sim.n_c, axis=1)
    seq, per_check = sequential_first(sim, cfg, hist=hist)
    firsts: dict[str, np.ndarray] = {"sequential": seq}
    firsts["seq-bonferroni"] = np.minimum.reduce([v for k, v in per_check.items() if k != "regressionSum"])
    if horizon == 30:
        kay = kayenta_fail_by_minute(sim, cfg, 30)
        firsts["kayenta@30"] = np.where(kay[:, 29], 30, NEVER)
        firsts["kayenta@5min"] = first_true(kay[:, 4::5]) * 5
        firsts["kayenta@1min"] = first_true(kay)
        firsts["kayenta@5min"] = np.where(firsts["kayenta@5min"] >= NEVER, NEVER, firsts["kayenta@5min"])
    firsts["naive-repeated"] = naive_first(sim, alpha)
    firsts["threshold5"] = threshold_first(sim, cfg, 5)
    firsts["threshold10"] = threshold_first(sim, cfg, 10)
    firsts["one-look@30"] = one_look(sim, cfg, 30)
    judges = {name: summarise(f, horizon, exposed) for name, f in firsts.items()}
    checks = {k: 100.0 * float((v <= horizon).mean()) for k, v in per_check.items()}
    return {
        "rate": rate,
        "weight": weight,
        "scenario": scenario,
        "reps": reps,
        "horizon": horizon,
        "warmup": warmup,
        "history": history,
        "judges": judges,
        "sequentialByCheckPct": checks,
        "canaryPerMinute": float(sim.n_c.mean()),
        "seconds": time.perf_counter() - started,
    }


def cross_check(alpha: float, world: str = "independent", history: int = 0) -> int:
    """Replications on which the vectorised sequential judge and SequentialJudge differ (the first minute of a
    fail, or any check's e-value at any minute) among 16, the judge primed with `history` minutes of the stable
    version alone (`SequentialJudge.prime`)."""
    cfg = AnalysisConfig.from_dict({"alpha": alpha})
    rng = np.random.default_rng(7)
    mismatches = 0
    for scenario in ("aa", "lat25", "err4", "tail"):
        full = simulate(rng, 4, 30, 20, "prog", SCENARIO_SPECS[scenario], world, history)
        hist, sim = (minutes_of(full, 0, history), minutes_of(full, history)) if history else (None, full)
        logs = sequential_log_evalues(sim, cfg, hist=hist)
        vec, _ = first_crossings(logs, cfg)
        for r in range(4):
            judge = SequentialJudge(cfg)
            state = judge.initial_state(services=["svc"])
            if hist is not None:
                state = judge.prime(state, [{"svc": _sim_observation(hist, r, t)} for t in range(history)])
            first, apart = NEVER, False
            for t in range(30):
                state, decision = judge.update(state, {"svc": _sim_observation(sim, r, t)})
                if first == NEVER and decision.verdict in (Verdict.FAIL, Verdict.ERROR):
                    first = t + 1
                apart = apart or any(abs(state["services"]["svc"][k]["logE"] - logs[k][r, t]) > 1e-6 for k in logs)
            mismatches += int(first != vec[r] or apart)
    return mismatches


def _sim_observation(sim: Sim, r: int, t: int) -> IntervalObservation:
    """Replication r's minute t as the judge reads it."""
    return IntervalObservation(
        60.0 * (t + 1),
        float(sim.weight[t]),
        VersionCounts(int(sim.n_b[r, t]), int(sim.e_b[r, t]), tuple(int(x) for x in sim.b_b[r, t])),
        VersionCounts(int(sim.n_c[r, t]), int(sim.e_c[r, t]), tuple(int(x) for x in sim.b_c[r, t])),
        baseline_pods=_sim_pods(sim, r, t),
        canary_pods=_canary_pods(sim, r, t),
    )


def _sim_pods(sim: Sim, r: int, t: int) -> dict[str, VersionCounts]:
    """The baseline's pods of replication r, minute t."""
    if sim.pb_b is None:
        return {}
    errors = sim.pe_b[r, t] if sim.pe_b is not None else np.zeros(len(sim.pb_b[r, t]), dtype=np.int64)
    return {f"b{i}": VersionCounts(int(b.sum()), int(e), tuple(int(x) for x in b))
            for i, (b, e) in enumerate(zip(sim.pb_b[r, t], errors, strict=True)) if b.sum() > 0}


def _canary_pods(sim: Sim, r: int, t: int) -> dict[str, VersionCounts]:
    """The canary's serving pods (only their count matters to the judge), their buckets empty."""
    if sim.pn_c is None:
        return {}
    empty = (0,) * len(BOUNDS)
    return {f"c{i}": VersionCounts(int(n), 0, (*empty[:-1], int(n))) for i, n in enumerate(sim.pn_c[r, t]) if n > 0}


def minutes_of(sim: Sim, start: int, stop: int | None = None) -> Sim:
    """The Sim's minutes from `start` on (before `stop`, when given): the history before a release, or the
    release after its warm-up (served, not judged: `strategy.canary.warmup`; new pods are slower for their first
    minutes in the warmup and real worlds). Every judge sees the same minutes."""
    if start <= 0 and stop is None:
        return sim
    cut = slice(start, stop)
    return Sim(**{f.name: (None if getattr(sim, f.name) is None else
                           getattr(sim, f.name)[cut] if f.name == "weight" else getattr(sim, f.name)[:, cut])
                  for f in dataclasses.fields(sim)})


def tasks(
    reps: int, aa_reps: int, alpha: float, scenarios: tuple[str, ...], world: str = "independent", warmup: int = 0,
    history: int = 0,
) -> list[tuple[int, str, str, int, int, float, str, int, int]]:
    out = []
    seed = 1000
    for rate in RATES:
        for weight in WEIGHTS:
            for sc in scenarios:
                seed += 1
                out.append((rate, weight, sc, aa_reps if sc.startswith("aa") else reps, seed, alpha, world, warmup,
                            history))
    return out


def targets(cells: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """The issue's targets, checked on the measured cells."""
    aa = [c for c in cells if c["scenario"].startswith("aa")]
    worst_aa = max((c["judges"]["sequential"]["rolledBackPct"] for c in aa), default=None)
    power = [c for c in cells if c["scenario"] in REGRESSIONS]
    ratios, beats, misses = [], 0, []
    for c in power:
        seq = c["judges"]["sequential"]["rolledBackPct"]
        kay = max(c["judges"][k]["rolledBackPct"] for k in ("kayenta@30", "kayenta@5min", "kayenta@1min"))
        beats += int(seq >= kay)
        if seq < kay:
            misses.append(f"{c['scenario']} {c['rate']}rps w{c['weight']}: {seq:.1f}% < {kay:.1f}%")
        ref = c["judges"]["one-look@30"]["rolledBackPct"]
        if ref > 0:
            ratios.append(seq / ref)
    slow = []
    for c in power:
        first_weight = 5.0 if c["weight"] == "prog" else float(c["weight"])
        if c["scenario"] in ("lat25", "tail", "err4") and c["rate"] * 60 * first_weight / 100 >= 120:
            m = c["judges"]["sequential"]["medianMinute"]
            if m is None or m > 8:
                slow.append(f"{c['scenario']} {c['rate']}rps w{c['weight']}: median {m}")
    return {
        "aaWorstSequentialPct": worst_aa,
        "aaTargetMet": worst_aa is not None and worst_aa <= 100 * alpha,
        "powerAtLeastKayentaCells": f"{beats}/{len(power)}",
        "powerBelowKayenta": misses,
        "meanPowerRatioToOneLook": float(np.mean(ratios)) if ratios else None,
        "detectionOver8MinCells": slow,
    }


def print_table(cells: list[dict[str, Any]]) -> None:
    judges = [
        "sequential",
        "seq-bonferroni",
        "kayenta@30",
        "kayenta@5min",
        "kayenta@1min",
        "naive-repeated",
        "threshold5",
        "threshold10",
        "one-look@30",
    ]
    head = f"{'scenario':9} {'rps':>3} {'w':>4} " + " ".join(f"{j[:12]:>12}" for j in judges)
    print(head)
    for c in cells:
        vals = []
        for j in judges:
            s = c["judges"].get(j)
            if s is None:
                vals.append(f"{'-':>12}")
            else:
                m = s["medianMinute"]
                vals.append(f"{s['rolledBackPct']:5.1f}%/{'-' if m is None else int(m):>3}".rjust(12))
        print(f"{c['scenario']:9} {c['rate']:>3} {c['weight']:>4} " + " ".join(vals))


def print_exposure(cells: list[dict[str, Any]]) -> None:
    judges = ["sequential", "kayenta@1min", "naive-repeated", "threshold5", "one-look@30"]
    print("median canary requests exposed before rollback (regressions; '-' = never rolled back)")
    print(f"{'scenario':9} {'rps':>3} {'w':>4} " + " ".join(f"{j[:12]:>12}" for j in judges))
    for c in cells:
        if c["scenario"] not in REGRESSIONS:
            continue
        vals = []
        for j in judges:
            e = c["judges"][j]["medianCanaryRequestsExposed"]
            vals.append(f"{'-' if e is None else int(e):>12}")
        print(f"{c['scenario']:9} {c['rate']:>3} {c['weight']:>4} " + " ".join(vals))


SWEEP_CELLS = (
    (5, "5", "lat10"),
    (5, "10", "lat10"),
    (20, "5", "lat10"),
    (5, "5", "lat25"),
    (5, "5", "tail"),
    (5, "50", "tail"),
    (20, "10", "tail"),
    (20, "5", "tail"),
    (20, "10", "err2"),
    (50, "5", "err2"),
    (5, "prog", "err4"),
)
SWEEP_GRIDS = {"issue": (1.25, 1.5, 2.0, 3.0, 4.0, 6.0), "chosen": RATIO_GRID, "narrow": (1.5, 2.0, 2.5, 3.0)}


def sweep(reps: int, aa_reps: int) -> list[dict[str, Any]]:
    """Power/median detection of the sequential judge for ratio grids and latencyMinEffect values."""
    rows = []
    variants = [(g, 0.1) for g in SWEEP_GRIDS] + [("chosen", d) for d in (0.05, 0.15)]
    for grid_name, dmin in variants:
        cfg = AnalysisConfig.from_dict({"latencyMinEffect": dmin})
        grid = SWEEP_GRIDS[grid_name]
        row: dict[str, Any] = {"grid": grid_name, "ratioGrid": list(grid), "latencyMinEffect": dmin}
        for rate, weight, sc in SWEEP_CELLS:
            sim = simulate(np.random.default_rng(11), reps, 30, rate, weight, SCENARIO_SPECS[sc])
            first, _ = sequential_first(sim, cfg, grid)
            hit = first <= 30
            row[f"{sc} {rate}rps w{weight}"] = (
                round(100 * float(hit.mean()), 1),
                float(np.median(first[hit])) if hit.any() else None,
            )
        for weight in ("10", "prog"):
            sim = simulate(np.random.default_rng(12), aa_reps, 30, 20, weight, SCENARIO_SPECS["aa"])
            first, _ = sequential_first(sim, cfg, grid)
            row[f"aa 20rps w{weight}"] = (round(100 * float((first <= 30).mean()), 2), None)
        print(json.dumps(row))
        rows.append(row)
    return rows


def options(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `scenarios` resolved to a tuple, `out` named after a world other than independent."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=500)
    parser.add_argument("--aa-reps", type=int, default=2000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-240", action="store_true", help="skip the 240-minute A/A runs")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "judges.json"))
    parser.add_argument("--sweep", action="store_true", help="only compare ratio grids / latencyMinEffect")
    parser.add_argument("--world", default="independent", choices=worlds.WORLD_NAMES,
                        help="the traffic's world (bench/worlds.py); default: independent requests")
    parser.add_argument("--warmup", type=int, default=0,
                        help="minutes at the start of each replication that no judge sees (strategy.canary.warmup)")
    parser.add_argument("--history", type=int, default=0,
                        help="minutes of the stable version alone before each replication, given to the judge "
                             "(analysis.historyIntervals, SequentialJudge.prime; default 0)")
    parser.add_argument("--scenarios", default=None,
                        help=f"comma-separated, of {', '.join((*SCENARIOS, 'aa240'))} (default all)")
    opts = parser.parse_args(argv)
    if opts.world != "independent" and opts.out == parser.get_default("out"):
        opts.out = str(Path(opts.out).with_name(f"judges_{opts.world}.json"))
    chosen = opts.scenarios.split(",") if opts.scenarios else None
    if chosen and set(chosen) - set(SCENARIO_SPECS):
        parser.error(f"unknown scenarios: {', '.join(sorted(set(chosen) - set(SCENARIO_SPECS)))}")
    opts.scenarios = SCENARIOS if opts.no_240 else (*SCENARIOS, "aa240")
    if chosen:
        opts.scenarios = tuple(s for s in (*SCENARIOS, "aa240") if s in chosen)
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = options(argv)
    started = time.perf_counter()
    if opts.sweep:
        rows = sweep(opts.reps, opts.aa_reps)
        out = Path(opts.out).with_name("judges_sweep.json")
        out.write_text(json.dumps({"command": "python -m bench.judges --sweep", "rows": rows}, indent=1))
        return 0
    if opts.world != "independent":
        print(f"world: {opts.world} ({worlds.WORLDS[opts.world].summary})")
    mismatches = cross_check(opts.alpha, opts.world, opts.history)
    print(f"cross-check vectorised vs SequentialJudge: {mismatches} mismatches in 16 replications")
    scenarios = opts.scenarios
    work = tasks(opts.reps, opts.aa_reps, opts.alpha, scenarios, opts.world, opts.warmup, opts.history)
    work.sort(key=lambda t: -(t[3] * (240 if t[2] == "aa240" else 30)))  # big first, for load balance
    if opts.workers > 1:
        with multiprocessing.Pool(opts.workers) as pool:
            cells = pool.map(run_cell, work, chunksize=1)
    else:
        cells = [run_cell(t) for t in work]
    order = {s: i for i, s in enumerate(scenarios)}
    cells.sort(key=lambda c: (order[c["scenario"]], c["rate"], WEIGHTS.index(c["weight"])))
    print("% rolled back by the horizon / median minute of detection")
    print_table(cells)
    print_exposure(cells)
    summary = targets(cells, opts.alpha)
    elapsed = time.perf_counter() - started
    print(json.dumps(summary, indent=2))
    print(f"elapsed {elapsed:.0f} s with {opts.workers} workers")
    result = {
        "command": "python -m bench.judges " + " ".join(argv if argv is not None else sys.argv[1:]),
        "world": opts.world,
        "warmup": opts.warmup,
        "history": opts.history,
        "alpha": opts.alpha,
        "reps": opts.reps,
        "aaReps": opts.aa_reps,
        "elapsedSeconds": elapsed,
        "crossCheckMismatches": mismatches,
        "targets": summary,
        "cells": cells,
    }
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(result, indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
