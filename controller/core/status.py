"""The release status: everything the controller knows about a release, persisted after every change.

State lives here and nowhere else: a restarted controller (or another replica) continues from the
persisted status. The types are immutable; `with_*` methods return new values; `for_storage()` and
`from_storage()` convert to and from the plain JSON that the custom resource's `status` (or the local
state file) carries.
"""

from __future__ import annotations

import json
import marshal
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

HISTORY_LIMIT = 200
# Kubernetes keeps an object whole in one etcd value, and etcd refuses requests over 1.5 MiB by default: a status
# over that could no longer be written, and the release would stop where it is. The decisions are its largest
# part (each names every check of every analysed service, about 0.5 KiB a check), so their stored JSON is held to
# budgets: the newest whole while they fit FULL_HISTORY_BYTES, older ones with each check's service, name, verdict,
# e-value and threshold only (`DecisionRecord.compact`), and none older than fit HISTORY_BYTES. The newest is
# always kept whole.
FULL_HISTORY_BYTES = 256 * 1024
HISTORY_BYTES = 512 * 1024
COMPACT_CHECK_FIELDS = ("service", "check", "verdict", "eValue", "threshold")
# Sizes are estimated from `marshal`'s encoding, which is much quicker than JSON's (the walk runs at every
# decision): the JSON of these records (numbers, ASCII names) is 1.4-1.9 times longer (`python -m
# bench.status_size`), so 2.5 times overestimates it (tests/core/test_status_size.py checks that it does).
JSON_PER_MARSHAL_BYTE = 2.5
# Archived revisions and attempts kept in the status (controller/core/machine/revisions.py).
REVISIONS_LIMIT = 50


class Phase(StrEnum):
    PENDING = "Pending"
    INITIALIZING = "Initializing"
    SHADOWING = "Shadowing"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    SUCCEEDED = "Succeeded"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"
    ABORTED = "Aborted"

    @property
    def final(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED, Phase.ABORTED)


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown", as in Kubernetes
    reason: str
    message: str
    last_transition: float

    def for_storage(self) -> dict[str, Any]:
        return {"type": self.type, "status": self.status, "reason": self.reason, "message": self.message,
                "lastTransitionTime": self.last_transition}

    @classmethod
    def from_storage(cls, d: Mapping[str, Any]) -> Condition:
        return cls(d["type"], d["status"], d.get("reason", ""), d.get("message", ""),
                   float(d.get("lastTransitionTime", 0.0)))


@dataclass(frozen=True)
class DecisionRecord:
    """One analysis tick: what the judge saw and said, and what the controller did about it."""

    at: float
    t: float
    step: int
    weight: int
    verdict: str
    reason: str
    action: str
    checks: tuple[Mapping[str, Any], ...] = ()
    counts: Mapping[str, Any] = field(default_factory=dict)

    def for_storage(self) -> dict[str, Any]:
        return {"at": self.at, "t": self.t, "step": self.step, "weight": self.weight, "verdict": self.verdict,
                "reason": self.reason, "action": self.action, "checks": [dict(c) for c in self.checks],
                "counts": dict(self.counts)}

    @classmethod
    def from_storage(cls, d: Mapping[str, Any]) -> DecisionRecord:
        return cls(float(d["at"]), float(d["t"]), int(d["step"]), int(d["weight"]), d["verdict"],
                   d.get("reason", ""), d.get("action", ""), tuple(d.get("checks", ())),
                   dict(d.get("counts", {})))

    def compact(self) -> DecisionRecord:
        """The record with each check's service, name, verdict, e-value and threshold only."""
        return replace(self, checks=tuple({k: c[k] for k in COMPACT_CHECK_FIELDS if k in c} for c in self.checks))

    def stored_size(self) -> int:
        """At least the bytes of the record's JSON (estimated, see JSON_PER_MARSHAL_BYTE)."""
        data = self.for_storage()
        try:
            return int(len(marshal.dumps(data)) * JSON_PER_MARSHAL_BYTE)
        except ValueError:  # not plain JSON data (a numpy number, say): measure the JSON itself
            return len(json.dumps(data, default=str))


def bounded_history(history: tuple[DecisionRecord, ...]) -> tuple[DecisionRecord, ...]:
    """The newest HISTORY_LIMIT decisions within the byte budgets (HISTORY_BYTES, above)."""
    kept: list[DecisionRecord] = []
    used, whole = 0, True
    for record in reversed(history[-HISTORY_LIMIT:]):
        if whole:
            size = record.stored_size()
            whole = not kept or used + size <= FULL_HISTORY_BYTES
        if not whole:
            record = record.compact()
            size = record.stored_size()
            if used + size > HISTORY_BYTES:
                break
        kept.append(record)
        used += size
    return tuple(reversed(kept))


