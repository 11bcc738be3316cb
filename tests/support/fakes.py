"""Fakes of the controller's own ports, for scenario tests that tick the reconciler without sleeping.

The fake router keeps the rendered Istio objects and reads the plan back from them (so the renderer's
round trip is exercised), and the fake metrics draw each version's traffic from a simple model of the
stack behind the routes that are in effect, so a rollback really does stop the canary's traffic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.observations import ISTIO_BUCKETS_MS, MetricsQuery, VersionCounts, WindowCounts
from controller.adapters.istio.render import read_plan, render
from controller.core.plan import RoutingPlan
from controller.ports import MetricsUnavailable, Notice, Readiness, TemporaryError


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class FakeWorkloads:
    running: set[tuple[str, str]] = field(default_factory=set)
    # (service, version) -> ticks left before ready; missing means ready at once.
    startup_ticks: dict[tuple[str, str], int] = field(default_factory=dict)
    broken: set[tuple[str, str]] = field(default_factory=set)
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    def ensure_version(self, service: str, version: str, image: str | None) -> None:
        if (service, version) not in self.running:
            self.calls.append(("start", service, version))
        self.running.add((service, version))

    def readiness(self, service: str, version: str) -> Readiness:
        key = (service, version)
        if key in self.broken:
            return Readiness(False, "CrashLoopBackOff", failed=True)
        if key not in self.running:
            return Readiness(False, "not deployed", exists=False)
        left = self.startup_ticks.get(key, 0)
        if left > 0:
            self.startup_ticks[key] = left - 1
            return Readiness(False, "starting")
        return Readiness(True)

    def retire(self, service: str, version: str) -> None:
        if (service, version) in self.running:
            self.calls.append(("stop", service, version))
        self.running.discard((service, version))


@dataclass
class FakeRouter:
    objects: list[dict[str, Any]] = field(default_factory=list)
    writes: int = 0
    fail_next: int = 0
    history: list[RoutingPlan] = field(default_factory=list)

    def apply(self, plan: RoutingPlan) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise TemporaryError("router unreachable")
        self.objects = render(plan)
        self.writes += 1
        self.history.append(plan)

    def in_effect(self) -> RoutingPlan | None:
        return read_plan(self.objects)


@dataclass
class VersionModel:
    error_rate: float = 0.005
    median_ms: float = 40.0
    sigma: float = 0.5
    slow_share: float = 0.03


@dataclass
class FakeMetrics:
    """Traffic of the stack behind the routes in effect: `rps` entry requests per second."""

    router: FakeRouter
    rps: float = 50.0
    models: dict[str, VersionModel] = field(default_factory=dict)
    down: bool = False
    seed: int = 7
    queries: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def _draw(self, n: int, model: VersionModel) -> VersionCounts:
        if n == 0:
            return VersionCounts.empty(len(ISTIO_BUCKETS_MS))
        slow = self.rng.random(n) < model.slow_share
        lat = np.where(slow, self.rng.lognormal(math.log(300), 0.6, n),
                       self.rng.lognormal(math.log(model.median_ms), model.sigma, n))
        idx = np.searchsorted(np.array(ISTIO_BUCKETS_MS[:-1]), lat, side="left")
        buckets = np.bincount(idx, minlength=len(ISTIO_BUCKETS_MS))
        errors = int(self.rng.binomial(n, model.error_rate))
        return VersionCounts(n, errors, tuple(int(b) for b in buckets))

    def windows(self, query: MetricsQuery, edges: Sequence[tuple[float, float]]) -> tuple[WindowCounts, ...]:
        """Past windows (the stable version's history), each drawn and recorded as `window` draws one."""
        return tuple(self.window(query, start, end) for start, end in edges)

    def window(self, query: MetricsQuery, start: float, end: float) -> WindowCounts:
        self.queries.append((start, end))
        if self.down:
            raise MetricsUnavailable("connection refused")
        plan = self.router.in_effect()
        counts: dict[tuple[str, str], VersionCounts] = {}
        if plan is not None:
            total = int(self.rng.poisson(self.rps * (end - start)))
            canary_n = int(self.rng.binomial(total, plan.canary_weight / 100))
            for service in query.services:
                sv = plan.service(service)
                lanes = [(sv.stable, total - canary_n), (sv.canary or sv.stable, canary_n)]
                per_version: dict[str, int] = {}
                for version, n in lanes:
                    per_version[version] = per_version.get(version, 0) + n
                for version, n in per_version.items():
                    counts[(service, version)] = self._draw(n, self.models.get(version, VersionModel()))
        return WindowCounts(start, end, counts)


@dataclass
class ListNotifier:
    notices: list[Notice] = field(default_factory=list)

    def notify(self, notice: Notice) -> None:
        self.notices.append(notice)

    def reasons(self) -> list[str]:
        return [n.reason for n in self.notices]
