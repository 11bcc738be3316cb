"""What traffic should do, independent of how a mesh is told: the routing plan of one release.

A plan names, per service of the stack, which version the `stable` subset and the `canary` subset point
at, and how much of the entry traffic enters the canary lane. The renderer turns it into Istio objects;
both the Kubernetes adapter and the local mesh router consume those same objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

DEFAULT_LANE_HEADER = "x-canary-lane"
_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# Kubernetes label values: what a version may look like, since it becomes a `version` pod label.
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class InvalidPlan(ValueError):
    pass


@dataclass(frozen=True)
class ExperimentArm:
    """One variant of an A/B experiment: its name (cookie value, lane and subset name), version, weight."""

    name: str
    version: str
    weight: int


@dataclass(frozen=True)
class ExperimentRoutes:
    """How an A/B experiment assigns users; rendered by `controller.adapters.istio.experiment`.

    Requests with `cohort_header: <variant>` go to that variant (explicit cohorts); requests whose cookie
    `cookie=<variant>` names a variant stay on it (sticky); every other request is split by weight and its
    response sets that cookie. `arms[0]` is the control, served by the stable subsets.
    """

    arms: tuple[ExperimentArm, ...]
    cookie: str = "ab"
    cohort_header: str | None = None
    cookie_max_age: int = 7 * 24 * 3600

    def __post_init__(self) -> None:
        if len(self.arms) < 2:
            raise InvalidPlan("an experiment needs at least two variants")
        if sum(a.weight for a in self.arms) != 100:
            raise InvalidPlan(f"experiment weights {[a.weight for a in self.arms]} do not sum to 100")
        for a in self.arms:
            if not _DNS_LABEL.match(a.name) or a.name in ("stable", "canary"):
                raise InvalidPlan(f"variant name {a.name!r} is not a DNS label other than stable/canary")
            if not _LABEL_VALUE.match(a.version):
                raise InvalidPlan(f"version {a.version!r} of variant {a.name} is not a valid label value")
        if not re.match(r"^[A-Za-z0-9_-]+$", self.cookie):
            raise InvalidPlan(f"cookie name {self.cookie!r} is not a plain token")
        if self.cohort_header is not None and not _HEADER_NAME.match(self.cohort_header):
            raise InvalidPlan(f"cohort header {self.cohort_header!r} is not a lower-case HTTP header name")

    @property
    def control(self) -> ExperimentArm:
        return self.arms[0]


@dataclass(frozen=True)
class ServiceVersions:
    """The versions one service's subsets point at; `canary` is None when the release leaves it alone."""

    service: str
    stable: str
    canary: str | None = None


@dataclass(frozen=True)
class RoutingPlan:
    namespace: str
    entry: str
    services: tuple[ServiceVersions, ...]
    canary_weight: int
    lane_header: str = DEFAULT_LANE_HEADER
    # Kubernetes only: gateways the entry route is bound to, and extra hosts it answers for.
    gateways: tuple[str, ...] = ()
    entry_hosts: tuple[str, ...] = ()
    owner: str = ""
    # Set while an A/B experiment runs: the entry route assigns users to variants instead of a weight split.
    experiment: ExperimentRoutes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.canary_weight, int) or not 0 <= self.canary_weight <= 100:
            raise InvalidPlan(f"canary weight {self.canary_weight!r} is not a whole number in 0..100")
        if not _HEADER_NAME.match(self.lane_header):
            raise InvalidPlan(f"lane header {self.lane_header!r} is not a lower-case HTTP header name")
        names = [s.service for s in self.services]
        if len(set(names)) != len(names):
            raise InvalidPlan(f"services are listed twice: {names}")
        if self.entry not in names:
            raise InvalidPlan(f"entry service {self.entry!r} is not one of the services {names}")
        for s in self.services:
            if not _DNS_LABEL.match(s.service):
                raise InvalidPlan(f"service name {s.service!r} is not a DNS label")
            for v in (s.stable, s.canary):
                if v is not None and not _LABEL_VALUE.match(v):
                    raise InvalidPlan(f"version {v!r} of {s.service} is not a valid label value")

    @property
    def stable_weight(self) -> int:
        return 100 - self.canary_weight

    def service(self, name: str) -> ServiceVersions:
        for s in self.services:
            if s.service == name:
                return s
        raise KeyError(name)

    def with_weight(self, weight: int) -> RoutingPlan:
        return replace(self, canary_weight=weight, experiment=None)

    def with_experiment(self, experiment: ExperimentRoutes) -> RoutingPlan:
        """The experiment's routes; `canary_weight` keeps the treatment's share for bookkeeping."""
        return replace(self, experiment=experiment, canary_weight=100 - experiment.control.weight)

    def all_stable(self) -> RoutingPlan:
        """Every lane on the stable subsets: what a rollback puts in effect."""
        return replace(
            self,
            canary_weight=0,
            services=tuple(ServiceVersions(s.service, s.stable) for s in self.services),
            experiment=None,
        )

    def promoted(self) -> RoutingPlan:
        """Stable re-pointed at the new versions; no canary lane left."""
        return replace(
            self,
            canary_weight=0,
            services=tuple(ServiceVersions(s.service, s.canary or s.stable) for s in self.services),
            experiment=None,
        )

    def equivalent(self, other: RoutingPlan | None) -> bool:
        """Same traffic behaviour (service order and bookkeeping fields aside)."""
        return other is not None and self._traffic_key() == other._traffic_key()

    def _traffic_key(self) -> tuple[object, ...]:
        return (self.namespace, self.entry, self.canary_weight, self.lane_header,
                tuple(sorted(self.services, key=lambda s: s.service)), self.gateways, self.entry_hosts,
                self.experiment)

    def canary_reachable(self) -> bool:
        """Whether any request can reach a canary pod under this plan."""
        return self.canary_weight > 0 and any(s.canary for s in self.services)
