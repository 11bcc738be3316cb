"""The normal-mixture boundary that every confidence sequence of the experiment analysis uses.

`mixture_radius` is the two-sided normal-mixture boundary of Howard, Ramdas, McAuliffe and Sekhon (Ann.
Statist. 2021, eq. (14)) for a sum with accumulated variance V; `rho_squared` tunes the mixture to be
narrowest at a chosen intrinsic time. `analysis.abtest` (samples as the unit) and `analysis.users` (users as
the unit) both build their intervals on it.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from analysis.histogram import FloatArray

__all__ = ["mixture_radius", "rho_squared"]


def _f(x: npt.ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def rho_squared(tuning_samples: float, alpha: float) -> float:
    """The mixture's rho^2 that makes the CS narrowest at intrinsic time W = tuning_samples."""
    two_log = 2.0 * math.log(1.0 / alpha)
    return (two_log + math.log1p(two_log)) / tuning_samples


def mixture_radius(v: npt.ArrayLike, scale2: npt.ArrayLike, alpha: float, rho2: float) -> FloatArray:
    """sqrt((V + s^2/rho^2)(2 ln(1/alpha) + ln(1 + rho^2 V / s^2))): the two-sided normal-mixture boundary
    for a sum with accumulated variance V and scale s^2 (Howard et al. 2021, eq. (14)). inf when s^2 is
    inf (no variance estimate yet); 0 when V = s^2 = 0 (a metric with no variance)."""
    vv, s2 = _f(v), _f(scale2)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = 2.0 * math.log(1.0 / alpha) + np.log1p(rho2 * vv / s2)
        r = np.sqrt((vv + s2 / rho2) * log_term)
    r = np.where(s2 == 0, 0.0, r)
    return np.where(np.isinf(s2) | np.isinf(vv), np.inf, r)
