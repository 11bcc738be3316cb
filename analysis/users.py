"""Users as the unit of an experiment: per-user sufficient statistics and the user-level confidence sequence.

Why: assignment is sticky per user, and users differ (some click a lot, some never). Impressions of one user
are correlated, so a confidence sequence that treats every impression as an independent Bernoulli draw is
too narrow: with an intra-user correlation of 0.09 an A/A experiment names a false winner far above alpha
(issue 16; `bench/ab_users.py` measures it). The unit that is independent is the user.

Data, per variant, cumulative since the experiment began (`UserTotals`): the number of users U, and over
users u the sums of their numerators Y_u (clicks; a mean metric's values), denominators N_u (impressions;
observations), squares and cross-products: sum Y_u, sum N_u, sum Y_u^2, sum N_u^2, sum Y_u N_u. Each grows
monotonically as users act (a click adds 2 Y_u + 1 to sum Y_u^2 and N_u to sum Y_u N_u; an impression adds
2 N_u + 1 to sum N_u^2 and Y_u to sum Y_u N_u), so a service can export them as counters, and their
increases over windows add up exactly to the cumulative sums: nothing per user has to leave the service.

Estimate: the ratio R = sum Y / sum N (click-through; mean per observation). Its variance by the delta
method on per-user totals (the cluster-robust variance with users as clusters):

  phi_u = (Y_u - R N_u) / nbar,  nbar = sum N / U,   sum_u phi_u = 0 exactly,
  s^2 = (sum Y^2 - 2 R sum YN + R^2 sum N^2) / ((U - 1) nbar^2),   Var(R_hat) ~ s^2 / U.

Difference of a variant and the control, d = R_v - R_c, estimated by their difference with variance
V = s_v^2 / U_v + s_c^2 / U_c. The confidence sequence is the asymptotic one of Waudby-Smith, Arbour, Sinha,
Kennedy and Ramdas (Ann. Statist. 2024) on the intrinsic time W = U_v U_c / (U_v + U_c) (the users of a
balanced pair), through the same normal-mixture boundary as `analysis.abtest` (Howard et al. 2021, eq. 14):
d in d_hat +- R(W^2 V, W V) / W with R = `mixture_radius`.

What holds and what is assumed: users are independent of each other (not their impressions); a user's
totals keep growing across looks, so the estimand is the ratio over the users seen so far, which moves if
early and late users differ (a novelty effect); the CLT needs users, not impressions, so `min_users` keeps
decisions out of the small-sample regime. Coverage at every look with returning users is measured, not
assumed: `bench/ab_users.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analysis.histogram import FloatArray
from analysis.mixture import mixture_radius

__all__ = ["UserTotals", "ratio_and_variance", "user_difference_cs", "user_ratio_cs"]


@dataclass(frozen=True)
class UserTotals:
    """One variant's cumulative per-user sums (see the module docstring); arrays broadcast for the benchmark."""

    users: npt.ArrayLike
    y: npt.ArrayLike  # sum of Y_u
    n: npt.ArrayLike  # sum of N_u
    yy: npt.ArrayLike  # sum of Y_u^2
    nn: npt.ArrayLike  # sum of N_u^2
    yn: npt.ArrayLike  # sum of Y_u N_u

    def problem(self) -> str:
        """What makes these sums impossible (negative, or against Cauchy-Schwarz), or '' (scalars only)."""
        u, y, n, yy, nn, yn = (float(np.asarray(x)) for x in (self.users, self.y, self.n, self.yy, self.nn, self.yn))
        if min(u, y, n, yy, nn, yn) < 0 or not all(map(math.isfinite, (u, y, n, yy, nn, yn))):
            return "per-user sums must be finite and >= 0"
        slack = 1e-9 * max(1.0, yy, nn)
        if u > 0 and (y * y > u * yy + slack or n * n > u * nn + slack):
            return "sum of squares below (sum)^2 / users: not per-user totals"
        if yn * yn > yy * nn + slack * max(1.0, yn):
            return "cross-product above sqrt(sum Y^2 sum N^2): not per-user totals"
        return ""


