"""The local commands' inputs: every file they read, --fault, a release's kind, a release's name with --workdir
and a run stopped by --max-seconds are told in plain words naming the file or flag (exit 2 for bad input, 1
when it could not), before anything starts, never as a traceback."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.local.state import StateDir
from controller.cli import local
from controller.cli.main import main
from controller.core.spec.release import parse_release
from controller.core.status import Phase, ReleaseStatus
from demo.harness import demo_release

pytestmark = pytest.mark.timeout(60)
EXAMPLE = Path(__file__).parents[2] / "examples" / "release-local.yaml"


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any check that comes after the local mesh's start fails the test: inputs are checked before it."""
    def started() -> None:
        raise AssertionError("the local platform was started before the input was checked")

    monkeypatch.setattr(local, "require_mesh", started)


def release_file(tmp_path: Path, **top: Any) -> Path:
    release = {**demo_release(10), **top}
    path = tmp_path / "release.yaml"
    path.write_text(yaml.safe_dump(release))
    return path


def run_err(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("content,message", [
    ("metadata:\n  name: x\n spec: {}\n", "not valid YAML: line 3 column 2: expected <block end>"),
    ("metadata: {name: x}\nspec: a: b\n", "not valid YAML: line 2 column 8: mapping values are not allowed here"),
    ("spec: [1, 2\n", "not valid YAML: line 2 column 1"),
    ("metadata: {name: a}\n---\nmetadata: {name: b}\n", "holds 2 YAML documents; a release file holds one"),
    ("spec: !!python/object:os.system {}\n", "line 1 column 7: could not determine a constructor for the tag "
                                           "'tag:yaml.org,2002:python/object:os.system'; a release file is plain"),
    ("- 1\n- 2\n", "holds a list, not a release object"),
    ("", "holds no YAML documents"),
])
def test_a_release_file_that_is_not_one_release_names_the_file_and_the_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], nothing_starts: None, content: str, message: str) -> None:
    f = tmp_path / "release.yaml"
    f.write_text(content)
    code, err = run_err(capsys, "run", "-f", str(f), "--local")
    assert code == 2 and f"canary run: {f}: {message}" in err, err


def test_a_directory_a_binary_or_a_missing_file_as_the_release_file_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], nothing_starts: None) -> None:
    binary = tmp_path / "release.bin"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    for path, message in ((tmp_path, "is a directory"), (binary, "not a text file"),
                          (tmp_path / "nope.yaml", "no such file")):
        code, err = run_err(capsys, "run", "-f", str(path), "--local")
        assert code == 2 and f"canary run: {path}: {message}" in err, err


@pytest.mark.parametrize("top,message", [
    ({"kind": "Deployment"}, "invalid release: kind: 'Deployment' is not StackRelease"),
    ({"apiVersion": "apps/v1"}, "invalid release: apiVersion: 'apps/v1' is not stackcanary.dev/v1alpha1"),
    ({"sepc": {}}, "invalid release: sepc: is not a known field (known: apiVersion, kind, metadata, spec, status)"),
])
def test_a_document_that_is_not_a_stack_release_is_refused_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], nothing_starts: None, top: dict[str, Any],
        message: str) -> None:
    code, err = run_err(capsys, "run", "-f", str(release_file(tmp_path, **top)), "--local")
    assert code == 2 and message in err, err


@pytest.mark.parametrize("fault,message", [
    ("ml-serch:latency_ms=30", "'ml-serch' is not a service of the stack; the services are master-search, ml-infer, "
                               "ml-search, keyword, text-search"),
    ("ml-infer:latency_ms=30", "the release does not change ml-infer; a fault goes into the new version v2, which "
                               "runs ml-search, keyword"),
    ("ml-search:bogus=1", "'bogus' is not a fault knob; the knobs are latency_ms, latency_scale, slow_prob, "
                          "slow_ms, error_rate, rank_noise"),
    ("keyword:error_rate=2", "2 is out of range for error_rate"),
    ("keyword:slow_ms=inf", "'inf' is not a finite number"),
])
def test_a_fault_on_an_unknown_or_unchanged_service_or_knob_is_refused_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], nothing_starts: None, fault: str, message: str) -> None:
    release = yaml.safe_load(EXAMPLE.read_text())
    assert parse_release(release).changed == ("ml-search", "keyword")
    f = tmp_path / "release.yaml"
    f.write_text(yaml.safe_dump(release))
    code, err = run_err(capsys, "run", "-f", str(f), "--local", "--fault", fault)
    assert code == 2 and f"--fault {fault!r}: {message}" in err, err


