"""`canary analyze`'s inputs: nothing to judge is bad input (exit 2, a line naming the file or directory), not an
empty success; the help describes all three modes; a --config file that cannot be read is named."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from analysis.replay import main
from controller.cli.main import main as canary

pytestmark = pytest.mark.timeout(60)

BOUNDS: list[Any] = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, "+Inf"]
INTERVAL = {"t": 60, "weight": 10,
            "baseline": {"requests": 540, "errors": 3, "buckets": [0, 0, 0, 1, 40, 300, 150, 40, 8, 1, 0, 0, 0, 0]},
            "canary": {"requests": 61, "errors": 0, "buckets": [0, 0, 0, 0, 5, 33, 17, 5, 1, 0, 0, 0, 0, 0]}}


def run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(args, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_a_directory_without_replay_files_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a replay")
    good = tmp_path / "good"
    good.mkdir()
    (good / "a.json").write_text(json.dumps({"buckets_ms": BOUNDS, "intervals": [INTERVAL]}))
    code, out, err = run(["--replay", str(good), str(tmp_path)])
    assert code == 2 and out == ""  # checked before any file is judged
    assert err == f"canary analyze: {tmp_path}: no replay file (*.json) in this directory\n"


def test_a_file_without_intervals_is_bad_input_and_the_others_still_run(tmp_path: Path) -> None:
    empty = tmp_path / "a_empty.json"
    empty.write_text(json.dumps({"buckets_ms": BOUNDS, "intervals": []}))
    good = tmp_path / "b_good.json"
    good.write_text(json.dumps({"buckets_ms": BOUNDS, "intervals": [INTERVAL]}))
    code, out, err = run(["--replay", str(tmp_path)])
    assert code == 2
    assert err == f'canary analyze: {empty}: no intervals to judge ("intervals" is empty)\n'
    assert [json.loads(line)["file"] for line in out.splitlines()] == [str(good)]


def test_an_experiment_replay_of_an_empty_directory_is_bad_input(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert canary(["analyze", "--experiment", "--replay", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"canary analyze: {tmp_path}: no replay file (*.json) in this directory" in captured.err


def test_the_help_describes_all_three_modes_and_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert canary(["analyze", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for mode in ("canary analyze --replay FILE...|DIR", "canary analyze --experiment --replay FILE...|DIR",
                 "canary analyze --shadow FILE..."):
        assert mode in text, text
    assert "--judge {sequential,kayenta,threshold} the judge (default:" in text
    assert "--alpha ALPHA the judge's false-alarm rate" in text


@pytest.mark.parametrize("mode,flag", [("--shadow", "--min-overlap"), ("--experiment", "--replay")])
def test_each_modes_help_is_its_help_not_an_error(capsys: pytest.CaptureFixture[str], mode: str, flag: str) -> None:
    assert canary(["analyze", mode, "--help"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"usage: canary analyze {mode}") and flag in captured.out
    assert captured.err == ""


@pytest.mark.parametrize("content,message", [
    (b"{", "not JSON: line 1 column 2: Expecting property name"),
    (b"\xff\xfe", "not a text file"),
    (None, "cannot be read: No such file or directory"),
])
def test_a_config_file_that_cannot_be_read_is_named(tmp_path: Path, content: bytes | None, message: str) -> None:
    config = tmp_path / "config.json"
    if content is not None:
        config.write_bytes(content)
    replay = tmp_path / "r.json"
    replay.write_text(json.dumps({"buckets_ms": BOUNDS, "intervals": [INTERVAL]}))
    code, out, err = run(["--replay", str(replay), "--config", str(config)])
    assert code == 2 and out == ""
    assert err.startswith(f"canary analyze: --config: {config}: {message}") and err.count("\n") == 1, err
