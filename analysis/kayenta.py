"""A Kayenta-style judge: Netflix's ACA judge (NetflixACAJudge) re-implemented on per-interval series.

For each metric (error rate, p50 and p99 latency per interval) it compares the canary's series with the
baseline's, as Kayenta does with its metric time series:
1. NaN strategy: "replace" turns missing values (an interval without requests) into 0, "remove" drops them.
2. Outliers beyond `outlierIqrFactor` x IQR from the quartiles are dropped (Kayenta's IQR detector,
   factor 3).
3. Identical data, or a single distinct value, is a Pass; an empty side is NoData.
4. Mann-Whitney with a Hodges-Lehmann confidence interval (level 0.98) for the shift
   canary - baseline: High when the interval's lower end exceeds `tolerance` x |HL estimate| and the mean
   ratio canary/baseline is at least `allowedIncrease`; Low mirrors it (`allowedDecrease`).
5. Group score = 100 x passes / classified metrics; the summary is the weighted sum of group scores; any
   non-Pass critical metric scores 0. Score >= passScore: pass; >= marginalScore: marginal
   (inconclusive); else fail.
The confidence interval uses the normal-approximation order statistics of the pairwise differences
(the distribution-free interval R's wilcox.test approximates). It is a fixed-horizon test: judging it at
every interval is exactly the repeated testing that inflates false rollbacks.

Everything is vectorised over leading axes so the benchmark runs the same code.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

from analysis.config import AnalysisConfig, KayentaConfig
from analysis.decisions import CheckResult, Decision
from analysis.histogram import FloatArray, IntArray, quantiles
from analysis.observations import ISTIO_BUCKETS_MS, IntervalObservation, InvalidObservation, Verdict, VersionCounts

PASS, HIGH, LOW, NODATA = 0, 1, 2, 3
LABELS = ("Pass", "High", "Low", "NoData")
METRIC_GROUPS: Mapping[str, str] = {"errorRate": "errors", "latencyP50": "latency", "latencyP99": "latency"}


def metric_values(
    metric: str,
    requests: npt.ArrayLike,
    errors: npt.ArrayLike,
    buckets: npt.ArrayLike,
    bounds_ms: Sequence[float],
) -> FloatArray:
    """One interval's value of a metric (NaN when the version had no requests)."""
    n = np.asarray(requests, dtype=np.float64)
    if metric == "errorRate":
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, np.asarray(errors, dtype=np.float64) / np.where(n > 0, n, 1.0), np.nan)
    q = 0.5 if metric == "latencyP50" else 0.99
    return quantiles(buckets, bounds_ms, q)


