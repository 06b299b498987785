"""Leases (the cluster-wide rebuild lock): one holder at a time, its owner may renew it, a
holder that stops renewing (it died) leaves it free after its time-to-live, and a released
lease is free at once. Time from an injected clock."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from downstream_node.domain.clock import FakeClock
from downstream_node.ledger import leases
from downstream_node.ledger.store import EventStore


def test_one_holder_until_it_expires_or_releases(store: EventStore, engine: Engine) -> None:
    clock = FakeClock()
    assert leases.try_take(engine, "job", "a", clock=clock, ttl=60) is None
    clock.advance(30)
    held = leases.try_take(engine, "job", "b", clock=clock, ttl=60)
    assert held is not None and held.owner == "a"
    assert leases.try_take(engine, "job", "a", clock=clock, ttl=60) is None  # renewed to t=90
    clock.advance(59)
    assert leases.try_take(engine, "job", "b", clock=clock, ttl=60) is not None
    clock.advance(2)  # a stopped renewing 61 s ago: it died, the lease is free
    assert leases.try_take(engine, "job", "b", clock=clock, ttl=60) is None
    assert leases.try_take(engine, "other job", "a", clock=clock, ttl=60) is None  # per name
    leases.release(engine, "job", "b")
    assert leases.try_take(engine, "job", "c", clock=clock, ttl=60) is None
