"""The text views behind `canary get`, `--watch`, `list` and `history` (pure formatting)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.core.spec.release import parse_release
from controller.core.status import (
    HISTORY_LIMIT,
    DecisionRecord,
    Phase,
    ReleasedVersions,
    ReleaseStatus,
    RevisionRecord,
)
from controller.present import view

SPEC = parse_release({"metadata": {"name": "r"}, "spec": {
    "stable": {"version": "v1"}, "canary": {"version": "v2", "images": {"ml-infer": "reg/ml-infer:2"}},
    "strategy": {"canary": {"steps": [{"weight": 10}, {"weight": 50}]}}}})


def record(i: int, verdict: str = "pass") -> DecisionRecord:
    return DecisionRecord(1000.0 + i, float(i), 0, 10, verdict, f"look {i}", "wait")


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (59.9, "59s"), (60, "1m"), (7200, "2h"), (3 * 86400 + 5, "3d"),
                                          (-4, "0s")])
def test_age_reads_like_kubectl(seconds: float, text: str) -> None:
    assert view.age(seconds) == text


@pytest.mark.parametrize("decided,first,started,text", [
    (130.0, 100.0, 90.0, "30s"),   # from the canary's first traffic
    (130.0, None, 90.0, "40s"),    # else from the start
    (None, 100.0, 90.0, "-"),      # not decided
])
def test_time_to_decision(decided: float | None, first: float | None, started: float | None, text: str) -> None:
    r = RevisionRecord(1, 1, ReleasedVersions("v1", "v2"), "Succeeded", started_at=started, decided_at=decided,
                       first_canary_traffic_at=first)
    assert view.decision_time(r) == text


def test_progress_lists_new_decisions_before_the_step_they_caused() -> None:
    old = ReleaseStatus(phase=Phase.PROGRESSING, step=0, canary_weight=10, history=(record(1),))
    new = replace(old, step=1, canary_weight=50, history=(record(1), record(2)))
    lines = view.progress_lines(SPEC, old, new, 0.0)
    assert "look 2" in lines[0] and "look 1" not in "\n".join(lines)
    assert lines[-1].endswith("step 2/2: 50% of traffic in the canary lane")


def test_progress_finds_new_decisions_when_the_history_is_full() -> None:
    full = tuple(record(i) for i in range(HISTORY_LIMIT))
    old = ReleaseStatus(phase=Phase.PROGRESSING, step=0, history=full)
    new = replace(old, history=(*full[2:], record(HISTORY_LIMIT), record(HISTORY_LIMIT + 1, "fail")))
    text = "\n".join(view.progress_lines(SPEC, old, new, 0.0))
    assert f"look {HISTORY_LIMIT}" in text and f"look {HISTORY_LIMIT + 1}" in text and "FAIL" in text
    assert f"look {HISTORY_LIMIT - 1}" not in text


def test_a_restart_is_announced_with_its_versions() -> None:
    old = ReleaseStatus(phase=Phase.ROLLED_BACK, history=(record(1),))
    new = ReleaseStatus(phase=Phase.INITIALIZING, attempt=2, versions=ReleasedVersions("v1", "v2"),
                        message="waiting for the new version to become ready")
    assert view.progress_lines(SPEC, old, new, 0.0) == [
        "1970-01-01 00:00:00Z  revision 1 attempt 2 started: v1 -> v2",
        "1970-01-01 00:00:00Z  RolledBack -> Initializing: waiting for the new version to become ready"]


def test_list_row_and_history_lines() -> None:
    status = ReleaseStatus(phase=Phase.PROGRESSING, step=1, canary_weight=50, versions=ReleasedVersions("v1", "v2"))
    assert view.list_row("r", "ns", SPEC, status, 125.0) == ("r", "ns", "Progressing", "2/2", "50%", "v1->v2", "2m")
    assert view.list_row("r", "ns", None, ReleaseStatus(), None)[3:] == ("-", "0%", "(invalid spec)", "-")
    lines = view.history_lines([RevisionRecord(1, 1, ReleasedVersions("v1", "v2", {"ml-infer": "reg/ml-infer:1"},
                                                                      {"ml-infer": "reg/ml-infer:2"}), "RolledBack",
                                               0.0, 60.0, 30.0, 10.0, "errorRate crossed")])
    assert lines[1].split() == ["1", "1", "v1", "->", "v2", "RolledBack", "1970-01-01", "00:00:00Z", "1970-01-01",
                                "00:01:00Z", "20s"]
    assert lines[2:] == ["    images: ml-infer=reg/ml-infer:2 (was reg/ml-infer:1)", "    errorRate crossed"]
    partial = ReleasedVersions("v1", "v3", {}, {}, {"ml-search": "v2-model"}, ("ml-infer",))
    lines = view.history_lines([RevisionRecord(2, 1, partial, "Succeeded", 0.0, 60.0)])
    assert lines[2:] == ["    stable: v1 (ml-search v2-model); changes ml-infer"]


def test_the_headline_says_when_new_pods_are_still_warming_up() -> None:
    warm = parse_release({"metadata": {"name": "r"}, "spec": {
        "stable": {"version": "v1"}, "canary": {"version": "v2", "images": {"ml-infer": "reg/ml-infer:2"}},
        "strategy": {"canary": {"steps": [{"weight": 10}, {"weight": 50}], "warmup": "3m"}}}})
    status = ReleaseStatus(phase=Phase.PROGRESSING, step=1, canary_weight=50, last_analysis_at=1180.0)
    line = view.headline(warm, status, 1000.0)
    assert "next analysis in 240.0s" in line and "(new pods warming up for 180s more)" in line
    assert "warming up" not in view.headline(warm, status, 1200.0)  # the window is open: judged from now on
    cold = parse_release({"metadata": {"name": "r"}, "spec": {
        "stable": {"version": "v1"}, "canary": {"version": "v2", "images": {"ml-infer": "reg/ml-infer:2"}},
        "strategy": {"canary": {"steps": [{"weight": 10}, {"weight": 50}], "warmup": "0s"}}}})
    assert "warming up" not in view.headline(cold, status, 1000.0)  # no warm-up: settle only
    # Pods told apart: the window opens after settle, the judge leaving the step's new pods out: no wait to show.
    by_pod = replace(status, last_analysis_at=1003.0, pod_warmup=True)
    assert "warming up" not in view.headline(warm, by_pod, 1000.0)


def test_a_finished_release_says_which_version_serves_everyone() -> None:
    """100/0 read the same after a promotion and after a rollback; the headline names the version."""
    done = ReleaseStatus(phase=Phase.SUCCEEDED, step=2, canary_weight=0, versions=ReleasedVersions("v1", "v2"))
    assert "all traffic on v2 (promoted: now the stable version)" in view.headline(SPEC, done, 0.0)
    back = replace(done, phase=Phase.ROLLED_BACK, step=0)
    assert "all traffic on v1 (the stable version; v2 serves none)" in view.headline(SPEC, back, 0.0)
    assert "weight 90/10 (stable/canary)" in view.headline(SPEC, replace(done, phase=Phase.PROGRESSING,
                                                                          canary_weight=10), 0.0)


# An A/B/n experiment that ended with a winner and waits for the operator (onEnd: waitForOperator), as the
# machine leaves it (controller.core.machine.experiment.result_dict).
EXPERIMENT = {
    "decision": "winner",
    "reason": "v2 beats v1 on click-through: difference in [0.1201, 0.2449] (confidence interval, valid at every look)",
    "winner": "v2", "metric": "click-through", "control": "v1", "treatment": "v2",
    "comparisons": {
        "v2": {"difference": 0.1825, "interval": [0.1201, 0.2449], "ratio": 2.83, "ratioInterval": [1.78, 4.49],
               "verdict": "better"},
        "v3": {"difference": -0.0245, "interval": [-0.0900, 0.0411], "ratio": 0.755, "ratioInterval": [0.345, 1.65],
               "verdict": "undecided"}},
    "alphaPerComparison": 0.025, "rates": {"v1": 0.0998, "v2": 0.2823, "v3": 0.0754},
    "samples": {"v1": 571, "v2": 1137, "v3": 345}, "unit": "user", "users": {"v1": 141, "v2": 167, "v3": 133},
    "durationSeconds": 51.2, "looks": 4, "stoppedBy": "primary"}


def _experiment_status() -> ReleaseStatus:
    counts = {"master-search": {"baseline": {"requests": 497, "errors": 0}, "canary": {"requests": 1136, "errors": 0}},
              "primary": {"decision": "winner", "reason": "v2 beats v1", "samples": {"v1": 571}},
              "guardrails": {"v3": {"verdict": "inconclusive", "reason": "not yet shown safe"}}}
    look = DecisionRecord(1050.0, 51.2, 0, 49, "inconclusive", "primary: v2 beats v1", "wait for an operator",
                          counts=counts)
    status = ReleaseStatus(phase=Phase.PAUSED, canary_weight=49, history=(look,), experiment=EXPERIMENT)
    return status.with_condition("Paused", "True", "AwaitingPromotion", "experiment ended", 1050.0)


def test_get_shows_the_experiments_winner_its_interval_and_what_the_operator_decides() -> None:
    text = "\n".join(view.panel(SPEC, _experiment_status(), 1060.0))
    assert "experiment on click-through: winner v2, stopped by the primary metric after 51s, 4 looks" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("    v")}
    assert rows["v1"][2:6] == ["141", "571", "0.0998", "-"]
    assert rows["v2"][1:] == ["167", "1,137", "0.2823", "+0.1825", "[+0.1201,", "+0.2449]", "2.83", "[1.78,", "4.49]",
                              "better"]
    assert rows["v3"][-1] == "undecided"
    assert "97.5% confidence sequences, valid at every look (alpha 0.025 per comparison; users as the unit)" in text
    assert "next: `canary approve` promotes v2, `canary abort` keeps v1 (the winner v2 is spec.canary)" in text


def test_the_traffic_table_lists_services_not_the_experiments_own_records() -> None:
    lines = view.panel(SPEC, _experiment_status(), 1060.0)
    services = [line.split()[0] for line in lines[lines.index(next(x for x in lines if x.startswith("  traffic"))) + 2:]
                if line.startswith("    ") and not line.startswith("     ")]
    assert services[0] == "master-search" and "primary" not in services and "guardrails" not in services


def test_at_the_gate_approving_promotes_the_canary_whatever_won() -> None:
    v3 = {**EXPERIMENT, "winner": "v3"}
    assert view.operator_choice(v3, "v1", "v2") == (
        "`canary approve` promotes v2, `canary abort` keeps v1 (the winner v3 is not spec.canary: release v3 on its "
        "own to promote it)")
    none = {**EXPERIMENT, "decision": "no_difference", "winner": None}
    assert view.operator_choice(none, "v1", "v2").endswith("(no variant won)")
    running = replace(_experiment_status(), phase=Phase.PROGRESSING, conditions=())
    assert not any(line.startswith("  next:") for line in view.panel(SPEC, running, 1060.0))


def test_the_headline_of_a_running_abn_experiment_gives_every_variants_share() -> None:
    """The canary's weight is its share of the pair with the control (49% of 34/33): not a split of three."""
    abn = parse_release({"metadata": {"name": "r"}, "spec": {
        "stable": {"version": "v1"}, "canary": {"version": "v2"}, "strategy": {"abTest": {
            "variants": [{"name": "v1", "weight": 34}, {"name": "v2", "weight": 33}, {"name": "v3", "weight": 33}],
            "primaryMetric": {"kind": "proportion", "name": "click-through"}}}}})
    status = ReleaseStatus(phase=Phase.PROGRESSING, step=0, canary_weight=49)
    line = view.headline(abn, status, 0.0)
    assert "users split v1 34% / v2 33% / v3 33%" in line and "51/49" not in line
    assert view.list_row("r", "default", abn, status, None)[4] == "34/33/33"
    waiting = view.headline(abn, ReleaseStatus(phase=Phase.PENDING, step=-1), 0.0)  # no user on a variant yet
    assert "weight 100/0 (stable/canary)" in waiting and "users split" not in waiting


