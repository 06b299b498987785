"""Rebuilding projections from position 0 into a fresh generation, without stopping the node.

The new tables are filled from the history in large transactions, caught up, and swapped in
by changing the head row's generation number under the head lock, so no append can slip in
between the last fold and the swap. The previous generation is kept until the next rebuild;
asked to, the rebuild compares it with the new one in a snapshot taken at the swap position.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from ..ledger import leases
from ..ledger.db import (
    is_sqlite,
    read_transaction,
    retry_raced,
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
    # With ``compare``: the rows in which the two generations differ at ``position`` (table
    # name -> differences, see ``diff_tables``); empty when they are identical.
    differences: dict[str, dict[str, Any]] | None = field(default=None, compare=False)


def ensure_projections(store: EventStore) -> ProjectionTables:
    """Create the live generation's tables (and catch them up) if they are missing; rebuild
    them into the next generation if an older release made them with other columns.

    Safe when several nodes start at once (on MySQL under a named server lock, which a node
    holds while it rebuilds: the others wait, then find the new generation).
    """
    with write_transaction(store.engine) as conn, schema_lock(conn):

        def create() -> tuple[ProjectionTables, list[str]]:
            # Again after racing another cluster node's creation (retry_raced)
            with conn.begin():
                tables = tables_for(store.head(conn).projection_generation)
                create_tables(conn, tables)
                return tables, outdated_tables(conn, tables)

        tables, outdated = retry_raced(create)
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


# The lease (ledger/leases.py, one row in the ledger's database) a rebuild holds on MySQL.
REBUILD_LOCK = "downstream_node.rebuild"


@contextmanager
def rebuild_lock(engine: Engine, *, wait: float = 0) -> Iterator[None]:
    """One rebuild at a time per ledger, across processes and cluster nodes: two would both
    fill and swap in generation g+1, the second dropping the tables the first had just made
    live. MySQL: a lease row (not a named lock: ``GET_LOCK`` is per node on Galera), renewed
    while the rebuild runs, free a minute after its holder dies; SQLite: an advisory lock on
    a file beside the database (``<database>.rebuild-lock``), which goes with its process.
    Raises ``RebuildRunning`` if the lock is not had within ``wait`` seconds."""
    if not is_sqlite(engine):
        try:
            with leases.held(engine, REBUILD_LOCK, wait=wait):
                yield
        except leases.LeaseHeld as held:
            raise RebuildRunning(
                f"another rebuild of this ledger is running ({held.holder.owner})"
            ) from None
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
    compare: bool = False,
) -> RebuildReport:
    """Fold the whole ledger into generation g+1 and make it live. ``progress(done, total)``.

    ``batch`` events per transaction: each writes every row it changed once, so larger
    batches write less; on SQLite a batch holds the single write lock (live appends wait),
    some 0.4 s for 20,000 events on a small machine. Waits ``wait`` seconds for another
    rebuild to end, then raises ``RebuildRunning``. ``compare``: compare the new generation
    with the one it replaces, both as of the swap position (``report.differences``), while
    the node goes on appending to the new one.
    """
    with rebuild_lock(store.engine, wait=wait):
        # The comparison too runs under the rebuild lock: a rebuild after this one drops
        # generations older than the live one, the one compared with among them.
        return _rebuild(store, batch=batch, progress=progress, compare=compare)


# Attempts (SQLite) at finding the new generation caught up when the head lock is had; after
# them the comparison runs under the lock (appends wait for it).
SWAP_TRIES = 20


def _rebuild(
    store: EventStore,
    *,
    batch: int,
    progress: Callable[[int, int], None] | None,
    compare: bool = False,
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
    # Appends on other cluster nodes may abort the swap at certification: it runs again.
    report, snapshot = store.retrying(lambda: _swap(store, old, new_tables, done, compare=compare))
    if snapshot is not None:
        # The head lock is released: appends go on into the new generation while the
        # snapshot still shows both generations at the swap position.
        with snapshot:
            differences = diff_generations(snapshot, old, new_tables.generation, report.position)
            snapshot.rollback()
        report = dataclasses.replace(report, differences=differences)
    if progress is not None:
        progress(report.events, report.events)
    return report


def _swap(
    store: EventStore, old: int, new_tables: ProjectionTables, done: int, *, compare: bool
) -> tuple[RebuildReport, Connection | None]:
    """Catch the new generation up and swap it in under the head lock (nothing can be
    appended between the last fold and the swap).

    With ``compare``, a second connection opens a consistent snapshot while the lock is
    still held and both generations are committed at the head position: the snapshot sees
    them both exactly there, whatever is appended after the lock is released. MySQL: the
    last events are folded and committed on another connection while this one holds the
    lock. SQLite, which has one writer at a time: the lock is taken again until the new
    generation is found caught up (no append between two of the rebuild's transactions),
    and after ``SWAP_TRIES`` attempts the generations are compared under the lock itself.
    Returns the report (``differences`` set only in that last case) and the snapshot.
    """
    sqlite = is_sqlite(store.engine)
    for attempt in range(SWAP_TRIES):
        last = attempt == SWAP_TRIES - 1
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
            snapshot: Connection | None = None
            differences = None
            if start < head.position and compare and not sqlite:
                done += _fold_beside(store.engine, new_tables, start, head.position)
                start = head.position
            if start < head.position and compare and not last:
                done += apply_items(conn, new_tables, read_items(conn, start, head.position))
                done -= start
                continue  # committed: the lock is taken again, to find no event after it
            if start < head.position:
                done += apply_items(conn, new_tables, read_items(conn, start, head.position))
                done -= start
                if compare:  # SQLite, out of attempts: compare under the lock
                    differences = diff_generations(conn, old, new_tables.generation, head.position)
            elif compare:
                snapshot = open_snapshot(store.engine)
            conn.execute(
                ledger_head.update()
                .where(ledger_head.c.id == HEAD_ID)
                .values(projection_generation=new_tables.generation)
            )
        report = RebuildReport(
            old, new_tables.generation, head.position, done, differences=differences
        )
        if attempt:
            log.info("rebuild_swap_attempts", attempts=attempt + 1)
        return report, snapshot
    raise AssertionError("unreachable: the last attempt swaps")


def _fold_beside(engine: Engine, tables: ProjectionTables, start: int, until: int) -> int:
    """Fold ``start < position <= until`` into ``tables`` on a connection of its own and
    commit (MySQL, while the caller holds the head lock: nothing else writes these tables,
    and the events up to ``until`` are committed). The number of events folded."""
    with write_transaction(engine) as conn, conn.begin():
        return apply_items(conn, tables, read_items(conn, start, until)) - start


def open_snapshot(engine: Engine) -> Connection:
    """A connection in a read transaction whose snapshot is taken now: InnoDB's consistent
    snapshot (REPEATABLE READ), SQLite's by a first read in WAL mode. It sees what was
    committed before this call and nothing committed after. The caller closes it."""
    if is_sqlite(engine):
        conn = read_transaction(engine)
        conn.begin()
        conn.execute(sa.select(ledger_head.c.position))  # the snapshot starts at a first read
        return conn
    conn = engine.connect().execution_options(isolation_level="REPEATABLE READ")
    conn.begin()
    conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")
    return conn


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

    def one_batch() -> tuple[int, int]:
        nonlocal fold
        try:
            with write_transaction(store.engine) as conn, conn.begin():
                if locked:
                    conn.execute(
                        sa.select(ledger_head.c.id)
                        .where(ledger_head.c.id == HEAD_ID)
                        .with_for_update()
                    )
                start = checkpoint(conn, tables)
                if fold is None and not locked:
                    fold = Fold(tables, empty=start == 0)
                return start, apply_items(
                    conn, tables, read_items(conn, start, start + batch), fold
                )
        except Exception:
            fold = None  # what it held may not have been committed: read the rows again
            raise

    while True:
        # Run again when the database aborted it (on Galera, another node's write set can).
        start, folded = store.retrying(one_batch)
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


def compare_generations(engine: Engine, a: int, b: int) -> dict[str, dict[str, Any]]:
    """Row-by-row differences between two generations as they are now (``diff_tables``):
    for a ledger nobody appends to meanwhile. A running node appends to the live one: a
    rebuild's own ``compare`` compares at the swap position instead."""
    with read_transaction(engine) as conn, conn.begin():
        return diff_tables(conn, tables_for(a), tables_for(b))


def diff_generations(
    conn: Connection, old: int, new: int, position: int
) -> dict[str, dict[str, Any]]:
    """``diff_tables`` of the two generations in ``conn``'s transaction, after checking that
    both stand at ``position`` there (else the comparison would show events, not errors)."""
    old_tables, new_tables = tables_for(old), tables_for(new)
    at = (
        store_head_position(conn),
        checkpoint(conn, old_tables),
        checkpoint(conn, new_tables),
    )
    if at != (position, position, position):
        raise LedgerError(f"the comparison snapshot is not at position {position}: {at}")
    return diff_tables(conn, old_tables, new_tables)


def store_head_position(conn: Connection) -> int:
    return int(
        conn.execute(sa.select(ledger_head.c.position).where(ledger_head.c.id == HEAD_ID)).scalar()
    )


DIFF_PAGE = 5000  # rows per table read at a time
DIFF_SHOWN = 10  # differing rows shown per table (all are counted)


def diff_tables(
    conn: Connection, live: ProjectionTables, rebuilt: ProjectionTables
) -> dict[str, dict[str, Any]]:
    """Row by row, in ``conn``'s transaction: per table that differs, how many rows do
    (``count``) and the first ``DIFF_SHOWN`` of them (``rows``: the key, and the columns that
    differ with their ``live`` and ``rebuilt`` values; a row only one side has shows the
    other as ``None``). Both sides are read in primary-key order a page at a time and merged,
    so memory does not grow with the tables."""
    differences: dict[str, dict[str, Any]] = {}
    for name in NAMES:
        left, right = getattr(live, name), getattr(rebuilt, name)
        (key,) = left.primary_key.columns  # every projection table has a one-column key
        count, shown = 0, []
        rows_l, rows_r = _keyed(conn, left, key.name), _keyed(conn, right, key.name)
        row_l, row_r = next(rows_l, None), next(rows_r, None)
        while row_l is not None or row_r is not None:
            if row_r is None or (row_l is not None and row_l[key.name] < row_r[key.name]):
                entry, row_l = _difference(key.name, row_l, None), next(rows_l, None)
            elif row_l is None or row_r[key.name] < row_l[key.name]:
                entry, row_r = _difference(key.name, None, row_r), next(rows_r, None)
            else:
                entry = _difference(key.name, row_l, row_r) if row_l != row_r else None
                row_l, row_r = next(rows_l, None), next(rows_r, None)
            if entry is not None:
                count += 1
                if len(shown) < DIFF_SHOWN:
                    shown.append(entry)
        if count:
            differences[name] = {"key": key.name, "count": count, "rows": shown}
    return differences


def _keyed(conn: Connection, table: sa.Table, key: str) -> Iterator[dict[str, Any]]:
    """``table``'s rows as dicts in key order, read ``DIFF_PAGE`` at a time (keyset pages)."""
    column = table.c[key]
    after = None
    while True:
        query = sa.select(table).order_by(column).limit(DIFF_PAGE)
        if after is not None:
            query = query.where(column > after)
        page = [dict(row._mapping) for row in conn.execute(query)]
        yield from page
        if len(page) < DIFF_PAGE:
            return
        after = page[-1][key]


def _difference(
    key: str, live: dict[str, Any] | None, rebuilt: dict[str, Any] | None
) -> dict[str, Any]:
    """One differing row, for the report: its key, and what each side holds that the other
    does not (every column of a row only one side has)."""
    some = live if live is not None else rebuilt
    assert some is not None
    if live is None or rebuilt is None:
        return {key: some[key], "live": _plain(live), "rebuilt": _plain(rebuilt)}
    columns = [c for c in live if live[c] != rebuilt[c]]
    return {
        key: some[key],
        "live": _plain({c: live[c] for c in columns}),
        "rebuilt": _plain({c: rebuilt[c] for c in columns}),
    }


def _plain(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """JSON-ready values (a long state text cut short)."""
    if row is None:
        return None
    return {
        c: (v[:80] + "...") if isinstance(v, str) and len(v) > 80 else v for c, v in row.items()
    }
