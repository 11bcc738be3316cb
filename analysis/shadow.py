"""The shadow judge: does the new stack rank the same queries as the stable one, beyond the stable one's own noise?

A shadow phase mirrors live searches to the new stack; no user sees its answers. Each mirrored search yields
a `ShadowPair`: the stable stack's top-k document ids, a second answer of the stable stack to the same request
(how much two answers of the *same* version differ: ties broken at random, approximate nearest neighbours),
and the new stack's top-k. Per pair:

- `overlap` = RBO(stable, new): rank-biased overlap (Webber, Moffat and Zobel 2010), extrapolated, persistence
  `RBO_P` (0.9: the first ten ranks carry 86% of the weight, the first alone 26%), 1 for the same list;
- `noise` = RBO(stable, stable again);
- x = noise - overlap, in [-1, 1]: how much less the new stack agrees with stable than stable with itself.

The question is about D = E[x], over the queries users send. With `min_overlap` (default 0.8) the margin is
m = 1 - min_overlap: the new stack is within the configured difference when D <= m ("mean RBO >= 0.8 beyond
noise"; for a deterministic stable stack, noise = 1 and this is mean RBO >= 0.8). Two questions, each
anytime-valid at `alpha`, as the canary judge asks them:

- harm, H0: D <= m. Rejected (the shadow fails) when the e-process reaches 1/alpha;
- safety, H0: D >= m. Rejected (the shadow passes) when its e-process reaches 1/alpha.

Both e-processes bet on a bounded mean. For y >= -1 and 0 <= lambda < 1, ln(1 + lambda y) >= lambda y +
psi(lambda) y^2 with psi(lambda) = ln(1 - lambda) + lambda (Fan, Grama and Liu 2015), so under H0 (E[y] <= 0
given the past) exp(lambda sum y + psi(lambda) sum y^2) is a nonnegative supermartingale: its mean over a fixed
grid of lambda (`LAMBDAS`) is an e-process (Ville: it exceeds 1/alpha with probability <= alpha, ever). For harm
y = (x - m) / 2, for safety y = (m - x) / 2: both are in [-1, 1] because x and m are (a scale that depends on m
would bet more at some margins, but makes the e-value non-monotone in m and the set of margins not rejected
more than one interval). The sums of y and y^2 follow from n, sum x and sum x^2, so the state is three numbers
whatever the number of pairs. The
bounds shown are the ones the rule compares: the smallest m harm cannot reject (lower) and the largest m safety
cannot reject (upper), each at alpha.

The pairs are assumed to be drawn from live traffic, each given the past with the same D (a query repeated by
many users is many draws). A version whose overlap changes over the phase is judged on its average.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.safety import requests_needed

Margins = float | Sequence[float] | np.ndarray

RBO_P = 0.9
# Bets of the mixture: small ones win on small, noisy differences; large ones on large, clean ones.
LAMBDAS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9)
# The overlap histogram's bins (the report's distribution): [0, 0.1), ..., [0.9, 1.0), [1.0] exactly.
OVERLAP_BINS = 11
# The most different queries kept for the report.
WORST_KEPT = 5


def rbo(a: Sequence[str], b: Sequence[str], p: float = RBO_P) -> float:
    """Extrapolated rank-biased overlap of two top-k lists, compared to the depth of the shorter one (1 for
    the same list, 0 for disjoint ones; two empty answers agree, an empty and a non-empty one do not)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"RBO persistence {p!r} is not in (0, 1)")
    k = min(len(a), len(b))
    if k == 0:
        return 1.0 if len(a) == len(b) else 0.0
    seen_a: set[str] = set()
    seen_b: set[str] = set()
    overlap, total = 0, 0.0
    for d in range(1, k + 1):
        x, y = a[d - 1], b[d - 1]
        overlap += (x == y) + (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        total += overlap / d * p**d
    return float(min(1.0, overlap / k * p**k + (1.0 - p) / p * total))


@dataclass(frozen=True)
class ShadowPair:
    """The answers to one mirrored search: stable's top-k ids, stable's second answer, the new stack's."""

    query: str
    stable: tuple[str, ...]
    stable_again: tuple[str, ...]
    new: tuple[str, ...]

    def overlap(self) -> float:
        return rbo(self.stable, self.new)

    def noise(self) -> float:
        return rbo(self.stable, self.stable_again)


@dataclass(frozen=True)
class ShadowConfig:
    min_overlap: float = 0.8
    alpha: float = 0.05
    # Fewer pairs than this never decide (a handful of queries is not the traffic).
    min_pairs: int = 20
    # False: a deliberate change of rankings (a new model): the comparison is recorded, never decides.
    enforce: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.min_overlap <= 1.0:
            raise ValueError(f"shadow minOverlap {self.min_overlap!r} is not in (0, 1]")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"shadow alpha {self.alpha!r} is not in (0, 1)")
        if self.min_pairs < 1:
            raise ValueError(f"shadow minPairs {self.min_pairs!r} is below 1")

    @property
    def margin(self) -> float:
        return 1.0 - self.min_overlap


