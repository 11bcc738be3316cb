"""Decision records: what a judge concluded at one tick, per check, with the numbers behind it.

`to_dict()` gives plain JSON for the release status, events and the replay output: every float is finite
or null, never NaN or infinity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from analysis.observations import Verdict

JsonValue = Any


def finite(value: float | None) -> float | None:
    """A float fit for JSON: NaN and infinities become None."""
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def json_clean(value: JsonValue) -> JsonValue:
    """Recursively replace non-finite floats by None and tuples by lists."""
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, Mapping):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [json_clean(v) for v in value]
    return value


@dataclass(frozen=True)
class CheckResult:
    """One check of one service: its verdict, evidence and estimates.

    `e_value`/`threshold` are set for the sequential judge (crossing means `e_value >= threshold`);
    `p_value` is the anytime-valid p-value min(1, 1/max e) there, the fixed-horizon one for the others.
    `samples` holds request (or event) counts per version; `estimates` holds error rates per version,
    the ratio and its confidence sequence, p50/p95/p99 per version, Delta, and so on.
    """

    service: str
    check: str
    verdict: Verdict
    e_value: float | None = None
    threshold: float | None = None
    p_value: float | None = None
    samples: Mapping[str, float] = field(default_factory=dict)
    estimates: Mapping[str, JsonValue] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {
            "service": self.service,
            "check": self.check,
            "verdict": self.verdict.value,
            "eValue": finite(self.e_value),
            "threshold": finite(self.threshold),
            "pValue": finite(self.p_value),
            "samples": json_clean(dict(self.samples)),
            "estimates": json_clean(dict(self.estimates)),
        }
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class Decision:
    """A judge's verdict at one tick, with a one-line reason and every check's record."""

    verdict: Verdict
    reason: str
    checks: list[CheckResult] = field(default_factory=list)
    judge: str = ""
    t: float | None = None
    details: Mapping[str, JsonValue] = field(default_factory=dict)

    def to_dict(self) -> dict[str, JsonValue]:
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "judge": self.judge,
            "t": finite(self.t),
            "checks": [c.to_dict() for c in self.checks],
            **({"details": json_clean(dict(self.details))} if self.details else {}),
        }
