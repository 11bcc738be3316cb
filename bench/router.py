"""Benchmark: the local mesh's throughput and added latency, direct against through each router, side by side.

Starts a trivial fast upstream (uvloop + httptools, answers a small JSON body) and each router of `--routers`
as a process: `envoy` (`python -m localmesh.envoy.server`, real Envoy, the local mesh) and `proxy` (`python -m
localmesh.server`, the asyncio proxy it replaced). `hey` runs against the upstream directly and through every
router, interleaved in the same rounds, `--rounds` times at each concurrency; the report gives the medians of
req/s, p50 and p99, each router's throughput against direct, and Envoy's against the proxy when both ran. The
routers run a realistic release config: a DestinationRule with two subsets and a VirtualService with a
header-match route ahead of a 90/10 weighted split whose destinations set the lane header (both subsets point at
the same upstream, so the upstream's speed is the same on every path). At the end each router's own
istio_requests_total for the service (from its admin API's `/metrics`) must equal the number of answers hey got
through it; the run exits 1 otherwise. `envoy-bare` is Envoy with the least configuration that proxies (one route
to one cluster, the router filter): what Envoy itself costs a request, beside what the local mesh's configuration
adds; its count is its listener's `http.bare.downstream_rq_completed`. `envoy-uring` is that Envoy with its socket
I/O through io_uring (few system calls per request): whether Envoy's system calls are what it costs. Each hey
run also gives the CPU time, per answered request, of the router (its process and every process below it: Envoy
under its server), of the upstream and of hey itself (from /proc and the children's rusage): on a machine whose
cores the three share, throughput follows the sum.

    python bench/router.py [--requests 64000] [--concurrency 32 1] [--rounds 3] [--routers envoy,envoy-bare]
                           [--proxy-tree DIR] [--syscalls] [--out bench/results/router.json]

`--syscalls` adds one hey run per router under `strace -c -f` and reports its system calls per request (counts
only: strace slows the router down).

The asyncio proxy was removed from the tree after commit f544b64, the last that has it. Its figures, measured
beside Envoy in one run (`--routers proxy,envoy`), are the results file's `record`, printed beside every run
without it as "recorded", with the date and machine of that run. To measure it again, extract a tree from before
its removal and name it:

    git archive f544b64 localmesh controller | tar -x -C /tmp/proxy-tree
    python bench/router.py --routers proxy,envoy --proxy-tree /tmp/proxy-tree

(the proxy then runs from that tree; the upstream, Envoy and hey from this one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
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


# The bare Envoy's listener statistics prefix, and the counter its answers are checked against.
BARE_STAT_PREFIX = "bare"
BARE_COUNTER = f"http.{BARE_STAT_PREFIX}.downstream_rq_completed"


def bare_envoy_bootstrap(upstream: str, io_uring: bool = False) -> dict[str, Any]:
    """The least configuration through which Envoy proxies: one listener on any free loopback port, one route to
    one static cluster, the router filter and nothing else; Envoy's default statistics (no Istio tags). With
    `io_uring`, Envoy's sockets do their I/O through io_uring (its experimental socket interface; Linux >= 5.11,
    else Envoy falls back to the usual system calls) instead of a readv/sendto per event."""
    host, port = upstream.rsplit(":", 1)
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                 "HttpConnectionManager",
        "stat_prefix": BARE_STAT_PREFIX,
        "route_config": {"virtual_hosts": [{"name": "bench", "domains": ["*"],
                                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    loopback = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
    endpoint = {"address": {"socket_address": {"address": host, "port_value": int(port)}}}
    sockets = "envoy.extensions.network.socket_interface.default_socket_interface"
    uring = {"bootstrap_extensions": [{"name": sockets, "typed_config": {
                 "@type": "type.googleapis.com/envoy.extensions.network.socket_interface.v3.DefaultSocketInterface",
                 "io_uring_options": {}}}],
             "default_socket_interface": sockets} if io_uring else {}
    return {
        **uring,
        "admin": {"address": loopback},
        "static_resources": {
            "listeners": [{"name": "bench", "address": loopback, "filter_chains": [{"filters": [
                {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}]}],
            "clusters": [{"name": "upstream", "type": "STATIC", "load_assignment": {
                "cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]}}],
        },
    }


def serve_bare_envoy(upstream: str, io_uring: bool = False) -> None:
    """Run Envoy (2 workers, as the local mesh) with `bare_envoy_bootstrap` until SIGTERM; print its ports."""
    import httpx

    from controller.adapters.parent_death import die_with_parent
    from localmesh.envoy.process import envoy_binary

    work = Path(tempfile.mkdtemp(prefix="bench-envoy-bare-"))
    (work / "bootstrap.json").write_text(json.dumps(bare_envoy_bootstrap(upstream, io_uring)))
    log = (work / "envoy.log").open("ab")
    envoy = subprocess.Popen(
        [str(envoy_binary()), "-c", str(work / "bootstrap.json"), "--concurrency", "2", "--log-level", "warn",
         "--disable-hot-restart", "--admin-address-path", str(work / "admin.address")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent(signal.SIGKILL),
    )
    signal.signal(signal.SIGTERM, lambda *_: envoy.terminate())
    deadline = time.monotonic() + 30
    listener = None
    while listener is None and envoy.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError, httpx.HTTPError, KeyError, IndexError, ValueError):
            admin = (work / "admin.address").read_text().strip()
            listeners = httpx.get(f"http://{admin}/listeners?format=json", timeout=2).json()
            sock = listeners["listener_statuses"][0]["local_address"]["socket_address"]
            listener = f"{sock['address']}:{sock['port_value']}" if sock.get("port_value") else None
        if listener is None:
            time.sleep(0.05)
    if listener is None:
        envoy.kill()
        print(f"the bare Envoy did not start: {(work / 'envoy.log').read_text(errors='replace')[-2000:]!r}", flush=True)
        return
    print(f"mesh-router ready proxy={listener} admin={admin}", flush=True)
    envoy.wait()
    log.close()
    shutil.rmtree(work, ignore_errors=True)


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


def start(cmd: list[str], ready_prefix: str, tree: Path = REPO) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start `cmd` in `tree` (its modules first on the path) and wait for its ready line's `k=v` fields."""
    proc = subprocess.Popen(
        cmd, cwd=tree, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(tree)}
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(ready_prefix):
        stop(proc)
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
    if proc.stdout is not None:
        proc.stdout.close()


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and every live process below it, from /proc."""
    used, tree = _process_tree(pid)
    return sum(used.get(p, 0.0) for p in tree)


def _process_tree(pid: int) -> tuple[dict[int, float], set[int]]:
    """Every live process's CPU seconds, and `pid` with every live process below it."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(fields[1])
            used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [c for c, pp in parents.items() if pp == parent and c not in tree]
        tree.update(children)
        frontier.extend(children)
    return used, tree & set(parents)


