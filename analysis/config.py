"""A release's analysis settings (`spec.analysis`): parsing, defaults and validation.

`AnalysisConfig.from_dict(d, path="spec.analysis")` refuses anything it cannot use with an
`InvalidAnalysisConfig` naming the exact field, e.g. `spec.analysis.alpha: 1.5 is not in (0, 1)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

JUDGES: tuple[str, ...] = ("sequential", "kayenta", "threshold")
CHECKS: tuple[str, ...] = ("errorRate", "slowTail", "latencyShift", "sampleRatio")
KAYENTA_METRICS: tuple[str, ...] = ("errorRate", "latencyP50", "latencyP99")


class InvalidAnalysisConfig(ValueError):
    """A setting that cannot be used; the message starts with the field's path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class _Reader:
    """Reads typed fields of one mapping, reporting errors with their full path."""

    def __init__(self, data: Any, path: str, known: tuple[str, ...]) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise InvalidAnalysisConfig(path, f"{data!r} is not an object")
        for key in data:
            if key not in known:
                raise InvalidAnalysisConfig(f"{path}.{key}", f"unknown field (known: {', '.join(known)})")
        self.data = data
        self.path = path

    def number(
        self,
        key: str,
        default: float | None,
        low: float,
        high: float,
        *,
        open_low: bool = True,
        open_high: bool = True,
    ) -> float | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        where = f"{self.path}.{key}"
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidAnalysisConfig(where, f"{value!r} is not a finite number")
        too_low = value <= low if open_low else value < low
        too_high = value >= high if open_high else value > high
        if too_low or too_high:
            lb, rb = ("(" if open_low else "["), (")" if open_high else "]")
            raise InvalidAnalysisConfig(where, f"{value!r} is not in {lb}{_fmt(low)}, {_fmt(high)}{rb}")
        return float(value)

    def required_number(
        self,
        key: str,
        default: float,
        low: float,
        high: float,
        *,
        open_low: bool = True,
        open_high: bool = True,
    ) -> float:
        value = self.number(key, default, low, high, open_low=open_low, open_high=open_high)
        if value is None:
            raise InvalidAnalysisConfig(f"{self.path}.{key}", "must not be null")
        return value

    def integer(self, key: str, default: int, low: int) -> int:
        value = self.data.get(key, default)
        where = f"{self.path}.{key}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidAnalysisConfig(where, f"{value!r} is not a whole number")
        if value < low:
            raise InvalidAnalysisConfig(where, f"{value} is less than {low}")
        return value

    def choice(self, key: str, default: str, options: tuple[str, ...]) -> str:
        value = self.data.get(key, default)
        if value not in options:
            raise InvalidAnalysisConfig(f"{self.path}.{key}", f"{value!r} is not one of {', '.join(options)}")
        return str(value)

    def subset(self, key: str, default: tuple[str, ...], options: tuple[str, ...]) -> tuple[str, ...]:
        value = self.data.get(key, list(default))
        where = f"{self.path}.{key}"
        if not isinstance(value, list):
            raise InvalidAnalysisConfig(where, f"{value!r} is not a list")
        for i, item in enumerate(value):
            if item not in options:
                raise InvalidAnalysisConfig(f"{where}[{i}]", f"{item!r} is not one of {', '.join(options)}")
        return tuple(dict.fromkeys(value))

    def weights(self, key: str, default: Mapping[str, float]) -> dict[str, float]:
        value = self.data.get(key, dict(default))
        where = f"{self.path}.{key}"
        if not isinstance(value, Mapping):
            raise InvalidAnalysisConfig(where, f"{value!r} is not an object")
        out: dict[str, float] = {}
        for name, w in value.items():
            if isinstance(w, bool) or not isinstance(w, int | float) or not (math.isfinite(w) and w >= 0):
                raise InvalidAnalysisConfig(f"{where}.{name}", f"{w!r} is not a non-negative number")
            out[str(name)] = float(w)
        return out


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class KayentaConfig:
    """NetflixACAJudge's knobs: Mann-Whitney CI level, HL tolerance, mean-ratio effect thresholds."""

    confidence_level: float = 0.98
    tolerance: float = 0.25
    allowed_increase: float = 1.0
    allowed_decrease: float = 1.0
    nan_strategy: str = "replace"
    metrics: tuple[str, ...] = KAYENTA_METRICS
    critical_metrics: tuple[str, ...] = ()
    group_weights: Mapping[str, float] = field(default_factory=lambda: {"errors": 50.0, "latency": 50.0})
    pass_score: float = 95.0
    marginal_score: float = 75.0
    judge_every_intervals: int = 1
    outlier_iqr_factor: float = 3.0

    @classmethod
    def from_dict(cls, data: Any, path: str) -> KayentaConfig:
        r = _Reader(
            data,
            path,
            (
                "confidenceLevel",
                "tolerance",
                "allowedIncrease",
                "allowedDecrease",
                "nanStrategy",
                "metrics",
                "criticalMetrics",
                "groupWeights",
                "passScore",
                "marginalScore",
                "judgeEveryIntervals",
                "outlierIqrFactor",
            ),
        )
        d = cls()
        marginal = r.required_number("marginalScore", d.marginal_score, 0, 100, open_low=False, open_high=False)
        passing = r.required_number("passScore", d.pass_score, 0, 100, open_low=False, open_high=False)
        if marginal > passing:
            raise InvalidAnalysisConfig(f"{path}.marginalScore", f"{marginal} exceeds passScore {passing}")
        return cls(
            confidence_level=r.required_number("confidenceLevel", d.confidence_level, 0, 1),
            tolerance=r.required_number("tolerance", d.tolerance, 0, math.inf, open_low=False),
            allowed_increase=r.required_number("allowedIncrease", d.allowed_increase, 0, math.inf),
            allowed_decrease=r.required_number("allowedDecrease", d.allowed_decrease, 0, math.inf),
            nan_strategy=r.choice("nanStrategy", d.nan_strategy, ("replace", "remove")),
            metrics=r.subset("metrics", d.metrics, KAYENTA_METRICS),
            critical_metrics=r.subset("criticalMetrics", d.critical_metrics, KAYENTA_METRICS),
            group_weights=r.weights("groupWeights", d.group_weights),
            pass_score=passing,
            marginal_score=marginal,
            judge_every_intervals=r.integer("judgeEveryIntervals", d.judge_every_intervals, 1),
            outlier_iqr_factor=r.required_number("outlierIqrFactor", d.outlier_iqr_factor, 0, math.inf),
        )


