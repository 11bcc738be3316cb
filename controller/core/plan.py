"""What traffic should do, independent of how a mesh is told: the routing plan of one release.

A plan names, per service of the stack, which version the `stable` subset and the `canary` subset point
at, and how much of the entry traffic enters the canary lane. The renderer turns it into Istio objects;
both the Kubernetes adapter and the local mesh router consume those same objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

DEFAULT_LANE_HEADER = "x-canary-lane"
# A header name as releases give them (lane, shadow, cohort and user headers): lower-case, digits and "-".
HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
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

    `closing_to` names the variant every new request goes to while the experiment ends (the control on a
    rollback, the promoted variant on a promotion), whatever its cookie or cohort, and no cookie is set; every
    variant's lane keeps its routes, so a request already inside the stack finishes on its variant.
    """

    arms: tuple[ExperimentArm, ...]
    cookie: str = "ab"
    cohort_header: str | None = None
    cookie_max_age: int = 7 * 24 * 3600
    closing_to: str | None = None
    # The header naming the user (`unit: user`): the entry's replicas of a variant are chosen by its hash, so
    # that one process sees each user whole (its per-user sums); None: the mesh's usual load balancing.
    user_header: str | None = None

    def __post_init__(self) -> None:
        if len(self.arms) < 2:
            raise InvalidPlan("an experiment needs at least two variants")
        if self.closing_to is not None and self.closing_to not in {a.name for a in self.arms}:
            raise InvalidPlan(f"the experiment closes to {self.closing_to!r}, which is not one of its variants")
        if sum(a.weight for a in self.arms) != 100:
            raise InvalidPlan(f"experiment weights {[a.weight for a in self.arms]} do not sum to 100")
        for a in self.arms:
            if not _DNS_LABEL.match(a.name) or a.name in ("stable", "canary"):
                raise InvalidPlan(f"variant name {a.name!r} is not a DNS label other than stable/canary")
            if not _LABEL_VALUE.match(a.version):
                raise InvalidPlan(f"version {a.version!r} of variant {a.name} is not a valid label value")
        if not re.match(r"^[A-Za-z0-9_-]+$", self.cookie):
            raise InvalidPlan(f"cookie name {self.cookie!r} is not a plain token")
        for what, header in (("cohort", self.cohort_header), ("user", self.user_header)):
            if header is not None and not HEADER_NAME.fullmatch(header):
                raise InvalidPlan(f"{what} header {header!r} is not a lower-case HTTP header name")

    @property
    def control(self) -> ExperimentArm:
        return self.arms[0]

    def closed_to(self, variant: str) -> ExperimentRoutes:
        """Stage one of the experiment's end: every new request to `variant`, every lane kept (see the class)."""
        arms = tuple(replace(a, weight=100 if a.name == variant else 0) for a in self.arms)
        return replace(self, arms=arms, closing_to=variant)


DEFAULT_SHADOW_HEADER = "x-canary-shadow"


@dataclass(frozen=True)
class ShadowRoutes:
    """A shadow phase's routes (docs/shadow.md), rendered on the entry VirtualService: its split route mirrors
    `percent`% of the searches to the comparator service `comparator`:`port` (the copy's answer is dropped, so
    no user sees it), and, ahead of the split, a search carrying `header: stable` or `header: canary` (the
    comparator's own requests) goes to that version of the entry, in that version's lane."""

    comparator: str
    port: int = 8000
    percent: float = 100.0
    header: str = DEFAULT_SHADOW_HEADER

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.comparator):
            raise InvalidPlan(f"shadow comparator {self.comparator!r} is not a DNS label")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise InvalidPlan(f"shadow comparator port {self.port!r} is not a port number")
        if not 0.0 < self.percent <= 100.0:
            raise InvalidPlan(f"shadow mirror percentage {self.percent!r} is not in (0, 100]")
        if not HEADER_NAME.fullmatch(self.header):
            raise InvalidPlan(f"shadow header {self.header!r} is not a lower-case HTTP header name")


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
    # Set during a shadow phase: searches mirrored to the comparator, which asks each version on its own route.
    shadow: ShadowRoutes | None = None

    def __post_init__(self) -> None:
        if self.shadow is not None and (self.experiment is not None or self.shadow.header == self.lane_header):
            raise InvalidPlan("a shadow phase's routes go with a weight split, and a header of their own")
        if not isinstance(self.canary_weight, int) or not 0 <= self.canary_weight <= 100:
            raise InvalidPlan(f"canary weight {self.canary_weight!r} is not a whole number in 0..100")
        if not HEADER_NAME.fullmatch(self.lane_header):
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
        return replace(self, canary_weight=weight, experiment=None, shadow=None)

    def with_shadow(self, shadow: ShadowRoutes) -> RoutingPlan:
        """No user traffic on the new version; a share of the searches mirrored to the comparator."""
        return replace(self, canary_weight=0, experiment=None, shadow=shadow)

    def with_experiment(self, experiment: ExperimentRoutes) -> RoutingPlan:
        """The experiment's routes; `canary_weight` keeps the treatment's share for bookkeeping."""
        return replace(self, experiment=experiment, canary_weight=100 - experiment.control.weight, shadow=None)

    def all_stable(self) -> RoutingPlan:
        """Every lane on the stable subsets: what a rollback puts in effect."""
        return replace(
            self,
            canary_weight=0,
            services=tuple(ServiceVersions(s.service, s.stable) for s in self.services),
            experiment=None,
            shadow=None,
        )

    def promoted(self) -> RoutingPlan:
        """Stable re-pointed at the new versions; no canary lane left."""
        return replace(
            self,
            canary_weight=0,
            services=tuple(ServiceVersions(s.service, s.canary or s.stable) for s in self.services),
            experiment=None,
            shadow=None,
        )

    def equivalent(self, other: RoutingPlan | None) -> bool:
        """Same traffic behaviour (service order and bookkeeping fields aside)."""
        return other is not None and self._traffic_key() == other._traffic_key()

    def _traffic_key(self) -> tuple[object, ...]:
        return (self.namespace, self.entry, self.canary_weight, self.lane_header,
                tuple(sorted(self.services, key=lambda s: s.service)), self.gateways, self.entry_hosts,
                self.experiment, self.shadow)

    def canary_reachable(self) -> bool:
        """Whether any request can reach a canary pod under this plan."""
        return self.canary_weight > 0 and any(s.canary for s in self.services)