def syscalls_per_request(pid: int, url: str, requests: int, host: str | None
                         ) -> tuple[dict[str, dict[str, float]], int]:
    """System calls per answered request of `pid` and every process below it, every thread (`strace -c -f`),
    over one hey run of `requests` at -c 32, by call: {"calls": ..., "errors": ...}; and the requests answered.
    strace slows the router down, so the run's speed is not reported; the counts are exact."""
    if shutil.which("strace") is None:
        raise SystemExit("--syscalls needs strace (Debian package strace)")
    _, tree = _process_tree(pid)
    with tempfile.NamedTemporaryFile(prefix="bench-strace-", suffix=".txt") as out, \
            tempfile.TemporaryFile(mode="w+") as said:
        argv = ["strace", "-c", "-f", "-o", out.name, *(a for p in sorted(tree) for a in ("-p", str(p)))]
        with subprocess.Popen(argv, stderr=said) as tracer:
            try:
                if not _wait_traced(tracer, tree, time.monotonic() + 30):
                    said.seek(0)
                    raise SystemExit(f"strace did not attach to every thread of {sorted(tree)} in 30 s (is ptrace "
                                     f"allowed here?): {said.read().strip()[-500:]}")
                answered = int(hey(url, requests, 32, host=host)["answered"])
            finally:
                tracer.send_signal(signal.SIGINT)
                tracer.wait(timeout=30)
        return _strace_counts(Path(out.name).read_text(), max(answered, 1)), answered


