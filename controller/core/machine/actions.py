"""What the machine asks the reconciler to do (the `Action` types), and `Outcome`: a transition's decision.

Every transition returns an `Outcome` (the new status and the actions it decided, in order) instead of
appending to a list it was handed, so a transition's effects are all in its return value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from controller.core.plan import RoutingPlan
from controller.core.spec.hooks import HookSpec
from controller.core.status import ReleaseStatus


@dataclass(frozen=True)
class EnsureWorkloads:
    version: str
    services: tuple[str, ...]
    images: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RetireWorkloads:
    version: str
    services: tuple[str, ...]


@dataclass(frozen=True)
class ApplyRouting:
    plan: RoutingPlan


@dataclass(frozen=True)
class Notify:
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class FireHook:
    """Call a hook without waiting for its answer (a load test)."""

    hook: HookSpec


Action = EnsureWorkloads | RetireWorkloads | ApplyRouting | Notify | FireHook


@dataclass(frozen=True)
class Outcome:
    """What a transition decided: the status to carry on with and the actions it asks for, in order."""

    status: ReleaseStatus
    actions: tuple[Action, ...] = ()

    def after(self, *earlier: Action) -> Outcome:
        """This outcome with `earlier` (decided before it, on the way here) ahead of its own actions."""
        return replace(self, actions=(*earlier, *self.actions)) if earlier else self
