"""The rate checks' likelihood when errors come in bursts: each version's rate multiplied, every interval, by its
own Gamma factor of mean 1 and squared coefficient of variation kappa.

Given an interval's events k = k_c + k_b (errors, or slow requests) on n_c canary and n_b baseline requests, the
binomial split of k is exact only for independent requests. Under bursts it is not, and tempering it by a
variance factor (the judge's phi_t) keeps its variance right but not its tails: at a small weight and a high
rate an e-process built that way grows under identical versions (`python -m bench.burst_evalues`). The exact
likelihood of the split: write the two factors as S u and S (1 - u), u ~ Beta(a, a) and S ~ Gamma(2a, 1/a)
independent (a = 1/kappa). S integrates out in closed form, the total negative binomial and its split binomial,
and u by Gauss-Jacobi quadrature:

    P_r(k_c | k) = E_u[Bin(k_c; k, pi_r(u)) NB(k; 2a, mu_r(u))] / E_u[NB(k; 2a, mu_r(u))]

with pi_r(u) = r n_c u / (r n_c u + n_b (1 - u)) and mu_r(u) = lambda (r n_c u + n_b (1 - u)), lambda the
baseline's event rate per request. Its ratio between two ratios r is a likelihood ratio, an e-value under the
null's r, when kappa and lambda are the true ones; `python -m bench.burst_exact` measures that, and how far it
moves when they are estimated: too low, it is not an e-value; taken high, it is, and keeps most of its power.
So the judge gives it kappa and lambda from the intervals before (the stable version's history first), each
raised by a margin (`BURST_KAPPA_MARGIN`, `BURST_RATE_MARGIN`), and kappa rounded up to a level of a fixed
ladder so that the quadrature's nodes are computed once per level.

Bursts both versions share (a bad dependency, a burst of bad queries) cancel in the split. The model then takes
two burstinesses: kappa, of each version's own factor, which sets the split u ~ Beta(a, a); and version_kappa, of
a version's rate as a whole, which sets the total's negative binomial: S ~ Gamma(alpha, 2 / alpha) with alpha
(`total_shape`) such that S u has squared coefficient of variation version_kappa. With version_kappa = kappa it is
the model above (alpha = 2a); as kappa goes to 0 the split is binomial whatever the total. A model told only a
small kappa (no version_kappa) could explain a minute of many errors only by a canary failing more, and would read
a shared burst as harm (`tests/analysis/test_bursts.py`). Pure.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt
from scipy import special

from analysis.numeric import logsumexp

FloatArray = npt.NDArray[np.float64]

# The burstiness and the baseline's rate the likelihood is given, as multiples of the estimates from the
# intervals before (bench/results/burst_exact.txt: at these the factor stays an e-value in every measured cell).
BURST_KAPPA_MARGIN = 1.4
BURST_RATE_MARGIN = 1.25
# Below this kappa (after the margin) the bursts are too small to matter: the binomial split is used.
BURST_KAPPA_FLOOR = 0.02
# kappa is rounded up to 2^(j / KAPPA_STEPS_PER_DOUBLING), at most BURST_KAPPA_CEILING.
KAPPA_STEPS_PER_DOUBLING = 8
BURST_KAPPA_CEILING = 16.0
QUADRATURE_NODES = 48


def kappa_level(kappa: float) -> int | None:
    """The ladder's level j whose kappa 2^(j/8) is the smallest at or above `kappa` (capped), None below the
    floor (no bursts worth modelling)."""
    if not math.isfinite(kappa) or kappa < BURST_KAPPA_FLOOR:
        return None
    kappa = min(kappa, BURST_KAPPA_CEILING)
    return math.ceil(round(KAPPA_STEPS_PER_DOUBLING * math.log2(kappa), 9))


def level_kappa(level: int) -> float:
    return float(2.0 ** (level / KAPPA_STEPS_PER_DOUBLING))


@functools.lru_cache(maxsize=256)
def beta_nodes(kappa: float) -> tuple[FloatArray, FloatArray]:
    """Nodes u and log weights of E[f(u)], u ~ Beta(a, a), a = 1 / kappa (Gauss-Jacobi); the judge asks only for
    the ladder's kappas, so each is computed once."""
    a = 1.0 / kappa
    x, w = special.roots_jacobi(QUADRATURE_NODES, a - 1.0, a - 1.0)
    u = (np.asarray(x, dtype=np.float64) + 1.0) / 2.0
    weights = np.asarray(w, dtype=np.float64)
    return u, np.log(weights / weights.sum())


