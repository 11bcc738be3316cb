"""What an operator's command asks of a release: the spec patch, or why the command does not apply.

Pure: a release object (`metadata` + `spec`) and its status in, a `Planned` JSON merge patch of the spec
(RFC 7386, as `kubectl patch --type merge` sends it) or a `Refused` with the reason out. The Kubernetes
commands send the patch to the API server; the local ones apply it to the state directory. Both print
the message. The controller then acts on the spec (controller/core/machine/, controller/core/machine/revisions.py).

    pause    hold at the current step                   spec.paused: true
    resume   go on after a pause                        spec.paused: false
    promote  approve a manual gate | resume | skip the current step's analysis
             (--full: promote now, skipping every remaining step)   spec.approvePromotion / paused / skipStep
                                                                    / promoteFull
    abort    roll back now                              spec.abort: true
    retry    run a rolled-back/aborted/failed release again         spec.retry: n + 1
    undo     a finished release: the previous successful version back, through the canary steps
                                                        spec.stable / spec.canary swapped to it
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.core.spec.release import SEARCH_STACK, InvalidSpec, parse_release
from controller.core.status import (
    Phase,
    ReleasedVersions,
    ReleaseStatus,
    RevisionRecord,
    main_and_own,
    versions_described,
)

COMMANDS = ("pause", "resume", "promote", "abort", "retry", "undo", "approve")
RETRYABLE = (Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED)
# Fields of one attempt that a new attempt must not inherit: cleared by retry and undo.
ONE_SHOT_CLEARED: dict[str, Any] = {"abort": False, "paused": False, "promoteFull": False,
                                    "approvePromotion": False, "skipStep": 0}


@dataclass(frozen=True)
class Planned:
    """The spec patch to send ({} when the release is already where the command would put it)."""

    message: str
    patch: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Refused:
    """The command does not apply to the release as it is now; `message` says why and what does."""

    message: str


def plan(command: str, release: Mapping[str, Any], status: ReleaseStatus, full: bool = False,
         running: Running | None = None) -> Planned | Refused:
    """The command's patch or refusal. `running`: what the stack's workloads run now, where the caller can read it
    (an undo then starts from it, not from the release's own record, which a later release may have outdated)."""
    name = str((release.get("metadata") or {}).get("name", "the release"))
    spec: Mapping[str, Any] = release.get("spec") or {}
    if spec.get("abort") is True and not status.phase.final and command not in ("retry", "undo"):
        return _aborting(name, command)
    match command:
        case "pause":
            return _pause(name, spec, status)
        case "resume":
            return _resume(name, spec, status)
        case "promote" if full:
            return _promote_full(name, status)
        case "promote":
            return _promote(name, release, spec, status)
        case "approve":
            return _approve(name, spec, status)
        case "abort":
            return _abort(name, status)
        case "retry":
            return _retry(name, spec, status)
        case "undo":
            return _undo(name, spec, status, running)
    raise ValueError(f"unknown command {command!r} (one of {', '.join(COMMANDS)})")


# --- the commands ------------------------------------------------------------------------------------

def _finished(name: str, status: ReleaseStatus, what: str) -> Refused:
    after = {Phase.SUCCEEDED: " (`canary undo` goes back to the previous version)",
             Phase.ROLLED_BACK: " (`canary retry` runs it again)", Phase.ABORTED: " (`canary retry` runs it again)",
             Phase.FAILED: " (`canary retry` runs it again)"}.get(status.phase, "")
    return Refused(f"{name} already finished ({status.phase.value}): nothing to {what}{after}")


def _aborting(name: str, command: str) -> Planned | Refused:
    """An abort asked for and not yet carried out comes first: the controller rolls the release back."""
    if command == "abort":
        return Planned(f"{name} is already being aborted")
    return Refused(f"{name} is being aborted (an abort is pending): it rolls back, so there is nothing to "
                   f"{command} (`canary retry` runs it again once it has been aborted)")


def _pause(name: str, spec: Mapping[str, Any], status: ReleaseStatus) -> Planned | Refused:
    if status.phase.final:
        return _finished(name, status, "pause")
    if status.phase in (Phase.PROMOTING, Phase.ROLLING_BACK):
        return Refused(f"{name} is {status.phase.value}: too late to pause")
    if spec.get("paused") is True:
        return Planned(f"{name} is already paused")
    if status.phase in (Phase.PENDING, Phase.INITIALIZING):
        return Planned(f"pausing {name}: it will hold at step 1 once the new version is ready", {"paused": True})
    if status.phase is Phase.SHADOWING:
        return Planned(f"pausing {name}: its shadow phase goes on (no user traffic moves in it); it will hold at "
                       "step 1 if the shadow passes", {"paused": True})
    if _ab_test(spec) is not None:
        # Paused, the experiment takes no look but its routes stay, and its clock (`durationSeconds`) runs on.
        return Planned(f"pausing {name}: its experiment takes no look until `canary resume`; its routes stay (users "
                       "keep their variants, new users are still assigned) and the pause counts towards maxDuration",
                       {"paused": True})
    return Planned(f"pausing {name} at step {status.step + 1} ({status.canary_weight}%); `canary resume` goes on",
                   {"paused": True})


def _resume(name: str, spec: Mapping[str, Any], status: ReleaseStatus) -> Planned | Refused:
    if status.phase.final:
        return _finished(name, status, "resume")
    if spec.get("paused") is not True:
        if at_gate(status):
            return Refused(f"{name} is waiting at the manual gate, not paused: `canary promote` approves it")
        if other_gate(status) is not None:
            return Refused(f"{name} is waiting at a gate ({other_gate(status)}), not paused")
        return Refused(f"{name} is not paused ({status.phase.value})")
    return Planned(f"resuming {name}", {"paused": False})


def _promote_full(name: str, status: ReleaseStatus) -> Planned | Refused:
    refused = _not_promotable(name, status)
    if refused is not None:
        return refused
    when = (" once the new version is ready" if status.phase in (Phase.PENDING, Phase.INITIALIZING) else
            " once its shadow phase passes" if status.phase is Phase.SHADOWING else " now")
    return Planned(f"promoting {name}{when}: the remaining steps and their analysis are skipped",
                   {"promoteFull": True})


def _promote(name: str, release: Mapping[str, Any], spec: Mapping[str, Any], status: ReleaseStatus
             ) -> Planned | Refused:
    refused = _not_promotable(name, status)
    if refused is not None:
        return refused
    if at_gate(status):
        return Planned(f"approved: {name} is promoted", {"approvePromotion": True})
    if status.phase is Phase.PAUSED and spec.get("paused") is True:
        return Planned(f"resuming {name} (paused by an operator); `canary promote` again skips the step's "
                       "analysis", {"paused": False})
    if status.phase is Phase.SHADOWING:
        return Refused(f"{name} is in its shadow phase: there is no step to promote yet (`canary promote --full` "
                       "promotes once the shadow passes)")
    if status.phase is not Phase.PROGRESSING:
        return Refused(f"{name} is {status.phase.value}: the new version is not ready, so there is no step to "
                       "promote yet (`canary promote --full` promotes as soon as it is)")
    if _ab_test(spec) is not None:
        # The machine skips no look of an experiment (`revisions.operator_override`): a skipStep would be ignored.
        return Refused(f"{name} is running an A/B experiment: it has no step to skip, it looks until a variant "
                       f"wins or maxDuration (`canary promote --full` promotes {_version(spec, 'canary')} now, "
                       f"ending the experiment; `canary abort` keeps {_version(spec, 'stable')})")
    number = status.step + 1
    steps = _step_count(release)
    if steps is not None and number >= steps:
        then = "promotion (or the manual gate)"
    elif steps is not None:
        then = f"step {number + 1}/{steps}"
    else:
        then = "the next step"
    return Planned(f"skipping the analysis of step {number}: {name} goes on to {then}", {"skipStep": number})


def _approve(name: str, spec: Mapping[str, Any], status: ReleaseStatus) -> Planned | Refused:
    refused = _not_promotable(name, status)
    if refused is not None:
        return refused
    if at_gate(status):
        return Planned(f"approved: {name} is promoted", {"approvePromotion": True})
    if (_ab_test(spec) or {}).get("onEnd") == "waitForOperator":
        # The experiment's end waits at the operator's gate, which an approval given before lets through at once.
        return Planned(f"approved in advance: {name} promotes {_version(spec, 'canary')} as soon as its experiment "
                       "ends, whichever variant wins or if none does (`canary abort` keeps "
                       f"{_version(spec, 'stable')})", {"approvePromotion": True})
    return Planned(f"approved in advance: {name} will not wait at a manual gate", {"approvePromotion": True})


def _not_promotable(name: str, status: ReleaseStatus) -> Refused | None:
    if status.phase.final:
        return _finished(name, status, "promote")
    other = other_gate(status)
    if other is not None:
        return Refused(f"{name} is waiting at a gate that is not the operator's ({other}): promote does not "
                       "skip it (`canary abort` rolls back)")
    if status.phase is Phase.PROMOTING:
        return Refused(f"{name} is already being promoted")
    if status.phase is Phase.ROLLING_BACK:
        return Refused(f"{name} is rolling back: it cannot be promoted (`canary retry` runs it again once it "
                       "has rolled back)")
    return None


def _abort(name: str, status: ReleaseStatus) -> Planned | Refused:
    if status.phase.final:
        return _finished(name, status, "abort")
    if status.phase is Phase.ROLLING_BACK:
        return Refused(f"{name} is already rolling back")
    return Planned(f"aborting {name}: all traffic goes back to the stable version", {"abort": True})


def _retry(name: str, spec: Mapping[str, Any], status: ReleaseStatus) -> Planned | Refused:
    if status.phase is Phase.SUCCEEDED:
        return Refused(f"{name} succeeded: nothing to retry (`canary undo` goes back to the previous version)")
    if status.phase not in RETRYABLE:
        return Refused(f"{name} is in flight ({status.phase.value}): retry applies once it has rolled back, "
                       "been aborted or failed (`canary abort` stops it)")
    current = spec.get("retry")
    count = max(current if isinstance(current, int) else 0, status.retries) + 1
    return Planned(f"retrying {name}: attempt {status.attempt + 1} of revision {status.revision} starts from the "
                   "first step", {**ONE_SHOT_CLEARED, "retry": count})


def _undo(name: str, spec: Mapping[str, Any], status: ReleaseStatus, running: Running | None = None
          ) -> Planned | Refused:
    if not status.phase.final:
        return Refused(f"{name} is in flight ({status.phase.value}): use `canary abort` to roll it back")
    target = undo_target(status, running)
    if isinstance(target, Refused):
        return Refused(f"{name}: {target.message}")
    serving, previous, services = target
    serving = entry_first(spec, serving)
    canary: dict[str, Any] = {"version": previous.version, "images": _replacing(_images(spec, "canary"),
                                                                               previous.images)}
    if not previous.images and services and "services" not in (spec.get("canary") or {}):
        canary["services"] = list(services)  # the services the successful release changed, not the whole stack
    patch = {**ONE_SHOT_CLEARED, "stable": serving.stable_field(_mapping(spec, "stable")), "canary": canary}
    # The strategy stays the spec's: an experiment's undo is another experiment, the serving version its control
    # (a `control` given must be the stable version, or the new revision's spec would not parse).
    ab_test = _ab_test(spec)
    if ab_test is not None and "control" in ab_test:
        patch["strategy"] = {"abTest": {"control": serving.version}}
    how = (f"by an A/B experiment ({serving.version} now the control, as spec.strategy.abTest says)"
           if ab_test is not None else "through the canary steps")
    return Planned(f"undo: revision {status.revision + 1} of {name} releases {previous.version} again in place of "
                   f"{serving.described()}, {how}", patch)


# --- revisions ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Running:
    """What a stack's workloads run now: each service's versions (most pods ready first) and the image each
    (service, version) runs; read by the cluster commands from the stack's Deployments."""

    versions: Mapping[str, Sequence[str]]
    images: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def over(self, ref: VersionRef) -> VersionRef:
        """`ref` (a release's record of what serves) with each service whose recorded version runs no more on the
        version that runs (`VersionRef.running`), and the images those versions run where known."""
        moved = ref.running(self.versions)
        images = {s: i for (s, v), i in self.images.items() if moved.of(s) == v}
        return _ref(moved.version, {**moved.images, **images}, moved.versions) if images else moved


@dataclass(frozen=True)
class VersionRef:
    """What a stack runs: one version, except the services in `versions`, each on its own."""

    version: str
    images: Mapping[str, str] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)

    def of(self, service: str) -> str:
        return self.versions.get(service, self.version)

    def described(self) -> str:
        return versions_described(self.version, self.versions)

    def running(self, runs: Mapping[str, Sequence[str]]) -> VersionRef:
        """This, with each service in `runs` whose version here is none of those it runs (`runs`: most pods ready
        first) on the first of them: a release's record, except where another release changed a service since."""
        moved = {s: running[0] for s, running in runs.items() if running and self.of(s) not in running}
        return _ref(self.version, self.images, {**self.versions, **moved})

    def stable_field(self, old: Mapping[str, Any]) -> dict[str, Any]:
        """`spec.stable` as a merge patch over the spec's `old` one: this version, its images and services' own
        versions (null removes what the old one had and this one does not)."""
        images, versions = _mapping(old, "images"), _mapping(old, "versions")
        patch: dict[str, Any] = {"version": self.version, "images": _replacing(images, self.images)}
        if versions or self.versions:
            patch["versions"] = _replacing(versions, self.versions) or None
        return patch


