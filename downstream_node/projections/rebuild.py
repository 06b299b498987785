"""Rebuilding projections from position 0 into a fresh generation, without stopping the node.

The new tables are filled from the history in large transactions, caught up, and swapped in
by changing the head row's generation number under the head lock, so no append can slip in
between the last fold and the swap. The previous generation is kept for comparison until the
next rebuild.
"""

from __future__ import annotations

import fcntl
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from ..ledger.db import (
    is_sqlite,
    named_lock,
    read_transaction,
    schema_lock,
    sqlite_file,
    write_transaction,
)
from ..ledger.reader import EventRange
from ..ledger.schema import HEAD_ID, ledger_head
from ..ledger.store import EventStore, LedgerError
from .fold import HANDLED, Fold, Item, ItemTuple
from .projector import apply_items, checkpoint, create_tables, drop_tables
from .tables import NAMES, ProjectionTables, tables_for

log = structlog.get_logger("downstream.projections")


@dataclass(frozen=True)
class RebuildReport:
    old_generation: int
    new_generation: int
    position: int
    events: int


def ensure_projections(store: EventStore) -> ProjectionTables:
    """Create the live generation's tables (and catch them up) if they are missing; rebuild
    them into the next generation if an older release made them with other columns.

    Safe when several nodes start at once (on MySQL under a named server lock, which a node
    holds while it rebuilds: the others wait, then find the new generation).
    """
    with write_transaction(store.engine) as conn, schema_lock(conn):
        with conn.begin():
            tables = tables_for(store.head(conn).projection_generation)
            create_tables(conn, tables)
            outdated = outdated_tables(conn, tables)
        if outdated:
            # The projections are derived data: folding the ledger again is the migration.
            log.warning("projections_outdated", generation=tables.generation, tables=outdated)
            # A rebuild already running (an operator's, or another node's) is waited for;
            # this one then folds again, into the generation after it.
            report = rebuild(store, wait=STARTUP_REBUILD_WAIT)
            log.info(
                "projections_rebuilt",
                generation=report.new_generation,
                events=report.events,
            )
            return tables_for(report.new_generation)
    _catch_up(store, tables, locked=True)
    return tables


def outdated_tables(conn: Connection, tables: ProjectionTables) -> list[str]:
    """The tables whose columns are not this release's (an older release made them)."""
    inspector = sa.inspect(conn)
    return [
        table.name
        for table in tables.all()
        if {c["name"] for c in inspector.get_columns(table.name)} != set(table.columns.keys())
    ]


REBUILD_BATCH = 20_000
STARTUP_REBUILD_WAIT = 3600  # seconds: a rebuild of a large ledger takes minutes


class RebuildRunning(LedgerError):
    """Another rebuild of this ledger is running (in this process or another)."""


# MySQL named lock (one per database: named_lock) a rebuild holds from start to swap.
REBUILD_LOCK = "downstream_node.rebuild"


@contextmanager
def rebuild_lock(engine: Engine, *, wait: float = 0) -> Iterator[None]:
    """One rebuild at a time per ledger, across processes: two would both fill and swap in
    generation g+1, the second dropping the tables the first had just made live. MySQL: a
    named lock held by one pooled connection for the duration; SQLite: an advisory lock on a
    file beside the database (``<database>.rebuild-lock``). Both go with their process if it
    dies. Raises ``RebuildRunning`` if the lock is not had within ``wait`` seconds."""
    if not is_sqlite(engine):
        with engine.connect() as conn, named_lock(conn, REBUILD_LOCK, math.ceil(wait)) as got:
            if not got:
                raise RebuildRunning("another rebuild of this ledger is running")
            yield
        return
    database = sqlite_file(str(engine.url))
    if database is None:
        yield  # a private in-memory ledger: one process
        return
    with open(f"{database}.rebuild-lock", "a") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RebuildRunning("another rebuild of this ledger is running") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rebuild(
    store: EventStore,
    *,
    batch: int = REBUILD_BATCH,
    progress: Callable[[int, int], None] | None = None,
    wait: float = 0,
) -> RebuildReport:
    """Fold the whole ledger into generation g+1 and make it live. ``progress(done, total)``.

    ``batch`` events per transaction: each writes every row it changed once, so larger
    batches write less; on SQLite a batch holds the single write lock (live appends wait),
    some 0.4 s for 20,000 events on a small machine. Waits ``wait`` seconds for another
    rebuild to end, then raises ``RebuildRunning``.
    """
    with rebuild_lock(store.engine, wait=wait):
        return _rebuild(store, batch=batch, progress=progress)


