"""bench/releases.py: the controller's schedule advances, holds and rolls back as the controller does.

A scripted judge (verdicts per interval) and fixed traffic make these exact; one test wires the real
judge and a world together, and one checks that `Schedule()` is the spec's default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from analysis.config import AnalysisConfig
from analysis.decisions import Decision
from analysis.observations import ISTIO_BUCKETS_MS, IntervalObservation, Verdict
from bench import releases
from bench.releases import SERVICE, Outcome, Release, Schedule, run_releases, summarise
from bench.worlds import Minute
from controller.core.spec.release import parse_release
from tests.support.scenario import release as release_manifest

pytestmark = pytest.mark.timeout(30)

K = len(ISTIO_BUCKETS_MS)
P, F, E, N, S = Verdict.PASS, Verdict.FAIL, Verdict.ERROR, Verdict.INCONCLUSIVE, "safety-pending"
Script = Sequence[Verdict | str]


class FixedTraffic:
    """Every replication gets `canary` canary and 1000 baseline requests a minute, whatever the weight."""

    def __init__(self, reps: int, canary: int = 100) -> None:
        self.reps, self.canary = reps, canary
        self.weights: list[list[float]] = []

    def minute(self, weight: npt.ArrayLike) -> Minute:
        self.weights.append([float(w) for w in np.broadcast_to(np.asarray(weight, dtype=float), (self.reps,))])
        n_c, n_b = np.full(self.reps, self.canary), np.full(self.reps, 1000)
        b_c, b_b = np.zeros((self.reps, K), dtype=np.int64), np.zeros((self.reps, K), dtype=np.int64)
        b_c[:, 5], b_b[:, 5] = n_c, n_b
        zeros = np.zeros(self.reps, dtype=np.int64)
        return Minute(n_c=n_c, n_b=n_b, e_c=zeros, e_b=zeros, b_c=b_c, b_b=b_b)


class ScriptedJudge:
    """Replication i's k-th verdict is scripts[i][k] (the last one repeats); S is an inconclusive with
    safetyPending, N a plain inconclusive. Records the weight of every observation it is given."""

    name = "scripted"

    def __init__(self, *scripts: Script) -> None:
        self.scripts = scripts
        self.started = 0
        self.primed = 0
        self.seen: list[list[float]] = [[] for _ in scripts]
        self.pods_told_apart = False  # the `podWarmup` of every decision

    def initial_state(self, reference: Any = None, services: Sequence[str] | None = None,
                      bounds_ms: Sequence[float] = ISTIO_BUCKETS_MS) -> dict[str, Any]:
        assert services == [SERVICE]
        self.started += 1
        return {"rep": self.started - 1, "ticks": 0}

    def update(self, state: Mapping[str, Any], observations: Mapping[str, IntervalObservation]
               ) -> tuple[dict[str, Any], Decision]:
        rep, tick = state["rep"], state["ticks"]
        self.seen[rep].append(observations[SERVICE].weight)
        script = self.scripts[rep]
        step = script[min(tick, len(script) - 1)]
        verdict = N if step == S else Verdict(step)
        return {"rep": rep, "ticks": tick + 1}, Decision(verdict, "", details={"safetyPending": step == S,
                                                                              "podWarmup": self.pods_told_apart})

    def prime(self, state: Mapping[str, Any], history: Sequence[Mapping[str, IntervalObservation]]
              ) -> dict[str, Any]:
        self.primed = len(history)
        return dict(state)


# The controller's loop alone: every interval judged, nothing given to the judge before the release.
BARE = Schedule(warmup=0, history=0)


def play(*scripts: Script, canary: int = 100, horizon: int = 60, schedule: Schedule = BARE
         ) -> tuple[list[Release], ScriptedJudge]:
    judge = ScriptedJudge(*scripts)
    return run_releases(judge, FixedTraffic(len(scripts), canary), len(scripts), horizon, schedule), judge


def test_passes_advance_a_step_each_and_the_last_pass_promotes() -> None:
    (r,), judge = play([P])
    assert (r.outcome, r.decided_at, r.cause) == (Outcome.PROMOTED, 5, "pass")
    assert judge.seen[0] == [10, 20, 30, 40, 50]
    assert [a for _, _, a in r.actions] == ["next step"] * 4 + ["promote"]


def test_a_step_waits_for_enough_canary_requests_before_a_pass_counts() -> None:
    (r,), judge = play([P], canary=20)  # 20, 40, 60 >= 50 at the third interval of each step
    assert (r.outcome, r.decided_at) == (Outcome.PROMOTED, 15)
    assert judge.seen[0] == [w for w in (10, 20, 30, 40, 50) for _ in range(3)]
    assert [a for _, _, a in r.actions[:3]] == ["wait", "wait", "next step"]


def test_fail_rolls_back_at_once_and_the_judge_is_not_asked_again() -> None:
    (r,), judge = play([P, P, F, P])
    assert (r.outcome, r.decided_at, r.cause) == (Outcome.ROLLED_BACK, 3, "fail")
    assert judge.seen[0] == [10, 20, 30]


def test_errors_hold_and_three_in_a_row_roll_back() -> None:
    (held, back, broken), judge = play([E, E, P], [P, E, E, E], [E, E, N, E, E, N])
    assert judge.seen[0][:3] == [10, 10, 10] and judge.seen[0][3] == 20
    assert [a for _, _, a in held.actions[:3]] == ["hold", "hold", "next step"]
    assert (back.outcome, back.decided_at, back.cause) == (Outcome.ROLLED_BACK, 4, "errors")
    assert judge.seen[1] == [10, 20, 20, 20]
    assert broken.outcome is Outcome.UNDECIDED  # a non-error between them resets the count


def test_inconclusive_holds_the_step_past_its_deadline_by_default() -> None:
    (r,), judge = play([N], horizon=30)
    assert r.outcome is Outcome.UNDECIDED and r.decided_at is None
    assert judge.seen[0] == [10] * 30
    assert [a for _, _, a in r.actions[:11]] == ["wait"] * 9 + ["hold"] * 2


@pytest.mark.parametrize(("policy", "outcome", "at", "weights"), [
    ("rollback", Outcome.ROLLED_BACK, 10, [10] * 10),
    ("continue", Outcome.PROMOTED, 50, [w for w in (10, 20, 30, 40, 50) for _ in range(10)]),
])
def test_the_other_inconclusive_policies_apply_at_the_step_deadline(
        policy: str, outcome: Outcome, at: int, weights: list[int]) -> None:
    (r,), judge = play([N], schedule=replace(BARE, on_inconclusive=policy))
    assert (r.outcome, r.decided_at) == (outcome, at)
    assert judge.seen[0] == weights


def test_no_harm_seen_raises_the_weight_but_only_a_pass_promotes() -> None:
    (pending, passed), judge = play([S], [S, S, S, S, S, S, P], horizon=20)
    assert pending.outcome is Outcome.UNDECIDED
    assert judge.seen[0] == [10, 20, 30, 40] + [50] * 16
    assert (passed.outcome, passed.decided_at) == (Outcome.PROMOTED, 7)
    (stays,), judge = play([S], horizon=5, schedule=replace(BARE, advance_when_safety_pending=False))
    assert judge.seen[0] == [10] * 5 and stays.outcome is Outcome.UNDECIDED


def test_summary_counts_outcomes_medians_causes_and_where_undecided_releases_hold() -> None:
    played, _ = play([P], [P, F], [P, P, P, F], [E, E, E], [N], [S], horizon=20)
    s = summarise(played, BARE)
    assert s["promotedPct"] == pytest.approx(100 / 6) and s["rolledBackPct"] == pytest.approx(50)
    assert s["undecidedPct"] == pytest.approx(100 / 3)
    assert s["medianDecisionMinute"] == 3.5 and s["medianPromotionMinute"] == 5.0
    assert s["medianRollbackMinute"] == 3.0
    assert s["rollbackCauses"] == {"fail": 2, "errors": 1}
    assert s["undecidedAtWeight"] == {"10": 1, "50": 1}
    # The users each rolled-back canary served (100 a minute here): 2, 4 and 3 minutes.
    assert s["medianCanaryRequestsBeforeRollback"] == 300
    assert summarise(played[:1], BARE)["medianCanaryRequestsBeforeRollback"] is None


def test_warmup_minutes_after_each_weight_change_are_served_but_not_judged() -> None:
    (r,), judge = play([P], schedule=replace(BARE, warmup=2))
    assert judge.seen[0] == [10, 20, 30, 40, 50]  # one judged interval per step, as without a warm-up
    assert [a for _, _, a in r.actions[:6]] == ["warm-up", "warm-up", "next step", "warm-up", "warm-up", "next step"]
    assert (r.outcome, r.decided_at) == (Outcome.PROMOTED, 15)  # the warm-up minutes count toward the decision
    assert summarise([r], BARE)["meanIntervalsJudged"] == 5
    (failed,), _ = play([F], schedule=replace(BARE, warmup=2))  # the warm-up's users count among those exposed
    assert summarise([failed], BARE)["medianCanaryRequestsBeforeRollback"] == 300


def test_with_pods_told_apart_only_the_first_steps_warm_up_is_a_whole_minute() -> None:
    """A judge that leaves new pods out itself (`podWarmup`): after a weight change the minute is judged, as the
    controller opens that window after `settle`; the release's first minute still waits (every pod is new)."""
    judge = ScriptedJudge([P])
    judge.pods_told_apart = True
    (r,) = run_releases(judge, FixedTraffic(1), 1, 60, replace(BARE, warmup=2))
    assert [a for _, _, a in r.actions] == ["warm-up", "warm-up"] + ["next step"] * 4 + ["promote"]
    assert judge.seen[0] == [10, 20, 30, 40, 50] and r.decided_at == 7