def entry_first(spec: Mapping[str, Any], ref: VersionRef) -> VersionRef:
    """`ref` as the stable part of `spec`: an A/B experiment's `spec.stable.version` is what its entry runs (its
    primary metric is counted there, and that version is its control), the other services listed by their own
    versions; a canary's stays as it is."""
    if _ab_test(spec) is None:
        return ref
    stack = _mapping(spec, "stack")
    listed = stack.get("services", list(SEARCH_STACK))  # the parser's default
    services = [s for s in listed if isinstance(s, str)] if isinstance(listed, list) else []
    entry = stack.get("entry") if isinstance(stack.get("entry"), str) else services[0] if services else None
    if entry is None or ref.of(entry) == ref.version:
        return ref
    main, own = main_and_own({**{s: ref.version for s in services}, **ref.versions}, ref.of(entry))
    return VersionRef(main, ref.images, own)


def _ref(version: str, images: Mapping[str, str], versions: Mapping[str, str]) -> VersionRef:
    """A VersionRef without the entries that repeat its main version."""
    return VersionRef(version, dict(images), {s: v for s, v in versions.items() if v != version})


def all_revisions(status: ReleaseStatus) -> list[RevisionRecord]:
    """Every revision and attempt, oldest first: the archived ones and the current one (in flight or not)."""
    records = list(status.revisions)
    if status.versions is not None:
        records.append(RevisionRecord(status.revision, status.attempt, status.versions, status.phase.value,
                                      status.started_at, status.finished_at, status.decided_at,
                                      status.first_canary_traffic_at, status.message))
    return records