def _f(x: npt.ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def ratio_and_variance(t: UserTotals, proportion: bool = True) -> tuple[FloatArray, FloatArray]:
    """(R, Var(R_hat)) by the delta method on per-user totals; NaN and inf while there is no estimate (no
    denominator, or fewer than two users). For a proportion the variance is never below that of independent
    impressions at the Laplace rate (Y + 1) / (N + 2): a run of no clicks at all is not certainty."""
    u, y, n, yy, nn, yn = (_f(x) for x in (t.users, t.y, t.n, t.yy, t.nn, t.yn))
    has = (n > 0) & (u >= 2)
    safe_n, safe_u = np.where(n > 0, n, 1.0), np.where(u >= 2, u, 2.0)
    r = np.where(n > 0, y / safe_n, np.nan)
    nbar = safe_n / safe_u
    r0 = np.where(n > 0, r, 0.0)
    spread = np.maximum(yy - 2.0 * r0 * yn + r0 * r0 * nn, 0.0)
    var = spread / ((safe_u - 1.0) * nbar * nbar) / safe_u
    if proportion:
        laplace = (y + 1.0) / (n + 2.0)
        var = np.maximum(var, laplace * (1.0 - laplace) / safe_n)
    return r, np.where(has, var, np.inf)


def user_difference_cs(variant: UserTotals, control: UserTotals, alpha: float, rho2: float, proportion: bool = True
                       ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(estimate, lower, upper) of R_v - R_c, anytime-valid asymptotically in users (see the module
    docstring). Before both arms have two users and a denominator: NaN, -inf, inf."""
    r_v, var_v = ratio_and_variance(variant, proportion)
    r_c, var_c = ratio_and_variance(control, proportion)
    u_v, u_c = _f(variant.users), _f(control.users)
    has = np.isfinite(var_v) & np.isfinite(var_c) & (u_v > 0) & (u_c > 0)
    w = np.where(has, u_v * u_c / np.where(has, u_v + u_c, 1.0), 1.0)
    v = np.where(has, (var_v + var_c) * w * w, np.inf)
    radius = mixture_radius(v, np.where(has, v / w, np.inf), alpha, rho2) / w
    est = np.where(has, r_v - r_c, np.nan)
    return est, np.where(has, est - radius, -np.inf), np.where(has, est + radius, np.inf)


def user_ratio_cs(variant: UserTotals, control: UserTotals, alpha: float, rho2: float, proportion: bool = True
                  ) -> tuple[FloatArray, FloatArray]:
    """(lower, upper) of R_v / R_c, anytime-valid asymptotically in users: the delta method on the log ratio
    (variance Var(R_v) / R_v^2 + Var(R_c) / R_c^2) through the same boundary as `user_difference_cs`. (0, inf)
    while either ratio is not positive or has no variance estimate yet."""
    r_v, var_v = ratio_and_variance(variant, proportion)
    r_c, var_c = ratio_and_variance(control, proportion)
    u_v, u_c = _f(variant.users), _f(control.users)
    with np.errstate(divide="ignore", invalid="ignore"):
        has = np.isfinite(var_v) & np.isfinite(var_c) & (u_v > 0) & (u_c > 0) & (r_v > 0) & (r_c > 0)
        w = np.where(has, u_v * u_c / np.where(has, u_v + u_c, 1.0), 1.0)
        log_var = np.where(has, var_v / (r_v * r_v) + var_c / (r_c * r_c), np.inf)
        v = np.where(has, log_var * w * w, np.inf)
        radius = mixture_radius(v, np.where(has, v / w, np.inf), alpha, rho2) / w
        est = np.where(has, np.log(np.where(has, r_v / r_c, 1.0)), 0.0)
        return np.where(has, np.exp(est - radius), 0.0), np.where(has, np.exp(est + radius), np.inf)
