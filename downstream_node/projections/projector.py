"""The projector: the checkpoint protocol over the fold (``fold.Fold``), and the event-store
listener that runs it inside each append's transaction, so the read model and its checkpoint
commit with the events and the farmer API always reads its own writes.

A rebuild runs the same protocol over the whole history into a fresh generation of tables.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..domain import events as ev
from ..domain.clock import to_micros
from ..domain.records import RecordedEvent
from ..ledger.db import create_all
from ..ledger.store import UnitOfWork
from .fold import Fold, Item, ItemTuple
from .held import Held
from .tables import ProjectionTables, tables_for

CHECKPOINT = "projector"


def create_tables(conn: Connection, tables: ProjectionTables) -> None:
    create_all(conn, tables.metadata)
    if conn.execute(sa.select(tables.checkpoint.c.position)).first() is None:
        conn.execute(tables.checkpoint.insert().values(name=CHECKPOINT, position=0))


def drop_tables(conn: Connection, tables: ProjectionTables) -> None:
    tables.metadata.drop_all(conn)


def checkpoint(conn: Connection, tables: ProjectionTables) -> int:
    value = conn.execute(
        sa.select(tables.checkpoint.c.position).where(tables.checkpoint.c.name == CHECKPOINT)
    ).scalar()
    return int(value or 0)


def apply_events(
    conn: Connection,
    tables: ProjectionTables,
    recorded: Sequence[RecordedEvent],
    *,
    at: int | None = None,
    fold: Fold | None = None,
) -> None:
    """Fold ``recorded`` (consecutive, in order) and move the checkpoint, in ``conn``'s txn.

    ``at``: where the checkpoint must be, when the caller knows it (see ``apply_items``)."""
    if not recorded:
        return
    apply_items(
        conn,
        tables,
        [
            Item(
                position=r.position,
                stream_id=r.stream_id,
                version=r.version,
                event_type=r.event_type,
                schema_version=r.schema_version,
                occurred_at=to_micros(r.occurred_at),
                payload=r.payload,
            )
            for r in recorded
        ],
        fold,
        at=at,
    )


def apply_items(
    conn: Connection,
    tables: ProjectionTables,
    items: Iterable[ItemTuple],
    fold: Fold | None = None,
    *,
    at: int | None = None,
) -> int:
    """``apply_events`` for items (which may be streamed); ``fold`` may carry rows over from
    an earlier transaction (a rebuild's). Returns the new checkpoint.

    ``at``: the checkpoint as the caller knows it, so it is not read first: the live
    projector passes the head position it found under the ledger lock, which the live
    generation's checkpoint always equals (both move in the same transactions). Moving the
    checkpoint then checks it was there, and raises (rolling the append back) if not."""
    done = checkpoint(conn, tables) if at is None else at
    start = done

    def checked() -> Iterator[ItemTuple]:
        nonlocal done
        known: set[tuple[str, int]] = set()
        for item in items:
            position, _, _, kind, schema, _, _ = item
            if position <= done:
                continue  # already folded: applying is idempotent per position
            if position != done + 1:
                raise RuntimeError(f"projection gap: at {done}, got position {position}")
            if (kind, schema) not in known:
                ev.known(kind, schema)
                known.add((kind, schema))
            yield item
            done = position

    (fold or Fold(tables)).run(conn, checked())
    if at is None:
        conn.execute(_move_checkpoint(tables), {"done": done})
    elif conn.execute(_move_checkpoint_from(tables), {"done": done, "start": start}).rowcount != 1:
        raise RuntimeError(f"projection checkpoint is not at {start}, where the ledger was")
    return done


@functools.cache
def _move_checkpoint(tables: ProjectionTables) -> sa.Update:
    t = tables.checkpoint
    return t.update().where(t.c.name == CHECKPOINT).values(position=sa.bindparam("done"))


@functools.cache
def _move_checkpoint_from(tables: ProjectionTables) -> sa.Update:
    """Move the checkpoint from ``start`` to ``done``; touches no row if it was elsewhere."""
    return _move_checkpoint(tables).where(tables.checkpoint.c.position == sa.bindparam("start"))


class Projector:
    """Event-store listener that keeps the live generation current, holding the rows the
    read model left for it in the unit of work (``held.Held``) instead of reading them."""

    def __call__(self, unit: UnitOfWork, recorded: Sequence[RecordedEvent]) -> None:
        tables = tables_for(unit.head.projection_generation)
        fold = Fold(tables)
        held = Held.left_in(unit.memo)
        if held is not None:
            fold.hold(held)
        apply_events(unit.conn, tables, recorded, at=unit.head.position, fold=fold)