@pytest.mark.parametrize(("phase", "scaling_to", "cutover", "shown", "listed"), [
    (Phase.PROMOTING, 49, False, "users split v1 34% / v2 33% / v3 33%", "34/33/33"),  # the winner scales first
    (Phase.PROMOTING, None, False, "new users on v2; users already assigned keep their variant until the cutover",
     "100%"),
    (Phase.PROMOTING, None, True, "all traffic on v2", "100%"),
    (Phase.ROLLING_BACK, None, False, "new users on v1; users already assigned keep their variant until the "
     "cutover", "0%"),
    (Phase.ROLLING_BACK, None, True, "all traffic on v1", "0%"),
])
def test_an_ending_experiment_says_where_its_users_go_not_the_pairs_share(
        phase: Phase, scaling_to: int | None, cutover: bool, shown: str, listed: str) -> None:
    """An experiment's `canary_weight` is the treatment's share of its pair with the control (49% of 34/33); at
    its end the panel and `canary list` had shown it as a traffic split ("weight 51/49"), and every look's line
    as "49%"."""
    abn = parse_release({"metadata": {"name": "r"}, "spec": {
        "stable": {"version": "v1"}, "canary": {"version": "v2"}, "strategy": {"abTest": {
            "variants": [{"name": "v1", "weight": 34}, {"name": "v2", "weight": 33}, {"name": "v3", "weight": 33}],
            "primaryMetric": {"kind": "proportion", "name": "click-through"}}}}})
    status = ReleaseStatus(phase=phase, step=0, canary_weight=49, scaling_to=scaling_to, cutover=cutover)
    line = view.headline(abn, status, 0.0)
    assert shown in line and "49" not in line, line
    assert view.list_row("r", "default", abn, status, None)[4] == listed
    look = _look("inconclusive", "winner", "wait for an operator", "primary: v2 beats v1")
    assert "49%" not in view.decision_lines(look, "v1", "v2")[0] and " A/B  verdict" in view.decision_lines(
        look, "v1", "v2")[0]
    assert "A/B look" in view.decision_summary(look) and "49%" not in view.decision_summary(look)
    canary = _look("inconclusive", None, "wait", "errorRate not yet shown safe")
    assert " 49%  verdict" in view.decision_lines(canary, "v1", "v2")[0]


