"""A/A experiments through the experiment engine itself: users as the unit against impressions as the unit.

    python -m bench.ab_engine                 # the table in docs/experiments.md (about 25 s on 2 cores)
    python -m bench.ab_engine --runs 60       # a quick look

Where bench/ab_users.py judges vectorised simulations with the interval functions, this drives
`analysis.abtest.ab_update`, the code the controller runs, look by look: every user stays on one variant and
comes back at every look, each with a click rate of its own drawn from a Beta distribution with intra-user
correlation rho; NEW_USERS new users per variant a look, Poisson(2) results pages per user a look, LOOKS
looks, alpha ALPHA, minSamples 200, minUsers 100. The same users are judged with `unit: user` (their per-user
sums) and with `unit: sample` (every impression independent). tests/analysis/test_abtest_users.py runs it
small; it prints the share of A/A experiments with a false winner or harm at some look.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from analysis.abtest import ABDecision, ExperimentConfig, PerUser, PrimaryCounts, ab_initial_state, ab_update

LOOKS = 30
NEW_USERS = 40  # per variant per look
ALPHA = 0.05


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
        "primaryMetric": {"kind": "proportion", "name": "click-through"},
        "minSamples": 200, "minUsers": 100, "maxDurationSeconds": 10**9, "alpha": ALPHA,
    }
    base.update(overrides)
    return base


class Arm:
    """One variant's users: their click rates and running totals (Y_u clicks, N_u impressions)."""

    def __init__(self, rng: np.random.Generator, rate: float, rho: float) -> None:
        self.rng, self.rate, self.rho = rng, rate, rho
        self.p = np.empty(0)
        self.y = np.empty(0)
        self.n = np.empty(0)

    def look(self) -> PrimaryCounts:
        """New users arrive, every user sees Poisson(2) results pages and clicks at their own rate."""
        if self.rho > 0:
            k = (1 - self.rho) / self.rho  # Beta(k m, k (1 - m)): mean m, intra-user correlation rho
            fresh = self.rng.beta(k * self.rate, k * (1 - self.rate), NEW_USERS)
        else:
            fresh = np.full(NEW_USERS, self.rate)
        self.p = np.concatenate([self.p, fresh])
        self.y, self.n = np.concatenate([self.y, np.zeros(NEW_USERS)]), np.concatenate([self.n, np.zeros(NEW_USERS)])
        before = ((self.y ** 2).sum(), (self.n ** 2).sum(), (self.y * self.n).sum())
        pages = self.rng.poisson(2.0, self.p.size)
        clicks = self.rng.binomial(pages, self.p)
        self.y, self.n = self.y + clicks, self.n + pages
        after = ((self.y ** 2).sum(), (self.n ** 2).sum(), (self.y * self.n).sum())
        sums = PerUser(NEW_USERS, *(float(a - b) for a, b in zip(after, before, strict=True)))
        return PrimaryCounts.proportion(int(clicks.sum()), int(pages.sum()), units=NEW_USERS, per_user=sums)


def run(unit: str, rates: tuple[float, float], rho: float, seed: int) -> list[ABDecision]:
    """The decisions of one experiment at each look (the same users judged with `unit`)."""
    rng = np.random.default_rng(seed)
    arms = {"v1": Arm(rng, rates[0], rho), "v2": Arm(rng, rates[1], rho)}
    state = ab_initial_state(ExperimentConfig.from_dict(spec(unit=unit)))
    decisions = []
    for look in range(1, LOOKS + 1):
        counts = {name: arm.look() for name, arm in arms.items()}
        if unit == "sample":
            counts = {k: PrimaryCounts.proportion(int(c.total), c.count, units=c.units) for k, c in counts.items()}
        state, result = ab_update(state, counts, 60.0 * look)
        decisions.append(result.decision)
    return decisions


def false_calls(unit: str, rho: float, runs: int) -> float:
    called = [any(d in (ABDecision.WINNER, ABDecision.HARMFUL) for d in run(unit, (0.1, 0.1), rho, seed))
              for seed in range(runs)]
    return float(np.mean(called))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="A/A experiments per cell (default 200)")
    opts = parser.parse_args(argv)
    print(f"A/A false winner or harm at some look, {opts.runs} experiments per cell, {LOOKS} looks, alpha {ALPHA}")
    print(f"{'rho':>5} {'unit: user':>11} {'unit: sample':>13}")
    for rho in (0.0, 0.1, 0.3):
        print(f"{rho:5.1f} {false_calls('user', rho, opts.runs):10.1%} {false_calls('sample', rho, opts.runs):12.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
