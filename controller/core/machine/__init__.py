"""The release state machine: `step(spec, status, observation, now) -> (status, actions)`. Pure: it reads
no clock and calls no network.

Phases: Pending -> Initializing (-> Shadowing) -> Progressing (<-> Paused) -> Promoting -> Succeeded, or
-> RollingBack -> RolledBack | Aborted | Failed. Failed also ends a release whose spec is invalid before
it started; an invalid spec on a release in flight holds it where it is (see `invalid_spec`).

This `__init__` is only the package's face: it re-exports the public API. The machine itself lives in
its modules, each importing its siblings directly (never this package), lowest first:

- `actions`: the `Action` types the reconciler carries out, and `Outcome` (a transition's decision);
- `routes`: `base_plan`, `desired_plan` (the routes a status calls for); `world`: the idempotent
  workload and routing actions of every tick;
- `hooks`: where a release calls its hooks and what their answers do;
- `analysing`: judging an analysis window; `moves`: entering a step, promoting (or gating), rolling back;
- `capacity`: the new version scaled for a weight before it gets it, and held (not rolled back) while short
  of ready pods, until the progress deadline;
- `experiment`: the A/B experiment's looks; `shadowing`: the shadow phase (mirrored searches' rankings judged
  before the first step); `revisions`: restarts and the operator's overrides;
- `phases`: the canary's transition per phase; `step`: `wants`, `step`, `invalid_spec`;
- `requeue`: when a release wants its next tick; `headline`: `summary`, a release's headline numbers.
"""

from __future__ import annotations

from controller.core.machine.actions import (
    Action,
    ApplyRouting,
    EnsureWorkloads,
    FireHook,
    Notify,
    Outcome,
    RetireWorkloads,
)
from controller.core.machine.analysing import analysis_config, history_windows, settled_for
from controller.core.machine.capacity import capacity_weight
from controller.core.machine.headline import summary
from controller.core.machine.requeue import requeue_after
from controller.core.machine.routes import base_plan, desired_plan
from controller.core.machine.step import invalid_spec, step, wants
from controller.core.observation import Observation, Readiness, Wants

__all__ = [
    "Action", "ApplyRouting", "EnsureWorkloads", "FireHook", "Notify", "Observation", "Outcome", "Readiness",
    "RetireWorkloads", "Wants", "analysis_config", "base_plan", "capacity_weight", "desired_plan", "history_windows",
    "invalid_spec", "requeue_after", "settled_for", "step", "summary", "wants",
]
