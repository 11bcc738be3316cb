"""Soak: the local mesh router and the search stack under twice the demo's load for five minutes.

The stack runs as in the middle of a release: v1 and v2 of all five services behind the router, the
rendered release routes at 25% canary (entry split plus lane routes on every hop). The project's load
generator sends the demo's search mix at twice the demo's rate (the demo's default is 40 searches/s, so
80/s; each search is five requests through the router: the entry and four internal hops), open loop.

What it checks and reports:

- **Errors introduced by the router.** Every response is accounted three ways at the end, after the load
  has drained: the client's answers (the load generator), the router's `istio_requests_total` by
  `response_code` and `response_flags`, and every service's own `searchstack_requests_total`. A router
  error is a request whose `response_flags` is not `-` (no endpoint, no route, connect failure, upstream
  reset, client gone); an upstream error is a 5xx the service itself answered (flags `-`, and counted by
  the service). Per workload, the router's count of answered requests must equal the service's count.
- **Memory.** The RSS of the router and of every service process, sampled every `--sample` seconds:
  first-minute and last-minute means, and the least-squares slope over the run after the first minute.
  "flat" means the last minute is within 10% + 2 MiB of the first.
- Latency per minute at the client (p50/p99) and the router's CPU use, to show the load was steady.

    python -m bench.soak [--rps 80] [--seconds 300] [--sample 5] [--out bench/results/soak.json]

Bounded: the load stops by itself after `--seconds` (at most rps * seconds requests); everything it
started is stopped at the end. Prints a table; saves JSON and the table (.txt beside it).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from controller.adapters.local.platform import LocalRouter
from controller.adapters.local.stack import LocalStack
from demo.harness import load_dict
from demo.loadgen import LoadRunner

DEMO_RPS = 40.0  # `canary demo --rps` default (controller/cli/main.py, demo.canary.run_demo)
TICKS = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


class LatencyByMinute:
    """The load generator's response callback: latencies and status codes per minute of the run."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.latencies: dict[int, list[float]] = collections.defaultdict(list)
        self.codes: dict[int, collections.Counter[int]] = collections.defaultdict(collections.Counter)

    def __call__(self, status: int, latency_ms: float, headers: Mapping[str, str]) -> None:
        minute = int((time.monotonic() - self.started) // 60)
        with self.lock:
            self.latencies[minute].append(latency_ms)
            self.codes[minute][status] += 1

    def table(self) -> list[dict[str, Any]]:
        rows = []
        with self.lock:
            for minute in sorted(self.latencies):
                xs = sorted(self.latencies[minute])
                rows.append({"minute": minute + 1, "responses": len(xs), "p50_ms": _rank(xs, 50),
                             "p99_ms": _rank(xs, 99), "non_200": sum(n for c, n in self.codes[minute].items()
                                                                       if c != 200)})
        return rows


def _rank(xs: list[float], q: float) -> float:
    return round(xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))], 2) if xs else math.nan


def router_counts(text: str) -> dict[tuple[str, str, str], int]:
    """istio_requests_total summed by (destination_workload, response_code, response_flags)."""
    out: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "istio_requests_total":
                key = (s.labels["destination_workload"], s.labels["response_code"], s.labels["response_flags"])
                out[key] += int(s.value)
    return dict(out)


def service_counts(text: str) -> dict[str, int]:
    """A service's own count of work requests by status code (its health and metrics endpoints left out)."""
    out: collections.Counter[str] = collections.Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "searchstack_requests_total" and s.labels.get("path") not in ("/healthz", "/metrics"):
                out[s.labels["code"]] += int(s.value)
    return dict(out)


