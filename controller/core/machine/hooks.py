"""Where a release calls its hooks, and what their answers do to it. Pure: data in, data out.

The reconciler asks `due(spec, status)` which hooks to call before a tick's step, calls them (the edge,
`controller.adapters.http.hooks.HttpHooks`) and hands the results to the machine in the observation; the machine keeps
them in `status.hooks` with `record` and reads them back:

- `preRollout` (gate): called while the release is Pending, before anything is deployed. All must pass
  for the release to start; one that fails after its retries fails the release (nothing was deployed,
  no route was touched). An `ignore` failure policy turns a failure into a pass (see `controller.adapters.http.hooks`).
- `confirmPromotion` (gate): once the analysis passed, the release waits (Paused, reason
  AwaitingConfirmation) and asks every tick until each such hook answers exactly 200.
- `onRollback`: called once when a rollback of a started release begins; `postRollout`: called once after
  a promotion. Their answers change nothing but are recorded and a failure is announced.
- `loadTest`: fired (not awaited) whenever a new analysis window opens, see `load_tests_to_fire`.

Delivery is at least once: a controller that dies between a call and the status write calls again, so
every payload carries an `id` that stays the same for the same hook of the same release run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from controller.core.spec.hooks import HookKind, HookResult, HookSpec
from controller.core.spec.release import ReleaseSpec
from controller.core.status import Phase, ReleaseStatus

AWAITING_CONFIRMATION = "AwaitingConfirmation"
_ROLLED_BACK = (Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED)


def due(spec: ReleaseSpec, status: ReleaseStatus) -> tuple[HookSpec, ...]:
    """The hooks to call before this tick's step."""
    if status.phase is Phase.PENDING:
        return tuple(h for h in spec.hooks_of(HookKind.PRE_ROLLOUT) if not passed(status, h))
    if awaiting_confirmation(status):
        return tuple(h for h in spec.hooks_of(HookKind.CONFIRM_PROMOTION) if not passed(status, h))
    if status.phase in _ROLLED_BACK and status.started_at is not None:
        return tuple(h for h in spec.hooks_of(HookKind.ON_ROLLBACK) if h.name not in status.hooks)
    if status.phase is Phase.SUCCEEDED:
        return tuple(h for h in spec.hooks_of(HookKind.POST_ROLLOUT) if h.name not in status.hooks)
    return ()


def passed(status: ReleaseStatus, hook: HookSpec) -> bool:
    return bool(status.hooks.get(hook.name, {}).get("passed"))


def awaiting_confirmation(status: ReleaseStatus) -> bool:
    gate = status.condition("Paused")
    return status.phase is Phase.PAUSED and gate is not None and gate.status == "True" \
        and gate.reason == AWAITING_CONFIRMATION


def record(status: ReleaseStatus, results: Mapping[str, HookResult], now: float) -> ReleaseStatus:
    """Keep this tick's hook answers in the status (the latest answer per hook)."""
    if not results:
        return status
    hooks = dict(status.hooks)
    for name, result in results.items():
        hooks[name] = {"passed": result.passed, "status": result.status, "reason": result.reason, "at": now,
                       "attempts": result.attempts, "calls": int(hooks.get(name, {}).get("calls", 0)) + 1}
    return replace(status, hooks=hooks)


def failures(spec: ReleaseSpec, results: Mapping[str, HookResult], kinds: tuple[HookKind, ...]
             ) -> list[str]:
    """`name: reason` of this tick's failed answers of hooks of these kinds."""
    kind_of = {h.name: h.kind for h in spec.hooks}
    return [f"{name}: {r.reason}" for name, r in results.items() if not r.passed and kind_of.get(name) in kinds]


def _answers(spec: ReleaseSpec, status: ReleaseStatus, kind: HookKind) -> list[tuple[str, Mapping[str, Any] | None]]:
    """Each hook of this kind with its recorded answer (None: not called yet in this release)."""
    return [(hook.name, status.hooks.get(hook.name)) for hook in spec.hooks_of(kind)]


def pre_rollout_gate(spec: ReleaseSpec, status: ReleaseStatus) -> tuple[str, str]:
    """("open" | "waiting" | "failed", why): open when every preRollout hook passed; failed when one
    answered and did not pass (its retries and failure policy already applied)."""
    answers = _answers(spec, status, HookKind.PRE_ROLLOUT)
    failed = [f"{name}: {a.get('reason', 'failed')}" for name, a in answers if a is not None and not a.get("passed")]
    if failed:
        return "failed", "; ".join(failed)
    waiting = [f"{name}: not called yet" for name, a in answers if a is None]
    return ("waiting", "; ".join(waiting)) if waiting else ("open", "")


def confirmation_gate(spec: ReleaseSpec, status: ReleaseStatus) -> tuple[bool, str]:
    """(open, why not): open when every confirmPromotion hook answered 200 in this release."""
    waiting = [f"{name}: not asked yet" if a is None else f"{name}: {a.get('reason', 'no answer')}"
               for name, a in _answers(spec, status, HookKind.CONFIRM_PROMOTION) if a is None or not a.get("passed")]
    return not waiting, "; ".join(waiting)


def load_tests_to_fire(spec: ReleaseSpec, old: ReleaseStatus, new: ReleaseStatus) -> tuple[HookSpec, ...]:
    """Load tests start with every analysis window: a new step, a resume, or the window after a look."""
    if new.phase is not Phase.PROGRESSING:
        return ()
    # A window is open once `last_analysis_at` is set: a step still scaling its capacity has none yet.
    opened = new.last_analysis_at is not None and (
        old.phase is not Phase.PROGRESSING or new.last_analysis_at != old.last_analysis_at)
    return spec.hooks_of(HookKind.LOAD_TEST) if opened else ()


def run_id(spec: ReleaseSpec, status: ReleaseStatus, hook: HookSpec) -> str:
    """Stable across repeated calls of one hook in one run of the release (receivers may deduplicate)."""
    started = "pending" if status.started_at is None else f"{status.started_at:.3f}"
    return f"{spec.namespace}/{spec.name}/{started}/{hook.name}"


def payload(spec: ReleaseSpec, status: ReleaseStatus, hook: HookSpec) -> dict[str, Any]:
    """What every hook is told about the release (the caller adds `hook`, `kind` and `metadata`)."""
    return {
        "id": run_id(spec, status, hook),
        "release": spec.name, "namespace": spec.namespace, "generation": spec.generation,
        "phase": status.phase.value, "step": status.step, "canaryWeight": status.canary_weight,
        "stable": {"version": spec.stable.version, "images": dict(spec.stable.images),
                   **({"versions": dict(spec.stable.versions)} if spec.stable.versions else {})},
        "canary": {"version": spec.canary.version, "images": dict(spec.canary.images)},
        "services": list(spec.changed), "lastVerdict": status.last_verdict, "message": status.message,
    }
