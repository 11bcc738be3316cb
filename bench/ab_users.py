"""A/B benchmark with real users: impressions of one user are correlated, and users come back.

    python -m bench.ab_users                          # the two-variant table (2-3 minutes on 2 cores)
    python -m bench.ab_users --reps 200 --looks 20    # a quick look
    python -m bench.ab_users --section abn            # three variants, users split 34/33/33 (about 3 min)
    python -m bench.ab_users --section novelty        # a novelty effect that fades (about 2 min)
    python -m bench.ab_users --section weekly         # weekday/weekend traffic and click-through (4-6 min)

World (per replication, vectorised): NEW_USERS users arrive at every look and are assigned for good (sticky;
50/50, or 34/33/33 with three variants). A user's activity is lognormal (a few heavy users, a long tail;
mean ACTIVITY results pages per look while active) and they come back at each later look with probability
RETURN_P. A user's click propensity is Beta-distributed around the variant's click-through with intra-user
correlation ICC (a + b = 1 / ICC - 1; ICC 0: every user the same). Each look, an active user sees
Poisson(activity) pages and clicks each with their propensity.

Judged at every look, alpha 0.05, from the first look with MIN_USERS users in every variant:
- `impressions`: today's `analysis.abtest` confidence sequence (intervals as strata, binomial variance
  per impression, Laplace rate), which treats impressions as independent;
- `users`: `analysis.users.user_difference_cs` on the cumulative per-user sums (the delta method).
With k treatments each comparison with the control runs at alpha / k (tuned as `analysis.abtest` does).

Sections (each writes bench/results/ab_users[_<section>].json and .txt, the printed table):
- `main`: two variants. Per ICC: A/A, the share of experiments whose interval ever excluded 0 (a false
  winner or false "harmful"; the coverage of the interval at every look is one minus it); with a lift of
  LIFTS, the share that found it and the median look.
- `abn`: control and two treatments (ABN_SHARES). A/A/A: family-wise false calls (either treatment's
  interval at alpha / 2 excluding 0 at some look) and simultaneous coverage at every look; with one
  treatment at +10% or +20%: the share whose interval found it, and the share in which the controller's rule
  (`analysis.abtest`: "harmful" if any treatment is worse, else a winner only when separated from every
  rival) first decided for that treatment, and at which look.
- `novelty`: the treatment's click-through is (1 + NOVELTY) times its long-run value at a user's first look
  (the look they arrived), fading linearly to the long-run value by NOVELTY_LOOKS looks after arrival. New
  users keep arriving, so the ratio over the users seen so far (the estimand of `analysis.users`) keeps a
  share of novelty at every look: `estimand` is its expectation per look (`expected_ratio`). Reported: the
  share of experiments with a "winner" at some look, coverage of the long-run difference at the last look,
  and misses of the moving estimand at some look.
- `weekly`: looks are LOOK_HOURS-hour blocks from Monday 00:00; on Saturday and Sunday new users and
  returns are WEEKEND_USERS times their weekday level, and every user's click-through (both variants) is
  WEEKEND_CTR times the long-run value, WEEKDAY_CTR on weekdays. A/A false calls, coverage at every look of
  the expected difference (`expected_ratio`), power with a lift.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from scipy import special

from analysis.abtest import comparison_increment, rho_squared
from analysis.histogram import FloatArray
from analysis.users import UserTotals, user_difference_cs
from bench.abtest import ALPHA, cs_of

T = TypeVar("T")

BASE_CTR = 0.10
NEW_USERS = 100  # per look, all variants together
ACTIVITY = 2.0  # mean results pages per look of an active user
ACTIVITY_SIGMA = 1.0  # lognormal spread of users' activity (heavy users)
RETURN_P = 0.7  # chance that a user comes back at a later look
MIN_USERS = 100  # per variant before any decision
ICCS = (0.0, 0.09, 0.33)
LIFTS = (0.0, 0.10, 0.20)
TUNING_USERS = 1_000.0  # the impression-level CS is tuned as bench/abtest.py's (10,000 impressions)

ABN_SHARES = (0.34, 0.33, 0.33)  # control, treatment 1, treatment 2
ABN_LIFTS = ((0.0, 0.0), (0.10, 0.0), (0.20, 0.0))  # treatment 1, treatment 2
NOVELTY = 0.30  # extra relative click-through of a treated user at the look they arrived
NOVELTY_LOOKS = 5  # ... fading linearly to none this many looks after arrival
NOVELTY_LIFTS = (0.0, 0.10)  # the long-run lift
LOOK_HOURS = 6  # the weekly section: a look is this many hours, from Monday 00:00
WEEKEND_USERS = 0.6  # new users and returns on Saturday and Sunday, relative to weekdays
WEEKEND_CTR = 1.10  # every user's click-through on weekends, relative to the long-run value
WEEKDAY_CTR = 0.90  # ... and on weekdays
WEEKLY_LIFTS = (0.0, 0.10)
SECTIONS = ("main", "abn", "novelty", "weekly")
DEFAULT_LOOKS = {"main": 30, "abn": 30, "novelty": 30, "weekly": 56}  # weekly: two weeks of 6-hour looks
STATS = ("users", "y", "n", "yy", "nn", "yn", "dk", "dn")
RESULTS = Path(__file__).parent / "results"


def arrivals(looks: int, traffic: FloatArray | None = None) -> npt.NDArray[np.int64]:
    """New users per look: NEW_USERS, times the look's traffic factor (rounded)."""
    if traffic is None:
        return np.full(looks, NEW_USERS, dtype=np.int64)
    return np.rint(NEW_USERS * np.asarray(traffic, dtype=np.float64)).astype(np.int64)


