"""The release spec: what an operator asks for, parsed and validated with precise messages.

The same shape is the `spec` of the Kubernetes custom resource and of a local `release.yaml`. Parsing
never raises anything but `InvalidSpec`, whose message names every offending field by its path
(`spec.strategy.steps[2].weight: 120 is above 100`), so the controller can put it in a status condition.

This module owns the release spec's shape and its top-level parsing. Parsing is one trip down: one
collecting `analysis.reader.Reader` goes to the experiment (`controller.core.spec.experiment`) and the
hooks (`controller.core.spec.hooks`), which record their problems on it; the analysis settings are read by
`analysis.config` itself, whose first problem joins the others. Nothing below calls back up here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from analysis.config import AnalysisConfig, InvalidAnalysisConfig
from analysis.reader import Reader
from controller.core.plan import DEFAULT_LANE_HEADER, HEADER_NAME
from controller.core.spec.cadence import read_settle, read_warmup
from controller.core.spec.experiment import ExperimentSpec, parse_ab_test
from controller.core.spec.hooks import HookSpec, read_hooks
from controller.core.spec.shadow import ShadowSpec, parse_shadow
from controller.core.status import versions_described

SEARCH_STACK = ("master-search", "ml-infer", "ml-search", "keyword", "text-search")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# Kubernetes names built from a version: the Deployment (and HPA copy) `<service>-<version>`, the pods'
# `version` label, and in an A/B/n experiment a DestinationRule subset. All are lower-case DNS labels of
# at most 63 characters, so a version is one, short enough to follow the stack's longest service name.
NAME_LIMIT = 63
_VERSION = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
VERSION_RULE = ("a lower-case DNS label: lower-case letters, digits and '-', starting and ending with a letter or "
                "digit ([a-z0-9]([-a-z0-9]*[a-z0-9])?)")
# A service is a Kubernetes Service name (a DNS label that starts with a letter) with room for `-<version>`.
_SERVICE = re.compile(r"[a-z]([-a-z0-9]{0,59}[a-z0-9])?")
SERVICE_RULE = (f"a Kubernetes Service name: lower-case letters, digits and '-', starting with a letter, ending "
                f"with a letter or digit, at most {NAME_LIMIT - 2} characters (room for -<version> in "
                f"<service>-<version>)")
# What a release document is: the StackRelease custom resource (manifests/crd/stackreleases.yaml) of this group.
# A local release file may leave `apiVersion` and `kind` out; given, they must be these. Objects the API serves
# always carry them, with the controller's `status`; the CRD's schema prunes any other top-level key.
API_GROUP = "stackcanary.dev"
API_VERSION = "v1alpha1"
API_VERSIONS = (f"{API_GROUP}/{API_VERSION}",)
RELEASE_KIND = "StackRelease"
TOP_LEVEL_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
SPEC_FIELDS = ("stack", "stable", "canary", "strategy", "analysis", "policies", "progressDeadline", "scaleDownDelay",
               "drainTime", "laneHeader", "paused", "abort", "approvePromotion", "hooks", "promoteFull", "skipStep",
               "retry")
ON_INCONCLUSIVE = ("hold", "rollback", "continue")
# After a promotion the old version stays scaled up this long (Argo Rollouts' scaleDownDelaySeconds), so
# that going back right away needs no new pods.
SCALE_DOWN_DELAY = 30.0


class InvalidSpec(ValueError):
    """Every problem found in a spec, one `path: message` per line."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class Stack:
    entry: str
    services: tuple[str, ...]


@dataclass(frozen=True)
class Version:
    version: str
    images: Mapping[str, str] = field(default_factory=dict)
    # `spec.stable.versions` only: the services whose serving version is not `version` (a stack an earlier
    # release changed only in part, e.g. ml-infer on v2-model, the rest on v1).
    versions: Mapping[str, str] = field(default_factory=dict)

    def of(self, service: str) -> str:
        """The version `service` runs: its own entry in `versions`, else `version`."""
        return self.versions.get(service, self.version)


