"""The live projector trusts the head position it found under the ledger lock as its
checkpoint (no read per batch) and checks it as it moves it: a checkpoint anywhere else
fails the append, and nothing is written."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.engine import Engine

from downstream_node.domain import events as ev
from downstream_node.domain.clock import UTC
from downstream_node.ledger.db import write_transaction
from downstream_node.ledger.store import AppendFailed, EventStore
from downstream_node.projections.projector import CHECKPOINT, Projector, checkpoint
from downstream_node.projections.rebuild import ensure_projections
from downstream_node.projections.tables import ProjectionTables

AT = dt.datetime(2026, 1, 1, tzinfo=UTC)


def whitelist(store: EventStore, address: str, balance: str) -> None:
    new = ev.AddressWhitelisted(address, balance).to_new(AT)
    store.append(ev.WHITELIST_STREAM, None, [new])


@pytest.fixture
def live(engine: Engine) -> tuple[EventStore, ProjectionTables]:
    store = EventStore(engine, [Projector()])
    store.create_schema()
    return store, ensure_projections(store)


def read_checkpoint(engine: Engine, tables: ProjectionTables) -> int:
    with engine.connect() as conn:
        return checkpoint(conn, tables)


def test_the_checkpoint_follows_the_head(live: tuple[EventStore, ProjectionTables]) -> None:
    store, tables = live
    for i in range(3):
        whitelist(store, f"addr{i}", "10")
    assert read_checkpoint(store.engine, tables) == store.head().position == 3


def test_a_checkpoint_not_at_the_head_fails_the_append_and_writes_nothing(
    live: tuple[EventStore, ProjectionTables],
) -> None:
    store, tables = live
    whitelist(store, "addr0", "10")
    with write_transaction(store.engine) as conn, conn.begin():
        conn.execute(
            tables.checkpoint.update()
            .where(tables.checkpoint.c.name == CHECKPOINT)
            .values(position=0)
        )
    with pytest.raises(AppendFailed, match="checkpoint is not at 1") as failed:
        whitelist(store, "addr1", "10")
    assert failed.value.before_commit
    assert store.head().position == 1
    assert read_checkpoint(store.engine, tables) == 0
