"""Replay of a shadow comparison: judge recorded pairs of answers offline (`canary analyze --shadow FILE...`).

A pairs file is JSON lines, one mirrored search per line, in the order they were answered:

    {"query": "graph neural networks", "stable": ["d12", "d7", ...], "stableAgain": ["d12", "d7", ...],
     "new": ["d12", "d9", ...]}

`stable` is the stable stack's top-k document ids, `stableAgain` a second answer of the stable stack to the same
request (the noise of one version; docs/shadow.md), `new` the new stack's. Ids are strings or numbers, each at
most once in a list. The judge (analysis/shadow.py) looks every `--look` pairs (default 10) and at the end; one
JSON object per look goes to stdout (`file`, `look`, and the verdict with its numbers), up to the first decision.
A bad file gets one line on stderr naming the file, the line and the field, and the exit code becomes 2; it
is checked whole before any look is printed, and the other files still run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from analysis.shadow import ShadowConfig, ShadowPair, fold, judge, new_state

ANSWERS = ("stable", "stableAgain", "new")


class InvalidPairs(ValueError):
    """A pairs file that cannot be judged."""


def parse_pair(line: str, where: str) -> ShadowPair:
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidPairs(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(doc, dict):
        raise InvalidPairs(f"{where}: a pair is a JSON object with query, {', '.join(ANSWERS)}")
    query = doc.get("query", "")
    if not isinstance(query, str):
        raise InvalidPairs(f"{where}: query is not a string")
    answers = []
    for name in ANSWERS:
        ids = doc.get(name)
        if not isinstance(ids, list) or not all(isinstance(i, str | int) and not isinstance(i, bool) for i in ids):
            raise InvalidPairs(f"{where}: {name} is not a list of document ids (strings or numbers)")
        as_text = tuple(str(i) for i in ids)
        if len(set(as_text)) != len(as_text):
            raise InvalidPairs(f"{where}: {name} names a document twice")
        answers.append(as_text)
    return ShadowPair(query, *answers)


def pair_line(pair: ShadowPair) -> str:
    """One line of a pairs file, as `parse_pair` reads it."""
    return json.dumps({"query": pair.query, "stable": list(pair.stable), "stableAgain": list(pair.stable_again),
                       "new": list(pair.new)})


def load_pairs(path: Path) -> list[ShadowPair]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidPairs(f"cannot read it: {exc}") from None
    pairs = [parse_pair(line, f"line {n}") for n, line in enumerate(lines, 1) if line.strip()]
    if not pairs:
        raise InvalidPairs("no pairs in it")
    return pairs


def looks(pairs: Sequence[ShadowPair], config: ShadowConfig, every: int) -> Iterator[dict[str, Any]]:
    """The verdict after every `every` pairs and after the last, up to the first decision."""
    state = new_state()
    for look, start in enumerate(range(0, len(pairs), every), 1):
        state = fold(state, pairs[start:start + every])
        verdict = judge(state, config)
        yield {"look": look, **verdict.to_dict()}
        if verdict.decision != "inconclusive":
            return


def _parser() -> argparse.ArgumentParser:
    defaults = ShadowConfig()
    parser = argparse.ArgumentParser(prog="canary analyze --shadow",
                                     description="Judge recorded pairs of answers of a shadow phase offline.")
    parser.add_argument("--shadow", nargs="+", required=True, metavar="FILE", help="pairs files (JSON lines)")
    parser.add_argument("--min-overlap", type=float, default=defaults.min_overlap,
                        help=f"mean RBO beyond noise the new stack must keep (default {defaults.min_overlap})")
    parser.add_argument("--alpha", type=float, default=defaults.alpha)
    parser.add_argument("--min-pairs", type=int, default=defaults.min_pairs)
    parser.add_argument("--look", type=int, default=10, help="pairs between two looks (default 10)")
    return parser


def main(argv: list[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """`canary analyze --shadow FILE... [--min-overlap M] [--alpha A] [--min-pairs N] [--look K]`."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        opts = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage message
        return int(exc.code or 0)
    try:
        config = ShadowConfig(min_overlap=opts.min_overlap, alpha=opts.alpha, min_pairs=opts.min_pairs)
        if opts.look < 1:
            raise ValueError(f"--look {opts.look} is below 1")
    except ValueError as exc:
        print(f"canary analyze: {exc}", file=err)
        return 2
    status = 0
    for name in opts.shadow:
        try:
            pairs = load_pairs(Path(name))
        except InvalidPairs as exc:
            print(f"canary analyze: {name}: {exc}", file=err)
            status = 2
            continue
        for record in looks(pairs, config, opts.look):
            print(json.dumps({"file": name, **record}, allow_nan=False), file=out)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
