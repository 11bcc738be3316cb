"""Benchmark: the rate checks' dispersion, pooled (`rate_dispersion`) and as the safety bounds take it
(`bound_dispersion`), on the draws docs/analysis.md quotes ("The first intervals' ratio").

- A healthy local release's master-search slow tail (CI, 7 December): its intervals with any slow request, two
  of them machine stalls, then the rest of its requests with none; and the excess rate's upper bound at alpha 5%
  against the 3% margin.
- Identical versions, independent requests, 1% events, 100 requests a version per interval: the pooled phi after
  15 intervals, averaged over 400 runs.
- Identical versions at 0.5% errors and 50 req/s, 20 minutes at 10% then 5 at 50%, with and without a per-minute
  Gamma factor of CV 1 on each version's rate: both dispersions on six draws.

    python -m bench.dispersion [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from analysis.safety import excess_upper_bound
from analysis.sequential import _fold_ratio, _ratio_state, bound_dispersion, rate_dispersion

# [canary slow, baseline slow, canary requests, baseline requests] of the release's first 15 intervals with any slow
# request. The machine stalled both versions in the third (35 and 46) and the canary alone in the fourth (20 of 93).
SHARED_BURST_EARLY = [[1, 0, 48, 152], [1, 0, 111, 89], [35, 46, 100, 100], [20, 0, 93, 107], [3, 0, 101, 99],
                      [1, 0, 100, 100], [8, 2, 102, 98], [0, 1, 86, 114], [0, 1, 98, 102], [6, 2, 101, 99],
                      [1, 0, 96, 104], [0, 1, 112, 88], [5, 5, 95, 105], [1, 0, 103, 97], [0, 1, 101, 99]]
RELEASE_REQUESTS = (7410, 7830)  # the release's canary and baseline requests in all
EXCESS_MARGIN = 0.03


def shared_burst_release() -> dict[str, Any]:
    """The slow-tail check's state after the release above: its 15 intervals with slow requests, then 40 with none
    up to its requests in all."""
    rec = _ratio_state()
    for k_c, k_b, n_c, n_b in SHARED_BURST_EARLY:
        _fold_ratio(rec, k_c, k_b, n_c, n_b, 1.0)
    n_c, n_b = rec["exposure"]
    for _ in range(40):
        _fold_ratio(rec, 0, 0, (RELEASE_REQUESTS[0] - n_c) // 40, (RELEASE_REQUESTS[1] - n_b) // 40, 1.0)
    return rec


def excess_bound(rec: dict[str, Any], phi: float, alpha: float = 0.05) -> float:
    """The excess rate's upper bound with the counts divided by `phi`, as the judge's safety route computes it."""
    (k_c, k_b), (n_c, n_b) = rec["events"], rec["exposure"]
    return excess_upper_bound(k_c / phi, n_c / phi, k_b / phi, n_b / phi, alpha, EXCESS_MARGIN)


def independent_phis(runs: int = 400, seed: int = 5) -> list[float]:
    """The pooled phi after 15 intervals of identical versions with independent requests, one per run."""
    rng = np.random.default_rng(seed)
    phis = []
    for _ in range(runs):
        rec = _ratio_state()
        for _ in range(15):
            _fold_ratio(rec, int(rng.binomial(100, 0.01)), int(rng.binomial(100, 0.01)), 100, 100, 1.0)
        phis.append(rate_dispersion(rec))
    return phis


def ramp(seed: int, bursty: bool) -> dict[str, Any]:
    """The error check's state after 20 minutes at 10% and 5 at 50% of 3,000 requests a minute, 0.5% errors."""
    rng = np.random.default_rng(seed)
    rec = _ratio_state()
    for weight in [0.1] * 20 + [0.5] * 5:
        rate_c, rate_b = (0.005 * rng.gamma(1.0, 1.0, 2)) if bursty else (0.005, 0.005)
        n_c = int(3000 * weight)
        _fold_ratio(rec, int(rng.poisson(n_c * rate_c)), int(rng.poisson((3000 - n_c) * rate_b)), n_c, 3000 - n_c, 1.0)
    return rec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    rec = shared_burst_release()
    pooled, bounds = rate_dispersion(rec), bound_dispersion(rec)
    shared = {"pooled": pooled, "bounds": bounds, "excessBound": excess_bound(rec, bounds), "margin": EXCESS_MARGIN}
    print(f"shared burst early: pooled phi {pooled:.2f}, bounds' phi {bounds:.2f}, excess bound "
          f"{shared['excessBound']:.4f} against the margin {EXCESS_MARGIN}")
    mean = float(np.mean(independent_phis()))
    print(f"independent requests, 15 intervals, 400 runs: mean pooled phi {mean:.3f}")
    ramps: dict[str, list[dict[str, float]]] = {}
    for bursty in (False, True):
        name = "bursts" if bursty else "independent"
        ramps[name] = [{"seed": s, "pooled": rate_dispersion(r), "bounds": bound_dispersion(r)}
                       for s, r in ((s, ramp(s, bursty)) for s in range(6))]
        print(f"10% then 50%, {name}: " + ", ".join(
            f"seed {x['seed']} pooled {x['pooled']:.2f} bounds {x['bounds']:.2f}" for x in ramps[name]))
    if args.out:
        args.out.write_text(json.dumps({"sharedBurst": shared, "independentMeanPhi": mean, "ramps": ramps},
                                       indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
