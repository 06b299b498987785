"""The store remembers stream versions from its own commits, as of the head position they left;
another writer moving the head (another process: another store on the same database) makes it
ask the database again, so optimistic concurrency holds across processes as before."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from downstream_node.ledger.db import make_engine
from downstream_node.ledger.store import ConcurrencyConflict, EventStore, NewEvent

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def ev(n: int) -> NewEvent:
    return NewEvent("test.happened", 1, {"n": n}, T0)


@pytest.fixture
def stores(db_url: str) -> Iterator[tuple[EventStore, EventStore]]:
    engines = [make_engine(db_url), make_engine(db_url)]
    first = EventStore(engines[0])
    first.create_schema()
    yield first, EventStore(engines[1])
    for engine in engines:
        engine.dispose()


def versions_asked(store: EventStore) -> list[set[str]]:
    """Record the streams each transaction asks the database about."""
    asked: list[set[str]] = []
    original = store._stream_versions

    def spy(conn: sa.Connection, streams: set[str]) -> dict[str, int]:
        asked.append(set(streams))
        return original(conn, streams)

    store._stream_versions = spy  # type: ignore[method-assign]
    return asked


def test_a_lone_writer_asks_only_about_streams_it_has_not_seen(
    stores: tuple[EventStore, EventStore],
) -> None:
    store, _ = stores
    asked = versions_asked(store)
    store.append("s", 0, [ev(1)])
    store.append("s", 1, [ev(2)])
    store.append("t", None, [ev(3)])
    assert asked == [{"s"}, set(), {"t"}]
    with pytest.raises(ConcurrencyConflict) as conflict:
        store.append("s", 1, [ev(4)])  # stale, and known to be so without asking
    assert conflict.value.actual == 2
    assert store.stream_version("s") == 2


def test_another_writer_moving_the_head_makes_it_ask_again(
    stores: tuple[EventStore, EventStore],
) -> None:
    a, b = stores
    asked = versions_asked(a)
    a.append("s", 0, [ev(1)])
    b.append("s", 1, [ev(2)])  # "another process": a's versions are now out of date
    with pytest.raises(ConcurrencyConflict) as conflict:
        a.append("s", 1, [ev(3)])
    assert conflict.value.actual == 2
    assert asked[-1] == {"s"}
    a.append("s", 2, [ev(3)])
    b.append("t", None, [ev(4)])  # another stream, but the head moved: a asks again
    a.append("s", 3, [ev(5)])
    assert asked[-1] == {"s"}
    assert [e.version for e in a.read_stream("s")] == [1, 2, 3, 4]


def test_a_failed_transaction_leaves_no_version_behind(
    stores: tuple[EventStore, EventStore],
) -> None:
    store, _ = stores

    def failing(unit: object, recorded: object) -> None:
        raise RuntimeError("listener failed")

    store.append("s", 0, [ev(1)])
    store.listeners.append(failing)
    with pytest.raises(Exception, match="listener failed"):
        store.append("s", 1, [ev(2)])
    store.listeners.clear()
    store.append("s", 1, [ev(2)])  # version 1 still: the failed append counted for nothing
    assert store.stream_version("s") == 2
