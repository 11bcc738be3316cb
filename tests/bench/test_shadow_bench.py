"""bench/shadow.py measures the shadow judge as analysis/shadow.py decides: its vectorised RBO and decisions are
checked against the judge's own functions, and its calibration hits the difference it is asked for."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.shadow import ShadowConfig, judge, new_state, rbo
from bench.shadow import (
    POOL,
    calibrate,
    decisions,
    draw_pairs,
    make_world,
    mean_difference,
    pools,
    rbo_matrix,
)


def test_the_vectorised_rbo_is_the_judges() -> None:
    rng = np.random.default_rng(1)
    a = np.array([rng.choice(30, 10, replace=False) for _ in range(200)])
    b = np.array([rng.choice(30, 10, replace=False) for _ in range(200)])
    b[:20] = a[:20]
    expected = [rbo([str(v) for v in x], [str(v) for v in y]) for x, y in zip(a, b, strict=True)]
    assert rbo_matrix(a, b) == pytest.approx(expected, abs=1e-12)


def test_the_vectorised_decision_is_the_judges() -> None:
    """Every rule-of-the-judge outcome equals what `fold` + `judge` say at the same looks (10 s at 5 pairs/s)."""
    rng = np.random.default_rng(2)
    config = ShadowConfig()
    x = np.clip(rng.normal(0.22, 0.3, size=(12, 600)), -1, 1)
    x[:4] = np.clip(rng.normal(0.0, 0.1, size=(4, 600)), -1, 1)
    x[4:8] = np.clip(rng.normal(0.45, 0.3, size=(4, 600)), -1, 1)
    outcome, seconds = decisions(x, 5, config.margin, config.alpha)["judge"]
    for rep in range(len(x)):
        state, verdict, at = new_state(), "inconclusive", np.nan
        for look in range(0, x.shape[1], 50):
            # Pairs whose difference is x: stable and stable again agree; the new answer overlaps 1 - x.
            state = {**state, "n": state["n"] + 50, "sx": state["sx"] + float(x[rep, look:look + 50].sum()),
                     "sxx": state["sxx"] + float((x[rep, look:look + 50] ** 2).sum())}
            verdict = judge(state, config).decision
            if verdict != "inconclusive":
                at = (look + 50) / 5
                break
        assert {"fail": -1, "pass": 1, "inconclusive": 0}[verdict] == outcome[rep]
        assert (np.isnan(at) and np.isnan(seconds[rep])) or at == seconds[rep]
    assert set(outcome[:4]) == {1} and set(outcome[4:8]) == {-1}  # the identical ones pass; clearly worse ones fail


def test_calibration_hits_its_target_and_identical_versions_have_none() -> None:
    world = make_world("real", np.random.default_rng(3))
    sigma = calibrate(world, 0.3, seed=4)
    noise, overlap = pools(world, np.random.default_rng(4), sigma)
    assert mean_difference(world, noise, overlap, np.arange(len(world.weights))) == pytest.approx(0.3, abs=0.01)
    noise, overlap = pools(world, np.random.default_rng(5), 0.0)
    assert abs(mean_difference(world, noise, overlap, np.arange(len(world.weights)))) < 0.01
    assert noise.shape == overlap.shape == (len(world.weights), POOL, POOL)


def test_pairs_of_identical_versions_differ_by_nothing_on_average() -> None:
    world = make_world("independent", np.random.default_rng(6))
    noise, overlap = pools(world, np.random.default_rng(7), 0.0, np.arange(50))
    small = type(world)(world.name, np.full(50, 1 / 50), world.tie_step[:50], world.hard[:50], world.damaged[:50], 0.0)
    x = draw_pairs(small, noise, overlap, np.random.default_rng(8), 3, 5, 20)
    assert x.shape == (3, 6000) and np.all((x >= -1) & (x <= 1))
    assert abs(float(x.mean())) < 0.01 and float(x.std()) > 0.01  # ties make answers differ, not on average
