"""Repeated local demo releases: time to decision and to full rollback, canary requests exposed, and how
often a healthy release is wrongly rolled back. Prints a table and saves JSON.

    python -m bench.demo [--healthy 10] [--broken 3] [--rps 50] [--interval 10] [--out bench/results/demo.json]
                         [--scenarios errors,slow,tail,healthy]

The mesh is Envoy. `bench/results/demo_data_planes.json` holds the last side-by-side with the asyncio proxy the
project used before (5 `errors` releases on each, alternated run by run, measured before the proxy was removed).

Each run is a real release (real processes, real Prometheus when installed), so this takes minutes.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any

from demo.canary import run_demo


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _fmt(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:.1f}{unit}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--healthy", type=int, default=10, help="healthy runs (false-rollback check)")
    p.add_argument("--broken", type=int, default=3, help="runs of each broken scenario")
    p.add_argument("--rps", type=float, default=40.0)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--metrics", default="auto", choices=["auto", "prometheus", "direct"])
    p.add_argument("--scenarios", default="errors,slow,tail,healthy",
                   help="comma-separated scenarios, in this order")
    p.add_argument("--out", type=Path, default=Path("bench/results/demo.json"))
    args = p.parse_args(argv)

    plan = [(s, args.healthy if s == "healthy" else args.broken) for s in args.scenarios.split(",") if s]
    runs: list[dict[str, Any]] = []
    for scenario, n in plan:
        for i in range(n):
            started = time.monotonic()
            result = run_demo(scenario, rps=args.rps, interval=args.interval, metrics=args.metrics,
                              out=io.StringIO())
            result["wall_seconds"] = time.monotonic() - started
            if result["interrupted"]:
                print("interrupted; no summary saved")
                return 130
            runs.append(result)
            print(f"{scenario:<8} run {i + 1}/{n}: {result['outcome']:<12} decision "
                  f"{_fmt(result['decision_seconds'], 's')} 0% canary {_fmt(result['rollback_seconds'], 's')} "
                  f"canary requests {result['canary_requests']} mixed {result['mixed_version_responses']} "
                  f"({result['metrics_source']})", flush=True)

    rows = []
    for scenario, _ in plan:
        rs = [r for r in runs if r["scenario"] == scenario]
        if not rs:
            continue
        expected = "promoted" if scenario == "healthy" else "rolled_back"
        rows.append({
            "scenario": scenario,
            "data_plane": rs[0]["data_plane"],
            "runs": len(rs),
            "expected_outcome": expected,
            "as_expected": sum(r["outcome"] == expected for r in rs),
            "median_decision_seconds": _median([r["decision_seconds"] for r in rs if r["decision_seconds"]]),
            "median_rollback_seconds": _median([r["rollback_seconds"] for r in rs if r["rollback_seconds"]]),
            "median_rollback_complete_seconds": _median([r["rollback_complete_seconds"] for r in rs
                                                         if r["rollback_complete_seconds"]]),
            "median_canary_requests": _median([r["canary_requests"] for r in rs]),
            "mixed_version_responses": sum(r["mixed_version_responses"] for r in rs),
            "median_wall_seconds": _median([r["wall_seconds"] for r in rs]),
        })
    print()
    print(f"rps {args.rps:g}, interval {args.interval:g}s, metrics {runs[0]['metrics_source'] if runs else '-'}")
    print("medians; decision/0% canary/removed: seconds from the canary's first traffic")
    print(f"{'scenario':<9}{'router':<7}{'runs':>5}{'as expected':>13}{'decision':>10}{'0% canary':>11}{'removed':>9}"
          f"{'canary req':>12}{'mixed':>7}{'wall s':>8}")
    for r in rows:
        print(f"{r['scenario']:<9}{r['data_plane']:<7}{r['runs']:>5}{r['as_expected']:>13}{_fmt(r['median_decision_seconds']):>10}"
              f"{_fmt(r['median_rollback_seconds']):>11}{_fmt(r['median_rollback_complete_seconds']):>9}"
              f"{_fmt(r['median_canary_requests']):>12}{r['mixed_version_responses']:>7}"
              f"{_fmt(r['median_wall_seconds']):>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "summary": rows,
                                    "runs": runs}, indent=1, default=str))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
