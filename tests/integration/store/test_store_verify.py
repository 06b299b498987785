"""Tampering with the events table directly in SQL is found by the chain check.

Each test builds a small ledger through the store, then edits, deletes, swaps or inserts rows
behind its back, the way someone with database access could, and expects ``verify_chain``
(and ``downstream-node ledger verify``) to name the first position that no longer holds.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from downstream_node.domain.canonical import chain_hash
from downstream_node.ledger.db import make_engine
from downstream_node.ledger.schema import events, ledger_head
from downstream_node.ledger.store import EventStore, NewEvent
from downstream_node.ledger.verify import verify_chain

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
N = 12  # events in the ledger under test
K = 5  # the row tampered with


@pytest.fixture
def store(db_url: str) -> Iterator[EventStore]:
    engine = make_engine(db_url)
    store = EventStore(engine)
    store.create_schema()
    for i in range(N):
        store.append(
            f"contract:{i % 3}",
            None,
            [NewEvent("test.happened", 1, {"n": i, "who": "farmer"}, T0, {"ip": "10.0.0.1"})],
            request_id=f"req-{i}",
        )
    yield store
    engine.dispose()


def sql(engine: Engine, statement: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def row(engine: Engine, position: int) -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(sa.select(events).where(events.c.position == position)).one()


def forge(engine: Engine, position: int) -> None:
    sql(engine, "UPDATE events SET payload = :p WHERE position = :k", p='{"n":-1}', k=position)


def rehash(engine: Engine, position: int) -> None:
    """What a careful forger does: recompute the altered row's own hash from its predecessor."""
    prev = row(engine, position - 1).hash if position > 1 else "0" * 64
    r = row(engine, position)
    digest = chain_hash(
        prev,
        position=r.position,
        stream_id=r.stream_id,
        version=r.version,
        event_type=r.event_type,
        schema_version=r.schema_version,
        payload=r.payload,
        meta=r.meta,
        request_id=r.request_id,
        occurred_at=r.occurred_at,
    )
    sql(engine, "UPDATE events SET hash = :h WHERE position = :p", h=digest, p=position)


def assert_broken_at(engine: Engine, position: int, reason: str = "") -> None:
    report = verify_chain(engine, page=4)
    assert not report.ok
    assert report.first_broken == position, report
    assert report.checked == position - 1 and report.last_position == position - 1
    assert reason in report.reason


def test_untouched_ledger_verifies(store: EventStore) -> None:
    report = verify_chain(store.engine, page=5)
    head = store.head()
    assert report.ok and report.first_broken is None and report.reason == ""
    assert report.checked == N == head.position
    assert (report.last_position, report.last_hash) == (head.position, head.hash)
    partial = verify_chain(store.engine, until=K)
    assert partial.ok and partial.last_position == K
    assert partial.last_hash == row(store.engine, K).hash


@pytest.mark.parametrize("position", [1, K, N])
def test_altered_payload_is_found(store: EventStore, position: int) -> None:
    sql(
        store.engine,
        "UPDATE events SET payload = :p WHERE position = :k",
        p='{"n":999,"who":"farmer"}',
        k=position,
    )
    assert_broken_at(store.engine, position, "hash mismatch")
    if position > 1:
        assert verify_chain(store.engine, until=position - 1).ok


def test_reformatted_payload_with_the_same_meaning_is_found(store: EventStore) -> None:
    stored = row(store.engine, K).payload
    spaced = json.dumps(json.loads(stored), indent=1)
    sql(store.engine, "UPDATE events SET payload = :p WHERE position = :k", p=spaced, k=K)
    assert_broken_at(store.engine, K)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("stream_id", "contract:other"),
        ("version", 99),
        ("event_type", "test.forged"),
        ("schema_version", 2),
        ("meta", '{"ip":"10.9.9.9"}'),
        ("request_id", "req-forged"),
        ("request_id", None),
        ("occurred_at", 1),
    ],
)
def test_any_altered_column_is_found(store: EventStore, column: str, value: object) -> None:
    sql(store.engine, f"UPDATE events SET {column} = :v WHERE position = :k", v=value, k=K)
    assert_broken_at(store.engine, K)


def test_tampered_stored_hash_is_found(store: EventStore) -> None:
    sql(store.engine, "UPDATE events SET hash = :h WHERE position = :k", h="f" * 64, k=K)
    assert_broken_at(store.engine, K, "hash mismatch")


