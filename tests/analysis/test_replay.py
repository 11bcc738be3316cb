"""`canary analyze --replay`: JSON lines per interval, clear one-line errors, exit code 2 for bad files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from analysis.replay import main

BOUNDS: list[Any] = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, "+Inf"]


def interval(t: int, weight: float = 10, c_err: int = 0) -> dict[str, Any]:
    return {
        "t": t,
        "weight": weight,
        "baseline": {"requests": 540, "errors": 3, "buckets": [0, 0, 0, 1, 40, 300, 150, 40, 8, 1, 0, 0, 0, 0]},
        "canary": {"requests": 61, "errors": c_err, "buckets": [0, 0, 0, 0, 5, 33, 17, 5, 1, 0, 0, 0, 0, 0]},
    }


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def run(args: list[str]) -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(args, stdout=out, stderr=err)
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def test_good_file_gives_one_record_per_interval(tmp_path: Path) -> None:
    f = write(tmp_path / "good.json", {"buckets_ms": BOUNDS, "intervals": [interval(60 * t) for t in range(1, 6)]})
    code, lines, err = run(["--replay", str(f)])
    assert code == 0 and err == ""
    assert [r["t"] for r in lines] == [60, 120, 180, 240, 300]
    assert all(r["file"] == str(f) and r["verdict"] in ("pass", "inconclusive") for r in lines)
    # 300 canary requests cannot show the canary within the default margins: no alarm, but no pass either.
    assert lines[-1]["verdict"] == "inconclusive" and lines[-1]["reason"].startswith("not yet shown safe")
    for check in lines[-1]["checks"]:  # per check: the harm evidence and the safety bound
        assert check["eValue"] is not None and check["threshold"] > 0
        if check["check"] != "sampleRatio":
            assert check["estimates"]["safety"]["bound"] >= check["estimates"]["safety"]["margin"] or \
                check["verdict"] == "pass"


def test_pods_in_a_replay_reach_the_judge(tmp_path: Path) -> None:
    def pod(buckets: list[int], errors: int = 0) -> dict[str, Any]:
        return {"requests": sum(buckets), "errors": errors, "buckets": buckets}

    doc: dict[str, Any] = {"buckets_ms": BOUNDS, "intervals": []}
    for t in range(1, 4):
        raw = interval(60 * t)
        fast, slow = raw["baseline"]["buckets"][:6] + [0] * 8, [0] * 6 + raw["baseline"]["buckets"][6:]
        raw["baselinePods"] = {"v1-a": pod(fast, 3), "v1-b": pod(slow)}  # two pods far apart
        raw["canaryPods"] = {"v2-a": raw["canary"]}
        doc["intervals"].append(raw)
    code, lines, err = run(["--replay", str(write(tmp_path / "pods.json", doc))])
    assert code == 0 and err == ""
    (shift,) = [c for c in lines[-1]["checks"] if c["check"] == "latencyShift"]
    assert shift["estimates"]["podSpread"] > 0.3 and shift["estimates"]["placementFactor"] > 1.0
    # The same file without its pods: the fixed-effect judge.
    for raw in doc["intervals"]:
        del raw["baselinePods"], raw["canaryPods"]
    _, lines, _ = run(["--replay", str(write(tmp_path / "plain.json", doc))])
    (shift,) = [c for c in lines[-1]["checks"] if c["check"] == "latencyShift"]
    assert shift["estimates"]["podSpread"] == 0.0 and shift["estimates"]["placementFactor"] == 1.0


def test_a_pod_new_in_a_replay_is_left_out_while_it_warms_up_as_the_controller_does(tmp_path: Path) -> None:
    doc: dict[str, Any] = {"buckets_ms": BOUNDS, "intervals": []}
    for t in range(1, 4):
        raw = interval(60 * t)
        pods = {"v2-a": raw["canary"]} if t == 1 else {
            "v2-a": {**raw["canary"], "buckets": [0, 0, 0, 0, 5, 33, 17, 6, 0, 0, 0, 0, 0, 0]},
            "v2-b": {**raw["canary"], "errors": 1, "buckets": [0, 0, 0, 0, 5, 33, 17, 4, 2, 0, 0, 0, 0, 0]}}
        raw["canary"] = {"requests": 61 * len(pods), "errors": sum(p["errors"] for p in pods.values()),
                         "buckets": [sum(b) for b in zip(*(p["buckets"] for p in pods.values()), strict=True)]}
        raw["canaryPods"] = pods
        doc["intervals"].append(raw)
    f = write(tmp_path / "scaled.json", doc)
    code, lines, err = run(["--replay", str(f)])
    assert code == 0 and err == ""
    assert [r["details"]["canaryPodsWarming"] for r in lines] == [{}, {"service": ["v2-b"]}, {}]
    assert [r["details"]["podWarmup"] for r in lines] == [True, True, True]
    _, lines, _ = run(["--replay", str(f), "--pod-warmup", "0"])
    assert [r["details"]["canaryPodsWarming"] for r in lines] == [{}, {}, {}]
    assert not any(r["details"]["podWarmup"] for r in lines)
    code, _, err = run(["--replay", str(f), "--pod-warmup", "-1"])
    assert code == 2 and "--pod-warmup: -1 is negative" in err


@pytest.mark.parametrize("judge", ["sequential", "kayenta", "threshold"])
def test_every_judge_replays(tmp_path: Path, judge: str) -> None:
    f = write(
        tmp_path / "r.json", {"buckets_ms": BOUNDS, "intervals": [interval(60 * t, c_err=20) for t in range(1, 8)]}
    )
    code, lines, _ = run(["--replay", str(f), "--judge", judge, "--alpha", "0.01"])
    assert code == 0 and lines[-1]["judge"] == judge
    assert lines[-1]["verdict"] == "fail"  # a third of the canary's requests fail


# The stable version's errors come in bursts (a minute of 9-16 errors in 540 requests now and then).
BURSTY_HISTORY = [0, 9, 1, 0, 14, 2, 0, 0, 11, 1, 0, 3, 0, 16, 0, 1, 0, 8, 0, 0, 12, 1, 0, 2, 0, 0, 10, 0, 1, 0]


def bursty_release(canary_errors: list[int]) -> dict[str, Any]:
    """Ten minutes at 10% with a quiet baseline, and before them the bursty history."""
    intervals = []
    for t, errors in enumerate(canary_errors, start=1):
        raw = interval(60 * t, c_err=errors)
        raw["baseline"]["errors"] = 2 - t % 2  # 1, 2, 1, 2, ...: the baseline quiet during the release
        intervals.append(raw)
    history = [{"baseline": {**interval(0)["baseline"], "errors": e}} for e in BURSTY_HISTORY]
    return {"buckets_ms": BOUNDS, "intervals": intervals, "history": history}


def test_history_primes_the_judge_as_the_controller_does(tmp_path: Path) -> None:
    """A canary with three one-minute error bursts, in a service whose stable version is known to burst: with
    the history the judge holds (as the controller, which reads `historyIntervals` windows first); without it
    the same minutes are a regression."""
    doc = bursty_release([0, 3, 0, 4, 0, 3, 0, 0, 0, 0])
    code, lines, err = run(["--replay", str(write(tmp_path / "with.json", doc))])
    assert code == 0 and err == ""
    assert all(r["history"] == 30 for r in lines) and {r["verdict"] for r in lines} == {"inconclusive"}
    _, without, _ = run(["--replay", str(write(tmp_path / "without.json", {**doc, "history": []}))])
    assert all(r["history"] == 0 for r in without) and without[-1]["verdict"] == "fail"
    _, unused, _ = run(["--replay", str(tmp_path / "with.json"), "--config", str(write(
        tmp_path / "spec.json", {"historyIntervals": 0}))])
    assert [r["history"] for r in unused] == [0] * 10 and unused[-1]["verdict"] == "fail"
    # The last historyIntervals of the file's history are the ones used, as the controller reads the latest.
    _, last5, _ = run(["--replay", str(tmp_path / "with.json"), "--config", str(write(
        tmp_path / "spec5.json", {"historyIntervals": 5}))])
    assert last5[0]["history"] == 5
    # A judge that learns nothing from history is not given it.
    _, kayenta, _ = run(["--replay", str(tmp_path / "with.json"), "--judge", "kayenta"])
    assert kayenta[0]["history"] == 0


def test_with_history_a_sustained_regression_still_fails(tmp_path: Path) -> None:
    _, lines, _ = run(["--replay", str(write(tmp_path / "r.json", bursty_release([3] * 10)))])
    assert lines[-1]["history"] == 30
    assert [r["verdict"] for r in lines].index("fail") <= 5  # 3 errors in 61 every minute against ~0.3%


BAD = {
    "negative": (
        {
            "buckets_ms": BOUNDS,
            "intervals": [
                {
                    **interval(60),
                    "canary": {"requests": 61, "errors": 0, "buckets": [0, 0, 0, 0, 5, 33, 17, 5, 1, 0, 0, 0, 0, -1]},
                }
            ],
        },
        "intervals[0].canary.buckets[13]: -1 is negative",
    ),
    "length": (
        {
            "buckets_ms": BOUNDS,
            "intervals": [{**interval(60), "baseline": {"requests": 1, "errors": 0, "buckets": [1]}}],
        },
        "intervals[0].baseline.buckets: has 1 entries",
    ),
    "missing": (
        {"buckets_ms": BOUNDS, "intervals": [{"t": 60, "weight": 10, "baseline": interval(60)["baseline"]}]},
        'intervals[0]: missing key "canary"',
    ),
    "nan": (
        json.dumps({"buckets_ms": BOUNDS, "intervals": [interval(60)]}).replace('"weight": 10', '"weight": NaN'),
        "intervals[0].weight: nan is not a finite number",
    ),
    "sum": (
        {
            "buckets_ms": BOUNDS,
            "intervals": [
                {
                    **interval(60),
                    "canary": {"requests": 99, "errors": 0, "buckets": [0, 0, 0, 0, 5, 33, 17, 5, 1, 0, 0, 0, 0, 0]},
                }
            ],
        },
        "intervals[0].canary.buckets: sum to 61, requests is 99",
    ),
    "pods_sum": (
        {
            "buckets_ms": BOUNDS,
            "intervals": [{**interval(60), "canaryPods": {"v2-a": {"requests": 1, "errors": 0,
                                                                   "buckets": [0, 0, 0, 0, 1] + [0] * 9}}}],
        },
        "intervals[0].canaryPods: add up to 1 requests, 0 errors and their buckets, not to canary's",
    ),
    "pods_shape": (
        {"buckets_ms": BOUNDS, "intervals": [{**interval(60), "baselinePods": [1, 2]}]},
        "intervals[0].baselinePods: is not an object of pod names to counts",
    ),
    "no_inf": ({"buckets_ms": [1, 2], "intervals": []}, 'buckets_ms[1]: the last bound must be "+Inf"'),
    "history_shape": ({"buckets_ms": BOUNDS, "intervals": [interval(60)], "history": {"baseline": 1}},
                      "history: is not a list"),
    "history_counts": (
        {"buckets_ms": BOUNDS, "intervals": [interval(60)],
         "history": [{"baseline": interval(0)["baseline"]}, {"baseline": {**interval(0)["baseline"], "errors": -2}}]},
        "history[1].baseline.errors: -2 is negative",
    ),
    "history_after_start": (
        {"buckets_ms": BOUNDS, "intervals": [interval(60)], "history": [{"t": 0, "baseline": interval(0)["baseline"]}]},
        "history[0].t: 0.0 is not before the release (t < 0)",
    ),
    "not_json": ("{nope", "(json): line 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_gets_one_line_naming_file_and_field_and_others_still_run(tmp_path: Path, case: str) -> None:
    doc, message = BAD[case]
    bad = write(tmp_path / "a_bad.json", doc)
    good = write(tmp_path / "b_good.json", {"buckets_ms": BOUNDS, "intervals": [interval(60)]})
    code, lines, err = run(["--replay", str(tmp_path)])
    assert code == 2
    assert err.count("\n") == 1 and f"{bad}: {message}" in err
    assert [r["file"] for r in lines] == [str(good)]


def test_missing_file_and_bad_option(tmp_path: Path) -> None:
    code, _, err = run(["--replay", str(tmp_path / "nope.json")])
    assert code == 2 and "nope.json: (file): cannot be read" in err
    code, _, err = run(["--replay", str(tmp_path), "--alpha", "2"])
    assert code == 2 and "options.alpha: 2.0 is not in (0, 1)" in err