def novelty_factor(age: npt.ArrayLike, novelty: npt.ArrayLike) -> FloatArray:
    """A treated user's click-through relative to its long-run value, `age` looks after arrival."""
    fading = np.clip(1.0 - np.asarray(age, dtype=np.float64) / NOVELTY_LOOKS, 0.0, 1.0)
    return np.asarray(1.0 + np.asarray(novelty, dtype=np.float64) * fading, dtype=np.float64)


def simulate_arms(rng: np.random.Generator, reps: int, looks: int, icc: float, ctrs: Sequence[float],
                  shares: Sequence[float], novelty: Sequence[float] | None = None,
                  traffic: FloatArray | None = None, ctr_factor: FloatArray | None = None) -> dict[str, FloatArray]:
    """Per statistic (STATS), an array (arm, rep, look): cumulative per-user sums of each arm's users seen so
    far, and each look's clicks (dk) and pages (dn). Arm a gets share a of the users and long-run click-through
    ctrs[a]; `novelty` (per arm) multiplies a user's click-through by `novelty_factor`; `traffic` (per look)
    scales new users and returns; `ctr_factor` (per look) multiplies every user's click-through. Click
    probabilities above 1 are cut to 1."""
    assert len(ctrs) == len(shares) and abs(sum(shares) - 1.0) < 1e-9
    arrival = np.repeat(np.arange(looks), arrivals(looks, traffic))
    users = arrival.size
    arm = np.searchsorted(np.cumsum(shares)[:-1], rng.random((reps, users)), side="right")
    activity = ACTIVITY * rng.lognormal(-ACTIVITY_SIGMA**2 / 2, ACTIVITY_SIGMA, (reps, users))
    ctr = np.asarray(ctrs, dtype=np.float64)[arm]
    if icc > 0:
        k = 1.0 / icc - 1.0
        propensity = rng.beta(ctr * k, (1 - ctr) * k)
    else:
        propensity = ctr
    extra = None if novelty is None else np.asarray(novelty, dtype=np.float64)[arm]
    y_u, n_u = np.zeros((reps, users)), np.zeros((reps, users))
    masks = [arm == a for a in range(len(shares))]
    out: dict[str, list[list[FloatArray]]] = {k: [[] for _ in shares] for k in STATS}
    for t in range(looks):
        arrived = arrival <= t
        back = RETURN_P if traffic is None else RETURN_P * float(traffic[t])
        active = arrived & ((arrival == t) | (rng.random((reps, users)) < back))
        pages = np.where(active, rng.poisson(activity), 0)
        p = propensity
        if extra is not None or ctr_factor is not None:
            m = np.ones_like(propensity) if ctr_factor is None else np.full_like(propensity, ctr_factor[t])
            if extra is not None:
                m = m * novelty_factor(t - arrival, extra)
            p = np.minimum(propensity * m, 1.0)
        clicks = rng.binomial(pages, p)
        y_u += clicks
        n_u += pages
        seen = n_u > 0
        yy, nn, yn = y_u * y_u, n_u * n_u, y_u * n_u
        for a, mask in enumerate(masks):
            m_seen = mask & seen
            out["users"][a].append(m_seen.sum(axis=1).astype(float))
            for key, x in (("y", y_u), ("n", n_u), ("yy", yy), ("nn", nn), ("yn", yn)):
                out[key][a].append(np.where(m_seen, x, 0).sum(axis=1))
            out["dk"][a].append(np.where(mask, clicks, 0).sum(axis=1).astype(float))
            out["dn"][a].append(np.where(mask, pages, 0).sum(axis=1).astype(float))
    return {k: np.stack([np.stack(per_look, axis=1) for per_look in v]) for k, v in out.items()}


