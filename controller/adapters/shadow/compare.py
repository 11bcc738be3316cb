"""Asking two running versions of the search stack the same search, and pairing their answers.

What a shadow phase's comparator does for each mirrored search (docs/shadow.md), here for searches given by
the caller (`canary shadow-compare` replays them from a file): the stable stack is asked twice (its second
answer is the noise of one version) and the new stack once, each at its own entry (master-search of that
version) and in its own release lane, and the three top-k lists of document ids become a `ShadowPair`. The
search API is the seed's: POST /master-service/search with {"text", "n_results", "random_seed"}, answered by
an object {doc_id: score} best first.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from analysis.shadow import ShadowPair
from controller.core.observation import MirroredPair
from controller.core.plan import DEFAULT_LANE_HEADER

SEARCH_PATH = "/master-service/search"
LATENCIES_KEPT = 10_000


class AnswerError(RuntimeError):
    """A version did not answer a search with a ranking: `side` is "stable" or "new"."""

    def __init__(self, side: str, message: str) -> None:
        super().__init__(f"{side}: {message}")
        self.side = side


def top_ids(answer: object, k: int) -> tuple[str, ...]:
    """The first k document ids of a seed-API answer ({doc_id: score, ...}, best first)."""
    if not isinstance(answer, dict) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                               for v in answer.values()):
        raise ValueError("answered no {doc_id: score} object")
    return tuple(str(doc) for doc in list(answer)[:k])


def new_latencies() -> dict[str, deque[float]]:
    """Per side, the milliseconds of its latest LATENCIES_KEPT answered requests."""
    return {"stable": deque(maxlen=LATENCIES_KEPT), "new": deque(maxlen=LATENCIES_KEPT)}


def latency_summary(latencies: Mapping[str, deque[float]]) -> dict[str, dict[str, float] | None]:
    """Per side: the median and 90th percentile of its answered requests' milliseconds (None before any)."""
    out: dict[str, dict[str, float] | None] = {}
    for side, kept in latencies.items():
        ms = tuple(kept)  # a snapshot: other threads may be appending
        out[side] = None if not ms else {"p50": round(float(np.percentile(ms, 50)), 2),
                                         "p90": round(float(np.percentile(ms, 90)), 2)}
    return out


@dataclass(frozen=True)
class Answer:
    """One version's answer to a search: its top-k document ids, their scores, and `x-served-by` ("" if none)."""

    ids: tuple[str, ...]
    scores: Mapping[str, float]
    served: str = ""


def score_drift(before: Mapping[str, float], after: Mapping[str, float]) -> float | None:
    """How much the scores of the documents both answers rank moved: the mean of |after - before| / |before|
    over the documents in both (a score of 0 counts its absolute change); None when they share none."""
    shared = [doc for doc in before if doc in after]
    if not shared:
        return None
    return float(np.mean([abs(after[d] - before[d]) / (abs(before[d]) or 1.0) for d in shared]))


def read_searches(path: Path, k: int) -> list[dict[str, Any]]:
    """The searches of a file, one per line: a JSON object (a search request as sent) or plain query text
    (sent as {"text": line, "n_results": k, "random_seed": 0}). ValueError naming the line when one is bad."""
    searches = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        if text.startswith("{"):
            try:
                body = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {n}: not JSON ({exc.msg})") from None
            if not isinstance(body.get("text"), str):
                raise ValueError(f"line {n}: a search needs its \"text\"")
        else:
            body = {"text": text, "n_results": k, "random_seed": 0}
        searches.append(body)
    if not searches:
        raise ValueError("no searches in it")
    return searches


@dataclass
class Comparator:
    """Pairs the answers of `stable` and `new` (base URLs of each version's entry service) to one search."""

    client: httpx.Client
    stable: str
    new: str
    k: int = 10
    headers: Mapping[str, str] = field(default_factory=dict)
    # The release lane each side's request is sent in (None: no lane header): a version's entry calls the
    # other services through the mesh, whose lane routes keep a request in the lane it names, so without it
    # the new version's entry would be answered by the stable version's inner services.
    lane_header: str | None = DEFAULT_LANE_HEADER
    # Milliseconds of the answered requests, per side (the latest LATENCIES_KEPT): the shadow's latency, as
    # extra evidence.
    latencies_ms: dict[str, deque[float]] = field(default_factory=new_latencies)

    def ask(self, side: str, body: Mapping[str, Any]) -> tuple[str, ...]:
        return self.answer(side, body).ids

    def answer(self, side: str, body: Mapping[str, Any]) -> Answer:
        """The side's answer to the search: top-k ids and scores, and its `x-served-by`."""
        base = self.stable if side == "stable" else self.new
        headers = dict(self.headers)
        if self.lane_header:
            headers[self.lane_header] = "stable" if side == "stable" else "canary"
        started = time.perf_counter()
        try:
            response = self.client.post(base.rstrip("/") + SEARCH_PATH, json=dict(body), headers=headers)
        except httpx.HTTPError as exc:
            raise AnswerError(side, f"{type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise AnswerError(side, f"HTTP {response.status_code}")
        self.latencies_ms[side].append((time.perf_counter() - started) * 1000.0)
        try:
            ranking = response.json()
            ids = top_ids(ranking, self.k)
        except ValueError as exc:
            raise AnswerError(side, str(exc)) from None
        return Answer(ids, {doc: float(ranking[doc]) for doc in ids}, response.headers.get("x-served-by", ""))

    def latency_summary(self) -> dict[str, dict[str, float] | None]:
        return latency_summary(self.latencies_ms)

    def pair(self, body: Mapping[str, Any]) -> ShadowPair:
        """Stable, stable again, new: three requests of the same search."""
        stable = self.ask("stable", body)
        again = self.ask("stable", body)
        return ShadowPair(str(body.get("text", "")), stable, again, self.ask("new", body))

    def mirrored_pair(self, body: Mapping[str, Any]) -> MirroredPair:
        """`pair`, with the path each answer took and the drift of the scores (new against stable, and stable's
        second answer against its first: the noise)."""
        stable, again, new = (self.answer(side, body) for side in ("stable", "stable", "new"))
        return MirroredPair(ShadowPair(str(body.get("text", "")), stable.ids, again.ids, new.ids),
                            {"stable": stable.served, "stableAgain": again.served, "new": new.served},
                            score_drift=score_drift(stable.scores, new.scores),
                            score_drift_noise=score_drift(stable.scores, again.scores))
