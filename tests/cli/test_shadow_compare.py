"""`canary shadow-compare`: two running versions of the search stack asked the same searches, their rankings
judged by the shadow judge; against stand-in answers, and against the real search stack with degraded rankings."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from analysis.shadow_replay import main as analyze_shadow
from controller.adapters.local.processes import ProcessGroup, free_port, start_search_service
from controller.cli import shadow
from controller.cli.shadow import main

TOP = [f"d{i}" for i in range(10)]
INNER = ("ml-infer", "ml-search", "keyword", "text-search")


def stand_in(new: list[str], failing: str | None = None) -> httpx.MockTransport:
    """Stable answers TOP; the new version answers `new`; `failing` ("stable" or "new") answers 503."""
    def handle(request: httpx.Request) -> httpx.Response:
        side = "new" if request.url.host == "new" else "stable"
        assert request.url.path == "/master-service/search" and json.loads(request.content)["text"]
        if side == failing:
            return httpx.Response(503)
        ids = TOP if side == "stable" else new
        return httpx.Response(200, json={d: 1.0 - i / 100 for i, d in enumerate(ids)})
    return httpx.MockTransport(handle)


def searches(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "searches.txt"
    lines = [f"query number {i}" if i % 2 else json.dumps({"text": f"query {i}", "n_results": 10, "random_seed": 1})
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(argv: list[str], transport: httpx.BaseTransport | None = None) -> tuple[int, list[dict[str, object]], str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err, transport=transport)
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def test_the_same_rankings_pass_and_other_rankings_fail_and_the_pairs_replay(tmp_path: Path) -> None:
    base = ["--stable", "http://stable", "--new", "http://new", "--searches", str(searches(tmp_path, 200))]
    code, looks, err = run([*base, "--out", str(tmp_path / "same.jsonl")], stand_in(TOP))
    assert (code, err) == (0, "") and looks[-1]["decision"] == "pass"
    code, looks, _ = run([*base, "--out", str(tmp_path / "other.jsonl")], stand_in([*TOP[:4], *"uvwxyz"]))
    assert code == 1 and looks[-1]["decision"] == "fail" and looks[-1]["searches"] < 200  # stopped at the decision
    # The pairs file is what `canary analyze --shadow` judges, with the same verdict at the same look.
    out = io.StringIO()
    assert analyze_shadow(["--shadow", str(tmp_path / "other.jsonl")], stdout=out) == 0
    assert json.loads(out.getvalue().splitlines()[-1])["decision"] == "fail"


def test_unanswered_searches_are_counted_not_paired_and_running_out_is_undecided(tmp_path: Path) -> None:
    argv = ["--stable", "http://stable", "--new", "http://new", "--searches", str(searches(tmp_path, 30))]
    code, looks, err = run(argv, stand_in(TOP, failing="new"))
    assert code == 4 and looks[-1]["unanswered"] == {"stable": 0, "new": 30} and looks[-1]["pairs"] == 0
    assert looks[-1]["latencyMs"]["new"] is None and looks[-1]["latencyMs"]["stable"] is not None
    # The first failure is said with its reason, once, and that nothing was compared.
    assert err.splitlines() == [
        "canary shadow-compare: search 1 not answered by new: HTTP 503 (further failures are counted in "
        "`unanswered`)",
        "canary shadow-compare: no search was answered by both versions, so nothing was compared (the reasons are "
        "above)"]
    flaky = iter(range(10**6))
    code, looks, err = run(argv, httpx.MockTransport(lambda request: stand_in(TOP, failing="new" if next(flaky) % 6 == 5
                                                                              else None).handle_request(request)))
    assert code == 3 and looks[-1]["pairs"] > 0 and looks[-1]["unanswered"]["new"] > 0, looks[-1]
    assert err.count("not answered by new") == 1 and "nothing was compared" not in err


def test_a_stack_that_refuses_connections_is_named(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, looks, err = run(["--stable", closed, "--new", closed, "--searches", str(searches(tmp_path, 3)),
                            "--timeout", "2"])
    assert code == 4 and looks[-1]["unanswered"] == {"stable": 3, "new": 0}
    assert "search 1 not answered by stable: ConnectError" in err, err


@pytest.mark.parametrize(("argv", "message"), [
    (["--stable", "notaurl", "--new", "http://n"], "--stable 'notaurl': not an http(s) URL with a host"),
    (["--stable", "http://s", "--new", "ftp://n"], "--new 'ftp://n': not an http(s) URL"),
    (["--stable", "http://s", "--new", "http://n", "--timeout", "-1"], "--timeout -1: must be a positive number"),
    (["--stable", "http://s", "--new", "http://n", "--min-overlap", "3"], "--min-overlap 3.0 is not in (0, 1]"),
    (["--stable", "http://s", "--new", "http://n", "--alpha", "2"], "--alpha 2.0 is not in (0, 1)"),
])
def test_bad_urls_and_timeouts_are_refused_before_any_search(tmp_path: Path, argv: list[str], message: str) -> None:
    code, looks, err = run([*argv, "--searches", str(searches(tmp_path, 3))])
    assert code == 2 and looks == [] and message in err, err


LANE_BASE = ["--stable", "http://s", "--new", "http://n", "--searches", "searches.txt"]


@pytest.mark.parametrize("bad", ["X-Canary-Lane", "x lane", "-lane"])
def test_a_lane_header_that_is_no_header_name_is_refused_by_the_parser(
        bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Before any search: such a header would fail every request (or be sent as another name than the mesh's)."""
    with pytest.raises(SystemExit) as stopped:
        shadow._parser().parse_args([*LANE_BASE, f"--lane-header={bad}"])
    assert stopped.value.code == 2
    assert f"argument --lane-header: '{bad}' is not a lower-case HTTP header name" in capsys.readouterr().err
    assert shadow._parser().parse_args([*LANE_BASE, "--lane-header="]).lane_header == ""  # '' sends none


