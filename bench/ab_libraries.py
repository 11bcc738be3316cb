"""Libraries first: GrowthBook's gbstats next to analysis.users, on the same simulated users.

    pip install -e '.[bench]'                          # gbstats (0.8.0 pins numpy<2 and pandas<2: see below)
    python -m bench.ab_libraries                       # the table (about three minutes on 2 cores)
    python -m bench.ab_libraries --reps 200 --looks 20 # a quick look

Data: bench/ab_users.py's two-variant world and seeds (`ab_users.simulate`, cell seed + 100 i + j), so the
`ours` rows are bench/results/ab_users.json's `users` rows. At every look both methods get the same
cumulative per-user sums of each variant: users U, and over users sum Y_u, N_u, Y_u^2, N_u^2, Y_u N_u
(Y_u clicks, N_u impressions of user u).

Methods, alpha 0.05, on the absolute difference of click-through (variant - control), from the first look
with MIN_USERS users per variant:
- `ours`: `analysis.users.user_difference_cs`, tuned at W* = TUNING_USERS, W = U_v U_c / (U_v + U_c).
- `gbstats`: per variant a `gbstats.models.statistics.RatioStatistic` (n = users; numerator and denominator
  are `SampleMeanStatistic`s of the per-user sums and sums of squares; m_d_sum_of_products = sum Y_u N_u),
  compared by `gbstats.frequentist.tests.SequentialTwoSidedTTest` (difference_type "absolute"; GrowthBook's
  default is "relative"). Its variance is the delta method on per-user totals, as ours, and its interval is
  the same normal-mixture confidence sequence (Waudby-Smith et al., eq. 9) on the time N = U_v + U_c; its
  `sequential_tuning_parameter` N* counts users of both variants, so N* = 4 W* (`matched_tuning`) is the
  same boundary as ours for a 50/50 split. Run at N* = 4 W* and at gbstats' default 5000. The differences
  left: ours never lets a proportion's variance fall below the binomial one at the Laplace rate, and uses
  W, not N / 4, when the split is uneven.

Reported per ICC and lift (0, +10%, +20%): A/A, the share of experiments whose interval excluded 0 at some
look (coverage at every look is one minus it); with a lift, the share that found it, the median look, and
the share whose interval missed the true difference at some look. Agreement of the bounds with ours, and
the time per 1000 analyses: ours vectorised over all experiments and looks at once, ours one call per
analysis, gbstats' classes one analysis at a time, and gbstats' whole pipeline (`process_single_metric`:
pandas) on a sample. Writes bench/results/ab_libraries.json and .txt.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import math
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt

from analysis.abtest import rho_squared
from analysis.histogram import FloatArray
from analysis.users import UserTotals, user_difference_cs
from bench import ab_users
from bench.ab_users import BASE_CTR, LIFTS, MIN_USERS, TUNING_USERS
from bench.abtest import ALPHA

INSTALL_HINT = ("bench/ab_libraries.py needs GrowthBook's gbstats: pip install -e '.[bench]' (gbstats 0.8.0 "
                "requires numpy<2 and pandas<2, so this downgrades numpy: best in a virtualenv of its own)")
DEFAULT_TUNING = 5000.0  # gbstats' default sequential_tuning_parameter
SCALAR_SAMPLE = 2000  # analyses timed one call at a time (ours)
PIPELINE_SAMPLE = 100  # analyses run through gbstats' whole pipeline
# GrowthBook's per-variation columns of a ratio metric (its SQL's output), from our per-user sums.
GB_COLUMNS = {"users": "users", "count": "users", "main_sum": "y", "main_sum_squares": "yy",
              "denominator_sum": "n", "denominator_sum_squares": "nn", "main_denominator_sum_product": "yn"}


class MissingLibrary(RuntimeError):
    pass


def load_gbstats() -> SimpleNamespace:
    """gbstats' classes used here, or MissingLibrary naming the install command."""
    started = time.perf_counter()
    try:
        statistics = importlib.import_module("gbstats.models.statistics")
        tests = importlib.import_module("gbstats.frequentist.tests")
        settings = importlib.import_module("gbstats.models.settings")
        pipeline = importlib.import_module("gbstats.gbstats")
    except ImportError as e:
        raise MissingLibrary(f"{INSTALL_HINT}; the import failed: {e}") from e
    return SimpleNamespace(
        RatioStatistic=statistics.RatioStatistic, SampleMeanStatistic=statistics.SampleMeanStatistic,
        SequentialTwoSidedTTest=tests.SequentialTwoSidedTTest, SequentialConfig=tests.SequentialConfig,
        MetricSettings=settings.MetricSettingsForStatsEngine, AnalysisSettings=settings.AnalysisSettingsForStatsEngine,
        process_single_metric=pipeline.process_single_metric, import_seconds=time.perf_counter() - started)


