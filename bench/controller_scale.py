"""Controller scale benchmark: 10 / 100 / 500 StackReleases against the Kubernetes API emulator.

    python -m bench.controller_scale                       # 10, 100, 500 releases
    python -m bench.controller_scale --releases 10,100 --intervals 1

Each release lives in its own namespace with the five stable Deployments of the search stack. The
controller (`controller.adapters.kubernetes.running.Controller`, the official client over HTTP to
`tests.support.kmock_server` on 127.0.0.1) is driven on a fake clock, one 30 s analysis interval at a time, so
one "round" is everything the controller does in 30 s of cluster time:

- **analysing**: every release is Progressing at its first step and analyses once per interval (the
  judge holds: too few canary requests to advance), and in between wakes as the reconciler asks (every
  max(5 s, interval / 3): every 10 s here), to notice a canary that died. One status write per release
  per interval is expected (the decision record).
- **steady**: every release is Succeeded; a resync ticks each once. Nothing to change: no writes.

Measured per round: controller CPU (thread CPU time of the thread that runs the ticks, which includes
the client's serialisation and HTTP; the emulator runs in its own thread and is not counted), API
requests and writes seen by the emulator, ticks, and the wall time of each tick (p50/p99; this includes
waiting for the emulator, which shares the GIL). Metrics come from a constant in-memory source: the
Prometheus queries are not part of this benchmark (see bench/prometheus_queries.py).

Prints a table and writes bench/results/controller_scale.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from analysis.observations import ISTIO_BUCKETS_MS, MetricsQuery, VersionCounts, WindowCounts
from controller.adapters.kubernetes.client import RELEASES, KubeApi
from controller.adapters.kubernetes.running import Controller, ControllerConfig
from controller.core.status import Phase, ReleaseStatus
from tests.support.fakes import FakeClock
from tests.support.kmock_server import KINDS, RunningEmulator, start_emulator
from tests.support.kube_world import SERVICES, release_body, stable_deployment

INTERVAL = 30.0
RESULTS = Path(__file__).parent / "results" / "controller_scale.json"
RELEASES_KEY = next(k for k in KINDS if k[2] == "stackreleases")
DEPLOYMENTS_KEY = next(k for k in KINDS if k[2] == "deployments")


class ConstantMetrics:
    """Healthy traffic split as the release's weight says (a cheap stand-in for Prometheus; it reads the
    weight from the emulator's memory, so it adds no API requests to the counts)."""

    def __init__(self, run: RunningEmulator) -> None:
        self.run = run

    def window(self, query: MetricsQuery, start: float, end: float) -> WindowCounts:
        release = self.run.store.list(RELEASES_KEY, query.namespace, None)[0][0]
        weight = ReleaseStatus.from_storage(release.get("status")).canary_weight
        total = int(20 * (end - start))
        canary = total * weight // 100
        shape = [0, 0, 0, 1, 10, 60, 25, 3, 1] + [0] * (len(ISTIO_BUCKETS_MS) - 9)

        def counts(total: int) -> VersionCounts:
            buckets = [total * s // 100 for s in shape]
            buckets[5] += total - sum(buckets)
            return VersionCounts(total, total // 200, tuple(buckets))
        data = {(s, v): counts(total - canary if v == query.versions[0] else canary)
                for s in query.services for v in query.versions}
        return WindowCounts(start, end, data)


def seed(run: RunningEmulator, releases: int, hold: bool) -> None:
    """Deployments and releases written straight into the emulator's store (setup is not measured)."""
    store = run.store
    for i in range(releases):
        ns = f"team-{i:04d}"
        for service in SERVICES:
            store.create(DEPLOYMENTS_KEY, ns, stable_deployment(service, namespace=ns))
        body = release_body(name="search-v2", namespace=ns, strategy={"canary": {
            "steps": [{"weight": 10}, {"weight": 50}], "interval": f"{INTERVAL:g}s",
            "minCanaryRequests": 10**9 if hold else 0, "stepDeadline": "100h"}})
        store.create(RELEASES_KEY, ns, body)


def phases(run: RunningEmulator) -> dict[str, int]:
    counts: dict[str, int] = {}
    for obj in run.store.list(RELEASES_KEY, None, None)[0]:
        phase = ReleaseStatus.from_storage(obj.get("status")).phase.value
        counts[phase] = counts.get(phase, 0) + 1
    return counts


def _expect(run: RunningEmulator, phase: Phase, releases: int) -> None:
    found = phases(run)
    if found.get(phase.value, 0) != releases:
        raise SystemExit(f"expected {releases} releases {phase.value}, found {found}: the measurement is void")


class Driver:
    def __init__(self, run: RunningEmulator, controller: Controller, clock: FakeClock) -> None:
        self.run, self.controller, self.clock = run, controller, clock
        self.latencies: list[float] = []

    def tick_all_due(self) -> int:
        done = 0
        while (key := self.controller.queue.pop_due()) is not None:
            started = time.perf_counter()
            try:
                self.controller.reconcile(key)
            finally:
                self.controller.queue.done(key)
            self.latencies.append(time.perf_counter() - started)
            done += 1
        return done

    def advance(self, seconds: float) -> int:
        """Run every tick due within the next `seconds` of cluster time, in order."""
        end = self.clock.t + seconds
        ticks = self.tick_all_due()
        while (nxt := self.controller.queue.next_due()) is not None and nxt <= end:
            self.clock.t = max(self.clock.t, nxt)
            ticks += self.tick_all_due()
        self.clock.t = end
        return ticks

    def until(self, phase: Phase, limit: float = 3600.0) -> None:
        waited = 0.0
        while phases(self.run).get(phase.value, 0) < len(self.controller.cache) and waited < limit:
            self.advance(5.0)
            waited += 5.0

    def measure(self, kind: str, releases: int, rounds: int, resync: bool) -> list[dict[str, Any]]:
        rows = []
        emulator = self.run.emulator
        for r in range(rounds):
            self.latencies = []
            requests, writes = emulator.requests_total(), emulator.writes()
            cpu = time.thread_time()
            wall = time.perf_counter()
            if resync:
                self.controller.resync()
            ticks = self.advance(INTERVAL)
            cpu = time.thread_time() - cpu
            wall = time.perf_counter() - wall
            lat = sorted(self.latencies) or [0.0]
            rows.append({
                "kind": kind, "releases": releases, "round": r, "ticks": ticks,
                "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                "cpu_ms_per_tick": round(1000 * cpu / max(1, ticks), 2),
                "api_requests": emulator.requests_total() - requests, "api_writes": emulator.writes() - writes,
                "tick_p50_ms": round(1000 * statistics.median(lat), 2),
                "tick_p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2),
                "core_share_at_30s": round(cpu / INTERVAL, 3),
            })
        return rows


def bench(releases: int, rounds: int) -> list[dict[str, Any]]:
    run = start_emulator()
    try:
        seed(run, releases, hold=True)
        clock = FakeClock()
        api = KubeApi.for_url(run.url)
        controller = Controller(api, ControllerConfig(resync_period=INTERVAL), ConstantMetrics(run), clock)
        driver = Driver(run, controller, clock)
        controller.relist()
        driver.until(Phase.PROGRESSING)
        driver.advance(INTERVAL)  # settle into the rhythm of analyses
        rows = driver.measure("analysing", releases, rounds, resync=False)
        _expect(run, Phase.PROGRESSING, releases)
        for ns, name in list(controller.cache):  # let every release pass and promote
            api.patch(RELEASES, ns, name, {"spec": {"strategy": {"canary": {"minCanaryRequests": 0}}}})
        controller.relist()
        driver.until(Phase.SUCCEEDED)
        driver.advance(INTERVAL)
        rows += driver.measure("steady", releases, rounds, resync=True)
        _expect(run, Phase.SUCCEEDED, releases)
        return rows
    finally:
        run.stop()


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["kind", "releases", "round", "ticks", "api_requests", "api_writes", "cpu_s", "cpu_ms_per_tick",
            "core_share_at_30s", "tick_p50_ms", "tick_p99_ms", "wall_s"]
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    lines += [" | ".join(str(row[c]) for c in cols) for row in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--releases", default="10,100,500")
    p.add_argument("--intervals", type=int, default=2, help="measured rounds of each kind")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rows: list[dict[str, Any]] = []
    for n in (int(x) for x in args.releases.split(",")):
        started = time.perf_counter()
        rows += bench(n, args.intervals)
        print(f"# {n} releases: {time.perf_counter() - started:.0f}s including setup", flush=True)
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