def _wait_traced(tracer: subprocess.Popen[bytes], pids: set[int], deadline: float) -> bool:
    """Whether every live thread of `pids` came to have `tracer` as its tracer (/proc's TracerPid) before strace
    stopped or the deadline passed; a thread that ends meanwhile is not waited for."""
    while any(_tracer_of(task) not in (None, tracer.pid) for pid in pids for task in _tasks(pid)):
        if tracer.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _tasks(pid: int) -> list[Path]:
    with contextlib.suppress(OSError):
        return sorted(Path(f"/proc/{pid}/task").iterdir())
    return []


def _tracer_of(task: Path) -> int | None:
    """The TracerPid of one thread, None when it has ended."""
    with contextlib.suppress(OSError, ValueError):
        for line in (task / "status").read_text().splitlines():
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return None


def _strace_counts(summary: str, answered: float) -> dict[str, dict[str, float]]:
    """`strace -c`'s table (% time, seconds, usecs/call, calls, [errors,] syscall) per answered request."""
    counts: dict[str, dict[str, float]] = {}
    for line in summary.splitlines():
        fields = line.split()
        if len(fields) not in (5, 6) or not fields[3].isdigit() or fields[-1] == "total":
            continue
        errors = int(fields[4]) if len(fields) == 6 else 0
        counts[fields[-1]] = {"calls": int(fields[3]) / answered, "errors": errors / answered}
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]["calls"]))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured_hey(url: str, requests: int, concurrency: int, host: str | None, pids: dict[str, int]
                 ) -> dict[str, float]:
    """`hey`, and the CPU microseconds per answered request of each process tree in `pids` and of hey."""
    before = {name: process_tree_cpu(pid) for name, pid in pids.items()}
    hey_before = _children_cpu()
    result = hey(url, requests, concurrency, host=host)
    answered = max(result["answered"], 1.0)
    for name, pid in pids.items():
        result[f"{name}_cpu_us"] = (process_tree_cpu(pid) - before[name]) / answered * 1e6
    result["hey_cpu_us"] = (_children_cpu() - hey_before) / answered * 1e6
    return result


def hey(url: str, requests: int, concurrency: int, host: str | None = None, *, body: Path | None = None,
        rate: float | None = None) -> dict[str, float]:
    """`requests` (at least 100: hey prints no 99th percentile below) GETs over `concurrency` connections, as fast
    as they go; with `body`, POSTs of that JSON file; with `rate`, about that many requests a second in all."""
    cmd = ["hey", "-n", str(requests), "-c", str(concurrency), "-t", "10"]
    if host:
        cmd += ["-host", host]
    if body is not None:
        cmd += ["-m", "POST", "-T", "application/json", "-D", str(body)]
    if rate is not None:
        cmd += ["-q", f"{rate / concurrency:.3f}"]  # hey's rate is per connection
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


# The routers that can be measured, by the module started as their process. The project's first local mesh, an
# asyncio proxy (`localmesh.server`), was measured beside Envoy before it was removed (f544b64 is the last commit
# with it): its figures are kept as the results file's `record` and printed beside a run that does not measure it.
# `envoy-1` is Envoy with one worker thread instead of Istio's two (the proxy has one event loop). `envoy-bare` is
# Envoy with the least configuration that proxies (`bare_envoy_bootstrap`: no translation, no Istio statistics
# tags, no lane header, no metrics mapping): what Envoy itself costs a request here, whatever it is configured with.
# `envoy-uring` is the bare Envoy doing its socket I/O through io_uring: whether its system calls are its cost.
ROUTERS = {"envoy": "localmesh.envoy.server", "envoy-1": "localmesh.envoy.server", "envoy-bare": "localmesh.envoy",
           "envoy-uring": "localmesh.envoy", "proxy": "localmesh.server"}
BARE_ROUTERS = {"envoy-bare": [], "envoy-uring": ["io-uring"]}  # served by this file, with these arguments
ROUTER_ARGS = {"envoy-1": ["--concurrency", "1"]}
PROXY_LAST_IN = "f544b64"  # the last commit whose tree has the asyncio proxy


def router_tree(name: str, proxy_tree: Path | None) -> Path | None:
    """The source tree `name` runs from: this repository, or for the proxy `--proxy-tree`; None when not there."""
    module = ROUTERS[name]
    if name == "proxy" and proxy_tree is not None:
        return proxy_tree if (proxy_tree / Path(*module.split("."))).with_suffix(".py").is_file() else None
    return REPO if importlib.util.find_spec(module) is not None else None


