"""Replay: judge recorded intervals without a cluster (`canary analyze --replay FILE...`).

A replay file is JSON (see the "Replay format" section of the design brief):

    {"buckets_ms": [0.5, 1, ..., "+Inf"],
     "service": "search",                      # optional, default "service"
     "intervals": [{"t": 60, "weight": 10,
                    "baseline": {"requests": 540, "errors": 3, "buckets": [...]},
                    "canary":   {"requests": 61,  "errors": 0, "buckets": [...]},
                    "baselinePods": {"search-v1-7d9f-x2k": {"requests": 54, ...}, ...},   # optional
                    "canaryPods":   {"search-v2-5c4b-q8z": {"requests": 61, ...}}}, ...]}   # optional

`baselinePods` / `canaryPods` break a version's counts down by pod (each pod as a version's counts; they
must add up to the version's): the judge then learns how much identical pods differ (analysis/pods.py).

An optional top-level `"history"` holds the stable version's own intervals from before the release, oldest
first, each `{"baseline": {...}}` with optional `"baselinePods"` and `"t"` (seconds, before 0). The controller
reads `historyIntervals` such windows (30 by default) before it judges a release and primes the judge with
them (its error bursts, its pods' spread, the slow-tail threshold); the replay does the same with the last
`historyIntervals` of the file's, so a file that carries them is judged as the controller judged it. Each
record says how many it was primed with (`history`); without them the judge learns that noise from the
release alone, as the controller does when its metrics source keeps no history.

`main` writes one JSON object per interval to stdout (`file`, `t`, `verdict` and the decision record)
through the same judge code the controller runs. A bad file gets one line on stderr naming the file and
the field, and the exit code becomes 2; the other files still run. A file is checked whole before any of
its intervals is judged, so a bad file prints no decisions. A file without intervals is bad input too, and a
directory without *.json files stops the command before any file is judged (exit 2 either way).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from analysis.config import JUDGES, AnalysisConfig, InvalidAnalysisConfig
from analysis.judges import make_judge
from analysis.observations import ISTIO_BUCKETS_MS, IntervalObservation, InvalidObservation, VersionCounts


class InvalidReplay(ValueError):
    """A replay file that cannot be judged; `field` is the JSON path of the bad part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _reject_constant(name: str) -> float:
    # JSON has no NaN or Infinity; Python's parser accepts them, so mark them for the checks below.
    return math.nan