def slope_per_minute(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS (KiB) over time, in KiB per minute."""
    if len(samples) < 2:
        return math.nan
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    return 60 * sum((t - mt) * (v - mv) for t, v in samples) / var if var else math.nan


def memory_rows(series: dict[str, list[tuple[float, int]]], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for name, samples in series.items():
        first = [v for t, v in samples if t < 60]
        last = [v for t, v in samples if t >= seconds - 60]
        first_mib = sum(first) / len(first) / 1024 if first else math.nan
        last_mib = sum(last) / len(last) / 1024 if last else math.nan
        after_warmup = [(t, v) for t, v in samples if t >= 60]
        rows.append({
            "process": name, "samples": len(samples),
            "first_minute_mib": round(first_mib, 1), "last_minute_mib": round(last_mib, 1),
            "change_pct": round(100 * (last_mib - first_mib) / first_mib, 1) if first_mib else math.nan,
            "slope_kib_per_min": round(slope_per_minute(after_warmup), 1),
            "max_mib": round(max(v for _, v in samples) / 1024, 1) if samples else math.nan,
            "flat": bool(last_mib <= first_mib * 1.10 + 2.0),
        })
    return rows


def run(rps: float, seconds: float, sample_every: float, workdir: Path) -> dict[str, Any]:
    with LocalStack(workdir / "stack", work_ms=4.0) as stack:
        stack.start_version("v1")
        stack.start_version("v2")
        assert stack.admin is not None
        LocalRouter(stack.admin).apply(stack.baseline_plan("v1", "v2", 25))
        processes = {"mesh-router": stack.router_proc.pid}
        processes |= {f"{s}@{v}": w.proc.pid for (s, v), w in sorted(stack.workloads.items())}
        per_minute = LatencyByMinute()
        load = LoadRunner(url=f"{stack.router_url}/master-service/search", rate=rps, duration=seconds,
                          max_requests=int(rps * seconds) + 1, host="master-search", on_response=per_minute)
        rss: dict[str, list[tuple[float, int]]] = {name: [] for name in processes}
        cpu_start = cpu_seconds(stack.router_proc.pid)
        started = time.monotonic()
        load.start()
        next_sample = started
        # Bounded twice: the load ends by itself after `seconds`; this loop gives up 60 s after that.
        while load.running and time.monotonic() < started + seconds + 60:
            now = time.monotonic()
            if now >= next_sample:
                for name, pid in processes.items():
                    value = rss_kib(pid)
                    if value is not None:
                        rss[name].append((round(now - started, 2), value))
                next_sample += sample_every
            time.sleep(min(0.5, max(0.0, next_sample - time.monotonic())))
        report = load.stop()
        elapsed = time.monotonic() - started
        cpu_end = cpu_seconds(stack.router_proc.pid)
        time.sleep(1.0)  # let the last answers be counted everywhere
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            router = router_counts(client.get(f"{stack.admin_url}/metrics").text)
            services = {f"{s}-{v}": service_counts(client.get(f"http://{w.address}/metrics").text)
                        for (s, v), w in sorted(stack.workloads.items())}
        gone = [name for name, pid in processes.items() if rss_kib(pid) is None]

    accounting = account(report.status_counts, report.completed, report.errors, router, services)
    return {
        "rps": rps, "seconds": seconds, "elapsed": round(elapsed, 1), "sample_every": sample_every,
        "processes_died_during_run": gone,
        "load": load_dict(report),
        "router_cpu_percent": None if cpu_start is None or cpu_end is None
        else round(100 * (cpu_end - cpu_start) / elapsed, 1),
        "accounting": accounting,
        "router_counts": {"|".join(k): v for k, v in sorted(router.items())},
        "service_counts": services,
        "memory": memory_rows(rss, elapsed),
        "rss_samples": rss,
        "latency_by_minute": per_minute.table(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_at_end": os.getloadavg()},
    }


def account(client_codes: Mapping[int, int], completed: int, client_errors: int,
            router: Mapping[tuple[str, str, str], int], services: Mapping[str, Mapping[str, int]]
            ) -> dict[str, Any]:
    """Who produced each error: the router (a response flag), or a service (it answered 5xx itself)."""
    router_errors = {f"{w} {code} {flags}": n for (w, code, flags), n in router.items() if flags != "-"}
    answered = collections.Counter[str]()
    answered_5xx = collections.Counter[str]()
    for (workload, code, flags), n in router.items():
        if flags == "-":
            answered[workload] += n
            if code.startswith("5"):
                answered_5xx[workload] += n
    mismatches = {}
    for workload, codes in services.items():
        own = sum(codes.values())
        own_5xx = sum(n for c, n in codes.items() if c.startswith("5"))
        if (own, own_5xx) != (answered[workload], answered_5xx[workload]):
            mismatches[workload] = {"router_answered": answered[workload], "service_handled": own,
                                    "router_5xx": answered_5xx[workload], "service_5xx": own_5xx}
    entry = [w for w in answered if w.startswith("master-search-")]
    entry_total = sum(n for (w, _, _), n in router.items() if w in entry)
    client_non_200 = sum(n for c, n in client_codes.items() if c != 200)
    return {
        "client_completed": completed,
        "client_no_response": client_errors,
        "client_non_200": client_non_200,
        "router_entry_requests": entry_total,
        "router_requests": sum(router.values()),
        "router_introduced_errors": sum(router_errors.values()),
        "router_introduced_by_kind": router_errors,
        "upstream_5xx": sum(answered_5xx.values()),
        "router_vs_service_mismatches": mismatches,
        "client_vs_router_entry_match": completed == entry_total,
    }


def table(result: dict[str, Any]) -> str:
    acc, load = result["accounting"], result["load"]
    lines = [
        f"load: {result['rps']:g} searches/s target (2 x the demo's {DEMO_RPS:g}) for {result['seconds']:g}s; "
        f"achieved {load['achieved_rate']:.1f}/s; sent {load['sent']}, completed {load['completed']}, "
        f"no response {load['errors']}, dropped {load['dropped']}; status {load['status_counts']}",
        f"client latency p50 {load['latency_p50_ms']:.1f} ms, p99 {load['latency_p99_ms']:.1f} ms; "
        f"router CPU {result['router_cpu_percent']}% of one core",
        f"router requests {acc['router_requests']} (entry {acc['router_entry_requests']}; client completed "
        f"{acc['client_completed']}: {'match' if acc['client_vs_router_entry_match'] else 'MISMATCH'})",
        f"errors introduced by the router: {acc['router_introduced_errors']} {acc['router_introduced_by_kind'] or ''}",
        f"upstream 5xx (answered by a service, counted by it): {acc['upstream_5xx']}; "
        f"router vs service counts differ for: {acc['router_vs_service_mismatches'] or 'none'}",
        "",
        f"{'process':<20}{'samples':>8}{'1st min MiB':>12}{'last min MiB':>13}{'change':>8}"
        f"{'slope KiB/min':>14}{'max MiB':>9}{'flat':>6}",
        *(f"{r['process']:<20}{r['samples']:>8}{r['first_minute_mib']:>12.1f}{r['last_minute_mib']:>13.1f}"
          f"{r['change_pct']:>7.1f}%{r['slope_kib_per_min']:>14.1f}{r['max_mib']:>9.1f}"
          f"{'yes' if r['flat'] else 'NO':>6}"
          for r in result["memory"]),
        "",
        f"{'minute':>6}{'responses':>11}{'p50 ms':>9}{'p99 ms':>9}{'non-200':>9}",
        *(f"{r['minute']:>6}{r['responses']:>11}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['non_200']:>9}"
          for r in result["latency_by_minute"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rps", type=float, default=2 * DEMO_RPS, help="searches per second (default 2 x demo)")
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    args = p.parse_args(argv)
    if not (0 < args.rps <= 1000 and 0 < args.seconds <= 3600):
        p.error("--rps must be in (0, 1000] and --seconds in (0, 3600]")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = run(args.rps, args.seconds, args.sample, Path(tmp))
    text = table(result)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    args.out.with_suffix(".txt").write_text(
        f"python -m bench.soak --rps {args.rps:g} --seconds {args.seconds:g} --sample {args.sample:g}\n\n{text}\n")
    acc = result["accounting"]
    ok = (acc["router_introduced_errors"] == 0 and not acc["router_vs_service_mismatches"]
          and acc["client_vs_router_entry_match"] and all(r["flat"] for r in result["memory"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

