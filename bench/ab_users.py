"""A/B benchmark with real users: impressions of one user are correlated, and users come back.

    python -m bench.ab_users                       # the table (about a minute on 2 cores)
    python -m bench.ab_users --reps 200 --looks 20 # a quick look

World (per replication, vectorised): NEW_USERS users arrive at every look and are assigned 50/50 for good
(sticky). A user's activity is lognormal (a few heavy users, a long tail; mean ACTIVITY results pages per
look while active) and they come back at each later look with probability RETURN_P. A user's click
propensity is Beta-distributed around the variant's click-through with intra-user correlation ICC
(a + b = 1 / ICC - 1; ICC 0: every user the same). Each look, an active user sees Poisson(activity)
pages and clicks each with their propensity.

Judged at every look, alpha 0.05, from the first look with MIN_USERS users per variant:
- `impressions`: today's `analysis.abtest` confidence sequence (intervals as strata, binomial variance
  per impression, Laplace rate), which treats impressions as independent;
- `users`: `analysis.users.user_difference_cs` on the cumulative per-user sums (the delta method).

Reported per ICC: A/A, the share of experiments whose interval ever excluded 0 (a false winner or false
"harmful"; the coverage of the interval at every look is one minus it); with a lift of LIFTS, the share that
found it and the median look. Writes bench/results/ab_users.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from analysis.abtest import comparison_increment, rho_squared
from analysis.histogram import FloatArray
from analysis.users import UserTotals, user_difference_cs
from bench.abtest import ALPHA, cs_of

BASE_CTR = 0.10
NEW_USERS = 100  # per variant pair, per look
ACTIVITY = 2.0  # mean results pages per look of an active user
ACTIVITY_SIGMA = 1.0  # lognormal spread of users' activity (heavy users)
RETURN_P = 0.7  # chance that a user comes back at a later look
MIN_USERS = 100  # per variant before any decision
ICCS = (0.0, 0.09, 0.33)
LIFTS = (0.0, 0.10, 0.20)
TUNING_USERS = 1_000.0  # the impression-level CS is tuned as bench/abtest.py's (10,000 impressions)


def simulate(rng: np.random.Generator, reps: int, looks: int, icc: float, lift: float) -> dict[str, FloatArray]:
    """Per look (axis 1) and variant (v, c): cumulative per-user sums, and each look's clicks and pages."""
    users = NEW_USERS * looks
    arrival = np.repeat(np.arange(looks), NEW_USERS)
    treated = rng.random((reps, users)) < 0.5
    activity = ACTIVITY * rng.lognormal(-ACTIVITY_SIGMA**2 / 2, ACTIVITY_SIGMA, (reps, users))
    ctr = np.where(treated, BASE_CTR * (1 + lift), BASE_CTR)
    if icc > 0:
        k = 1.0 / icc - 1.0
        propensity = rng.beta(ctr * k, (1 - ctr) * k)
    else:
        propensity = ctr
    y_u, n_u = np.zeros((reps, users)), np.zeros((reps, users))
    out: dict[str, list[FloatArray]] = {k: [] for k in (
        "users_v", "y_v", "n_v", "yy_v", "nn_v", "yn_v", "users_c", "y_c", "n_c", "yy_c", "nn_c", "yn_c",
        "dk_v", "dn_v", "dk_c", "dn_c")}
    for t in range(looks):
        arrived = arrival <= t
        active = arrived & ((arrival == t) | (rng.random((reps, users)) < RETURN_P))
        pages = np.where(active, rng.poisson(activity), 0)
        clicks = rng.binomial(pages, propensity)
        y_u += clicks
        n_u += pages
        seen = n_u > 0
        for side, mask in (("v", treated), ("c", ~treated)):
            m = mask & seen
            out[f"users_{side}"].append(m.sum(axis=1).astype(float))
            out[f"y_{side}"].append(np.where(m, y_u, 0).sum(axis=1))
            out[f"n_{side}"].append(np.where(m, n_u, 0).sum(axis=1))
            out[f"yy_{side}"].append(np.where(m, y_u * y_u, 0).sum(axis=1))
            out[f"nn_{side}"].append(np.where(m, n_u * n_u, 0).sum(axis=1))
            out[f"yn_{side}"].append(np.where(m, y_u * n_u, 0).sum(axis=1))
            out[f"dk_{side}"].append(np.where(mask, clicks, 0).sum(axis=1).astype(float))
            out[f"dn_{side}"].append(np.where(mask, pages, 0).sum(axis=1).astype(float))
    return {k: np.stack(v, axis=1) for k, v in out.items()}


