"""Benchmark: Prometheus queries per tick, and their time, for a release of 5 services.

A real Prometheus (Debian's binary) scrapes the test exporter every second: 5 services x 2 versions x
3 response codes, each with Istio's 20 latency buckets (30 request series + 600 bucket series), while a
load thread keeps adding requests. Each tick then reads one window of the whole release:

- grouped: `PrometheusMetrics.window()` for all services at once (4 queries, regex selectors: each metric's
  samples in the window and its series' last values at the start);
- per pair: the same window asked once per (service, version) (4 queries each: what a provider that
  queries per service and version would do), to show what grouping saves.

Then, as a release's first tick does, it reads the stable version's history: `--history-windows` (30)
contiguous windows of `--history-window` seconds before now,

- alone: `window()` once per window (what the controller did before `windows()` existed);
- together: `PrometheusMetrics.windows()`, the whole span in the queries of one window, cut per window.

Each pair of modes must return identical counts; the program checks that. Prints a table and saves JSON.

    python -m bench.prometheus_queries --ticks 20 --out /tmp/prometheus_queries.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from analysis.observations import MetricsQuery, WindowCounts
from controller.adapters.prometheus.client import PrometheusConfig, PrometheusMetrics
from controller.adapters.prometheus.server import PrometheusProcess, prometheus_binary
from tests.adapters.prometheus.test_provider import IstioExporter

SERVICES = ("master-search", "ml-infer", "ml-search", "keyword", "text-search")
VERSIONS = ("v1", "v2")
CODES = (200, 404, 503)


def load(exporter: IstioExporter, stop: threading.Event, rng: random.Random) -> None:
    while not stop.wait(0.05):
        for service in SERVICES:
            for version in VERSIONS:
                code = rng.choices(CODES, weights=(95, 3, 2))[0]
                exporter.add(service, version, code, count=rng.randint(1, 5), latency_ms=rng.lognormvariate(3, 1))


def measure(provider: PrometheusMetrics, queries: list[MetricsQuery], start: float, end: float
            ) -> tuple[int, float, dict[tuple[str, str], Any]]:
    sent = provider.queries_sent
    began = time.perf_counter()
    windows: list[WindowCounts] = [provider.window(q, start, end) for q in queries]
    elapsed = time.perf_counter() - began
    merged = {pair: c for w in windows for pair, c in w.counts.items()}
    return provider.queries_sent - sent, elapsed, merged


def history_rows(provider: PrometheusMetrics, query: MetricsQuery, args: argparse.Namespace
                 ) -> dict[str, list[tuple[int, float]]]:
    """The stable version's history read window by window and together, `args.ticks` times."""
    rows: dict[str, list[tuple[int, float]]] = {"history_alone": [], "history_together": []}
    n, width = args.history_windows, args.history_window
    for tick in range(args.ticks):
        end = time.time() - 2 - tick * 0.25
        edges = [(end - (n - i) * width, end - (n - i - 1) * width) for i in range(n)]
        sent, began = provider.queries_sent, time.perf_counter()
        alone = [provider.window(query, a, b) for a, b in edges]
        rows["history_alone"].append((provider.queries_sent - sent, time.perf_counter() - began))
        sent, began = provider.queries_sent, time.perf_counter()
        together = provider.windows(query, edges)
        rows["history_together"].append((provider.queries_sent - sent, time.perf_counter() - began))
        if together != tuple(alone):
            raise SystemExit(f"the history read together differs from its windows read alone at tick {tick}")
    return rows


def summary(rows: dict[str, list[tuple[int, float]]], window: float, lookback: float) -> list[dict[str, Any]]:
    out = []
    for mode, samples in rows.items():
        times = sorted(t for _, t in samples)
        out.append({
            "mode": mode, "window_s": window, "lookback_s": lookback, "ticks": len(samples),
            "queries_per_tick": samples[0][0],
            "median_ms": round(statistics.median(times) * 1000, 1),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))] * 1000, 1),
        })
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    exporter = IstioExporter()
    target = exporter.serve()
    stop = threading.Event()
    loader = threading.Thread(target=load, args=(exporter, stop, random.Random(7)), daemon=True)
    for service in SERVICES:  # every series exists from the first scrape
        for version in VERSIONS:
            for code in CODES:
                exporter.add(service, version, code, count=1)
    results: dict[str, Any] = {"services": len(SERVICES), "versions": len(VERSIONS), "codes": len(CODES),
                               "series": len(SERVICES) * len(VERSIONS) * len(CODES) * 21, "runs": []}
    with PrometheusProcess([target]) as prometheus:
        loader.start()
        time.sleep(args.history)  # build history the windows and the lookback read
        grouped_query = MetricsQuery("shop", SERVICES, VERSIONS)
        pair_queries = [MetricsQuery("shop", (s,), (v,)) for s in SERVICES for v in VERSIONS]
        for lookback in args.lookbacks:
            provider = PrometheusMetrics(PrometheusConfig(url=prometheus.url, lookback_seconds=lookback))
            for window in args.windows:
                rows: dict[str, list[tuple[int, float]]] = {"grouped": [], "per_pair": []}
                for tick in range(args.ticks):
                    end = time.time() - 2 - tick * 0.25
                    start = end - window
                    g_queries, g_time, g_counts = measure(provider, [grouped_query], start, end)
                    p_queries, p_time, p_counts = measure(provider, pair_queries, start, end)
                    if g_counts != p_counts:
                        raise SystemExit(f"grouped and per-pair counts differ at tick {tick}")
                    rows["grouped"].append((g_queries, g_time))
                    rows["per_pair"].append((p_queries, p_time))
                results["runs"] += summary(rows, window, lookback)
            results["runs"] += summary(history_rows(provider, grouped_query, args), args.history_window, lookback)
            provider.close()
    stop.set()
    loader.join(timeout=5)
    exporter.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--history", type=float, default=70.0, help="seconds of scrapes before measuring")
    parser.add_argument("--windows", type=lambda s: [float(x) for x in s.split(",")], default=[10.0, 60.0])
    parser.add_argument("--lookbacks", type=lambda s: [float(x) for x in s.split(",")], default=[600.0, 60.0])
    parser.add_argument("--history-windows", type=int, default=30, help="windows of the stable version's history")
    parser.add_argument("--history-window", type=float, default=2.0, help="seconds per history window")
    parser.add_argument("--out", type=Path, default=Path("/tmp/prometheus_queries.json"))
    args = parser.parse_args()
    if prometheus_binary() is None:
        sys.exit("no prometheus binary on PATH (apt-get install --no-install-recommends prometheus)")
    results = run(args)
    print(f"{results['services']} services x {results['versions']} versions x {results['codes']} codes "
          f"= {results['series']} series (requests + 20 buckets each), {args.ticks} ticks per row")
    print(f"history: {args.history_windows} windows of {args.history_window:g} s")
    print(f"{'mode':<16} {'window s':>8} {'lookback s':>10} {'queries/tick':>12} {'median ms':>9} {'p95 ms':>7}")
    for r in results["runs"]:
        print(f"{r['mode']:<16} {r['window_s']:>8g} {r['lookback_s']:>10g} {r['queries_per_tick']:>12} "
              f"{r['median_ms']:>9} {r['p95_ms']:>7}")
    args.out.write_text(json.dumps(results, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
