"""Safety bounds: how the sequential judge shows that a canary is no worse than its baseline by a margin.

A `pass` answers the second of the judge's two questions ("is the canary shown no worse than stable by
more than the margin?"), so it needs upper confidence bounds that hold at every look:

- `rate_bounds(k, n, alpha, prior_rate)`: the (1 - alpha) confidence sequence of a Bernoulli rate from
  Robbins' conjugate mixture. Under H0: p = p0, M_n(p0) = B(a + k, b + n - k) / B(a, b) / (p0^k (1 - p0)^(n - k))
  is a martingale (the Beta(a, b)-mixture of likelihood ratios), so {p0 : M_n(p0) < 1/alpha} covers p at
  every n with probability >= 1 - alpha (Ville). The prior is Beta(1, 1/prior_rate - 1): its mean is the
  rate the bound is asked about, fixed by the configuration before any data, which keeps the price of
  the mixture small for rare events (0 errors in n requests bound the rate near (ln(1/alpha) + ln(1 +
  n * prior_rate)) / n).
- `excess_upper_bound(...)`: an upper bound of p_canary - p_baseline that holds at every look with
  probability >= 1 - alpha: the canary's upper bound at alpha/2 minus the baseline's lower bound at
  alpha/2 (a union bound). It treats each version's requests as exchangeable over the release, so it is
  used only beside the ratio's stratified bound: the check is safe when either is below its margin.
- `requests_needed(...)`: how many canary requests in all a bound is expected to need to fall under its
  margin, from the 1/sqrt(n) shrinking of its width at the current estimate (an estimate for the
  status, not part of any decision).

Pass = every check shown safe. That is an intersection-union test: a canary truly worse than the margin on
some check passes only if that check's bound is wrong, which happens with probability <= alpha, so each
bound uses the whole alpha (no split across checks), unlike the harm tests whose alarms add up.
"""

from __future__ import annotations

import math

from scipy import optimize, special


def _log_mixture(k: float, n: float, p: float, a: float, b: float) -> float:
    """ln M_n(p): the Beta(a, b) mixture against the point null p after k events in n trials."""
    log_null = (k * math.log(p) if k else 0.0) + ((n - k) * math.log1p(-p) if n - k else 0.0)
    return float(special.betaln(a + k, b + n - k) - special.betaln(a, b)) - log_null


def rate_bounds(k: float, n: float, alpha: float, prior_rate: float) -> tuple[float, float]:
    """(lower, upper) of the (1 - alpha) confidence sequence of a rate after k events in n trials (real
    numbers: counts divided by a dispersion phi are effective counts)."""
    if n <= 0:
        return 0.0, 1.0
    a, b = 1.0, max(1.0 / prior_rate - 1.0, 1.0)
    level = math.log(1.0 / alpha)
    p_hat = min(max(k / n, 1e-12), 1.0 - 1e-12)

    def excess(p: float) -> float:
        return _log_mixture(k, n, p, a, b) - level

    upper, lower = 1.0, 0.0
    if excess(1.0 - 1e-12) > 0:
        upper = float(optimize.brentq(excess, p_hat, 1.0 - 1e-12, xtol=1e-10))
    if k > 0 and excess(1e-12) > 0:
        lower = float(optimize.brentq(excess, 1e-12, p_hat, xtol=1e-10))
    return lower, upper


def excess_upper_bound(k_c: float, n_c: float, k_b: float, n_b: float, alpha: float, prior_rate: float) -> float:
    """Upper confidence bound (level 1 - alpha at every look) of the canary's rate minus the baseline's."""
    return rate_bounds(k_c, n_c, alpha / 2.0, prior_rate)[1] - rate_bounds(k_b, n_b, alpha / 2.0, prior_rate)[0]


def requests_needed(n: float, estimate: float, bound: float, margin: float) -> int | None:
    """Canary requests in all for `bound` (now at `n` requests) to reach `margin`, if the estimate stays:
    the bound's distance from the estimate shrinks like 1/sqrt(n). None when the estimate itself is not
    under the margin (more data is not expected to show safety), 0 when the bound already is."""
    if bound < margin:
        return 0
    if not (estimate < margin) or n <= 0 or not math.isfinite(bound):
        return None
    width = bound - estimate
    return math.ceil(n * (width / (margin - estimate)) ** 2)
