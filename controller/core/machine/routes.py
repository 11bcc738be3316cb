"""The routes a release's status calls for: `base_plan` (every service on stable, no canary traffic) and
`desired_plan` (what the mesh should do in each phase). Pure: spec and status in, a `RoutingPlan` out."""

from __future__ import annotations

from controller.core.plan import RoutingPlan, ServiceVersions
from controller.core.spec.release import ReleaseSpec
from controller.core.status import Phase, ReleaseStatus


def base_plan(spec: ReleaseSpec) -> RoutingPlan:
    return RoutingPlan(
        namespace=spec.namespace,
        entry=spec.stack.entry,
        services=tuple(ServiceVersions(s, spec.stable_version_of(s), spec.canary_version_of(s))
                       for s in spec.stack.services),
        canary_weight=0,
        lane_header=spec.lane_header,
        owner=spec.name,
    )


def desired_plan(spec: ReleaseSpec, status: ReleaseStatus) -> RoutingPlan | None:
    """The routes the status calls for.

    Promotion and rollback each change the routes in two stages, so that no request in flight mixes
    versions: first only the entry split moves (100% into the canary lane, or 0%; an experiment's entry sends
    every new request to the promoted variant or the control and keeps every variant's lane), leaving the lane
    routes of requests already inside the stack untouched; after `drainTime` the subsets are re-pointed
    (stable -> new version) or the canary subsets removed.
    """
    base = base_plan(spec)
    match status.phase:
        case Phase.PENDING:
            return None
        case Phase.INITIALIZING:
            return base
        case Phase.SHADOWING if spec.shadow is not None:
            return base.with_shadow(spec.shadow.routes)  # no user on the new version; searches mirrored
        case Phase.PROGRESSING | Phase.PAUSED if spec.experiment is not None:
            return base.with_experiment(spec.experiment.routes)
        case Phase.PROGRESSING | Phase.PAUSED:
            return base.with_weight(status.canary_weight)
        case Phase.PROMOTING if status.scaling_to is not None and spec.experiment is not None:
            return base.with_experiment(spec.experiment.routes)  # scaling the winner: the split stays
        case Phase.PROMOTING:
            # Scaling first (`scaling_to` set), the weight stays; then 100% into the lane; then the cutover.
            if status.cutover:
                return base.promoted()
            if spec.experiment is not None:
                return base.with_experiment(spec.experiment.routes.closed_to(spec.experiment.treatment))
            return base.with_weight(status.canary_weight)
        case Phase.SUCCEEDED:
            return base.promoted()
        case Phase.ROLLING_BACK:
            if status.cutover:
                return base.all_stable()
            if spec.experiment is not None:
                return base.with_experiment(spec.experiment.routes.closed_to(spec.experiment.routes.control.name))
            return base.with_weight(0)
        case Phase.FAILED if status.started_at is None:
            return None  # failed before it started (bad spec, a failed preRollout hook): routes untouched
        case _:
            return base.all_stable()


def _draining(status: ReleaseStatus) -> bool:
    """Whether the release is in the first stage of a promotion or rollback (its drain, before the cutover)."""
    promoting = status.phase is Phase.PROMOTING and status.scaling_to is None
    return (promoting or status.phase is Phase.ROLLING_BACK) and not status.cutover


def retiring_workloads(spec: ReleaseSpec, status: ReleaseStatus) -> tuple[tuple[str, str], ...]:
    """The (service, version) workloads whose lanes the cutover retires: every version of the changed services
    but the one that stays (the new one on a promotion, the stable one on a rollback). A request still in flight
    on one of them has been, or is, on the retiring lane, and its later hops would take the other version after
    the cutover. Empty outside a drain."""
    if not _draining(status):
        return ()
    extra = tuple(v.version for v in spec.experiment.extra) if spec.experiment is not None else ()
    retiring = []
    for service in spec.changed:
        stable = spec.stable_version_of(service)
        stays = spec.canary.version if status.phase is Phase.PROMOTING else stable
        retiring += [(service, v) for v in dict.fromkeys((stable, spec.canary.version, *extra)) if v != stays]
    return tuple(retiring)