def main_and_own(runs: Mapping[str, str], main: str | None = None) -> tuple[str, dict[str, str]]:
    """A stack's versions (`runs`: service -> version, not empty) as `spec.stable` says them: the version most
    services run (a tie goes to the first; `main` when given), and the services that run another, each with its
    own."""
    votes = list(runs.values())
    main = main or max(dict.fromkeys(votes), key=votes.count)
    return main, {s: v for s, v in runs.items() if v != main}


def versions_described(version: str, versions: Mapping[str, str]) -> str:
    """What a stack runs, in words: `v1`, or `v1 (ml-infer v2-model)` when services in `versions` run their own."""
    own = ", ".join(f"{s} {v}" for s, v in versions.items() if v != version)
    return f"{version} ({own})" if own else version


@dataclass(frozen=True)
class ReleasedVersions:
    """The versions one revision of a release moves between, with their images (the model versions)."""

    stable: str
    canary: str
    stable_images: Mapping[str, str] = field(default_factory=dict)
    canary_images: Mapping[str, str] = field(default_factory=dict)
    # `spec.stable.versions`: the services whose stable version is not `stable`.
    stable_versions: Mapping[str, str] = field(default_factory=dict)
    # The services the revision changes when not the whole stack (empty: all of them, or not recorded: a
    # status written before this was kept). Not part of what makes a revision new: a finished release restarts
    # for other versions or images, not because its record got more precise.
    changed: tuple[str, ...] = field(default=(), compare=False)

    def for_storage(self) -> dict[str, Any]:
        stored: dict[str, Any] = {"stable": self.stable, "canary": self.canary,
                                  "stableImages": dict(self.stable_images), "canaryImages": dict(self.canary_images)}
        if self.stable_versions:
            stored["stableVersions"] = dict(self.stable_versions)
        if self.changed:
            stored["changed"] = list(self.changed)
        return stored

    @classmethod
    def from_storage(cls, d: Mapping[str, Any]) -> ReleasedVersions:
        return cls(str(d["stable"]), str(d["canary"]), dict(d.get("stableImages") or {}),
                   dict(d.get("canaryImages") or {}), dict(d.get("stableVersions") or {}),
                   tuple(str(s) for s in d.get("changed") or ()))

    def stable_described(self) -> str:
        return versions_described(self.stable, self.stable_versions)

    def replaced(self) -> str:
        """The stable version the revision moves its services from: `stable`, or where the services it changes run
        versions of their own, theirs (`v2-model` for ml-infer on v2-model going back to v1; `v1/v2` for two)."""
        if self.changed:
            versions = [self.stable_versions.get(s, self.stable) for s in self.changed]
        else:
            versions = [self.stable, *self.stable_versions.values()]
        return "/".join(dict.fromkeys(versions))


@dataclass(frozen=True)
class RevisionRecord:
    """One finished attempt of one revision, archived when the release starts again (retry or new versions)."""

    revision: int
    attempt: int
    versions: ReleasedVersions
    outcome: str  # the final phase it ended in
    started_at: float | None = None
    finished_at: float | None = None
    decided_at: float | None = None
    first_canary_traffic_at: float | None = None
    message: str = ""

    def for_storage(self) -> dict[str, Any]:
        return {"revision": self.revision, "attempt": self.attempt, **self.versions.for_storage(),
                "outcome": self.outcome, "startedAt": self.started_at, "finishedAt": self.finished_at,
                "decidedAt": self.decided_at, "firstCanaryTrafficAt": self.first_canary_traffic_at,
                "message": self.message}

    @classmethod
    def from_storage(cls, d: Mapping[str, Any]) -> RevisionRecord:
        return cls(int(d["revision"]), int(d.get("attempt", 1)), ReleasedVersions.from_storage(d), d["outcome"],
                   d.get("startedAt"), d.get("finishedAt"), d.get("decidedAt"), d.get("firstCanaryTrafficAt"),
                   d.get("message", ""))