def _rebuild(
    store: EventStore, *, batch: int, progress: Callable[[int, int], None] | None
) -> RebuildReport:
    old = store.head().projection_generation
    new_tables = tables_for(old + 1)
    with write_transaction(store.engine) as conn, conn.begin():
        drop_tables(conn, new_tables)  # leftovers of an interrupted rebuild
        for stale in (tables_for(g) for g in range(max(1, old - 3), old)):
            drop_tables(conn, stale)  # keep only the live and the previous generation
        create_tables(conn, new_tables)

    total = store.head().position
    done = _catch_up(store, new_tables, batch=batch, progress=progress, total=total)
    # Swap under the head lock: nothing can be appended between the last fold and the swap.
    with write_transaction(store.engine) as conn, conn.begin():
        head = conn.execute(
            sa.select(ledger_head).where(ledger_head.c.id == HEAD_ID).with_for_update()
        ).one()
        if head.projection_generation != old:
            # Swapped by a rebuild that took no lock (an older release): leave it live.
            raise RebuildRunning(
                f"generation {head.projection_generation} was swapped in during this rebuild"
            )
        start = checkpoint(conn, new_tables)
        done += apply_items(conn, new_tables, read_items(conn, start, head.position)) - start
        conn.execute(
            ledger_head.update()
            .where(ledger_head.c.id == HEAD_ID)
            .values(projection_generation=new_tables.generation)
        )
    if progress is not None:
        progress(done, done)
    return RebuildReport(old, new_tables.generation, head.position, done)


def _catch_up(
    store: EventStore,
    tables: ProjectionTables,
    *,
    batch: int = 5000,
    locked: bool = False,
    progress: Callable[[int, int], None] | None = None,
    total: int = 0,
) -> int:
    """Fold events past the tables' checkpoint, ``batch`` per transaction.

    Unlocked (a rebuild's new generation, which nothing else writes), one fold keeps the rows
    it holds from one transaction to the next; locked (the live generation, which appends
    also write between two transactions), each transaction reads its rows afresh.
    """
    done = 0
    fold = None
    while True:
        with write_transaction(store.engine) as conn, conn.begin():
            if locked:
                conn.execute(
                    sa.select(ledger_head.c.id).where(ledger_head.c.id == HEAD_ID).with_for_update()
                )
            start = checkpoint(conn, tables)
            if fold is None and not locked:
                fold = Fold(tables, empty=start == 0)
            folded = apply_items(conn, tables, read_items(conn, start, start + batch), fold)
        count = folded - start
        done += count
        if progress is not None and count:
            progress(done, max(total, done))
        if count < batch:
            return done


# What the fold takes of each event, payloads only for the types a projection reads.
ITEMS = EventRange(Item._fields, payloads_of=HANDLED)


def read_items(conn: Connection, after: int, until: int) -> Iterator[ItemTuple]:
    """Events ``after < position <= until`` as the fold takes them, in position order, streamed
    in ``conn``'s transaction (this is the rebuild's hot loop: plain tuples in ``Item`` order,
    which cost less to make than ``Item`` instances; see ``fold.Item``)."""
    loads = json.loads
    for position, stream_id, version, kind, schema, at, text in ITEMS.stream(conn, after, until):
        payload = None if text is None else loads(text)
        yield (position, stream_id, version, kind, schema, at, payload)


def compare_generations(engine: Engine, a: int, b: int) -> dict[str, str]:
    """Row-by-row differences between two generations: table name -> first difference."""
    ta, tb = tables_for(a), tables_for(b)
    differences: dict[str, str] = {}
    with read_transaction(engine) as conn:
        for name in NAMES:
            left, right = getattr(ta, name), getattr(tb, name)
            key = list(left.primary_key.columns)
            rows_a = conn.execute(sa.select(left).order_by(*key)).all()
            rows_b = conn.execute(sa.select(right).order_by(*[right.c[k.name] for k in key]))
            rows_b = rows_b.all()
            if len(rows_a) != len(rows_b):
                differences[name] = f"{len(rows_a)} rows vs {len(rows_b)}"
                continue
            for ra, rb in zip(rows_a, rows_b, strict=True):
                if tuple(ra) != tuple(rb):
                    differences[name] = f"{tuple(ra)[:3]}... differs from {tuple(rb)[:3]}..."
                    break
    return differences
