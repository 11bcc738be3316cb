"""A release's analysis settings (`spec.analysis`): parsing, defaults and validation.

This module owns the analysis config and its judges' knobs (`KayentaConfig`, `ThresholdConfig`).
`AnalysisConfig.from_dict(d, path="spec.analysis")` reads it with the project's one reader
(`analysis.reader`, failing fast) and refuses anything it cannot use with an `InvalidAnalysisConfig`
naming the exact field, e.g. `spec.analysis.alpha: 1.5 is not in (0, 1)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from analysis.reader import CONFIG_WORDING, Reader

JUDGES: tuple[str, ...] = ("sequential", "kayenta", "threshold")
CHECKS: tuple[str, ...] = ("errorRate", "slowTail", "latencyShift", "sampleRatio")
KAYENTA_METRICS: tuple[str, ...] = ("errorRate", "latencyP50", "latencyP99")
ANALYSIS_FIELDS = (
    "judge", "alpha", "errorRatioTolerance", "latencyTolerance", "latencyMinEffect", "tailThresholdMs",
    "tailReferenceQuantile", "minCanaryRequests", "nonInferiorityMargin", "absoluteNonInferiorityMargin",
    "latencyNonInferiorityMargin", "checks", "historyIntervals",
    "kayenta", "threshold",
)
# At most this many intervals of history are read at a release's start (one metrics window each).
MAX_HISTORY_INTERVALS = 240
KAYENTA_FIELDS = (
    "confidenceLevel", "tolerance", "allowedIncrease", "allowedDecrease", "nanStrategy", "metrics",
    "criticalMetrics", "groupWeights", "passScore", "marginalScore", "judgeEveryIntervals", "outlierIqrFactor",
)


class InvalidAnalysisConfig(ValueError):
    """A setting that cannot be used; the message starts with the field's path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def config_reader() -> Reader:
    """The reader of the statistics' configs: the first problem raises `InvalidAnalysisConfig`."""
    return Reader(fail=InvalidAnalysisConfig, wording=CONFIG_WORDING)


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
        r = config_reader()
        d = r.fields(data, path, KAYENTA_FIELDS, required=False)
        default = cls()
        marginal = r.number(d.get("marginalScore", default.marginal_score), f"{path}.marginalScore", 0, 100,
                            open_low=False, open_high=False)
        passing = r.number(d.get("passScore", default.pass_score), f"{path}.passScore", 0, 100,
                           open_low=False, open_high=False)
        if marginal > passing:
            r.problem(f"{path}.marginalScore", f"{marginal} exceeds passScore {passing}")
        return cls(
            confidence_level=r.number(d.get("confidenceLevel", default.confidence_level),
                                      f"{path}.confidenceLevel", 0, 1),
            tolerance=r.number(d.get("tolerance", default.tolerance), f"{path}.tolerance", 0, math.inf,
                               open_low=False),
            allowed_increase=r.number(d.get("allowedIncrease", default.allowed_increase),
                                      f"{path}.allowedIncrease", 0, math.inf),
            allowed_decrease=r.number(d.get("allowedDecrease", default.allowed_decrease),
                                      f"{path}.allowedDecrease", 0, math.inf),
            nan_strategy=r.choice(d.get("nanStrategy", default.nan_strategy), f"{path}.nanStrategy",
                                  ("replace", "remove")),
            metrics=r.subset(d.get("metrics", list(default.metrics)), f"{path}.metrics", KAYENTA_METRICS),
            critical_metrics=r.subset(d.get("criticalMetrics", list(default.critical_metrics)),
                                      f"{path}.criticalMetrics", KAYENTA_METRICS),
            group_weights=_weights(r, d.get("groupWeights", dict(default.group_weights)), f"{path}.groupWeights"),
            pass_score=passing,
            marginal_score=marginal,
            judge_every_intervals=r.integer(d.get("judgeEveryIntervals", default.judge_every_intervals),
                                            f"{path}.judgeEveryIntervals", 1),
            outlier_iqr_factor=r.number(d.get("outlierIqrFactor", default.outlier_iqr_factor),
                                        f"{path}.outlierIqrFactor", 0, math.inf),
        )


def _weights(r: Reader, value: Any, path: str) -> dict[str, float]:
    """Kayenta's group weights: a mapping of group name to a non-negative number."""
    weights = r.mapping(value, path)
    return {str(name): r.number(w, f"{path}.{name}", 0, math.inf, open_low=False) for name, w in weights.items()}