@dataclass(frozen=True)
class CanaryStrategy:
    steps: tuple[int, ...]
    interval: float
    min_canary_requests: int
    # How long a step may go without a `pass` before the inconclusive policy applies.
    step_deadline: float
    # After a weight change, how long before the next analysis window opens: at least one metrics scrape
    # interval, so that no window mixes traffic of two weights (the intended weight is each interval's
    # stratum, and the sample-ratio check compares against it).
    settle: float = 0.0
    # After a weight change, how long new canary pods serve before their traffic is judged (cold caches, JIT):
    # the first window of a step opens max(settle, warmup) after the weight moved. The spec's default is one
    # interval (docs/analysis.md, "Warm-up"); 0: no warm-up.
    warmup: float = 0.0

    @property
    def first_window_after(self) -> float:
        """Seconds from a weight change (or a return to full capacity) to the opening of the next window."""
        return max(self.settle, self.warmup)

    def window_after_change(self, pods_told_apart: bool) -> float:
        """Seconds from a weight change to the next window: only `settle` when the last window told the
        canary's pods apart (the judge then leaves a step's new pods out while they warm up, and judges the
        pods that were already serving), else `first_window_after` (also `settle` without a warm-up)."""
        return self.settle if pods_told_apart else self.first_window_after

    @property
    def pod_warmup_intervals(self) -> int:
        """The warm-up in whole intervals (rounded up): how many intervals a new canary pod is left out of."""
        return math.ceil(self.warmup / self.interval - 1e-9) if self.warmup > 0 and self.interval > 0 else 0


@dataclass(frozen=True)
class Policies:
    on_inconclusive: str = "hold"
    # `error` verdicts in a row (metrics outage, sample-ratio mismatch) after which the release rolls back.
    rollback_after_errors: int = 3
    manual_gate: bool = False


