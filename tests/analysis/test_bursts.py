"""The rate checks' likelihood under error bursts (analysis/bursts.py): a conditional distribution of the canary's
events that is the Gamma-Poisson model's, reduces to the binomial without bursts, and what the judge does with it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from analysis.bursts import (
    BURST_KAPPA_FLOOR,
    burst_increment,
    burst_log_likelihood,
    kappa_level,
    level_kappa,
)
from analysis.sequential import RATIO_GRID, ratio_increment


def log_comb(total: int, k: np.ndarray) -> np.ndarray:
    return np.asarray(special.gammaln(total + 1) - special.gammaln(k + 1) - special.gammaln(total - k + 1))


@pytest.mark.parametrize("kappa", [0.05, 0.25, 1.0, 4.0])
@pytest.mark.parametrize("n_c, n_b", [(60, 540), (300, 300), (30, 2970)])
def test_given_the_total_the_canarys_events_have_a_proper_distribution(kappa: float, n_c: int, n_b: int) -> None:
    """Summing P_r(k_c | k) over k_c = 0..k gives 1 at every k and r: so the ratio of two r's has expectation
    exactly 1 under the smaller, whatever the total's distribution (the e-value property, given the model). The
    log-likelihood leaves out ln C(k, k_c), the same at every r."""
    level = kappa_level(kappa)
    assert level is not None
    for total in (1, 3, 12, 40):
        k_c = np.arange(total + 1)
        logs = burst_log_likelihood(k_c, total - k_c, n_c, n_b, (1.0, 1.5, 4.0), level_kappa(level), 0.01)
        logs += log_comb(total, k_c)[:, None]
        assert np.exp(logs).sum(axis=0) == pytest.approx(np.ones(3), abs=1e-9)


def test_the_split_is_the_gamma_poisson_models() -> None:
    """Draw each version's errors as Poisson with its own Gamma(1/kappa, kappa) factor; among intervals with 6
    errors in all, the canary's count follows the computed distribution."""
    rng = np.random.default_rng(11)
    kappa, rate, n_c, n_b, ratio = 1.0, 0.005, 300, 900, 2.0
    factors = rng.gamma(1.0 / kappa, kappa, size=(800_000, 2))
    k_c = rng.poisson(ratio * rate * n_c * factors[:, 0])
    k_b = rng.poisson(rate * n_b * factors[:, 1])
    six = k_c[k_c + k_b == 6]
    assert six.size > 20_000
    seen = np.bincount(six, minlength=7) / six.size
    level = kappa_level(kappa)
    assert level is not None and level_kappa(level) == kappa
    logs = burst_log_likelihood(np.arange(7), 6 - np.arange(7), n_c, n_b, (ratio,), level_kappa(level), rate)[:, 0]
    model = np.exp(logs + log_comb(6, np.arange(7)))
    assert np.abs(seen - model).max() < 0.01, (seen.round(3), model.round(3))
    # The binomial split of the same intervals is far off: bursts spread the share both ways.
    share = ratio * n_c / (ratio * n_c + n_b)
    binomial = [math.comb(6, k) * share**k * (1 - share) ** (6 - k) for k in range(7)]
    assert np.abs(seen - binomial).max() > 0.05


def test_without_bursts_the_ratios_are_the_binomials() -> None:
    level = kappa_level(BURST_KAPPA_FLOOR)
    assert level is not None and kappa_level(BURST_KAPPA_FLOOR / 2) is None
    # At the floor (kappa 0.02) a few events are split as the binomial splits them (the bursts' extra variance,
    # 2 kappa v_t, is about 1% of it there): within 0.05 of ln LR or 6% of it.
    k_c, k_b, n_c, n_b = np.array([0, 1, 2, 3]), np.array([3, 4, 4, 3]), 120, 1080
    with_bursts = burst_increment(k_c, k_b, n_c, n_b, 1.5, RATIO_GRID, level, 0.005)
    binomial = ratio_increment(k_c, k_b, n_c, n_b, 1.5, RATIO_GRID)
    assert with_bursts == pytest.approx(binomial, rel=0.06, abs=0.05)
    # A big burst makes the same counts weaker evidence.
    strong = kappa_level(1.0)
    assert strong is not None
    assert (burst_increment(k_c, k_b, n_c, n_b, 1.5, RATIO_GRID, strong, 0.005)[2:] < binomial[2:]).all()


def test_kappa_is_rounded_up_to_its_ladder() -> None:
    assert kappa_level(0.0) is None and kappa_level(math.nan) is None
    for kappa in (0.03, 0.25, 0.3, 1.0, 2.7, 15.9):
        level = kappa_level(kappa)
        assert level is not None
        assert kappa <= level_kappa(level) < kappa * 2 ** (1 / 8) + 1e-12
    assert kappa_level(1e6) == kappa_level(16.0)


def test_the_cap_bounds_each_ratio() -> None:
    level = kappa_level(0.25)
    assert level is not None
    capped = burst_increment(np.array([40]), np.array([2]), 300, 300, 1.0, RATIO_GRID, level, 0.05, cap=np.array([2.0]))
    assert capped.max() == 2.0


def test_the_totals_shape_gives_each_version_the_burstiness_of_its_rate_as_a_whole() -> None:
    """Own bursts only (version_kappa = kappa): the shape is 2a, today's model. Bursts all shared (kappa near
    0): 1 / version_kappa. In between, each version's factor S u has squared CV version_kappa exactly."""
    from analysis.bursts import total_shape

    assert float(total_shape(0.5, 0.5)) == pytest.approx(4.0)
    assert float(total_shape(1e-4, 1.0)) == pytest.approx(1.0, rel=1e-3)
    kappa, whole = 0.3, 1.2
    alpha, a = float(total_shape(kappa, whole)), 1.0 / kappa
    assert (1.0 + 1.0 / alpha) * (1.0 + 1.0 / (2.0 * a + 1.0)) - 1.0 == pytest.approx(whole)
    assert float(total_shape(kappa, 0.1)) == pytest.approx(2.0 * a)  # never less bursty than its own part


def test_a_shared_burst_split_as_the_null_splits_is_evidence_for_the_null_once_the_rate_is_known_bursty() -> None:
    """A minute with 10x the errors expected, split between the versions exactly as identical versions split them
    (15 of 150 on a 10% canary). Judged with bursts of each version's own but small (kappa 0.02), the model can
    only explain so many errors by a canary that fails more, and the minute reads as evidence of harm; told that
    the rate as a whole is bursty (version_kappa 1), it reads as what it is, evidence for identical versions, as
    the binomial split does."""
    from analysis.bursts import burst_log_likelihood, kappa_level, level_kappa

    kappa = level_kappa(kappa_level(0.02))
    ratios = np.array([1.0, 2.0, 4.0])
    own = burst_log_likelihood(15, 135, 300, 2700, ratios, kappa, 0.005)
    whole = burst_log_likelihood(15, 135, 300, 2700, ratios, kappa, 0.005, version_kappa=1.0)
    binomial = stats.binom.logpmf(15, 150, ratios * 300 / (ratios * 300 + 2700))
    assert own[1] - own[0] > 2.0
    assert (whole[1:] - whole[0] < 0).all() and (binomial[1:] - binomial[0] < 0).all()
