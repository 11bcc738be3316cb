"""One reconcile tick of one release: observe -> step -> persist -> act.

The reconciler holds no release policy of its own: what to observe, what to decide, what the queries
ask and when to tick again all come from the pure core (`controller.core`); it only does the I/O, through
the ports.

The status is persisted (once, and only if it changed) *before* the actions are carried out: the
persisted status is the controller's intent. If the process dies between the two, the next tick derives
the same intent from the status and repeats the idempotent actions; the other order could forget a
decision that was already acted on (e.g. a rollback whose weight change reached the mesh).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from analysis.abtest import PrimaryCounts
from analysis.observations import WindowCounts
from controller.core import machine
from controller.core.machine import (
    Action,
    ApplyRouting,
    EnsureWorkloads,
    FireHook,
    Notify,
    RetireWorkloads,
)
from controller.core.machine import hooks as hook_points
from controller.core.observation import Observation, Peer, Readiness, ShadowBatch, Wants, combined_readiness
from controller.core.queries import business_query, further_variants, metrics_query
from controller.core.spec.hooks import HookResult
from controller.core.spec.release import InvalidSpec, ReleaseSpec, parse_release
from controller.core.status import ReleaseStatus, decision_details
from controller.ports import (
    BusinessMetrics,
    Clock,
    History,
    Hooks,
    InFlight,
    Metrics,
    Notice,
    Notifier,
    Peers,
    PortError,
    Router,
    ShadowPairs,
    Workloads,
)

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
    # Release hooks (`spec.hooks`); a runner without one fails every hook the release declares.
    hooks: Hooks | None = None
    # The namespace's other releases (`controller.core.machine.ownership`); None: this one is alone.
    peers: Peers | None = None
    # Seconds after a weight change before `metrics` counts only that weight's traffic (Prometheus: its read
    # lag plus a scrape interval); windows open no sooner (`machine.settled_for`).
    metrics_delay: float = 0.0
    # A shadow phase's comparator (`spec.strategy.shadow`); a runner without one never passes a shadow phase.
    shadow: ShadowPairs | None = None
    # A source that answers windows in the past (Prometheus), for the stable version's metrics before a release
    # (`spec.analysis.historyIntervals`); None: the judge learns the noise from the release alone.
    history: History | None = None
    # The mesh's count of requests in flight per workload (local Envoy's gauges); None: a promotion's or
    # rollback's drain waits `drainTime` alone.
    in_flight: InFlight | None = None


@dataclass(frozen=True)
class TickResult:
    status: ReleaseStatus
    persisted: bool
    actions: tuple[Action, ...]
    failed_actions: tuple[str, ...]
    # Seconds until this release wants its next tick; None when it is finished.
    requeue_after: float | None


class Reconciler:
    def __init__(self, ports: Ports) -> None:
        self.ports = ports

    def tick(self, release: Mapping[str, Any], status: ReleaseStatus,
             persist: Callable[[ReleaseStatus], None]) -> TickResult:
        now = self.ports.clock.now()
        who = (_meta(release, "name", ""), _meta(release, "namespace", ""))
        try:
            spec = machine.settled_for(self._accepted(parse_release(release)), self.ports.metrics_delay)
        except InvalidSpec as error:
            new, actions = machine.invalid_spec(error, status, _meta(release, "generation", 1), now)
            return self._finish(None, who, status, new, actions, persist)
        obs = self._observe(spec, status, now, _meta(release, "creationTimestamp", ""))
        new, actions = machine.step(spec, status, obs, now)
        return self._finish(spec, who, status, new, actions, persist)

    def _accepted(self, spec: ReleaseSpec) -> ReleaseSpec:
        """The spec, if this runner may do all it asks; else InvalidSpec naming each hook its policy refuses
        (a URL outside the admin's policy, a secret from where secrets may not come), so that such a release
        is refused before anything is deployed, read or sent, the same way as a spec that does not parse."""
        if self.ports.hooks is None:
            return spec
        problems = [f"spec.hooks[{i}]: {problem}" for i, hook in enumerate(spec.hooks)
                    for problem in self.ports.hooks.refusals(hook)]
        if problems:
            raise InvalidSpec(problems)
        return spec

    # --- observe -----------------------------------------------------------------------------------
    def _observe(self, spec: ReleaseSpec, status: ReleaseStatus, now: float, created: str) -> Observation:
        peers = self._peers(spec)
        wants = machine.wants(spec, status, now, peers, created)
        readiness: dict[str, Readiness] | None = None
        if wants.readiness:
            readiness = {}
            for service in spec.changed:
                try:
                    readiness[service] = self._readiness(spec, service)
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
        shadow, shadow_error = self._shadow(spec, wants.shadow_after)
        history, history_error = self._history(spec, wants.history_windows)
        in_flight = self._in_flight(wants.in_flight)
        stable = self._stable(spec) if wants.stable_readiness else None
        return Observation(readiness=readiness, stable=stable, routing=routing, routing_error=routing_error,
                           metrics=metrics, metrics_error=metrics_error, business=business,
                           business_error=business_error, hooks=self._call_hooks(spec, status, wants),
                           peers=peers, created=created, shadow=shadow, shadow_error=shadow_error,
                           history=history, history_error=history_error, in_flight=in_flight)

    def _stable(self, spec: ReleaseSpec) -> dict[str, Readiness] | None:
        """The stable version's readiness on every service of the stack; None when it could not be read."""
        try:
            return {s: self.ports.workloads.readiness(s, spec.stable_version_of(s)) for s in spec.stack.services}
        except PortError as exc:
            log.warning("readiness of %s unknown: %s", "/".join(spec.stable_versions()), exc.reason)
            return None

    def _in_flight(self, workloads: tuple[tuple[str, str], ...]) -> int | None:
        """Requests still in flight on the retiring lane's workloads; None when not asked or the mesh cannot
        tell (the drain then waits `drainTime` alone)."""
        if not workloads or self.ports.in_flight is None:
            return None
        try:
            return self.ports.in_flight.in_flight(workloads)
        except PortError as exc:
            log.warning("requests in flight unknown: %s", exc.reason)
            return None

    def _history(self, spec: ReleaseSpec, windows: tuple[tuple[float, float], ...]
                 ) -> tuple[tuple[WindowCounts, ...] | None, str | None]:
        """The stable version's windows before the release, from a source that keeps past samples."""
        if not windows:
            return None, None
        if self.ports.history is None:
            return None, "this metrics source keeps no history (windows are read as they close)"
        try:
            return self.ports.history.windows(metrics_query(spec), windows), None
        except PortError as exc:
            return None, exc.reason
        except Exception as exc:  # a broken source starts the judge without history, never a crash loop
            log.exception("metrics history failed")
            return None, f"metrics source failed: {exc!r}"

    def _shadow(self, spec: ReleaseSpec, after: tuple[str, int] | None) -> tuple[ShadowBatch | None, str | None]:
        if after is None or spec.shadow is None:
            return None, None
        if self.ports.shadow is None:
            return None, "no shadow comparator is configured for this runner"
        try:
            return self.ports.shadow.pairs(spec.namespace, spec.shadow.routes, *after), None
        except PortError as exc:
            return None, exc.reason
        except Exception as exc:  # a broken comparator must hold the shadow phase, never crash the loop
            log.exception("shadow comparator failed")
            return None, f"shadow comparator failed: {exc!r}"

    def _peers(self, spec: ReleaseSpec) -> tuple[Peer, ...] | None:
        if self.ports.peers is None:
            return None
        try:
            return self.ports.peers.peers(spec.namespace, spec.name)
        except PortError as exc:
            log.warning("other releases unknown: %s", exc.reason)
            return None

    def _call_hooks(self, spec: ReleaseSpec, status: ReleaseStatus, wants: Wants
                    ) -> dict[str, HookResult]:
        results = {}
        for hook in wants.hooks:
            if self.ports.hooks is None:
                results[hook.name] = HookResult(False, None, "no hook runner is configured", 0.0)
                continue
            try:
                results[hook.name] = self.ports.hooks.run(hook, hook_points.payload(spec, status, hook))
            except Exception as exc:  # a broken hook runner is a failed call, never a crash loop
                log.exception("hook %s failed", hook.name)
                results[hook.name] = HookResult(False, None, f"hook call failed: {type(exc).__name__}", 0.0)
            log.info("hook %s (%s): %s", hook.name, hook.kind.value, results[hook.name].reason)
        return results

    def _readiness(self, spec: ReleaseSpec, service: str) -> Readiness:
        """The new version's readiness on `service`, its A/B/n variants' included (`combined_readiness`:
        the variants are asked lazily, only as far as the rule needs them)."""
        ask = self.ports.workloads.readiness
        variants = ((version, ask(service, version)) for version in further_variants(spec))
        return combined_readiness(ask(service, spec.canary.version), variants)

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
    def _finish(self, spec: ReleaseSpec | None, who: tuple[str, str], old: ReleaseStatus, new: ReleaseStatus,
                actions: list[Action], persist: Callable[[ReleaseStatus], None]) -> TickResult:
        changed = new != old
        if changed:
            persist(new)
        # Every notice of the tick carries the numbers of the decision just persisted.
        details = decision_details(new.for_storage()) if any(isinstance(a, Notify) for a in actions) else None
        acting = _Acting(*who, new, details)
        failed, refused = [], []
        was = new.condition("ActionsApplied")
        known = was.message if was is not None and was.status == "False" else ""
        for action in actions:
            try:
                self._carry_out(spec, acting, action)
            except PortError as exc:
                failed.append(f"{type(action).__name__}: {exc.reason}")
                # A refusal already in the condition is retried quietly: it was said, and is still shown.
                repeated = not exc.retryable and failed[-1] in known.split("; ")
                log.log(logging.DEBUG if repeated else logging.WARNING, "action %s failed: %s",
                        type(action).__name__, exc.reason)
                if not exc.retryable:
                    refused.append(failed[-1])
        reported = self._report_refusals(acting, new, refused, bool(failed), persist)
        changed, new = changed or reported is not new, reported
        # Timed from after the actions (they may take a while), as the next window is due in wall-clock time.
        requeue = machine.requeue_after(spec, new, self.ports.clock.now())
        return TickResult(new, changed, tuple(actions), tuple(failed), requeue)

    def _report_refusals(self, acting: _Acting, status: ReleaseStatus, refused: list[str], failed: bool,
                         persist: Callable[[ReleaseStatus], None]) -> ReleaseStatus:
        """Actions the outside world refuses for good (a user's route the controller cannot keep, an object
        the API will not take) are retried every tick, and the release holds; say so where operators look:
        the condition `ActionsApplied` (False, with the reasons) and one warning notice. It turns True again
        on the first tick all actions go through."""
        now = self.ports.clock.now()
        was = status.condition("ActionsApplied")
        if refused:
            newer = status.with_condition("ActionsApplied", "False", "Refused", "; ".join(refused), now)
        elif was is not None and was.status == "False" and not failed:
            newer = status.with_condition("ActionsApplied", "True", "Applied", "", now)
        else:
            return status
        if newer == status:
            return status
        persist(newer)
        if refused:
            self.ports.notifier.notify(Notice(acting.release, "ActionRefused", "; ".join(refused), True,
                                              acting.details, acting.namespace))
        return newer

    def _carry_out(self, spec: ReleaseSpec | None, acting: _Acting, action: Action) -> None:
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
                p.notifier.notify(Notice(acting.release, reason, message, warning, acting.details, acting.namespace))
            case FireHook(hook=hook):
                assert spec is not None
                if p.hooks is None:
                    log.warning("hook %s not fired: no hook runner is configured", hook.name)
                    return
                p.hooks.fire(hook, hook_points.payload(spec, acting.status, hook))


_T = TypeVar("_T", str, int)


@dataclass(frozen=True)
class _Acting:
    """What a tick's actions need besides themselves: the release's name and namespace, the status just
    persisted and its latest decision's numbers (for notices)."""

    release: str
    namespace: str
    status: ReleaseStatus
    details: Mapping[str, Any] | None


def _meta(release: Mapping[str, Any], key: str, default: _T) -> _T:
    """`metadata.<key>` of a release that may be malformed (its spec is parsed only later), else `default`."""
    meta = release.get("metadata") if isinstance(release, Mapping) else None
    value = meta.get(key, default) if isinstance(meta, Mapping) else default
    return value if isinstance(value, type(default)) else default