@dataclass(frozen=True)
class ReleaseSpec:
    name: str
    namespace: str
    generation: int
    stack: Stack
    stable: Version
    canary: Version
    changed: tuple[str, ...]
    strategy: CanaryStrategy
    analysis: AnalysisConfig
    analysed_services: tuple[str, ...]
    policies: Policies
    progress_deadline: float
    scale_down_delay: float
    # Time given to requests in flight before a promotion or rollback changes the routes they are using.
    drain_time: float = 5.0
    lane_header: str = DEFAULT_LANE_HEADER
    paused: bool = False
    abort: bool = False
    approve_promotion: bool = False
    # Operator overrides (controller/core/machine/revisions.py): promote now without further analysis; skip the analysis
    # of step N (1-based); a retry counter (a retry runs when it exceeds status.retries).
    promote_full: bool = False
    skip_step: int = 0
    retry: int = 0
    # Set for `strategy.abTest`: the release runs an A/B experiment instead of canary steps.
    experiment: ExperimentSpec | None = None
    # HTTP calls at fixed points of the release (`controller.adapters.http.hooks`): gates, load tests, tell-hooks.
    hooks: tuple[HookSpec, ...] = ()
    # Set for `strategy.shadow`: mirrored searches compared before the first canary step (docs/shadow.md).
    shadow: ShadowSpec | None = None

    def hooks_of(self, kind: str) -> tuple[HookSpec, ...]:
        return tuple(h for h in self.hooks if h.kind == kind)

    def canary_version_of(self, service: str) -> str | None:
        return self.canary.version if service in self.changed else None

    def stable_version_of(self, service: str) -> str:
        """The version serving `service` now: `spec.stable.versions[service]`, else `spec.stable.version`."""
        return self.stable.of(service)

    def stable_versions(self, services: Sequence[str] | None = None) -> tuple[str, ...]:
        """The stable versions of `services` (every service of the stack by default), each once, in order."""
        listed = self.stack.services if services is None else services
        return tuple(dict.fromkeys(self.stable_version_of(s) for s in listed))

    def stable_groups(self, services: Sequence[str] | None = None) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(version, the services of `services` it serves) for every stable version, in the stack's order (every
        service of the stack by default)."""
        listed = self.stack.services if services is None else tuple(s for s in self.stack.services if s in services)
        return tuple((v, tuple(s for s in listed if self.stable_version_of(s) == v))
                     for v in self.stable_versions(listed))

    def stable_described(self) -> str:
        """`v1`, or `v1 (ml-infer v2-model)` when `spec.stable.versions` gives services versions of their own."""
        return versions_described(self.stable.version, self.stable.versions)


def parse_release(obj: Mapping[str, Any]) -> ReleaseSpec:
    """Parse a whole release object (`metadata` + `spec`) or raise InvalidSpec naming every problem."""
    r = Reader()
    obj = r.mapping(obj, "release")
    _document(r, obj)
    meta = r.mapping(obj.get("metadata"), "metadata")
    name = r.string(meta.get("name"), "metadata.name", _DNS_LABEL, what="a DNS label")
    namespace = r.string(meta.get("namespace"), "metadata.namespace", _DNS_LABEL, default="default",
                         what="a DNS label")
    generation = meta.get("generation", 1)
    generation = generation if isinstance(generation, int) else 1
    spec = r.fields(obj.get("spec"), "spec", SPEC_FIELDS)

    stack = _stack(r, spec.get("stack"))
    stable = _version(r, spec.get("stable"), "spec.stable", stack)
    canary = _version(r, spec.get("canary"), "spec.canary", stack)
    changed = _changed(r, spec.get("canary"), canary, stack)
    _new_where_changed(r, stable, canary, changed)
    strategy, experiment = _strategy(r, spec.get("strategy"), stable.version, canary.version, stack.services,
                                     changed)
    if experiment is not None and stable.of(stack.entry) != stable.version:
        r.problem(f"spec.stable.versions.{stack.entry}",
                  f"an A/B experiment counts its primary metric on {stack.entry} by the version of its pods, and "
                  f"its control is spec.stable.version ({stable.version}): the entry's stable version must be that")
    analysis, analysed = _analysis(r, spec.get("analysis"), changed, stack)
    policies = _policies(r, spec.get("policies"))
    lane_header = r.string(spec.get("laneHeader"), "spec.laneHeader", HEADER_NAME, default=DEFAULT_LANE_HEADER,
                           what="a lower-case header name")
    strategy_fields = spec.get("strategy")
    shadow = parse_shadow(r, strategy_fields.get("shadow") if isinstance(strategy_fields, Mapping) else None,
                          lane_header)
    release = ReleaseSpec(
        name=name, namespace=namespace, generation=generation, stack=stack, stable=stable, canary=canary,
        changed=changed, strategy=strategy, analysis=analysis, analysed_services=analysed,
        policies=policies,
        progress_deadline=r.duration(spec.get("progressDeadline"), "spec.progressDeadline", 600.0, 1.0),
        scale_down_delay=r.duration(spec.get("scaleDownDelay"), "spec.scaleDownDelay", SCALE_DOWN_DELAY),
        drain_time=r.duration(spec.get("drainTime"), "spec.drainTime", 5.0),
        lane_header=lane_header,
        paused=r.boolean(spec.get("paused"), "spec.paused", default=False),
        abort=r.boolean(spec.get("abort"), "spec.abort", default=False),
        approve_promotion=r.boolean(spec.get("approvePromotion"), "spec.approvePromotion", default=False),
        promote_full=r.boolean(spec.get("promoteFull"), "spec.promoteFull", default=False),
        skip_step=r.integer(spec.get("skipStep"), "spec.skipStep", 0, default=0),
        retry=r.integer(spec.get("retry"), "spec.retry", 0, default=0),
        experiment=experiment,
        hooks=read_hooks(r, spec.get("hooks"), "spec.hooks"),
        shadow=shadow,
    )
    r.raise_if_problems(InvalidSpec)
    return release


def _document(r: Reader, obj: Mapping[str, Any]) -> None:
    """The document is a StackRelease of this group, with no top-level keys beside the resource's."""
    kind = obj.get("kind")
    if kind is not None and kind != RELEASE_KIND:
        r.problem("kind", f"{kind!r} is not {RELEASE_KIND}, the kind of a release")
    api_version = obj.get("apiVersion")
    if api_version is not None and api_version not in API_VERSIONS:
        r.problem("apiVersion", f"{api_version!r} is not {' or '.join(API_VERSIONS)} (the group {API_GROUP})")
    for key in obj:
        if key not in TOP_LEVEL_FIELDS:
            where = key if isinstance(key, str) and key else repr(key)
            r.problem(where, r.wording.unknown_field.format(known=", ".join(TOP_LEVEL_FIELDS)))


def _stack(r: Reader, value: Any) -> Stack:
    m = r.fields(value, "spec.stack", ("entry", "services"), required=False)
    listed = r.items(m.get("services", list(SEARCH_STACK)), "spec.stack.services", "service names")
    services = [r.string(s, f"spec.stack.services[{i}]", _SERVICE, what=SERVICE_RULE) for i, s in enumerate(listed)]
    dupes = sorted({s for s in services if services.count(s) > 1})
    if dupes:
        r.problem("spec.stack.services", f"lists {', '.join(dupes)} more than once")
    entry = r.string(m.get("entry"), "spec.stack.entry", default=services[0] if services else "")
    if services and entry and entry not in services:
        r.problem("spec.stack.entry", f"{entry!r} is not one of spec.stack.services")
    return Stack(entry, tuple(services))


