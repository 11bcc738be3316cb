"""bench/worlds.py: each world does what its docstring says, measured on the draws it makes.

Latency is read from the bucket counts as a "log speed": the share of requests at or under 50 ms, turned
back into the latency multiplier that gives that share under the model (bench.worlds.bucket_probs).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import worlds
from bench.worlds import (
    BASE_ERROR,
    BASELINE_PODS,
    BOUNDS,
    BURST_CV,
    DIURNAL_AMPLITUDE,
    JITTER_SIGMA,
    MAX_CANARY_PODS,
    POD_ERROR_SIGMA,
    POD_SPEED_SIGMA,
    SCENARIOS,
    WARMUP_EXTRA,
    WARMUP_TAU_MIN,
    WORLD_NAMES,
    Scenario,
    Sim,
    Traffic,
    bucket_probs,
    canary_pods,
    simulate,
)

pytestmark = pytest.mark.timeout(60)

AT_50_MS = BOUNDS.index(50) + 1  # buckets [0, AT_50_MS) hold the requests of 50 ms or less
_GRID = np.linspace(-0.6, 0.6, 4001)
_SHARE_UNDER_50 = np.cumsum(bucket_probs(np.exp(_GRID)), axis=-1)[:, AT_50_MS - 1]  # decreasing in speed


def log_speed(buckets: np.ndarray) -> np.ndarray:
    """ln of the latency multiplier that explains the bucket counts (last axis) under the model."""
    share = buckets[..., :AT_50_MS].sum(axis=-1) / buckets.sum(axis=-1)
    return np.asarray(np.interp(share, _SHARE_UNDER_50[::-1], _GRID[::-1]))


def run(world: str, reps: int, minutes: int, rate: float, weight: float = 10.0, scenario: Scenario | None = None,
        seed: int = 1) -> Sim:
    return simulate(world, np.random.default_rng(seed), reps, np.full(minutes, weight), rate, scenario or Scenario())


@pytest.mark.parametrize("world", WORLD_NAMES)
def test_every_world_gives_whole_counts_that_add_up(world: str) -> None:
    sim = simulate(world, np.random.default_rng(3), 5, [10, 10, 20, 30, 50, 50], 20.0, SCENARIOS["err4"])
    assert sim.n_c.shape == sim.e_b.shape == (5, 6)
    assert sim.b_c.shape == sim.b_b.shape == (5, 6, len(BOUNDS))
    assert (sim.b_c.sum(axis=2) == sim.n_c).all() and (sim.b_b.sum(axis=2) == sim.n_b).all()
    assert (sim.e_c <= sim.n_c).all() and (sim.e_b <= sim.n_b).all() and (sim.e_c >= 0).all()
    assert list(sim.weight) == [10, 10, 20, 30, 50, 50]
    share = sim.n_c.sum() / (sim.n_c.sum() + sim.n_b.sum())
    assert 0.2 < share < 0.36  # the weights' mean is 28%


def test_a_seed_reproduces_the_draws_and_another_seed_does_not() -> None:
    a, b, c = (run("real", 4, 10, 20.0, seed=s) for s in (5, 5, 6))
    for field in ("n_c", "n_b", "e_c", "e_b", "b_c", "b_b"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.b_c, c.b_c)


def test_bucket_probs_broadcasts_and_keeps_the_scalar_form() -> None:
    grid = bucket_probs(np.array([[1.0, 1.25]]), np.array([[0.03, 0.06]]))
    assert grid.shape == (1, 2, len(BOUNDS))
    assert np.allclose(grid[0, 1], bucket_probs(1.25, 0.06), atol=1e-15)
    assert np.allclose(grid.sum(axis=-1), 1.0)
    assert list(canary_pods([5, 10, 20, 30, 40, 50, 100])) == [1, 1, 2, 2, 3, 3, 3]


def test_pods_make_the_canary_differ_between_releases_and_the_baseline_hardly() -> None:
    reps = 300
    sim, same = run("pods", reps, 40, 300.0), run("independent", reps, 40, 300.0)
    canary, baseline = log_speed(sim.b_c.sum(axis=1)), log_speed(sim.b_b.sum(axis=1))
    noise = float(np.std(log_speed(same.b_c.sum(axis=1))))  # sampling alone
    assert noise < 0.2 * POD_SPEED_SIGMA
    assert float(np.std(canary)) == pytest.approx(POD_SPEED_SIGMA, rel=0.2)  # one pod at 10%
    assert float(np.std(baseline)) == pytest.approx(POD_SPEED_SIGMA / math.sqrt(BASELINE_PODS), rel=0.3)
    # Each pod's error rate too: between-release variance of ln(rate) beyond the binomial's.
    sim = run("pods", reps, 60, 500.0, seed=2)
    errors, requests = sim.e_c.sum(axis=1), sim.n_c.sum(axis=1)
    extra = np.var(np.log(errors / requests)) - np.mean(1.0 / errors)
    assert math.sqrt(extra) == pytest.approx(POD_ERROR_SIGMA, rel=0.3)
    assert abs(float(np.mean(log_speed(sim.b_c.sum(axis=1)) - log_speed(sim.b_b.sum(axis=1))))) < 0.01


def test_jitter_moves_each_version_every_minute_independently() -> None:
    sim, same = run("jitter", 20, 60, 2000.0, weight=50.0), run("independent", 20, 60, 2000.0, weight=50.0)
    c, b = log_speed(sim.b_c), log_speed(sim.b_b)  # (reps, minutes)
    within_c = float(np.sqrt(np.mean(np.var(c, axis=1, ddof=1))))
    within_b = float(np.sqrt(np.mean(np.var(b, axis=1, ddof=1))))
    assert within_c == pytest.approx(JITTER_SIGMA, rel=0.2) and within_b == pytest.approx(JITTER_SIGMA, rel=0.2)
    assert float(np.sqrt(np.mean(np.var(log_speed(same.b_c), axis=1)))) < 0.3 * JITTER_SIGMA
    dc, db = c - c.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    assert abs(float(np.corrcoef(dc.ravel(), db.ravel())[0, 1])) < 0.1


def test_bursts_make_errors_vary_far_more_than_binomially() -> None:
    sim, same = run("bursts", 40, 60, 200.0, weight=50.0), run("independent", 40, 60, 200.0, weight=50.0)

    def index(errors: np.ndarray) -> float:  # variance over mean of errors per minute, pooled over releases
        return float(np.mean(np.var(errors, axis=1, ddof=1)) / np.mean(errors))

    mean_errors = float(np.mean(sim.e_c))  # about 30 a minute
    assert index(same.e_c) == pytest.approx(1.0, abs=0.2)
    assert index(sim.e_c) == pytest.approx(1.0 + mean_errors * BURST_CV**2, rel=0.25)
    assert index(sim.e_b) == pytest.approx(1.0 + mean_errors * BURST_CV**2, rel=0.25)
    assert float(sim.e_c.sum() / sim.n_c.sum()) == pytest.approx(BASE_ERROR, rel=0.08)
    assert abs(float(np.corrcoef(sim.e_c.ravel(), sim.e_b.ravel())[0, 1])) < 0.1


def test_shared_bursts_make_both_versions_burst_together_and_leave_the_split_binomial() -> None:
    sim = run("bursts-shared", 40, 60, 200.0, weight=50.0)
    mean_errors = float(np.mean(sim.e_c))
    per_minute = float(np.mean(np.var(sim.e_b, axis=1, ddof=1)) / np.mean(sim.e_b))
    assert per_minute == pytest.approx(1.0 + mean_errors * BURST_CV**2, rel=0.25)  # as bursty as `bursts`
    assert float(np.corrcoef(sim.e_c.ravel(), sim.e_b.ravel())[0, 1]) > 0.8  # together
    # Given a minute's errors, the canary's share of them is binomial: the common factor cancels.
    total = sim.e_c + sim.e_b
    share = sim.n_c / (sim.n_c + sim.n_b)
    pearson = float(np.sum((sim.e_c - total * share) ** 2) / np.sum(total * share * (1 - share)))
    assert pearson == pytest.approx(1.0, abs=0.1)
    independent = run("bursts", 40, 60, 200.0, weight=50.0)
    total_i = independent.e_c + independent.e_b
    share_i = independent.n_c / (independent.n_c + independent.n_b)
    assert float(np.sum((independent.e_c - total_i * share_i) ** 2) / np.sum(total_i * share_i * (1 - share_i))) > 5


def test_warmup_slows_the_pods_a_scale_up_adds_for_their_first_minutes() -> None:
    weights = np.repeat([10.0, 20.0, 30.0, 40.0, 50.0], 6)  # canary pods 1, 2, 2, 3, 3
    sim = simulate("warmup", np.random.default_rng(4), 40, weights, 1000.0, Scenario())
    c, b = log_speed(sim.b_c).mean(axis=0), log_speed(sim.b_b).mean(axis=0)

    def extra(age: float) -> float:
        return WARMUP_EXTRA * math.exp(-age / WARMUP_TAU_MIN)

    assert c[0] == pytest.approx(math.log(1 + extra(0.5)), abs=0.015)  # the first pod, new
    assert c[6] == pytest.approx(math.log(1 + 0.5 * extra(0.5) + 0.5 * extra(6.5)), abs=0.015)  # 1 of 2 new
    assert c[18] == pytest.approx(math.log(1 + extra(0.5) / 3), abs=0.015)  # 1 of 3 new
    assert abs(c[12]) < 0.01 and abs(c[-1]) < 0.01  # 20 -> 30% adds no pod; all warm by the end
    assert np.abs(b).max() < 0.01


def test_diurnal_moves_the_total_rate_over_the_day_for_both_versions_alike() -> None:
    traffic = Traffic("diurnal", np.random.default_rng(8), 3, 50.0, Scenario(), horizon=1440)
    minutes = [traffic.minute(20.0) for _ in range(1440)]
    n_c = np.stack([m.n_c for m in minutes], axis=1).astype(float)
    n_b = np.stack([m.n_b for m in minutes], axis=1).astype(float)
    hourly = (n_c + n_b).reshape(3, 24, 60).sum(axis=2)
    ratio = hourly.max(axis=1) / hourly.min(axis=1)
    top = (1 + DIURNAL_AMPLITUDE) / (1 - DIURNAL_AMPLITUDE)
    assert np.all(ratio > 0.8 * top) and np.all(ratio < 1.05 * top)
    share = n_c.reshape(3, 24, 60).sum(axis=2) / hourly
    assert np.abs(share - 0.2).max() < 0.02
    # Latency follows the load, in both versions at once.
    c = log_speed(np.stack([m.b_c for m in minutes], axis=1).reshape(3, 24, 60, -1).sum(axis=2))
    b = log_speed(np.stack([m.b_b for m in minutes], axis=1).reshape(3, 24, 60, -1).sum(axis=2))
    assert float(np.corrcoef(c.ravel(), b.ravel())[0, 1]) > 0.8
    assert float(np.corrcoef(b.ravel(), hourly.ravel())[0, 1]) > 0.9


def test_real_has_every_departure() -> None:
    real = worlds.WORLDS["real"]
    assert real.pods and real.jitter and real.bursts and real.warmup and real.diurnal
    sim = run("real", 40, 60, 200.0, weight=50.0)
    per_minute = np.mean(np.var(sim.e_b, axis=1, ddof=1)) / np.mean(sim.e_b)
    assert per_minute > 10  # bursts
    within = float(np.sqrt(np.mean(np.var(log_speed(sim.b_b), axis=1))))
    assert within > 0.8 * JITTER_SIGMA  # jitter


@pytest.mark.parametrize("world", WORLD_NAMES)
def test_aa_has_no_effect_on_average_and_a_regression_its_stated_one(world: str) -> None:
    def effect(scenario: Scenario, seed: int) -> tuple[float, float, float]:
        sim = run(world, 200, 25, 100.0, weight=20.0, scenario=scenario, seed=seed)
        late = slice(5, None)  # past the first pod's warm-up
        lat = float(np.mean(log_speed(sim.b_c[:, late].sum(axis=1)) - log_speed(sim.b_b[:, late].sum(axis=1))))
        err = float((sim.e_c.sum() / sim.n_c.sum()) / (sim.e_b.sum() / sim.n_b.sum()))
        above = BOUNDS.index(500) + 1
        tail = float((sim.b_c[..., above:].sum() / sim.n_c.sum()) / (sim.b_b[..., above:].sum() / sim.n_b.sum()))
        return lat, err, tail

    lat, err, tail = effect(SCENARIOS["aa"], 11)
    assert abs(lat) < 0.01 and err == pytest.approx(1.0, abs=0.06) and tail == pytest.approx(1.0, abs=0.1)
    assert effect(SCENARIOS["lat25"], 12)[0] == pytest.approx(math.log(1.25), abs=0.02)
    assert effect(SCENARIOS["err4"], 13)[1] == pytest.approx(4.0, rel=0.06)
    assert effect(SCENARIOS["tail"], 14)[2] == pytest.approx(2.0, rel=0.1)


@pytest.mark.parametrize("world", WORLD_NAMES)
def test_every_minute_is_drawn_per_pod_and_the_pods_add_up_to_the_version(world: str) -> None:
    scenario = Scenario(latency_canary=1.1, error_canary=2.0)
    traffic = Traffic(world, np.random.default_rng(21), 6, 30.0, scenario, horizon=8)
    for weight in ([5.0] * 6, [10, 20, 30, 40, 50, 100], [50.0] * 6):
        m = traffic.minute(np.asarray(weight, dtype=float))
        assert m.pn_b is not None and m.pe_b is not None and m.pb_b is not None
        assert m.pn_c is not None and m.pe_c is not None and m.pb_c is not None
        assert m.pn_b.shape == m.pe_b.shape == (6, BASELINE_PODS)
        assert m.pn_c.shape == m.pe_c.shape == (6, MAX_CANARY_PODS)
        assert m.pb_b.shape == (6, BASELINE_PODS, len(BOUNDS)) and m.pb_c.shape == (6, MAX_CANARY_PODS, len(BOUNDS))
        for n, e, b, pn, pe, pb in ((m.n_b, m.e_b, m.b_b, m.pn_b, m.pe_b, m.pb_b),
                                    (m.n_c, m.e_c, m.b_c, m.pn_c, m.pe_c, m.pb_c)):
            assert np.array_equal(pn.sum(axis=1), n) and np.array_equal(pe.sum(axis=1), e)
            assert np.array_equal(pb.sum(axis=1), b) and np.array_equal(pb.sum(axis=2), pn)
            assert (pe <= pn).all() and (pe >= 0).all()
        # Only the pods the canary's weight runs serve it; the rest are all 0.
        idle = np.arange(MAX_CANARY_PODS)[None, :] >= canary_pods(np.asarray(weight))[:, None]
        assert (m.pn_c[idle] == 0).all() and (m.pb_c[idle] == 0).all() and (m.pe_c[idle] == 0).all()
        # 100+ requests a pod: none left idle (at 100% the baseline gets none).
        assert (m.pn_b[m.n_b > 0] > 0).all() and (m.pn_c[~idle] > 0).all()
        assert (m.n_b[np.asarray(weight) == 100] == 0).all()
    sim = simulate(world, np.random.default_rng(22), 3, [10, 30, 50], 20.0, scenario)
    assert sim.pb_b is not None and sim.pn_b is not None and sim.pn_c is not None
    assert sim.pb_b.shape == (3, 3, BASELINE_PODS, len(BOUNDS)) and sim.pn_c.shape == (3, 3, MAX_CANARY_PODS)
    assert np.array_equal(sim.pb_b.sum(axis=2), sim.b_b) and np.array_equal(sim.pn_b.sum(axis=2), sim.n_b)
    assert np.array_equal(sim.pn_c.sum(axis=2), sim.n_c)
    assert list((sim.pn_c > 0).sum(axis=2)[0]) == [1, 2, 3]


def test_the_baseline_pods_differ_in_speed_in_the_pods_world_only() -> None:
    def pod_speeds(world: str) -> tuple[np.ndarray, np.ndarray]:
        """Each baseline pod's log speed over 30 minutes, and the factor it was drawn with (reps, pods)."""
        traffic = Traffic(world, np.random.default_rng(23), 40, 200.0, Scenario(), horizon=30)
        buckets = np.sum([np.asarray(traffic.minute(10.0).pb_b) for _ in range(30)], axis=0)
        return log_speed(buckets), np.log(traffic.speed_b)

    speed, drawn = pod_speeds("pods")
    spread = float(np.sqrt(np.mean(np.var(speed, axis=1, ddof=1))))  # between a release's pods
    assert spread == pytest.approx(POD_SPEED_SIGMA, rel=0.25)
    assert float(np.corrcoef(speed.ravel(), drawn.ravel())[0, 1]) > 0.8  # each pod keeps its own speed
    same, _ = pod_speeds("independent")
    assert float(np.sqrt(np.mean(np.var(same, axis=1, ddof=1)))) < 0.2 * POD_SPEED_SIGMA  # sampling alone