def serving(versions: ReleasedVersions, outcome: Phase) -> VersionRef:
    """What serves once a revision ended: its canary if it succeeded, else its stable. A revision that changed
    part of the stack leaves the rest on its stable versions."""
    if outcome is not Phase.SUCCEEDED:
        return _ref(versions.stable, versions.stable_images, versions.stable_versions)
    if not versions.changed:
        return VersionRef(versions.canary, dict(versions.canary_images))
    return _ref(versions.stable, {**versions.stable_images, **versions.canary_images},
                {**versions.stable_versions, **{s: versions.canary for s in versions.changed}})


def undo_target(status: ReleaseStatus, running: Running | None = None
                ) -> tuple[VersionRef, VersionRef, tuple[str, ...]] | Refused:
    """(what serves now, the previous successful version, the services it changed) for a finished release.
    `running`, when known, corrects the release's record of what serves where a later release moved a service
    it did not change; where a later release moved one it changed, the undo is that release's to make."""
    if status.versions is None:
        return Refused("its status records no versions (it finished before this controller kept revisions)")
    now_serving = serving(status.versions, status.phase)
    last_good = next((r for r in reversed(all_revisions(status)) if r.outcome == Phase.SUCCEEDED.value), None)
    if last_good is None:
        return Refused(f"no earlier successful version to go back to: no revision of it succeeded "
                       f"({now_serving.version} serves, as before it started)")
    good = last_good.versions
    previous = _ref(good.stable, good.stable_images, good.stable_versions)
    services = good.changed or tuple(good.canary_images)
    if running is not None:
        now = running.over(now_serving)
        moved = [f"{s} runs {now.of(s)}, not the {now_serving.of(s)} it left" for s in services or running.versions
                 if now.of(s) != now_serving.of(s)]
        if moved:
            return Refused(f"a later release changed what it released ({'; '.join(moved)}): undo that release, or "
                           "release the version wanted")
        now_serving = now
    back = {previous.of(s) for s in services} if services else {previous.version, *previous.versions.values()}
    if len(back) > 1:
        return Refused(f"before its last successful revision the services it changed ran several versions "
                       f"({previous.described()}): an undo releases one version; write that release's spec by hand")
    if all(previous.of(s) == now_serving.of(s) for s in services) if services else previous == now_serving:
        return Refused(f"the previous successful version, {previous.described()}, is what serves now: nothing to "
                       "undo")
    images = {s: i for s, i in previous.images.items() if s in services} if services else previous.images
    return now_serving, _ref(back.pop(), images, {}), services


