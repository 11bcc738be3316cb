"""A release run tick by tick through the real reconciler against fakes (the scenario tier's world)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from controller.core.status import ReleaseStatus
from controller.reconciler import Ports, Reconciler, TickResult
from tests.support.fakes import FakeClock, FakeMetrics, FakeRouter, FakeWorkloads, ListNotifier, VersionModel

SERVICES = ("master-search", "ml-infer", "ml-search", "keyword", "text-search")


def release(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "stack": {"entry": "master-search", "services": list(SERVICES)},
        "stable": {"version": "v1"},
        "canary": {"version": "v2"},
        "strategy": {"canary": {"steps": [{"weight": 10}, {"weight": 25}, {"weight": 50}],
                                "interval": "60s", "minCanaryRequests": 100}},
        "analysis": {"alpha": 0.05},
    }
    spec.update(spec_overrides)
    return {"metadata": {"name": "search-v2", "namespace": "search", "generation": 1}, "spec": spec}


class World:
    """The fake cluster plus a persisted status that survives a controller restart."""

    def __init__(self, models: dict[str, VersionModel] | None = None, rps: float = 50.0) -> None:
        self.clock = FakeClock()
        self.workloads = FakeWorkloads(running={(s, "v1") for s in SERVICES})
        self.router = FakeRouter()
        self.metrics = FakeMetrics(self.router, rps=rps, models=models or {})
        self.notifier = ListNotifier()
        self.stored: str = json.dumps(ReleaseStatus().for_storage())
        self.writes = 0
        self.ticks: list[TickResult] = []

    def controller(self) -> Reconciler:
        return Reconciler(Ports(self.workloads, self.router, self.metrics, self.clock, self.notifier))

    def status(self) -> ReleaseStatus:
        return ReleaseStatus.from_storage(json.loads(self.stored))

    def persist(self, status: ReleaseStatus) -> None:
        self.stored = json.dumps(status.for_storage())
        self.writes += 1

    def run(self, obj: dict[str, Any], max_ticks: int = 500, controller: Reconciler | None = None,
            until: Callable[[ReleaseStatus], bool] | None = None) -> ReleaseStatus:
        controller = controller or self.controller()
        for _ in range(max_ticks):
            result = controller.tick(obj, self.status(), self.persist)
            self.ticks.append(result)
            if result.requeue_after is None or (until is not None and until(result.status)):
                break
            self.clock.sleep(result.requeue_after)
        return self.status()
