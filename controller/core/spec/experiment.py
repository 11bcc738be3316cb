"""`spec.strategy.abTest`: an A/B (or A/B/n) experiment between the stable version and new ones, parsed.

This module owns the experiment part of the release spec. The variants are versions: the stable version
is the control, the canary version a treatment (`variants: [{name: v1, weight: 50}, {name: v2, ...}]`,
names equal to `spec.stable.version` / `spec.canary.version`). A/B/n: every further variant is a version of
its own, deployed for the same services as the canary (`spec.canary.services`), with its own images
(`{name: v3, weight: 33, images: {ml-search: repo/ml-search:v3}}`; without `images` a service's stable
template runs with the variant's version label, which the local stack turns into that version). Only
`spec.canary` can be promoted at the end (the release's promotion re-points stable at it); another
variant that wins is reported, and the release keeps stable (see `controller.core.machine.experiment`).
The statistics' fields are those of `analysis.abtest.ExperimentConfig` (alpha, primaryMetric,
minSamples, confidenceSequence, sampleRatioOn, guardrails, onEnd, unit, minUsers, ...), except that the duration bounds
are durations (`minDuration: 2m`); the routing fields are `cookie`, `cookieMaxAge`, `cohortHeader`, `userHeader`
(with `unit: user`, default `x-user-id`: the entry's replicas of a variant are chosen by its hash), and the
analysis cadence `interval` and `settle`. Problems are recorded with their full path on the release's
reader (`analysis.reader.Reader`), which `controller.core.spec.release` hands down.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from analysis.abtest import ExperimentConfig, InvalidExperimentConfig
from analysis.config import CHECKS
from analysis.reader import Reader
from controller.core.plan import HEADER_NAME, ExperimentArm, ExperimentRoutes, InvalidPlan
from controller.core.spec.cadence import read_settle, read_warmup

PATH = "spec.strategy.abTest"
ROUTING_FIELDS = ("interval", "settle", "warmup", "cookie", "cookieMaxAge", "cohortHeader", "userHeader",
                  "minDuration", "maxDuration")
# The header the search stack keys its per-user sums on (searchstack.settings.DEFAULT_USER_HEADER).
DEFAULT_USER_HEADER = "x-user-id"
STATISTICS_FIELDS = ("variants", "control", "alpha", "primaryMetric", "minSamples", "equivalenceMargin",
                     "confidenceSequence", "sampleRatioAlpha", "sampleRatioOn", "guardrails", "onEnd", "unit",
                     "minUsers")
KNOWN = (*STATISTICS_FIELDS, *ROUTING_FIELDS)
_COOKIE = re.compile(r"^[A-Za-z0-9_-]+$")
# The DestinationRule subsets every release has; a variant (a subset of its own) cannot be named so.
RESERVED_SUBSETS = ("stable", "canary")


@dataclass(frozen=True)
class ExtraVariant:
    """An A/B/n variant beyond the stable and the canary version: its version and images per service."""

    version: str
    images: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentSpec:
    config: ExperimentConfig
    routes: ExperimentRoutes
    interval: float
    settle: float
    # The variant the release can promote (`spec.canary.version`); the other treatments are `extra`.
    promotable: str = ""
    extra: tuple[ExtraVariant, ...] = ()
    # How long the variants serve before their traffic is judged (a new version's cold caches and JIT): the
    # first window opens max(settle, warmup) after the routes are in effect (`CanaryStrategy.first_window_after`
    # of the release's strategy, which carries both). The spec's default is one interval.
    warmup: float = 0.0

    @property
    def treatment(self) -> str:
        """The promotable treatment (the canary version): what a two-variant experiment reports on."""
        return self.promotable or self.routes.arms[1].name

    @property
    def versions(self) -> tuple[str, ...]:
        """Every variant's version, the control's first: what metrics and business sources must count."""
        return tuple(a.version for a in self.routes.arms)


def parse_ab_test(r: Reader, value: Any, stable: str, canary: str, room: tuple[int, str] = (62, ""),
                  changed: tuple[str, ...] = ()) -> ExperimentSpec | None:
    """The experiment, or None after recording its problems on `r`. `room`: how long a version may be
    and the service that bounds it (`controller.core.spec.release.version_room`); `changed`: the services the
    release changes, the only ones a further variant runs (empty: not checked)."""
    m = r.fields(value, PATH, KNOWN)
    interval = r.duration(m.get("interval"), f"{PATH}.interval", 30.0, 0.5)
    settle = read_settle(r, m.get("settle"), f"{PATH}.settle", interval)
    stats = {k: v for k, v in m.items() if k in STATISTICS_FIELDS}
    images = _variant_images(r, m.get("variants"), changed)
    if images is not None:
        stats["variants"] = [{k: v for k, v in item.items() if k != "images"} if isinstance(item, Mapping) else item
                             for item in m["variants"]]
    stats["minDurationSeconds"] = r.duration(m.get("minDuration"), f"{PATH}.minDuration", 0.0)
    stats["maxDurationSeconds"] = r.duration(m.get("maxDuration"), f"{PATH}.maxDuration", 3600.0, 1.0)
    warmup = read_warmup(r, m.get("warmup"), f"{PATH}.warmup", interval, stats["maxDurationSeconds"], "maxDuration")
    stats.setdefault("control", stable)
    stats["guardrails"] = _guardrails(stats.get("guardrails"))
    config = _config(r, stats)
    if config is None:
        return None
    if config.control != stable:
        r.problem(f"{PATH}.control", f"{config.control!r} is not the stable version {stable!r}")
    names = {v.name for v in config.variants}
    if not {stable, canary} <= names:
        r.problem(f"{PATH}.variants", f"must include the stable and the new version ({stable}, {canary}), "
                                      f"not only {', '.join(sorted(names))}")
        return None
    for i, v in enumerate(config.variants):
        if v.weight <= 0:  # never assigned a user: the experiment would end without judging it
            r.problem(f"{PATH}.variants[{i}].weight", f"{v.weight:g} gives this variant no users; give it a share "
                                                      "of 1-99, or leave the variant out")
        if v.name in (stable, canary) and (images or {}).get(v.name):
            r.problem(f"{PATH}.variants[{i}].images", f"{v.name} is spec.{'stable' if v.name == stable else 'canary'}"
                                                      "'s version: its images are given there")
    _check_names(r, config, (stable, canary), room)
    extra = tuple(ExtraVariant(v.name, dict((images or {}).get(v.name, {})))
                  for v in config.variants if v.name not in (stable, canary))
    routes = _routes(r, m, config, stable, canary)
    return None if routes is None else ExperimentSpec(config, routes, interval, settle, canary, extra, warmup)


def _check_names(r: Reader, config: ExperimentConfig, checked: tuple[str, ...], room: tuple[int, str]) -> None:
    """A variant's name is a version: a DestinationRule subset beside the controller's own `stable` and
    `canary` ones, and the Deployments `<service>-<variant>` (the stable and canary versions' length is
    checked where they are given, spec.stable and spec.canary)."""
    limit, longest = room
    for i, v in enumerate(config.variants):
        if v.name in RESERVED_SUBSETS:
            r.problem(f"{PATH}.variants[{i}].name", f"{v.name!r} is a subset name the controller uses itself "
                                                    f"({', '.join(RESERVED_SUBSETS)}): name the version otherwise")
        elif v.name not in checked and len(v.name) > limit:
            r.problem(f"{PATH}.variants[{i}].name", f"{v.name!r} is {len(v.name)} characters, at most {limit} "
                                                    f"fit: the Deployment {longest}-<version> is a name of at "
                                                    "most 63")


def _variant_images(r: Reader, variants: Any, changed: tuple[str, ...]) -> dict[str, Mapping[str, str]] | None:
    """`images` per variant name (checked: a mapping of service -> image, each a service the release changes,
    since a further variant runs only those: another image would never run); None when no variant has any."""
    if not isinstance(variants, list) or not any(isinstance(v, Mapping) and "images" in v for v in variants):
        return None
    out: dict[str, Mapping[str, str]] = {}
    for i, item in enumerate(variants):
        if not isinstance(item, Mapping) or "images" not in item:
            continue
        images = r.mapping(item["images"], f"{PATH}.variants[{i}].images")
        for service, image in images.items():
            if changed and service not in changed:
                r.problem(f"{PATH}.variants[{i}].images.{service}",
                          f"is not a service the release changes ({', '.join(changed)}): a variant runs only "
                          "those (spec.canary.services, or the services with a canary image)")
            r.string(image, f"{PATH}.variants[{i}].images.{service}")
        out[str(item.get("name"))] = {str(k): str(v) for k, v in images.items()}
    return out


def _guardrails(value: Any) -> Any:
    """Guardrails judge every request, but users are assigned sticky: a few heavy users move the request
    share far from the user split, so the request-level sample-ratio check is off unless asked for (the
    experiment's own SRM test runs on assigned users)."""
    if value is None:
        value = {}
    if isinstance(value, Mapping) and "checks" not in value:
        return {**value, "checks": [c for c in CHECKS if c != "sampleRatio"]}
    return value


def _config(r: Reader, stats: Mapping[str, Any]) -> ExperimentConfig | None:
    """The statistics' config (read by `analysis.abtest`, which stops at the first problem), or None after
    recording that problem on `r` under the spec's names of the duration bounds."""
    try:
        return ExperimentConfig.from_dict(dict(stats), path=PATH)
    except InvalidExperimentConfig as exc:
        path = exc.path.replace(f"{PATH}.minDurationSeconds", f"{PATH}.minDuration")
        message = exc.message.replace("minDurationSeconds", "minDuration")
        if "minDuration" in message:  # the bounds compared, in seconds as the spec's durations become
            message = message.replace(" is less than minDuration ", " s is less than minDuration ") + " s"
        r.problem(path.replace(f"{PATH}.maxDurationSeconds", f"{PATH}.maxDuration"), message)
    return None


def _routes(r: Reader, m: Mapping[str, Any], config: ExperimentConfig, stable: str, canary: str
            ) -> ExperimentRoutes | None:
    cookie = r.string(m.get("cookie"), f"{PATH}.cookie", _COOKIE, default="ab", what="a cookie name")
    header = m.get("cohortHeader")
    if header is not None:
        header = r.string(header, f"{PATH}.cohortHeader", HEADER_NAME, what="a lower-case header name")
    user = None
    if config.unit == "user":
        user = r.string(m.get("userHeader"), f"{PATH}.userHeader", HEADER_NAME, default=DEFAULT_USER_HEADER,
                        what="a lower-case header name")
    elif m.get("userHeader") is not None:
        r.problem(f"{PATH}.userHeader", f"only with unit: user (this experiment's unit is {config.unit})")
    max_age = r.duration(m.get("cookieMaxAge"), f"{PATH}.cookieMaxAge", 7 * 24 * 3600.0, 1.0)
    if max_age < config.max_duration_s:
        r.problem(f"{PATH}.cookieMaxAge", f"{max_age:g}s is shorter than maxDuration: users would be re-assigned")
    ordered = sorted(config.variants, key=lambda v: v.name != config.control)  # control first
    arms = tuple(ExperimentArm(v.name, v.name, int(v.weight)) for v in ordered)  # a variant is its version
    if r.problems:
        return None
    try:
        return ExperimentRoutes(arms, cookie=cookie, cohort_header=header, cookie_max_age=int(max_age),
                                user_header=user)
    except InvalidPlan as exc:  # what the routes refuse is a spec problem too, never a crash
        r.problem(PATH, str(exc))
    return None
