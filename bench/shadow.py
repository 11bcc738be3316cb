"""Shadow judge benchmark: does `analysis.shadow` stop a release whose rankings changed, and only that one?

Generated pairs of answers, as a shadow phase would collect them (docs/shadow.md). A ranker world: each query has
CANDIDATES documents with relevance scores rounded to the query's tie step, so that some documents tie; an answer
is the top-10 ids with ties broken at random per answer (two answers of the same version can differ). The new
version is `identical` (the same scores, its own tie-breaking) or degraded: its scores moved by Gaussian noise
whose size is calibrated at start-up (seeded) so that the mean difference D = E[noise - overlap] is a target:

- `identical` (D = 0): must pass, and be failed in at most alpha of releases;
- `d0.1` (mean RBO about 0.9 beyond noise): should pass;
- `d0.21` (D = 0.21, just beyond the default margin of 0.2, minOverlap 0.8): must be passed in at most alpha
  (failing it is right, and slow: it is 0.01 from the margin);
- `d0.4` (mean RBO about 0.6): must be stopped.

Two worlds. `independent`: 5,000 queries drawn uniformly (a query is rarely seen twice), one tie step for all.
`real`: 500 queries with Zipf popularity (users repeat queries), a tie step per query (a quarter deterministic,
some with many ties), a traffic mix that drifts over 20 minutes between the queries with many ties and the
others, and a degraded version whose damage falls on two queries in three (the rest answer as stable does),
calibrated to the same mean D. Per query, pools of POOL answers per version are drawn once and every pair picks
from them, so a pair costs a lookup.

Mirrored pairs arrive at 5, 20 and 50 a second; the judge looks every 10 s (`log_evalues` on the cumulative
sums, as `judge` decides: fewer than `minPairs` never decide, harm before safety) up to the horizon. Beside it,
on the same pairs, two rules people use: `fixed-200` (Diffy-like: after 200 pairs, fail if the mean difference
is above the margin, else pass) and `t-test peeked` (a one-sided t-test against the margin at every look: fail
at p < alpha on one side, pass on the other). Per cell: the share failed / passed / undecided at the horizon and
the median and 90th percentile of the seconds to the decision.

    python -m bench.shadow [--reps 100] [--minutes 20] [--worlds independent,real] [--seed 7] [--no-drift]

writes bench/results/shadow.json and bench/results/shadow.txt (the printed table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from analysis.shadow import RBO_P, ShadowConfig, log_evalues

OUT = Path(__file__).parent / "results" / "shadow.json"
K = 10
CANDIDATES = 60
POOL = 16
LOOK_S = 10
RATES = (5, 20, 50)
CHUNK = 40  # releases drawn at once (memory: CHUNK x pairs of a release)
VERSIONS = {"identical": 0.0, "d0.1": 0.1, "d0.21": 0.21, "d0.4": 0.4}
CONFIG = ShadowConfig()


def rbo_matrix(a: np.ndarray, b: np.ndarray, p: float = RBO_P) -> np.ndarray:
    """Extrapolated RBO of the rows of `a` and `b` (int arrays n x k of distinct ids per row), as
    `analysis.shadow.rbo` computes it for two lists of length k."""
    k = a.shape[1]
    eq = a[:, :, None] == b[:, None, :]                      # n x k x k
    overlap = np.cumsum(np.cumsum(eq, axis=1), axis=2)       # |a[:i+1] & b[:j+1]| at [i, j]
    x = overlap[:, np.arange(k), np.arange(k)].astype(float)  # X_d for d = 1..k
    d = np.arange(1, k + 1)
    total = np.sum(x / d * p**d, axis=1)
    return np.minimum(1.0, x[:, -1] / k * p**k + (1.0 - p) / p * total)


@dataclass(frozen=True)
class World:
    name: str
    weights: np.ndarray      # query popularity
    tie_step: np.ndarray     # per query
    hard: np.ndarray         # per query: many ties (the drifting part of the mix)
    damaged: np.ndarray      # per query: does a degraded version change it
    drift: float             # amplitude of the mix's drift between hard and easy queries


def make_world(name: str, rng: np.random.Generator, drift: float = 0.6) -> World:
    if name == "independent":
        n = 5000
        return World(name, np.full(n, 1.0 / n), np.full(n, 0.05), np.zeros(n, bool), np.ones(n, bool), 0.0)
    n = 500
    zipf = 1.0 / np.arange(1, n + 1) ** 1.1
    steps = rng.choice([0.0, 0.02, 0.05, 0.1], size=n, p=[0.25, 0.25, 0.3, 0.2])
    return World(name, zipf / zipf.sum(), steps, steps >= 0.1, np.arange(n) % 3 != 2, drift)


def answers(scores: np.ndarray, step: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` answers per query (q x count x K ids): scores rounded to the query's step, ties at random."""
    rounded = np.where(step[:, None] > 0, np.round(scores / np.where(step > 0, step, 1.0)[:, None]), scores)
    keys = rng.random((scores.shape[0], count, scores.shape[1]))
    order = np.lexsort((keys, np.broadcast_to(-rounded[:, None, :], keys.shape)), axis=-1)
    return order[..., :K]


