"""The controller's seams to the outside world: every Protocol it owns, and the errors they raise.

`Workloads`, `Router`, `Metrics`, `BusinessMetrics`, `Hooks`, `Secrets`, `Clock` and `Notifier` each have a
Kubernetes/Istio/Prometheus/HTTP implementation (`controller.adapters`) and a local one; tests use fakes.
The reconciler talks only to these, so the same release logic runs in a cluster, on a laptop and in tests.
All ports are synchronous: a tick is short and sequential, and the edges that need concurrency (the local
mesh, the load generator) run in their own processes or threads.

This module depends on the core only (the data the ports carry), never on an adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from analysis.abtest import PrimaryCounts
from analysis.observations import MetricsQuery, WindowCounts
from controller.core.observation import Peer, Readiness, ShadowBatch
from controller.core.plan import RoutingPlan, ShadowRoutes
from controller.core.queries import BusinessQuery
from controller.core.spec.hooks import HookResult, HookSpec

__all__ = [
    "BusinessMetrics", "BusinessQuery", "Clock", "Hooks", "Metrics", "MetricsUnavailable", "Notice", "Notifier",
    "PermanentError", "PortError", "Readiness", "Router", "SecretUnavailable", "Secrets", "ShadowPairs",
    "TemporaryError", "Workloads",
]


class PortError(Exception):
    """An outside system failed. `retryable` says whether the next tick may simply try again."""

    retryable: bool = True

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TemporaryError(PortError):
    retryable = True


class PermanentError(PortError):
    retryable = False


class MetricsUnavailable(TemporaryError):
    """The metrics backend failed, timed out or answered something unusable: an `error` verdict."""


class Workloads(Protocol):
    def ensure_version(self, service: str, version: str, image: str | None) -> None:
        """Run `version` of `service` beside whatever runs now; idempotent."""

    def readiness(self, service: str, version: str) -> Readiness:
        """Whether that version of the service is ready to take traffic."""

    def retire(self, service: str, version: str) -> None:
        """Stop or scale down that version; idempotent, and a no-op when it does not run."""


class Router(Protocol):
    def apply(self, plan: RoutingPlan) -> None:
        """Put the plan in effect (idempotent: no write when it is in effect already)."""

    def in_effect(self) -> RoutingPlan | None:
        """Read back the plan the mesh is using now, or None when the controller owns no routes yet."""


class InFlight(Protocol):
    def in_flight(self, workloads: Sequence[tuple[str, str]]) -> int:
        """Requests the mesh has sent to these (service, version) workloads and not yet seen answered; raises
        PortError when it cannot tell."""


class Metrics(Protocol):
    def window(self, query: MetricsQuery, start: float, end: float) -> WindowCounts:
        """Exact per-version counts of requests in (start, end]; raises MetricsUnavailable."""


class History(Metrics, Protocol):
    """A metrics source that keeps past samples (Prometheus), for the stable version's windows before a release."""

    def windows(self, query: MetricsQuery, edges: Sequence[tuple[float, float]]) -> tuple[WindowCounts, ...]:
        """`window` of each (start, end] in `edges` (oldest first), read together: as many queries as one
        window, however many windows; raises MetricsUnavailable."""


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""

    def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class Notice:
    """Something an operator should hear about: a Kubernetes Event, a log line, a chat message."""

    release: str
    reason: str  # e.g. Initialized, WeightIncreased, AnalysisFailed, RolledBack, Promoted, InvalidSpec
    message: str
    warning: bool = False
    # The numbers behind it: the latest decision of the persisted status (`controller.core.status.decision_details`).
    details: Mapping[str, Any] | None = None
    namespace: str = ""


class Notifier(Protocol):
    def notify(self, notice: Notice) -> None: ...


class BusinessMetrics(Protocol):
    """An A/B experiment's primary metric (impressions and clicks, or any other), per version.

    A port of its own beside `Metrics`, so a canary-only deployment needs no business source at all.
    """

    def business(self, query: BusinessQuery, start: float, end: float) -> Mapping[str, PrimaryCounts]:
        """Counts per version in (start, end]; a version with no data is absent. Raises MetricsUnavailable."""


class ShadowPairs(Protocol):
    """A shadow phase's comparator (docs/shadow.md): the pairs of rankings it made from mirrored searches."""

    def pairs(self, namespace: str, routes: ShadowRoutes, epoch: str, after: int) -> ShadowBatch:
        """Its pairs after sequence number `after` of `epoch` (all it keeps when its epoch is another; none,
        only where it stands, when `after` is -1). Raises TemporaryError when it cannot be read."""


class Hooks(Protocol):
    """Release hooks: calls the release makes at fixed points (`controller.core.machine.hooks` says when)."""

    def refusals(self, hook: HookSpec) -> list[str]:
        """Why this runner will not call `hook` (its URL or its secret's source is outside the policy);
        empty when it may. Asked when the spec is read, before anything of the release is done."""

    def run(self, hook: HookSpec, payload: Mapping[str, Any]) -> HookResult:
        """Call the hook and wait for its answer (within its timeout and retries)."""

    def fire(self, hook: HookSpec, payload: Mapping[str, Any]) -> object:
        """Call the hook without waiting for it (load tests)."""


class Peers(Protocol):
    """The other releases of a namespace (`controller.core.machine.ownership` decides who owns what)."""

    def peers(self, namespace: str, name: str) -> tuple[Peer, ...]:
        """Every release of `namespace` but `name`."""


class SecretUnavailable(PermanentError):
    """A Secret a hook names is missing, lacks the key, is empty or may not be read; never shows the value."""


class Secrets(Protocol):
    """Hooks' signing keys, by `secretRef` (`controller.core.spec.hooks.SecretRef`): the cluster reads a
    Kubernetes Secret of the release's namespace (`get` on one object, nothing listed), a local run a file."""

    def read(self, namespace: str, name: str, key: str) -> bytes:
        """The value of `key` in the Secret `name` of `namespace`; raises SecretUnavailable."""