def matched_tuning(tuning_users: float) -> float:
    """gbstats' tuning parameter (users of both variants) that gives our boundary tuned at W* for a 50/50 split:
    both are the normal-mixture boundary in rho^2 t with rho^2 = (2 ln(1/alpha) + ln(1 + 2 ln(1/alpha))) / t*,
    on t = W = U / 4 (ours) and t = N = U (gbstats)."""
    return 4.0 * tuning_users


def growthbook_columns(s: dict[str, FloatArray], side: str) -> dict[str, FloatArray]:
    """One variant's per-user sums (side 'v' or 'c' of `ab_users.simulate`) under GrowthBook's column names
    for a ratio metric (count = users: the statistic's n is the number of units)."""
    return {col: s[f"{ours}_{side}"] for col, ours in GB_COLUMNS.items()}


def _ratio_statistic(gb: SimpleNamespace, row: dict[str, float]) -> Any:
    users = int(row["users"])
    return gb.RatioStatistic(
        n=users,
        m_statistic=gb.SampleMeanStatistic(n=users, sum=row["main_sum"], sum_squares=row["main_sum_squares"]),
        d_statistic=gb.SampleMeanStatistic(n=users, sum=row["denominator_sum"],
                                           sum_squares=row["denominator_sum_squares"]),
        m_d_sum_of_products=row["main_denominator_sum_product"])


def gbstats_cs(gb: SimpleNamespace, s: dict[str, FloatArray], tuning: float, alpha: float = ALPHA
               ) -> tuple[FloatArray, FloatArray, float, int, npt.NDArray[np.bool_]]:
    """gbstats' sequential interval at every look of every experiment: (lo, hi, seconds, analyses, error),
    error marking the looks whose result came with an error message (gbstats gives no interval while the
    control's ratio is 0 or a variance is 0, e.g. a variant without clicks yet): there (-inf, inf). Looks
    where a variant has fewer than 2 users are not analysed."""
    cols = {side: {k: v.tolist() for k, v in growthbook_columns(s, side).items()} for side in ("v", "c")}
    reps, looks = s["users_v"].shape
    lo, hi = np.full((reps, looks), -np.inf), np.full((reps, looks), np.inf)
    config = gb.SequentialConfig(difference_type="absolute", alpha=alpha, sequential_tuning_parameter=tuning)
    analyses = 0
    error = np.zeros((reps, looks), dtype=bool)
    started = time.perf_counter()
    for r in range(reps):
        for t in range(looks):
            row_v = {k: v[r][t] for k, v in cols["v"].items()}
            row_c = {k: v[r][t] for k, v in cols["c"].items()}
            if row_v["users"] < 2 or row_c["users"] < 2:
                continue
            analyses += 1
            res = gb.SequentialTwoSidedTTest(_ratio_statistic(gb, row_c), _ratio_statistic(gb, row_v),
                                             config).compute_result()
            if res.error_message:
                error[r, t] = True
                continue
            lo[r, t], hi[r, t] = res.ci
    return lo, hi, time.perf_counter() - started, analyses, error


def pipeline_check(gb: SimpleNamespace, s: dict[str, FloatArray], tuning: float, lo: FloatArray, hi: FloatArray,
                   count: int = PIPELINE_SAMPLE) -> dict[str, Any]:
    """gbstats' whole pipeline (rows as GrowthBook's SQL returns them, pandas) on the first `count` analysable
    looks: ms per analysis, and the largest difference from the classes' interval."""
    metric = gb.MetricSettings(id="ctr", name="ctr", statistic_type="ratio", main_metric_type="count",
                               denominator_metric_type="count")
    analysis = gb.AnalysisSettings(var_names=["control", "variant"], var_ids=["c", "v"], weights=[0.5, 0.5],
                                   stats_engine="frequentist", sequential_testing_enabled=True,
                                   sequential_tuning_parameter=tuning, difference_type="absolute", alpha=ALPHA)
    cells = [(int(r), int(t)) for r, t in zip(*np.nonzero(np.isfinite(lo)), strict=True)][:count]
    cols = {side: growthbook_columns(s, side) for side in ("v", "c")}
    worst = 0.0
    started = time.perf_counter()
    for r, t in cells:
        rows = [{"dimension": "All", "variation": side, **{k: float(v[r, t]) for k, v in cols[side].items()}}
                for side in ("c", "v")]
        out = gb.process_single_metric(rows=rows, metric=metric, analyses=[analysis])
        ci = out.analyses[0].dimensions[0].variations[1].ci
        worst = max(worst, abs(ci[0] - lo[r, t]), abs(ci[1] - hi[r, t]))
    seconds = time.perf_counter() - started
    return {"analyses": len(cells), "msPerAnalysis": 1000.0 * seconds / max(len(cells), 1),
            "maxDifferenceFromClasses": worst}


