"""End to end: `canary demo --scenario ab` on the real local platform (search stack, mesh router, load).

v2 lifts click-through (users click with p=0.16 on v2 against 0.10 on v1); the experiment must name v2
the winner with an interval that excludes 0, keep every response on one version along its whole path,
and keep users on the variant they were assigned. Every process is stopped by the demo's own teardown
(LocalStack stops its process group by PID); the whole run is bounded by `max_seconds`.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from controller.core.spec.release import parse_release
from demo.canary import run_demo
from demo.experiment import ab_release

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Both demos have the machine to themselves (`realtime(alone=True)`: no other test runs beside them). Their
# guardrails compare two versions' latency on one machine, and users are sticky and unequal (the busiest sends
# ~18% of the searches), so one arm can serve 1.5-3x the other's searches on the same number of processes. Beside
# another real-time test (a crash campaign starting controllers by the hundred) the busier arm's processes queued:
# seen in CI, master-search p50 115 ms on v2 against 76 ms on v1. Alone among the real-time tests but beside the
# CPU-bound ones, once p50 3.4 s on v2 against 100 ms on v1. Both times the latency guardrail rightly stopped the
# experiment. That is the product working on a starved machine, not what these tests are about.

def _failure(out: io.StringIO) -> str:
    """The run's last lines, and how busy the machine was (a starved machine slows one arm, not a release)."""
    one, five, _ = os.getloadavg()
    return f"{out.getvalue()[-3000:]}\nload average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


@pytest.mark.realtime(alone=True)
def test_ab_demo_finds_v2_the_winner_and_users_stay_on_their_variant(tmp_path: Path) -> None:
    out = io.StringIO()
    # A 4 s interval: the experiment may run 120 s, enough users for the lift on a machine whose cores the
    # suite keeps busy (at 3 s, 90 s once ended with the interval's lower end at -0.0000).
    result = run_demo("ab", rps=60, interval=4, workdir=tmp_path, summary_path=tmp_path / "summary.json",
                      metrics="direct", max_seconds=180, out=out)
    assert result["phase"] == "Succeeded", _failure(out)
    assert result["decision"] == "winner" and result["winner"] == "v2"
    low, high = result["effect_interval"]
    assert 0 < low <= result["effect"] <= high
    assert json.loads((tmp_path / "summary.json").read_text())["winner"] == "v2"
    assert result["cpu_seconds"]["master-search@v2"] > 0  # what each process used (read on a failure)
    assert result["cpu_seconds"]["master-search@v1"] > 0  # and the version the promotion retired, in all
    # The whole stack path of every response is one version (x-served-by of all five services).
    assert result["responses"] > 500 and result["mixed_version_responses"] == 0
    # Users keep their variant: the load generator holds a new user's further searches until its first
    # answer (and assignment cookie) is back, so no user is assigned twice.
    load = result["load"]
    users = sum(load["assigned_users"].values())
    assert users > 100 and result["mixed_users"] == 0, load
    # The experiment's counts are the load generator's own ground truth (server counters, same windows).
    # Most of them fall in the experiment's windows; the rest were served before the first window opened (the
    # warm-up, one 4 s interval) or after the last one, or were still in flight at a window's end: at most the
    # variant's rate times the time the load ran outside the experiment, the warm-up and a slow answer (p90). A
    # fixed share (0.85) failed twice on a starved machine (p50 2 s, a 24 s experiment: 438 of 520), where that
    # time is a larger part of the run.
    opening = parse_release(ab_release(4)).strategy.first_window_after
    outside = load["duration_s"] - result["experiment_seconds"] + opening + load["latency_p90_ms"] / 1000.0
    for version in ("v1", "v2"):
        assert result["samples"][version] <= load["impressions"][version]
        missing = load["impressions"][version] - result["samples"][version]
        assert missing <= load["impressions"][version] / load["duration_s"] * outside, (version, missing, outside)
    # Judged with users as the unit, from the per-user sums master-search exports: the users behind each
    # variant's estimate are the load generator's users who saw it (a user first seen in a window still counts).
    assert result["unit"] == "user"
    for version in ("v1", "v2"):
        assert 50 <= result["users"][version] <= load["assigned_users"][version], (result["users"], load)


@pytest.mark.realtime(alone=True)
def test_abn_demo_finds_the_best_of_three_variants_and_keeps_users_and_paths_on_one(tmp_path: Path) -> None:
    """`canary demo --scenario abn`: v1 control, v2 (p=0.30) and v3 (p=0.10, no lift); v2 must beat v1 and
    be separated from v3 under the split alpha, every variant's guardrails pass, nobody mixes variants."""
    from demo.experiment import CLICK_PROBABILITY_ABN, run_ab_demo

    out = io.StringIO()
    result = run_ab_demo(rps=45, interval=3, workdir=tmp_path, summary_path=tmp_path / "summary.json",
                         metrics="direct", max_seconds=120, out=out, variants=3)
    assert result["phase"] == "Succeeded", _failure(out)
    assert result["scenario"] == "abn" and result["decision"] == "winner" and result["winner"] == "v2"
    low, high = result["effect_interval"]
    assert 0 < low <= result["effect"] <= high
    comparisons = result["comparisons"]
    assert set(comparisons) == {"v2", "v3"} and comparisons["v2"]["verdict"] == "better"
    # v3's lift is the smaller one. (Not that its interval is already clear of v2's: the winner rule asks each
    # variant to beat the control, so how far apart the two treatments are when it stops depends on the traffic
    # a loaded machine managed to send.)
    assert comparisons["v3"]["difference"] < comparisons["v2"]["difference"]
    for c in comparisons.values():  # SRM on assigned users (master-search's searchstack_assignments_total)
        assert c["sampleRatio"]["share"] is not None and abs(c["sampleRatio"]["share"] - 0.5) < 0.15, c
        assert c["sampleRatio"]["eValue"] < 2 * 1000  # far from the 1 / (0.001 / 2) threshold
    assert set(result["samples"]) == {"v1", "v2", "v3"} and min(result["samples"].values()) >= 300
    assert result["click_probability"] == CLICK_PROBABILITY_ABN
    assert result["responses"] > 500 and result["mixed_version_responses"] == 0
    load = result["load"]
    assert set(load["assigned_users"]) == {"v1", "v2", "v3"} and result["mixed_users"] == 0, load
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["winner"] == "v2" and summary["effect_interval"] == [low, high]