def total_shape(kappa: float, version_kappa: npt.ArrayLike) -> FloatArray:
    """The shape alpha of the Gamma factor S that, with the split u ~ Beta(a, a) (a = 1/kappa), gives each
    version's rate (S u, S (1 - u)) the burstiness `version_kappa`: (1 + 1/alpha)(1 + 1/(2a + 1)) = 1 +
    version_kappa. 2a when version_kappa is kappa (each version's bursts its own); 1/version_kappa as kappa goes
    to 0 (the bursts shared, the split binomial). Bursts partly shared are a product of two Gamma factors, taken
    here as one Gamma factor of the same variance."""
    a = 1.0 / kappa
    inverse = (1.0 + np.asarray(version_kappa, dtype=np.float64)) * (2.0 * a + 1.0) / (2.0 * a + 2.0) - 1.0
    return np.asarray(1.0 / np.maximum(inverse, 1.0 / (2.0 * a)), dtype=np.float64)


def burst_log_likelihood(k_c: npt.ArrayLike, k_b: npt.ArrayLike, n_c: npt.ArrayLike, n_b: npt.ArrayLike,
                         ratios: npt.ArrayLike, kappa: float, rate: npt.ArrayLike,
                         version_kappa: npt.ArrayLike | None = None) -> FloatArray:
    """ln P_r(k_c | k_c + k_b) (module docstring), up to ln C(k, k_c), for every r of `ratios` (last axis of the
    result), the counts and the baseline's event rate `rate` broadcasting against each other.

    `kappa` is the burstiness of each version's own factor, which sets the split u; `version_kappa` (at least
    `kappa`; default `kappa`) that of a version's rate as a whole, bursts both versions share included, which sets
    the total's negative binomial (`total_shape`)."""
    u, log_w = beta_nodes(kappa)
    a = 1.0 / kappa
    kc, kb, nc, nb, lam = (np.asarray(x, dtype=np.float64)[..., None, None] for x in (k_c, k_b, n_c, n_b, rate))
    r = np.asarray(ratios, dtype=np.float64)[:, None]
    m_c, m_b = lam * r * nc * u, lam * nb * (1.0 - u)
    mu = m_c + m_b
    if version_kappa is None:  # S ~ Gamma(2a, 1/a): the total is negative binomial of shape 2a, mean 2 mu
        log_total = 2.0 * a * np.log(a / (a + mu)) + (kc + kb) * np.log(mu / (a + mu)) + log_w
    else:  # S ~ Gamma(alpha, 2/alpha)
        shape = total_shape(kappa, version_kappa)[..., None, None]
        log_total = (shape * np.log(shape / (shape + 2.0 * mu)) + (kc + kb) * np.log(2.0 * mu / (shape + 2.0 * mu))
                     + log_w)
    log_split = kc * np.log(m_c / mu) + kb * np.log(m_b / mu)
    joint = logsumexp(log_total + log_split, axis=-1)
    return np.asarray(joint - logsumexp(log_total, axis=-1), dtype=np.float64)


def burst_increment(k_c: npt.ArrayLike, k_b: npt.ArrayLike, n_c: npt.ArrayLike, n_b: npt.ArrayLike, r0: float,
                    grid: tuple[float, ...], level: int, rate: npt.ArrayLike, cap: npt.ArrayLike = math.inf,
                    version_kappa: npt.ArrayLike | None = None) -> FloatArray:
    """min(ln P_{r0 g}(k_c | k) - ln P_{r0}(k_c | k), cap) for every g of `grid` (last axis): one interval's
    capped log-likelihood ratios under bursts, as `sequential.ratio_increment` gives them without; each version's
    own bursts at the ladder's `level`, its rate's as a whole `version_kappa` (`burst_log_likelihood`)."""
    ratios = np.concatenate([[r0], r0 * np.asarray(grid, dtype=np.float64)])
    logs = burst_log_likelihood(k_c, k_b, n_c, n_b, ratios, level_kappa(level), rate, version_kappa)
    return np.minimum(logs[..., 1:] - logs[..., :1], np.expand_dims(np.asarray(cap, dtype=np.float64), -1))
