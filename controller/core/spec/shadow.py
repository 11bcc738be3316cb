"""A release's shadow phase as the spec declares it (`spec.strategy.shadow`, docs/shadow.md).

Before the first canary step, a share of the live searches is mirrored to a comparator, which asks the stable
version twice and the new version once and pairs their rankings; the judge (`analysis.shadow`) decides on the
pairs. Pure: parsing only, through the release's one reader, which collects every problem by its path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from analysis.reader import Reader
from analysis.shadow import ShadowConfig
from controller.core.plan import DEFAULT_SHADOW_HEADER, HEADER_NAME, ShadowRoutes

SHADOW_FIELDS = ("mirrorPercent", "minOverlap", "alpha", "minPairs", "enforce", "maxDuration", "comparator",
                 "comparatorPort", "header")
# The comparator's Service in the release's namespace (manifests/shadow), as `canary stack up` names it locally.
DEFAULT_COMPARATOR = "canary-shadow"
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class ShadowSpec:
    """The mirroring routes, the judge's settings, and how long the phase may take without a decision (then
    `policies.onInconclusive` applies: roll back, continue to the first step, or hold and keep comparing)."""

    routes: ShadowRoutes
    judge: ShadowConfig
    max_duration: float = 600.0


def parse_shadow(r: Reader, value: Any, lane_header: str) -> ShadowSpec | None:
    """`spec.strategy.shadow`, or None when absent or unusable (its problems are on `r`)."""
    if value is None:
        return None
    path = "spec.strategy.shadow"
    m: Mapping[str, Any] = r.fields(value, path, SHADOW_FIELDS)
    header = r.string(m.get("header"), f"{path}.header", HEADER_NAME, default=DEFAULT_SHADOW_HEADER,
                      what="a lower-case header name")
    if header == lane_header:
        r.problem(f"{path}.header", f"{header!r} is the lane header; the comparator's header must be another")
    percent = r.number(m.get("mirrorPercent", 100.0), f"{path}.mirrorPercent", 0.0, 100.0, open_high=False)
    min_overlap = r.number(m.get("minOverlap", 0.8), f"{path}.minOverlap", 0.0, 1.0, open_high=False)
    alpha = r.number(m.get("alpha", 0.05), f"{path}.alpha", 0.0, 1.0)
    min_pairs = r.integer(m.get("minPairs"), f"{path}.minPairs", 1, default=20)
    enforce = r.boolean(m.get("enforce"), f"{path}.enforce", default=True)
    max_duration = r.duration(m.get("maxDuration"), f"{path}.maxDuration", 600.0, 1.0)
    comparator = r.string(m.get("comparator"), f"{path}.comparator", _DNS_LABEL, default=DEFAULT_COMPARATOR,
                          what="a Service name")
    port = r.integer(m.get("comparatorPort"), f"{path}.comparatorPort", 1, 65535, default=8000)
    try:
        routes = ShadowRoutes(comparator=comparator, port=port, percent=percent, header=header)
        judge = ShadowConfig(min_overlap=min_overlap, alpha=alpha, min_pairs=min_pairs, enforce=enforce)
    except ValueError:
        return None  # a bound the reader has already named
    return ShadowSpec(routes=routes, judge=judge, max_duration=max_duration)