def ours_scalar_seconds(s: dict[str, FloatArray], count: int = SCALAR_SAMPLE) -> tuple[float, int]:
    """Seconds for `count` analyses one `user_difference_cs` call each (scalar sums, as the controller calls it)."""
    cells = [(int(r), int(t)) for r, t in zip(*np.nonzero((s["users_v"] >= 2) & (s["users_c"] >= 2)), strict=True)]
    cells = cells[:count]
    rho2 = rho_squared(TUNING_USERS, ALPHA)
    sums = {k: v.tolist() for k, v in s.items()}
    keys = ("users", "y", "n", "yy", "nn", "yn")
    started = time.perf_counter()
    for r, t in cells:
        v = UserTotals(*(sums[f"{k}_v"][r][t] for k in keys))
        c = UserTotals(*(sums[f"{k}_c"][r][t] for k in keys))
        user_difference_cs(v, c, ALPHA, rho2)
    return time.perf_counter() - started, len(cells)


def agreement(s: dict[str, FloatArray], lo_a: FloatArray, hi_a: FloatArray, lo_b: FloatArray, hi_b: FloatArray
              ) -> dict[str, float]:
    """How far two methods' bounds are apart where both decide (from MIN_USERS on): the largest difference of a
    bound as a share of our interval's width, and the shares of looks and of experiments where one excluded 0
    and the other did not."""
    ready = (s["users_v"] >= MIN_USERS) & (s["users_c"] >= MIN_USERS) & np.isfinite(lo_b) & np.isfinite(lo_a)
    width = np.where(ready, hi_a - lo_a, 1.0)
    rel = np.where(ready, np.maximum(abs(lo_a - lo_b), abs(hi_a - hi_b)) / width, 0.0)
    ex_a = ready & ((lo_a > 0) | (hi_a < 0))
    ex_b = ready & ((lo_b > 0) | (hi_b < 0))
    return {"maxBoundDifferenceOfWidth": float(rel.max()),
            "looksDecidedDifferentlyPct": 100.0 * float((ex_a != ex_b)[ready].mean()) if ready.any() else 0.0,
            "experimentsDecidedDifferentlyPct": 100.0 * float((ex_a.any(axis=1) != ex_b.any(axis=1)).mean())}


def run(gb: SimpleNamespace, reps: int, looks: int, seed: int) -> dict[str, Any]:
    tunings = {"gbstats matched": matched_tuning(TUNING_USERS), "gbstats default": DEFAULT_TUNING}
    rows: list[dict[str, Any]] = []
    clock = {"ours vectorised": [0.0, 0], "ours one call each": [0.0, 0],
             **{f"{name} classes": [0.0, 0] for name in tunings}}
    pipeline: dict[str, Any] = {}
    errors = {"all": 0, "fromMinUsers": 0}
    for icc, lift, rng in ab_users.cells(seed, LIFTS):
        s = ab_users.simulate(rng, reps, looks, icc, lift)
        truth = BASE_CTR * lift
        started = time.perf_counter()
        lo, hi = ab_users.user_cs(s)
        clock["ours vectorised"][0] += time.perf_counter() - started
        clock["ours vectorised"][1] += int(((s["users_v"] >= 2) & (s["users_c"] >= 2)).sum())
        seconds, count = ours_scalar_seconds(s)
        clock["ours one call each"][0] += seconds
        clock["ours one call each"][1] += count
        rows.append({"icc": icc, "lift": lift, "method": "ours", **ab_users.judged(s, lo, hi, truth)})
        _, nf_lo, nf_hi = user_difference_cs(ab_users.user_totals(s, "v"), ab_users.user_totals(s, "c"), ALPHA,
                                             rho_squared(TUNING_USERS, ALPHA), proportion=False)
        rows.append({"icc": icc, "lift": lift, "method": "ours no floor", **ab_users.judged(s, nf_lo, nf_hi, truth),
                     "vsOurs": agreement(s, lo, hi, nf_lo, nf_hi)})
        for name, tuning in tunings.items():
            g_lo, g_hi, seconds, count, error = gbstats_cs(gb, s, tuning)
            clock[f"{name} classes"][0] += seconds
            clock[f"{name} classes"][1] += count
            errors["all"] += int(error.sum())
            errors["fromMinUsers"] += int((error & (s["users_v"] >= MIN_USERS) & (s["users_c"] >= MIN_USERS)).sum())
            rows.append({"icc": icc, "lift": lift, "method": name, "tuning": tuning,
                         **ab_users.judged(s, g_lo, g_hi, truth), "vsOurs": agreement(s, lo, hi, g_lo, g_hi),
                         "vsOursNoFloor": agreement(s, nf_lo, nf_hi, g_lo, g_hi)})
            if not pipeline and name == "gbstats matched":
                pipeline = pipeline_check(gb, s, tuning, g_lo, g_hi)
    timing = {k: {"analyses": n, "secondsPer1000": 1000.0 * sec / max(n, 1)} for k, (sec, n) in clock.items()}
    timing["gbstats pipeline (pandas)"] = {"analyses": pipeline["analyses"],
                                           "secondsPer1000": pipeline["msPerAnalysis"]}
    return {"rows": rows, "timing": timing, "pipeline": pipeline, "gbstatsErrors": errors,
            "tunings": tunings}


