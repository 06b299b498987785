"""Guarded appends (another stream must still be at a version) and reading by request id.

A guard is how the node keeps two aggregates consistent without a lock outside the database:
an answer on a contract stream requires its token's stream unchanged, so it cannot be
recorded after the token's deletion, whichever process appends first.
"""

from __future__ import annotations

import datetime as dt

import pytest

from downstream_node.ledger.store import (
    AppendRequest,
    AppendResult,
    ConcurrencyConflict,
    EventStore,
    NewEvent,
)
from downstream_node.ledger.verify import verify_chain

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def ev(n: int = 0) -> NewEvent:
    return NewEvent("test.happened", 1, {"n": n}, T0 + dt.timedelta(seconds=n))


def test_a_guard_that_holds_lets_the_append_through(store: EventStore) -> None:
    store.append("token-a", 0, [ev(1)])
    done = store.append("contract-1", 0, [ev(2)], guards={"token-a": 1, "never-written": 0})
    assert done.positions == (2,)


def test_a_moved_guard_writes_nothing_and_leaves_no_hole(store: EventStore) -> None:
    store.append("token-a", 0, [ev(1)])
    store.append("token-a", 1, [ev(2)])  # e.g. the token was deleted meanwhile
    with pytest.raises(ConcurrencyConflict) as refused:
        store.append("contract-1", 0, [ev(3)], guards={"token-a": 1})
    assert (refused.value.stream_id, refused.value.expected, refused.value.actual) == (
        "token-a",
        1,
        2,
    )
    assert store.stream_version("contract-1") == 0
    assert store.append("contract-1", 0, [ev(4)]).positions == (3,)
    assert verify_chain(store.engine).ok


def test_guards_see_earlier_requests_of_the_same_batch(store: EventStore) -> None:
    store.append("token-a", 0, [ev(1)])
    outcomes = store.append_batch(
        [
            AppendRequest("token-a", 1, [ev(2)]),  # the deletion wins the batch
            AppendRequest("contract-1", 0, [ev(3)], guards={"token-a": 1}),
            AppendRequest("contract-2", 0, [ev(4)], guards={"token-a": 2}),
        ]
    )
    assert isinstance(outcomes[0], AppendResult)
    assert isinstance(outcomes[1], ConcurrencyConflict)
    assert isinstance(outcomes[2], AppendResult) and outcomes[2].positions == (3,)


def test_bad_guards_are_refused_before_any_write() -> None:
    for guards in ({"": 0}, {"x" * 161: 0}, {"s ": 0}):
        with pytest.raises(ValueError):
            AppendRequest("s", 0, [ev()], guards=guards)
    assert AppendRequest("s", 0, [ev()], guards=[("a", 1)]).guards == (("a", 1),)


def test_read_request_returns_what_the_request_id_recorded(store: EventStore) -> None:
    store.append("s", 0, [ev(1), ev(2)], request_id="req-1")
    again = store.append("s", None, [ev(9)], request_id="req-1")
    assert again.duplicate and again.positions == (1, 2)
    recorded = store.read_request("req-1")
    assert [(e.position, e.payload["n"]) for e in recorded] == [(1, 1), (2, 2)]
    assert store.read_request("unknown") == []