def _version(r: Reader, value: Any, path: str, stack: Stack) -> Version:
    known = ("version", "images", "services") if path == "spec.canary" else ("version", "images", "versions")
    m = r.fields(value, path, known)
    version = _version_name(r, m.get("version"), f"{path}.version", stack)
    images = r.mapping(m.get("images"), f"{path}.images", required=False)
    for svc, image in images.items():
        if svc not in stack.services:
            r.problem(f"{path}.images.{svc}", "is not a service of spec.stack.services")
        r.string(image, f"{path}.images.{svc}")
    versions = r.mapping(m.get("versions"), f"{path}.versions", required=False)
    for svc, own in versions.items():
        if svc not in stack.services:
            r.problem(f"{path}.versions.{svc}", "is not a service of spec.stack.services")
        _version_name(r, own, f"{path}.versions.{svc}", stack)
    return Version(version, dict(images), {s: v for s, v in versions.items() if isinstance(v, str)})


def _version_name(r: Reader, value: Any, path: str, stack: Stack) -> str:
    """A version: a DNS label short enough that `<service>-<version>` fits for the stack's longest service."""
    version = r.string(value, path, _VERSION, what=VERSION_RULE)
    room, longest = version_room(stack.services)
    if _VERSION.fullmatch(version) and len(version) > room:
        r.problem(path, f"{version!r} is {len(version)} characters, at most {room} fit: the "
                        f"Deployment {longest}-<version> is a name of at most {NAME_LIMIT}")
    return version


def _new_where_changed(r: Reader, stable: Version, canary: Version, changed: Sequence[str]) -> None:
    """Every service the release changes gets a version it does not run already."""
    if not canary.version:
        return
    if stable.version == canary.version and any(s not in stable.versions for s in changed):
        r.problem("spec.canary.version", f"{canary.version!r} is the stable version already")
    for service in changed:
        if stable.versions.get(service) == canary.version:
            r.problem(f"spec.stable.versions.{service}", f"{canary.version!r} is the new version: {service} "
                                                        f"runs it already")