def table(result: dict[str, Any], reps: int, looks: int) -> list[str]:
    rows = result["rows"]
    methods = ["ours", "ours no floor", *result["tunings"]]
    lines = [f"analysis.users vs gbstats on the same users: {reps} experiments per cell, {looks} looks, alpha {ALPHA},",
             "absolute difference of click-through ('ours no floor': without the Laplace binomial floor on the",
             "variance, proportion=False); tuning: ours W* = "
             f"{TUNING_USERS:.0f}, gbstats matched N* = {result['tunings']['gbstats matched']:.0f}, default "
             f"N* = {result['tunings']['gbstats default']:.0f}.",
             *ab_users.table(rows, methods, width=16)]
    lines += ["", "Agreement (largest over the cells): largest difference of a bound as a share of the reference's",
              "width; % of looks and % of experiments where one excluded 0 and the other did not"]
    for method in methods[1:]:
        for ref, key in (("ours", "vsOurs"), ("ours no floor", "vsOursNoFloor")):
            mine = [r[key] for r in rows if r["method"] == method and key in r]
            if mine:
                lines.append(f"  {method:16} vs {ref:14} {max(a['maxBoundDifferenceOfWidth'] for a in mine):8.2%}; "
                             f"looks {max(a['looksDecidedDifferentlyPct'] for a in mine):5.2f}%, experiments "
                             f"{max(a['experimentsDecidedDifferentlyPct'] for a in mine):4.1f}%")
    lines += ["", "Time per 1000 analyses (one analysis = one comparison at one look):"]
    lines += [f"  {k:28} {v['secondsPer1000'] * 1000:9.2f} ms  ({v['analyses']} analyses)"
              for k, v in result["timing"].items()]
    p = result["pipeline"]
    e = result["gbstatsErrors"]
    lines += [f"gbstats' pipeline gave its classes' interval within {p['maxDifferenceFromClasses']:.1e}. gbstats "
              f"results with an error message (no interval:", f"a variant without clicks yet): {e['all']}, of which "
              f"{e['fromMinUsers']} from {MIN_USERS} users per variant on"]
    return lines


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in ("gbstats", "numpy", "scipy", "pandas", "pydantic"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        requires = importlib.metadata.requires("gbstats") or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    return {"python": platform.python_version(), "versions": versions, "gbstatsRequires": requires}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--looks", type=int, default=30)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--out", default=str(ab_users.RESULTS / "ab_libraries.json"))
    opts = parser.parse_args(argv)
    try:
        gb = load_gbstats()
    except MissingLibrary as e:
        print(e, file=sys.stderr)
        return 2
    started = time.perf_counter()
    result = run(gb, opts.reps, opts.looks, opts.seed)
    elapsed = time.perf_counter() - started
    lines = table(result, opts.reps, opts.looks)
    env = environment()
    v = env["versions"]
    lines += [f"total {elapsed:.0f} s; importing gbstats (pandas, scipy, pydantic) took {gb.import_seconds:.1f} s",
              f"gbstats {v['gbstats']} on Python {env['python']}, numpy {v['numpy']}, pandas {v['pandas']}, scipy "
              f"{v['scipy']}, pydantic {v['pydantic']}; gbstats requires:", "  " + "; ".join(env["gbstatsRequires"])]
    text = "\n".join(lines)
    print(text)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(text + "\n")
    out.write_text(json.dumps({
        "command": "python -m bench.ab_libraries " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": opts.seed, "reps": opts.reps, "looks": opts.looks, "alpha": ALPHA,
        "difference": "absolute (variant - control click-through)",
        "world": ab_users.world("main", opts.looks), "gbstatsTuning": result["tunings"],
        "environment": env, "importSeconds": gb.import_seconds, "elapsedSeconds": elapsed,
        "timing": result["timing"], "pipeline": result["pipeline"], "gbstatsErrors": result["gbstatsErrors"],
        "rows": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                 for r in result["rows"]],
    }, indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