def impression_cs(s: dict[str, FloatArray]) -> tuple[FloatArray, FloatArray]:
    """analysis.abtest's CS at every look, as bench/abtest.py computes it (cumulative strata sums, Laplace
    binomial variances), from these looks' clicks and pages."""
    w, sv, sc, a, b = (np.cumsum(x, axis=1) for x in comparison_increment(s["dn_v"], s["dk_v"], s["dn_c"], s["dk_c"]))
    sums = {"w": w, "sv": sv, "sc": sc, "a": a, "b": b,
            **{k: np.cumsum(s[f"d{k[0]}_{k[1]}"], axis=1) for k in ("kv", "nv", "kc", "nc")}}
    return cs_of(sums, "asymptotic", ALPHA)


def user_cs(s: dict[str, FloatArray]) -> tuple[FloatArray, FloatArray]:
    v = UserTotals(s["users_v"], s["y_v"], s["n_v"], s["yy_v"], s["nn_v"], s["yn_v"])
    c = UserTotals(s["users_c"], s["y_c"], s["n_c"], s["yy_c"], s["nn_c"], s["yn_c"])
    _, lo, hi = user_difference_cs(v, c, ALPHA, rho_squared(TUNING_USERS, ALPHA))
    return lo, hi


def judged(s: dict[str, FloatArray], lo: FloatArray, hi: FloatArray, truth: float) -> dict[str, Any]:
    """Share of experiments whose CS missed the truth at some look (from MIN_USERS on), share that excluded 0,
    and the median first look that did."""
    ready = (s["users_v"] >= MIN_USERS) & (s["users_c"] >= MIN_USERS)
    missed = ready & ((lo > truth) | (hi < truth))
    excluded = ready & ((lo > 0) | (hi < 0))
    first = np.where(excluded.any(axis=1), excluded.argmax(axis=1) + 1, -1)
    found = first[first > 0]
    return {"missedTruthPct": 100.0 * float(missed.any(axis=1).mean()),
            "excludedZeroPct": 100.0 * float(excluded.any(axis=1).mean()),
            "medianFirstLook": float(np.median(found)) if found.size else None}


def run(reps: int, looks: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for i, icc in enumerate(ICCS):
        for j, lift in enumerate(LIFTS):
            rng = np.random.default_rng(seed + 100 * i + j)
            s = simulate(rng, reps, looks, icc, lift)
            truth = BASE_CTR * lift  # the users' mean propensity difference (the ratio's limit)
            for method, (lo, hi) in (("impressions", impression_cs(s)), ("users", user_cs(s))):
                rows.append({"icc": icc, "lift": lift, "method": method, **judged(s, lo, hi, truth)})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print("A/A: % of experiments with a false call at some look (1 - coverage); lifts: % found, median look of")
    print("finding, and % whose interval missed the true difference at some look (1 - coverage)")
    print(f"{'icc':>5} {'method':12} {'A/A false':>10} " + " ".join(f"{f'lift {lift:.0%}':>28}" for lift in LIFTS[1:]))
    for icc in ICCS:
        for method in ("impressions", "users"):
            cell = {r["lift"]: r for r in rows if r["icc"] == icc and r["method"] == method}
            found = []
            for lift in LIFTS[1:]:
                r = cell[lift]
                look = "-" if r["medianFirstLook"] is None else f"{r['medianFirstLook']:.0f}"
                found.append(f"{r['excludedZeroPct']:5.1f}% @ {look:>3} miss {r['missedTruthPct']:4.1f}%".rjust(28))
            print(f"{icc:5.2f} {method:12} {cell[0.0]['excludedZeroPct']:9.1f}% " + " ".join(found))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--looks", type=int, default=30)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ab_users.json"))
    opts = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run(opts.reps, opts.looks, opts.seed)
    print_table(rows)
    elapsed = time.perf_counter() - started
    print(f"{opts.reps} experiments per cell, {opts.looks} looks, {NEW_USERS} new users a look: {elapsed:.0f} s")
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps({
        "command": "python -m bench.ab_users " + " ".join(argv if argv is not None else sys.argv[1:]),
        "world": {"baseCtr": BASE_CTR, "newUsersPerLook": NEW_USERS, "activity": ACTIVITY,
                  "activitySigma": ACTIVITY_SIGMA, "returnP": RETURN_P, "minUsers": MIN_USERS},
        "alpha": ALPHA, "reps": opts.reps, "looks": opts.looks, "elapsedSeconds": elapsed, "rows": rows,
    }, indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