@dataclass(frozen=True)
class ReleaseStatus:
    phase: Phase = Phase.PENDING
    observed_generation: int = 0
    message: str = ""
    step: int = -1  # index into the strategy's steps; -1 before the first step
    canary_weight: int = 0
    started_at: float | None = None
    phase_since: float | None = None
    step_started_at: float | None = None
    last_analysis_at: float | None = None
    finished_at: float | None = None
    step_canary_requests: int = 0
    total_canary_requests: int = 0
    consecutive_errors: int = 0
    last_verdict: str | None = None
    # When the canary first received traffic and when the deciding verdict came: "time to decision".
    first_canary_traffic_at: float | None = None
    decided_at: float | None = None
    # The final phase a rollback in progress ends in: RolledBack, Aborted or Failed.
    ending: str | None = None
    # Promotion and rollback change routes in two stages (see machine.desired_plan): `cutover` is False
    # during the first, and `stage_since` is when the current stage's routes were first read back.
    cutover: bool = False
    stage_since: float | None = None
    # When a rollback's 0% canary weight was first read back from the mesh.
    canary_off_at: float | None = None
    # Capacity before traffic: the weight the new version is being scaled for (a step's weight, or 100
    # before promotion) while `canary_weight` stays where it was; None when no scaling is awaited. And
    # since when the new version has been short of ready pods (held, never judged, until the deadline).
    scaling_to: int | None = None
    unready_since: float | None = None
    judge_state: Mapping[str, Any] = field(default_factory=dict)
    # The last window told the canary's pods apart (the judge's `podWarmup`): after a weight change the next
    # window opens after `settle`, the step's new pods left out by the judge while they warm up.
    pod_warmup: bool = False
    # A/B experiments only: the primary metric's sufficient statistics (analysis.abtest state), and the
    # result at the last look (decision, winner, effect and its interval, samples, duration).
    experiment_state: Mapping[str, Any] | None = None
    experiment: Mapping[str, Any] | None = None
    # Release hooks called so far in this release, by hook name: passed, HTTP status, reason, at, attempts.
    hooks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # A shadow phase (docs/shadow.md): the judge's state, the comparator's cursor, and the last verdict.
    shadow: Mapping[str, Any] | None = None
    conditions: tuple[Condition, ...] = ()
    history: tuple[DecisionRecord, ...] = ()
    # Revisions (controller/core/machine/revisions.py): the current revision and attempt, the operator's retries acted
    # on (spec.retry), the versions this revision runs, and the earlier revisions and attempts.
    revision: int = 1
    attempt: int = 1
    retries: int = 0
    versions: ReleasedVersions | None = None
    revisions: tuple[RevisionRecord, ...] = ()

    # --- transitions -------------------------------------------------------------------------------
    def with_phase(self, phase: Phase, now: float, message: str = "") -> ReleaseStatus:
        if phase == self.phase and message == self.message:
            return self
        finished = now if phase.final and not self.phase.final else self.finished_at
        since = now if phase != self.phase else self.phase_since
        return replace(self, phase=phase, phase_since=since, message=message, finished_at=finished)

    def with_condition(self, type_: str, status: str, reason: str, message: str, now: float) -> ReleaseStatus:
        old = next((c for c in self.conditions if c.type == type_), None)
        if old and (old.status, old.reason, old.message) == (status, reason, message):
            return self
        # Kubernetes semantics: the transition time moves only when the status flips.
        since = old.last_transition if old and old.status == status else now
        new = Condition(type_, status, reason, message, since)
        return replace(self, conditions=(*(c for c in self.conditions if c.type != type_), new))

    def with_decision(self, record: DecisionRecord) -> ReleaseStatus:
        return replace(self, history=bounded_history((*self.history, record)), last_verdict=record.verdict)

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    # --- storage -----------------------------------------------------------------------------------
    def for_storage(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "observedGeneration": self.observed_generation,
            "message": self.message,
            "step": self.step,
            "canaryWeight": self.canary_weight,
            "startedAt": self.started_at,
            "phaseSince": self.phase_since,
            "stepStartedAt": self.step_started_at,
            "lastAnalysisAt": self.last_analysis_at,
            "finishedAt": self.finished_at,
            "stepCanaryRequests": self.step_canary_requests,
            "totalCanaryRequests": self.total_canary_requests,
            "consecutiveErrors": self.consecutive_errors,
            "lastVerdict": self.last_verdict,
            "firstCanaryTrafficAt": self.first_canary_traffic_at,
            "decidedAt": self.decided_at,
            "ending": self.ending,
            "cutover": self.cutover,
            "stageSince": self.stage_since,
            "canaryOffAt": self.canary_off_at,
            "scalingTo": self.scaling_to,
            "unreadySince": self.unready_since,
            "podWarmup": self.pod_warmup,
            "judgeState": dict(self.judge_state),
            "experimentState": None if self.experiment_state is None else dict(self.experiment_state),
            "experiment": None if self.experiment is None else dict(self.experiment),
            "hooks": {name: dict(result) for name, result in self.hooks.items()},
            "shadow": None if self.shadow is None else dict(self.shadow),
            "conditions": [c.for_storage() for c in self.conditions],
            "history": [h.for_storage() for h in self.history],
            "revision": self.revision,
            "attempt": self.attempt,
            "retries": self.retries,
            "versions": None if self.versions is None else self.versions.for_storage(),
            "revisions": [r.for_storage() for r in self.revisions],
        }

    @classmethod
    def from_storage(cls, d: Mapping[str, Any] | None) -> ReleaseStatus:
        if not d:
            return cls()
        return cls(
            phase=Phase(d.get("phase", Phase.PENDING.value)),
            observed_generation=int(d.get("observedGeneration", 0)),
            message=d.get("message", ""),
            step=int(d.get("step", -1)),
            canary_weight=int(d.get("canaryWeight", 0)),
            started_at=d.get("startedAt"),
            phase_since=d.get("phaseSince"),
            step_started_at=d.get("stepStartedAt"),
            last_analysis_at=d.get("lastAnalysisAt"),
            finished_at=d.get("finishedAt"),
            step_canary_requests=int(d.get("stepCanaryRequests", 0)),
            total_canary_requests=int(d.get("totalCanaryRequests", 0)),
            consecutive_errors=int(d.get("consecutiveErrors", 0)),
            last_verdict=d.get("lastVerdict"),
            first_canary_traffic_at=d.get("firstCanaryTrafficAt"),
            decided_at=d.get("decidedAt"),
            ending=d.get("ending"),
            cutover=bool(d.get("cutover", False)),
            stage_since=d.get("stageSince"),
            canary_off_at=d.get("canaryOffAt"),
            scaling_to=d.get("scalingTo"),
            unready_since=d.get("unreadySince"),
            pod_warmup=bool(d.get("podWarmup", False)),
            judge_state=dict(d.get("judgeState", {})),
            experiment_state=d.get("experimentState"),
            experiment=d.get("experiment"),
            hooks={name: dict(result) for name, result in (d.get("hooks") or {}).items()},
            shadow=d.get("shadow"),
            conditions=tuple(Condition.from_storage(c) for c in d.get("conditions", ())),
            history=tuple(DecisionRecord.from_storage(h) for h in d.get("history", ())),
            revision=int(d.get("revision", 1)),
            attempt=int(d.get("attempt", 1)),
            retries=int(d.get("retries", 0)),
            versions=ReleasedVersions.from_storage(d["versions"]) if d.get("versions") else None,
            revisions=tuple(RevisionRecord.from_storage(r) for r in d.get("revisions", ())),
        )


