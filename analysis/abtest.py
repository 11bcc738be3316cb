"""A/B/n experiments on a primary business metric: confidence sequences, SRM, decisions and their state.

This module owns the statistics of an experiment (`spec.experiment`): for every variant against the
control (the stable version), an anytime-valid confidence sequence (CS) for the difference and for the
ratio of the primary metric, a sample-ratio-mismatch (SRM) e-process on the split, and the decision
`continue | winner | no_difference | harmful | error`. Guardrails (latency, errors) are not judged here:
`ExperimentConfig.guardrails` is an `AnalysisConfig` for the sequential judge, which the caller runs.
The config is read with the project's one reader (`analysis.reader`), failing at the first problem.

Data, per interval and per variant (`PrimaryCounts`): `count` samples (impressions for a proportion such
as click-through; observations for a mean), their `total` (clicks; sum of values) and, for a mean,
`squares` (sum of squared values); optionally `units` (new users assigned) for the SRM check.

Construction (derivation; notation per comparison v vs control c, interval i):

  m_vi = total_vi / count_vi,  w_i = n_vi n_ci / (n_vi + n_ci)  (0 when an arm has no samples),
  W = sum w_i,  S_v = sum w_i m_vi,  S_c = sum w_i m_ci,  A = sum w_i^2 / n_vi,  B = sum w_i^2 / n_ci.

Intervals are strata: the difference estimate is (S_v - S_c) / W, the inverse-variance weighted average
of the per-interval differences (w_i is 1 / Var(m_vi - m_ci) up to the common variance), so a traffic
split or a base rate that changes between intervals does not bias it. If outcomes are independent given
the counts, with variances s_v^2, s_c^2, then X_t = sum w_i (m_vi - m_ci - d_i) is a martingale whose
increments have conditional variance w_i^2 (s_v^2 / n_vi + s_c^2 / n_ci); its accumulated variance is
V = s_v^2 A + s_c^2 B, and A + B = W exactly. The CS covers the running weighted effect
d_t = sum w_i d_i / W (the constant effect d when the effect does not drift).

Boundary: the two-sided normal-mixture boundary of Robbins, in the form of Howard, Ramdas, McAuliffe and
Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49 (2021),
eq. (14): for increments sub-Gaussian with accumulated variance proxy V and a fixed scale s^2,

  P( exists t: |X_t| >= sqrt((V_t + s^2/rho^2) (2 ln(1/alpha) + ln(1 + rho^2 V_t / s^2))) ) <= alpha.

Two ways to get (V, s^2), `confidenceSequence.method`:
- `asymptotic` (default): plug-in variances (a proportion's p(1-p) with p = (K+1)/(N+2); a mean's
  sample variance) and s^2 = V / W, so X / s runs on the intrinsic time W: the asymptotic CS of
  Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and asymptotic
  confidence sequences", Ann. Statist. 52 (2024), Thm 2.2 / eq. (2.5): d in d_hat +- s sqrt(2 (W rho^2 + 1)
  / (W^2 rho^2) ln(sqrt(W rho^2 + 1) / alpha)). Valid as samples grow (a CLT, no bounds needed); the
  variance must be finite and roughly constant in time. `minSamples` keeps decisions out of the
  small-sample regime.
- `hoeffding`: exact and nonasymptotic for bounded outcomes: a value in [lo, hi] is sub-Gaussian with
  proxy (hi - lo)^2 / 4 (Hoeffding), so V = (hi - lo)^2 W / 4 and s^2 = (hi - lo)^2 / 4 are fixed, and the
  boundary above holds with no approximation (Howard et al. 2021). Proportions are bounded in [0, 1];
  a mean metric needs `primaryMetric.bounds: [lo, hi]`. Wider than `asymptotic` when the variance is
  far below its bound (click-through of 10%: 0.09 vs 0.25).
rho is chosen so the CS is narrowest at W = `tuningSamples` (Waudby-Smith et al. 2024, eq. (2.7)):
rho^2 = (2 ln(1/alpha) + ln(1 + 2 ln(1/alpha))) / W*.

Ratio: d(r) = m_v - r m_c is 0 for the true ratio r in every interval, so the CS for the ratio is the set
of r whose statistic S_v - r S_c (variance s_v^2 A + r^2 s_c^2 B) stays inside the boundary (a Fieller
inversion; closed form for `asymptotic`, root finding for `hoeffding` with s^2(r) = c (1 + r^2) / 2).
An unbounded set (the control's mean not yet distinguishable from 0) is reported as null bounds.

A/B/n: each of the k comparisons gets alpha / k (Bonferroni), so all CSs hold at once with probability
>= 1 - alpha, and a variant is called the winner over another only when their CSs are disjoint; at the
maximum duration a best variant not separated from a rival is no winner (`no_difference`, "without a clear
winner"). The guardrails of each of the k treatments run at the guardrails' alpha / k for the same reason.

SRM: per variant, its share of the pair (variant, control) in units (users assigned) or samples
against the intended w_v / (w_v + w_c), with the grid-mixture e-process of `analysis.sequential`
(`srm_increment`), at `sampleRatioAlpha / k`. With `sampleRatioOn: units` (the default) counts without a
number of users are unusable data (an `error` naming the variant), never a check that silently sees 0 users.
Units, not impressions, are the right input under sticky
assignment: a heavy user's impressions all land on one variant, which makes impression shares
overdispersed and a binomial SRM test on them fire on a healthy split.

Assumptions to keep in mind: samples are independent given the counts (impressions of one user are
treated as independent; per-user correlation makes the asymptotic CS too narrow), the counts do not
depend on the outcomes, and the variances do not drift.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize

from analysis.config import AnalysisConfig, InvalidAnalysisConfig
from analysis.decisions import JsonValue, finite, json_clean
from analysis.histogram import FloatArray
from analysis.mixture import mixture_radius, rho_squared
from analysis.reader import CONFIG_WORDING, Reader
from analysis.sequential import SRM_GRID, log_mixture, srm_increment
from analysis.users import UserTotals, user_difference_cs, user_ratio_cs

__all__ = [
    "ABDecision",
    "ABResult",
    "ExperimentConfig",
    "InvalidExperimentConfig",
    "PerUser",
    "PrimaryCounts",
    "PrimaryMetric",
    "Variant",
    "VariantComparison",
    "ab_initial_state",
    "ab_update",
    "comparison_increment",
    "difference_cs",
    "mixture_radius",
    "ratio_cs",
    "rho_squared",
    "state_config",
]

METHODS: tuple[str, ...] = ("asymptotic", "hoeffding")
KINDS: tuple[str, ...] = ("proportion", "mean")
DIRECTIONS: tuple[str, ...] = ("increase", "decrease")
END_ACTIONS: tuple[str, ...] = ("keepStable", "promoteWinner", "waitForOperator")
SRM_INPUTS: tuple[str, ...] = ("units", "samples", "off")
# What is independent: users (their per-user totals; the default), or every sample (impression, observation).
UNITS: tuple[str, ...] = ("user", "sample")
EXPERIMENT_FIELDS = (
    "variants", "control", "alpha", "primaryMetric", "minDurationSeconds", "maxDurationSeconds", "minSamples",
    "equivalenceMargin", "confidenceSequence", "sampleRatioAlpha", "sampleRatioOn", "guardrails", "onEnd",
    "unit", "minUsers",
)
STATE_VERSION = 1
VARIANT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
RATIO_SEARCH_MAX = 1e6  # ratios beyond this are reported as unbounded


class InvalidExperimentConfig(InvalidAnalysisConfig):
    """An experiment setting that cannot be used; the message starts with the field's path."""


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float  # intended share of new users, percent


