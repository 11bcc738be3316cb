"""Benchmark: the CPU time each search-stack service spends per search, with `sniffio` importable and hidden.

Why: httpcore (under httpx, the services' client for their downstream calls and the load generator's) imports
`sniffio` inside a function it calls for every lock and event of every request. anyio >= 4.11 no longer brings
`sniffio` along, and Python does not remember a failed import: without it, every call walks `sys.path` again
(encode/httpcore#1103). The project depends on `sniffio` for that reason; this measures what it saves.

Each round starts the five services directly (no mesh: only the services' own CPU is measured), once as
installed and once with `sniffio` hidden (a `sitecustomize` that makes its import walk `sys.path` for a name that
is not there and fail, as it does when the package is absent), in alternating order. `hey` sends `--warmup`
searches, then `--searches` at `--rate` a second; the CPU time (user + system, from /proc) each service used for
those is divided by the searches answered. The report gives the median per service over the rounds, the total,
and the total with sniffio hidden against installed.

    python bench/stack_cpu.py [--searches 600] [--rate 30] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from bench.router import hey  # noqa: E402
from controller.adapters.local.processes import Proc, ProcessGroup, free_port, search_service_env  # noqa: E402
from searchstack.settings import DOWNSTREAM_ENV_PREFIX  # noqa: E402

ROLES = ("ml-infer", "ml-search", "keyword", "text-search", "master-search")
QUERY = {"text": "graph neural networks for protein folding", "n_results": 10, "random_seed": 7}
CONFIGS = ("installed", "hidden")
CONNECTIONS = 4  # hey's connections to master-search

HIDE_SNIFFIO = '''\
import importlib.machinery
import sys


class _AbsentSniffio:
    """`import sniffio` as when the package is not installed: the path is walked for it in vain, then it fails."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "sniffio":
            return None
        importlib.machinery.PathFinder.find_spec("sniffio_not_installed", path)
        raise ModuleNotFoundError("No module named 'sniffio'", name="sniffio")


sys.modules.pop("sniffio", None)
sys.meta_path.insert(0, _AbsentSniffio)
'''


def start_stack(group: ProcessGroup, env: dict[str, str]) -> tuple[dict[str, Proc], str]:
    """The five services, each calling the others directly (every callee's URL named, so no mesh URL is used);
    returns their processes and master-search's URL."""
    ports = {role: free_port() for role in ROLES}
    direct = {callee: f"http://127.0.0.1:{ports[callee]}" for callee in DOWNSTREAM_ENV_PREFIX}
    procs = {}
    for role in ROLES:
        procs[role] = group.start(
            role, [sys.executable, "-m", "searchstack", "--role", role, "--port", str(ports[role])],
            {**search_service_env(role, "v1", "", upstream_urls=direct), **env},
            f"http://127.0.0.1:{ports[role]}/healthz", cwd=REPO)
    group.wait_all_healthy(timeout=60)
    return procs, f"http://127.0.0.1:{ports['master-search']}/master-service/search"


def cpu(procs: dict[str, Proc]) -> dict[str, float]:
    """CPU seconds each service has used so far."""
    used = {}
    for role, proc in procs.items():
        seconds = proc.cpu_seconds()
        if seconds is None:
            raise SystemExit(f"{role}: its CPU time cannot be read (it has stopped)")
        used[role] = seconds
    return used


def one_round(config: str, args: argparse.Namespace, scratch: Path, body: Path) -> dict[str, float]:
    """CPU milliseconds per answered search, per service, for one stack of `config`."""
    env = {"PYTHONUNBUFFERED": "1"}
    if config == "hidden":
        site = scratch / "hide-sniffio"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(HIDE_SNIFFIO)
        env["PYTHONPATH"] = str(site)
    with ProcessGroup(scratch / f"logs-{config}") as group:
        procs, url = start_stack(group, env)
        hey(url, args.warmup, CONNECTIONS, body=body, rate=args.rate)
        before = cpu(procs)
        answered = int(hey(url, args.searches, CONNECTIONS, body=body, rate=args.rate)["ok"])
        after = cpu(procs)
    if answered < args.searches:
        raise SystemExit(f"{config}: only {answered} of {args.searches} searches answered 200")
    return {role: (after[role] - before[role]) * 1000 / answered for role in ROLES}


def summarise(rounds: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    medians = {config: {role: round(statistics.median(r[role] for r in runs), 2) for role in ROLES}
               for config, runs in rounds.items()}
    totals = {config: round(statistics.median(sum(r.values()) for r in runs), 2) for config, runs in rounds.items()}
    return {"cpu_ms_per_search": medians, "total_cpu_ms_per_search": totals,
            "hidden_over_installed": round(totals["hidden"] / totals["installed"], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--searches", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if min(args.warmup, args.searches) < 100:
        parser.error("--warmup and --searches must be at least 100 (hey gives no 99th percentile below)")
    if shutil.which("hey") is None:
        raise SystemExit("hey is not installed (scripts/setup installs it)")
    rounds: dict[str, list[dict[str, float]]] = {config: [] for config in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="stack-cpu-") as tmp:
        body = Path(tmp) / "query.json"
        body.write_text(json.dumps(QUERY))
        for i in range(args.rounds):
            for config in CONFIGS if i % 2 == 0 else CONFIGS[::-1]:
                rounds[config].append(one_round(config, args, Path(tmp), body))
                print(f"round {i + 1} {config}: " + ", ".join(f"{r} {v:.2f}" for r, v in rounds[config][-1].items())
                      + " ms CPU per search", flush=True)
    result = {"args": vars(args) | {"out": str(args.out)}, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              **summarise(rounds), "rounds": rounds}
    print(json.dumps({k: result[k] for k in ("cpu_ms_per_search", "total_cpu_ms_per_search",
                                             "hidden_over_installed")}, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