def test_a_bad_searches_file_is_refused_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text('fine query\n{"n_results": 3}\n')
    code, looks, err = run(["--stable", "http://s", "--new", "http://n", "--searches", str(bad)])
    assert code == 2 and looks == [] and 'line 2: a search needs its "text"' in err
    code, _, err = run(["--stable", "http://s", "--new", "http://n", "--searches", str(tmp_path / "missing")])
    assert code == 2 and "missing" in err


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Three search stacks: v1, an identical v1b, and v2 whose ml-search ranks with rank_noise 3."""
    entries = {}
    with ProcessGroup(tmp_path_factory.mktemp("shadow-stacks")) as group:
        for version, fault in (("v1", 0.0), ("v1b", 0.0), ("v2", 3.0)):
            urls = {role: f"http://127.0.0.1:{free_port()}" for role in ("master-search", *INNER)}
            for role, url in urls.items():
                faults = {"rank_noise": fault} if role == "ml-search" and fault else None
                start_search_service(group, role, version, int(url.rsplit(":", 1)[1]), "http://127.0.0.1:9", faults,
                                     upstream_urls=urls)
            entries[version] = urls["master-search"]
        group.wait_all_healthy(timeout=60)
        yield entries


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_against_the_real_search_stack_degraded_rankings_are_stopped(stacks: dict[str, str], tmp_path: Path
                                                                     ) -> None:
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(f"graph neural networks {i}" for i in range(200)) + "\n")
    same = ["--stable", stacks["v1"], "--new", stacks["v1b"], "--searches", str(queries)]
    code, looks, err = run(same)
    assert (code, err) == (0, "") and looks[-1]["decision"] == "pass" and looks[-1]["meanOverlap"] == 1.0
    code, looks, _ = run(["--stable", stacks["v1"], "--new", stacks["v2"], "--searches", str(queries)])
    assert code == 1 and looks[-1]["decision"] == "fail", looks[-1]
    assert looks[-1]["unanswered"] == {"stable": 0, "new": 0} and looks[-1]["meanOverlap"] < 0.8
    latency = looks[-1]["latencyMs"]
    assert isinstance(latency, dict) and 0 < latency["new"]["p50"] <= latency["new"]["p90"], latency


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_through_the_local_mesh_each_side_stays_in_its_lane(tmp_path: Path) -> None:
    """Both versions behind the local mesh (Envoy) with the canary's lane routes, the new one's ml-search
    degraded: each entry is asked in its own lane, so v2's master-search is answered by v2's ml-search and the
    change is seen. Without the lane header the mesh sends v2's inner calls to the stable lane's v1 services, and
    the comparison would pass a broken release: the reason the header is sent by default."""
    from controller.adapters.local.platform import LocalRouter
    from controller.adapters.local.stack import LocalStack

    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(f"citation ranking {i}" for i in range(200)) + "\n")
    with LocalStack(tmp_path / "stack", work_ms=0.5, faults={"v2": {"ml-search": {"rank_noise": 3.0}}}) as stack:
        stack.start_version("v1")
        stack.start_version("v2")
        assert stack.admin is not None
        LocalRouter(stack.admin).apply(stack.baseline_plan("v1", "v2", 0))
        entries = {v: f"http://{stack.workloads[('master-search', v)].address}" for v in ("v1", "v2")}
        argv = ["--stable", entries["v1"], "--new", entries["v2"], "--searches", str(queries)]
        code, looks, err = run(argv)
        assert (code, err) == (1, "") and looks[-1]["decision"] == "fail", looks[-1]
        code, looks, _ = run([*argv, "--lane-header", ""])
        assert code == 0 and looks[-1]["meanOverlap"] == 1.0  # v2's entry, v1's rankings: nothing to see
