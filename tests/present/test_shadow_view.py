"""A shadow phase as `canary get` and the report show it: the numbers the judge compared, the overlaps, the
searches whose answers differ most side by side (docs/shadow.md)."""

from __future__ import annotations

from typing import Any

from analysis.shadow import ShadowConfig, ShadowPair, fold, judge, new_state
from controller.core.spec.release import parse_release
from controller.core.status import Phase, ReleaseStatus
from controller.present.report import render_report
from controller.present.view import panel

RELEASE: dict[str, Any] = {"metadata": {"name": "search-v2", "namespace": "search"}, "spec": {
    "stable": {"version": "v1"}, "canary": {"version": "v2", "services": ["ml-search"]},
    "strategy": {"shadow": {}}}}


def _status() -> ReleaseStatus:
    same = tuple(f"d{i}" for i in range(10))
    pairs = [ShadowPair(f"query {i}", same, same, same if i % 4 == 0 else tuple(f"<x{i}>" for i in range(10)))
             for i in range(80)]
    verdict = judge(fold(new_state(), pairs), ShadowConfig())
    shadow = {"verdict": verdict.to_dict(), "mirrored": 45, "dropped": 1, "foreign": 2,
              "latencyMs": {"stable": {"p50": 12.5, "p90": 30.0}, "new": {"p50": 13.0, "p90": 31.0}},
              "unanswered": {"stable": 0, "new": 3},
              "scoreDrift": {"n": 20, "sum": 7.0, "noiseSum": 0.0, "mean": 0.35, "noiseMean": 0.0}}
    return ReleaseStatus(phase=Phase.ROLLED_BACK, shadow=shadow, started_at=1.0, phase_since=2.0, message="shadow")


def test_canary_get_shows_what_the_shadow_judge_compared() -> None:
    text = "\n".join(panel(parse_release(RELEASE), _status(), now=10.0))
    assert "shadow: 80 pairs compared (45 searches mirrored, 1 dropped, 2 not served by the versions asked)" in text
    assert "mean RBO 0.250 in [0.0" in text and "(stable with itself 1.000), top result changed 75%" in text
    assert "margin 0.200 -> FAIL" in text
    assert "score drift of the documents both rank: 0.35 (stable with itself 0) over 20 pairs" in text
    assert "answers to the comparator: stable p50 12.5 p90 30 ms, 0 unanswered; new p50 13 p90 31 ms, 3 unanswered" \
        in text
    assert "overlap 0.0..1.0: 60 0 0 0 0 0 0 0 0 0 20" in text
    assert "stable ['d0', 'd1', 'd2'] new ['<x0>', '<x1>', '<x2>']" in text and "RBO 0.00 'query 1'" in text


def test_the_report_shows_the_overlaps_and_the_most_different_searches_escaped() -> None:
    html = render_report(RELEASE, _status().for_storage())
    assert "<h2>Shadow phase: rankings compared</h2>" in html
    assert '<span class="v-fail">FAIL</span> after 80 pairs of answers: mean RBO 0.25 in [0.' in html
    assert "&lt;x0&gt;, &lt;x1&gt;" in html and "<x0>" not in html
    assert html.count("<tr><td>query ") == 5
    # A release without a shadow phase has no such section.
    assert "Shadow phase" not in render_report(RELEASE, ReleaseStatus().for_storage())