def shown_verdict(verdict: str, counts: Mapping[str, Any]) -> str:
    """What a look decided, as the views show it: a canary's verdict, or an experiment's own decision at that
    look (continue, winner, no_difference, harmful or error; `counts["primary"]["decision"]`, written by
    `controller.core.machine.experiment`), not its guardrails' verdict, whose state the look's reason says in
    words ("guardrails: no harm shown", or the harm they found). A look whose guardrails could not be read has
    no primary part: its verdict, `error`, is the experiment's decision too."""
    primary = counts.get("primary")
    if isinstance(primary, Mapping) and isinstance(primary.get("decision"), str):
        return str(primary["decision"])
    return verdict


def decision_details(status: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of a persisted status's latest decision, in a compact JSON-able shape.

    `checks` lists the checks that failed or errored, or else the one closest to its threshold.
    """
    history = status.get("history") or []
    details: dict[str, Any] = {"phase": status.get("phase"), "canaryWeight": status.get("canaryWeight")}
    if not history:
        return details
    last = history[-1]
    checks = [c for c in last.get("checks", ()) if c.get("verdict") in ("fail", "error")]
    if not checks and last.get("checks"):
        checks = [max(last["checks"], key=lambda c: (c.get("eValue") or 0.0) / (c.get("threshold") or 1.0))]
    details.update({
        "t": last.get("t"), "step": last.get("step"), "weight": last.get("weight"), "verdict": last.get("verdict"),
        "decision": shown_verdict(str(last.get("verdict") or ""), last.get("counts") or {}),
        "action": last.get("action"), "reason": last.get("reason"),
        "checks": [{k: c.get(k) for k in ("service", "check", "verdict", "eValue", "threshold", "pValue")}
                   for c in checks],
        "counts": last.get("counts", {}),
    })
    if status.get("decidedAt") and status.get("firstCanaryTrafficAt"):
        details["timeToDecisionSeconds"] = round(status["decidedAt"] - status["firstCanaryTrafficAt"], 3)
    return details
