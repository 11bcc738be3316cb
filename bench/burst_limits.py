"""How often errors x4 (or `--ratio`) could be rolled back by minute 30 under error bursts, by a test that knew
what the judge must estimate: the bound the release benchmark's figure is to be read against.

    python -m bench.burst_limits [--reps 4000] [--ratio 4] [--cv 1] [--out FILE]   # about 75 s, 2 GB of memory

`--ratio 3` draws errors x3 instead: twice the default error margins (`nonInferiorityMargin` 1.5, and
`absoluteNonInferiorityMargin` 0.005 over the base rate of 0.005), the issue's "canary at twice the margin".
`--cv C` draws bursts of coefficient of variation C instead of the `bursts` world's BURST_CV (kappa = C^2):
how the bound moves with how bursty a service's errors are.

In the `bursts` world each version's error rate is multiplied every minute by its own Gamma factor of mean 1
(squared coefficient of variation kappa = BURST_CV^2 = 1), so a minute's split of the errors between the versions
carries a bounded amount of evidence whatever the traffic. The rate checks judge that split by its exact
likelihood under the bursts (analysis/bursts.py), given kappa and the baseline's error rate lambda as estimated
from the intervals before, each raised by a margin (BURST_KAPPA_MARGIN, BURST_RATE_MARGIN) so that the factor
stays an e-value when the estimates are low (`python -m bench.burst_exact`). This program draws releases of 30
judged minutes at a fixed weight, the canary's errors x4 or identical versions, and runs four running sums of
that likelihood's log-ratios against ln(K/alpha), each knowing more than the judge:

- `oracle`: kappa and lambda true, and the alternative too (ratio 4 alone): a sequential probability ratio test,
  the most any test of the split can do by a given minute at this threshold;
- `oracle, grid`: kappa and lambda true; the judge's alternatives (the average of the e-values over RATIO_GRID)
  and its per-interval cap (RATE_INTERVAL_LLR_CAP);
- `rate margin`: the same with lambda x BURST_RATE_MARGIN;
- `both margins`: the judge's factor exactly (grid, cap, kappa x BURST_KAPPA_MARGIN rounded up on the ladder,
  lambda x BURST_RATE_MARGIN) with the true kappa and lambda as its estimates.

The judge itself, with kappa and lambda estimated from 30 minutes of history and the release (and the weight
rising 10 -> 50% while safety is pending), is `python -m bench.releases`. Thresholds: K/alpha = 80 is one
service's four checks at alpha 5% (the release benchmark's), 400 the five services of the search stack.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from analysis.bursts import BURST_KAPPA_MARGIN, BURST_RATE_MARGIN, burst_increment, kappa_level
from analysis.sequential import RATE_INTERVAL_LLR_CAP, RATIO_GRID, log_mixture
from bench.burst_exact import draw
from bench.worlds import BASE_ERROR, BURST_CV

CELLS = ((20, 10), (20, 50), (50, 10), (50, 50))
MINUTES = 30
THRESHOLDS = (80.0, 400.0)
KAPPA = BURST_CV**2
FloatArray = npt.NDArray[np.float64]

Test = tuple[float, float, tuple[float, ...], float]


def tests(ratio: float, kappa: float = KAPPA) -> dict[str, Test]:
    """name -> (kappa the model is given, lambda the model is given, the alternatives, cap per interval), for bursts
    of burstiness `kappa`; the oracle knows the regression's `ratio`."""
    return {
        "oracle": (kappa, BASE_ERROR, (ratio,), math.inf),
        "oracle, grid": (kappa, BASE_ERROR, RATIO_GRID, RATE_INTERVAL_LLR_CAP),
        "rate margin": (kappa, BASE_ERROR * BURST_RATE_MARGIN, RATIO_GRID, RATE_INTERVAL_LLR_CAP),
        "both margins": (kappa * BURST_KAPPA_MARGIN, BASE_ERROR * BURST_RATE_MARGIN, RATIO_GRID,
                         RATE_INTERVAL_LLR_CAP),
    }