def pair(s: dict[str, FloatArray], variant: int, control: int) -> dict[str, FloatArray]:
    """One comparison's statistics as `simulate` names them: `<stat>_v` of the variant, `<stat>_c` of the
    control, each (rep, look)."""
    return {**{f"{k}_v": s[k][variant] for k in STATS}, **{f"{k}_c": s[k][control] for k in STATS}}


def simulate(rng: np.random.Generator, reps: int, looks: int, icc: float, lift: float) -> dict[str, FloatArray]:
    """Two variants 50/50, the variant with a lift: per look (axis 1) and variant (v, c), cumulative per-user
    sums, and each look's clicks and pages."""
    return pair(simulate_arms(rng, reps, looks, icc, (BASE_CTR * (1 + lift), BASE_CTR), (0.5, 0.5)), 0, 1)


def clipped_mean(ctr: float, icc: float, factor: npt.ArrayLike) -> FloatArray:
    """E[min(1, factor * p)] for a user's propensity p ~ Beta with mean ctr and intra-user correlation icc."""
    m = np.asarray(factor, dtype=np.float64)
    if icc <= 0:
        return np.asarray(np.minimum(1.0, m * ctr), dtype=np.float64)
    k = 1.0 / icc - 1.0
    a, b = ctr * k, (1 - ctr) * k
    x = np.minimum(1.0, 1.0 / m)  # p >= x clicks every page
    # E[p; p < x] = ctr * I_x(a + 1, b) (the Beta(a, b) density times p is ctr times that of Beta(a + 1, b))
    return np.asarray(m * ctr * special.betainc(a + 1, b, x) + (1.0 - special.betainc(a, b, x)), dtype=np.float64)


def expected_ratio(looks: int, icc: float, ctr: float, novelty: float = 0.0, traffic: FloatArray | None = None,
                   ctr_factor: FloatArray | None = None) -> FloatArray:
    """Per look, the limit of one arm's ratio (clicks / pages over its users seen so far) in the world of
    `simulate_arms`: expected clicks over expected pages, cumulated over the looks so far (the assignment
    share and the mean activity cancel)."""
    per_look = arrivals(looks, traffic).astype(np.float64)
    clicks = pages = 0.0
    out = np.empty(looks)
    for t in range(looks):
        age = t - np.arange(t + 1)  # of the users who arrived at looks 0..t
        back = RETURN_P * (1.0 if traffic is None else float(traffic[t]))
        weight = per_look[: t + 1] * np.where(age == 0, 1.0, back)
        factor = novelty_factor(age, novelty) * (1.0 if ctr_factor is None else float(ctr_factor[t]))
        clicks += float((weight * clipped_mean(ctr, icc, factor)).sum())
        pages += float(weight.sum())
        out[t] = clicks / pages
    return out


