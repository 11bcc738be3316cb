"""How master-search merges the rankings of ml-search, keyword and text-search into one answer.

The merge is a weighted sum of max-normalized scores:

    merged(d) = sum over sources s of  W[s] * score_s(d) / max_d' score_s(d')

with W = {ml-search: 0.5, keyword: 0.3, text-search: 0.2} (a source whose best score is 0 contributes 0).
A document missing from a source's candidates scores 0 there. Then `random_seed` jitters the scores,
deterministically, as in the seed API example:

    final(d) = (1 - JITTER) * merged(d) + JITTER * u(d),   u ~ Uniform[0, 1) from Generator(random_seed, text)

so scores stay in [0, 1]; the top `n_results` by final score (ties by doc id) are returned, best first.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

SOURCE_WEIGHTS: dict[str, float] = {"ml-search": 0.5, "keyword": 0.3, "text-search": 0.2}
JITTER = 0.01


def candidates_wanted(n_results: int) -> int:
    """How many candidates to ask each source for: enough that the merge can reorder them."""
    return min(max(2 * n_results, 20), 300)


def merge_scores(
    hits_by_source: Mapping[str, Mapping[str, float]], text: str, n_results: int, random_seed: int
) -> dict[str, float]:
    merged: dict[str, float] = {}
    for source, hits in hits_by_source.items():
        best = max(hits.values(), default=0.0)
        weight = SOURCE_WEIGHTS.get(source, 0.0)
        for doc_id, score in hits.items():
            share = weight * score / best if best > 0 else 0.0
            merged[doc_id] = merged.get(doc_id, 0.0) + share
    doc_ids = sorted(merged)  # a fixed order, so each document gets the same jitter draw every time
    rng = np.random.default_rng([random_seed % 2**63, zlib.crc32(text.encode())])
    jitter = rng.random(len(doc_ids))
    final = {d: (1 - JITTER) * merged[d] + JITTER * float(u) for d, u in zip(doc_ids, jitter, strict=True)}
    ranked = sorted(final.items(), key=lambda item: (-item[1], item[0]))[:n_results]
    return dict(ranked)
