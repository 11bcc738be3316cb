"""Fake metrics of an A/B/n experiment: per-variant request counts and click-through.

Used by the scenario tests and the emulator tests of A/B/n experiments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.abtest import PerUser, PrimaryCounts
from analysis.observations import WindowCounts
from tests.support.fakes import FakeMetrics, VersionModel


def split_by_plan(rng: np.random.Generator, plan: Any, total: int) -> dict[str, int]:
    """Entry requests per variant's version behind the routes in effect (an experiment's weights, or stable)."""
    if plan is None or plan.experiment is None:
        return {} if plan is None else {plan.service(plan.entry).stable: total}
    arms = plan.experiment.arms
    drawn = rng.multinomial(total, [a.weight / 100 for a in arms])
    return {a.version: int(n) for a, n in zip(arms, drawn, strict=True)}


@dataclass
class AbnMetrics(FakeMetrics):
    """Each variant's share of the traffic by the experiment's weights; only the versions asked for."""

    def window(self, query: Any, start: float, end: float) -> Any:
        self.queries.append((start, end))
        per_version = split_by_plan(self.rng, self.router.in_effect(), int(self.rng.poisson(self.rps * (end - start))))
        counts = {(s, v): self._draw(n, self.models.get(v, VersionModel()))
                  for s in query.services for v, n in per_version.items() if v in query.versions}
        return WindowCounts(start, end, counts)


def users_counts(rng: np.random.Generator, impressions: int, click_probability: float, per_user: int = 5,
                 units: int | None = None) -> PrimaryCounts:
    """One window's impressions of new users (`per_user` each, the last one the rest) with their clicks, and
    the per-user sums that the search stack exports for them (`unit: user`)."""
    sizes = np.array([per_user] * (impressions // per_user) + ([impressions % per_user] if impressions % per_user
                                                                else []), dtype=np.int64)
    clicks = rng.binomial(sizes, click_probability) if sizes.size else sizes
    sums = PerUser(int(sizes.size), float((clicks * clicks).sum()), float((sizes * sizes).sum()),
                   float((clicks * sizes).sum()))
    return PrimaryCounts.proportion(int(clicks.sum()), impressions,
                                    units=int(sizes.size) if units is None else units, per_user=sums)
