"""bench/status_size.py: its table and file, and bad arguments refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.status_size import FIELDS, main
from controller.core.status import HISTORY_BYTES

pytestmark = pytest.mark.timeout(120)


def test_a_short_run_writes_every_field_within_the_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sizes.json"
    assert main(["--services", "2,5", "--looks", "80", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["services"] for r in rows] == [2, 5] and all(set(FIELDS) <= set(r) for r in rows)
    assert all(r["history_bytes"] <= HISTORY_BYTES and 1 <= r["whole"] <= r["kept"] <= 80 for r in rows)
    assert rows[1]["record_bytes"] > rows[0]["record_bytes"] > rows[1]["compact_bytes"] / 5
    assert capsys.readouterr().out.splitlines()[0].split(" | ") == list(FIELDS)


def test_bad_arguments_are_refused() -> None:
    for argv in (["--services", "five"], ["--services", "0"], ["--looks", "0"]):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