def _whole(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidReplay(where, f"{value!r} is not a whole number")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise InvalidReplay(where, f"{value!r} is not a whole number")
    return int(value)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidReplay(where, f"{value!r} is not a finite number")
    return float(value)


def _field(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise InvalidReplay(where, f"{type(obj).__name__} is not an object")
    if key not in obj:
        raise InvalidReplay(where, f'missing key "{key}"')
    return obj[key]


def parse_bounds(raw: Any) -> tuple[float, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidReplay("buckets_ms", "is not a non-empty list")
    bounds: list[float] = []
    for i, b in enumerate(raw):
        if b in ("+Inf", "Inf", "inf", "+inf") and i == len(raw) - 1:
            bounds.append(math.inf)
            continue
        value = _number(b, f"buckets_ms[{i}]")
        if bounds and value <= bounds[-1]:
            raise InvalidReplay(f"buckets_ms[{i}]", f"{value} is not above the previous bound {bounds[-1]}")
        bounds.append(value)
    if bounds[-1] != math.inf:
        raise InvalidReplay(f"buckets_ms[{len(raw) - 1}]", 'the last bound must be "+Inf"')
    return tuple(bounds)


def _counts(raw: Any, where: str, n_buckets: int) -> VersionCounts:
    buckets = _field(raw, "buckets", where)
    if not isinstance(buckets, list):
        raise InvalidReplay(f"{where}.buckets", "is not a list")
    counts = VersionCounts(
        requests=_whole(_field(raw, "requests", where), f"{where}.requests"),
        errors=_whole(_field(raw, "errors", where), f"{where}.errors"),
        buckets=tuple(_whole(b, f"{where}.buckets[{i}]") for i, b in enumerate(buckets)),
    )
    counts.validate(n_buckets, where)
    if sum(counts.buckets) != counts.requests:
        raise InvalidReplay(f"{where}.buckets", f"sum to {sum(counts.buckets)}, requests is {counts.requests}")
    return counts


def _pods(raw: Any, version: str, where: str, n_buckets: int) -> dict[str, VersionCounts]:
    """`<version>Pods`, when given: per pod counts that add up to the version's."""
    key = f"{version}Pods"
    pods = raw.get(key) if isinstance(raw, dict) else None
    if pods is None:
        return {}
    if not isinstance(pods, dict) or not all(isinstance(name, str) and name for name in pods):
        raise InvalidReplay(f"{where}.{key}", "is not an object of pod names to counts")
    out = {name: _counts(counts, f"{where}.{key}.{name}", n_buckets) for name, counts in pods.items()}
    total = sum(out.values(), VersionCounts.empty(n_buckets))
    whole = _counts(raw[version], f"{where}.{version}", n_buckets)
    if out and total != whole:
        raise InvalidReplay(f"{where}.{key}", f"add up to {total.requests} requests, {total.errors} errors and "
                                              f"their buckets, not to {version}'s")
    return out


def parse_replay(doc: Any) -> tuple[str, list[IntervalObservation]]:
    """(service name, intervals) of a parsed replay document; raises InvalidReplay/InvalidObservation."""
    if not isinstance(doc, dict):
        raise InvalidReplay("(top level)", "is not an object")
    bounds = parse_bounds(_field(doc, "buckets_ms", "(top level)"))
    service = doc.get("service", "service")
    if not isinstance(service, str) or not service:
        raise InvalidReplay("service", f"{service!r} is not a non-empty string")
    raw_intervals = _field(doc, "intervals", "(top level)")
    if not isinstance(raw_intervals, list):
        raise InvalidReplay("intervals", "is not a list")
    out: list[IntervalObservation] = []
    for i, raw in enumerate(raw_intervals):
        where = f"intervals[{i}]"
        obs = IntervalObservation(
            t=_number(_field(raw, "t", where), f"{where}.t"),
            weight=_number(_field(raw, "weight", where), f"{where}.weight"),
            baseline=_counts(_field(raw, "baseline", where), f"{where}.baseline", len(bounds)),
            canary=_counts(_field(raw, "canary", where), f"{where}.canary", len(bounds)),
            bounds_ms=bounds,
            baseline_pods=_pods(raw, "baseline", where, len(bounds)),
            canary_pods=_pods(raw, "canary", where, len(bounds)),
        )
        obs.validate(where)
        if out and obs.t <= out[-1].t:
            raise InvalidReplay(f"{where}.t", f"{obs.t} does not come after {out[-1].t}")
        out.append(obs)
    return service, out


def parse_history(doc: Any) -> list[IntervalObservation]:
    """The stable version's intervals before the release (`"history"`, optional): each one's baseline counts
    (and pods) as an interval at weight 0 with no canary traffic, as the controller hands them to the judge."""
    raw_history = doc.get("history", []) if isinstance(doc, dict) else []
    if not isinstance(raw_history, list):
        raise InvalidReplay("history", "is not a list")
    bounds = parse_bounds(_field(doc, "buckets_ms", "(top level)"))
    out: list[IntervalObservation] = []
    for i, raw in enumerate(raw_history):
        where = f"history[{i}]"
        t = _number(raw["t"], f"{where}.t") if isinstance(raw, dict) and "t" in raw else -float(len(raw_history) - i)
        if t >= 0:
            raise InvalidReplay(f"{where}.t", f"{t} is not before the release (t < 0)")
        if out and t <= out[-1].t:
            raise InvalidReplay(f"{where}.t", f"{t} does not come after {out[-1].t}")
        obs = IntervalObservation(
            t=t, weight=0.0, baseline=_counts(_field(raw, "baseline", where), f"{where}.baseline", len(bounds)),
            canary=VersionCounts.empty(len(bounds)), bounds_ms=bounds,
            baseline_pods=_pods(raw, "baseline", where, len(bounds)),
        )
        obs.validate(where)
        out.append(obs)
    return out


def load_replay(path: Path) -> tuple[str, list[IntervalObservation], list[IntervalObservation]]:
    """(service, intervals, history) of a replay file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidReplay("(file)", f"cannot be read: {exc}") from exc
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidReplay("(json)", f"line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    service, intervals = parse_replay(doc)
    return service, intervals, parse_history(doc)


def replay_decisions(
    config: AnalysisConfig, service: str, intervals: Sequence[IntervalObservation],
    history: Sequence[IntervalObservation] = (),
) -> Iterator[dict[str, Any]]:
    """The decision record of every interval, judged in order from a fresh state primed, as the controller
    primes it (`controller.core.machine.analysing.prime_judge`), with the last `historyIntervals` of `history`
    when the judge learns from them (the sequential judge)."""
    judge = make_judge(config)
    state = judge.initial_state(services=[service], bounds_ms=intervals[0].bounds_ms if intervals else ISTIO_BUCKETS_MS)
    used = list(history)[-config.history_intervals:] if config.history_intervals > 0 and config.judge == "sequential" \
        else []
    if used:
        state = judge.prime(state, [{service: obs} for obs in used])
    for obs in intervals:
        state, decision = judge.update(state, {service: obs})
        yield {"t": obs.t, **decision.to_dict(), "verdict": decision.verdict.value, "history": len(used)}


class NoReplayFiles(ValueError):
    """A directory given as replay files that holds none: bad input (exit 2), not an empty success."""


def expand_paths(args: Sequence[str]) -> list[Path]:
    """Files as given; directories contribute their *.json files, sorted; NoReplayFiles for a directory without."""
    paths: list[Path] = []
    for arg in args:
        p = Path(arg)
        found = sorted(p.glob("*.json")) if p.is_dir() else [p]
        if not found:
            raise NoReplayFiles(f"{p}: no replay file (*.json) in this directory")
        paths.extend(found)
    return paths


MODES = """the three modes of canary analyze:
  canary analyze --replay FILE...|DIR [--judge J] [--alpha A] [--config FILE] [--pod-warmup N]
      a canary release's recorded intervals, judged as the controller judges them (this help)
  canary analyze --experiment --replay FILE...|DIR
      an A/B experiment's recorded looks (canary analyze --experiment --help)
  canary analyze --shadow FILE... [--min-overlap M] [--alpha A] [--min-pairs N] [--look K]
      a shadow phase's recorded pairs of answers (canary analyze --shadow --help)
Each writes one JSON object per interval, look or verdict to stdout; a bad file gets a line on stderr
naming it, and exit code 2 (so do a replay file without intervals and a directory without *.json files)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canary analyze", epilog=MODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Judge a canary's recorded intervals offline: replay files (JSON; "
                                                 "docs/analysis.md, 'Replay')\nthrough the judge the controller "
                                                 "runs, one decision per interval.")
    parser.add_argument("--replay", nargs="+", required=True, metavar="FILE", help="replay files or directories")
    parser.add_argument("--judge", choices=JUDGES, default=None,
                        help="the judge (default: the --config file's, else sequential, the controller's default)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="the judge's false-alarm rate, between 0 and 1 (default: the --config file's, else "
                             "0.05, the controller's default)")
    parser.add_argument("--config", metavar="FILE", help="JSON object of spec.analysis settings")
    parser.add_argument("--pod-warmup", type=int, default=1, metavar="INTERVALS",
                        help="intervals a canary pod first seen after the first interval is left out of while it "
                             "warms up, as the controller does with strategy.canary.warmup (default 1, the "
                             "controller's default of one interval; 0: every pod judged at once)")
    return parser


def _config(opts: argparse.Namespace) -> AnalysisConfig:
    base: Any = {}
    if opts.config:
        try:
            base = json.loads(Path(opts.config).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidAnalysisConfig("--config", f"{opts.config}: cannot be read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise InvalidAnalysisConfig("--config", f"{opts.config}: not a text file ({exc.reason})") from None
        except json.JSONDecodeError as exc:
            raise InvalidAnalysisConfig("--config", f"{opts.config}: not JSON: line {exc.lineno} column "
                                                    f"{exc.colno}: {exc.msg}") from None
    if opts.pod_warmup < 0:
        raise InvalidAnalysisConfig("--pod-warmup", f"{opts.pod_warmup} is negative")
    config = AnalysisConfig.from_dict(base, path="--config" if opts.config else "spec.analysis").with_overrides(
        judge=opts.judge, alpha=opts.alpha
    )
    return replace(config, pod_warmup_intervals=opts.pod_warmup)


def main(argv: list[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """`canary analyze --replay FILE... [--judge J] [--alpha A] [--config FILE] [--pod-warmup N]`; returns the exit
    code."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        opts = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage message
        return int(exc.code or 0)
    try:
        config = _config(opts)
        paths = expand_paths(opts.replay)
    except (InvalidAnalysisConfig, NoReplayFiles) as exc:
        print(f"canary analyze: {exc}", file=err)
        return 2
    status = 0
    for path in paths:
        try:
            service, intervals, history = load_replay(path)
        except (InvalidReplay, InvalidObservation) as exc:
            print(f"canary analyze: {path}: {exc}", file=err)
            status = 2
            continue
        if not intervals:
            print(f"canary analyze: {path}: no intervals to judge (\"intervals\" is empty)", file=err)
            status = 2
            continue
        for record in replay_decisions(config, service, intervals, history):
            print(json.dumps({"file": str(path), **record}, allow_nan=False), file=out)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
