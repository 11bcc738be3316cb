"""The exact likelihood of the canary's errors under Gamma error bursts: valid only with its rates known.

    python -m bench.burst_exact [--draws 100000] [--out FILE]      # about 3 minutes

`bench.burst_evalues` shows that the error-rate check's per-interval factor as it was (the binomial
log-likelihood ratio of the canary's share of the errors, capped and divided by phi_t; "judge" below) is not an
e-value under heavy-tailed per-version bursts at a small weight and a high rate. The exact remedy, which the rate
checks now use (analysis/bursts.py, with the margins this program chose), is the likelihood of the canary's errors
given the interval's total under the bursts' own model: each version's rate multiplied by an independent
Gamma(1/kappa, kappa) factor, the errors Poisson. Writing the factors as S u and S (1 - u), u ~ Beta(a, a),
S ~ Gamma(2a, 1/a) (a = 1/kappa), S integrates out in closed form (a negative binomial total; given it, a
binomial split) and u by Gauss-Jacobi quadrature, so

    P_r(k_c | K) = E_u[Bin(k_c; K, pi_r(u)) NB(K; 2a, mu_r(u))] / E_u[NB(K; 2a, mu_r(u))]

with pi_r(u) = r n_c u / (r n_c u + n_b (1 - u)) and mu_r(u) = lambda (r n_c u + n_b (1 - u)). Its ratio to
r = 1 has expectation exactly 1 under identical versions, but it needs kappa and the baseline's error rate
lambda, which the judge only estimates (from the history). This program draws identical versions and errors
x4 under bursts of squared CV kappa (the `bursts` world, kappa 1; and 0.25) at the cells where the judge's
factor is furthest from an e-value, and prints, per plug-in error of lambda and kappa:

- max E0[e]: the largest mean factor over the judge's ratio grid under identical versions (an e-value needs
  <= 1; above 1, an e-process made of it grows under the null);
- E4[ln e(4)]: its mean log at ratio 4 when the canary's errors are x4 (the evidence a minute adds);
- the same two for the judge's factor (`ratio_increment` capped at RATE_INTERVAL_LLR_CAP phi_t, divided by
  phi_t = 1 + 2 kappa v_t), on the same draws.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from analysis.bursts import burst_log_likelihood
from analysis.sequential import RATIO_GRID
from bench.burst_evalues import tempered_log_factors
from bench.worlds import BASE_ERROR

CELLS = ((20, 10), (20, 50), (50, 10), (50, 25))
# (kappa of the world, kappa the model is given as a multiple of it, lambda given as a multiple of the true one)
PLUG_INS = ((1.0, 1.0, 1.0), (1.0, 1.0, 0.8), (1.0, 1.0, 1.25), (1.0, 0.7, 1.0), (1.0, 1.4, 1.0),
            (0.25, 1.0, 1.0), (0.25, 1.0, 0.8))
FloatArray = npt.NDArray[np.float64]


def draw(rng: np.random.Generator, n_c: float, n_b: float, kappa: float, ratio: float, draws: int
         ) -> tuple[FloatArray, FloatArray]:
    factors = rng.gamma(1.0 / kappa, kappa, size=(draws, 2))
    k_c = rng.poisson(n_c * BASE_ERROR * ratio * factors[:, 0]).astype(float)
    k_b = rng.poisson(n_b * BASE_ERROR * factors[:, 1]).astype(float)
    return k_c, k_b


def cell(rng: np.random.Generator, rate: float, weight: float, plug_in: tuple[float, float, float], draws: int
         ) -> dict[str, Any]:
    kappa, kappa_x, lam_x = plug_in
    n_c, n_b = round(rate * 60 * weight / 100), round(rate * 60 * (1 - weight / 100))
    row: dict[str, Any] = {"rate": rate, "weight": weight, "kappa": kappa, "kappaGiven": kappa * kappa_x,
                           "lambdaGiven": BASE_ERROR * lam_x}
    for name, ratio in (("null", 1.0), ("x4", 4.0)):
        k_c, k_b = draw(rng, n_c, n_b, kappa, ratio, draws)
        logs = np.stack([burst_log_likelihood(k_c, k_b, n_c, n_b, (r,), kappa * kappa_x, BASE_ERROR * lam_x)[:, 0]
                         for r in (1.0, *RATIO_GRID)], axis=-1)  # one ratio at a time: arrays of draws x nodes
        exact = logs[:, 1:] - logs[:, :1]
        judged = tempered_log_factors(k_c, k_b, np.full_like(k_c, n_c), np.full_like(k_b, n_b), kappa * kappa_x)
        at4 = RATIO_GRID.index(4.0)
        if name == "null":
            row["exactMaxE0"] = float(np.exp(exact).mean(axis=0).max())
            row["judgeMaxE0"] = float(np.exp(judged).mean(axis=0).max())
        else:
            row["exactLogE4"] = float(exact[:, at4].mean())
            row["judgeLogE4"] = float(judged[:, at4].mean())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=100_000, help="intervals drawn per cell and hypothesis")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    opts = parser.parse_args(argv)
    began = time.monotonic()
    rng = np.random.default_rng(3)
    rows = [cell(rng, rate, weight, p, opts.draws) for p in PLUG_INS for rate, weight in CELLS]
    print("kappa  given: kappa  lambda  req/s  weight% | exact: max E0[e]  E4[ln e(4)] | judge: max E0[e]  E4[ln e(4)]")
    for r in rows:
        print(f"{r['kappa']:5.2f}  {r['kappaGiven']:12.3f}  {r['lambdaGiven']:.4f}  {r['rate']:5.0f}"
              f"  {r['weight']:7.0f} | {r['exactMaxE0']:16.3f}  {r['exactLogE4']:11.3f}"
              f" | {r['judgeMaxE0']:16.3f}  {r['judgeLogE4']:11.3f}")
    print(f"{opts.draws} draws per cell and hypothesis, {time.monotonic() - began:.0f} s")
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump({"command": "python -m bench.burst_exact", "draws": opts.draws, "baseError": BASE_ERROR,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
