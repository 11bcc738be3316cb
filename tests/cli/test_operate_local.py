"""The operator's commands against a local release (a state directory), and the release acting on them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.local.state import StateDir
from controller.cli.main import main
from controller.core.operations import merge_patch
from controller.core.status import (
    Condition,
    DecisionRecord,
    Phase,
    ReleasedVersions,
    ReleaseStatus,
    RevisionRecord,
)
from controller.reconciler import Ports, Reconciler
from demo.harness import demo_release
from tests.support.fakes import FakeClock, FakeMetrics, FakeRouter, FakeWorkloads, ListNotifier, VersionModel

SERVICES = ("master-search", "ml-infer", "ml-search", "keyword", "text-search")
IMAGES_V2 = {s: f"reg/{s}:2" for s in SERVICES}
V1_V2 = ReleasedVersions("v1", "v2", {}, IMAGES_V2)


def release() -> dict[str, Any]:
    r = demo_release(10)
    r["spec"]["canary"]["images"] = dict(IMAGES_V2)
    return r


def state_with(tmp_path: Path, status: ReleaseStatus, **spec: Any) -> StateDir:
    state = StateDir(tmp_path / "state")
    r = release()
    r["spec"].update(spec)
    state.save_release(r)
    state.save_status(status)
    return state


def run(tmp_path: Path, *argv: str) -> int:
    return main([*argv, "--workdir", str(tmp_path)])


PROGRESSING = ReleaseStatus(phase=Phase.PROGRESSING, observed_generation=1, step=0, canary_weight=10,
                            started_at=1.0, versions=V1_V2)
GATE = replace(PROGRESSING, phase=Phase.PAUSED, step=2, canary_weight=50).with_condition(
    "Paused", "True", "AwaitingPromotion", "manual gate", 5.0)


@pytest.mark.parametrize("command,status,spec,patched", [
    (["pause"], PROGRESSING, {}, {"paused": True}),
    (["resume"], replace(PROGRESSING, phase=Phase.PAUSED), {"paused": True}, {"paused": False}),
    (["promote"], PROGRESSING, {}, {"skipStep": 1}),
    (["promote"], GATE, {}, {"approvePromotion": True}),
    (["promote"], replace(PROGRESSING, phase=Phase.PAUSED), {"paused": True}, {"paused": False}),
    (["promote", "--full"], PROGRESSING, {}, {"promoteFull": True}),
    (["approve"], GATE, {}, {"approvePromotion": True}),
    (["abort"], PROGRESSING, {}, {"abort": True}),
    (["retry"], replace(PROGRESSING, phase=Phase.ABORTED), {"abort": True},
     {"abort": False, "retry": 1, "paused": False, "promoteFull": False, "approvePromotion": False,
      "skipStep": 0}),
])
def test_each_command_patches_the_spec_and_bumps_the_generation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], status: ReleaseStatus,
        spec: dict[str, Any], patched: dict[str, Any]) -> None:
    state = state_with(tmp_path, status, **spec)
    before = state.load_release()
    assert run(tmp_path, *command) == 0, capsys.readouterr().err
    after = state.load_release()
    assert after["spec"] == merge_patch(before["spec"], patched)
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("command,status,spec,message", [
    (["pause"], replace(PROGRESSING, phase=Phase.SUCCEEDED), {}, "already finished (Succeeded): nothing to pause"),
    (["pause"], replace(PROGRESSING, phase=Phase.PROMOTING), {}, "Promoting: too late to pause"),
    (["resume"], PROGRESSING, {}, "is not paused (Progressing)"),
    (["resume"], GATE, {}, "waiting at the manual gate, not paused: `canary promote` approves it"),
    (["promote"], replace(PROGRESSING, phase=Phase.SUCCEEDED), {}, "nothing to promote (`canary undo`"),
    (["promote", "--full"], replace(PROGRESSING, phase=Phase.ROLLING_BACK), {}, "rolling back: it cannot be promoted"),
    (["promote"], replace(PROGRESSING, phase=Phase.INITIALIZING, step=-1), {}, "no step to promote yet"),
    (["abort"], replace(PROGRESSING, phase=Phase.ROLLED_BACK), {}, "nothing to abort (`canary retry` runs it again)"),
    (["retry"], replace(PROGRESSING, phase=Phase.SUCCEEDED), {}, "succeeded: nothing to retry (`canary undo`"),
    (["retry"], PROGRESSING, {}, "in flight (Progressing): retry applies once it has rolled back"),
    (["undo"], PROGRESSING, {}, "in flight (Progressing): use `canary abort` to roll it back"),
    (["undo"], replace(PROGRESSING, phase=Phase.ROLLED_BACK), {}, "no earlier successful version to go back to"),
    (["promote", "--full"], replace(GATE, conditions=(Condition("Paused", "True", "AwaitingConfirmation", "hooks",
                                                                1.0),)), {},
     "waiting at a gate that is not the operator's (AwaitingConfirmation: hooks)"),
    # An abort not yet carried out comes first: nothing else may look as if it worked.
    (["promote", "--full"], PROGRESSING, {"abort": True}, "is being aborted (an abort is pending): it rolls back, "
                                                          "so there is nothing to promote"),
    (["promote"], GATE, {"abort": True}, "is being aborted"),
    (["approve"], GATE, {"abort": True}, "is being aborted"),
    (["pause"], PROGRESSING, {"abort": True}, "nothing to pause"),
    (["resume"], replace(PROGRESSING, phase=Phase.PAUSED), {"abort": True, "paused": True}, "nothing to resume"),
    # An experiment has no step whose analysis `promote` could skip: the machine would ignore a skipStep.
    (["promote"], PROGRESSING, {"strategy": {"abTest": {"onEnd": "waitForOperator"}}},
     "search-v2 is running an A/B experiment: it has no step to skip, it looks until a variant wins or maxDuration "
     "(`canary promote --full` promotes v2 now, ending the experiment; `canary abort` keeps v1)"),
])
def test_commands_that_do_not_apply_say_why_and_change_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], status: ReleaseStatus,
        spec: dict[str, Any], message: str) -> None:
    state = state_with(tmp_path, status, **spec)
    before = state.load_release()
    assert run(tmp_path, *command) == 2
    assert message in capsys.readouterr().err
    assert state.load_release() == before


def test_aborting_a_release_being_aborted_is_done_already(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    state = state_with(tmp_path, PROGRESSING, abort=True)
    assert run(tmp_path, "abort") == 0
    assert "already being aborted" in capsys.readouterr().out
    assert state.load_release()["metadata"]["generation"] == 1


def test_pausing_a_paused_release_is_done_already(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = state_with(tmp_path, replace(PROGRESSING, phase=Phase.PAUSED), paused=True)
    assert run(tmp_path, "pause") == 0
    assert "already paused" in capsys.readouterr().out
    assert state.load_release()["metadata"]["generation"] == 1


def test_undo_swaps_in_the_previous_successful_version_and_drops_the_newer_images(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = replace(PROGRESSING, phase=Phase.SUCCEEDED, finished_at=9.0)
    state = state_with(tmp_path, done, promoteFull=True)
    assert run(tmp_path, "undo") == 0
    spec = state.load_release()["spec"]
    assert spec["stable"] == {"version": "v2", "images": IMAGES_V2}
    # v1's images were not recorded: no image (the Deployments of v1 are there), the services v2 changed.
    assert spec["canary"] == {"version": "v1", "images": {}, "services": list(SERVICES)}
    assert spec["promoteFull"] is False and spec["abort"] is False
    assert "revision 2 of search-v2 releases v1 again in place of v2" in capsys.readouterr().out


def _rows(status: ReleaseStatus) -> ReleaseStatus:
    history = (DecisionRecord(100.0, 60.0, 0, 10, "pass", "all checks pass", "next step",
                              ({"service": "ml-infer", "check": "errorRate", "eValue": 0.8, "threshold": 400.0,
                                "verdict": "pass", "estimates": {"safety": {"shown": True, "bound": 1.2,
                                                                            "margin": 1.5, "on": "ratio"}}},
                               {"service": "ml-infer", "check": "latencyShift", "eValue": 2.5, "threshold": 400.0,
                                "verdict": "pass", "estimates": {"safety": {"shown": True, "bound": 0.04,
                                                                            "margin": 0.1, "on": "delta"}}}),
                              {"ml-infer": {"baseline": {"requests": 900, "errors": 9},
                                            "canary": {"requests": 100, "errors": 0}}}),)
    archived = (RevisionRecord(1, 1, ReleasedVersions("v0", "v1", {}, {"ml-infer": "reg/ml-infer:1"}), "Succeeded",
                               1.0, 50.0, 40.0, 10.0, "promoted v1"),)
    return replace(status, history=history, revision=2, revisions=archived)


def test_get_and_history_of_a_local_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state_with(tmp_path, _rows(PROGRESSING))
    assert run(tmp_path, "get") == 0
    out = capsys.readouterr().out
    assert "search-v2: Progressing" in out and "revision 2 (attempt 1): v1 -> v2" in out
    # Each check as the rule uses it: its harm e-value (a term of the sum), its safety bound against the margin.
    assert "errorRate e=0.8 bound 1.2<1.5 pass" in out
    assert "harm: the regression e-values sum to 3.3, the release fails at 400" in out
    assert "900" in out and "1.0%" in out and "100" in out  # per-version requests and error rates
    assert run(tmp_path, "history") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["REVISION", "ATTEMPT", "STABLE"]
    assert lines[1].split()[:6] == ["1", "1", "v0", "->", "v1", "Succeeded"] and lines[1].endswith("30s")
    assert "images: ml-infer=reg/ml-infer:1" in lines[2]
    assert any(line.split()[:6] == ["2", "1", "v1", "->", "v2", "Progressing"] for line in lines)
    assert run(tmp_path, "history", "--json") == 0
    assert [r["revision"] for r in json.loads(capsys.readouterr().out)] == [1, 2]


def test_list_is_for_a_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state_with(tmp_path, PROGRESSING)
    assert run(tmp_path, "list") == 2
    assert "canary get --workdir" in capsys.readouterr().err


def test_a_local_retry_and_undo_are_carried_out_by_the_next_run(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """What `canary run --workdir DIR` does after the commands: tick the release in the state directory."""
    state = StateDir(tmp_path / "state")
    r = release()
    r["spec"]["strategy"]["canary"].update(interval="60s", minCanaryRequests=100)
    state.save_release(r)
    clock = FakeClock()
    workloads = FakeWorkloads(running={(s, "v1") for s in SERVICES})
    router = FakeRouter()
    metrics = FakeMetrics(router, rps=50.0, models={"v2": VersionModel(error_rate=0.3)})
    reconciler = Reconciler(Ports(workloads, router, metrics, clock, ListNotifier()))

    def drive() -> ReleaseStatus:
        for _ in range(500):
            result = reconciler.tick(state.load_release(), state.load_status(), state.save_status)
            if result.requeue_after is None:
                break
            clock.sleep(result.requeue_after)
        return state.load_status()

    assert drive().phase is Phase.ROLLED_BACK
    assert run(tmp_path, "undo") == 2  # nothing succeeded yet
    metrics.models.clear()  # the fault is fixed
    assert run(tmp_path, "retry") == 0
    assert "restarts when it runs again" in capsys.readouterr().out
    retried = drive()
    assert retried.phase is Phase.SUCCEEDED and (retried.revision, retried.attempt) == (1, 2)
    assert run(tmp_path, "undo") == 0
    undone = drive()
    assert undone.phase is Phase.SUCCEEDED and undone.revision == 2
    assert undone.versions == ReleasedVersions("v2", "v1", IMAGES_V2, {})
    assert {(s, "v1") for s in SERVICES} <= workloads.running
    assert not any(v == "v2" for _, v in workloads.running)
    assert run(tmp_path, "history") == 0
    outcomes = [line.split()[5] for line in capsys.readouterr().out.splitlines()
                if line[:1].isdigit()]
    assert outcomes == ["RolledBack", "Succeeded", "Succeeded"]


def test_the_work_directorys_spec_is_the_one_a_resumed_run_uses(tmp_path: Path) -> None:
    from controller.cli.local import _resumed_release

    state = state_with(tmp_path, PROGRESSING, retry=3)
    assert _resumed_release(tmp_path, release())["spec"]["retry"] == 3
    other = release()
    other["metadata"]["name"] = "another"
    assert _resumed_release(tmp_path, other) is other
    assert _resumed_release(None, other) is other
    assert state.exists()


def test_a_local_get_watch_prints_each_change_until_it_finishes(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    state = state_with(tmp_path, PROGRESSING)
    done: list[int] = []
    follower = threading.Thread(target=lambda: done.append(
        main(["get", "--workdir", str(tmp_path), "--watch", "--max-seconds", "10"])))
    follower.start()
    for status in (replace(PROGRESSING, step=1, canary_weight=25, message="analysing step 2 at 25%"),
                   replace(PROGRESSING, phase=Phase.SUCCEEDED, message="promoted v2",
                           conditions=(Condition("SpecValid", "True", "Valid", "", 1.0),))):
        threading.Event().wait(0.7)
        state.save_status(status)
    follower.join(timeout=15)
    assert done == [0]
    out = capsys.readouterr().out
    assert out.index("step 2/3: 25% of traffic") < out.index("Progressing -> Succeeded: promoted v2")


def test_approving_an_experiment_in_advance_says_it_promotes_the_canary_whatever_wins(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state_with(tmp_path, PROGRESSING, strategy={"abTest": {"onEnd": "waitForOperator"}})
    assert run(tmp_path, "approve") == 0
    assert capsys.readouterr().out.strip() == (
        "approved in advance: search-v2 promotes v2 as soon as its experiment ends, whichever variant wins or if "
        "none does (`canary abort` keeps v1)")


def test_undoing_an_experiment_says_it_runs_an_experiment_again_not_canary_steps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The undo keeps the spec's strategy: an A/B release's undo is an experiment with the serving version as the
    control (controller.core.spec.experiment: the control is spec.stable)."""
    done = replace(PROGRESSING, phase=Phase.SUCCEEDED, finished_at=9.0)
    state = state_with(tmp_path, done, strategy={"abTest": {"onEnd": "waitForOperator", "control": "v1"}})
    assert run(tmp_path, "undo") == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "undo: revision 2 of search-v2 releases v1 again in place of v2, by an A/B experiment (v2 now the control, "
        "as spec.strategy.abTest says)")
    # A control given in the spec follows the stable version: else the undone spec would not parse.
    assert state.load_release()["spec"]["strategy"]["abTest"] == {"onEnd": "waitForOperator", "control": "v2"}


