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
each look also carries each side's answered latency (median and 90th percentile, ms). The first failure of
each side is also said on stderr, with its reason (the new version is asked only once the stable one has
answered twice). When no search was answered by both, stderr says so and the exit code is 4.
Exit code: 0 pass, 1 fail, 2 bad input, 3 undecided when the searches ran out, 4 no search answered by both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx

from analysis.shadow import ShadowConfig, fold, judge, new_state
from analysis.shadow_replay import pair_line
from controller.adapters.shadow.compare import AnswerError, Comparator, read_searches
from controller.cli import flags
from controller.core.plan import DEFAULT_LANE_HEADER

EXIT = {"pass": 0, "fail": 1, "inconclusive": 3}
NONE_ANSWERED = 4


def _parser() -> argparse.ArgumentParser:
    d = ShadowConfig()
    about = " ".join((__doc__ or "").split("\n\n")[0].split())
    p = argparse.ArgumentParser(prog="canary shadow-compare", description=about,
                                epilog="Exit code: 0 pass, 1 fail, 2 bad input, 3 undecided when the searches ran out, "
                                       "4 no search answered by both versions.")
    p.add_argument("--stable", required=True, metavar="URL", help="the stable version's entry (master-search)")
    p.add_argument("--new", required=True, metavar="URL", help="the new version's entry (master-search)")
    p.add_argument("--searches", required=True, type=Path, metavar="FILE",
                   help="one search per line: a JSON request body, or plain query text")
    p.add_argument("--k", type=int, default=10, help="top-k documents compared (default 10)")
    p.add_argument("--out", type=Path, help="write the pairs here (JSON lines, for canary analyze --shadow)")
    p.add_argument("--min-overlap", type=float, default=d.min_overlap,
                   help=f"the top-k overlap (0-1) the new version must keep with the stable one, beyond the stable "
                        f"version's own run-to-run overlap (default {d.min_overlap})")
    p.add_argument("--alpha", type=float, default=d.alpha,
                   help=f"the judge's false-decision rate, over all its looks (default {d.alpha})")
    p.add_argument("--min-pairs", type=int, default=d.min_pairs,
                   help=f"no decision before this many compared searches (default {d.min_pairs})")
    p.add_argument("--look", type=int, default=10, help="pairs between two looks (default 10)")
    p.add_argument("--lane-header", type=flags.header_name_or_none, default=DEFAULT_LANE_HEADER,
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
        config = _config(opts)
        if opts.look < 1 or opts.k < 1:
            raise ValueError("--look and --k must be at least 1")
        if opts.timeout <= 0:
            raise ValueError(f"--timeout {opts.timeout:g}: must be a positive number of seconds")
        for flag, url in (("--stable", opts.stable), ("--new", opts.new)):
            _check_url(flag, url)
        searches = read_searches(opts.searches, opts.k)
    except (ValueError, OSError) as exc:
        print(f"canary shadow-compare: {exc}", file=err)
        return 2
    with httpx.Client(timeout=opts.timeout, transport=transport, trust_env=False) as client, \
            (opts.out.open("w", encoding="utf-8") if opts.out else _Discard()) as pairs_file:
        comparator = Comparator(client, opts.stable, opts.new, opts.k, lane_header=opts.lane_header or None)
        decision, compared = _run(comparator, searches, config, opts, out, pairs_file, err)
    if not compared:
        print("canary shadow-compare: no search was answered by both versions, so nothing was compared (the "
              "reasons are above)", file=err)
        return NONE_ANSWERED
    return EXIT[decision]


def _config(opts: argparse.Namespace) -> ShadowConfig:
    """The judge's settings; a refusal names the flag, not the spec field it shares the check with."""
    try:
        return ShadowConfig(min_overlap=opts.min_overlap, alpha=opts.alpha, min_pairs=opts.min_pairs)
    except ValueError as exc:
        message = str(exc)
        for field, flag in (("shadow minOverlap", "--min-overlap"), ("shadow alpha", "--alpha"),
                            ("shadow minPairs", "--min-pairs")):
            message = message.replace(field, flag)
        raise ValueError(message) from None


def _check_url(flag: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{flag} {url!r}: not an http(s) URL with a host (e.g. http://127.0.0.1:8000)")


def _run(comparator: Comparator, searches: list[dict[str, Any]], config: ShadowConfig, opts: argparse.Namespace,
         out: TextIO, pairs_file: Any, err: TextIO) -> tuple[str, int]:
    """The decision, and how many searches were compared."""
    state, decided, compared = new_state(), "inconclusive", 0
    unanswered = {"stable": 0, "new": 0}
    batch = []
    for i, body in enumerate(searches, 1):
        try:
            pair = comparator.pair(body)
        except AnswerError as exc:
            unanswered[exc.side] += 1
            if unanswered[exc.side] == 1:
                print(f"canary shadow-compare: search {i} not answered by {exc} (further failures are counted in "
                      "`unanswered`)", file=err)
        else:
            compared += 1
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
    return decided, compared


class _Discard:
    def __enter__(self) -> _Discard:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, text: str) -> int:
        return len(text)