def test_good_faults_go_to_the_new_versions_changed_services() -> None:
    spec = parse_release(yaml.safe_load(EXAMPLE.read_text()))
    faults = local._parse_faults(["ml-search:latency_ms=30", "keyword:error_rate=0.2"], spec)
    assert faults == {"v2": {"ml-search": {"latency_ms": 30.0}, "keyword": {"error_rate": 0.2}}}


def state_with(workdir: Path, status: str | None = None, release: str | None = None) -> StateDir:
    state = StateDir(workdir / "state")
    state.save_release(demo_release(10))
    state.save_status(ReleaseStatus(phase=Phase.PROGRESSING, step=0, canary_weight=10))
    if status is not None:
        state.status_path.write_text(status)
    if release is not None:
        state.release_path.write_text(release)
    return state


@pytest.mark.parametrize("which,text,message", [
    ("status", "", "not a release status a local run wrote: Expecting value: line 1 column 1"),
    ("status", json.dumps({"phase": "Bogus"}), "not a release status a local run wrote: 'Bogus' is not a valid Phase"),
    ("release", "{nope", "not a release a local run wrote: Expecting property name"),
    ("release", "\udcff", "not a release a local run wrote: 'utf-8' codec can't decode"),
])
@pytest.mark.parametrize("command", ["get", "abort", "report", "run", "demo"])
def test_a_damaged_state_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], nothing_starts: None,
                                       which: str, text: str, message: str, command: str) -> None:
    state = state_with(tmp_path / "w")
    path = state.status_path if which == "status" else state.release_path
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    argv = {"run": ["run", "--local", "-f", str(release_file(tmp_path))], "report": ["report", "-o",
                                                                                     str(tmp_path / "r.html")]}
    code, err = run_err(capsys, *argv.get(command, [command]), "--workdir", str(tmp_path / "w"))
    assert code == 2 and f"canary {command}: {path}: {message}" in err, err


def test_a_name_that_is_not_the_local_releases_is_refused(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    state = state_with(tmp_path)
    before = state.load_release()
    for command in ("get", "status", "history", "abort", "pause"):
        code, err = run_err(capsys, command, "search-v3", "--workdir", str(tmp_path))
        assert code == 1 and f"canary {command}: no release search-v3 in {tmp_path}: it holds search-v2" in err
    assert state.load_release() == before  # nothing patched
    assert main(["get", "search-v2", "--workdir", str(tmp_path)]) == 0
    assert "search-v2" in capsys.readouterr().out


def test_a_run_stopped_by_max_seconds_says_so_and_how_to_go_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import demo.canary

    workdir = tmp_path / "w"

    def stopped_early(release: dict[str, Any], faults: Any, **kwargs: Any) -> dict[str, Any]:
        assert kwargs["max_seconds"] == 5 and kwargs["workdir"] == workdir
        return {"phase": "Progressing", "outcome": "progressing", "interrupted": False,
                "state_dir": str(workdir / "state")}

    monkeypatch.setattr(local, "require_mesh", lambda: None)
    monkeypatch.setattr(demo.canary, "run_local", stopped_early)
    f = release_file(tmp_path)
    code, err = run_err(capsys, "run", "--local", "-f", str(f), "--workdir", str(workdir), "--max-seconds", "5")
    assert code == 1
    assert "gave up after 5 seconds (--max-seconds) with the release still Progressing" in err
    assert f"left as it is: its spec and status stay in {workdir / 'state'}" in err
    assert f"canary run --local -f {f} --workdir {workdir}" in err
    assert f"canary get --workdir {workdir}" in err and f"canary abort --workdir {workdir}" in err


def test_stack_up_checks_its_weight_before_anything_starts(nothing_starts: None) -> None:
    args = argparse.Namespace(versions="v1,v2", weight=150, rps=0.0, workdir=None)
    with pytest.raises(ValueError, match="--weight 150: the canary lane's share is a percentage, from 0 to 100"):
        local.stack_up(args)


def test_a_work_directory_that_is_a_file_is_refused_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], nothing_starts: None) -> None:
    not_a_dir = tmp_path / "w"
    not_a_dir.write_text("")
    for argv in (["run", "--local", "-f", str(release_file(tmp_path))], ["demo"]):
        code, err = run_err(capsys, *argv, "--workdir", str(not_a_dir))
        assert code == 2 and f"--workdir {not_a_dir}: is not a directory" in err, err
