"""bench/stack_load.py: the medians of a rate's rounds, its table, and a short sweep over a real stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.stack_load import FIELDS, main, summarise, table

pytestmark = pytest.mark.timeout(120)


def one(achieved: float, p50: float, cores: float) -> dict[str, float]:
    return {"achieved_per_s": achieved, "dropped": 0, "errors": 0, "p50_ms": p50, "p90_ms": 2 * p50,
            "p99_ms": 4 * p50, "stack_cores": cores, "loadgen_cores": 0.1}


def test_a_rate_is_the_median_of_its_rounds() -> None:
    rows = summarise({50.0: [one(49, 10, 0.5), one(51, 30, 0.7), one(50, 20, 0.6)], 100.0: [one(99, 40, 1.0)]})
    assert [r["rate"] for r in rows] == [50.0, 100.0]
    assert (rows[0]["achieved_per_s"], rows[0]["p50_ms"], rows[0]["stack_cores"]) == (50, 20, 0.6)
    assert set(FIELDS) <= set(rows[0])
    assert table(rows).splitlines()[2].split("|")[0].strip() == "100"


def test_bad_rates_are_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--rates", "fifty"], ["--rates", "0"], ["--rounds", "0"]):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
    assert "--rates" in capsys.readouterr().err


@pytest.mark.realtime
def test_a_short_sweep_serves_its_searches_and_counts_the_stacks_cpu(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    assert main(["--rates", "10,30", "--seconds", "3", "--rounds", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rates"]
    assert [r["rate"] for r in rows] == [10.0, 30.0]
    for row in rows:
        assert row["errors"] == 0 and row["dropped"] == 0
        assert 0.5 * row["rate"] <= row["achieved_per_s"] <= 1.5 * row["rate"]
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["stack_cores"] > 0 and row["loadgen_cores"] > 0
    # Three times the searches take more of the services' CPU.
    assert rows[1]["stack_cores"] > rows[0]["stack_cores"]
