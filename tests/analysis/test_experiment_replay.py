"""`canary analyze --experiment --replay`: an A/B experiment's recorded looks judged offline, as the controller
would have judged them (the same `ab_update`), one JSON line per look per file."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from analysis.abtest import ExperimentConfig, ab_initial_state, ab_update
from bench.ab_engine import Arm, spec
from controller.cli.main import main as canary


def recorded(rates: tuple[float, float], looks: int, seed: int) -> tuple[dict[str, Any], list[str]]:
    """A replay document of a simulated experiment (cumulative counters per look), and the decisions
    `ab_update` took on the same intervals."""
    rng = np.random.default_rng(seed)
    arms = {"v1": Arm(rng, rates[0], 0.2), "v2": Arm(rng, rates[1], 0.2)}
    state = ab_initial_state(ExperimentConfig.from_dict(spec()))
    totals = {n: dict.fromkeys(("count", "total", "units", "users", "yy", "nn", "yn"), 0.0) for n in arms}
    doc: dict[str, Any] = {"experiment": spec(), "looks": []}
    decisions = []
    for look in range(1, looks + 1):
        counts = {n: a.look() for n, a in arms.items()}
        state, result = ab_update(state, counts, 60.0 * look)
        decisions.append(result.decision.value)
        for n, c in counts.items():
            assert c.per_user is not None and c.units is not None
            for key, inc in (("count", c.count), ("total", c.total), ("units", c.units), ("users", c.per_user.users),
                             ("yy", c.per_user.yy), ("nn", c.per_user.nn), ("yn", c.per_user.yn)):
                totals[n][key] += inc
        doc["looks"].append({"t": 60.0 * look, "variants": {n: dict(t) for n, t in totals.items()}})
    return doc, decisions


def analyze(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = canary(["analyze", *args])
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def test_replayed_looks_get_the_decisions_the_controller_took(tmp_path: Path) -> None:
    doc, decisions = recorded((0.10, 0.15), looks=25, seed=3)
    (tmp_path / "lift.json").write_text(json.dumps(doc))
    code, lines, err = analyze("--experiment", "--replay", str(tmp_path))
    assert (code, err) == (0, "")
    assert [line["decision"] for line in lines] == decisions and len(lines) == 25
    assert decisions[-1] == "winner" and lines[-1]["winner"] == "v2" and lines[-1]["unit"] == "user"
    lo, hi = lines[-1]["effect"]["differenceConfidenceSequence"]
    assert 0 < lo < 0.05 < hi  # the true difference of the rates drawn (Beta means 0.10, 0.15)
    assert lines[-1]["comparisons"][0]["users"] == 25 * 40
    assert {line["file"] for line in lines} == {str(tmp_path / "lift.json")}


def test_a_bad_file_names_its_field_and_prints_no_decisions_while_the_others_run(tmp_path: Path) -> None:
    good, _ = recorded((0.10, 0.10), looks=3, seed=1)
    (tmp_path / "a-good.json").write_text(json.dumps(good))
    shrinking = json.loads(json.dumps(good))
    shrinking["looks"][2]["variants"]["v2"]["yy"] = 0
    (tmp_path / "b-shrinking.json").write_text(json.dumps(shrinking))
    stranger = json.loads(json.dumps(good))
    stranger["looks"][0]["variants"]["v9"] = {"count": 1, "total": 0}
    (tmp_path / "c-stranger.json").write_text(json.dumps(stranger))
    bad_unit = {**good, "experiment": {**good["experiment"], "unit": "visits"}}
    (tmp_path / "d-unit.json").write_text(json.dumps(bad_unit))
    code, lines, err = analyze("--experiment", "--replay", str(tmp_path))
    assert code == 2
    assert {line["file"] for line in lines} == {str(tmp_path / "a-good.json")} and len(lines) == 3
    problems = err.strip().splitlines()
    assert len(problems) == 3
    assert "b-shrinking.json: looks[2].variants.v2.yy: 0 is below the previous look's" in problems[0]
    assert "counters are cumulative" in problems[0]
    assert "c-stranger.json: looks[0].variants.v9: is not one of the experiment's variants" in problems[1]
    assert "d-unit.json: experiment.unit: 'visits' is not one of" in problems[2]


def test_looks_without_per_user_sums_are_error_decisions_under_unit_user(tmp_path: Path) -> None:
    doc, _ = recorded((0.10, 0.10), looks=2, seed=2)
    for look in doc["looks"]:
        for counters in look["variants"].values():
            for key in ("users", "yy", "nn", "yn"):
                del counters[key]
    (tmp_path / "impressions.json").write_text(json.dumps(doc))
    code, lines, _ = analyze("--experiment", "--replay", str(tmp_path / "impressions.json"))
    assert code == 0 and [line["decision"] for line in lines] == ["error", "error"]
    assert "has no per-user sums" in lines[0]["reason"]
    doc["experiment"]["unit"] = "sample"  # the same looks judged as independent impressions
    (tmp_path / "impressions.json").write_text(json.dumps(doc))
    _, lines, _ = analyze("--experiment", "--replay", str(tmp_path / "impressions.json"))
    assert [line["decision"] for line in lines] == ["continue", "continue"] and lines[0]["unit"] == "sample"