def test_schedule_defaults_are_the_release_specs() -> None:
    spec = parse_release(release_manifest(strategy={"canary": {}}, analysis={}))
    strategy, policies, d = spec.strategy, spec.policies, Schedule()
    assert strategy.warmup == d.warmup * strategy.interval and spec.analysis.history_intervals == d.history
    assert strategy.steps == d.steps and strategy.min_canary_requests == d.min_canary_requests
    assert strategy.interval == 60 and strategy.step_deadline == d.step_deadline * strategy.interval
    assert (policies.on_inconclusive, policies.rollback_after_errors) == (d.on_inconclusive, d.rollback_after_errors)
    assert spec.analysis == AnalysisConfig.from_dict({"alpha": 0.05})


def test_the_real_judge_in_a_world_and_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cell = releases.run_cell(releases.Cell("real", "lat25", 50, 3, 6, 1, 0.05))
    assert cell["rolledBackPct"] + cell["promotedPct"] + cell["undecidedPct"] == pytest.approx(100)
    assert 1 <= cell["meanIntervalsJudged"] <= 6
    out = tmp_path / "r.json"
    args = ["--worlds", "independent", "--scenarios", "err4", "--rates", "50", "--reps", "2", "--horizon", "3",
            "--workers", "1", "--out", str(out)]
    assert releases.main(args) == 0
    assert "independent err4" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert [(c["world"], c["scenario"], c["rate"], c["reps"]) for c in written["cells"]] == [
        ("independent", "err4", 50, 2)]



def test_the_judge_is_given_the_stable_versions_minutes_before_the_release_and_their_weight_is_zero() -> None:
    traffic = FixedTraffic(1)
    judge = ScriptedJudge([P])
    run_releases(judge, traffic, 1, 10, replace(BARE, history=3))
    assert judge.primed == 3 and traffic.weights[:3] == [[0.0]] * 3 and traffic.weights[3] == [10.0]
