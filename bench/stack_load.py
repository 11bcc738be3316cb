"""Benchmark: what the search stack serves on this machine, and the CPU it takes, at rising search rates.

The five services start once, each calling the others directly (no mesh: the services' own cost), as
`bench/stack_cpu.py` starts them. The load generator the demos use (`demo.loadgen.run_load`, open loop: it sends on
schedule whether or not earlier searches were answered, Poisson gaps) sends `--seconds` of searches at each rate of
`--rates` in turn, after a warm-up; the rates are swept `--rounds` times. Per rate the report gives the medians over
the rounds of the rate achieved, the searches not sent (more than the generator's 256 in flight), the errors, the
latency percentiles, the cores the five services used (their CPU seconds over the wall seconds of the step) and the
load generator's own (it shares the machine).

    python bench/stack_load.py [--rates 50,100,150] [--seconds 8] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from bench.stack_cpu import cpu, start_stack  # noqa: E402
from controller.adapters.local.processes import Proc, ProcessGroup  # noqa: E402
from demo.loadgen import run_load  # noqa: E402

WARMUP_RATE = 30.0
WARMUP_SEARCHES = 100
FIELDS = ("achieved_per_s", "dropped", "errors", "p50_ms", "p90_ms", "p99_ms", "stack_cores", "loadgen_cores")


def step(url: str, procs: dict[str, Proc], rate: float, seconds: float) -> dict[str, float]:
    """One rate for `seconds`: what was served and the cores the services and the load generator used."""
    before, wall, own = cpu(procs), time.monotonic(), time.process_time()
    report = asyncio.run(run_load(url, rate, seconds, int(rate * seconds), poisson=True, timeout_s=10.0))
    after, wall, own = cpu(procs), time.monotonic() - wall, time.process_time() - own
    return {"achieved_per_s": round(report.achieved_rate, 1), "dropped": report.dropped,
            "errors": report.errors + sum(n for code, n in report.status_counts.items() if code != 200),
            "p50_ms": round(report.latency_p50_ms, 1), "p90_ms": round(report.latency_p90_ms, 1),
            "p99_ms": round(report.latency_p99_ms, 1),
            "stack_cores": (sum(after.values()) - sum(before.values())) / wall,
            "loadgen_cores": own / wall}


def sweep(rates: list[float], seconds: float, rounds: int, scratch: Path) -> dict[float, list[dict[str, float]]]:
    """Every rate in turn, `rounds` times, on one stack started once."""
    steps: dict[float, list[dict[str, float]]] = {rate: [] for rate in rates}
    with ProcessGroup(scratch / "logs") as group:
        procs, url = start_stack(group, {"PYTHONUNBUFFERED": "1"})
        asyncio.run(run_load(url, WARMUP_RATE, WARMUP_SEARCHES / WARMUP_RATE, WARMUP_SEARCHES))
        for i in range(rounds):
            for rate in rates:
                steps[rate].append(step(url, procs, rate, seconds))
                measured = ", ".join(f"{k} {v:.3g}" for k, v in steps[rate][-1].items())
                print(f"round {i + 1} rate {rate:g}/s: {measured}", flush=True)
    return steps


def summarise(steps: dict[float, list[dict[str, float]]]) -> list[dict[str, Any]]:
    return [{"rate": rate, **{k: round(statistics.median(s[k] for s in runs), 3) for k in FIELDS}}
            for rate, runs in steps.items()]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["rate/s | achieved/s | dropped | errors | p50 / p90 / p99 ms     | stack cores | load generator cores"]
    for r in rows:
        lines.append(f"{r['rate']:6g} | {r['achieved_per_s']:10.1f} | {r['dropped']:7g} | {r['errors']:6g} | "
                     f"{r['p50_ms']:6.1f} / {r['p90_ms']:6.1f} / {r['p99_ms']:6.1f} | {r['stack_cores']:11.2f} | "
                     f"{r['loadgen_cores']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="50,100,150", help="searches a second, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        parser.error(f"--rates: {args.rates!r} is not a comma-separated list of numbers")
    if min(rates) <= 0 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--rates and --seconds must be positive and --rounds at least 1")
    with tempfile.TemporaryDirectory(prefix="stack-load-") as tmp:
        rows = summarise(sweep(rates, args.seconds, args.rounds, Path(tmp)))
    print(table(rows))
    result = {"args": vars(args) | {"out": str(args.out)}, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "load_average": os.getloadavg(), "rates": rows}
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