@pytest.mark.parametrize("experiment,outcome", [
    ({"harmful": "v3", "stoppedBy": "guardrail"}, "experiment on click-through: harmful: v3, stopped by a guardrail"),
    ({"comparisons": {**EXPERIMENT["comparisons"], "v3": {"verdict": "worse"}}},
     "experiment on click-through: harmful: v3, stopped by the primary metric"),
])
def test_a_harmful_experiment_names_the_variant(experiment: dict[str, object], outcome: str) -> None:
    headline, _, _ = view.experiment_table({**EXPERIMENT, "decision": "harmful", "winner": None, **experiment})
    assert headline.startswith(outcome)


def _look(verdict: str, decision: str | None, action: str, reason: str) -> DecisionRecord:
    counts: dict[str, object] = {"master-search": {"baseline": {"requests": 497, "errors": 0},
                                                   "canary": {"requests": 1136, "errors": 0}}}
    if decision is not None:
        counts["primary"] = {"decision": decision, "reason": reason}
    return DecisionRecord(1050.0, 51.2, 0, 49, verdict, reason, action, counts=counts)


@pytest.mark.parametrize(("verdict", "decision", "action", "shown"), [
    ("inconclusive", "winner", "wait for an operator", "WINNER"),
    ("pass", "continue", "continue", "CONTINUE"),
    ("inconclusive", "no_difference", "keep v1", "NO_DIFFERENCE"),
    ("fail", "harmful", "stop experiment, roll back", "HARMFUL"),  # a guardrail's, or the primary metric's
    ("error", "error", "hold", "ERROR"),
    ("error", None, "hold", "ERROR"),  # the guardrails' metrics unavailable: no primary metric's look
])
def test_an_experiments_look_shows_the_experiments_decision_not_the_guardrails_verdict(
        verdict: str, decision: str | None, action: str, shown: str) -> None:
    """`canary get`, `--watch` and the demo once read "INCONCLUSIVE -> winner: wait for an operator": the guardrails'
    verdict, then the experiment's decision. The look's verdict is the experiment's; the guardrails' state is in
    its reason, in words."""
    look = _look(verdict, decision, action, "guardrails: no harm shown; primary: v2 beats v1")
    summary = view.decision_summary(look)
    assert summary.split()[6:9] == [shown, "->", action.split()[0]], summary
    assert f"verdict {shown:<12} -> {action}" in view.decision_lines(look, "v1", "v2")[0]
    if shown != verdict.upper():
        assert verdict.upper() not in summary
    status = ReleaseStatus(phase=Phase.PROGRESSING, canary_weight=49, history=(look,))
    assert any(line.split()[6:7] == [shown] for line in view.panel(SPEC, status, 1060.0))