def weekly_factors(looks: int) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """(traffic, click-through factor, weekend) per look of LOOK_HOURS hours from Monday 00:00."""
    weekend = (np.arange(looks) * LOOK_HOURS // 24) % 7 >= 5
    return (np.where(weekend, WEEKEND_USERS, 1.0), np.where(weekend, WEEKEND_CTR, WEEKDAY_CTR), weekend)


def impression_cs(s: dict[str, FloatArray], alpha: float = ALPHA) -> tuple[FloatArray, FloatArray]:
    """analysis.abtest's CS at every look, as bench/abtest.py computes it (cumulative strata sums, Laplace
    binomial variances), from these looks' clicks and pages."""
    w, sv, sc, a, b = (np.cumsum(x, axis=1) for x in comparison_increment(s["dn_v"], s["dk_v"], s["dn_c"], s["dk_c"]))
    sums = {"w": w, "sv": sv, "sc": sc, "a": a, "b": b,
            **{k: np.cumsum(s[f"d{k[0]}_{k[1]}"], axis=1) for k in ("kv", "nv", "kc", "nc")}}
    return cs_of(sums, "asymptotic", alpha)


def user_totals(s: dict[str, FloatArray], side: str) -> UserTotals:
    return UserTotals(*(s[f"{k}_{side}"] for k in ("users", "y", "n", "yy", "nn", "yn")))


def user_cs(s: dict[str, FloatArray], alpha: float = ALPHA) -> tuple[FloatArray, FloatArray]:
    """analysis.users' CS at every look, at alpha (alpha / k with k treatments), tuned as analysis.abtest."""
    _, lo, hi = user_difference_cs(user_totals(s, "v"), user_totals(s, "c"), alpha, rho_squared(TUNING_USERS, alpha))
    return lo, hi


METHODS: dict[str, Callable[[dict[str, FloatArray], float], tuple[FloatArray, FloatArray]]] = {
    "impressions": impression_cs, "users": user_cs}


def _first_look(hit: npt.NDArray[np.bool_]) -> FloatArray:
    """Per experiment, the first look (1-based) with a hit, or -1."""
    return np.where(hit.any(axis=-1), hit.argmax(axis=-1) + 1, -1).astype(np.float64)


def _median_look(first: FloatArray) -> float | None:
    found = first[first > 0]
    return float(np.median(found)) if found.size else None


def _pct(x: npt.NDArray[np.bool_] | np.bool_) -> float:
    return 100.0 * float(np.mean(np.asarray(x, dtype=np.float64)))


def judged(s: dict[str, FloatArray], lo: FloatArray, hi: FloatArray, truth: float | FloatArray) -> dict[str, Any]:
    """Share of experiments whose CS missed the truth (a number, or one per look) at some look (from
    MIN_USERS on), share that excluded 0, and the median first look that did."""
    ready = (s["users_v"] >= MIN_USERS) & (s["users_c"] >= MIN_USERS)
    missed = ready & ((lo > truth) | (hi < truth))
    excluded = ready & ((lo > 0) | (hi < 0))
    return {"missedTruthPct": _pct(missed.any(axis=1)),
            "excludedZeroPct": _pct(excluded.any(axis=1)),
            "medianFirstLook": _median_look(_first_look(excluded))}


def cells(seed: int, lifts: Sequence[T], iccs: Sequence[float] = ICCS
          ) -> Iterator[tuple[float, T, np.random.Generator]]:
    """(icc, lift, rng) of every cell, ICCS x `lifts`, the cell's generator seeded `seed + 100 i + j` by its place
    in ICCS and `lifts`: a subset of ICCS gives the same cells, and every section's cell with the same ICC and
    lift draws the same users as the main table's."""
    for i, icc in enumerate(ICCS):
        if icc not in iccs:
            continue
        for j, lift in enumerate(lifts):
            yield icc, lift, np.random.default_rng(seed + 100 * i + j)


def run(reps: int, looks: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for icc, lift, rng in cells(seed, LIFTS):
        s = simulate(rng, reps, looks, icc, lift)
        truth = BASE_CTR * lift  # the users' mean propensity difference (the ratio's limit)
        for method, (lo, hi) in (("impressions", impression_cs(s)), ("users", user_cs(s))):
            rows.append({"icc": icc, "lift": lift, "method": method, **judged(s, lo, hi, truth)})
    return rows


def table(rows: list[dict[str, Any]], methods: Sequence[str] = tuple(METHODS), width: int = 12) -> list[str]:
    """The main table: per ICC and method (`width` characters wide), A/A false calls and each lift's finding."""
    lines = ["A/A: % of experiments with a false call at some look (1 - coverage); lifts: % found, median look of",
             "finding, and % whose interval missed the true difference at some look (1 - coverage)",
             f"{'icc':>5} {'method':{width}} {'A/A false':>10} "
             + " ".join(f"{f'lift {lift:.0%}':>28}" for lift in LIFTS[1:])]
    for icc in ICCS:
        for method in methods:
            cell = {r["lift"]: r for r in rows if r["icc"] == icc and r["method"] == method}
            found = []
            for lift in LIFTS[1:]:
                r = cell[lift]
                look = "-" if r["medianFirstLook"] is None else f"{r['medianFirstLook']:.0f}"
                found.append(f"{r['excludedZeroPct']:5.1f}% @ {look:>3} miss {r['missedTruthPct']:4.1f}%".rjust(28))
            lines.append(f"{icc:5.2f} {method:{width}} {cell[0.0]['excludedZeroPct']:9.1f}% " + " ".join(found))
    return lines


# -- three variants -------------------------------------------------------------------------------------------

def abn_judged(ready: npt.NDArray[np.bool_], lo: FloatArray, hi: FloatArray, lifts: Sequence[float]
               ) -> dict[str, Any]:
    """lo, hi: (treatment, rep, look), each at alpha / k; ready: (rep, look). Family-wise false calls (a
    treatment without lift whose CS excluded 0 at some look), simultaneous misses (some CS missed its
    treatment's true difference at some look), power of the interval of the best treatment, and the first
    decision of `analysis.abtest`'s rule (favourable sign +): harmful if any CS is below 0, else a winner
    when the best treatment beating the control is separated from every other."""
    lift = np.asarray(lifts, dtype=np.float64)
    truth = (BASE_CTR * lift)[:, None, None]
    null = lift == 0
    excluded = ready & ((lo > 0) | (hi < 0))
    missed = ready & ((lo > truth) | (hi < truth))
    better = lo > 0
    worst_best = np.where(better, lo, -np.inf)
    best = worst_best.argmax(axis=0)
    lo_best = worst_best.max(axis=0)
    index = np.arange(len(lifts))[:, None, None]
    rival = ((hi >= lo_best) & (index != best)).any(axis=0)
    harmful = (hi < 0).any(axis=0)
    winner = better.any(axis=0) & ~rival & ~harmful
    decided = ready & (harmful | winner)
    first = _first_look(decided)
    at = np.where(first > 0, first - 1, 0).astype(np.int64)[:, None]
    first_winner = np.take_along_axis(winner, at, axis=1)[:, 0] & (first > 0)
    first_best = np.take_along_axis(best, at, axis=1)[:, 0]
    row: dict[str, Any] = {"falseCallPct": _pct(excluded[null].any(axis=(0, 2))) if null.any() else None,
                           "missedTruthPct": _pct(missed.any(axis=(0, 2)))}
    if lift.max() > 0:
        top = int(lift.argmax())
        right = first_winner & (first_best == top)
        row |= {"foundPct": _pct((ready & better)[top].any(axis=1)),
                "medianFoundLook": _median_look(_first_look((ready & better)[top])),
                "winnerPct": _pct(right), "medianWinnerLook": _median_look(np.where(right, first, -1)),
                "wrongDecisionPct": _pct((first > 0) & ~right)}
    else:
        row |= {"falseDecisionPct": _pct(first > 0), "medianFalseDecisionLook": _median_look(first)}
    return row


def run_abn(reps: int, looks: int, seed: int, iccs: Sequence[float] = ICCS) -> list[dict[str, Any]]:
    """Cells of ICCS x ABN_LIFTS (a subset of ICCS gives the same cells)."""
    rows = []
    for icc, lifts, rng in cells(seed, ABN_LIFTS, iccs):
        s = simulate_arms(rng, reps, looks, icc, (BASE_CTR, *(BASE_CTR * (1 + x) for x in lifts)), ABN_SHARES)
        ready = np.asarray((s["users"] >= MIN_USERS).all(axis=0), dtype=np.bool_)
        alpha = ALPHA / len(lifts)
        for method, cs in METHODS.items():
            bounds = [cs(pair(s, t + 1, 0), alpha) for t in range(len(lifts))]
            lo, hi = np.stack([b[0] for b in bounds]), np.stack([b[1] for b in bounds])
            rows.append({"icc": icc, "lifts": list(lifts), "method": method, **abn_judged(ready, lo, hi, lifts)})
    return rows


def _look(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def abn_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["Three variants (control + 2 treatments, users 34/33/33), alpha 0.05 / 2 per comparison.",
             "A/A/A: % of experiments in which either treatment's interval excluded 0 at some look (family-wise false",
             "calls = 1 - simultaneous coverage at every look), and % in which the controller's rule stopped with a",
             "winner or 'harmful' (median look).",
             f"{'icc':>5} {'method':12} {'false calls':>12} {'decision':>13}"]
    for icc in ICCS:
        for method in METHODS:
            r = next(x for x in rows if x["icc"] == icc and x["method"] == method and tuple(x["lifts"]) == ABN_LIFTS[0])
            lines.append(f"{icc:5.2f} {method:12} {r['falseCallPct']:11.1f}% "
                         f"{r['falseDecisionPct']:6.1f}% @ {_look(r['medianFalseDecisionLook']):>3}")
    lines += ["", "Treatment 1 with a lift, treatment 2 without: % whose interval for treatment 1 excluded 0 (median",
              "look), % in which the controller's first decision named treatment 1 the winner (median look), % whose",
              "first decision was another (a wrong winner or 'harmful'), % in which either interval missed its true",
              "difference at some look (1 - simultaneous coverage), % with a false call on treatment 2.",
              f"{'icc':>5} {'method':12} {'lift':>5} {'found':>13} {'winner':>13} "
              f"{'other':>7} {'miss':>7} {'false':>7}"]
    for icc in ICCS:
        for method in METHODS:
            for lifts in ABN_LIFTS[1:]:
                r = next(x for x in rows if x["icc"] == icc and x["method"] == method and tuple(x["lifts"]) == lifts)
                lines.append(f"{icc:5.2f} {method:12} {lifts[0]:5.0%} "
                             f"{r['foundPct']:6.1f}% @ {_look(r['medianFoundLook']):>3} "
                             f"{r['winnerPct']:6.1f}% @ {_look(r['medianWinnerLook']):>3} "
                             f"{r['wrongDecisionPct']:6.1f}% {r['missedTruthPct']:6.1f}% {r['falseCallPct']:6.1f}%")
    return lines


# -- novelty --------------------------------------------------------------------------------------------------

def run_novelty(reps: int, looks: int, seed: int, iccs: Sequence[float] = ICCS) -> list[dict[str, Any]]:
    """Same seeds as `run`'s cells with the same ICC and lift: each A/A cell differs from the main table's only
    by the novelty (the same users, visits and random numbers)."""
    rows = []
    for icc, lift, rng in cells(seed, NOVELTY_LIFTS, iccs):
        ctr_v = BASE_CTR * (1 + lift)
        s = pair(simulate_arms(rng, reps, looks, icc, (ctr_v, BASE_CTR), (0.5, 0.5), novelty=(NOVELTY, 0.0)),
                 0, 1)
        estimand = expected_ratio(looks, icc, ctr_v, NOVELTY) - expected_ratio(looks, icc, BASE_CTR)
        long_run = BASE_CTR * lift
        ready = (s["users_v"] >= MIN_USERS) & (s["users_c"] >= MIN_USERS)
        for method, cs in METHODS.items():
            lo, hi = cs(s, ALPHA)
            win = ready & (lo > 0)
            rows.append({
                "icc": icc, "lift": lift, "method": method,
                "winnerPct": _pct(win.any(axis=1)), "medianWinnerLook": _median_look(_first_look(win)),
                "harmfulPct": _pct((ready & (hi < 0)).any(axis=1)),
                "coversLongRunAtLastLookPct": _pct((lo[:, -1] <= long_run) & (long_run <= hi[:, -1])),
                "missedLongRunPct": _pct((ready & ((lo > long_run) | (hi < long_run))).any(axis=1)),
                "missedEstimandPct": _pct((ready & ((lo > estimand) | (hi < estimand))).any(axis=1)),
                "medianLastWidth": float(np.median(hi[:, -1] - lo[:, -1])),
                "longRunDifference": long_run, "estimandByLook": [float(x) for x in estimand],
            })
    return rows


def novelty_table(rows: list[dict[str, Any]], looks: int) -> list[str]:
    est = {r["lift"]: r["estimandByLook"] for r in rows if r["icc"] == 0.0 and r["method"] == "users"}
    lines = [f"Novelty: the treatment's click-through is +{NOVELTY:.0%} at a user's first look, fading linearly to its "
             f"long-run value {NOVELTY_LOOKS} looks after arrival.",
             "Estimand of the user-level interval (difference of the ratios over the users seen so far, expected) at "
             f"looks 1, 5, 10, {looks} (ICC 0):"]
    for lift, e in est.items():
        marks = [e[t] for t in (0, 4, 9, looks - 1) if t < looks]
        lines.append(f"  long-run lift {lift:.0%} (difference {BASE_CTR * lift:.4f}): "
                     + ", ".join(f"{x:+.4f}" for x in marks))
    lines += ["Per cell: % of experiments with a 'winner' (interval above 0) at some look (median look), % 'harmful',",
              "% whose interval held the long-run difference at the last look, % that missed the long-run difference",
              "at some look, % that missed the moving estimand at some look.",
              f"{'icc':>5} {'lift':>5} {'method':12} {'winner':>12} {'harmful':>8} {'long-run@last':>14} "
              f"{'miss long-run':>14} {'miss estimand':>14}"]
    for r in rows:
        lines.append(f"{r['icc']:5.2f} {r['lift']:5.0%} {r['method']:12} "
                     f"{r['winnerPct']:5.1f}% @{_look(r['medianWinnerLook']):>3} {r['harmfulPct']:7.1f}% "
                     f"{r['coversLongRunAtLastLookPct']:13.1f}% {r['missedLongRunPct']:13.1f}% "
                     f"{r['missedEstimandPct']:13.1f}%")
    return lines


# -- weekday/weekend ------------------------------------------------------------------------------------------

def run_weekly(reps: int, looks: int, seed: int, iccs: Sequence[float] = ICCS) -> list[dict[str, Any]]:
    traffic, ctr_factor, _ = weekly_factors(looks)
    rows = []
    for icc, lift, rng in cells(seed, WEEKLY_LIFTS, iccs):
        ctr_v = BASE_CTR * (1 + lift)
        s = pair(simulate_arms(rng, reps, looks, icc, (ctr_v, BASE_CTR), (0.5, 0.5), traffic=traffic,
                               ctr_factor=ctr_factor), 0, 1)
        estimand = (expected_ratio(looks, icc, ctr_v, traffic=traffic, ctr_factor=ctr_factor)
                    - expected_ratio(looks, icc, BASE_CTR, traffic=traffic, ctr_factor=ctr_factor))
        for method, cs in METHODS.items():
            lo, hi = cs(s, ALPHA)
            rows.append({"icc": icc, "lift": lift, "method": method, **judged(s, lo, hi, estimand),
                         "estimandFirstLast": [float(estimand[0]), float(estimand[-1])]})
    return rows


def weekly_table(rows: list[dict[str, Any]], looks: int) -> list[str]:
    lift = WEEKLY_LIFTS[1]
    lines = [f"Weekday/weekend: {looks} looks of {LOOK_HOURS} h from Monday 00:00; on weekends {WEEKEND_USERS:.0%} of "
             f"the weekday users and returns, click-through x{WEEKEND_CTR:g} (weekdays x{WEEKDAY_CTR:g}), both "
             "variants.",
             "A/A: % of experiments with a false call at some look (= % that missed the difference 0); lift: % found",
             "(median look), % whose interval missed the expected difference (which moves with the weekly mix) at",
             "some look.",
             f"{'icc':>5} {'method':12} {'A/A false':>10} {f'lift {lift:.0%}: found':>19} {'miss':>7}"]
    for icc in ICCS:
        for method in METHODS:
            cell = {r["lift"]: r for r in rows if r["icc"] == icc and r["method"] == method}
            r = cell[lift]
            lines.append(f"{icc:5.2f} {method:12} {cell[0.0]['excludedZeroPct']:9.1f}% "
                         f"{r['excludedZeroPct']:12.1f}% @{_look(r['medianFirstLook']):>3} {r['missedTruthPct']:6.1f}%")
    return lines


def world(section: str, looks: int) -> dict[str, Any]:
    """The settings that define a section's numbers (machine-independent)."""
    w: dict[str, Any] = {"baseCtr": BASE_CTR, "newUsersPerLook": NEW_USERS, "activity": ACTIVITY,
                         "activitySigma": ACTIVITY_SIGMA, "returnP": RETURN_P, "minUsers": MIN_USERS,
                         "iccs": list(ICCS), "tuningUsers": TUNING_USERS}
    if section == "main":
        w["lifts"] = list(LIFTS)
    elif section == "abn":
        w |= {"shares": list(ABN_SHARES), "lifts": [list(x) for x in ABN_LIFTS], "alphaEach": ALPHA / 2}
    elif section == "novelty":
        w |= {"lifts": list(NOVELTY_LIFTS), "novelty": NOVELTY, "noveltyLooks": NOVELTY_LOOKS,
              "noveltyFading": "linear in looks since arrival"}
    else:
        traffic, _, weekend = weekly_factors(looks)
        w |= {"lifts": list(WEEKLY_LIFTS), "lookHours": LOOK_HOURS, "weekendUsers": WEEKEND_USERS,
              "weekendCtr": WEEKEND_CTR, "weekdayCtr": WEEKDAY_CTR,
              "weekendLooks": [int(t) for t in np.flatnonzero(weekend)],
              "newUsersByLook": [int(x) for x in arrivals(looks, traffic)]}
    return w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--section", choices=SECTIONS, default="main")
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--looks", type=int, default=None, help="default: 30 (weekly: 56, two weeks of 6 h)")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--out", default=None, help="default bench/results/ab_users[_<section>].json; the table "
                        "goes to the same name with .txt")
    opts = parser.parse_args(argv)
    looks = opts.looks if opts.looks is not None else DEFAULT_LOOKS[opts.section]
    out = Path(opts.out) if opts.out else RESULTS / ("ab_users.json" if opts.section == "main"
                                                     else f"ab_users_{opts.section}.json")
    started = time.perf_counter()
    if opts.section == "main":
        rows = run(opts.reps, looks, opts.seed)
        lines = table(rows)
    elif opts.section == "abn":
        rows = run_abn(opts.reps, looks, opts.seed)
        lines = abn_table(rows)
    elif opts.section == "novelty":
        rows = run_novelty(opts.reps, looks, opts.seed)
        lines = novelty_table(rows, looks)
    else:
        rows = run_weekly(opts.reps, looks, opts.seed)
        lines = weekly_table(rows, looks)
    elapsed = time.perf_counter() - started
    users = f"{NEW_USERS} new users a look"
    if opts.section == "abn":
        users += " (34/33/33)"
    elif opts.section == "weekly":
        users += f" ({arrivals(1, np.array([WEEKEND_USERS]))[0]} on weekends)"
    lines.append(f"{opts.reps} experiments per cell, {looks} looks, {users}: {elapsed:.0f} s")
    text = "\n".join(lines)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(text + "\n")
    out.write_text(json.dumps({
        "command": "python -m bench.ab_users " + " ".join(argv if argv is not None else sys.argv[1:]),
        "section": opts.section, "seed": opts.seed, "world": world(opts.section, looks),
        "alpha": ALPHA, "reps": opts.reps, "looks": looks, "elapsedSeconds": elapsed, "rows": rows,
    }, indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