@dataclass(frozen=True)
class ThresholdConfig:
    """Flagger-style absolute checks on the canary alone."""

    min_success_rate: float = 99.0
    max_p99_ms: float = 500.0
    failed_checks: int = 5

    @classmethod
    def from_dict(cls, data: Any, path: str) -> ThresholdConfig:
        r = _Reader(data, path, ("minSuccessRate", "maxP99Ms", "failedChecks"))
        d = cls()
        return cls(
            min_success_rate=r.required_number(
                "minSuccessRate", d.min_success_rate, 0, 100, open_low=False, open_high=False
            ),
            max_p99_ms=r.required_number("maxP99Ms", d.max_p99_ms, 0, math.inf),
            failed_checks=r.integer("failedChecks", d.failed_checks, 1),
        )


@dataclass(frozen=True)
class AnalysisConfig:
    """Everything a judge needs to know; defaults are the documented ones."""

    judge: str = "sequential"
    alpha: float = 0.05
    error_ratio_tolerance: float = 1.0  # r0: the canary may fail up to r0 times as often
    latency_tolerance: float = 0.0  # Delta0 on P(C>B) - P(C<B)
    latency_min_effect: float = 0.1  # Delta_min: where the latency mixture puts its weight
    tail_threshold_ms: float | None = None
    tail_reference_quantile: float = 0.975
    min_canary_requests: int = 100
    non_inferiority_margin: float | None = None  # on the error ratio's upper confidence bound
    latency_non_inferiority_margin: float | None = None  # on Delta's upper confidence bound
    checks: tuple[str, ...] = CHECKS
    kayenta: KayentaConfig = field(default_factory=KayentaConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)

    @classmethod
    def from_dict(cls, data: Any, path: str = "spec.analysis") -> AnalysisConfig:
        r = _Reader(
            data,
            path,
            (
                "judge",
                "alpha",
                "errorRatioTolerance",
                "latencyTolerance",
                "latencyMinEffect",
                "tailThresholdMs",
                "tailReferenceQuantile",
                "minCanaryRequests",
                "nonInferiorityMargin",
                "latencyNonInferiorityMargin",
                "checks",
                "kayenta",
                "threshold",
            ),
        )
        d = cls()
        checks = r.subset("checks", d.checks, CHECKS)
        if not checks:
            raise InvalidAnalysisConfig(f"{path}.checks", "needs at least one check")
        return cls(
            judge=r.choice("judge", d.judge, JUDGES),
            alpha=r.required_number("alpha", d.alpha, 0, 1),
            error_ratio_tolerance=r.required_number("errorRatioTolerance", d.error_ratio_tolerance, 0, math.inf),
            latency_tolerance=r.required_number("latencyTolerance", d.latency_tolerance, -1, 1, open_low=False),
            latency_min_effect=r.required_number("latencyMinEffect", d.latency_min_effect, 0, 1, open_high=False),
            tail_threshold_ms=r.number("tailThresholdMs", None, 0, math.inf),
            tail_reference_quantile=r.required_number("tailReferenceQuantile", d.tail_reference_quantile, 0, 1),
            min_canary_requests=r.integer("minCanaryRequests", d.min_canary_requests, 0),
            non_inferiority_margin=r.number("nonInferiorityMargin", None, 0, math.inf),
            latency_non_inferiority_margin=r.number("latencyNonInferiorityMargin", None, -1, 1, open_high=False),
            checks=checks,
            kayenta=KayentaConfig.from_dict(r.data.get("kayenta"), f"{path}.kayenta"),
            threshold=ThresholdConfig.from_dict(r.data.get("threshold"), f"{path}.threshold"),
        )

    def with_overrides(self, judge: str | None = None, alpha: float | None = None) -> AnalysisConfig:
        """A copy with the command line's --judge/--alpha applied (validated like the spec)."""
        data: dict[str, Any] = {}
        if judge is not None:
            data["judge"] = judge
        if alpha is not None:
            data["alpha"] = alpha
        checked = AnalysisConfig.from_dict(data, path="options")
        return replace(
            self,
            judge=checked.judge if judge is not None else self.judge,
            alpha=checked.alpha if alpha is not None else self.alpha,
        )
