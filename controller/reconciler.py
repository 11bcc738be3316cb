"""One reconcile tick of one release: observe -> step -> persist -> act.

The status is persisted (once, and only if it changed) *before* the actions are carried out: the
persisted status is the controller's intent. If the process dies between the two, the next tick derives
the same intent from the status and repeats the idempotent actions; the other order could forget a
decision that was already acted on (e.g. a rollback whose weight change reached the mesh).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from analysis.abtest import PrimaryCounts
from analysis.observations import MetricsQuery
from controller import machine
from controller.business import BusinessMetrics, BusinessQuery
from controller.machine import (
    Action,
    ApplyRouting,
    EnsureWorkloads,
    Notify,
    Observation,
    RetireWorkloads,
)
from controller.ports import Clock, Metrics, Notice, Notifier, PortError, Readiness, Router, Workloads
from controller.spec import InvalidSpec, ReleaseSpec, parse_release
from controller.status import Phase, ReleaseStatus

log = logging.getLogger(__name__)


@dataclass
class Ports:
    workloads: Workloads
    router: Router
    metrics: Metrics
    clock: Clock
    notifier: Notifier
    # A/B experiments only: the primary metric's counts per version (impressions and clicks, ...).
    business: BusinessMetrics | None = None


@dataclass(frozen=True)
class TickResult:
    status: ReleaseStatus
    persisted: bool
    actions: tuple[Action, ...]
    failed_actions: tuple[str, ...]
    # Seconds until this release wants its next tick; None when it is finished.
    requeue_after: float | None


def business_query(spec: ReleaseSpec) -> BusinessQuery | None:
    if spec.experiment is None:
        return None
    primary = spec.experiment.config.primary
    return BusinessQuery(namespace=spec.namespace, service=spec.stack.entry,
                         versions=(spec.stable.version, spec.canary.version), metric=primary.name,
                         kind=primary.kind)


def metrics_query(spec: ReleaseSpec) -> MetricsQuery:
    return MetricsQuery(
        namespace=spec.namespace,
        services=spec.analysed_services,
        versions=(spec.stable.version, spec.canary.version),
    )


class Reconciler:
    def __init__(self, ports: Ports) -> None:
        self.ports = ports
        self._release_name = ""

    def tick(self, release: Mapping[str, Any], status: ReleaseStatus,
             persist: Callable[[ReleaseStatus], None]) -> TickResult:
        now = self.ports.clock.now()
        generation = _generation(release)
        self._release_name = _name(release)
        try:
            spec = parse_release(release)
        except InvalidSpec as error:
            new, actions = machine.invalid_spec(error, status, generation, now)
            return self._finish(None, status, new, actions, persist)
        obs = self._observe(spec, status, now)
        new, actions = machine.step(spec, status, obs, now)
        return self._finish(spec, status, new, actions, persist)

    # --- observe -----------------------------------------------------------------------------------
    def _observe(self, spec: ReleaseSpec, status: ReleaseStatus, now: float) -> Observation:
        wants = machine.wants(spec, status, now)
        readiness: dict[str, Readiness] | None = None
        if wants.readiness:
            readiness = {}
            for service in spec.changed:
                try:
                    readiness[service] = self.ports.workloads.readiness(service, spec.canary.version)
                except PortError as exc:
                    log.warning("readiness of %s unknown: %s", service, exc.reason)
                    readiness = None
                    break
        routing, routing_error = None, None
        if wants.routing:
            try:
                routing = self.ports.router.in_effect()
            except PortError as exc:
                routing_error = exc.reason
        metrics, metrics_error = None, None
        if wants.metrics_window is not None:
            start, end = wants.metrics_window
            try:
                metrics = self.ports.metrics.window(metrics_query(spec), start, end)
            except PortError as exc:
                metrics_error = exc.reason
            except Exception as exc:  # a broken source must give an `error` verdict, never a crash loop
                log.exception("metrics source failed")
                metrics_error = f"metrics source failed: {exc!r}"
        business, business_error = self._business(spec, wants.metrics_window)
        return Observation(readiness=readiness, routing=routing, routing_error=routing_error,
                           metrics=metrics, metrics_error=metrics_error, business=business,
                           business_error=business_error)

    def _business(self, spec: ReleaseSpec, window: tuple[float, float] | None
                  ) -> tuple[Mapping[str, PrimaryCounts] | None, str | None]:
        query = business_query(spec)
        if query is None or window is None:
            return None, None
        if self.ports.business is None:
            return None, "no business-metrics source is configured for this experiment"
        try:
            return self.ports.business.business(query, *window), None
        except PortError as exc:
            return None, exc.reason
        except Exception as exc:  # a broken source must give an `error` verdict, never a crash loop
            log.exception("business metrics source failed")
            return None, f"business metrics source failed: {exc!r}"

    # --- persist, then act ---------------------------------------------------------------------------
    def _finish(self, spec: ReleaseSpec | None, old: ReleaseStatus, new: ReleaseStatus,
                actions: list[Action], persist: Callable[[ReleaseStatus], None]) -> TickResult:
        changed = new != old
        if changed:
            persist(new)
        failed = []
        for action in actions:
            try:
                self._carry_out(spec, action)
            except PortError as exc:
                log.warning("action %s failed: %s", type(action).__name__, exc.reason)
                failed.append(f"{type(action).__name__}: {exc.reason}")
        return TickResult(new, changed, tuple(actions), tuple(failed), _requeue_after(spec, new, self.ports))

    def _carry_out(self, spec: ReleaseSpec | None, action: Action) -> None:
        p = self.ports
        match action:
            case EnsureWorkloads(version=version, services=services, images=images):
                for service in services:
                    p.workloads.ensure_version(service, version, images.get(service))
            case RetireWorkloads(version=version, services=services):
                for service in services:
                    p.workloads.retire(service, version)
            case ApplyRouting(plan=plan):
                p.router.apply(plan)
            case Notify(reason=reason, message=message, warning=warning):
                p.notifier.notify(Notice(self._release_name, reason, message, warning))


def _name(release: Mapping[str, Any]) -> str:
    meta = release.get("metadata") if isinstance(release, Mapping) else None
    name = meta.get("name", "") if isinstance(meta, Mapping) else ""
    return name if isinstance(name, str) else ""


def _generation(release: Mapping[str, Any]) -> int:
    meta = release.get("metadata") if isinstance(release, Mapping) else None
    gen = meta.get("generation", 1) if isinstance(meta, Mapping) else 1
    return gen if isinstance(gen, int) else 1


def _requeue_after(spec: ReleaseSpec | None, status: ReleaseStatus, ports: Ports) -> float | None:
    if spec is None or status.phase.final:
        return None
    if status.phase is Phase.PROGRESSING and status.last_analysis_at is not None:
        # Wake at the next analysis window, and often enough between to notice a canary that died.
        due = status.last_analysis_at + spec.strategy.interval - ports.clock.now()
        return max(0.05, min(due, max(5.0, spec.strategy.interval / 3)))
    if status.phase is Phase.PAUSED:
        return min(2.0, spec.strategy.interval)
    return min(1.0, spec.strategy.interval)
