"""The headline numbers of a release (`summary`), for CLIs and the demo's summary."""

from __future__ import annotations

from typing import Any

from controller.core.status import ReleaseStatus


def summary(status: ReleaseStatus) -> dict[str, Any]:
    """The headline numbers of a release, for CLIs and the demo's summary."""
    decision_seconds = off_seconds = None
    if status.decided_at is not None and status.first_canary_traffic_at is not None:
        decision_seconds = status.decided_at - status.first_canary_traffic_at
    if status.canary_off_at is not None and status.first_canary_traffic_at is not None:
        off_seconds = status.canary_off_at - status.first_canary_traffic_at
    return {
        "phase": status.phase.value,
        "step": status.step,
        "canary_weight": status.canary_weight,
        "last_verdict": status.last_verdict,
        "decision_seconds": decision_seconds,
        # From the canary's first traffic until the mesh read back 0% into the canary lane.
        "canary_off_seconds": off_seconds,
        "canary_requests": status.total_canary_requests,
        "message": status.message,
    } | ({"experiment": dict(status.experiment)} if status.experiment is not None else {})