def next_revision_stable(status: ReleaseStatus, spec: Mapping[str, Any] | None = None) -> VersionRef | None:
    """For a new revision of a finished release (`spec`, its spec): the version that serves now is its stable."""
    if not status.phase.final or status.versions is None:
        return None
    return entry_first(spec or {}, serving(status.versions, status.phase))


# --- helpers -----------------------------------------------------------------------------------------

def at_gate(status: ReleaseStatus) -> bool:
    """At the manual gate: analysis passed, waiting for spec.approvePromotion."""
    gate = status.condition("Paused")
    return status.phase is Phase.PAUSED and gate is not None and gate.status == "True" \
        and gate.reason == "AwaitingPromotion"


def other_gate(status: ReleaseStatus) -> str | None:
    """Another gate after the last step (confirmPromotion hooks): its reason and message."""
    gate = status.condition("Paused")
    if status.phase is not Phase.PAUSED or gate is None or gate.status != "True" or at_gate(status):
        return None
    return f"{gate.reason}: {gate.message}" if gate.message else gate.reason


def _step_count(release: Mapping[str, Any]) -> int | None:
    try:
        return len(parse_release(release).strategy.steps)
    except InvalidSpec:
        return None


def _ab_test(spec: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """`spec.strategy.abTest` of an experiment's release, None for a canary's."""
    strategy = spec.get("strategy")
    ab_test = strategy.get("abTest") if isinstance(strategy, Mapping) else None
    return ab_test if isinstance(ab_test, Mapping) else None


def _version(spec: Mapping[str, Any], which: str) -> str:
    part = spec.get(which)
    return str(part.get("version")) if isinstance(part, Mapping) else which


def _images(spec: Mapping[str, Any], which: str) -> Mapping[str, Any]:
    return _mapping(_mapping(spec, which), "images")


def _mapping(m: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """`m[key]` when it is a mapping, else an empty one."""
    value = m.get(key)
    return value if isinstance(value, Mapping) else {}


def _replacing(old: Mapping[str, Any], new: Mapping[str, str]) -> dict[str, Any]:
    """A merge patch that turns the map `old` into `new`: null removes what `new` does not have."""
    return {**{k: None for k in old if k not in new}, **new}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch: objects merge key by key, null deletes."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
