"""End to end on the local platform: the real search stack behind the local mesh (real Envoy, configured by the
controller's own router adapter through `python -m localmesh.envoy.server`), real load, and the real controller.
Short intervals, bounded load, every process (Envoy included) stopped and checked gone.

Through Envoy: searches keep their lane on every hop; Istio's metrics count exactly what the services served;
the routes Envoy runs are read back from it; a weight change under 40 searches/s fails no request; the lane header
pins a request to v2 of every service; a router restart stops the old Envoy by its PID and serves again."""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.adapters.local.platform import LocalRouter
from controller.adapters.local.stack import SEARCH_SERVICES, LocalStack
from controller.core.plan import RoutingPlan, ServiceVersions
from demo.canary import run_demo
from demo.loadgen import LoadRunner

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUERY = {"text": "graph neural networks for citation ranking", "n_results": 5, "random_seed": 7}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/status").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return "State:\tZ" not in state  # a zombie has exited; only its parent's reaping is left


def all_gone(pids: list[int], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not [p for p in pids if alive(p)]:
            return True
        time.sleep(0.2)
    return False


def envoy_pid(stack: LocalStack) -> int:
    return int(httpx.get(f"{stack.admin_url}/envoy", timeout=10).json()["pid"])


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(tmp_path_factory.mktemp("stack"), work_ms=1.0).start()
    try:
        stack.start_version("v1")
        stack.start_version("v2")
        yield stack
    finally:
        pids = [p.pid for p in stack.group.procs.values()]
        with contextlib.suppress(httpx.HTTPError):
            pids.append(envoy_pid(stack))
        stack.close()
    assert pids and all_gone(pids), "a process (or Envoy) outlived the stack"


def istio_requests(stack: LocalStack, service: str) -> collections.Counter[str]:
    """istio_requests_total of `service` per destination_version, from the router's /metrics (Envoy's counters)."""
    counts: collections.Counter[str] = collections.Counter()
    text = httpx.get(f"{stack.admin_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "istio_requests_total" and sample.labels["destination_service_name"] == service:
                counts[sample.labels["destination_version"]] += int(sample.value)
    return counts


def served_by(response: httpx.Response) -> dict[str, str]:
    return dict(part.split("@") for part in response.headers["x-served-by"].split(","))


def send(stack: LocalStack, n: int) -> list[dict[str, str]]:
    paths = []
    with httpx.Client(base_url=stack.router_url, headers={"host": "master-search"}, timeout=10) as client:
        for i in range(n):
            r = client.post("/master-service/search", json={**QUERY, "random_seed": i})
            assert r.status_code == 200, r.text
            paths.append(served_by(r))
    return paths


# Envoy's counters of requests it could not pass on as asked: timeouts, resets, refusals, retries, no route/cluster.
_TROUBLE = re.compile(r"timeout|reset|with_active_rq|overflow|retry|no_cluster|no_route|no_healthy|connect_fail|"
                      r"_5xx$")


def envoy_trouble(stack: LocalStack, since: dict[str, int] | None = None) -> dict[str, int]:
    """Envoy's trouble counters that are not zero (or, given `since`, those that grew since), from its admin.
    Connections closed for being idle (`*_cx_idle_timeout`) are Envoy's housekeeping, not trouble."""
    admin = httpx.get(f"{stack.admin_url}/envoy", timeout=10).json()["admin"]
    counts = {}
    for line in httpx.get(f"{admin}/stats", timeout=10).text.splitlines():
        name, _, value = line.partition(": ")
        if _TROUBLE.search(name) and "_cx_idle_timeout" not in name and value.isdigit():
            counts[name] = int(value) - (since or {}).get(name, 0)
    return {k: v for k, v in counts.items() if v}


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def apply(stack: LocalStack, plan: RoutingPlan) -> None:
    assert stack.admin is not None
    LocalRouter(stack.admin).apply(plan)


@pytest.mark.realtime
def test_lane_purity_at_50_50_across_every_hop(two_versions: LocalStack) -> None:
    apply(two_versions, two_versions.baseline_plan("v1", "v2", 50))
    before = istio_requests(two_versions, "master-search")
    paths = send(two_versions, 1000)
    mixed = [p for p in paths if len(set(p.values())) != 1]
    assert mixed == []
    assert all(set(p) == set(SEARCH_SERVICES) for p in paths)  # every hop is listed
    canary = sum(1 for p in paths if p["master-search"] == "v2")
    # 50/50 over 1,000 requests: binomial 99.9% bounds are about 448..552.
    assert 448 <= canary <= 552
    # Istio's metric, from Envoy's own counters, counts exactly what each version served.
    after = istio_requests(two_versions, "master-search")
    assert {v: after[v] - before[v] for v in ("v1", "v2")} == {"v1": 1000 - canary, "v2": canary}
    # The routes Envoy runs, read back from its admin interface.
    routes = httpx.get(f"{two_versions.admin_url}/routes", timeout=10).json()["virtual_hosts"]
    entry = next(v for v in routes if "master-search" in v["domains"])
    assert sorted(c["weight"] for r in entry["routes"] for c in r["clusters"]) == [50, 50]


# With the machine to itself (no other test beside it): ten search processes, Envoy and the load generator serving
# 40 searches/s must keep up on two cores for "no request failed" to be about the weight changes. Beside the crash
# campaigns they did not: in CI one search had no answer within 10 s (the generator 50 searches behind its
# schedule), and in two runs of this test beside them here 4 and 43 searches were dropped with 256 waiting. Alone,
# and beside nothing but four CPU-bound processes, it passed every time (4 and 4 runs).
@pytest.mark.realtime(alone=True)
@pytest.mark.timeout(120)
def test_weight_changes_under_40_searches_a_second_fail_no_request(two_versions: LocalStack) -> None:
    """A release's moves applied to Envoy while 40 searches/s flow through the whole stack: every weight step up
    and back, a promotion (every subset re-pointed at v2) and a rollback. Not one request fails or goes
    unanswered, and the weights read back from Envoy are the ones applied."""
    stack = two_versions
    apply(stack, stack.baseline_plan("v1", "v2", 0))
    before = envoy_trouble(stack)
    load = LoadRunner(f"{stack.router_url}/master-service/search", 40.0, 30.0, 1200, host="master-search",
                      timeout_s=10.0).start()
    try:
        moves = [stack.baseline_plan("v1", "v2", w) for w in (10, 25, 50, 100, 50, 10)]
        moves += [stack.baseline_plan("v1", "v2", 100).promoted(), stack.baseline_plan("v1", "v2", 0)]
        assert stack.admin is not None
        router = LocalRouter(stack.admin)
        for i, plan in enumerate(moves, start=1):
            deadline = time.monotonic() + 20
            while load.report().sent < 80 * i:  # each move applied after about 80 more searches went out
                assert time.monotonic() < deadline, load.report()
                time.sleep(0.05)
            apply(stack, plan)
            assert plan.equivalent(router.in_effect())  # read back from Envoy
    finally:
        report = load.stop()
    trouble = envoy_trouble(stack, before)
    told = f"{report.summary()} {dict(report.error_kinds)}; Envoy: {trouble}; {load_average()}"
    assert report.sent >= 600, told
    assert report.errors == 0 and report.dropped == 0, told
    assert dict(report.status_counts) == {200: report.sent}, told
    assert trouble == {}, told  # nothing reset, refused or retried in Envoy either


@pytest.mark.realtime
@pytest.mark.timeout(120)
def test_the_canary_lane_header_reaches_only_v2_of_every_service(two_versions: LocalStack) -> None:
    stack = two_versions
    apply(stack, stack.baseline_plan("v1", "v2", 0))  # the entry sends everything to stable: only the lane pins v2
    with httpx.Client(base_url=stack.router_url, timeout=10) as client:
        for lane, version in (("canary", "v2"), ("stable", "v1"), (None, "v1")):
            headers = {"host": "ml-search", **({"x-canary-lane": lane} if lane else {})}
            for _ in range(30):
                r = client.post("/ml-search/search", json={"text": QUERY["text"], "k": 5}, headers=headers)
                assert r.status_code == 200, r.text
                assert served_by(r) == {"ml-search": version, "ml-infer": version}, (lane, served_by(r))
    assert all(set(p.values()) == {"v1"} for p in send(stack, 30))


@pytest.mark.realtime
@pytest.mark.timeout(120)
def test_a_router_restart_stops_the_old_envoy_and_keeps_routes_and_endpoints(two_versions: LocalStack) -> None:
    stack = two_versions
    apply(stack, stack.baseline_plan("v1", "v2", 100))
    old = envoy_pid(stack)
    stack.restart_router()
    assert all_gone([old]), f"the old Envoy {old} outlived the restart"
    assert alive(envoy_pid(stack)) and envoy_pid(stack) != old
    assert all(set(p.values()) == {"v2"} for p in send(stack, 30))


@pytest.mark.realtime
@pytest.mark.timeout(120)
def test_searches_inside_a_variant_finish_on_it_while_the_experiment_ends(two_versions: LocalStack) -> None:
    """An experiment ends (a rollback's first stage) while eight searches of v2's users wait inside v2's
    master-search: they still call v2 of every service behind it, while a new search of a v2 user goes to v1.
    Envoy's count of requests in flight (`EnvoyInFlight`, what a drain waits on) sees the eight, then none."""
    from concurrent.futures import ThreadPoolExecutor

    from controller.core.plan import ExperimentArm, ExperimentRoutes
    from localmesh.envoy.in_flight import EnvoyInFlight

    stack = two_versions
    mesh = EnvoyInFlight(stack.envoy_admin_target)
    experiment = ExperimentRoutes((ExperimentArm("v1", "v1", 50), ExperimentArm("v2", "v2", 50)))
    running = stack.baseline_plan("v1", "v2", 0).with_experiment(experiment)
    closing = stack.baseline_plan("v1", "v2", 0).with_experiment(experiment.closed_to("v1"))
    apply(stack, running)
    faults = f"http://127.0.0.1:{stack.workloads[('master-search', 'v2')].port}/admin/faults"
    httpx.put(faults, json={"latency_ms": 4000}, timeout=5).raise_for_status()

    def search(seed: int) -> dict[str, str]:
        r = httpx.post(f"{stack.router_url}/master-service/search", json={**QUERY, "random_seed": seed},
                       headers={"host": "master-search", "cookie": "ab=v2"}, timeout=30)
        assert r.status_code == 200, r.text
        return served_by(r)

    try:
        with ThreadPoolExecutor(8) as pool:
            inside = [pool.submit(search, i) for i in range(8)]
            deadline = time.monotonic() + 10
            while mesh.in_flight([("master-search", "v2")]) < 8:
                assert time.monotonic() < deadline, "the searches did not reach v2's master-search"
                time.sleep(0.05)
            assert mesh.in_flight([("master-search", "v2"), ("master-search", "v1"), ("ml-search", "v2")]) == 8
            apply(stack, closing)
            assert closing.equivalent(LocalRouter(stack.admin).in_effect())  # read back from Envoy
            assert set(search(99).values()) == {"v1"}  # a new search of a v2 user: the control
            paths = [f.result() for f in inside]
    finally:
        httpx.put(faults, json={}, timeout=5).raise_for_status()
    assert all(set(p.values()) == {"v2"} and set(p) == set(SEARCH_SERVICES) for p in paths), paths
    assert mesh.in_flight([(s, v) for s in SEARCH_SERVICES for v in ("v1", "v2")]) == 0


def test_services_left_unchanged_serve_both_lanes_from_stable(two_versions: LocalStack) -> None:
    changed = {"ml-search", "keyword"}
    plan = RoutingPlan("local", "master-search",
                       tuple(ServiceVersions(s, "v1", "v2" if s in changed else None) for s in SEARCH_SERVICES),
                       canary_weight=50)
    apply(two_versions, plan)
    paths = send(two_versions, 400)
    lanes = collections.Counter(tuple(sorted(p.items())) for p in paths)
    stable_path = tuple(sorted((s, "v1") for s in SEARCH_SERVICES))
    canary_path = tuple(sorted((s, "v2" if s in changed else "v1") for s in SEARCH_SERVICES))
    assert set(lanes) == {stable_path, canary_path}
    assert 140 <= lanes[canary_path] <= 260


def test_a_rejected_route_change_keeps_the_old_routes(two_versions: LocalStack) -> None:
    from controller.adapters.istio.render import render
    from controller.adapters.local.mesh_admin import RouterConfigRejected

    apply(two_versions, two_versions.baseline_plan("v1"))
    objects = render(two_versions.baseline_plan("v1", "v2", 50))
    objects[-1]["spec"]["http"][0]["route"][0]["destination"]["subset"] = "nonexistent"
    assert two_versions.admin is not None
    with pytest.raises(RouterConfigRejected, match="nonexistent"):
        two_versions.admin.put_config(objects)
    assert all(set(p.values()) == {"v1"} for p in send(two_versions, 50))


def demo(tmp_path: Path, scenario: str, max_seconds: float = 180, shadow: bool = False) -> dict[str, Any]:
    return run_demo(scenario, rps=40, interval=5, workdir=tmp_path, summary_path=tmp_path / "summary.json",
                    max_seconds=max_seconds, out=io.StringIO(), shadow=shadow)


def stack_pids(tmp_path: Path) -> list[int]:
    """PIDs of every process the demo started, from the pid lines the process group logged."""
    return [int(line.split()[1]) for line in (tmp_path / "stack" / "logs" / "pids.txt").read_text().splitlines()]


# Alone among the real-time tests: a healthy release is promoted on evidence that every check is within its margin,
# and with a crash campaign or another demo beside it on two cores an identical v2 was measured with a slow tail
# twice the stable's (held at 50%, once rolled back).
@pytest.mark.realtime(alone=True)
def test_healthy_release_with_a_shadow_phase_is_promoted(tmp_path: Path) -> None:
    # Promotion waits for every check's safety bound: the whole test took 75-246 s in six runs alone on this 2-core
    # machine (61 s on CI's), most of it at 50% waiting for the slow-tail checks' bounds, so the run gets 420 s,
    # not the 180 s a rollback needs at most. The shadow phase before it (docs/shadow.md) passes in seconds: v2
    # ranks as v1 does.
    result = demo(tmp_path, "healthy", max_seconds=420, shadow=True)
    assert result["outcome"] == "promoted", result["message"]
    assert result["last_verdict"] == "pass"  # promoted on evidence: every check shown within its margin
    shadow = result["shadow"]
    assert shadow["verdict"] == "pass" and shadow["pairs"] >= 20 and shadow["foreign_pairs"] == 0, shadow
    assert shadow["mean_overlap"] == shadow["mean_noise_overlap"] == 1.0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data_plane"] == "envoy" and summary["envoy_version"].count(".") == 2
    assert summary["metrics_source"] == "prometheus"  # scraping Envoy's statistics, relabelled
    assert result["mixed_version_responses"] == 0, result["mixed_examples"]
    assert result["responses"] > 500 and result["canary_requests"] > 100
    load = result["load"]
    # Every answer was a 200. A request with no answer at all is counted apart: only a client timeout (a machine
    # whose cores the suite keeps busy) may cause one, and rarely; a refused or cut connection would be the mesh's.
    assert load["status_counts"] == {"200": load["completed"]}
    assert load["completed"] + load["errors"] == result["responses"]
    assert set(load["error_kinds"]) <= {"ReadTimeout", "WriteTimeout", "PoolTimeout"}, load["error_kinds"]
    assert load["errors"] <= 0.01 * result["responses"], load["error_kinds"]
    assert Path(result["report"]).read_text().lstrip().lower().startswith("<!doctype html")
    assert not [p for p in stack_pids(tmp_path) if alive(p)]


@pytest.mark.realtime
def test_degraded_rankings_are_stopped_in_the_shadow_phase_before_any_user_sees_them(tmp_path: Path) -> None:
    """`canary demo --scenario shadow-broken`: v2's ml-search ranks with noise (as fast, no errors); the shadow
    phase compares mirrored searches' rankings and ends the release with no user request served by v2."""
    result = demo(tmp_path, "shadow-broken")
    assert result["outcome"] == "rolled_back" and "shadow" in result["message"], result["message"]
    assert result["canary_requests"] == 0 and result["canary_requests_analysed"] == 0
    assert result["responses"] > 100 and result["mixed_version_responses"] == 0, result["mixed_examples"]
    shadow = json.loads((tmp_path / "summary.json").read_text())["shadow"]
    assert shadow["verdict"] == "fail" and shadow["pairs"] >= 20 and shadow["foreign_pairs"] == 0, shadow
    low, high = shadow["difference_bounds"]
    assert shadow["margin"] < low <= shadow["difference"] <= high
    assert shadow["mean_overlap"] < 0.5 and shadow["mean_noise_overlap"] == 1.0
    low, high = shadow["mean_overlap_bounds"]
    assert low <= shadow["mean_overlap"] <= high < 0.8
    assert result["final_routes"] == {"canary_weight": 0, "services": {
        s: {"stable": "v1", "canary": None} for s in SEARCH_SERVICES}}, result["final_routes"]
    assert not [p for p in stack_pids(tmp_path) if alive(p)]


@pytest.mark.realtime
def test_errors_are_rolled_back_fast(tmp_path: Path) -> None:
    result = demo(tmp_path, "errors")
    assert result["outcome"] == "rolled_back", result["message"]
    assert "errorRate" in result["message"]
    # Decided on the first few dozen canary requests (60 in three 5 s windows on an idle machine: 30% of them
    # fail), and the 0% canary weight read back right after. The measure is requests, not seconds: a machine
    # whose cores the suite keeps busy sends fewer requests a window, and a window without a decision moves the
    # release to its next step, whose first window starts after the new weight is read back (measured beside two
    # spinning loops: 3 windows, decided 24.4 s after the first canary request). The time to decide is
    # `python -m bench.demo`'s to measure; here, that the canary is taken off as soon as it is decided.
    assert result["canary_requests_analysed"] <= 120, (result["canary_requests_analysed"], result["analyses"])
    timing = {k: result[k] for k in ("rollback_seconds", "decision_seconds", "analyses", "canary_requests_analysed")}
    assert result["rollback_seconds"] is not None and result["decision_seconds"] is not None, timing
    assert result["rollback_seconds"] - result["decision_seconds"] < 5.0, timing
    assert result["mixed_version_responses"] == 0, result["mixed_examples"]
    assert not [p for p in stack_pids(tmp_path) if alive(p)]


@pytest.mark.realtime
def test_slow_version_is_rolled_back(tmp_path: Path) -> None:
    result = demo(tmp_path, "slow")
    assert result["outcome"] == "rolled_back", result["message"]
    assert "latencyShift" in result["message"] or "slowTail" in result["message"]


@pytest.mark.realtime
def test_a_slow_canary_is_rolled_back_without_mixing_the_searches_it_still_holds(tmp_path: Path) -> None:
    """v2's master-search answers in 2.5 s and `drainTime` is 1 s: when the rollback's first stage takes effect,
    v2 still holds searches that entered before it. The cutover waits until Envoy counts none in flight on v2's
    workloads (`EnvoyInFlight`), so none of them finishes its later hops on v1."""
    from demo.canary import run_local
    from demo.harness import demo_release

    release = demo_release(5.0)
    release["spec"]["drainTime"] = "1s"
    result = run_local(release, {"v2": {"master-search": {"latency_ms": 2500.0}}}, rps=40, workdir=tmp_path,
                       summary_path=tmp_path / "summary.json", max_seconds=150, out=io.StringIO())
    assert result["outcome"] == "rolled_back", result["message"]
    assert result["canary_requests"] > 0
    assert result["mixed_version_responses"] == 0, result["mixed_examples"]


def test_stack_up_serves_then_stops_every_process_on_sigterm(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    argv = [sys.executable, "-m", "controller.cli.main", "stack", "up", "--versions", "v1,v2", "--weight", "50",
            "--workdir", str(tmp_path)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            lines: list[str] = []
            deadline = time.monotonic() + 90
            assert proc.stdout is not None
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
                if "Ctrl-C stops everything" in line:
                    break
            router = next(line.split()[2] for line in lines if line.startswith("mesh router:"))
            r = httpx.post(f"{router}/master-service/search", json=QUERY, headers={"host": "master-search"},
                           timeout=10)
            assert r.status_code == 200 and len(r.json()) == 5
            pids = [int(line.split()[1]) for line in (tmp_path / "logs" / "pids.txt").read_text().splitlines()]
            assert len(pids) == 11  # the router and five services in each of two versions
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not [p for p in pids if alive(p)]


@pytest.mark.realtime
def test_run_command_releases_two_of_five_services_from_a_file(tmp_path: Path) -> None:
    import yaml

    from controller.cli.main import main

    release = yaml.safe_load(Path("examples/release-local.yaml").read_text())
    release["spec"]["strategy"]["canary"].update(interval="4s", settle="3s", stepDeadline="24s")
    f = tmp_path / "release.yaml"
    f.write_text(yaml.safe_dump(release))
    code = main(["run", "-f", str(f), "--local", "--rps", "30", "--workdir", str(tmp_path / "work"),
                 "--summary", str(tmp_path / "summary.json"), "--fault", "keyword:error_rate=0.5",
                 "--max-seconds", "120"])
    assert code == 0
    result = json.loads((tmp_path / "summary.json").read_text())
    assert result["outcome"] == "rolled_back", result["message"]
    assert "keyword" in result["message"]
    assert result["mixed_version_responses"] == 0


@pytest.mark.realtime
def test_a_killed_local_release_resumes_from_its_state_and_finishes(tmp_path: Path) -> None:
    import yaml

    from controller.adapters.local.state import StateDir
    from controller.cli.main import main
    from controller.core.status import Phase

    release = yaml.safe_load(Path("examples/release-local.yaml").read_text())
    release["spec"]["strategy"]["canary"].update(interval="4s", settle="3s", stepDeadline="24s")
    f = tmp_path / "release.yaml"
    f.write_text(yaml.safe_dump(release))
    work = tmp_path / "work"
    argv = ["run", "-f", str(f), "--local", "--rps", "30", "--workdir", str(work), "--max-seconds", "150"]
    state = StateDir(work / "state")
    before = _run_until(argv, state, lambda status: status.step >= 1)
    assert before.phase is Phase.PROGRESSING and before.step >= 1
    first_run = [int(line.split()[1]) for line in (work / "stack" / "logs" / "pids.txt").read_text().splitlines()]
    # Their parent-death signal (SIGTERM) makes them shut down on their own.
    assert all_gone(first_run), "children outlived a SIGKILLed controller"

    assert main([*argv, "--summary", str(tmp_path / "summary.json")]) == 0
    result = json.loads((tmp_path / "summary.json").read_text())
    after = state.load_status()
    assert result["outcome"] == "promoted", result["message"]
    assert after.started_at == before.started_at  # the same release, continued, not restarted
    assert [h.at for h in after.history][: len(before.history)] == [h.at for h in before.history]
    assert len(after.history) > len(before.history)


def _run_until(argv: list[str], state: Any, ready: Any, within: float = 90) -> Any:
    """`canary run` in a process, SIGKILLed (no teardown, no final status write) once its status satisfies
    `ready`; the status it had then."""
    import signal
    import subprocess
    import sys
    with subprocess.Popen([sys.executable, "-m", "controller.cli.main", *argv],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not (state.status_path.exists() and ready(state.load_status())):
            time.sleep(0.1)
        before = state.load_status()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    return before


@pytest.mark.realtime
def test_a_release_killed_in_its_shadow_phase_keeps_its_pairs_and_is_stopped_after_resuming(tmp_path: Path) -> None:
    """Killed mid-comparison: the resumed run starts a new comparator (a new epoch, read from its first pair),
    keeps the pairs already judged, and stops the degraded v2 with no user request served by it."""
    import yaml

    from controller.adapters.local.state import StateDir
    from controller.cli.main import main
    from controller.core.status import Phase

    release = yaml.safe_load(Path("examples/release-local.yaml").read_text())
    # Enough pairs that the first run is killed before the judge may decide (30 mirrored searches a second).
    release["spec"]["strategy"]["shadow"] = {"minPairs": 150, "maxDuration": "120s"}
    f = tmp_path / "release.yaml"
    f.write_text(yaml.safe_dump(release))
    work = tmp_path / "work"
    argv = ["run", "-f", str(f), "--local", "--rps", "30", "--workdir", str(work), "--max-seconds", "120",
            "--fault", "ml-search:rank_noise=3"]
    state = StateDir(work / "state")
    before = _run_until(argv, state, lambda s: s.phase is Phase.SHADOWING and (s.shadow or {}).get(
        "state", {}).get("n", 0) >= 20)
    assert before.phase is Phase.SHADOWING and before.shadow is not None, before.message
    assert 20 <= before.shadow["state"]["n"] < 150
    assert main([*argv, "--summary", str(tmp_path / "summary.json")]) == 0
    result = json.loads((tmp_path / "summary.json").read_text())
    after = state.load_status()
    assert result["outcome"] == "rolled_back" and "shadow" in result["message"], result["message"]
    assert after.started_at == before.started_at and after.shadow is not None
    assert after.shadow["epoch"] != before.shadow["epoch"]  # the new comparator, read from its first pair
    assert after.shadow["state"]["n"] >= before.shadow["state"]["n"] + 1
    assert result["canary_requests"] == 0 and result["mixed_version_responses"] == 0