def new_state() -> dict[str, Any]:
    """The judge's state: JSON, kept in the release's status between looks."""
    return {"n": 0, "sx": 0.0, "sxx": 0.0, "overlap": 0.0, "overlapSq": 0.0, "noise": 0.0, "top1Changed": 0,
            "top1Noise": 0, "histogram": [0] * OVERLAP_BINS, "worst": []}


def fold(state: Mapping[str, Any], pairs: Iterable[ShadowPair]) -> dict[str, Any]:
    """The state after `pairs` (a new dict; `state` is not changed)."""
    out = {**state, "histogram": list(state["histogram"]), "worst": list(state["worst"])}
    for pair in pairs:
        overlap, noise = pair.overlap(), pair.noise()
        x = noise - overlap
        out["n"] += 1
        out["sx"] += x
        out["sxx"] += x * x
        out["overlap"] += overlap
        if "overlapSq" in out:  # a state from before it keeps none rather than a partial sum
            out["overlapSq"] += overlap * overlap
        out["noise"] += noise
        out["top1Changed"] += _top1(pair.stable) != _top1(pair.new)
        out["top1Noise"] += _top1(pair.stable) != _top1(pair.stable_again)
        out["histogram"][min(OVERLAP_BINS - 1, int(overlap * (OVERLAP_BINS - 1)))] += 1
        out["worst"] = _keep_worst(out["worst"], pair, overlap, noise)
    return out


def _top1(ids: Sequence[str]) -> str | None:
    return ids[0] if ids else None


def _keep_worst(worst: list[dict[str, Any]], pair: ShadowPair, overlap: float, noise: float) -> list[dict[str, Any]]:
    """The WORST_KEPT pairs whose new answer differs most beyond noise, one per query (its latest answer)."""
    entry = {"query": pair.query, "overlap": overlap, "noise": noise, "stable": list(pair.stable),
             "new": list(pair.new)}
    kept = [w for w in worst if w["query"] != pair.query] + [entry]
    kept.sort(key=lambda w: (w["overlap"] - w["noise"], w["query"]))
    return kept[:WORST_KEPT]


def log_evalues(n: float, sx: float, sxx: float, margin: Margins) -> tuple[np.ndarray, np.ndarray]:
    """(ln harm e-value, ln safety e-value) at each margin m of `margin`, from n, sum x and sum x^2."""
    m = np.asarray(margin, dtype=float)
    sum_d = sx - n * m                     # sum (x - m)
    sum_dd = sxx - 2.0 * m * sx + n * m * m  # sum (x - m)^2
    lam = np.asarray(LAMBDAS).reshape((-1,) + (1,) * np.ndim(sum_d))  # bets on the first axis
    psi = np.log1p(-lam) + lam
    harm = lam * sum_d / 2.0 + psi * sum_dd / 4.0
    safe = -lam * sum_d / 2.0 + psi * sum_dd / 4.0
    mean = -math.log(len(LAMBDAS))
    return np.logaddexp.reduce(harm, axis=0) + mean, np.logaddexp.reduce(safe, axis=0) + mean

# The margins the bounds are read on: D in [-1, 1], 0.0025 apart.
_GRID = np.round(np.linspace(-1.0, 1.0, 801), 4)


def bounds(n: float, sx: float, sxx: float, alpha: float) -> tuple[float, float]:
    """(lower, upper) of D at every look: the smallest margin harm does not reject at alpha and the largest
    safety does not (on a grid 0.0025 apart). (-1, 1) before any pair."""
    if n <= 0:
        return -1.0, 1.0
    harm, safe = log_evalues(n, sx, sxx, _GRID)
    threshold = math.log(1.0 / alpha)
    kept_low = np.nonzero(harm < threshold)[0]
    kept_high = np.nonzero(safe < threshold)[0]
    lower = float(_GRID[max(kept_low[0] - 1, 0)]) if kept_low.size else 1.0  # rounded outwards
    upper = float(_GRID[min(kept_high[-1] + 1, _GRID.size - 1)]) if kept_high.size else -1.0
    return lower, upper