def _start_router(name: str, tree: Path, tmp: Path, upstream: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    if name in BARE_ROUTERS:
        return start([sys.executable, __file__, "--serve-envoy-bare", upstream, *BARE_ROUTERS[name]],
                     "mesh-router ready")
    return start(
        [sys.executable, "-m", ROUTERS[name], "--port", "0", "--admin-port", "0",
         "--config", str(tmp / "config.json"), "--endpoints", str(tmp / "endpoints.json"), *ROUTER_ARGS.get(name, [])],
        "mesh-router ready",
        tree,
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """hey against the upstream directly and through each router, interleaved round by round."""
    upstream, up = start([sys.executable, __file__, "--serve-upstream"], "upstream ready")
    upstream_addr = f"127.0.0.1:{up['port']}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-router-"))
    (tmp / "config.json").write_text(json.dumps({"objects": router_objects()}))
    endpoints = [{"service": "bench", "labels": {"version": v}, "address": upstream_addr} for v in ("v1", "v2")]
    (tmp / "endpoints.json").write_text(json.dumps(endpoints))
    routers: dict[str, tuple[subprocess.Popen[str], dict[str, str]]] = {}
    results: dict[str, Any] = {"rounds": {}, "medians": {}, "router_metrics_requests": {}, "sent_through": {}}
    try:
        for name in args.routers:
            routers[name] = _start_router(name, args.trees[name], tmp, upstream_addr)
        urls: dict[str, tuple[str, str | None]] = {"direct": (f"http://{upstream_addr}/search", None)}
        urls.update({name: (f"http://{info['proxy']}/search", "bench") for name, (_, info) in routers.items()})
        sent = dict.fromkeys(routers, 0)
        for path, (url, host) in urls.items():  # warm-up
            answered = int(hey(url, 3200, 32, host=host)["answered"])
            if path in sent:
                sent[path] += answered
        for c in args.concurrency:
            # hey sends floor(n / c) requests per worker: keep n a multiple of c so every run sends n.
            n = (args.requests if c > 1 else max(2000, args.requests // 8)) // c * c
            rounds: dict[str, list[dict[str, float]]] = {path: [] for path in urls}
            for _ in range(args.rounds):
                for path, (url, host) in urls.items():
                    pids = {"upstream": upstream.pid, **({"router": routers[path][0].pid} if path in routers else {})}
                    rounds[path].append(measured_hey(url, n, c, host, pids))
                    if path in sent:
                        sent[path] += int(rounds[path][-1]["answered"])
            results["rounds"][str(c)] = rounds
            results["medians"][str(c)] = {
                path: {k: statistics.median(r[k] for r in runs) for k in MEDIANS if k in runs[0]}
                for path, runs in rounds.items()
            }
        if args.syscalls:
            results["syscalls"] = {}
            for name, (proc, _) in routers.items():
                results["syscalls"][name], answered = syscalls_per_request(proc.pid, urls[name][0], args.requests,
                                                                            "bench")
                sent[name] += answered
        for name, (_, info) in routers.items():
            results["router_metrics_requests"][name] = counted_answers(name, f"http://{info['admin']}")
        results["sent_through"] = sent
    finally:
        for proc, _ in routers.values():
            stop(proc)
        stop(upstream)
    return results


def counter_of(name: str) -> str:
    """The counter a router's answers are checked against: Istio's, or for the bare Envoy its listener's own."""
    return BARE_COUNTER if name in BARE_ROUTERS else "istio_requests_total"


def counted_answers(name: str, admin_url: str) -> int:
    """The answers router `name` counted in `counter_of(name)`, from its admin API."""
    return bare_envoy_total(admin_url) if name in BARE_ROUTERS else router_metric_total(admin_url)


def bare_envoy_total(admin_url: str) -> int:
    """The requests the bare Envoy answered: its listener's BARE_COUNTER."""
    import httpx

    stats = httpx.get(f"{admin_url}/stats", params={"format": "json", "filter": f"^{re.escape(BARE_COUNTER)}$"},
                      timeout=10)
    stats.raise_for_status()
    return int(next(s["value"] for s in stats.json()["stats"] if s.get("name") == BARE_COUNTER))


def router_metric_total(admin_url: str) -> int:
    """The router's istio_requests_total for the benchmark's service, summed over versions and response codes, from
    its admin API's `/metrics` (the proxy's own counters; Envoy's statistics mapped to Istio's names)."""
    from prometheus_client.parser import text_string_to_metric_families

    from controller.adapters.local.mesh_admin import RouterAdmin

    with RouterAdmin(admin_url) as admin:
        text = admin.metrics_text()
    return int(
        sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "istio_requests_total" and s.labels.get("destination_service_name") == "bench"
        )
    )


MEDIANS = ("rps", "mean_ms", "p50_ms", "p99_ms", "router_cpu_us", "upstream_cpu_us", "hey_cpu_us")


def _cpu(m: dict[str, float]) -> str:
    """CPU us per request of router / upstream / hey, when measured."""
    if "hey_cpu_us" not in m:
        return f"{'-':>18}"
    router = f"{m['router_cpu_us']:.0f}" if "router_cpu_us" in m else "-"
    return f"{router:>6}/{m['upstream_cpu_us']:>4.0f}/{m['hey_cpu_us']:>4.0f}"


def table(results: dict[str, Any], record: dict[str, Any] | None = None) -> str:
    """Medians per concurrency and path, each router's added latency, its throughput against direct and (Envoy
    against the proxy) against the other; `record`: the proxy's recorded medians, shown as such."""
    lines = [
        f"{'concurrency':>11} | {'path':<16} | {'req/s':>8} | {'mean ms':>7} | {'p50 ms':>7} | {'p99 ms':>7} | "
        f"{'CPU us/req r/u/hey':>18}",
        f"{'-' * 11}-+-{'-' * 16}-+-{'-' * 8}-+-{'-' * 7}-+-{'-' * 7}-+-{'-' * 7}-+-{'-' * 18}",
    ]
    for c, paths in results["medians"].items():
        d = paths["direct"]
        for path, m in paths.items():
            ratio = "" if path == "direct" else f"  ({m['rps'] / d['rps']:.2f}x direct)"
            lines.append(f"{c:>11} | {path:<16} | {m['rps']:>8.0f} | {m['mean_ms']:>7.3f} | {m['p50_ms']:>7.2f} | "
                         f"{m['p99_ms']:>7.2f} | {_cpu(m)}{ratio}")
        if record and c in record.get("medians", {}) and "proxy" not in paths:
            rec = record["medians"][c]
            m = rec["proxy"]
            lines.append(f"{c:>11} | {'proxy (recorded)':<16} | {m['rps']:>8.0f} | {m['mean_ms']:>7.3f} | "
                         f"{m['p50_ms']:>7.2f} | {m['p99_ms']:>7.2f} | {_cpu(m)}  "
                         f"({rec['ratio_to_direct']:.2f}x direct on {record['date']})")
            if rec.get("envoy_over_proxy") is not None:
                lines.append(f"{c:>11} | {'envoy / proxy':<16} | {rec['envoy_over_proxy']:>7.2f}x | (recorded, "
                             f"Envoy and the proxy in the same run of {record['date']})")
        for envoy in (e for e in ("envoy", "envoy-1", *BARE_ROUTERS) if e in paths and "proxy" in paths):
            lines.append(f"{c:>11} | {envoy + ' / proxy':<16} | {paths[envoy]['rps'] / paths['proxy']['rps']:>7.2f}x |")
    if record and not any("proxy" in paths for paths in results["medians"].values()):
        mach = record.get("machine", {})
        lines.append(f"recorded: the asyncio proxy (removed after {PROXY_LAST_IN}), measured on {record['date']} on "
                     f"{describe(mach)} by `{record['command']}`; ratios against direct are that run's")
    return "\n".join(lines)


def syscall_table(syscalls: dict[str, dict[str, dict[str, float]]]) -> str:
    """Per router, its system calls per answered request, by call (and how many of them failed, e.g. EAGAIN)."""
    lines = ["system calls per answered request (strace -c -f, one hey run at -c 32):"]
    for name, calls in syscalls.items():
        total = sum(c["calls"] for c in calls.values())
        parts = [f"{call} {c['calls']:.2f}" + (f" ({c['errors']:.2f} failed)" if c["errors"] >= 0.005 else "")
                 for call, c in calls.items() if c["calls"] >= 0.005]
        lines.append(f"  {name:<12} {total:5.2f}: {', '.join(parts)}")
    return "\n".join(lines)


def describe(machine: dict[str, Any]) -> str:
    """A results file's machine in a few words."""
    parts = [machine.get("cpu_model") or "", f"{machine.get('cpus', '?')} CPUs",
             f"Python {machine.get('python', '?')}", f"load {machine.get('load_average_1m', 0):.2f} at the end"]
    return ", ".join(p for p in parts if p)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1m": os.getloadavg()[0],
    }


