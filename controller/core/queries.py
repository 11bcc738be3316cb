"""What a release asks its sources about: the versions it runs and compares, the latency and error query
(`metrics_query`) and an experiment's primary-metric query (`business_query`, of type `BusinessQuery`).

Pure functions of the spec; the reconciler hands the queries to the ports (`controller.ports`), which
carry `BusinessQuery` (it lives here, in the core, as `MetricsQuery` lives in `analysis`).
"""

from __future__ import annotations

from dataclasses import dataclass

from analysis.observations import MetricsQuery
from controller.core.spec.release import ReleaseSpec


@dataclass(frozen=True)
class BusinessQuery:
    """The primary metric `metric` (e.g. click-through) of `service` per version, in `namespace`."""

    namespace: str
    service: str
    versions: tuple[str, ...]
    metric: str
    kind: str  # proportion | mean


def release_versions(spec: ReleaseSpec, services: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Every version the release compares on `services` (the analysed ones by default): their stable versions
    (one, or one per service where `spec.stable.versions` says so) and the canary, plus an A/B/n experiment's
    further variants."""
    stable = spec.stable_versions(spec.analysed_services if services is None else services)
    new = spec.experiment.versions if spec.experiment is not None else (spec.canary.version,)
    return tuple(dict.fromkeys((*stable, *new)))


def further_variants(spec: ReleaseSpec) -> tuple[str, ...]:
    """The versions that run beside the canary and must be ready with it: an A/B/n experiment's variants
    beyond the canary (none for a canary release)."""
    return tuple(v.version for v in spec.experiment.extra) if spec.experiment is not None else ()


def metrics_query(spec: ReleaseSpec) -> MetricsQuery:
    return MetricsQuery(namespace=spec.namespace, services=spec.analysed_services, versions=release_versions(spec))


def business_query(spec: ReleaseSpec) -> BusinessQuery | None:
    """The experiment's primary-metric query, or None for a canary release."""
    if spec.experiment is None:
        return None
    primary = spec.experiment.config.primary
    return BusinessQuery(namespace=spec.namespace, service=spec.stack.entry,
                         versions=release_versions(spec, (spec.stack.entry,)),
                         metric=primary.name, kind=primary.kind)