@dataclass(frozen=True)
class PrimaryMetric:
    kind: str  # proportion | mean
    name: str
    direction: str = "increase"  # which way is better
    bounds: tuple[float, float] | None = None  # a mean metric's range, for the hoeffding method

    @property
    def favourable_sign(self) -> int:
        return 1 if self.direction == "increase" else -1


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything the experiment analysis needs; see `from_dict` for the spec's field names."""

    variants: tuple[Variant, ...]
    control: str
    primary: PrimaryMetric
    alpha: float = 0.05
    min_duration_s: float = 0.0
    max_duration_s: float = 3600.0
    min_samples: int = 1000
    equivalence_margin: float | None = None
    method: str = "asymptotic"
    tuning_samples: float = 10_000.0
    sample_ratio_alpha: float = 0.001
    sample_ratio_on: str = "units"
    guardrails: AnalysisConfig = field(default_factory=AnalysisConfig)
    on_end: str = "keepStable"
    unit: str = "user"
    min_users: int = 100  # per variant, before any decision under `unit: user` (the CLT needs users)
    tuning_users: float = 1_000.0  # where the user-level CS is narrowest (users in a balanced pair)

    @property
    def treatments(self) -> tuple[str, ...]:
        """The variants compared with the control, in spec order."""
        return tuple(v.name for v in self.variants if v.name != self.control)

    @property
    def alpha_each(self) -> float:
        return self.alpha / len(self.treatments)

    def weight_of(self, name: str) -> float:
        return next(v.weight for v in self.variants if v.name == name)

    def statistics_dict(self) -> dict[str, Any]:
        """The spec fields the statistics use (everything but guardrails), in spec form: frozen into the
        experiment's state at the start, so a spec edit mid-experiment cannot change alpha or the metric."""
        primary: dict[str, Any] = {
            "kind": self.primary.kind, "name": self.primary.name, "direction": self.primary.direction,
        }
        if self.primary.bounds is not None:
            primary["bounds"] = list(self.primary.bounds)
        return {
            "variants": [{"name": v.name, "weight": int(v.weight)} for v in self.variants],
            "control": self.control,
            "alpha": self.alpha,
            "primaryMetric": primary,
            "minDurationSeconds": self.min_duration_s,
            "maxDurationSeconds": self.max_duration_s,
            "minSamples": self.min_samples,
            "equivalenceMargin": self.equivalence_margin,
            "confidenceSequence": {"method": self.method, "tuningSamples": self.tuning_samples,
                                   "tuningUsers": self.tuning_users},
            "sampleRatioAlpha": self.sample_ratio_alpha,
            "sampleRatioOn": self.sample_ratio_on,
            "onEnd": self.on_end,
            "unit": self.unit,
            "minUsers": self.min_users,
        }

    @classmethod
    def from_dict(cls, data: Any, path: str = "spec.experiment") -> ExperimentConfig:
        """Parse `spec.experiment`; raises InvalidExperimentConfig naming the field, e.g.
        `spec.experiment.variants[1].weight: -5 is not in [0, 100]`.

        Fields: variants [{name, weight}] (>= 2, weights summing to 100), control (a variant's name;
        default the first), alpha, primaryMetric {kind: proportion|mean, name, direction:
        increase|decrease, bounds: [lo, hi]}, minDurationSeconds, maxDurationSeconds, minSamples (per
        variant), equivalenceMargin (absolute difference), confidenceSequence {method:
        asymptotic|hoeffding, tuningSamples, tuningUsers}, sampleRatioAlpha, sampleRatioOn: units|samples|off,
        guardrails (an `AnalysisConfig` for the sequential judge), onEnd:
        keepStable|promoteWinner|waitForOperator, unit: user|sample (what is independent; default user:
        the counts must carry per-user sums), minUsers (per variant, under unit: user).
        """
        try:
            return _parse_experiment(Reader(fail=InvalidExperimentConfig, wording=CONFIG_WORDING), data, path)
        except InvalidExperimentConfig:
            raise
        except InvalidAnalysisConfig as exc:  # from the guardrails' AnalysisConfig
            raise InvalidExperimentConfig(exc.path, exc.message) from exc


