"""The local platform: the controller's ports implemented with processes on this machine.

- `LocalWorkloads`: a version of a service is a searchstack process, registered with the mesh router as
  an endpoint labelled `version=<v>` (as a pod would be); readiness is its health check.
- `LocalRouter`: the rendered VirtualServices/DestinationRules are PUT to the local mesh router's admin
  API and read back from it, exactly as the Kubernetes adapter writes and reads them.
- `SystemClock`, `LogNotifier`: the real clock, and notices as log lines (and kept for the summary).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import httpx

from controller.adapters.istio.render import UnreadablePlan, read_plan, render
from controller.adapters.local.mesh_admin import RouterAdmin, RouterAdminError
from controller.adapters.local.processes import ProcessError
from controller.adapters.local.stack import LocalStack
from controller.core.plan import RoutingPlan
from controller.ports import Notice, PermanentError, Readiness, TemporaryError

log = logging.getLogger(__name__)


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


@dataclass
class LogNotifier:
    notices: list[tuple[float, Notice]] = field(default_factory=list)

    def notify(self, notice: Notice) -> None:
        self.notices.append((time.time(), notice))
        level = logging.WARNING if notice.warning else logging.INFO
        log.log(level, "%s: %s", notice.reason, notice.message)


class LocalRouter:
    """The Router port over the local mesh router's admin API."""

    def __init__(self, admin: RouterAdmin) -> None:
        self.admin = admin

    def apply(self, plan: RoutingPlan) -> None:
        if plan.equivalent(self.in_effect()):
            return
        objects = render(plan)
        try:
            self.admin.put_config(objects)
        except RouterAdminError as exc:
            # The router refused our own rendering: a bug, not a passing fault; say so plainly.
            raise PermanentError(f"mesh router refused the routes: {exc.message}") from exc
        except httpx.HTTPError as exc:
            raise TemporaryError(f"mesh router unreachable: {exc!r}") from exc

    def in_effect(self) -> RoutingPlan | None:
        try:
            return read_plan(self.admin.get_config())
        except httpx.HTTPError as exc:
            raise TemporaryError(f"mesh router unreachable: {exc!r}") from exc
        except (RouterAdminError, UnreadablePlan) as exc:
            raise TemporaryError(f"routes in effect are unreadable: {exc}") from exc


class LocalWorkloads:
    """The Workloads port: versions of the stack's services as local processes."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack

    def ensure_version(self, service: str, version: str, image: str | None) -> None:
        try:
            self.stack.ensure_service(service, version)
        except (OSError, ProcessError) as exc:
            raise TemporaryError(f"cannot start {service}@{version}: {exc}") from exc

    def readiness(self, service: str, version: str) -> Readiness:
        return self.stack.readiness(service, version)

    def retire(self, service: str, version: str) -> None:
        self.stack.stop_service(service, version)