def proxy_record(results: dict[str, Any]) -> dict[str, Any]:
    """The proxy's medians of a run that measured it, with their ratio to direct on the same run, to keep."""
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": results["machine"],
        "command": results["command"],
        "proxy_source": results["proxy_source"],
        "medians": {c: {"proxy": paths["proxy"], "ratio_to_direct": paths["proxy"]["rps"] / paths["direct"]["rps"],
                        "envoy_over_proxy": (paths["envoy"]["rps"] / paths["proxy"]["rps"]) if "envoy" in paths
                        else None}
                    for c, paths in results["medians"].items()},
    }


def main() -> int:
    if sys.argv[1:2] == ["--serve-upstream"]:
        serve_upstream()
        return 0
    if sys.argv[1:2] == ["--serve-envoy-bare"]:
        serve_bare_envoy(sys.argv[2], io_uring=sys.argv[3:4] == ["io-uring"])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=64000, help="requests per hey run at concurrency > 1")
    p.add_argument("--concurrency", type=int, nargs="+", default=[32, 1])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--routers", default="envoy", help=f"comma-separated, measured beside direct: {', '.join(ROUTERS)}")
    p.add_argument("--proxy-tree", type=Path, help="a source tree holding the removed proxy (localmesh/server.py), "
                   f"e.g. `git archive {PROXY_LAST_IN} localmesh controller | tar -x -C DIR`")
    p.add_argument("--syscalls", action="store_true", help="after the rounds, count each router's system calls per "
                   "request over one more hey run at -c 32 (strace -c -f; the counts only, strace slows it down)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "router.json")
    args = p.parse_args()
    args.routers = list(dict.fromkeys(r.strip() for r in args.routers.split(",") if r.strip()))
    if unknown := [r for r in args.routers if r not in ROUTERS]:
        p.error(f"--routers: {unknown} not among {sorted(ROUTERS)}")
    if args.proxy_tree is not None:
        args.proxy_tree = args.proxy_tree.resolve()
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.trees = {name: router_tree(name, args.proxy_tree) for name in args.routers}
    if missing := [name for name, tree in args.trees.items() if tree is None]:
        record = previous.get("record")
        where = f"in {args.proxy_tree}" if args.proxy_tree else "in this tree"
        msg = [f"--routers {','.join(missing)}: {', '.join(ROUTERS[m] for m in missing)} is not {where}"]
        if "proxy" in missing:
            msg.append(f"The asyncio proxy was removed after commit {PROXY_LAST_IN}; to measure it again, extract a "
                       f"tree from before: `git archive {PROXY_LAST_IN} localmesh controller | tar -x -C DIR` and "
                       "add `--proxy-tree DIR`.")
            msg.append(f"Its recorded figures ({args.out}, run of {record['date']} on {describe(record['machine'])}) "
                       "are printed beside every run of `--routers envoy`." if record else
                       f"{args.out} holds no record of its figures.")
        print("\n".join(msg), file=sys.stderr)
        return 2
    started = time.time()
    results = run(args)
    results["command"] = "python " + " ".join(sys.argv)
    results["machine"] = machine()
    results["proxy_source"] = str(args.trees["proxy"]) if "proxy" in args.trees else None
    results["seconds"] = round(time.time() - started, 1)
    results["record"] = proxy_record(results) if "proxy" in args.routers else previous.get("record")
    print(table(results, results["record"]))
    if "syscalls" in results:
        print(syscall_table(results["syscalls"]))
    exact = True
    for name, counted in results["router_metrics_requests"].items():
        got = results["sent_through"][name]
        exact = exact and counted == got
        print(f"{name} counted {counted} requests in {counter_of(name)}; hey got {got} answers through it"
              + ("" if counted == got else "  MISMATCH"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
