"""Leadership on the replica's own clock: when it may act on Asterisk."""

from __future__ import annotations

from ari_broadcast_proxy.cluster.lease import DRIFT_MARGIN, LEASE_TTL, Lease


def test_a_new_lease_does_not_act() -> None:
    lease = Lease("r1")
    assert not lease.leading
    assert not lease.holds(0.0)
    assert not lease.lapsed(0.0)


def test_a_grant_counts_from_when_it_was_asked_less_the_drift_margin() -> None:
    lease = Lease("r1")
    lease.granted(sent_at=10.0)
    assert lease.holds(10.0 + LEASE_TTL - DRIFT_MARGIN - 0.001)
    assert not lease.holds(10.0 + LEASE_TTL - DRIFT_MARGIN)
    assert lease.lapsed(10.0 + LEASE_TTL - DRIFT_MARGIN)


def test_a_replica_frozen_past_its_lease_acts_on_nothing_when_it_wakes() -> None:
    lease = Lease("r1")
    lease.granted(sent_at=10.0)
    woke = 10.0 + 30  # SIGSTOP for 30 s: still "leading", but not holding
    assert lease.leading and not lease.holds(woke)


def test_a_renewal_extends_and_a_loss_ends_at_once() -> None:
    lease = Lease("r1")
    lease.granted(sent_at=10.0)
    lease.granted(sent_at=11.5)
    assert lease.holds(11.5 + LEASE_TTL - DRIFT_MARGIN - 0.001)
    lease.lost()
    assert not lease.leading and not lease.holds(11.6)


def test_every_acquisition_has_a_token_of_its_own() -> None:
    lease = Lease("r1")
    tokens = {lease.new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(t.startswith("r1:") for t in tokens)
    assert lease.ttl_ms == int(LEASE_TTL * 1000)