def test_a_canary_look_still_shows_its_verdict() -> None:
    look = _look("inconclusive", None, "wait", "errorRate not yet shown safe")
    assert view.decision_summary(look).split()[6:8] == ["INCONCLUSIVE", "->"]
    assert "verdict INCONCLUSIVE -> wait" in view.decision_lines(look, "v1", "v2")[0]


def _abn_status() -> ReleaseStatus:
    """An A/B/n experiment's looks as the machine records them: the further variant v3's requests per service
    beside the control's and the canary's (`counts[service]["variants"]`)."""
    looks = []
    for i, (v1, v2, v3) in enumerate([(500, 480, 470), (510, 490, 0)]):
        counts = {s: {"baseline": {"requests": v1, "errors": 5}, "canary": {"requests": v2, "errors": 0},
                      "variants": {"v3": {"requests": v3, "errors": 47 if v3 else 0}}}
                  for s in ("master-search", "ml-search")}
        counts["primary"] = {"decision": "continue", "reason": "v3: 470 samples so far, 1000 needed per variant"}
        counts["guardrails"] = {"v3": {"verdict": "inconclusive", "reason": "no harm shown"}}
        looks.append(DecisionRecord(1000.0 + 30 * i, 30.0 * i, 0, 49, "inconclusive", "guardrails: no harm shown",
                                    "continue", counts=counts))
    return ReleaseStatus(phase=Phase.PROGRESSING, canary_weight=49, history=tuple(looks))


