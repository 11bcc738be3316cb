"""`canary shadow-compare`: ask two running versions of the search stack the same searches and judge their
rankings with the shadow judge, before any user is sent to the new one.

    canary shadow-compare --stable URL --new URL --searches FILE [--k 10] [--out pairs.jsonl]
                          [--min-overlap 0.8] [--alpha 0.05] [--min-pairs 20] [--look 10] [--all]
                          [--lane-header x-canary-lane]

`--stable` and `--new` are each version's entry (its master-search). Each search is sent to the stable stack
twice and to the new one once (controller/adapters/shadow/compare.py), in the stable and the canary lane, so
that the mesh keeps each on one version along its whole path;
the pairs are written to `--out` in the format `canary analyze --shadow` reads, and the judge looks every
`--look` pairs, printing one JSON line per look, up to the first decision (`--all`: every search is asked,
and the decision is the first one the judge took). A search a version does not answer is counted, not paired;
each look also carries each side's answered latency (median and 90th percentile, ms).
Exit code: 0 pass, 1 fail, 2 bad input, 3 undecided when the searches ran out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import httpx

from analysis.shadow import ShadowConfig, fold, judge, new_state
from analysis.shadow_replay import pair_line
from controller.adapters.shadow.compare import AnswerError, Comparator, read_searches
from controller.core.plan import DEFAULT_LANE_HEADER

EXIT = {"pass": 0, "fail": 1, "inconclusive": 3}


def _parser() -> argparse.ArgumentParser:
    d = ShadowConfig()
    p = argparse.ArgumentParser(prog="canary shadow-compare", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--stable", required=True, metavar="URL", help="the stable version's entry (master-search)")
    p.add_argument("--new", required=True, metavar="URL", help="the new version's entry (master-search)")
    p.add_argument("--searches", required=True, type=Path, metavar="FILE",
                   help="one search per line: a JSON request body, or plain query text")
    p.add_argument("--k", type=int, default=10, help="top-k documents compared (default 10)")
    p.add_argument("--out", type=Path, help="write the pairs here (JSON lines, for canary analyze --shadow)")
    p.add_argument("--min-overlap", type=float, default=d.min_overlap)
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--min-pairs", type=int, default=d.min_pairs)
    p.add_argument("--look", type=int, default=10, help="pairs between two looks (default 10)")
    p.add_argument("--lane-header", default=DEFAULT_LANE_HEADER,
                   help=f"sent as `stable` to the stable entry and `canary` to the new one, so that each search stays "
                        f"on one version through the mesh (default {DEFAULT_LANE_HEADER}; '' sends none)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    p.add_argument("--all", action="store_true", help="ask every search, also after the decision")
    return p


def main(argv: list[str], stdout: TextIO | None = None, stderr: TextIO | None = None,
         transport: httpx.BaseTransport | None = None) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        opts = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        config = ShadowConfig(min_overlap=opts.min_overlap, alpha=opts.alpha, min_pairs=opts.min_pairs)
        if opts.look < 1 or opts.k < 1:
            raise ValueError("--look and --k must be at least 1")
        searches = read_searches(opts.searches, opts.k)
    except (ValueError, OSError) as exc:
        print(f"canary shadow-compare: {exc}", file=err)
        return 2
    with httpx.Client(timeout=opts.timeout, transport=transport, trust_env=False) as client, \
            (opts.out.open("w", encoding="utf-8") if opts.out else _Discard()) as pairs_file:
        comparator = Comparator(client, opts.stable, opts.new, opts.k, lane_header=opts.lane_header or None)
        decision = _run(comparator, searches, config, opts, out, pairs_file)
    return EXIT[decision]


def _run(comparator: Comparator, searches: list[dict[str, Any]], config: ShadowConfig, opts: argparse.Namespace,
         out: TextIO, pairs_file: Any) -> str:
    state, decided = new_state(), "inconclusive"
    unanswered = {"stable": 0, "new": 0}
    batch = []
    for i, body in enumerate(searches, 1):
        try:
            pair = comparator.pair(body)
        except AnswerError as exc:
            unanswered[exc.side] += 1
        else:
            batch.append(pair)
            pairs_file.write(pair_line(pair) + "\n")
        if len(batch) < opts.look and i < len(searches):
            continue
        state, batch = fold(state, batch), []
        verdict = judge(state, config)
        print(json.dumps({"searches": i, "unanswered": unanswered, "latencyMs": comparator.latency_summary(),
                          **verdict.to_dict()}, allow_nan=False), file=out)
        if decided == "inconclusive" and verdict.decision != "inconclusive":
            decided = verdict.decision
            if not opts.all:
                break
    return decided


class _Discard:
    def __enter__(self) -> _Discard:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, text: str) -> int:
        return len(text)
