"""The controller's seams to the outside world: small Protocols it owns.

Each port has a Kubernetes/Istio/Prometheus implementation and a local one; tests use fakes. The
reconciler talks only to these, so the same release logic runs in a cluster, on a laptop and in tests.
All ports are synchronous: a tick is short and sequential, and the edges that need concurrency (the local
router, the load generator) run in their own processes or threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from analysis.observations import MetricsQuery, WindowCounts
from controller.routing.plan import RoutingPlan


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


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str = ""
    # True when the workload can no longer become ready (crash loop, progress deadline exceeded).
    failed: bool = False
    # False when the workload does not exist (yet): the controller has not created it, e.g. it was down.
    exists: bool = True


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


class Metrics(Protocol):
    def window(self, query: MetricsQuery, start: float, end: float) -> WindowCounts:
        """Exact per-version counts of requests in (start, end]; raises MetricsUnavailable."""


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
    # The numbers behind it: the latest decision of the persisted status (`notify.decision_details`).
    details: Mapping[str, Any] | None = None
    namespace: str = ""


class Notifier(Protocol):
    def notify(self, notice: Notice) -> None: ...