def version_order(version: str) -> tuple[tuple[int, int | str], ...]:
    """A key that orders version names as people number them: `v9` < `v10` < `v10-rc1` (digits by value); the
    tie-break where two versions of a service have as many pods ready, the later-numbered first when reversed."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.findall(r"\d+|\D+", version))


def version_room(services: Sequence[str]) -> tuple[int, str]:
    """How long a version may be so that `<service>-<version>` names fit for every service, and the longest
    service (the one that sets the bound)."""
    longest = max(services, key=len, default="")
    return min(NAME_LIMIT, NAME_LIMIT - len(longest) - 1), longest


def _changed(r: Reader, value: Any, canary: Version, stack: Stack) -> tuple[str, ...]:
    """Services the release changes: `canary.services`, else those with a new image, else all of them."""
    m = value if isinstance(value, Mapping) else {}
    listed = m.get("services")
    if listed is None:
        return tuple(s for s in stack.services if s in canary.images) or stack.services
    listed = r.items(listed, "spec.canary.services", "service names")
    if not listed:
        return stack.services
    for i, s in enumerate(listed):
        if s not in stack.services:
            r.problem(f"spec.canary.services[{i}]", f"{s!r} is not one of spec.stack.services")
    return tuple(s for s in stack.services if s in listed)


def _strategy(r: Reader, value: Any, stable: str, canary: str, services: Sequence[str],
              changed: tuple[str, ...] = ()) -> tuple[CanaryStrategy, ExperimentSpec | None]:
    m = r.fields(value, "spec.strategy", ("canary", "abTest", "shadow"), required=False)
    if "abTest" in m and "shadow" in m:
        r.problem("spec.strategy.shadow", "a shadow phase goes before canary steps, not before an A/B experiment")
    if "abTest" not in m:
        return _canary_strategy(r, m), None
    if "canary" in m:
        r.problem("spec.strategy.abTest", "give either strategy.canary or strategy.abTest, not both")
    experiment = parse_ab_test(r, m.get("abTest"), stable, canary, version_room(services), changed)
    if experiment is None:
        return _canary_strategy(r, {}), None
    # The canary fields the reconciler reads (cadence, settle, warm-up) follow the experiment's; one "step" at the
    # treatment's share.
    share = experiment.routes.arms[1].weight
    return CanaryStrategy(steps=(max(share, 1),), interval=experiment.interval, min_canary_requests=0,
                          step_deadline=experiment.config.max_duration_s + experiment.interval,
                          settle=experiment.settle, warmup=experiment.warmup), experiment


def _canary_strategy(r: Reader, m: Mapping[str, Any]) -> CanaryStrategy:
    path = "spec.strategy.canary"
    c = r.fields(m.get("canary"), path, ("steps", "stepWeight", "maxWeight", "interval", "minCanaryRequests",
                                         "stepDeadline", "settle", "warmup"), required=False)
    steps: list[int] = []
    if "steps" in c:
        if "stepWeight" in c or "maxWeight" in c:
            r.problem(f"{path}.steps", "give either steps or stepWeight/maxWeight, not both")
        for i, step in enumerate(r.items(c["steps"], f"{path}.steps", "{weight: N}")):
            sm = r.fields(step, f"{path}.steps[{i}]", ("weight",))
            if "weight" not in sm:
                r.problem(f"{path}.steps[{i}].weight", "is required")
                continue
            steps.append(r.integer(sm.get("weight"), f"{path}.steps[{i}].weight", 1, 100, default=0))
        for i in range(1, len(steps)):
            if steps[i] <= steps[i - 1]:
                r.problem(f"{path}.steps[{i}].weight", f"{steps[i]} does not increase on {steps[i - 1]}")
    else:
        step = r.integer(c.get("stepWeight"), f"{path}.stepWeight", 1, 100, default=10)
        top = r.integer(c.get("maxWeight"), f"{path}.maxWeight", 1, 100, default=50)
        if step > top:
            r.problem(f"{path}.stepWeight", f"{step} is above maxWeight {top}")
        steps = list(range(step, top + 1, step)) if 0 < step <= top else [top]
        if steps and steps[-1] != top:
            steps.append(top)
    interval = r.duration(c.get("interval"), f"{path}.interval", 60.0, 0.5)
    step_deadline = r.duration(c.get("stepDeadline"), f"{path}.stepDeadline", 10 * interval, interval)
    warmup = read_warmup(r, c.get("warmup"), f"{path}.warmup", interval, step_deadline, "the step deadline")
    return CanaryStrategy(
        steps=tuple(steps),
        interval=interval,
        min_canary_requests=r.integer(c.get("minCanaryRequests"), f"{path}.minCanaryRequests", 0, default=50),
        step_deadline=step_deadline,
        settle=read_settle(r, c.get("settle"), f"{path}.settle", interval),
        warmup=warmup,
    )


def _analysis(r: Reader, value: Any, changed: tuple[str, ...], stack: Stack
              ) -> tuple[AnalysisConfig, tuple[str, ...]]:
    m = dict(r.mapping(value, "spec.analysis", required=False))
    services_raw = m.pop("services", None)
    analysed = changed
    if services_raw is not None:
        listed = r.items(services_raw, "spec.analysis.services", "changed services")
        for i, s in enumerate(listed):
            if s not in changed:
                r.problem(f"spec.analysis.services[{i}]",
                          f"{s!r} is not a service this release changes ({', '.join(changed)})")
        if listed:
            analysed = tuple(s for s in stack.services if s in listed)
    try:
        # The statistics read their own config and stop at its first problem; it joins the spec's.
        config = AnalysisConfig.from_dict(m, path="spec.analysis")
    except InvalidAnalysisConfig as exc:
        r.problem(exc.path, exc.message)
        config = AnalysisConfig()
    return config, analysed


def _policies(r: Reader, value: Any) -> Policies:
    m = r.fields(value, "spec.policies", ("onInconclusive", "rollbackAfterErrors", "manualGate"), required=False)
    return Policies(
        on_inconclusive=r.choice(m.get("onInconclusive"), "spec.policies.onInconclusive", ON_INCONCLUSIVE,
                                 default="hold"),
        rollback_after_errors=r.integer(m.get("rollbackAfterErrors"), "spec.policies.rollbackAfterErrors", 1,
                                        default=3),
        manual_gate=r.boolean(m.get("manualGate"), "spec.policies.manualGate", default=False),
    )