def _parse_experiment(r: Reader, data: Any, path: str) -> ExperimentConfig:
    """Read with a fail-fast reader: later fields are checked against earlier ones (the control against the
    variants, maxDuration against minDuration)."""
    if data is None:
        r.problem(path, "is required for an abTest release")
    d = r.fields(data, path, EXPERIMENT_FIELDS)
    variants = _parse_variants(r, d.get("variants"), f"{path}.variants")
    control = d.get("control", variants[0].name)
    if control not in {v.name for v in variants}:
        names = ", ".join(v.name for v in variants)
        r.problem(f"{path}.control", f"{control!r} is not one of the variants ({names})")
    primary = _parse_primary(r, d.get("primaryMetric"), f"{path}.primaryMetric")
    min_d = r.number(d.get("minDurationSeconds", 0.0), f"{path}.minDurationSeconds", 0, math.inf, open_low=False)
    max_d = r.number(d.get("maxDurationSeconds", 3600.0), f"{path}.maxDurationSeconds", 0, math.inf)
    if max_d < min_d:
        r.problem(f"{path}.maxDurationSeconds", f"{_num(max_d)} is less than minDurationSeconds {_num(min_d)}")
    method, tuning, tuning_users = _parse_cs(r, d.get("confidenceSequence"), f"{path}.confidenceSequence")
    unit = r.choice(d.get("unit", "user"), f"{path}.unit", UNITS)
    if method == "hoeffding" and unit == "user":
        r.problem(f"{path}.confidenceSequence.method", "hoeffding assumes independent samples: it needs unit: "
                  "sample (users as the unit use the asymptotic method)")
    if method == "hoeffding" and primary.kind == "mean" and primary.bounds is None:
        r.problem(f"{path}.primaryMetric.bounds", "a mean metric needs [lo, hi] bounds for the hoeffding method")
    return ExperimentConfig(
        variants=variants,
        control=str(control),
        primary=primary,
        alpha=r.number(d.get("alpha", 0.05), f"{path}.alpha", 0, 1),
        min_duration_s=min_d,
        max_duration_s=max_d,
        min_samples=r.integer(d.get("minSamples", 1000), f"{path}.minSamples", 0),
        equivalence_margin=r.optional_number(d.get("equivalenceMargin"), f"{path}.equivalenceMargin", 0, math.inf),
        method=method,
        tuning_samples=tuning,
        sample_ratio_alpha=r.number(d.get("sampleRatioAlpha", 0.001), f"{path}.sampleRatioAlpha", 0, 1),
        sample_ratio_on=r.choice(d.get("sampleRatioOn", "units"), f"{path}.sampleRatioOn", SRM_INPUTS),
        guardrails=_guardrails_each(AnalysisConfig.from_dict(d.get("guardrails"), f"{path}.guardrails"),
                                    len(variants) - 1),
        on_end=r.choice(d.get("onEnd", "keepStable"), f"{path}.onEnd", END_ACTIONS),
        unit=unit,
        min_users=r.integer(d.get("minUsers", 100), f"{path}.minUsers", 2),
        tuning_users=tuning_users,
    )


def _guardrails_each(guardrails: AnalysisConfig, treatments: int) -> AnalysisConfig:
    """Every treatment's guardrails run against the control with alpha / k (Bonferroni), so that the chance
    of any false stop across the k of them stays within the alpha the spec gives."""
    return replace(guardrails, alpha=guardrails.alpha / treatments) if treatments > 1 else guardrails


def _parse_variants(r: Reader, value: Any, path: str) -> tuple[Variant, ...]:
    if not isinstance(value, list):
        r.problem(path, f"{value!r} is not a list of {{name, weight}}")
    elif len(value) < 2:
        r.problem(path, f"needs at least 2 variants (the control and one more), got {len(value)}")
    variants: list[Variant] = []
    for i, item in enumerate(value if isinstance(value, list) else []):
        d = r.fields(item, f"{path}[{i}]", ("name", "weight"), required=False)
        # It becomes a DestinationRule subset name and the assignment cookie's value.
        name = r.string(d.get("name"), f"{path}[{i}].name", VARIANT_NAME,
                        what="a DNS label (lower-case letters, digits, '-'; <= 63)")
        if name in {v.name for v in variants}:
            r.problem(f"{path}[{i}].name", f"{name!r} appears twice")
        weight = r.integer(d.get("weight"), f"{path}[{i}].weight", 0, 100, what="in [0, 100]")
        variants.append(Variant(name, float(weight)))
    total = sum(v.weight for v in variants)
    if total != 100:
        r.problem(path, f"weights sum to {_num(total)}, not 100")
    return tuple(variants)


def _parse_primary(r: Reader, value: Any, path: str) -> PrimaryMetric:
    if value is None:
        r.problem(path, "is required ({kind: proportion|mean, name})")
    d = r.fields(value, path, ("kind", "name", "direction", "bounds"))
    if "kind" not in d:
        r.problem(f"{path}.kind", "is required (proportion or mean)")
    kind = r.choice(d.get("kind"), f"{path}.kind", KINDS)
    name = d.get("name")
    if not isinstance(name, str) or not name:
        r.problem(f"{path}.name", f"{name!r} is not a non-empty string")
    bounds = d.get("bounds")
    if bounds is not None:
        if kind == "proportion":
            r.problem(f"{path}.bounds", "a proportion is bounded in [0, 1] already")
        ok = isinstance(bounds, list) and len(bounds) == 2 and all(_is_finite_number(b) for b in bounds)
        if not ok or not bounds[0] < bounds[1]:
            r.problem(f"{path}.bounds", f"{bounds!r} is not [lo, hi] with lo < hi")
        bounds = (float(bounds[0]), float(bounds[1]))
    return PrimaryMetric(kind, str(name), r.choice(d.get("direction", "increase"), f"{path}.direction", DIRECTIONS),
                         bounds)


