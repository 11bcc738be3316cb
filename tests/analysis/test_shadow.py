"""The shadow judge (analysis/shadow.py): rank-biased overlap, the two anytime-valid questions on the new stack's
difference beyond the stable stack's own noise, and its state and verdict as the status will carry them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from analysis.shadow import (
    WORST_KEPT,
    ShadowConfig,
    ShadowPair,
    bounds,
    fold,
    judge,
    log_evalues,
    new_state,
    rbo,
)

TOP = tuple(f"doc-{i}" for i in range(10))


def rbo_by_definition(a: list[str], b: list[str], p: float, depth: int = 4000) -> float:
    """RBO of two infinite rankings that continue `a` and `b` with the same documents in the same order from
    rank k + 1 on: the definition's sum (1 - p) sum_d p^(d-1) A_d, truncated where p^d is negligible."""
    tail = [f"tail-{i}" for i in range(depth)]
    a, b = a + tail, b + tail
    total, seen_a, seen_b, overlap = 0.0, set(), set(), 0
    for d in range(1, depth + 1):
        x, y = a[d - 1], b[d - 1]
        overlap += (x == y) + (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        total += p ** (d - 1) * overlap / d
    return (1 - p) * total


def test_rbo_is_one_for_the_same_list_zero_for_disjoint_ones_and_weighs_the_top_most() -> None:
    assert rbo(TOP, TOP) == pytest.approx(1.0)
    assert rbo(TOP, tuple(f"other-{i}" for i in range(10))) == 0.0
    swapped_top = (TOP[1], TOP[0], *TOP[2:])
    swapped_bottom = (*TOP[:8], TOP[9], TOP[8])
    assert rbo(TOP, swapped_top) < rbo(TOP, swapped_bottom) < 1.0
    assert rbo((), ()) == 1.0 and rbo(TOP, ()) == 0.0
    with pytest.raises(ValueError, match="persistence"):
        rbo(TOP, TOP, p=1.0)


def test_extrapolated_rbo_of_equal_sets_matches_the_definition_for_a_shared_continuation() -> None:
    """For two top-k lists over the same k documents, RBO_ext is the RBO of any two full rankings that agree
    after rank k (their overlap at depth d > k is exactly d): checked against the definition's sum."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        order = list(rng.permutation(10))
        b = [TOP[i] for i in order]
        assert rbo(TOP, b, 0.9) == pytest.approx(rbo_by_definition(list(TOP), b, 0.9), abs=1e-9)


def pairs(rng: np.random.Generator, n: int, replaced: int, tie_swap: float = 0.5) -> list[ShadowPair]:
    """Stable answers whose ranks 4 and 5 tie (swapped at random per answer); the new stack's answer has the
    same tie and `replaced` of its ten documents replaced by others."""
    out = []
    for i in range(n):
        answers = []
        for _ in range(3):
            ids = list(TOP)
            if rng.random() < tie_swap:
                ids[3], ids[4] = ids[4], ids[3]
            answers.append(ids)
        for j in rng.choice(10, size=replaced, replace=False):
            answers[2][j] = f"new-{i}-{j}"
        out.append(ShadowPair(f"query {i % 50}", tuple(answers[0]), tuple(answers[1]), tuple(answers[2])))
    return out


def run(rng: np.random.Generator, replaced: int, max_pairs: int, config: ShadowConfig, batch: int = 10
        ) -> tuple[str, int]:
    state = new_state()
    verdict = judge(state, config)
    while state["n"] < max_pairs:
        state = fold(state, pairs(rng, batch, replaced))
        verdict = judge(state, config)
        if verdict.decision != "inconclusive":
            break
    return verdict.decision, verdict.pairs


def test_identical_versions_with_random_ties_pass_and_a_version_overlapping_half_fails() -> None:
    rng = np.random.default_rng(11)
    config = ShadowConfig()
    decision, n = run(rng, replaced=0, max_pairs=2000, config=config)
    assert decision == "pass" and n <= 200, n
    decision, n = run(rng, replaced=6, max_pairs=2000, config=config)
    assert decision == "fail" and n <= 200, n


def crossed(xs: np.ndarray, margin: float, alpha: float, min_pairs: int) -> tuple[bool, bool]:
    """Whether harm and safety ever reached 1/alpha, looked at after every pair from `min_pairs` on."""
    n = np.arange(1, len(xs) + 1)
    harm, safe = log_evalues(n, np.cumsum(xs), np.cumsum(xs * xs), margin)
    look = n >= min_pairs
    return bool(np.any(harm[look] >= math.log(1 / alpha))), bool(np.any(safe[look] >= math.log(1 / alpha)))


def differences(rng: np.random.Generator, n: int, replaced: int) -> np.ndarray:
    return np.array([p.noise() - p.overlap() for p in pairs(rng, n, replaced)])


def test_identical_versions_are_never_failed_more_often_than_alpha() -> None:
    """The harm question at alpha 5%, looked at after every pair, over 400 identical releases of 1,000 pairs;
    the margin is set just above the truth (D = 0 for identical versions; margin 0.005: min overlap 0.995)
    so the harm e-process is as close to its null as a passing version can be. Each answer swaps ranks 4 and 5
    with probability 1/2, so x = noise - overlap takes the values rbo of the three answers' swaps give."""
    rng = np.random.default_rng(5)
    swapped = rbo(TOP, (*TOP[:3], TOP[4], TOP[3], *TOP[5:]))
    failed = 0
    for _ in range(400):
        stable, again, new = rng.random((3, 1000)) < 0.5
        xs = np.where(stable == again, 1.0, swapped) - np.where(stable == new, 1.0, swapped)
        failed += crossed(xs, 0.005, 0.05, 20)[0]
    assert failed <= 20, failed  # alpha 5% of 400


def test_a_version_at_the_margin_is_rarely_passed() -> None:
    """Safety's guarantee: a version whose difference is at the margin is passed with probability <= alpha."""
    rng = np.random.default_rng(9)
    # Two of ten replaced at random: D ~ 0.2 (measured on 20,000 pairs); the margin there.
    truth = float(differences(rng, 20000, 2).mean())
    passed = sum(crossed(differences(rng, 600, 2), truth, 0.05, 20)[1] for _ in range(200))
    assert passed <= 10, passed  # alpha 5% of 200


def test_the_bounds_are_the_ones_the_decision_compares() -> None:
    rng = np.random.default_rng(2)
    for replaced, config in ((0, ShadowConfig()), (6, ShadowConfig()), (2, ShadowConfig(min_overlap=0.9))):
        state = fold(new_state(), pairs(rng, 300, replaced))
        v = judge(state, config)
        low, high = v.difference_bounds
        assert low <= v.difference <= high
        assert (v.decision == "pass") == (high < v.margin)
        assert (v.decision == "fail") == (low > v.margin)
        harm, safe = log_evalues(state["n"], state["sx"], state["sxx"], [v.margin])
        assert v.harm_evalue == pytest.approx(math.exp(harm[0])) and v.safety_evalue == pytest.approx(math.exp(safe[0]))
    assert bounds(0, 0.0, 0.0, 0.05) == (-1.0, 1.0)


def test_few_pairs_or_a_recorded_only_shadow_never_decide() -> None:
    rng = np.random.default_rng(4)
    broken = fold(new_state(), pairs(rng, 15, 10))
    assert judge(broken, ShadowConfig(min_pairs=20)).decision == "inconclusive"
    broken = fold(broken, pairs(rng, 500, 10))
    assert judge(broken, ShadowConfig()).decision == "fail"
    recorded = judge(broken, ShadowConfig(enforce=False))
    assert recorded.decision == "inconclusive" and "recorded only" in recorded.reason
    assert recorded.mean_overlap == 0.0 and recorded.top1_changed == 1.0


def test_the_state_is_json_and_keeps_the_most_different_queries_and_the_overlap_histogram() -> None:
    rng = np.random.default_rng(8)
    state = fold(new_state(), pairs(rng, 40, 0))
    worst_pair = ShadowPair("quantum gravity", TOP, TOP, tuple(reversed(TOP)))
    state = json.loads(json.dumps(fold(state, [worst_pair])))
    v = judge(state, ShadowConfig())
    assert v.pairs == 41 and sum(v.histogram) == 41
    assert len(v.worst) == WORST_KEPT and v.worst[0]["query"] == "quantum gravity"
    assert v.worst[0]["new"] == list(reversed(TOP)) and v.worst[0]["stable"] == list(TOP)
    assert len({w["query"] for w in v.worst}) == WORST_KEPT  # one entry per query
    assert json.loads(json.dumps(v.to_dict()))["mostDifferent"][0]["query"] == "quantum gravity"


def test_fold_does_not_change_the_state_it_is_given() -> None:
    state = new_state()
    fold(state, [ShadowPair("q", TOP, TOP, TOP)])
    assert state == new_state()


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1])
def test_a_min_overlap_outside_0_1_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="minOverlap"):
        ShadowConfig(min_overlap=bad)


def test_the_mean_overlap_has_a_confidence_sequence_that_covers_it() -> None:
    """The mean overlap is shown with its interval (the same bound, on 1 - overlap): at every look of 200 releases
    of 300 pairs, the interval holds the mean overlap of the pairs' generator in at least 1 - alpha of them."""
    rng = np.random.default_rng(7)
    truth = float(np.mean([p.overlap() for p in pairs(rng, 20_000, 3)]))
    missed = 0
    for _ in range(200):
        state, ever_missed = new_state(), False
        for _look in range(30):
            state = fold(state, pairs(rng, 10, 3))
            low, high = judge(state, ShadowConfig()).mean_overlap_bounds or (0.0, 0.0)
            ever_missed |= not low <= truth <= high
        missed += ever_missed
        assert low <= state["overlap"] / state["n"] <= high
    assert missed <= 10  # alpha 0.05 of 200, over 30 looks each
    old = {k: v for k, v in fold(new_state(), pairs(rng, 30, 3)).items() if k != "overlapSq"}
    assert judge(old, ShadowConfig()).mean_overlap_bounds is None  # a state from before it: no partial sum
    assert "overlapSq" not in fold(old, pairs(rng, 5, 3))