@dataclass(frozen=True)
class ShadowVerdict:
    decision: str  # "pass", "fail" or "inconclusive"
    reason: str
    pairs: int
    mean_overlap: float | None
    # The mean overlap's confidence sequence at alpha (the same bound, on 1 - overlap), shown beside the estimate;
    # the decision is on the difference beyond noise (`difference_bounds`). None for a state older than it.
    mean_overlap_bounds: tuple[float, float] | None
    mean_noise: float | None
    difference: float | None  # the estimate of D = E[noise - overlap]
    difference_bounds: tuple[float, float]
    margin: float
    harm_evalue: float
    safety_evalue: float
    threshold: float  # 1 / alpha, what each e-value is compared with
    top1_changed: float | None
    top1_noise: float | None
    pairs_needed: int | None  # pairs in all for safety to be shown, if the estimate stays (None: not expected)
    histogram: list[int] = field(default_factory=list)
    worst: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "reason": self.reason, "pairs": self.pairs,
                "meanOverlap": self.mean_overlap,
                "meanOverlapBounds": None if self.mean_overlap_bounds is None else list(self.mean_overlap_bounds),
                "meanNoiseOverlap": self.mean_noise,
                "difference": self.difference, "differenceBounds": list(self.difference_bounds),
                "margin": self.margin, "harmEValue": self.harm_evalue, "safetyEValue": self.safety_evalue,
                "threshold": self.threshold, "top1Changed": self.top1_changed, "top1ChangedNoise": self.top1_noise,
                "pairsNeeded": self.pairs_needed, "overlapHistogram": self.histogram, "mostDifferent": self.worst}


def judge(state: Mapping[str, Any], config: ShadowConfig) -> ShadowVerdict:
    """The shadow's verdict from its state: fail once harm is shown, pass once safety is, else inconclusive."""
    n, sx, sxx = int(state["n"]), float(state["sx"]), float(state["sxx"])
    m = config.margin
    harm, safe = (float(v[0]) for v in log_evalues(n, sx, sxx, [m]))
    lower, upper = bounds(n, sx, sxx, config.alpha)
    threshold = 1.0 / config.alpha
    estimate = sx / n if n else None
    decision, reason = _decide(n, harm, safe, threshold, config)
    return ShadowVerdict(
        decision=decision, reason=reason, pairs=n,
        mean_overlap=state["overlap"] / n if n else None, mean_overlap_bounds=_overlap_bounds(state, config.alpha),
        mean_noise=state["noise"] / n if n else None,
        difference=estimate, difference_bounds=(lower, upper), margin=m,
        harm_evalue=_exp(harm), safety_evalue=_exp(safe), threshold=threshold,
        top1_changed=state["top1Changed"] / n if n else None, top1_noise=state["top1Noise"] / n if n else None,
        pairs_needed=None if estimate is None else requests_needed(n, estimate, upper, m),
        histogram=list(state["histogram"]), worst=list(state["worst"]),
    )


def _overlap_bounds(state: Mapping[str, Any], alpha: float) -> tuple[float, float] | None:
    """The mean overlap's bounds: `bounds` on z = 1 - overlap in [0, 1] (its sums from n, sum and sum of squares)."""
    if "overlapSq" not in state:
        return None
    n, so, soo = int(state["n"]), float(state["overlap"]), float(state["overlapSq"])
    lower, upper = bounds(n, n - so, n - 2.0 * so + soo, alpha)
    return max(0.0, round(1.0 - upper, 4)), min(1.0, round(1.0 - lower, 4))


def _decide(n: int, harm: float, safe: float, threshold: float, config: ShadowConfig) -> tuple[str, str]:
    shown = f"(mean RBO {config.min_overlap:g} beyond noise, alpha {config.alpha:g})"
    if n < config.min_pairs:
        return "inconclusive", f"{n} of at least {config.min_pairs} pairs compared"
    if not config.enforce:
        return "inconclusive", "recorded only: the shadow does not decide (enforce: false)"
    if harm >= math.log(threshold):
        return "fail", f"the new stack's rankings are shown to differ by more than the margin {shown}"
    if safe >= math.log(threshold):
        return "pass", f"the new stack's rankings are shown to stay within the margin {shown}"
    return "inconclusive", f"neither shown yet after {n} pairs {shown}"


def _exp(log_value: float) -> float:
    return math.exp(min(log_value, 700.0))
