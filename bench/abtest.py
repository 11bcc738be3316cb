"""A/B experiment benchmark: coverage, false winners, power and time to decision of the confidence sequences.

    python -m bench.abtest                    # full run (about a minute on 2 cores)
    python -m bench.abtest --reps 1000        # a quick look

Generator (per look = one 60 s interval): impressions per variant ~ Poisson(N * share), clicks ~
Binomial(impressions, p). The control's click-through p_c is 5%, 10% or 30%; the variant's is
p_c * (1 + lift). Cells: traffic N = 400 or 2,000 impressions per look (both arms), 50/50 split, 120 looks
(2 hours), alpha 0.05. Both CS methods of `analysis.abtest` run vectorised through its own functions
(`comparison_increment`, `difference_cs`); a start-up check compares them with `ab_update` itself.

Measured per cell: coverage (share of experiments whose CS held the true difference at every one of the
120 looks), false winners in A/A (either direction), detection (CS excludes 0 in the right direction by
the last look, after `minSamples` = 1,000 per arm), the median minute of that decision, and for contrast
the false-positive rate of a fixed-horizon two-sided z-test repeated at every look ("peeking").
Also A/B/n cells (3 variants, shared control, alpha split; all equal, and lifts +20% / -20%: family-wise
false calls and simultaneous coverage), and the cost of one `ab_update`.

Prints a table and writes bench/results/abtest.json and bench/results/abtest.txt.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from analysis.abtest import (
    ExperimentConfig,
    PrimaryCounts,
    ab_initial_state,
    ab_update,
    comparison_increment,
    difference_cs,
    rho_squared,
)

LOOKS = 120
ALPHA = 0.05
MIN_SAMPLES = 1000
TUNING = 10_000.0
BASE_RATES = (0.05, 0.10, 0.30)
TRAFFIC = (400, 2000)
LIFTS = (0.0, 0.05, 0.10, 0.20)
RESULTS = Path(__file__).resolve().parent / "results"


def simulate(rng: np.random.Generator, reps: int, traffic: int, p_c: float, lift: float) -> dict[str, np.ndarray]:
    """Cumulative sufficient statistics (reps x LOOKS) of one cell."""
    n_v = rng.poisson(traffic / 2, size=(reps, LOOKS))
    n_c = rng.poisson(traffic / 2, size=(reps, LOOKS))
    k_v = rng.binomial(n_v, min(p_c * (1 + lift), 1.0))
    k_c = rng.binomial(n_c, p_c)
    w, sv, sc, a, b = (np.cumsum(x, axis=1) for x in comparison_increment(n_v, k_v, n_c, k_c))
    return {"w": w, "sv": sv, "sc": sc, "a": a, "b": b, "kv": np.cumsum(k_v, 1), "nv": np.cumsum(n_v, 1),
            "kc": np.cumsum(k_c, 1), "nc": np.cumsum(n_c, 1)}


def laplace_var(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    p = (k + 1.0) / (n + 2.0)
    return p * (1 - p)


def cs_of(s: dict[str, np.ndarray], method: str, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    rho2 = rho_squared(TUNING, alpha)
    sums = (s["w"], s["sv"], s["sc"], s["a"], s["b"])
    if method == "hoeffding":
        _, lo, hi = difference_cs(*sums, 0.25, 0.25, alpha, rho2, scale2=0.25)
    else:
        _, lo, hi = difference_cs(*sums, laplace_var(s["kv"], s["nv"]), laplace_var(s["kc"], s["nc"]), alpha, rho2)
    return lo, hi


def peeking_z(s: dict[str, np.ndarray], alpha: float) -> np.ndarray:
    """A fixed-horizon two-sided z-test for the difference of proportions, repeated at every look."""
    pv, pc = s["kv"] / np.maximum(s["nv"], 1), s["kc"] / np.maximum(s["nc"], 1)
    pooled = (s["kv"] + s["kc"]) / np.maximum(s["nv"] + s["nc"], 1)
    se = np.sqrt(pooled * (1 - pooled) * (1 / np.maximum(s["nv"], 1) + 1 / np.maximum(s["nc"], 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (pv - pc) / se, 0.0)
    return np.abs(z) >= stats.norm.ppf(1 - alpha / 2)  # type: ignore[no-any-return]


def cell(rng: np.random.Generator, reps: int, traffic: int, p_c: float, lift: float) -> dict[str, Any]:
    s = simulate(rng, reps, traffic, p_c, lift)
    truth = p_c * lift
    enough = (s["nv"] >= MIN_SAMPLES) & (s["nc"] >= MIN_SAMPLES)
    out: dict[str, Any] = {"traffic": traffic, "baseRate": p_c, "lift": lift, "reps": reps}
    for method in ("asymptotic", "hoeffding"):
        lo, hi = cs_of(s, method, ALPHA)
        covered = ((lo <= truth) & (truth <= hi)).all(axis=1)
        win = (lo > 0) & enough
        any_call = (win | ((hi < 0) & enough)).any(axis=1)
        detected = win.any(axis=1)
        minutes = np.argmax(win, axis=1)[detected] + 1
        out[method] = {
            "coverage": float(covered.mean()),
            "decided": float(any_call.mean()),  # A/A: a false call in either direction
            "winner": float(detected.mean()),
            "medianMinute": float(np.median(minutes)) if minutes.size else None,
            "finalWidth": float(np.median(hi[:, -1] - lo[:, -1])),
        }
    out["peekingZ"] = float((peeking_z(s, ALPHA) & enough).any(axis=1).mean())
    return out


def abn_cell(rng: np.random.Generator, reps: int, traffic: int, p_c: float,
             lifts: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
    """Three variants (control + 2 treatments sharing it), alpha/2 each (Bonferroni): family-wise false
    calls (a CS excluding 0 for a treatment without lift, either direction) and simultaneous coverage
    (both CSs hold their true difference at every look)."""
    n_c = rng.poisson(traffic / 3, size=(reps, LOOKS))
    k_c = rng.binomial(n_c, p_c)
    wrong = np.zeros(reps, dtype=bool)
    covered = np.ones(reps, dtype=bool)
    for lift in lifts:
        n_v = rng.poisson(traffic / 3, size=(reps, LOOKS))
        k_v = rng.binomial(n_v, p_c * (1 + lift))
        w, sv, sc, a, b = (np.cumsum(x, axis=1) for x in comparison_increment(n_v, k_v, n_c, k_c))
        s = {"w": w, "sv": sv, "sc": sc, "a": a, "b": b, "kv": np.cumsum(k_v, 1), "nv": np.cumsum(n_v, 1),
             "kc": np.cumsum(k_c, 1), "nc": np.cumsum(n_c, 1)}
        lo, hi = cs_of(s, "asymptotic", ALPHA / 2)
        truth = p_c * lift
        if lift == 0:
            wrong |= ((lo > 0) | (hi < 0)).any(axis=1)
        covered &= ((lo <= truth) & (truth <= hi)).all(axis=1)
    return {"traffic": traffic, "baseRate": p_c, "variants": 3, "reps": reps, "lifts": list(lifts),
            "familyWiseFalseCalls": float(wrong.mean()), "simultaneousCoverage": float(covered.mean())}


def check_against_api(rng: np.random.Generator) -> float:
    """The vectorised path equals `ab_update` on one experiment; returns ms per `ab_update` call."""
    config = ExperimentConfig.from_dict({
        "variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
        "primaryMetric": {"kind": "proportion", "name": "ctr"}, "minSamples": 10**9, "maxDurationSeconds": 10**9,
        "sampleRatioOn": "off",  # impressions only: these draws have no users
    })
    state = ab_initial_state(config)
    s = simulate(rng, 1, 1000, 0.1, 0.1)
    prev = {k: 0 for k in ("kv", "nv", "kc", "nc")}
    lo, hi = cs_of(s, "asymptotic", ALPHA)
    started = time.perf_counter()
    for t in range(LOOKS):
        d = {k: int(s[k][0, t]) - prev[k] for k in prev}
        prev = {k: int(s[k][0, t]) for k in prev}
        counts = {"v1": PrimaryCounts.proportion(d["kc"], d["nc"]), "v2": PrimaryCounts.proportion(d["kv"], d["nv"])}
        state, result = ab_update(state, counts, 60.0 * (t + 1))
        got = result.comparison("v2").difference_cs
        assert math.isclose(got[0], lo[0, t], rel_tol=1e-9, abs_tol=1e-12), (t, got, lo[0, t])
        assert math.isclose(got[1], hi[0, t], rel_tol=1e-9, abs_tol=1e-12), (t, got, hi[0, t])
    return (time.perf_counter() - started) / LOOKS * 1000


def table(cells: list[dict[str, Any]], abn: list[dict[str, Any]], ms: float, reps: int, seconds: float) -> str:
    lines = [
        f"A/B benchmark: {reps} experiments per cell, {LOOKS} looks (1 per minute), alpha {ALPHA}, "
        f"minSamples {MIN_SAMPLES}/arm, tuningSamples {TUNING:.0f}",
        "",
        "traffic/look | CTR  | lift | method     | coverage | any call | winner | median min | final width | peeking z",
        "-------------+------+------+------------+----------+----------+--------+------------+-------------+----------",
    ]
    for c in cells:
        for method in ("asymptotic", "hoeffding"):
            m = c[method]
            minute = "-" if m["medianMinute"] is None else f"{m['medianMinute']:.0f}"
            peek = f"{c['peekingZ']:.3f}" if method == "asymptotic" and c["lift"] == 0 else ""
            lines.append(
                f"{c['traffic']:>12} | {c['baseRate']:.2f} | {c['lift']:>4.2f} | {method:<10} | "
                f"{m['coverage']:>8.4f} | {m['decided']:>8.4f} | {m['winner']:>6.3f} | {minute:>10} | "
                f"{m['finalWidth']:>11.5f} | {peek}"
            )
    lines += ["", "A/B/n (control + 2 variants, alpha/2 per comparison): family-wise false calls on variants "
                  "without lift, simultaneous coverage of both CSs at every look"]
    lines += [f"  traffic {a['traffic']}/look, CTR {a['baseRate']:.2f}, lifts {a['lifts']}: false calls "
              f"{a['familyWiseFalseCalls']:.4f}, coverage {a['simultaneousCoverage']:.4f}" for a in abn]
    lines += ["", f"ab_update: {ms:.3f} ms per call (one comparison); total run {seconds:.1f} s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    ms = check_against_api(rng)
    cells = [cell(rng, args.reps, n, p, lift) for n in TRAFFIC for p in BASE_RATES for lift in LIFTS]
    abn = [abn_cell(rng, args.reps, n, 0.10, lifts) for n in TRAFFIC for lifts in ((0.0, 0.0), (0.2, -0.2))]
    seconds = time.perf_counter() - started
    text = table(cells, abn, ms, args.reps, seconds)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "abtest.txt").write_text(text + "\n")
    payload = {"reps": args.reps, "looks": LOOKS, "alpha": ALPHA, "seed": args.seed, "cells": cells, "abn": abn,
               "abUpdateMs": ms, "seconds": seconds}
    (args.out / "abtest.json").write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
