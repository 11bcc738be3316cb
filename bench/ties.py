"""How far the latency test's Gaussian approximation holds with heavy ties and a handful of requests a minute.

The latency shift's e-process treats each interval's rank statistic a_t z_t as N(sqrt(3) Delta a_t^2, a_t^2).
With many requests that is the central limit theorem; with 1-15 canary requests a minute on a service
whose requests nearly all fall in one latency bucket, z_t is a few discrete values, skewed, and an e-process
built on the Gaussian form may cross more often than alpha over a day. This program measures it, at the
boundary of each null the judge tests:

- `harm@0`: identical versions, `latencyTolerance: 0` (H0: Delta <= 0; the strict setting);
- `harm@tol`: the canary exactly at the default tolerance (Delta = 0.05), the default harm test;
- `safety@margin`: the canary exactly at the default margin (Delta = 0.1); the share of releases whose
  one-sided upper bound ever falls below the margin (a canary at the margin shown safe).

Worlds: `heavy` (97% / 2% / 1% of requests in three neighbouring buckets) and `istio` (bench/worlds.py's
latency mixture on Istio's buckets). The canary at a given Delta is the baseline mixed with the baseline
moved one bucket up (`heavy`) or the baseline with its latency scaled (`istio`), solved for Delta exactly.
Every minute draws the canary's requests ~ Poisson(rate) and the baseline's ~ Poisson(19 x rate) (a 5% step),
independently: this world is idealised on purpose (no pods, no jitter), it isolates the approximation.
The dispersion estimate phi is applied as the judge applies it. One check at alpha 0.05 (the judge shares
alpha over services x checks, so its real thresholds are higher).

    python -m bench.ties [--reps 1000] [--minutes 1440] [--rates 1,5,15] [--seed 1]

writes bench/results/ties.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from analysis.config import AnalysisConfig
from analysis.histogram import rank_sum, shift_increment, shift_weight
from analysis.sequential import SQRT3, log_half_normal_mixture, shift_log_evalue
from bench.judges import dispersion_array
from bench.worlds import BOUNDS, bucket_probs

ALPHA = 0.05
OUT = Path(__file__).parent / "results" / "ties.json"
CFG = AnalysisConfig()
GRID_STEP = 0.005  # shift_upper_bound's grid
TESTS = {"harm@0": 0.0, "harm@tol": CFG.latency_tolerance, "safety@margin": CFG.latency_non_inferiority_margin}


def delta_of(p_c: np.ndarray, p_b: np.ndarray) -> float:
    """P(C > B) - P(C < B) of two bucket distributions (ties count 0)."""
    below = np.cumsum(p_b) - p_b
    return float(2.0 * np.sum(p_c * (below + 0.5 * p_b)) - 1.0)


def heavy_base() -> np.ndarray:
    p = np.zeros(len(BOUNDS))
    p[5], p[6], p[7] = 0.97, 0.02, 0.01
    return p


def canary_at(world: str, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """(baseline, canary) bucket probabilities with Delta(canary, baseline) = delta."""
    if world == "heavy":
        base = heavy_base()
        up = np.roll(base, 1)
        full = delta_of(up, base)
        return base, base + (delta / full) * (up - base)
    base = bucket_probs(np.array([1.0]))[0]
    lo, hi = 1.0, 3.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if delta_of(bucket_probs(np.array([mid]))[0], base) < delta else (lo, mid)
    return base, bucket_probs(np.array([0.5 * (lo + hi)]))[0]


def cell(world: str, test: str, rate: float, reps: int, minutes: int, seed: int, corrected: bool = True
         ) -> dict[str, Any]:
    """Share of `reps` releases whose test ever crossed within `minutes` (and by 60, 240 minutes). `corrected`:
    the judge's statistic (`shift_increment`, counted from `minCanaryRequests` on); False: as it was before,
    each interval with its own tie-corrected null variance, harm counted from the first request."""
    rng = np.random.default_rng(seed)
    delta0 = TESTS[test]
    p_b, p_c = canary_at(world, delta0)
    s = v = q = c3 = a4 = n = np.zeros(reps)
    cum_c, cum_b = np.zeros((reps, len(BOUNDS))), np.zeros((reps, len(BOUNDS)))
    crossed_at = np.full(reps, np.inf)
    tau = SQRT3 * CFG.latency_min_effect
    for t in range(minutes):
        n_c, n_b = rng.poisson(rate, reps), rng.poisson(19.0 * rate, reps)
        b_c, b_b = rng.multinomial(n_c, p_c), rng.multinomial(n_b, p_b)
        if corrected:
            st, vt = shift_increment(b_c, b_b, cum_c, cum_b)
        else:  # the interval's own tie-corrected null variance
            r = rank_sum(b_c, b_b)
            a = shift_weight(n_c, n_b, r.variance)
            st, vt = a * r.z, a * a
        cum_c, cum_b = cum_c + b_c, cum_b + b_b
        s, v, q, c3, a4, n = s + st, v + vt, q + st * st, c3 + vt * st, a4 + vt * vt, n + (vt > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rss = np.maximum(q - np.where(a4 > 0, c3 * c3 / np.where(a4 > 0, a4, 1.0), 0.0), 0.0)
        phi = dispersion_array(rss, v * (n - 1) / np.maximum(n, 1), n - 1)
        if test == "safety@margin":
            # The mirrored e-process (the canary better than Delta'): `shift_upper_bound` falls below the margin
            # exactly when it rejects Delta' = margin - one step of its 1/200 grid.
            log_e = log_half_normal_mixture(SQRT3 * (delta0 - GRID_STEP) * v - s, v * phi, tau)
        else:
            log_e = shift_log_evalue(s, v, delta0, CFG.latency_min_effect, phi)
        # The judge passes nothing before minCanaryRequests (always so); harm waits for them since this release.
        gated = corrected or test == "safety@margin"
        counted = cum_c.sum(axis=-1) >= (CFG.min_canary_requests if gated else 0)
        crossed_at = np.where((log_e >= math.log(1 / ALPHA)) & counted & np.isinf(crossed_at), t + 1, crossed_at)
    share = {f"by{m}": float(np.mean(crossed_at <= m)) for m in (60, 240, minutes)}
    return {"world": world, "test": test, "delta": delta0, "rate": rate, "reps": reps, "corrected": corrected,
            **share}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ties", description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--minutes", type=int, default=1440)
    ap.add_argument("--rates", default="1,5,15", help="canary requests a minute (comma-separated)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    rates = [float(x) for x in args.rates.split(",")]
    started = time.monotonic()
    rows = [cell(world, test, rate, args.reps, args.minutes, args.seed + i, corrected)
            for i, (world, test, rate) in enumerate(
                (w, t, r) for w in ("heavy", "istio") for t in TESTS for r in rates)
            for corrected in (True, False)]
    elapsed = time.monotonic() - started
    print(f"share of releases crossed (alpha {ALPHA}, one check), {args.reps} releases per cell, {args.minutes} min;"
          "\n  judge: this release's statistic; before: each interval's null variance, harm from the first request"
          " (same seeds)")
    print(f"{'world':7} {'test':14} {'Delta':>6} {'req/min':>7} {'':9} {'by 60':>7} {'by 240':>7} {'by end':>7}")
    for r in rows:
        print(f"{r['world']:7} {r['test']:14} {r['delta']:6.2f} {r['rate']:7g} "
              f"{'judge' if r['corrected'] else 'before':9} {100 * r['by60']:6.1f}% "
              f"{100 * r['by240']:6.1f}% {100 * r[f'by{args.minutes}']:6.1f}%")
    print(f"{len(rows)} cells in {elapsed:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "alpha": ALPHA,
                                    "seconds": elapsed, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
