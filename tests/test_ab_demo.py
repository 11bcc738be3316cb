"""End to end: `canary demo --scenario ab` on the real local platform (search stack, mesh router, load).

v2 lifts click-through (users click with p=0.16 on v2 against 0.10 on v1); the experiment must name v2
the winner with an interval that excludes 0, keep every response on one version along its whole path,
and keep users on the variant they were assigned. Every process is stopped by the demo's own teardown
(LocalStack stops its process group by PID); the whole run is bounded by `max_seconds`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from controller.local.demo import run_demo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ab_demo_finds_v2_the_winner_and_users_stay_on_their_variant(tmp_path: Path) -> None:
    out = io.StringIO()
    result = run_demo("ab", rps=60, interval=3, workdir=tmp_path, summary_path=tmp_path / "summary.json",
                      metrics="direct", max_seconds=150, out=out)
    assert result["phase"] == "Succeeded", out.getvalue()[-3000:]
    assert result["decision"] == "winner" and result["winner"] == "v2"
    low, high = result["effect_interval"]
    assert 0 < low <= result["effect"] <= high
    assert json.loads((tmp_path / "summary.json").read_text())["winner"] == "v2"
    # The whole stack path of every response is one version (x-served-by of all five services).
    assert result["responses"] > 500 and result["mixed_version_responses"] == 0
    # Users keep their variant: the load generator holds a new user's further searches until its first
    # answer (and assignment cookie) is back, so no user is assigned twice.
    load = result["load"]
    users = sum(load["assigned_users"].values())
    assert users > 100 and result["mixed_users"] == 0, load
    # The experiment's counts are the load generator's own ground truth (server counters, same windows).
    for version in ("v1", "v2"):
        assert result["samples"][version] <= load["impressions"][version]
        assert result["samples"][version] >= 0.9 * load["impressions"][version]