def pools(world: World, rng: np.random.Generator, sigma: float, queries: np.ndarray | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the POOL x POOL noise RBOs (stable i vs stable j) and overlap RBOs (stable i vs new j)."""
    idx = np.arange(len(world.weights)) if queries is None else queries
    base = np.random.default_rng(12345).random((len(world.weights), CANDIDATES))[idx]
    stable = answers(base, world.tie_step[idx], rng, POOL)
    moved = base + np.where(world.damaged[idx, None], sigma, 0.0) * rng.standard_normal(base.shape)
    new = answers(moved, world.tie_step[idx], rng, POOL)  # the same scores as stable's when sigma is 0
    q = len(idx)
    left = np.repeat(stable, POOL, axis=1).reshape(-1, K)
    noise = rbo_matrix(left, np.tile(stable, (1, POOL, 1)).reshape(-1, K)).reshape(q, POOL, POOL)
    overlap = rbo_matrix(left, np.tile(new, (1, POOL, 1)).reshape(-1, K)).reshape(q, POOL, POOL)
    return noise, overlap


def mean_difference(world: World, noise: np.ndarray, overlap: np.ndarray, queries: np.ndarray) -> float:
    off = ~np.eye(POOL, dtype=bool)
    per_query = noise[:, off].mean(axis=1) - overlap.mean(axis=(1, 2))
    w = world.weights[queries]
    return float(np.sum(per_query * w) / np.sum(w))


def calibrate(world: World, target: float, seed: int) -> float:
    """The score noise whose mean difference D is `target` (bisection; on every query of `real`, on 400 of the
    equally likely queries of `independent`)."""
    if target == 0:
        return 0.0
    queries = np.arange(len(world.weights)) if world.name == "real" else np.arange(400)
    lo, hi = 0.0, 2.0
    for _ in range(22):
        mid = (lo + hi) / 2
        d = mean_difference(world, *pools(world, np.random.default_rng(seed), mid, queries), queries)
        lo, hi = (mid, hi) if d < target else (lo, mid)
    return (lo + hi) / 2


def draw_pairs(world: World, noise: np.ndarray, overlap: np.ndarray, rng: np.random.Generator, reps: int,
               rate: int, minutes: int) -> np.ndarray:
    """x = noise - overlap of every pair: reps x (rate x 60 x minutes), in arrival order."""
    n = rate * 60 * minutes
    t = np.arange(n) / rate
    if world.drift > 0:  # the share of queries with many ties swings over 20 minutes
        tilt = 1.0 + world.drift * np.sin(2 * np.pi * t / 1200.0)
        weights = np.where(world.hard[None, :], world.weights * tilt[:: rate * 60][:, None], world.weights)
        weights /= weights.sum(axis=1, keepdims=True)
        minute = np.minimum((t // 60).astype(int), weights.shape[0] - 1)
        cdf = np.cumsum(weights, axis=1)
        u = rng.random((reps, n))
        q = np.empty((reps, n), dtype=int)
        for m in range(weights.shape[0]):
            cols = minute == m
            q[:, cols] = np.searchsorted(cdf[m], u[:, cols])
        q = np.minimum(q, len(world.weights) - 1)
    else:
        q = rng.choice(len(world.weights), size=(reps, n), p=world.weights)
    i = rng.integers(0, POOL, size=(reps, n))
    j = (i + rng.integers(1, POOL, size=(reps, n))) % POOL  # another stable answer
    l_ = rng.integers(0, POOL, size=(reps, n))
    return noise[q, i, j] - overlap[q, i, l_]


def decisions(x: np.ndarray, rate: int, margin: float, alpha: float) -> dict[str, np.ndarray]:
    """Per rep and rule: +1 pass, -1 fail, 0 undecided; and the second of the decision (nan if none)."""
    looks = np.arange(rate * LOOK_S, x.shape[1] + 1, rate * LOOK_S)
    cx, cxx = np.cumsum(x, axis=1)[:, looks - 1], np.cumsum(x * x, axis=1)[:, looks - 1]
    n = looks.astype(float)
    harm, safe = log_evalues(n[None, :], cx, cxx, margin)
    threshold = math.log(1 / alpha)
    ok = n[None, :] >= CONFIG.min_pairs
    judge = np.where(ok & (harm >= threshold), -1, np.where(ok & (safe >= threshold), 1, 0))
    mean = cx / n
    sd = np.sqrt(np.maximum(cxx / n - mean**2, 1e-12) * n / np.maximum(n - 1, 1))
    tstat = (mean - margin) / (sd / np.sqrt(n))
    p_up = stats.t.sf(tstat, df=np.maximum(n - 1, 1))
    ttest = np.where(ok & (p_up < alpha), -1, np.where(ok & (1 - p_up < alpha), 1, 0))
    out: dict[str, Any] = {}
    for name, grid in (("judge", judge), ("t-test peeked", ttest)):
        first = np.argmax(grid != 0, axis=1)
        decided = grid[np.arange(len(grid)), first] != 0
        out[name] = (np.where(decided, grid[np.arange(len(grid)), first], 0),
                     np.where(decided, looks[first] / rate, np.nan))
    at = min(200, x.shape[1])
    fixed = np.where(x[:, :at].mean(axis=1) > margin, -1, 1)
    out["fixed-200"] = (fixed, np.full(len(x), at / rate))
    return out


def summarise(outcome: np.ndarray, seconds: np.ndarray) -> dict[str, Any]:
    decided = seconds[~np.isnan(seconds)]
    return {"failedPct": 100.0 * float(np.mean(outcome == -1)), "passedPct": 100.0 * float(np.mean(outcome == 1)),
            "undecidedPct": 100.0 * float(np.mean(outcome == 0)),
            "medianSeconds": float(np.median(decided)) if decided.size else None,
            "p90Seconds": float(np.percentile(decided, 90)) if decided.size else None}


def run(worlds: list[str], reps: int, minutes: int, seed: int, drift: float = 0.6) -> list[dict[str, Any]]:
    rows = []
    for w_i, name in enumerate(worlds):
        world = make_world(name, np.random.default_rng(seed + w_i), drift)
        for v_i, (version, target) in enumerate(VERSIONS.items()):
            sigma = calibrate(world, target, seed + 100 + v_i)
            noise, overlap = pools(world, np.random.default_rng(seed + 100 + v_i), sigma)  # calibration's draws
            d = mean_difference(world, noise, overlap, np.arange(len(world.weights)))
            for rate in RATES:
                rng = np.random.default_rng(seed + 1000 * w_i + 10 * v_i + rate)
                chunks = [decisions(draw_pairs(world, noise, overlap, rng, min(CHUNK, reps - done), rate, minutes),
                                    rate, CONFIG.margin, CONFIG.alpha) for done in range(0, reps, CHUNK)]
                for rule in chunks[0]:
                    outcome = np.concatenate([c[rule][0] for c in chunks])
                    seconds = np.concatenate([c[rule][1] for c in chunks])
                    rows.append({"world": name, "version": version, "targetD": target, "D": d, "sigma": sigma,
                                 "rate": rate, "rule": rule, "reps": reps, **summarise(outcome, seconds)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'world':11} {'version':9} {'D':>6} {'rule':14} " + " ".join(
        f"{f'{r}/s fail/pass/undec, med/p90 s':>36}" for r in RATES)]
    keys = dict.fromkeys((r["world"], r["version"], r["rule"]) for r in rows)
    for world, version, rule in keys:
        cells = {r["rate"]: r for r in rows if (r["world"], r["version"], r["rule"]) == (world, version, rule)}
        d = next(iter(cells.values()))["D"]
        parts = []
        for rate in RATES:
            c = cells[rate]
            med = "-" if c["medianSeconds"] is None else f"{c['medianSeconds']:.0f}"
            p90 = "-" if c["p90Seconds"] is None else f"{c['p90Seconds']:.0f}"
            parts.append(f"{c['failedPct']:5.1f}/{c['passedPct']:5.1f}/{c['undecidedPct']:5.1f}, {med:>5}/{p90:>5}"
                         .rjust(36))
        lines.append(f"{world:11} {version:9} {d:6.3f} {rule:14} " + " ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--minutes", type=int, default=20)
    parser.add_argument("--worlds", default="independent,real")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-drift", action="store_true", help="`real` without the drift of its traffic mix")
    parser.add_argument("--out", type=Path, default=OUT)
    opts = parser.parse_args(argv)
    worlds = [w.strip() for w in opts.worlds.split(",") if w.strip()]
    if unknown := [w for w in worlds if w not in ("independent", "real")]:
        parser.error(f"unknown worlds {unknown}; known: independent, real")
    started = time.perf_counter()
    rows = run(worlds, opts.reps, opts.minutes, opts.seed, 0.0 if opts.no_drift else 0.6)
    seconds = time.perf_counter() - started
    command = "python -m bench.shadow " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join([f"$ {command.strip()}   # {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
                      f"{opts.reps} releases per cell, horizon {opts.minutes} min, looks every {LOOK_S} s, "
                      f"minOverlap {CONFIG.min_overlap} (margin {CONFIG.margin:.1f}), alpha {CONFIG.alpha}",
                      table(rows), f"{seconds:.0f} s on {os.cpu_count()} CPUs"])
    print(text)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps({"command": command.strip(), "date": time.strftime("%Y-%m-%d"),
                                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                "python": platform.python_version()},
                                    "seed": opts.seed, "seconds": seconds, "rows": rows}, indent=1) + "\n")
    opts.out.with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
