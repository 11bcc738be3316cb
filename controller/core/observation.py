"""What a tick observed of the outside world, as plain data the pure machine reads.

The ports (`controller.ports`) return these types; the machine (`controller.core.machine`) decides on them.
They live in the core so that the core never imports the ports.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str = ""
    # True when the workload can no longer become ready (crash loop, progress deadline exceeded).
    failed: bool = False
    # False when the workload does not exist (yet): the controller has not created it, e.g. it was down.
    exists: bool = True