def test_the_traffic_table_of_an_abn_experiment_has_every_variant() -> None:
    lines = view.panel(SPEC, _abn_status(), 1060.0)
    at = lines.index("  traffic in the analysed windows (requests, error rate per version):")
    assert lines[at + 1].split() == ["service", "v1", "v2", "v3"]
    assert lines[at + 2].split() == ["master-search", "1010", "1.0%", "970", "0.0%", "470", "10.0%"]
    assert lines[at + 3].split()[0] == "ml-search" and lines[at + 4].startswith("  checks") is False
    assert view.traffic_totals(_abn_status(), "v1", "v2")["ml-search"]["v3"] == {"requests": 470, "errors": 47}


def test_a_canary_releases_traffic_table_is_unchanged() -> None:
    look = _look("pass", None, "wait", "within margins")
    lines = view.panel(SPEC, ReleaseStatus(phase=Phase.PROGRESSING, canary_weight=10, history=(look, look)), 1060.0)
    at = lines.index("  traffic in the analysed windows (requests, error rate per version):")
    assert lines[at + 1:at + 3] == ["    service                v1                  v2",
                                    "    master-search         994   0.0%         2272   0.0%"]


def test_a_stack_on_several_versions_shows_them() -> None:
    """ml-infer's baseline is v2-model, not the v1 the rest of the stack runs: its column says `stable`, and the
    versions line names what each service runs."""
    mixed = parse_release({"metadata": {"name": "r"}, "spec": {
        "stable": {"version": "v1", "versions": {"ml-infer": "v2-model"}},
        "canary": {"version": "v3", "images": {"ml-infer": "reg/ml-infer:3"}}}})
    look = _look("pass", None, "wait", "within margins")
    lines = view.panel(mixed, ReleaseStatus(phase=Phase.PROGRESSING, canary_weight=10, history=(look,)), 1060.0)
    assert lines[1].startswith("  revision 1 (attempt 1): v1 (ml-infer v2-model) -> v3")
    at = lines.index("  traffic in the analysed windows (requests, error rate per version):")
    assert lines[at + 1].split() == ["service", "stable", "v3"]
    unchanged = view.panel(SPEC, ReleaseStatus(phase=Phase.PROGRESSING, canary_weight=10, history=(look,)), 1060.0)
    assert unchanged[unchanged.index(lines[at]) + 1].split() == ["service", "v1", "v2"]