def _parse_cs(r: Reader, value: Any, path: str) -> tuple[str, float, float]:
    d = r.fields(value, path, ("method", "tuningSamples", "tuningUsers"), required=False)
    return (r.choice(d.get("method", "asymptotic"), f"{path}.method", METHODS),
            r.number(d.get("tuningSamples", 10_000.0), f"{path}.tuningSamples", 0, math.inf),
            r.number(d.get("tuningUsers", 1_000.0), f"{path}.tuningUsers", 0, math.inf))


def _is_finite_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, int | float) and math.isfinite(x)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# ---------------------------------------------------------------------------------------------------------
# The confidence sequences (broadcasting over leading axes: the API calls them on scalars, the tests
# and the benchmark on arrays of simulated experiments)
# ---------------------------------------------------------------------------------------------------------


def _f(x: npt.ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def comparison_increment(
    n_v: npt.ArrayLike, total_v: npt.ArrayLike, n_c: npt.ArrayLike, total_c: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """One interval's (w, w m_v, w m_c, w^2/n_v, w^2/n_c); all 0 when an arm has no samples."""
    nv, nc, tv, tc = _f(n_v), _f(n_c), _f(total_v), _f(total_c)
    both = (nv > 0) & (nc > 0)
    sv, sc = np.where(both, nv, 1.0), np.where(both, nc, 1.0)
    w = np.where(both, sv * sc / (sv + sc), 0.0)
    return w, w * tv / sv, w * tc / sc, w * w / sv, w * w / sc


def difference_cs(
    w: npt.ArrayLike,
    s_v: npt.ArrayLike,
    s_c: npt.ArrayLike,
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    var_v: npt.ArrayLike,
    var_c: npt.ArrayLike,
    alpha: float,
    rho2: float,
    scale2: npt.ArrayLike | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(estimate, lower, upper) of the mean difference v - c from the running sums. `scale2` None is the
    asymptotic CS (s^2 = V / W); a fixed `scale2` with bounded variances is the exact (hoeffding) CS.
    Before any paired interval (W = 0) the estimate is NaN and the bounds are -inf, inf."""
    ww = _f(w)
    with np.errstate(invalid="ignore"):  # inf (no variance estimate yet) x 0 (no samples yet)
        v = np.nan_to_num(_f(var_v) * _f(a) + _f(var_c) * _f(b), nan=np.inf)
    has = ww > 0
    safe_w = np.where(has, ww, 1.0)
    s2 = v / safe_w if scale2 is None else _f(scale2)
    radius = mixture_radius(v, np.where(has, s2, np.inf), alpha, rho2) / safe_w
    est = np.where(has, (_f(s_v) - _f(s_c)) / safe_w, np.nan)
    lo = np.where(has, est - radius, -np.inf)
    hi = np.where(has, est + radius, np.inf)
    return est, lo, hi


def ratio_cs(
    w: float,
    s_v: float,
    s_c: float,
    a: float,
    b: float,
    var_v: float,
    var_c: float,
    alpha: float,
    rho2: float,
    bound_var: float | None = None,
) -> tuple[float, float]:
    """(lower, upper) of the CS for m_v / m_c; (-inf, inf) when it is unbounded. `bound_var` None is the
    asymptotic Fieller inversion; else the exact inversion with both variances bounded by `bound_var`."""
    if w <= 0 or not (math.isfinite(var_v) and math.isfinite(var_c)):
        return -math.inf, math.inf
    if bound_var is None:
        return _ratio_cs_asymptotic(w, s_v, s_c, a, b, var_v, var_c, alpha, rho2)
    return _ratio_cs_bounded(s_v, s_c, a, b, bound_var, alpha, rho2)


def _ratio_cs_asymptotic(
    w: float, s_v: float, s_c: float, a: float, b: float, var_v: float, var_c: float, alpha: float, rho2: float
) -> tuple[float, float]:
    # (S_v - r S_c)^2 <= q (var_v A + r^2 var_c B), q = R(W)^2 / W with R the standardised boundary.
    q = float(mixture_radius(w, 1.0, alpha, rho2)) ** 2 / w
    qa, qb, qc = s_c * s_c - q * var_c * b, -2.0 * s_v * s_c, s_v * s_v - q * var_v * a
    if qa <= 0:
        return -math.inf, math.inf
    disc = max(qb * qb - 4.0 * qa * qc, 0.0)
    root = math.sqrt(disc)
    return (-qb - root) / (2.0 * qa), (-qb + root) / (2.0 * qa)


def _ratio_cs_bounded(
    s_v: float, s_c: float, a: float, b: float, c: float, alpha: float, rho2: float
) -> tuple[float, float]:
    def excess(r: float) -> float:  # < 0 inside the CS
        v = c * (a + r * r * b)
        return (s_v - r * s_c) ** 2 - float(mixture_radius(v, c * (1.0 + r * r) / 2.0, alpha, rho2)) ** 2

    if s_c <= 0:
        return -math.inf, math.inf
    centre = s_v / s_c
    lo = 0.0 if excess(0.0) <= 0 else optimize.brentq(excess, 0.0, centre)
    top = max(2.0 * centre, 1.0)
    while excess(top) <= 0:
        if top > RATIO_SEARCH_MAX:
            return float(lo), math.inf
        top *= 4.0
    return float(lo), float(optimize.brentq(excess, centre, top))


# ---------------------------------------------------------------------------------------------------------
# Data and results
# ---------------------------------------------------------------------------------------------------------


class InvalidCounts(ValueError):
    """Counts that cannot be analysed; the message names the variant and field."""


@dataclass(frozen=True)
class PerUser:
    """One interval's increases of a variant's per-user sums (see `analysis.users`): `users` new users, and
    the sums over users of Y_u^2 (`yy`), N_u^2 (`nn`) and Y_u N_u (`yn`). All counters, so all >= 0."""

    users: int
    yy: float
    nn: float
    yn: float

    def validate(self, where: str) -> None:
        _whole(self.users, f"{where}.users")
        for name in ("yy", "nn", "yn"):
            value = getattr(self, name)
            if not _is_finite_number(value) or value < 0:
                raise InvalidCounts(f"{where}.{name}: {value!r} is not a finite number >= 0")


@dataclass(frozen=True)
class PrimaryCounts:
    """One variant's primary metric in one interval (not cumulative).

    Proportion: `count` impressions, `total` clicks (0 <= total <= count; `squares` is ignored).
    Mean: `count` observations, `total` their sum, `squares` the sum of their squares.
    `units`: new assignment units (users) of the interval, for the SRM check; None when unknown.
    `per_user`: the interval's increases of the per-user sums (`PerUser`: users, and over users u the sums of
    Y_u^2, N_u^2 and Y_u N_u, where Y_u and N_u are user u's totals of `total` and `count`); None when the
    source has none (then only `unit: sample` can judge).
    """

    count: int
    total: float
    squares: float | None = None
    units: int | None = None
    per_user: PerUser | None = None

    @classmethod
    def proportion(cls, successes: int, trials: int, units: int | None = None,
                   per_user: PerUser | None = None) -> PrimaryCounts:
        return cls(count=trials, total=successes, units=units, per_user=per_user)

    @classmethod
    def mean(cls, total: float, squares: float, count: int, units: int | None = None,
             per_user: PerUser | None = None) -> PrimaryCounts:
        return cls(count=count, total=total, squares=squares, units=units, per_user=per_user)

    def validate(self, kind: str, where: str) -> None:
        _whole(self.count, f"{where}.count")
        if self.units is not None:
            _whole(self.units, f"{where}.units")
        if self.per_user is not None:
            self.per_user.validate(f"{where}.per_user")
        if not _is_finite_number(self.total):
            raise InvalidCounts(f"{where}.total: {self.total!r} is not a finite number")
        if kind == "proportion":
            if not 0 <= self.total <= self.count:
                raise InvalidCounts(f"{where}.total: {self.total!r} is not in [0, count={self.count}]")
            return
        if self.squares is None or not _is_finite_number(self.squares):
            raise InvalidCounts(f"{where}.squares: {self.squares!r} is not a finite number")
        # Cauchy-Schwarz: total^2 <= count * squares (with rounding slack).
        if self.squares < 0 or self.total * self.total > self.count * self.squares * (1 + 1e-9) + 1e-9:
            raise InvalidCounts(f"{where}.squares: {self.squares!r} is impossible for total {self.total!r}")


def _whole(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidCounts(f"{where}: {value!r} is not a whole number")
    if value < 0:
        raise InvalidCounts(f"{where}: {value} is negative")


class ABDecision(StrEnum):
    CONTINUE = "continue"
    WINNER = "winner"
    NO_DIFFERENCE = "no_difference"
    HARMFUL = "harmful"
    ERROR = "error"


@dataclass(frozen=True)
class VariantComparison:
    """One variant against the control: estimates, CSs, samples, SRM and the per-variant verdict
    (`better`, `worse`, `equivalent` or `undecided`, in the metric's favourable direction)."""

    variant: str
    verdict: str
    samples: int
    control_samples: int
    mean: float | None
    control_mean: float | None
    difference: float | None
    difference_cs: tuple[float, float]
    ratio: float | None
    ratio_cs: tuple[float, float]
    srm_e_value: float | None
    share: float | None
    intended_share: float | None
    users: int | None = None  # under unit: user, the users behind the estimate
    control_users: int | None = None

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "variant": self.variant,
            "verdict": self.verdict,
            "samples": self.samples,
            "controlSamples": self.control_samples,
            "users": self.users,
            "controlUsers": self.control_users,
            "mean": finite(self.mean),
            "controlMean": finite(self.control_mean),
            "difference": finite(self.difference),
            "differenceConfidenceSequence": [finite(x) for x in self.difference_cs],
            "ratio": finite(self.ratio),
            "ratioConfidenceSequence": [finite(x) for x in self.ratio_cs],
            "sampleRatio": {
                "eValue": finite(self.srm_e_value),
                "share": finite(self.share),
                "intendedShare": finite(self.intended_share),
            },
        }


@dataclass(frozen=True)
class ABResult:
    """The experiment's decision at one look, with every comparison behind it."""

    decision: ABDecision
    reason: str
    winner: str | None
    elapsed_s: float
    alpha_each: float
    samples: Mapping[str, int]
    comparisons: tuple[VariantComparison, ...]
    metric: str
    control: str
    looks: int
    unit: str = "sample"

    def comparison(self, variant: str) -> VariantComparison:
        return next(c for c in self.comparisons if c.variant == variant)

    def to_dict(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {
            "decision": self.decision.value,
            "reason": self.reason,
            "winner": self.winner,
            "metric": self.metric,
            "control": self.control,
            "elapsedSeconds": finite(self.elapsed_s),
            "looks": self.looks,
            "alphaPerComparison": finite(self.alpha_each),
            "samples": dict(self.samples),
            "unit": self.unit,
            "comparisons": [c.to_dict() for c in self.comparisons],
        }
        if self.winner is not None:
            best = self.comparison(self.winner)
            out["effect"] = {
                "difference": finite(best.difference),
                "differenceConfidenceSequence": [finite(x) for x in best.difference_cs],
                "ratio": finite(best.ratio),
                "ratioConfidenceSequence": [finite(x) for x in best.ratio_cs],
            }
        return json_clean(out)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------------------
# State and update
# ---------------------------------------------------------------------------------------------------------


def ab_initial_state(config: ExperimentConfig, variants: Sequence[str] | None = None) -> dict[str, Any]:
    """A fresh, JSON-able experiment state. `variants`, when given, must name exactly the config's
    variants (a guard against a spec and a running experiment drifting apart)."""
    names = [v.name for v in config.variants]
    if variants is not None and sorted(variants) != sorted(names):
        raise ValueError(f"variants {sorted(variants)} differ from the experiment's variants {sorted(names)}")
    return {
        "kind": "abTest",
        "version": STATE_VERSION,
        "config": config.statistics_dict(),
        "looks": 0,
        "elapsed": 0.0,
        "arms": {n: {"count": 0, "total": 0.0, "squares": 0.0, "units": 0, "perUser": [0, 0.0, 0.0, 0.0]}
                 for n in names},
        "comparisons": {
            n: {
                "w": 0.0, "sv": 0.0, "sc": 0.0, "a": 0.0, "b": 0.0,
                "srm": {"llr": [0.0] * len(SRM_GRID), "logE": 0.0, "n": [0, 0], "crossedAt": None},
            }
            for n in config.treatments
        },
    }


def ab_update(
    state: Mapping[str, Any], counts: Mapping[str, PrimaryCounts], elapsed_seconds: float
) -> tuple[dict[str, Any], ABResult]:
    """Fold one interval of every variant's counts into the state and decide. Pure: `state` is not
    modified. `elapsed_seconds` is the time since the experiment started (end of the interval). A variant
    missing from `counts` had no samples in the interval. Unusable input (unknown variant, invalid counts,
    time going backwards) is an `error` result and the state comes back unchanged. The statistics use the
    configuration frozen in the state by `ab_initial_state`."""
    config = state_config(state)
    problem = _input_problem(state, config, counts, elapsed_seconds)
    if problem:
        unchanged = copy.deepcopy(dict(state))
        return unchanged, _result(unchanged, config, ABDecision.ERROR, f"unusable data: {problem}")
    new = copy.deepcopy(dict(state))
    new["looks"] += 1
    new["elapsed"] = float(elapsed_seconds)
    for name, c in counts.items():
        _add_arm(new["arms"][name], c, config.primary.kind)
    impossible = _per_user_problem(new["arms"], config, counts)
    if impossible:
        unchanged = copy.deepcopy(dict(state))
        return unchanged, _result(unchanged, config, ABDecision.ERROR, f"unusable data: {impossible}")
    empty = PrimaryCounts(0, 0.0, 0.0)
    control = counts.get(config.control, empty)
    for name in config.treatments:
        _fold_comparison(new["comparisons"][name], counts.get(name, empty), control, config, name, new["elapsed"])
    return new, _decide(new, config)


def state_config(state: Mapping[str, Any]) -> ExperimentConfig:
    """The experiment configuration frozen in a state (guardrails left at their defaults: not used here). A
    state frozen before `unit` existed judged samples, and keeps doing so."""
    return ExperimentConfig.from_dict({"unit": "sample", **state["config"]}, path="state.config")


def _input_problem(
    state: Mapping[str, Any], config: ExperimentConfig, counts: Mapping[str, PrimaryCounts], elapsed: float
) -> str:
    unknown = sorted(set(counts) - set(state["arms"]))
    if unknown:
        return f"variant {unknown[0]} is not among the experiment's variants {sorted(state['arms'])}"
    if not _is_finite_number(elapsed) or elapsed < state["elapsed"]:
        return f"elapsed_seconds {elapsed!r} is not a finite time >= the last look's {state['elapsed']}"
    try:
        for name, c in counts.items():
            c.validate(config.primary.kind, f"counts[{name}]")
    except InvalidCounts as exc:
        return str(exc)
    if config.unit == "user":
        no_sums = sorted(n for n, c in counts.items() if c.per_user is None and c.count > 0)
        if no_sums:  # never judged as if impressions were independent without being asked to
            return (f"counts[{no_sums[0]}] has no per-user sums, which unit: user needs: export them (see "
                    f"docs/experiments.md, \"Users as the unit\"), or set unit: sample if samples are independent")
    if config.sample_ratio_on == "units":
        missing = sorted(n for n, c in counts.items() if c.units is None and c.count > 0)
        if missing:  # never a silent "no mismatch": the check would count 0 users on every side
            return (f"counts[{missing[0]}] has no number of users assigned (units), which the sample-ratio check "
                    f"counts: export the metric's assigned-users counter, or set sampleRatioOn to samples or off")
    return ""


def _add_arm(arm: dict[str, Any], c: PrimaryCounts, kind: str) -> None:
    arm["count"] += c.count
    arm["total"] += float(c.total)
    arm["squares"] += float(c.total if kind == "proportion" else (c.squares or 0.0))
    arm["units"] += c.units or 0
    if c.per_user is not None:
        sums = arm.setdefault("perUser", [0, 0.0, 0.0, 0.0])
        for i, inc in enumerate((c.per_user.users, c.per_user.yy, c.per_user.nn, c.per_user.yn)):
            sums[i] += inc


def _user_totals(arm: Mapping[str, Any]) -> UserTotals:
    users, yy, nn, yn = arm.get("perUser", (0, 0.0, 0.0, 0.0))
    return UserTotals(users=users, y=arm["total"], n=arm["count"], yy=yy, nn=nn, yn=yn)


def _per_user_problem(arms: Mapping[str, Any], config: ExperimentConfig, counts: Mapping[str, PrimaryCounts]) -> str:
    """Cumulative per-user sums that no set of users can have (e.g. a sum of squares below its square / users)."""
    if config.unit != "user":
        return ""
    for name in counts:
        problem = _user_totals(arms[name]).problem()
        if problem:
            return f"the per-user sums of {name} so far: {problem}"
    return ""


def _fold_comparison(
    comp: dict[str, Any], v: PrimaryCounts, c: PrimaryCounts, config: ExperimentConfig, name: str, t: float
) -> None:
    w, sv, sc, a, b = comparison_increment(v.count, v.total, c.count, c.total)
    for key, inc in (("w", w), ("sv", sv), ("sc", sc), ("a", a), ("b", b)):
        comp[key] += float(inc)
    srm = comp["srm"]
    if config.sample_ratio_on == "off":
        return
    n_v, n_c = (v.units or 0, c.units or 0) if config.sample_ratio_on == "units" else (v.count, c.count)
    w_v, w_c = config.weight_of(name), config.weight_of(config.control)
    if w_v + w_c <= 0:
        return
    srm["llr"] = (np.asarray(srm["llr"]) + srm_increment(n_v, n_c, 100.0 * w_v / (w_v + w_c))).tolist()
    srm["logE"] = float(log_mixture(srm["llr"]))
    srm["n"] = [srm["n"][0] + n_v, srm["n"][1] + n_c]
    threshold = math.log(len(config.treatments) / config.sample_ratio_alpha)
    if srm["crossedAt"] is None and srm["logE"] >= threshold:
        srm["crossedAt"] = t


# ---------------------------------------------------------------------------------------------------------
# Decision
# ---------------------------------------------------------------------------------------------------------


def _variances(arm: Mapping[str, Any], config: ExperimentConfig) -> tuple[float, float | None]:
    """(plug-in variance, its bound or None): the asymptotic CS uses the first, hoeffding the second."""
    n, total, squares = arm["count"], arm["total"], arm["squares"]
    if config.primary.kind == "proportion":
        p = (total + 1.0) / (n + 2.0)  # Laplace: never 0, so a run of all-or-no clicks is not "certain"
        return p * (1.0 - p), 0.25
    bound = None
    if config.primary.bounds is not None:
        lo, hi = config.primary.bounds
        bound = (hi - lo) ** 2 / 4.0
    if n < 2:
        return math.inf, bound
    return max((squares - total * total / n) / (n - 1), 0.0), bound


# A comparison's estimates: (difference, its interval, ratio, its interval).
Estimates = tuple[float | None, tuple[float, float], float | None, tuple[float, float]]


def _compare(state: Mapping[str, Any], config: ExperimentConfig, name: str) -> VariantComparison:
    arm_v, arm_c = state["arms"][name], state["arms"][config.control]
    if config.unit == "user":
        d, cs, ratio, r_cs = _user_estimates(arm_v, arm_c, config)
    else:
        d, cs, ratio, r_cs = _sample_estimates(state["comparisons"][name], arm_v, arm_c, config)
    srm = state["comparisons"][name]["srm"]
    share, intended = _shares(srm["n"], config, name)
    users = config.unit == "user"
    return VariantComparison(
        variant=name,
        verdict=_verdict(cs[0], cs[1], config),
        samples=arm_v["count"],
        control_samples=arm_c["count"],
        mean=arm_v["total"] / arm_v["count"] if arm_v["count"] else None,
        control_mean=arm_c["total"] / arm_c["count"] if arm_c["count"] else None,
        difference=d,
        difference_cs=cs,
        ratio=ratio,
        ratio_cs=r_cs,
        srm_e_value=None if config.sample_ratio_on == "off" else math.exp(min(srm["logE"], 700.0)),
        share=share,
        intended_share=intended,
        users=int(arm_v["perUser"][0]) if users else None,
        control_users=int(arm_c["perUser"][0]) if users else None,
    )


def _sample_estimates(comp: Mapping[str, Any], arm_v: Mapping[str, Any], arm_c: Mapping[str, Any],
                      config: ExperimentConfig) -> Estimates:
    """Every sample independent: the per-interval paired sums of `comparison_increment`."""
    alpha, rho2 = config.alpha_each, rho_squared(config.tuning_samples, config.alpha_each)
    (var_v, bound), (var_c, _) = _variances(arm_v, config), _variances(arm_c, config)
    exact = config.method == "hoeffding"
    if exact and bound is not None:
        var_v = var_c = bound
    sums = (comp["w"], comp["sv"], comp["sc"], comp["a"], comp["b"])
    est, lo, hi = difference_cs(*sums, var_v, var_c, alpha, rho2, scale2=bound if exact else None)
    r_lo, r_hi = ratio_cs(*sums, var_v, var_c, alpha, rho2, bound_var=bound if exact else None)
    w = comp["w"]
    ratio = comp["sv"] / comp["sc"] if w > 0 and comp["sc"] > 0 else None
    return None if w <= 0 else float(est), (float(lo), float(hi)), ratio, (r_lo, r_hi)


def _user_estimates(arm_v: Mapping[str, Any], arm_c: Mapping[str, Any], config: ExperimentConfig) -> Estimates:
    """Users as the unit: the delta method on cumulative per-user sums (`analysis.users`)."""
    alpha, rho2 = config.alpha_each, rho_squared(config.tuning_users, config.alpha_each)
    t_v, t_c, proportion = _user_totals(arm_v), _user_totals(arm_c), config.primary.kind == "proportion"
    est, lo, hi = user_difference_cs(t_v, t_c, alpha, rho2, proportion)
    r_lo, r_hi = user_ratio_cs(t_v, t_c, alpha, rho2, proportion)
    mean_v = arm_v["total"] / arm_v["count"] if arm_v["count"] else None
    mean_c = arm_c["total"] / arm_c["count"] if arm_c["count"] else None
    ratio = mean_v / mean_c if mean_v is not None and mean_c else None
    return (None if math.isnan(float(est)) else float(est)), (float(lo), float(hi)), ratio, (float(r_lo), float(r_hi))


def _shares(n: Sequence[int], config: ExperimentConfig, name: str) -> tuple[float | None, float | None]:
    w_v, w_c = config.weight_of(name), config.weight_of(config.control)
    intended = w_v / (w_v + w_c) if w_v + w_c > 0 else None
    return (n[0] / (n[0] + n[1]) if n[0] + n[1] else None), intended


def _verdict(lo: float, hi: float, config: ExperimentConfig) -> str:
    sign = config.primary.favourable_sign
    if (sign > 0 and lo > 0) or (sign < 0 and hi < 0):
        return "better"
    if (sign > 0 and hi < 0) or (sign < 0 and lo > 0):
        return "worse"
    margin = config.equivalence_margin
    if margin is not None and -margin < lo and hi < margin:
        return "equivalent"
    return "undecided"


def _decide(state: Mapping[str, Any], config: ExperimentConfig) -> ABResult:
    comps = [_compare(state, config, n) for n in config.treatments]
    srm = [n for n in config.treatments if state["comparisons"][n]["srm"]["crossedAt"] is not None]
    if srm:
        c = next(x for x in comps if x.variant == srm[0])
        return _result(state, config, ABDecision.ERROR, f"sample-ratio mismatch: {c.variant} got {_pct(c.share)} of "
                       f"its pair with {config.control}, intended {_pct(c.intended_share)}", comps=comps)
    ended = state["elapsed"] >= config.max_duration_s
    short = _short_of_minimum(state["arms"], config)
    if short and ended:
        # `no_difference` is the decision at the deadline whatever the reason; the reason says none was judged.
        reason = (f"maximum duration {config.max_duration_s:.0f}s reached before the minimum sample ({short}): no "
                  "variant could be judged")
        return _result(state, config, ABDecision.NO_DIFFERENCE, reason, comps=comps)
    if short:
        return _result(state, config, ABDecision.CONTINUE, short, comps=comps)
    worse = [c for c in comps if c.verdict == "worse"]
    if worse:
        return _result(state, config, ABDecision.HARMFUL, f"{worse[0].variant} is worse than {config.control} on "
                       f"{config.primary.name}: {_cs(worse[0].difference_cs)}", comps=comps)
    if state["elapsed"] < config.min_duration_s:
        reason = f"{state['elapsed']:.0f}s of the minimum {config.min_duration_s:.0f}s"
        return _result(state, config, ABDecision.CONTINUE, reason, comps=comps)
    return _winner_or_not(state, config, comps, ended)


def _short_of_minimum(arms: Mapping[str, Any], config: ExperimentConfig) -> str:
    """The variant furthest from the minimum sample (`minSamples`, and `minUsers` under unit: user) and its
    count, e.g. "v3: 12 samples so far, 1000 needed per variant"; "" once every variant has it."""
    short = min(arms, key=lambda n: arms[n]["count"])
    if arms[short]["count"] < config.min_samples:
        return f"{short}: {arms[short]['count']} samples so far, {config.min_samples} needed per variant"
    if config.unit == "user":
        users = {n: int(a.get("perUser", (0,))[0]) for n, a in arms.items()}
        short = min(users, key=lambda n: users[n])
        if users[short] < config.min_users:
            return f"{short}: {users[short]} users so far, {config.min_users} needed per variant"
    return ""


def _winner_or_not(
    state: Mapping[str, Any], config: ExperimentConfig, comps: list[VariantComparison], ended: bool
) -> ABResult:
    sign = config.primary.favourable_sign
    better = sorted((c for c in comps if c.verdict == "better"), key=lambda c: -_worst_case(c, sign))
    if better:
        best = better[0]
        # The CSs hold simultaneously, so disjoint CSs rank two variants; overlapping ones do not.
        rivals = [c for c in comps if c is not best and _best_case(c, sign) >= _worst_case(best, sign)]
        if not rivals:
            reason = f"{best.variant} beats {config.control} on {config.primary.name}: {_cs(best.difference_cs)}"
            return _result(state, config, ABDecision.WINNER, reason, best.variant, comps)
        tied = ", ".join(c.variant for c in rivals)
        if ended:  # no clear winner: naming one would be a coin toss among the tied
            reason = (f"maximum duration {config.max_duration_s:.0f}s reached without a clear winner: {best.variant} "
                      f"beats {config.control} but is not separated from {tied}")
            return _result(state, config, ABDecision.NO_DIFFERENCE, reason, comps=comps)
        reason = f"{best.variant} beats {config.control} but is not yet separated from {tied}"
        return _result(state, config, ABDecision.CONTINUE, reason, comps=comps)
    if ended:
        reason = f"maximum duration {config.max_duration_s:.0f}s reached without a significant difference"
        return _result(state, config, ABDecision.NO_DIFFERENCE, reason, comps=comps)
    if config.equivalence_margin is not None and all(c.verdict == "equivalent" for c in comps):
        reason = f"every difference is inside the equivalence margin +-{config.equivalence_margin:g}"
        return _result(state, config, ABDecision.NO_DIFFERENCE, reason, comps=comps)
    return _result(state, config, ABDecision.CONTINUE, "no confidence sequence excludes 0 yet", comps=comps)


def _worst_case(c: VariantComparison, sign: int) -> float:
    return c.difference_cs[0] if sign > 0 else -c.difference_cs[1]


def _best_case(c: VariantComparison, sign: int) -> float:
    return c.difference_cs[1] if sign > 0 else -c.difference_cs[0]


def _result(
    state: Mapping[str, Any],
    config: ExperimentConfig,
    decision: ABDecision,
    reason: str,
    winner: str | None = None,
    comps: list[VariantComparison] | None = None,
) -> ABResult:
    if comps is None:
        comps = [_compare(state, config, n) for n in config.treatments]
    return ABResult(
        decision=decision,
        reason=reason,
        winner=winner,
        elapsed_s=float(state["elapsed"]),
        alpha_each=config.alpha_each,
        samples={n: int(a["count"]) for n, a in state["arms"].items()},
        comparisons=tuple(comps),
        metric=config.primary.name,
        control=config.control,
        looks=int(state["looks"]),
        unit=config.unit,
    )


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{100.0 * share:.1f}%"


def _cs(bounds: tuple[float, float]) -> str:
    """The difference's confidence sequence, in words an operator reads without the docs."""
    return f"difference in [{bounds[0]:.4g}, {bounds[1]:.4g}] (confidence interval, valid at every look)"
