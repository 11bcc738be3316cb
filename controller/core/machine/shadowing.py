"""The shadow phase (docs/shadow.md): between Initializing and the first canary step, no user traffic on the new
version; a share of the searches is mirrored to the comparator, and its pairs of rankings are judged.

`begin` enters the phase; `look` folds the comparator's new pairs into the judge's state kept in the status and
says what the judge decided; `transition` acts on it (fail: roll back; pass: the first step; no decision by
`maxDuration`: `policies.onInconclusive`). The comparator is read with a cursor (its epoch and the last pair
read), so a pair is judged once, a restarted controller goes on where its status says, and a restarted
comparator (a new epoch) is read from its first pair. The phase's first look reads only where the comparator
stands: pairs it made before this release mirrored anything are not this release's evidence. A pair is judged
only when every answer was served by the version it stands for (`x-served-by`, on the services the release
changes), so a route not yet in effect, or a comparator pointed at the wrong place, never passes a shadow phase.
Pure: data in, data out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from analysis.shadow import ShadowVerdict, fold, judge, new_state
from controller.core.machine.actions import Notify, Outcome
from controller.core.machine.moves import first_step, hold_inconclusive, roll_back
from controller.core.observation import MirroredPair, Observation, ShadowBatch, served_path
from controller.core.spec.release import ReleaseSpec
from controller.core.status import Phase, ReleaseStatus

# The status of a shadow phase at its first tick: nothing read, nothing judged.
_FIRST_CURSOR = ("", -1)


def begin(spec: ReleaseSpec, status: ReleaseStatus, now: float) -> Outcome:
    """Enter the shadow phase: the routes mirror searches to the comparator from the next write on."""
    assert spec.shadow is not None
    shadow = {"since": now, "epoch": _FIRST_CURSOR[0], "after": _FIRST_CURSOR[1], "state": new_state(),
              "foreign": 0, "verdict": None}
    routes = spec.shadow.routes
    message = (f"shadow: {routes.percent:g}% of searches mirrored to {routes.comparator}; comparing the rankings "
               f"of {spec.canary.version} with {spec.stable_described()}'s")
    status = replace(status, shadow=shadow)
    return Outcome(status.with_phase(Phase.SHADOWING, now, message), (Notify("ShadowStarted", message),))


def cursor(status: ReleaseStatus) -> tuple[str, int]:
    """Where the next look reads the comparator from."""
    shadow = status.shadow or {}
    return str(shadow.get("epoch", _FIRST_CURSOR[0])), int(shadow.get("after", _FIRST_CURSOR[1]))


@dataclass(frozen=True)
class Look:
    """A look's result: the status with the pairs folded in, and the judge's verdict on them."""

    status: ReleaseStatus
    verdict: ShadowVerdict
    overdue: bool


def look(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> Look:
    assert spec.shadow is not None
    shadow: dict[str, Any] = dict(status.shadow or {})
    if obs.shadow is not None:
        shadow = _read(spec, shadow, obs.shadow)
        shadow.pop("error", None)
    elif obs.shadow_error is not None:
        shadow["error"] = obs.shadow_error
    verdict = judge(shadow["state"], spec.shadow.judge)
    shadow["verdict"] = verdict.to_dict()
    overdue = now - float(shadow.get("since", now)) >= spec.shadow.max_duration
    return Look(replace(status, shadow=shadow), verdict, overdue)


def _read(spec: ReleaseSpec, shadow: dict[str, Any], batch: ShadowBatch) -> dict[str, Any]:
    """The shadow's record after a look at the comparator."""
    shadow.update(mirrored=batch.mirrored, dropped=batch.dropped, unanswered=dict(batch.unanswered),
                  latencyMs={side: None if v is None else dict(v) for side, v in batch.latency_ms.items()})
    first = shadow["after"] == _FIRST_CURSOR[1] and shadow["epoch"] == _FIRST_CURSOR[0]
    if first:
        return {**shadow, "epoch": batch.epoch, "after": batch.head}
    own = [p for p in batch.pairs if served_as_asked(spec, p)]
    state = fold(shadow["state"], (p.pair for p in own))
    return {**shadow, "epoch": batch.epoch, "after": batch.head, "state": state,
            "foreign": int(shadow.get("foreign", 0)) + len(batch.pairs) - len(own),
            "scoreDrift": _drift(shadow.get("scoreDrift"), own)}