def _nan_percentile(values: FloatArray, pct: float) -> FloatArray:
    """Linear-interpolated percentile along the last axis ignoring NaN (numpy's nanpercentile loops in
    Python over the leading axes; this does not). NaN where a row has no values."""
    ordered = np.sort(values, axis=-1)  # NaN last
    count = (~np.isnan(values)).sum(-1)
    pos = pct / 100.0 * np.maximum(count - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
    v_lo = np.take_along_axis(ordered, lo[..., None], -1)[..., 0]
    v_hi = np.take_along_axis(ordered, hi[..., None], -1)[..., 0]
    return np.where(count > 0, v_lo + (pos - lo) * (v_hi - v_lo), np.nan)


def _drop_outliers(values: FloatArray, factor: float) -> FloatArray:
    q1 = _nan_percentile(values, 25.0)[..., None]
    q3 = _nan_percentile(values, 75.0)[..., None]
    iqr = q3 - q1
    with np.errstate(invalid="ignore"):
        outside = (values < q1 - factor * iqr) | (values > q3 + factor * iqr)
    return np.where(outside, np.nan, values)


def prepare(values: npt.ArrayLike, cfg: KayentaConfig) -> FloatArray:
    """NaN strategy then IQR outlier removal; dropped values become NaN."""
    v = np.asarray(values, dtype=np.float64)
    if cfg.nan_strategy == "replace":
        v = np.where(np.isnan(v), 0.0, v)
    return _drop_outliers(v, cfg.outlier_iqr_factor)


def _kth_valid(sorted_diffs: FloatArray, k: IntArray) -> FloatArray:
    return np.take_along_axis(sorted_diffs, np.clip(k, 0, sorted_diffs.shape[-1] - 1)[..., None], -1)[..., 0]


def mann_whitney_hl(
    control: FloatArray, experiment: FloatArray, confidence: float
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """(p-value two-sided, CI lower, CI upper, HL estimate) of experiment - control; NaN entries are
    missing values. Vectorised over leading axes (series on the last axis)."""
    x, y = experiment, control
    vx, vy = ~np.isnan(x), ~np.isnan(y)
    m, n = vx.sum(-1).astype(np.float64), vy.sum(-1).astype(np.float64)
    pair_ok = vx[..., :, None] & vy[..., None, :]
    diff = x[..., :, None] - y[..., None, :]
    u = np.sum(np.where(pair_ok, (diff > 0) + 0.5 * (diff == 0), 0.0), axis=(-2, -1))
    both = np.concatenate((x, y), axis=-1)
    vb = ~np.isnan(both)
    same = (both[..., :, None] == both[..., None, :]) & vb[..., None, :]
    tie_counts = same.sum(-1)
    tie_term = np.sum(np.where(vb, tie_counts.astype(np.float64) ** 2 - 1.0, 0.0), axis=-1)
    big_n = m + n
    with np.errstate(invalid="ignore", divide="ignore"):
        var = m * n / 12.0 * ((big_n + 1) - tie_term / (big_n * (big_n - 1)))
        z = (np.abs(u - m * n / 2.0) - 0.5) / np.sqrt(var)
    p = np.where(var > 0, np.clip(2.0 * special.ndtr(-np.maximum(z, 0.0)), 0, 1), 1.0)
    flat = np.where(pair_ok, diff, np.nan).reshape(*diff.shape[:-2], -1)
    flat = np.sort(flat, axis=-1)  # NaN last
    mn = (m * n).astype(np.int64)
    zq = special.ndtri(0.5 + confidence / 2.0)
    # Lehmann's interval [D_(C), D_(mn+1-C)] (1-based) with C from the normal approximation; C < 1 means
    # the level is out of reach with so few values: the interval is the whole line.
    c = np.floor(m * n / 2.0 - zq * np.sqrt(m * n * (big_n + 1) / 12.0)).astype(np.int64)
    reachable = c >= 1
    lower = np.where(reachable, _kth_valid(flat, c - 1), -np.inf)
    upper = np.where(reachable, _kth_valid(flat, mn - c), np.inf)
    estimate = 0.5 * (_kth_valid(flat, (mn - 1) // 2) + _kth_valid(flat, mn // 2))
    return p, lower, upper, estimate


def classify(
    control: npt.ArrayLike, experiment: npt.ArrayLike, cfg: KayentaConfig
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Kayenta's per-metric classification of raw series (NaN = missing), direction "increase" or
    "either" as the metric dictates: (label, mean ratio experiment/control, p-value)."""
    c, e = prepare(control, cfg), prepare(experiment, cfg)
    p, lower, upper, estimate = mann_whitney_hl(c, e, cfg.confidence_level)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = _nanmean(e) / _nanmean(c)
    bound = cfg.tolerance * np.abs(estimate)
    high = (lower > bound) & ~(ratio < cfg.allowed_increase)
    low = (upper < -bound) & ~(ratio > cfg.allowed_decrease)
    label = np.where(high, HIGH, np.where(low, LOW, PASS))
    identical = np.all(np.sort(c, -1) == np.sort(e, -1), axis=-1) | _single_value(c, e)
    label = np.where(identical, PASS, label)
    empty = (~np.isnan(c)).sum(-1) == 0
    empty |= (~np.isnan(e)).sum(-1) == 0
    return np.where(empty, NODATA, label).astype(np.int64), ratio, p


def _nanmean(v: FloatArray) -> FloatArray:
    valid = ~np.isnan(v)
    cnt = valid.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, np.where(valid, v, 0.0).sum(-1) / np.maximum(cnt, 1), np.nan)


def _single_value(c: FloatArray, e: FloatArray) -> npt.NDArray[np.bool_]:
    both = np.concatenate((c, e), axis=-1)
    lo = np.min(np.where(np.isnan(both), np.inf, both), -1)
    hi = np.max(np.where(np.isnan(both), -np.inf, both), -1)
    same: npt.NDArray[np.bool_] = lo == hi
    return same


def direction_labels(label: IntArray, metric: str) -> IntArray:
    """Latency and errors only matter when they increase: a Low on them counts as a Pass."""
    return np.where(label == LOW, PASS, label) if metric in METRIC_GROUPS else label


def summary_score(labels: Mapping[str, IntArray], cfg: KayentaConfig) -> FloatArray:
    """Weighted group score (0-100) of per-metric labels keyed "service/metric" (vectorised)."""
    groups: dict[str, list[IntArray]] = {}
    critical_fail: Any = False
    for key, lab in labels.items():
        metric = key.rsplit("/", 1)[-1]
        groups.setdefault(METRIC_GROUPS[metric], []).append(lab)
        if metric in cfg.critical_metrics:
            critical_fail = critical_fail | (lab != PASS)
    weights = dict(cfg.group_weights)
    unweighted = [g for g in groups if g not in weights]
    spare = (100.0 - sum(weights.values())) / len(unweighted) if unweighted else 0.0
    total: Any = 0.0
    for g, labs in groups.items():
        stacked = np.stack(labs, axis=-1)
        classified = (stacked != NODATA).sum(-1)
        passed = (stacked == PASS).sum(-1)
        score = np.where(classified > 0, 100.0 * passed / np.maximum(classified, 1), 0.0)
        total = total + score * weights.get(g, spare) / 100.0
    return np.where(critical_fail, 0.0, total).astype(np.float64)


class KayentaJudge:
    """Kayenta's fixed-horizon judgment, re-run every `judgeEveryIntervals` intervals."""

    name = "kayenta"

    def __init__(self, config: AnalysisConfig) -> None:
        self.config = config
        self.cfg = config.kayenta

    def initial_state(
        self,
        reference: Mapping[str, VersionCounts] | VersionCounts | None = None,
        services: Sequence[str] | None = None,
        bounds_ms: Sequence[float] = ISTIO_BUCKETS_MS,
    ) -> dict[str, Any]:
        return {"judge": self.name, "version": 1, "ticks": 0, "t": None, "series": {}}

    def prime(self, state: Mapping[str, Any], history: Sequence[Mapping[str, IntervalObservation]]
              ) -> dict[str, Any]:
        """Nothing is learnt from the stable version's history: a copy of `state`."""
        return copy.deepcopy(dict(state))

    def update(
        self, state: Mapping[str, Any], observations: Mapping[str, IntervalObservation]
    ) -> tuple[dict[str, Any], Decision]:
        try:
            for name, obs in observations.items():
                obs.validate(f"observations[{name}]")
        except InvalidObservation as exc:
            return copy.deepcopy(dict(state)), Decision(Verdict.ERROR, f"unusable data: {exc}", judge=self.name)
        new = copy.deepcopy(dict(state))
        new["ticks"] += 1
        new["t"] = max((o.t for o in observations.values()), default=new["t"])
        for name, obs in observations.items():
            series = new["series"].setdefault(name, {m: {"canary": [], "baseline": []} for m in self.cfg.metrics})
            for metric in self.cfg.metrics:
                for version, counts in (("canary", obs.canary), ("baseline", obs.baseline)):
                    v = float(metric_values(metric, counts.requests, counts.errors, counts.buckets, obs.bounds_ms))
                    series[metric][version].append(v if math.isfinite(v) else None)
        every = self.cfg.judge_every_intervals
        if new["ticks"] % every:
            due = new["ticks"] + every - new["ticks"] % every
            return new, Decision(
                Verdict.INCONCLUSIVE,
                f"next Kayenta judgment after interval {due}",
                judge=self.name,
                t=new["t"],
            )
        return new, self._judge(new)

    def _judge(self, state: Mapping[str, Any]) -> Decision:
        labels: dict[str, IntArray] = {}
        checks: list[CheckResult] = []
        for name, series in state["series"].items():
            for metric, s in series.items():
                canary = np.array([np.nan if v is None else v for v in s["canary"]], dtype=np.float64)
                base = np.array([np.nan if v is None else v for v in s["baseline"]], dtype=np.float64)
                label, ratio, p = classify(base, canary, self.cfg)
                label = direction_labels(label, metric)
                labels[f"{name}/{metric}"] = label
                verdict = {PASS: Verdict.PASS, NODATA: Verdict.INCONCLUSIVE}.get(int(label), Verdict.FAIL)
                checks.append(
                    CheckResult(
                        service=name,
                        check=metric,
                        verdict=verdict,
                        p_value=float(p),
                        samples={
                            "canary": int((~np.isnan(canary)).sum()),
                            "baseline": int((~np.isnan(base)).sum()),
                        },
                        estimates={
                            "classification": LABELS[int(label)],
                            "meanRatio": float(ratio),
                            "meanCanary": float(_nanmean(canary)),
                            "meanBaseline": float(_nanmean(base)),
                        },
                    )
                )
        score = float(summary_score(labels, self.cfg)) if labels else 0.0
        details = {"score": score, "passScore": self.cfg.pass_score, "marginalScore": self.cfg.marginal_score}
        if score >= self.cfg.pass_score:
            verdict, reason = Verdict.PASS, f"score {score:.0f} >= pass {self.cfg.pass_score:.0f}"
        elif score >= self.cfg.marginal_score:
            verdict, reason = Verdict.INCONCLUSIVE, f"marginal score {score:.0f}"
        else:
            verdict, reason = Verdict.FAIL, f"score {score:.0f} < marginal {self.cfg.marginal_score:.0f}"
        return Decision(verdict, reason, checks, judge=self.name, t=state["t"], details=details)
