"""bench/burst_limits.py: its running e-values are the split's, valid with their inputs true, and each margin
only takes evidence away."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench import burst_limits
from bench.burst_exact import draw

pytestmark = pytest.mark.timeout(120)


def _peaks(test: str, ratio: float, rate: int = 20, weight: int = 10, reps: int = 1500) -> np.ndarray:
    n_c, n_b = round(rate * 60 * weight / 100), round(rate * 60 * (1 - weight / 100))
    rng = np.random.default_rng(5)
    k_c, k_b = (a.reshape(reps, burst_limits.MINUTES)
                for a in draw(rng, n_c, n_b, burst_limits.KAPPA, ratio, reps * burst_limits.MINUTES))
    return np.asarray(burst_limits.log_e_path(k_c, k_b, n_c, n_b, burst_limits.tests(4.0)[test]).max(axis=1))


def test_identical_versions_rarely_reach_one_over_alpha() -> None:
    # Ville: an e-process reaches 20 with probability <= 5%. A sign error or a likelihood of the wrong split
    # would cross in most releases.
    for test in burst_limits.tests(4.0):
        assert np.mean(_peaks(test, 1.0) >= math.log(20.0)) <= 0.05, test


def test_errors_x4_mostly_crossed_and_the_margins_cost_evidence() -> None:
    oracle, margins = _peaks("oracle, grid", 4.0), _peaks("both margins", 4.0)
    assert np.mean(oracle >= math.log(80.0)) >= 0.9
    # Same draws: kappa and lambda taken high flatten every interval's likelihood ratio.
    assert np.median(margins) < np.median(oracle)
    assert np.mean(margins >= math.log(80.0)) <= np.mean(oracle >= math.log(80.0))


def test_the_program_writes_every_cell_and_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "limits.json"
    assert burst_limits.main(["--reps", "40", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["rate"], r["weight"], r["test"]) for r in rows} == {
        (rate, weight, test) for rate, weight in burst_limits.CELLS for test in burst_limits.tests(4.0)}
    assert all(0.0 <= r[k] <= 100.0 for r in rows for k in r if k.endswith("Pct@80") or k.endswith("Pct@400"))
    assert "both margins" in capsys.readouterr().out


def test_the_regression_is_chosen_and_named_by_its_ratio(tmp_path: Path) -> None:
    """`--ratio 3`: errors x3 (twice the default margins) are drawn, the oracle knows 3, the rows say x3."""
    assert burst_limits.tests(3.0)["oracle"][2] == (3.0,)
    out = tmp_path / "limits3.json"
    assert burst_limits.main(["--reps", "40", "--ratio", "3", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["ratio"] == 3.0 and data["command"].endswith("--ratio 3")
    assert all("x3CrossedPct@80" in r and "x4CrossedPct@80" not in r for r in data["rows"])
    with pytest.raises(SystemExit):
        burst_limits.main(["--ratio", "1"])


def test_milder_bursts_give_more_evidence(tmp_path: Path) -> None:
    """`--cv`: the same regression under bursts of CV 0.5 crosses more often than under CV 1 (the bursts world),
    and the command says which bursts it drew."""
    rows = {}
    for cv in ("1", "0.5"):
        out = tmp_path / f"cv{cv}.json"
        assert burst_limits.main(["--reps", "300", "--ratio", "3", "--cv", cv, "--out", str(out)]) == 0
        data = json.loads(out.read_text())
        assert data["kappa"] == pytest.approx(float(cv) ** 2)
        rows[cv] = {(r["rate"], r["weight"], r["test"]): r["x3CrossedPct@80"] for r in data["rows"]}
    assert "--cv 0.5" in json.loads((tmp_path / "cv0.5.json").read_text())["command"]
    oracle = [k for k in rows["1"] if k[2] == "oracle"]
    assert sum(rows["0.5"][k] for k in oracle) > sum(rows["1"][k] for k in oracle)