def test_forged_row_with_recomputed_hash_breaks_the_next_link(store: EventStore) -> None:
    forge(store.engine, K)
    rehash(store.engine, K)
    assert_broken_at(store.engine, K + 1, "hash mismatch")


def test_forged_last_row_with_recomputed_hash_disagrees_with_the_head(store: EventStore) -> None:
    forge(store.engine, N)
    rehash(store.engine, N)
    report = verify_chain(store.engine)
    assert not report.ok and report.first_broken == N
    assert "head" in report.reason


@pytest.mark.parametrize("position", [1, K, N])
def test_deleted_row_is_found(store: EventStore, position: int) -> None:
    sql(store.engine, "DELETE FROM events WHERE position = :k", k=position)
    assert_broken_at(store.engine, position, "missing")


def test_swapped_rows_are_found(store: EventStore) -> None:
    for statement, old, new in [
        ("UPDATE events SET position = :new WHERE position = :old", K, -1),
        ("UPDATE events SET position = :new WHERE position = :old", K + 1, K),
        ("UPDATE events SET position = :new WHERE position = :old", -1, K + 1),
    ]:
        sql(store.engine, statement, old=old, new=new)
    assert [r.payload["n"] for r in store.read_all(after=K - 1, until=K + 1)] == [K, K - 1]
    assert_broken_at(store.engine, K, "hash mismatch")


def test_row_beyond_the_head_is_found(store: EventStore) -> None:
    last = row(store.engine, N)
    forged = {c: getattr(last, c) for c in last._fields} | {"position": N + 1, "version": 999}
    with store.engine.begin() as conn:
        conn.execute(events.insert().values(**forged))
    report = verify_chain(store.engine)
    assert not report.ok and report.first_broken == N + 1
    assert report.checked == N


@pytest.mark.parametrize("position", [0, -7])
def test_row_before_the_first_position_is_found(store: EventStore, position: int) -> None:
    """A row outside the chain at the low end: the store would read it (a stream's version, a
    recorded request id), so a forged verdict could sit there."""
    first = row(store.engine, 1)
    forged = {c: getattr(first, c) for c in first._fields} | {
        "position": position,
        "version": 50,
        "request_id": "forged-verdict",
    }
    with store.engine.begin() as conn:
        conn.execute(events.insert().values(**forged))
    for until in (None, K):
        report = verify_chain(store.engine, until=until)
        assert not report.ok and report.first_broken == position, report
        assert "before the chain's first position" in report.reason


def test_tampered_head_hash_is_found(store: EventStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(ledger_head.update().values(hash="e" * 64))
    report = verify_chain(store.engine)
    assert not report.ok and report.first_broken == N and "head" in report.reason


def test_rewound_head_is_found(store: EventStore) -> None:
    previous = row(store.engine, N - 1)
    with store.engine.begin() as conn:
        conn.execute(ledger_head.update().values(position=N - 1, hash=previous.hash))
    report = verify_chain(store.engine)
    assert not report.ok and report.first_broken == N and report.checked == N - 1


def test_ledger_verify_command(store: EventStore, db_url: str) -> None:
    from downstream_node.cli import main

    runner = CliRunner()
    clean = runner.invoke(main, ["--db", db_url, "ledger", "verify"])
    assert clean.exit_code == 0, clean.output
    assert json.loads(clean.output)["ok"] is True
    assert json.loads(clean.output)["last_position"] == N

    forge(store.engine, K)
    broken = runner.invoke(main, ["--db", db_url, "ledger", "verify"])
    assert broken.exit_code == 1, broken.output
    report = json.loads(broken.output)
    assert report["ok"] is False and report["first_broken"] == K


def test_verification_from_a_known_position_and_hash(store: EventStore) -> None:
    """From (position, hash) the walk checks only the later rows, with the same checks."""
    engine = store.engine
    at = verify_chain(engine, until=K - 2)
    start = (at.last_position, at.last_hash)
    whole = verify_chain(engine)
    resumed = verify_chain(engine, start=start)
    assert resumed.ok and resumed.checked == N - (K - 2)
    assert (resumed.last_position, resumed.last_hash) == (whole.last_position, whole.last_hash)
    # A start hash that is not the ledger's breaks the very next row.
    wrong = verify_chain(engine, start=(K - 2, "0" * 64))
    assert not wrong.ok and wrong.first_broken == K - 1
    # A row altered after the start is found, as by a walk from position 1.
    forge(engine, K)
    broken = verify_chain(engine, start=start)
    assert not broken.ok and broken.first_broken == K and "hash mismatch" in broken.reason