@dataclass(frozen=True)
class ThresholdConfig:
    """Flagger-style absolute checks on the canary alone."""

    min_success_rate: float = 99.0
    max_p99_ms: float = 500.0
    failed_checks: int = 5

    @classmethod
    def from_dict(cls, data: Any, path: str) -> ThresholdConfig:
        r = config_reader()
        d = r.fields(data, path, ("minSuccessRate", "maxP99Ms", "failedChecks"), required=False)
        default = cls()
        return cls(
            min_success_rate=r.number(d.get("minSuccessRate", default.min_success_rate), f"{path}.minSuccessRate",
                                      0, 100, open_low=False, open_high=False),
            max_p99_ms=r.number(d.get("maxP99Ms", default.max_p99_ms), f"{path}.maxP99Ms", 0, math.inf),
            failed_checks=r.integer(d.get("failedChecks", default.failed_checks), f"{path}.failedChecks", 1),
        )


@dataclass(frozen=True)
class AnalysisConfig:
    """Everything a judge needs to know; defaults are the documented ones."""

    judge: str = "sequential"
    alpha: float = 0.05
    error_ratio_tolerance: float = 1.0  # r0: the canary may fail up to r0 times as often
    latency_tolerance: float = 0.05  # Delta0 on P(C>B) - P(C<B): a few % of latency is noise, not harm
    latency_min_effect: float = 0.1  # Delta_min: where the latency mixture puts its weight
    tail_threshold_ms: float | None = None
    tail_reference_quantile: float = 0.975
    min_canary_requests: int = 100
    # Safety margins: `pass` needs every check shown within its margin (None: the check needs no proof).
    non_inferiority_margin: float | None = 1.5  # the error (and slow-request) ratio's upper bound below this,
    absolute_non_inferiority_margin: float | None = 0.005  # ... or the canary's excess rate's upper bound below this
    latency_non_inferiority_margin: float | None = 0.1  # Delta's upper bound below this
    checks: tuple[str, ...] = CHECKS
    # Intervals of the stable version's own metrics before the release that the judge learns its noise from
    # (error bursts; the slow-tail threshold): SequentialJudge.prime. 0: none.
    history_intervals: int = 30
    # Not a spec.analysis field: the controller sets it from strategy.canary.warmup (intervals, rounded up).
    # A canary pod the sequential judge sees for the first time is left out of this many intervals (every
    # check but the sample ratio) while it warms up; the canary's pods in the first interval with any are warm
    # (the controller waited the warm-up before it). 0: every pod judged from its first interval.
    pod_warmup_intervals: int = 0
    kayenta: KayentaConfig = field(default_factory=KayentaConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)

    @classmethod
    def from_dict(cls, data: Any, path: str = "spec.analysis") -> AnalysisConfig:
        r = config_reader()
        d = r.fields(data, path, ANALYSIS_FIELDS, required=False)
        default = cls()
        checks = r.subset(d.get("checks", list(default.checks)), f"{path}.checks", CHECKS)
        if not checks:
            r.problem(f"{path}.checks", "needs at least one check")
        return cls(
            judge=r.choice(d.get("judge", default.judge), f"{path}.judge", JUDGES),
            alpha=r.number(d.get("alpha", default.alpha), f"{path}.alpha", 0, 1),
            error_ratio_tolerance=r.number(d.get("errorRatioTolerance", default.error_ratio_tolerance),
                                           f"{path}.errorRatioTolerance", 0, math.inf),
            latency_tolerance=r.number(d.get("latencyTolerance", default.latency_tolerance),
                                       f"{path}.latencyTolerance", -1, 1, open_low=False),
            latency_min_effect=r.number(d.get("latencyMinEffect", default.latency_min_effect),
                                        f"{path}.latencyMinEffect", 0, 1, open_high=False),
            tail_threshold_ms=r.optional_number(d.get("tailThresholdMs"), f"{path}.tailThresholdMs", 0, math.inf),
            tail_reference_quantile=r.number(d.get("tailReferenceQuantile", default.tail_reference_quantile),
                                             f"{path}.tailReferenceQuantile", 0, 1),
            min_canary_requests=r.integer(d.get("minCanaryRequests", default.min_canary_requests),
                                          f"{path}.minCanaryRequests", 0),
            non_inferiority_margin=r.optional_number(
                d.get("nonInferiorityMargin", default.non_inferiority_margin), f"{path}.nonInferiorityMargin",
                0, math.inf),
            absolute_non_inferiority_margin=r.optional_number(
                d.get("absoluteNonInferiorityMargin", default.absolute_non_inferiority_margin),
                f"{path}.absoluteNonInferiorityMargin", 0, 1),
            latency_non_inferiority_margin=r.optional_number(
                d.get("latencyNonInferiorityMargin", default.latency_non_inferiority_margin),
                f"{path}.latencyNonInferiorityMargin", -1, 1, open_high=False),
            checks=checks,
            history_intervals=r.integer(d.get("historyIntervals", default.history_intervals),
                                        f"{path}.historyIntervals", 0, MAX_HISTORY_INTERVALS),
            kayenta=KayentaConfig.from_dict(d.get("kayenta"), f"{path}.kayenta"),
            threshold=ThresholdConfig.from_dict(d.get("threshold"), f"{path}.threshold"),
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
