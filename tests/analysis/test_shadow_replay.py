"""`canary analyze --shadow FILE...`: recorded pairs of answers judged offline, as the shadow phase would."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from controller.cli.main import main as canary_main

TOP = [f"d{i}" for i in range(10)]


def write_pairs(path: Path, new: list[str], n: int) -> Path:
    lines = [json.dumps({"query": f"query {i}", "stable": TOP, "stableAgain": TOP, "new": new}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def analyze(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, object]], str]:
    code = canary_main(["analyze", *argv])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_identical_answers_pass_and_other_rankings_fail_with_their_numbers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    same = write_pairs(tmp_path / "same.jsonl", TOP, 200)
    other = write_pairs(tmp_path / "other.jsonl", [*TOP[:3], *(f"x{i}" for i in range(7))], 200)
    code, looks, err = analyze(["--shadow", str(same), str(other)], capsys)
    assert code == 0 and err == ""
    by_file = {f: [r for r in looks if r["file"] == f] for f in (str(same), str(other))}
    assert [r["decision"] for r in by_file[str(same)]][-1] == "pass"
    assert by_file[str(same)][-1]["differenceBounds"][1] < 0.2  # the bound the rule compared
    last = by_file[str(other)][-1]
    assert last["decision"] == "fail" and last["differenceBounds"][0] > 0.2
    assert last["mostDifferent"][0]["new"][3] == "x0" and 0 < last["meanOverlap"] < 0.8
    # Looks every 10 pairs, up to the first decision, never fewer than minPairs before a decision.
    assert [r["look"] for r in by_file[str(same)]] == list(range(1, len(by_file[str(same)]) + 1))
    assert all(r["decision"] == "inconclusive" for r in looks if r["pairs"] < 20)


def test_a_deliberate_change_is_recorded_with_a_lower_min_overlap(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = write_pairs(tmp_path / "other.jsonl", [*TOP[:5], *(f"x{i}" for i in range(5))], 100)
    code, looks, _ = analyze(["--shadow", str(other), "--min-overlap", "0.3", "--look", "25"], capsys)
    assert code == 0 and looks[-1]["decision"] == "pass" and looks[-1]["pairs"] % 25 == 0


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "line 2: not JSON"),
    ('{"query": "q", "stable": ["a", "a"], "stableAgain": [], "new": []}', "line 2: stable names a document twice"),
    ('{"query": "q", "stable": ["a"], "new": ["a"]}', "line 2: stableAgain is not a list of document ids"),
    ('["a"]', "line 2: a pair is a JSON object"),
])
def test_a_bad_file_gets_one_line_naming_the_line_and_field_and_others_still_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "stable": TOP, "stableAgain": TOP, "new": TOP}) + "\n" + line + "\n")
    good = write_pairs(tmp_path / "good.jsonl", TOP, 50)
    code, looks, err = analyze(["--shadow", str(bad), str(good)], capsys)
    assert code == 2 and err.startswith(f"canary analyze: {bad}: {message}") and err.count("\n") == 1, err
    assert looks and {r["file"] for r in looks} == {str(good)}  # nothing printed for the bad file


def test_bad_options_and_missing_files_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from analysis.shadow_replay import main

    err = io.StringIO()
    assert main(["--shadow", str(tmp_path / "none.jsonl")], stderr=err) == 2 and "cannot read it" in err.getvalue()
    err = io.StringIO()
    assert main(["--shadow", "x", "--min-overlap", "1.5"], stderr=err) == 2 and "minOverlap" in err.getvalue()
    err = io.StringIO()
    assert main(["--shadow", "x", "--look", "0"], stderr=err) == 2 and "--look" in err.getvalue()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    err = io.StringIO()
    assert main(["--shadow", str(empty)], stderr=err) == 2 and "no pairs" in err.getvalue()