def test_a_looks_lines_name_each_service_s_own_stable_version_and_every_variant() -> None:
    """Under each look, one line per service: ml-infer's baseline is its own stable version (v2-model) where the
    rest of the stack runs v1, and an A/B/n experiment's further variant (v3) follows the canary."""
    counts = {s: {"baseline": {"requests": 400, "errors": 4}, "canary": {"requests": 380, "errors": 0},
                  "variants": {"v3": {"requests": 390, "errors": 39}}} for s in ("ml-infer", "keyword")}
    checks = tuple({"service": s, "check": "errorRate", "eValue": 1.0, "threshold": 400.0, "verdict": "pass"}
                   for s in ("ml-infer", "keyword"))
    look = DecisionRecord(1050.0, 51.2, 0, 33, "pass", "fine", "continue", checks=checks, counts=counts)
    lines = view.decision_lines(look, "v1", "v2", {"ml-infer": "v2-model"})
    infer = next(line for line in lines if line.split()[:1] == ["ml-infer"])
    keyword = next(line for line in lines if line.split()[:1] == ["keyword"])
    assert infer.split()[1:3] == ["v2-model:", "400"] and keyword.split()[1:3] == ["v1:", "400"]
    assert infer.endswith("| v3:   390 req  10.0% err")


def test_a_release_of_services_on_their_own_stable_version_names_that_version() -> None:
    """An undo of a model release: ml-infer goes from v2-model back to v1, the rest of the stack runs v1. `canary
    list`, `canary history` and a rollback's headline read `v2-model -> v1`, where they read `v1 -> v1`; a restart
    names what each service ran; and each service's traffic in a look is headed by the version it is compared
    with (keyword's own v1b, not v1)."""
    undo = ReleasedVersions("v1", "v1", {}, {}, {"ml-infer": "v2-model"}, ("ml-infer",))
    status = ReleaseStatus(phase=Phase.ROLLED_BACK, step=1, versions=undo)
    assert view.list_row("r", "ns", SPEC, status, 125.0)[5] == "v2-model->v1"
    lines = view.history_lines([RevisionRecord(2, 1, undo, "RolledBack", 0.0, 60.0)])
    assert lines[1].split()[2:5] == ["v2-model", "->", "v1"]
    assert "all traffic on v2-model (the stable version; v1 serves none)" in view.headline(SPEC, status, 100.0)
    whole = ReleasedVersions("v1", "v3", {}, {}, {"ml-infer": "v2-model"})
    assert view.list_row("r", "ns", SPEC, replace(status, versions=whole), 125.0)[5] == "v1/v2-model->v3"
    started = view.progress_lines(SPEC, ReleaseStatus(phase=Phase.SUCCEEDED), replace(
        status, phase=Phase.INITIALIZING, revision=2), 0.0)
    assert started[0] == "1970-01-01 00:00:00Z  revision 2 attempt 1 started: v1 (ml-infer v2-model) -> v1"
    look = DecisionRecord(1050.0, 51.2, 0, 10, "pass", "fine", "next step", counts={
        s: {"baseline": {"requests": 90, "errors": 0}, "canary": {"requests": 10, "errors": 0}}
        for s in ("ml-search", "keyword")}, checks=tuple(
        {"service": s, "check": "errorRate", "verdict": "pass", "eValue": 1.0} for s in ("ml-search", "keyword")))
    lines = view.decision_lines(look, "v1", "v2", {"keyword": "v1b"})
    assert [line.split()[:2] for line in lines if line.split()[:1] in (["ml-search"], ["keyword"])] == [
        ["ml-search", "v1:"], ["keyword", "v1b:"]]
