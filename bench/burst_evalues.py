"""How far one interval's error-rate evidence is from an e-value when errors come in bursts.

    python -m bench.burst_evalues              # about 10 s

Without the burst likelihood (analysis/bursts.py, which the rate checks use once the baseline's errors are known to
burst), the sequential judge adds, per interval, the error-rate check's binomial log-likelihood ratios capped at
RATE_INTERVAL_LLR_CAP phi_t and divided by phi_t = 1 + 2 kappa v_t (analysis/sequential.py, `interval_dispersion`):
the factor measured here. Its e-process is a supermartingale under identical versions only if each interval's
exp(capped l / phi_t) has expectation <= 1 at every ratio of the grid. This draws identical versions whose error
rates are each multiplied every minute by an independent Gamma factor of mean 1 and squared CV kappa (the `bursts`
world of bench/worlds.py), with kappa known (as after the history), and prints that expectation, the largest over
the grid, per rate, canary weight and kappa, beside the conditional variance of the canary's errors against the
model's phi (the variance is right; the tails are heavier than the tempering allows).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import numpy.typing as npt

from analysis.sequential import RATE_INTERVAL_LLR_CAP, RATIO_GRID, ratio_increment
from bench.worlds import BASE_ERROR

CELLS = ((5, 10), (20, 10), (20, 50), (50, 5), (50, 10), (50, 25), (50, 50))
KAPPAS = (0.25, 1.0)


def tempered_phi(k_c: npt.ArrayLike, k_b: npt.ArrayLike, n_c: npt.ArrayLike, n_b: npt.ArrayLike, kappa: float
                 ) -> np.ndarray:
    """phi_t = 1 + 2 kappa v_t of each interval (`interval_dispersion` with kappa known)."""
    share = np.asarray(n_c) / (np.asarray(n_c) + np.asarray(n_b))
    return np.asarray(1.0 + 2.0 * kappa * ((np.asarray(k_c) + np.asarray(k_b)) * share * (1 - share)))


def tempered_log_factors(k_c: npt.ArrayLike, k_b: npt.ArrayLike, n_c: npt.ArrayLike, n_b: npt.ArrayLike,
                         kappa: float) -> np.ndarray:
    """ln of each interval's binomial factor, capped at RATE_INTERVAL_LLR_CAP phi_t and divided by phi_t, at every
    ratio of the grid (last axis): the rate checks' factor when no burst likelihood is used."""
    phi = tempered_phi(k_c, k_b, n_c, n_b, kappa)
    llr = ratio_increment(k_c, k_b, n_c, n_b, 1.0, RATIO_GRID, cap=RATE_INTERVAL_LLR_CAP * phi)
    return np.asarray(llr / phi[:, None])


def cell(rng: np.random.Generator, rate: float, weight: float, kappa: float, draws: int) -> dict[str, float]:
    n_c = np.full(draws, round(rate * 60 * weight / 100))
    n_b = np.full(draws, round(rate * 60 * (1 - weight / 100)))
    factors = rng.gamma(1.0 / kappa, kappa, size=(draws, 2))
    k_c = rng.poisson(n_c * BASE_ERROR * factors[:, 0])
    k_b = rng.poisson(n_b * BASE_ERROR * factors[:, 1])
    events = k_c + k_b
    share = n_c / (n_c + n_b)
    v = events * share * (1 - share)
    phi = tempered_phi(k_c, k_b, n_c, n_b, kappa)
    expectation = np.exp(tempered_log_factors(k_c, k_b, n_c, n_b, kappa)).mean(axis=0)
    return {
        "rate": rate, "weight": weight, "kappa": kappa,
        "maxExpectation": float(expectation.max()), "atRatio": float(RATIO_GRID[int(expectation.argmax())]),
        "varianceOverBinomial": float(np.var(k_c - events * share) / np.mean(v)),
        "meanPhi": float(phi.mean()),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=400_000, help="intervals drawn per cell")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    opts = parser.parse_args(argv)
    rng = np.random.default_rng(1)
    rows = [cell(rng, rate, weight, kappa, opts.draws) for kappa in KAPPAS for rate, weight in CELLS]
    print("kappa  req/s  weight%  max E[e_t] (ratio)  Var(k_c | events) / binomial  mean phi_t")
    for r in rows:
        print(f"{r['kappa']:5.2f}  {r['rate']:5.0f}  {r['weight']:7.0f}  {r['maxExpectation']:10.3f} ({r['atRatio']:g})"
              f"  {r['varianceOverBinomial']:28.2f}  {r['meanPhi']:10.2f}")
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump({"command": "python -m bench.burst_evalues", "draws": opts.draws, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
