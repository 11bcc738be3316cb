"""The judges' common interface and the factory that builds one from a release's analysis config.

A judge is pure and incremental: its whole memory is a small JSON-serialisable dict that the controller
keeps in the release status, so a restarted controller resumes exactly where it was:

    judge = make_judge(config)
    state = judge.initial_state()
    state, decision = judge.update(state, observations)   # once per interval

Replaying the same observations from a restored state gives the same decisions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from analysis.config import JUDGES, AnalysisConfig, InvalidAnalysisConfig
from analysis.decisions import CheckResult, Decision
from analysis.kayenta import KayentaJudge
from analysis.observations import ISTIO_BUCKETS_MS, IntervalObservation, VersionCounts
from analysis.sequential import SequentialJudge
from analysis.threshold import ThresholdJudge

__all__ = [
    "AnalysisConfig",
    "CheckResult",
    "Decision",
    "InvalidAnalysisConfig",
    "Judge",
    "UnknownJudge",
    "make_judge",
]


class Judge(Protocol):
    name: str

    def initial_state(
        self,
        reference: Mapping[str, VersionCounts] | VersionCounts | None = None,
        services: Sequence[str] | None = None,
        bounds_ms: Sequence[float] = ISTIO_BUCKETS_MS,
    ) -> dict[str, Any]:
        """A fresh state. Optional: `reference`, stable-only counts (per service, or one for all) that
        fix the slow-tail threshold; `services`, the services whose checks share alpha; `bounds_ms`,
        the bucket bounds every later observation must use."""

    def update(
        self, state: Mapping[str, Any], observations: Mapping[str, IntervalObservation]
    ) -> tuple[dict[str, Any], Decision]:
        """Fold one interval of every service in and decide; never modifies `state`."""

    def prime(self, state: Mapping[str, Any], history: Sequence[Mapping[str, IntervalObservation]]
              ) -> dict[str, Any]:
        """A fresh state given the stable version's own intervals from before the release (oldest first, per
        service), for what the judge learns from them (a judge that learns nothing returns a copy)."""


class UnknownJudge(InvalidAnalysisConfig):
    """A judge name the factory does not know."""


def make_judge(config: AnalysisConfig) -> Judge:
    """The judge `config.judge` names; refuses unknown names."""
    if config.judge == "sequential":
        return SequentialJudge(config)
    if config.judge == "kayenta":
        return KayentaJudge(config)
    if config.judge == "threshold":
        return ThresholdJudge(config)
    raise UnknownJudge("spec.analysis.judge", f"{config.judge!r} is not one of {', '.join(JUDGES)}")