def _drift(before: Mapping[str, Any] | None, pairs: list[MirroredPair]) -> dict[str, Any]:
    """The score drift's running sums (extra evidence, not judged): pairs with one, the sum of new-against-stable
    and of stable-against-itself, and the means."""
    sums = dict(before or {"n": 0, "sum": 0.0, "noiseSum": 0.0})
    for p in pairs:
        if p.score_drift is not None and p.score_drift_noise is not None:
            sums["n"] += 1
            sums["sum"] += p.score_drift
            sums["noiseSum"] += p.score_drift_noise
    n = sums["n"]
    return {**sums, "mean": sums["sum"] / n if n else None, "noiseMean": sums["noiseSum"] / n if n else None}


def transition(spec: ReleaseSpec, status: ReleaseStatus, obs: Observation, now: float) -> Outcome:
    """Judge the comparator's new pairs: fail ends the release before any user traffic moved; pass goes to the
    first step; with `enforce: false` the phase records for `maxDuration` and goes on."""
    assert spec.shadow is not None
    broken = {s: r for s, r in (obs.readiness or {}).items() if r.failed}
    if broken:
        why = "; ".join(f"{s}: {r.reason}" for s, r in broken.items())
        return roll_back(status, now, Phase.FAILED, "CanaryFailed", f"new version cannot serve: {why}")
    if obs.shadow is None and obs.shadow_error is None:
        return Outcome(status)
    seen = look(spec, status, obs, now)
    status, verdict, line = seen.status, seen.verdict, headline(seen.verdict)
    if verdict.decision == "fail":
        status = status.with_condition("Shadow", "False", "RankingsDiffer", f"{verdict.reason}: {line}", now)
        return roll_back(status, now, Phase.ROLLED_BACK, "ShadowFailed", f"shadow: {verdict.reason}; {line}",
                         decided=True)
    if verdict.decision == "pass" or (seen.overdue and not spec.shadow.judge.enforce):
        reason = "Passed" if verdict.decision == "pass" else "Recorded"
        status = status.with_condition("Shadow", "True", reason, f"{verdict.reason}: {line}", now)
        return first_step(spec, status, now).after(Notify(f"Shadow{reason}", f"{verdict.reason}: {line}"))
    if seen.overdue:
        return _shadow_overdue(spec, status, f"{verdict.reason}: {line}", now)
    if obs.shadow_error is not None:
        status = status.with_condition("Shadow", "Unknown", "ComparatorUnreachable", obs.shadow_error, now)
    return Outcome(status.with_phase(Phase.SHADOWING, now, f"shadow: {line}"))


def _shadow_overdue(spec: ReleaseSpec, status: ReleaseStatus, why: str, now: float) -> Outcome:
    """No decision by `maxDuration`: roll back, continue to the first step, or hold and keep comparing."""
    match spec.policies.on_inconclusive:
        case "rollback":
            return roll_back(status, now, Phase.ROLLED_BACK, "ShadowInconclusive",
                             f"shadow: no decision by maxDuration: {why}", decided=True)
        case "continue":
            status = status.with_condition("Shadow", "Unknown", "Inconclusive", why, now)
            return first_step(spec, status, now).after(
                Notify("ShadowInconclusive", f"continuing to the first step without a shadow pass: {why}", True))
        case _:
            held = hold_inconclusive(status, "Shadow", "holding in the shadow phase", why, now)
            return Outcome(held.status.with_phase(Phase.SHADOWING, now, f"shadow (past maxDuration): {why}"),
                           held.actions)


def served_as_asked(spec: ReleaseSpec, mirrored: MirroredPair) -> bool:
    """Whether each answer of a pair was served by its side's version on every changed service it names."""
    def wanted(side: str, service: str) -> str:
        return spec.canary.version if side == "new" else spec.stable_version_of(service)
    return all(served == wanted(side, service) for side in ("stable", "stableAgain", "new")
               for service, served in served_path(mirrored.served.get(side, "")) if service in spec.changed)


def headline(verdict: ShadowVerdict) -> str:
    """One line for the status message: pairs, mean overlap and its bounds."""
    if verdict.mean_overlap is None:
        return "no pairs compared yet"
    low, high = verdict.difference_bounds
    return (f"{verdict.pairs} pairs, mean RBO {verdict.mean_overlap:.3f} (stable with itself "
            f"{verdict.mean_noise:.3f}), difference {verdict.difference:.3f} in [{low:.3f}, {high:.3f}], "
            f"margin {verdict.margin:.3f}")