def log_e_path(k_c: FloatArray, k_b: FloatArray, n_c: int, n_b: int, test: Test) -> FloatArray:
    """(reps, minutes) running ln e of one test: the capped per-interval log-likelihood ratios against ratio 1 (the
    rate checks' own `burst_increment`, kappa rounded up on its ladder), summed, then averaged as e-values over
    the alternatives."""
    kappa, lam, ratios, cap = test
    level = kappa_level(kappa)
    assert level is not None, f"kappa {kappa} is below the burst likelihood's floor"
    steps = burst_increment(k_c, k_b, n_c, n_b, 1.0, ratios, level, lam, cap=cap)
    return np.asarray(log_mixture(np.cumsum(steps, axis=1)), dtype=np.float64)


def cell(rng: np.random.Generator, rate: int, weight: int, reps: int, ratio: float = 4.0, kappa: float = KAPPA
         ) -> list[dict[str, Any]]:
    n_c, n_b = round(rate * 60 * weight / 100), round(rate * 60 * (1 - weight / 100))
    rows = []
    draws = {name: [a.reshape(reps, MINUTES) for a in draw(rng, n_c, n_b, kappa, r, reps * MINUTES)]
             for name, r in ((f"x{ratio:g}", ratio), ("aa", 1.0))}
    for test_name, test in tests(ratio, kappa).items():
        row: dict[str, Any] = {"rate": rate, "weight": weight, "test": test_name}
        for scenario, (k_c, k_b) in draws.items():
            peak = log_e_path(k_c, k_b, n_c, n_b, test).max(axis=1)
            for threshold in THRESHOLDS:
                row[f"{scenario}CrossedPct@{threshold:g}"] = float(100 * np.mean(peak >= math.log(threshold)))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4000, help="releases drawn per cell and scenario")
    parser.add_argument("--ratio", type=float, default=4.0,
                        help="the canary's error-rate multiplier (3: twice the default margins)")
    parser.add_argument("--cv", type=float, default=BURST_CV,
                        help=f"the bursts' coefficient of variation per minute (the bursts world's: {BURST_CV:g})")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    opts = parser.parse_args(argv)
    if opts.ratio <= 1.0:
        parser.error(f"--ratio {opts.ratio:g}: a regression's multiplier is above 1")
    kappa = opts.cv**2
    if kappa_level(kappa) is None:
        parser.error(f"--cv {opts.cv:g}: kappa {kappa:g} is below the burst likelihood's floor")
    began = time.monotonic()
    rng = np.random.default_rng(11)
    rows = [row for rate, weight in CELLS for row in cell(rng, rate, weight, opts.reps, opts.ratio, kappa)]
    x = f"x{opts.ratio:g}"
    print(f"crossed ln(K/alpha) by minute {MINUTES}, % of releases: errors {x} | identical versions")
    print(f"req/s  weight%  test                  {x:>2} @80   {x:>2} @400 |  aa @80   aa @400")
    for r in rows:
        print(f"{r['rate']:5d}  {r['weight']:7d}  {r['test']:20s}  {r[f'{x}CrossedPct@80']:6.1f}  "
              f"{r[f'{x}CrossedPct@400']:8.1f} | {r['aaCrossedPct@80']:6.2f}  {r['aaCrossedPct@400']:8.2f}")
    print(f"{opts.reps} releases per cell and scenario, kappa {kappa:g}, base error {BASE_ERROR:g}, "
          f"{time.monotonic() - began:.0f} s")
    if opts.out:
        with open(opts.out, "w") as f:
            options = [f"--reps {opts.reps}" if opts.reps != 4000 else "",
                       f"--ratio {opts.ratio:g}" if opts.ratio != 4.0 else "",
                       f"--cv {opts.cv:g}" if kappa != KAPPA else ""]
            command = " ".join(["python -m bench.burst_limits", *(o for o in options if o)])
            json.dump({"command": command,
                       "reps": opts.reps, "ratio": opts.ratio, "minutes": MINUTES, "kappa": kappa,
                       "baseError": BASE_ERROR,
                       "kappaMargin": BURST_KAPPA_MARGIN, "rateMargin": BURST_RATE_MARGIN, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
