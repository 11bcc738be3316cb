"""What a tick observes of the outside world, as plain data the pure machine reads.

`Wants` is what the machine asks the reconciler to look at before a step; `Observation` is what the
reconciler saw; `Readiness` is one workload's readiness, and `combined_readiness` the rule that folds the
readiness of an A/B/n experiment's variants into that of the new version. The ports (`controller.ports`)
return these types; the machine (`controller.core.machine`) decides on them. They live in the core so that
the core never imports the ports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from analysis.abtest import PrimaryCounts
from analysis.observations import WindowCounts
from analysis.shadow import ShadowPair
from controller.core.plan import RoutingPlan
from controller.core.spec.hooks import HookResult, HookSpec


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str = ""
    # True when the workload can no longer become ready (crash loop, progress deadline exceeded).
    failed: bool = False
    # False when the workload does not exist (yet): the controller has not created it, e.g. it was down.
    exists: bool = True
    # Pods ready now, when the platform counts them (a Deployment does; None: unknown). With a count, a
    # workload short of pods that still has some is scaling or healing (held); with none ready it is lost.
    ready_replicas: int | None = None
    # Other versions of the same service with pods ready, when the platform can tell (Deployments can): for a
    # stable version that does not exist or serves nothing, what serves that service instead.
    others_ready: tuple[str, ...] = ()

    @property
    def lost(self) -> bool:
        """Serving nothing: not ready and no pod ready (or no count to tell scaling from lost)."""
        return not self.ready and not self.ready_replicas


def combined_readiness(canary: Readiness, variants: Iterable[tuple[str, Readiness]]) -> Readiness:
    """The new version's readiness on one service: with A/B/n variants, ready only when every variant is
    (and failed when one of them failed), so the experiment starts when all can serve and stops when one dies.

    `variants` ((version, readiness) pairs) is read in order and only as far as it decides: a lazy iterable
    asks no variant once the canary is not ready, and none after the first variant that is not.
    """
    if not canary.ready:
        return canary
    for version, r in variants:
        if r.failed or not r.ready:
            return Readiness(False, f"variant {version}: {r.reason or 'not ready'}", failed=r.failed,
                             ready_replicas=r.ready_replicas)
    return canary


@dataclass(frozen=True)
class Wants:
    """What the reconciler should observe before the next step."""

    readiness: bool
    routing: bool
    metrics_window: tuple[float, float] | None
    hooks: tuple[HookSpec, ...] = ()
    # A shadow phase: the comparator's pairs after this cursor (its epoch, the last sequence number read;
    # -1: none yet, so only where it stands now). None: not asked.
    shadow_after: tuple[str, int] | None = None
    # The stable version's metrics before the release, one window per interval, oldest first (read once, while
    # the new version starts: `SequentialJudge.prime`). Empty: not asked.
    history_windows: tuple[tuple[float, float], ...] = ()
    # A promotion's or rollback's drain: the (service, version) workloads of the lane the cutover retires, whose
    # requests still in flight the mesh should count (`machine.phases`, "draining"). Empty: not asked.
    in_flight: tuple[tuple[str, str], ...] = ()
    # A release about to start: the stable version's workloads of every service of the stack, whose stable subsets
    # its first routes point at (`phases._stable_not_serving`).
    stable_readiness: bool = False


def served_path(header: str) -> tuple[tuple[str, str], ...]:
    """The (service, version) pairs of an `x-served-by` header (`master-search@v2,ml-infer@v2,...`), in order;
    entries without a version are left out."""
    return tuple((service, version) for service, _, version in (e.strip().partition("@") for e in header.split(","))
                 if version)


@dataclass(frozen=True)
class MirroredPair:
    """One search the comparator paired: the three rankings, and per answer (`stable`, `stableAgain`, `new`)
    the versions that served it along its path (the `x-served-by` header, "" when the stack sends none)."""

    pair: ShadowPair
    served: Mapping[str, str] = field(default_factory=dict)
    # How much the scores of the documents both answers rank moved (mean relative change): new against stable,
    # and stable's second answer against its first (the noise); None when the answers share no document.
    score_drift: float | None = None
    score_drift_noise: float | None = None


@dataclass(frozen=True)
class ShadowBatch:
    """What the comparator answered to one look: its epoch (a new one after a restart: its numbering starts
    again), the sequence number of its last pair (`head`), the pairs after the cursor asked for, and its
    counters since it started: searches mirrored to it, dropped (its queue was full), and answers missing
    per side; with each side's latency (p50 and p90 in milliseconds, None before any answer)."""

    epoch: str
    head: int
    pairs: tuple[MirroredPair, ...] = ()
    mirrored: int = 0
    dropped: int = 0
    unanswered: Mapping[str, int] = field(default_factory=dict)
    latency_ms: Mapping[str, Mapping[str, float] | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Peer:
    """Another release of the same namespace, as far as route and workload ownership goes: the services it
    changes and those of its stack, when it was created (RFC 3339, as the API server writes it), when its
    current run started (None: not started), and whether it has finished."""

    name: str
    services: frozenset[str]
    created: str
    started_at: float | None
    final: bool
    # The services of its stack (`spec.stack.services`): the routes it writes while in flight cover them all.
    # Empty: not known (then `services`).
    stack: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Observation:
    """What the reconciler saw this tick. None means "not looked at" (or the look failed, see *_error)."""

    readiness: Mapping[str, Readiness] | None = None
    routing: RoutingPlan | None = None
    routing_error: str | None = None
    metrics: WindowCounts | None = None
    metrics_error: str | None = None
    # A/B experiments: the primary metric's counts per version over the same window.
    business: Mapping[str, PrimaryCounts] | None = None
    business_error: str | None = None
    # The namespace's other releases (None: this runner runs one release at a time, or the look failed),
    # and this release's own creationTimestamp (orders releases created one after the other).
    peers: tuple[Peer, ...] | None = None
    created: str = ""
    # Answers of the hooks `wants` asked for, by hook name.
    hooks: Mapping[str, HookResult] = field(default_factory=dict)
    # A shadow phase's look at the comparator.
    shadow: ShadowBatch | None = None
    shadow_error: str | None = None
    # The windows of `Wants.history_windows`, in order (None: not asked, or the look failed: history_error).
    history: tuple[WindowCounts, ...] | None = None
    history_error: str | None = None
    # Requests still in flight on the workloads of `Wants.in_flight` (None: not asked, or the mesh cannot tell).
    in_flight: int | None = None
    # The stable version's readiness per service of the stack (`Wants.stable_readiness`; None: not asked, or the
    # look failed).
    stable: Mapping[str, Readiness] | None = None
