"""Leader election when the replicas' clocks disagree: expiry is timed on the follower's own clock.

A Lease's `renewTime` is written with the holder's clock. A follower that compared it with its own clock
would take a lease still being renewed from a holder whose clock is behind, and wait far too long for one
whose clock is ahead. Like client-go, the follower notes on its own clock when it saw the lease record
change and takes it over `leaseDurationSeconds` after that. Against the API emulator, on fake clocks.
"""

from __future__ import annotations

import pytest

from controller.adapters.kubernetes.client import LEASES, KubeApi
from controller.adapters.kubernetes.leader import LeaseElector, parse_time
from tests.support.fakes import FakeClock
from tests.support.kmock_server import RunningEmulator

NS = "stack-canary-system"
LEASE_S, RETRY_S = 15.0, 2.0


class SkewedClock:
    """Another replica's wall clock: the shared fake time, `offset` seconds off."""

    def __init__(self, base: FakeClock, offset: float) -> None:
        self.base, self.offset = base, offset

    def now(self) -> float:
        return self.base.now() + self.offset

    def sleep(self, seconds: float) -> None:
        self.base.sleep(seconds)


def elector(emulator: RunningEmulator, identity: str, clock: FakeClock | SkewedClock,
            local: FakeClock | None = None) -> LeaseElector:
    return LeaseElector(KubeApi.for_url(emulator.url), NS, identity, clock, lease_duration=LEASE_S,
                        renew_deadline=10.0, retry_period=RETRY_S, local_clock=local.now if local else None)


@pytest.mark.parametrize("skew", [-60.0, 60.0], ids=["holder-60s-behind", "holder-60s-ahead"])
def test_a_skewed_holder_keeps_its_lease_while_it_renews_and_loses_it_one_lease_after_it_stops(
        emulator: RunningEmulator, skew: float) -> None:
    clock = FakeClock()
    holder = elector(emulator, "replica-a", SkewedClock(clock, skew))
    follower = elector(emulator, "replica-b", clock)
    assert holder.try_acquire_or_renew()
    written = parse_time(KubeApi.for_url(emulator.url).get(LEASES, NS, holder.name)["spec"]["renewTime"])
    assert written is not None and abs(written - (clock.now() + skew)) < 0.01  # the holder's clock, 60 s off
    for _ in range(20):  # 40 s of renewals every retry period: the follower never takes the lease
        assert not follower.try_acquire_or_renew()
        clock.sleep(RETRY_S)
        assert holder.try_acquire_or_renew()
    last_renewal = clock.now()  # the holder stops here (it died)
    for _ in range(30):  # the follower looks every retry period; 60 s is plenty
        if follower.try_acquire_or_renew():
            break
        clock.sleep(RETRY_S)
    took = clock.now() - last_renewal
    # Not before a whole lease duration after the last renewal it saw, and within one retry period of that.
    assert LEASE_S <= took <= LEASE_S + RETRY_S, took
    lease = KubeApi.for_url(emulator.url).get(LEASES, NS, holder.name)["spec"]
    assert lease["holderIdentity"] == "replica-b" and lease["leaseTransitions"] == 1
    assert follower.is_leader() and not holder.try_acquire_or_renew()


def test_a_follower_that_first_sees_a_lease_waits_a_whole_lease_duration(emulator: RunningEmulator) -> None:
    """A lease whose renewTime is long past (the holder's clock 60 s behind) is not expired for a replica
    that has only just seen it: it may still be renewed."""
    clock = FakeClock()
    assert elector(emulator, "replica-a", SkewedClock(clock, -60.0)).try_acquire_or_renew()
    follower = elector(emulator, "replica-b", clock)
    assert not follower.try_acquire_or_renew()
    clock.sleep(LEASE_S - 1)
    assert not follower.try_acquire_or_renew()
    clock.sleep(1)
    assert follower.try_acquire_or_renew()


def test_a_step_of_the_wall_clock_neither_ends_a_leadership_nor_starts_a_takeover(emulator: RunningEmulator) -> None:
    """The election's intervals run on the replica's own steady clock (`time.monotonic` in the process): a
    wall clock set an hour ahead (NTP, an operator) changes only the times written into the Lease."""
    wall_a, steady_a, wall_b, steady_b = FakeClock(), FakeClock(), FakeClock(), FakeClock()
    holder = elector(emulator, "replica-a", wall_a, steady_a)
    follower = elector(emulator, "replica-b", wall_b, steady_b)
    assert holder.try_acquire_or_renew() and not follower.try_acquire_or_renew()
    wall_a.sleep(3600)
    wall_b.sleep(3600)
    steady_b.sleep(1)
    assert holder.is_leader()
    assert not follower.try_acquire_or_renew()
    steady_a.sleep(RETRY_S)
    assert holder.try_acquire_or_renew()
    steady_b.sleep(LEASE_S - 1)  # a lease after its first look, but it saw the holder renew since
    assert not follower.try_acquire_or_renew()


def test_a_local_clock_stepped_back_does_not_extend_a_leadership(emulator: RunningEmulator) -> None:
    """Without a steady clock the election's intervals run on the wall clock. One stepped back after the last
    renewal would make "renewed 2 s ago" read as "renewed just now" for as long as the step: a replica cut off
    from the API server would go on writing past its renew deadline. It stops calling itself leader until it
    renews again instead."""
    clock = FakeClock()
    holder = elector(emulator, "replica-a", clock)
    assert holder.try_acquire_or_renew() and holder.is_leader()
    clock.sleep(9.0)
    assert holder.is_leader()  # 9 s of the 10 s renew deadline
    clock.sleep(-5.0)  # the clock is stepped back 5 s: still 4 s after the renewal, which it may count
    assert holder.is_leader()
    clock.sleep(-5.0)  # now 1 s before the renewal: how long ago it renewed is unknown
    assert not holder.is_leader()
    assert holder.try_acquire_or_renew() and holder.is_leader()  # the next renewal restores it