def test_pausing_an_experiment_says_what_a_pause_keeps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state_with(tmp_path, PROGRESSING, strategy={"abTest": {"onEnd": "waitForOperator"}})
    assert run(tmp_path, "pause") == 0
    assert capsys.readouterr().out.strip() == (
        "pausing search-v2: its experiment takes no look until `canary resume`; its routes stay (users keep their "
        "variants, new users are still assigned) and the pause counts towards maxDuration")


@pytest.mark.parametrize("decisions", [1, 300])
def test_a_reader_that_goes_away_stops_the_output_without_a_traceback(tmp_path: Path, decisions: int) -> None:
    """`canary history --workdir W | head -1`: the pipe's reader is gone before the output is written. The command
    stops as a shell tool does (exit 141, as if killed by SIGPIPE) and says nothing on stderr, with more output
    than a pipe holds (300 decisions, over 64 KiB) and with a few lines (1)."""
    import subprocess
    import sys

    history = PROGRESSING
    for i in range(decisions):
        history = history.with_decision(DecisionRecord(at=10.0 + i, t=float(i), step=0, weight=10, verdict="pass",
                                                       reason="x" * 200, action="wait", checks=(), counts={}))
    state_with(tmp_path, history)
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "history", "--workdir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before the command has written anything
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert (proc.wait(timeout=60), err) == (141, "")
