"""Benchmark: the local mesh router's throughput and added latency, side by side with the bare upstream.

Starts a trivial fast upstream (uvloop + httptools, answers a small JSON body) and the router, both as
processes, then runs `hey` against the upstream directly and through the router, interleaved, `--rounds`
times at each concurrency, and reports the medians of req/s, p50 and p99. The router runs a realistic
release config: a DestinationRule with two subsets and a VirtualService with a header-match route ahead
of a 90/10 weighted split whose destinations set the lane header (both subsets point at the same
upstream, so the upstream's speed is the same on both paths). At the end the router's own
istio_requests_total is checked against the number of requests hey sent through it.

    python bench/router.py [--requests 64000] [--concurrency 32 1] [--rounds 3] [--out bench/results/router.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the router client lives in the repo
API = "networking.istio.io/v1"


# ---------------------------------------------------------------------------------------------------
# The trivial upstream (run as `python bench/router.py --serve-upstream`).


def serve_upstream() -> None:
    import httptools
    import uvloop

    body = b'{"service": "bench", "ok": true}'
    response = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )

    class Upstream(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            self.transport.write(response)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Upstream, "127.0.0.1", 0, backlog=1024)
        print(f"upstream ready port={server.sockets[0].getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    uvloop.run(main())


# ---------------------------------------------------------------------------------------------------
# The run.


def router_objects() -> list[dict[str, Any]]:
    def dest(subset: str, weight: int, lane: str) -> dict[str, Any]:
        return {
            "destination": {"host": "bench", "subset": subset},
            "weight": weight,
            "headers": {"request": {"set": {"x-canary-lane": lane}}},
        }

    return [
        {
            "apiVersion": API,
            "kind": "DestinationRule",
            "metadata": {"name": "bench", "namespace": "default"},
            "spec": {
                "host": "bench",
                "subsets": [
                    {"name": "stable", "labels": {"version": "v1"}},
                    {"name": "canary", "labels": {"version": "v2"}},
                ],
            },
        },
        {
            "apiVersion": API,
            "kind": "VirtualService",
            "metadata": {"name": "bench", "namespace": "default"},
            "spec": {
                "hosts": ["bench"],
                "http": [
                    {
                        "name": "canary-lane",
                        "match": [{"headers": {"x-canary-lane": {"exact": "canary"}}}],
                        "route": [{"destination": {"host": "bench", "subset": "canary"}}],
                    },
                    {"name": "release-split", "route": [dest("stable", 90, "stable"), dest("canary", 10, "canary")]},
                ],
            },
        },
    ]


def start(cmd: list[str], ready_prefix: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(ready_prefix):
        proc.kill()
        raise SystemExit(f"{cmd[:3]} did not start: {line!r}")
    return proc, dict(part.split("=", 1) for part in line.split()[2:])


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def hey(url: str, requests: int, concurrency: int, host: str | None = None) -> dict[str, float]:
    cmd = ["hey", "-n", str(requests), "-c", str(concurrency), "-t", "10"]
    if host:
        cmd += ["-host", host]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=300, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {int(p): float(s) * 1000 for p, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", out)}
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    answered = sum(codes.values())
    return {
        "rps": rps,
        # hey prints latencies in 0.1 ms steps; concurrency / throughput (Little's law) is the finer mean.
        "mean_ms": concurrency / rps * 1000,
        "p50_ms": pct[50],
        "p99_ms": pct[99],
        "ok": codes.get(200, 0),
        "answered": answered,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    upstream, up = start([sys.executable, __file__, "--serve-upstream"], "upstream ready")
    upstream_addr = f"127.0.0.1:{up['port']}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-router-"))
    (tmp / "config.json").write_text(json.dumps({"objects": router_objects()}))
    endpoints = [{"service": "bench", "labels": {"version": v}, "address": upstream_addr} for v in ("v1", "v2")]
    (tmp / "endpoints.json").write_text(json.dumps(endpoints))
    router, rt = start(
        [sys.executable, "-m", "localmesh.server", "--port", "0", "--admin-port", "0",
         "--config", str(tmp / "config.json"), "--endpoints", str(tmp / "endpoints.json")],
        "mesh-router ready",
    )  # fmt: skip
    direct_url, router_url = f"http://{upstream_addr}/search", f"http://{rt['proxy']}/search"
    results: dict[str, Any] = {"rounds": {}, "medians": {}}
    sent_through_router = 0
    try:
        hey(direct_url, 3200, 32)
        sent_through_router += hey(router_url, 3200, 32, host="bench")["answered"]
        for c in args.concurrency:
            # hey sends floor(n / c) requests per worker: keep n a multiple of c so every run sends n.
            n = (args.requests if c > 1 else max(2000, args.requests // 8)) // c * c
            rounds: dict[str, list[dict[str, float]]] = {"direct": [], "router": []}
            for _ in range(args.rounds):
                rounds["direct"].append(hey(direct_url, n, c))
                rounds["router"].append(hey(router_url, n, c, host="bench"))
                sent_through_router += int(rounds["router"][-1]["answered"])
            results["rounds"][str(c)] = rounds
            results["medians"][str(c)] = {
                path: {k: statistics.median(r[k] for r in runs) for k in ("rps", "mean_ms", "p50_ms", "p99_ms")}
                for path, runs in rounds.items()
            }
        results["router_metrics_requests"] = router_metric_total(f"http://{rt['admin']}")
        results["sent_through_router"] = sent_through_router
    finally:
        stop(router)
        stop(upstream)
    return results


def router_metric_total(admin_url: str) -> int:
    from prometheus_client.parser import text_string_to_metric_families

    from controller.adapters.local.mesh_admin import RouterAdmin

    with RouterAdmin(admin_url) as admin:
        text = admin.metrics_text()
    return int(
        sum(
            s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "istio_requests_total"
        )
    )


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'concurrency':>11} | {'path':<6} | {'req/s':>8} | {'mean ms':>7} | {'p50 ms':>7} | {'p99 ms':>7}",
        f"{'-' * 11}-+-{'-' * 6}-+-{'-' * 8}-+-{'-' * 7}-+-{'-' * 7}-+-{'-' * 7}",
    ]
    for c, paths in results["medians"].items():
        for path, m in paths.items():
            lines.append(
                f"{c:>11} | {path:<6} | {m['rps']:>8.0f} | {m['mean_ms']:>7.3f} | {m['p50_ms']:>7.2f} | "
                f"{m['p99_ms']:>7.2f}"
            )
        d, r = paths["direct"], paths["router"]
        added = {k: r[k] - d[k] for k in ("mean_ms", "p50_ms", "p99_ms")}
        lines.append(
            f"{c:>11} | {'added':<6} | {'':>8} | {added['mean_ms']:>+7.3f} | {added['p50_ms']:>+7.2f} | "
            f"{added['p99_ms']:>+7.2f}"
        )
    return "\n".join(lines)


def main() -> int:
    if sys.argv[1:2] == ["--serve-upstream"]:
        serve_upstream()
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=64000, help="requests per hey run at concurrency > 1")
    p.add_argument("--concurrency", type=int, nargs="+", default=[32, 1])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "router.json")
    args = p.parse_args()
    started = time.time()
    results = run(args)
    results["command"] = "python " + " ".join(sys.argv)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1m": os.getloadavg()[0],
    }
    results["seconds"] = round(time.time() - started, 1)
    print(table(results))
    print(
        f"router counted {results['router_metrics_requests']} requests in istio_requests_total; "
        f"hey got {results['sent_through_router']} answers through it"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
