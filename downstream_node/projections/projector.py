"""The projector: folds recorded events, in position order, into the projection tables.

It runs inside the append's transaction (an event-store listener), so the read model and its
checkpoint commit with the events and the farmer API always reads its own writes. A rebuild
runs the same code over the whole history into a fresh generation of tables.

A batch of events (a group commit, a page of a rebuild) is folded in memory: the rows it will
touch are read first, one query per table, the events change them in Python, and each table
is written back once at the end (one ``executemany`` for new rows, one for changed rows). So a
batch costs a handful of statements whatever its size, instead of several per event.
``tests/projection_oracle.py`` keeps the one-statement-at-a-time version this replaced, and
``tests/test_projection_oracle.py`` checks that both fill the tables identically.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql import visitors

from ..domain import events as ev
from ..domain.clock import to_micros
from ..domain.folds import EventFold, handles, ignoring
from ..domain.records import RecordedEvent
from ..domain.uptime import Coverage
from ..ledger.db import create_all, in_lists
from ..ledger.store import UnitOfWork
from .tables import ProjectionTables, tables_for

CHECKPOINT = "projector"

# An event as the fold needs it: position, stream id, version, type, schema version, occurred
# at (UTC microseconds), payload (None for the types no projection reads).
Item = tuple[int, str, int, str, int, int, dict[str, Any] | None]

# A rebuild keeps the rows it touched between its transactions (only it writes the new
# generation); past this many contracts it starts afresh, so memory stays bounded.
MAX_CACHED = 50_000


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
            (
                r.position,
                r.stream_id,
                r.version,
                r.event_type,
                r.schema_version,
                to_micros(r.occurred_at),
                r.payload,
            )
            for r in recorded
        ],
        fold,
        at=at,
    )


def apply_items(
    conn: Connection,
    tables: ProjectionTables,
    items: Iterable[Item],
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

    def checked() -> Iterator[Item]:
        nonlocal done
        known: set[tuple[str, int]] = set()
        for item in items:
            position = item[0]
            if position <= done:
                continue  # already folded: applying is idempotent per position
            if position != done + 1:
                raise RuntimeError(f"projection gap: at {done}, got position {position}")
            if (item[3], item[4]) not in known:
                ev.known(item[3], item[4])
                known.add((item[3], item[4]))
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


# The unit of work's memo key under which the read model leaves the contract rows (in
# ``CONTRACT_READ`` order) that a decision read under the lock: the live projector holds
# them instead of reading them again (``queries.Reader.contracts_for_pairs``).
CONTRACT_ROWS = "projections.contract_rows"
# And the uptime rows of those contracts' tokens, by token hash (None: the token has none).
UPTIME_ROWS = "projections.uptime_rows"


class Projector:
    """Event-store listener that keeps the live generation current."""

    def __call__(self, unit: UnitOfWork, recorded: Sequence[RecordedEvent]) -> None:
        tables = tables_for(unit.head.projection_generation)
        fold = Fold(tables)
        fold.hold_contracts(unit.memo.get(CONTRACT_ROWS, ()))
        fold.hold_uptime(unit.memo.get(UPTIME_ROWS, {}))
        apply_events(unit.conn, tables, recorded, at=unit.head.position, fold=fold)


# json.dumps(value, sort_keys=True, separators=(",", ":")), with its encoder made once.
_dump = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


class Json:
    """A value for a JSON text column, encoded when its row is written: a contract's state
    may change several times in one batch, and only the last one is written."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _required() -> sa.exc.NoResultFound:
    # What the statement-per-event projector raised (``.one()``) for a row that must exist.
    return sa.exc.NoResultFound("No row was found when one was required")


# -- rows in memory -------------------------------------------------------------------------------


class Rows:
    """The rows of one table that a fold has read or made, keyed by primary key.

    ``None`` marks a key known to have no row. ``new`` rows are inserted at ``flush``;
    ``dirty`` ones (read from the table, then changed) are updated, their ``mutable`` columns.
    ``complete``: every row of the table is held, so a key not held has no row (no query).
    """

    def __init__(self, table: sa.Table, key: str, columns: Sequence[str], mutable: Sequence[str]):
        self.table = table
        self.key = key
        self.columns = tuple(columns)
        self.mutable = tuple(mutable)
        self.rows: dict[str, dict[str, Any] | None] = {}
        self.new: dict[str, dict[str, Any]] = {}
        self.dirty: set[str] = set()
        self.complete = False
        self._key_index = self.columns.index(key)
        # SQLite rewrites a row's entry in every index that has a column the UPDATE sets,
        # changed or not (MySQL compares the values): an answer, which moves no indexed
        # column, took twice as long to write for it. So the mutable columns some index
        # holds, and their values as the table has them, to leave them out when unchanged.
        indexed = _indexed_columns(table)
        self.indexed = tuple(c for c in self.mutable if c in indexed)
        self._stored: dict[str, tuple[Any, ...]] = {}
        self._select, self._insert = _statements(table, key, self.columns)
        self._unindexed = tuple(c for c in self.mutable if c not in self.indexed)

    def prefetch(self, conn: Connection, keys: Iterable[str | None]) -> None:
        wanted = sorted({k for k in keys if k is not None and k not in self.rows})
        for chunk in in_lists(wanted):
            for k in chunk:
                self.rows[k] = None
            self.add_found(conn.execute(self._select, {"keys": chunk}))

    def add_found(self, found: Iterable[Any]) -> list[dict[str, Any]]:
        """Take rows read from the table; rows already held (maybe changed) win."""
        out = []
        index, columns = self._key_index, self.columns
        for row in found:
            k = row[index]
            held = self.rows.get(k)
            if held is None:
                held = self.rows[k] = dict(zip(columns, row, strict=True))
                self._remember(k, held)
            out.append(held)
        return out

    def _remember(self, k: str, row: dict[str, Any]) -> None:
        if self.indexed:
            self._stored[k] = tuple([row[c] for c in self.indexed])

    def get(self, conn: Connection, k: str | None) -> dict[str, Any] | None:
        if k is None:
            return None
        if k not in self.rows:
            if self.complete:
                return None
            self.prefetch(conn, [k])
        return self.rows[k]

    def insert(self, k: str, row: dict[str, Any]) -> None:
        if self.rows.get(k) is not None:
            raise sa.exc.IntegrityError(
                f"INSERT INTO {self.table.name}", {self.key: k}, Exception("duplicate key")
            )
        self.rows[k] = row
        self.new[k] = row

    def touch(self, k: str) -> None:
        if k not in self.new:
            self.dirty.add(k)

    def flush(self, conn: Connection) -> None:
        """Write the new rows and the changed ones: one ``executemany`` each, handed to the
        driver as compiled once (a rebuild flushes thousands of rows per transaction)."""
        if self.new:
            new = list(self.new.values())
            self._encode(new)
            _executemany(conn, self._insert, new)
            for k, row in self.new.items():
                self._remember(k, row)
        if self.dirty:
            rows = self.rows
            dirty = [row for k in sorted(self.dirty) if (row := rows[k]) is not None]
            self._encode(dirty)
            if conn.dialect.name in ("mysql", "mariadb"):
                # PyMySQL sends an executemany of UPDATEs one statement at a time; an insert
                # that always finds its row goes in one statement (the rows all exist: they
                # were read from the table or written there by this fold).
                _executemany(conn, _upsert(self.table, self.mutable), dirty)
            else:
                self._update_sqlite(conn, dirty)
            for row in dirty:
                self._remember(row[self.key], row)
        self.new = {}
        self.dirty = set()

    def _update_sqlite(self, conn: Connection, dirty: list[dict[str, Any]]) -> None:
        """The dirty rows whose indexed columns kept their stored values are updated without
        those columns; the others with every mutable column."""
        stored, indexed, key = self._stored, self.indexed, self.key
        same: list[dict[str, Any]] = []
        moved: list[dict[str, Any]] = []
        for row in dirty:
            unchanged = stored.get(row[key]) == tuple([row[c] for c in indexed])
            (same if unchanged and self._unindexed else moved).append(row)
        for rows, columns in ((same, self._unindexed), (moved, self.mutable)):
            if rows:
                params = [{"key_": row[key], **{"v_" + c: row[c] for c in columns}} for row in rows]
                _executemany(conn, _update(self.table, key, columns), params)

    @staticmethod
    def _encode(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            for column, value in row.items():
                if type(value) is Json:
                    row[column] = _dump(value.value)


@functools.cache
def _indexed_columns(table: sa.Table) -> frozenset[str]:
    """The columns an index of ``table`` holds, or a partial one's condition reads."""
    names = set()
    for index in table.indexes:
        names.update(column.name for column in index.columns)
        where = index.dialect_options["sqlite"].get("where")
        if where is not None:
            names.update(e.name for e in visitors.iterate(where) if isinstance(e, sa.Column))
    return frozenset(names)


def _executemany(conn: Connection, statement: Any, rows: list[dict[str, Any]]) -> None:
    """``conn.execute(statement, rows)`` without SQLAlchemy's work per row: the statement is
    compiled once per dialect and the rows go to the driver's ``executemany`` as they are
    (plain ints, strings, None and bools, which both drivers take unconverted)."""
    sql, order = _compiled(statement, conn.dialect)
    params: list[Any] = [tuple(row[n] for n in order) for row in rows] if order else rows
    cursor = conn.connection.cursor()
    try:
        cursor.executemany(sql, params)
    except Exception as exc:
        # As conn.execute would raise it (sqlalchemy.exc.IntegrityError, OperationalError...).
        raise sa.exc.DBAPIError.instance(
            sql, params[:3], exc, conn.dialect.loaded_dbapi.Error
        ) from exc
    finally:
        cursor.close()


_COMPILED: dict[tuple[int, str], tuple[str, tuple[str, ...] | None]] = {}


def _compiled(statement: Any, dialect: sa.Dialect) -> tuple[str, tuple[str, ...] | None]:
    """SQL text and, for positional parameters, the order of the names."""
    key = (id(statement), dialect.name)
    found = _COMPILED.get(key)
    if found is None:
        compiled = statement.compile(dialect=dialect)
        order = tuple(compiled.positiontup) if compiled.positional else None
        found = _COMPILED[key] = (compiled.string, order)
    return found


@functools.cache
def _upsert(table: sa.Table, mutable: tuple[str, ...]) -> sa.Insert:
    from sqlalchemy.dialects.mysql import insert

    statement = insert(table)
    return statement.on_duplicate_key_update({c: statement.inserted[c] for c in mutable})


@functools.cache
def _statements(table: sa.Table, key: str, columns: tuple[str, ...]) -> tuple[sa.Select, sa.Insert]:
    """Built once per table: read by keys, insert (updates: ``_update``)."""
    # Every column: a row read back is whole, so the MySQL upsert of ``Rows.flush`` can
    # insert it.
    assert set(columns) == set(table.columns.keys()), table.name
    k = table.c[key]
    select = sa.select(*(table.c[c] for c in columns)).where(
        k.in_(sa.bindparam("keys", expanding=True))
    )
    return select, table.insert()


@functools.cache
def _update(table: sa.Table, key: str, columns: tuple[str, ...]) -> sa.Update:
    """Set ``columns`` (parameters ``v_`` + name) of the row whose key is ``key_``."""
    return (
        table.update()
        .where(table.c[key] == sa.bindparam("key_"))
        .values({c: sa.bindparam("v_" + c) for c in columns})
    )


@functools.cache
def _live_queries(contracts: sa.Table) -> tuple[sa.Select, sa.Select]:
    """Contracts not yet ended of a token, and of a file (parameter ``k``)."""
    c = contracts.c
    read = [c[name] for name in CONTRACT_READ]
    return (
        sa.select(*read).where(c.token_hash == sa.bindparam("k"), c.ended_at.is_(None)),
        sa.select(*read).where(c.file_hash == sa.bindparam("k"), c.ended_at.is_(None)),
    )


CONTRACT_MUTABLE = (
    "token_hash",
    "challenge",
    "challenge_index",
    "state",
    "interval",
    "started_at",
    "due",
    "answered",
    "expiration",
    "ended_at",
    "end_reason",
    "challenges",
    "passed",
    "failed",
    "rejected",
    "version",
)
CONTRACT_READ = ("contract_id", "file_hash", "heartbeat", "seed", *CONTRACT_MUTABLE)
UPTIME_FIELDS = (
    "first_start",
    "closed",
    "seg_start",
    "seg_end",
    "contracts",
    "challenges",
    "passed",
    "failed",
    "expired",
)
TOKEN_COLUMNS = ("token_hash", "address", "ip", "created_at", "deleted_at", "version")
FILE_COLUMNS = (
    "file_hash",
    "size",
    "redundancy",
    "interval",
    "seed",
    "path",
    "added_at",
    "removed_at",
    "version",
)


# What each event type's handler reads beyond the contract its payload names (every
# ``contract_id`` is read, but that of the contract a ``ChunkEncoded`` creates): rows a fold
# that does not hold every row reads for a whole batch at once before applying it.
PREFETCH: dict[str, tuple[str, ...]] = {
    ev.AddressWhitelisted.type_name(): ("whitelist",),
    ev.TokenDeleted.type_name(): ("token",),
    ev.ContractAssigned.type_name(): ("uptime", "file"),
    ev.ChunkEncoded.type_name(): ("file",),
    ev.FileRemoved.type_name(): ("file",),
}
_ENCODED = ev.ChunkEncoded.type_name()


class Fold(EventFold):
    """Folds items into one generation's tables through rows held in memory.

    ``run(conn, items)`` reads what the items will touch, applies them, and writes back, all
    in ``conn``'s transaction. A fold may be run again on later items (a rebuild does, as it
    is the only writer of the generation it builds); a live projector makes one per batch.
    """

    # The node's keys (fingerprints and public halves): no projection holds them.
    IGNORED = ignoring(ev.HeartbeatConfigured, ev.LogKeyConfigured)

    def __init__(self, tables: ProjectionTables, *, empty: bool = False) -> None:
        """``empty``: the tables have no rows yet and only this fold will write them (a
        rebuild's fresh generation), so every row there will ever be is held here, and the
        fold reads nothing back until it has to let rows go (past ``MAX_CACHED``)."""
        self.t = tables
        self._reset()
        self.all_held = empty
        for rows in self._all_rows():
            rows.complete = empty
        self._live_of_token, self._live_of_file = _live_queries(tables.contracts)
        self._handlers: dict[str, Callable[[dict[str, Any], Item], None]] = self.bound_handlers()

    def _reset(self) -> None:
        t = self.t
        self.whitelist = Rows(t.whitelist, "address", ("address", "balance"), ("balance",))
        self.tokens = Rows(t.tokens, "token_hash", TOKEN_COLUMNS, ("deleted_at", "version"))
        self.files = Rows(t.files, "file_hash", FILE_COLUMNS, FILE_COLUMNS[1:])
        self.contracts = Rows(t.contracts, "contract_id", CONTRACT_READ, CONTRACT_MUTABLE)
        self.uptime = Rows(t.uptime, "token_hash", ("token_hash", *UPTIME_FIELDS), UPTIME_FIELDS)
        # Every contract held, by token and by file; and the tokens and files whose contracts
        # not yet ended have all been read (so the held rows answer "which are live").
        self.by_token: dict[str, set[str]] = {}
        self.by_file: dict[str, set[str]] = {}
        self.complete_tokens: set[str] = set()
        self.complete_files: set[str] = set()
        self.all_held = False
        self.conn: Connection | None = None

    def hold_contracts(self, rows: Iterable[Sequence[Any]]) -> None:
        """Hold contract rows (in ``CONTRACT_READ`` order) read in this transaction before any
        of its events were folded, as if this fold had read them."""
        for row in self.contracts.add_found(rows):
            self._index(row)

    def hold_uptime(self, rows: Mapping[str, Sequence[Any] | None]) -> None:
        """Hold uptime rows (token hash, then ``UPTIME_FIELDS``; None for a token with no row)
        read in this transaction before any of its events were folded."""
        self.uptime.add_found(row for row in rows.values() if row is not None)
        for token_hash, row in rows.items():
            if row is None:
                self.uptime.rows.setdefault(token_hash, None)

    def _all_rows(self) -> tuple[Rows, ...]:
        return (self.whitelist, self.tokens, self.files, self.contracts, self.uptime)

    # -- running --------------------------------------------------------------------------------

    def run(self, conn: Connection, items: Iterable[Item]) -> None:
        """Apply ``items`` and write the rows back. Holding every row, the items are applied
        as they stream in; otherwise they are gathered first, to read their rows at once."""
        self.conn = conn
        try:
            if len(self.contracts.rows) > MAX_CACHED:
                self._reset()  # and read rows back from now on
                self.conn = conn
            if not self.all_held:
                items = list(items)
                self._prefetch(conn, items)
            handlers = self._handlers
            for item in items:
                handler = handlers.get(item[3])
                if handler is not None:
                    handler(item[6], item)  # type: ignore[arg-type]
            for rows in self._all_rows():
                rows.flush(conn)
        except BaseException:
            self._reset()  # what is held may not match the rolled-back tables
            raise
        finally:
            self.conn = None

    def _prefetch(self, conn: Connection, items: Sequence[Item]) -> None:
        contract_ids: set[str] = set()
        new_contracts: set[str] = set()
        tokens: set[str] = set()
        deleted: set[str] = set()
        files: set[str] = set()
        addresses: set[str] = set()
        for item in items:
            p = item[6]
            if p is None:
                continue
            kind = item[3]
            cid = p.get("contract_id")
            if cid is not None:
                if kind == _ENCODED:
                    new_contracts.add(cid)
                elif cid not in new_contracts:
                    contract_ids.add(cid)
            for read in PREFETCH.get(kind, ()):
                if read == "whitelist":
                    addresses.add(p["address"])
                elif read == "token":
                    deleted.add(p["token_hash"])
                elif read == "uptime":
                    tokens.add(p["token_hash"])
                else:
                    files.add(p["file_hash"])
        held = self.contracts.rows
        unread = [cid for cid in contract_ids if cid not in held]
        self.contracts.prefetch(conn, unread)
        for cid in unread:
            self._index(held[cid])
        tokens.update(
            row["token_hash"] for cid in contract_ids if (row := held.get(cid)) is not None
        )
        self.uptime.prefetch(conn, tokens | deleted)
        self.tokens.prefetch(conn, deleted)
        self.files.prefetch(conn, files)
        self.whitelist.prefetch(conn, addresses)

    def _index(self, row: dict[str, Any] | None) -> None:
        if row is None:
            return
        if row["token_hash"] is not None:
            self.by_token.setdefault(row["token_hash"], set()).add(row["contract_id"])
        self.by_file.setdefault(row["file_hash"], set()).add(row["contract_id"])

    def _contract(self, cid: str) -> dict[str, Any] | None:
        held = self.contracts.rows
        if cid in held:
            return held[cid]
        row = self.contracts.get(self.conn, cid)  # type: ignore[arg-type]
        self._index(row)
        return row

    def _live(self, key: str, by_file: bool) -> list[dict[str, Any]]:
        """Contracts not yet ended of a token (or a file), held rows overriding the table's."""
        complete = self.complete_files if by_file else self.complete_tokens
        index = self.by_file if by_file else self.by_token
        if key not in complete and not self.all_held:
            query = self._live_of_file if by_file else self._live_of_token
            found = self.conn.execute(query, {"k": key})  # type: ignore[union-attr]
            for row in self.contracts.add_found(found):
                self._index(row)
            complete.add(key)
        rows = self.contracts.rows
        return [
            row
            for cid in sorted(index.get(key, ()))
            if (row := rows[cid]) is not None and row["ended_at"] is None
        ]

    # -- handlers (each as the oracle's, statement for statement) --------------------------------

    @handles(ev.AddressWhitelisted)
    def _whitelisted(self, p: dict[str, Any], item: Item) -> None:
        row = self.whitelist.get(self.conn, p["address"])  # type: ignore[arg-type]
        if row is not None:
            row["balance"] = p["balance"]
            self.whitelist.touch(p["address"])
        else:
            self.whitelist.insert(p["address"], {"address": p["address"], "balance": p["balance"]})

    @handles(ev.TokenCreated)
    def _token_created(self, p: dict[str, Any], item: Item) -> None:
        token_hash = p["token_hash"]
        self.tokens.insert(
            token_hash,
            {
                "token_hash": token_hash,
                "address": p["address"],
                "ip": p["ip"],
                "created_at": item[5],
                "deleted_at": None,
                # The token stream's version (a farmer's token is created through its IP's
                # stream, leaving its own stream empty until it is deleted).
                "version": item[2] if item[1] == ev.token_stream(token_hash) else 0,
            },
        )
        self.uptime.insert(
            token_hash, {"token_hash": token_hash, **dict.fromkeys(UPTIME_FIELDS, 0)}
        )

    @handles(ev.TokenDeleted)
    def _token_deleted(self, p: dict[str, Any], item: Item) -> None:
        token_hash = p["token_hash"]
        row = self.tokens.get(self.conn, token_hash)  # type: ignore[arg-type]
        if row is not None:
            row["deleted_at"] = item[5]
            row["version"] = item[2]
            self.tokens.touch(token_hash)
        for contract in self._live(token_hash, by_file=False):
            if contract["started_at"] is not None:
                self._end_contract(contract["contract_id"], item[5], "token_deleted")

    @handles(ev.FileAdded)
    def _file_added(self, p: dict[str, Any], item: Item) -> None:
        file_hash = p["file_hash"]
        row = {
            "file_hash": file_hash,
            "size": p["size"],
            "redundancy": p["redundancy"],
            "interval": p["interval"],
            "seed": p["seed"],
            "path": p["path"],
            "added_at": item[5],
            "removed_at": None,
            "version": item[2],
        }
        held = self.files.get(self.conn, file_hash)
        if held is not None and held["removed_at"] is not None:
            # Monitored again after its removal, on the terms of this addition (its old
            # contracts ended with the removal).
            held.update(row)
            self.files.touch(file_hash)
        else:
            self.files.insert(file_hash, row)  # a second addition of a live file fails here

    @handles(ev.FileRemoved)
    def _file_removed(self, p: dict[str, Any], item: Item) -> None:
        file_hash = p["file_hash"]
        row = self.files.get(self.conn, file_hash)  # type: ignore[arg-type]
        if row is not None:
            row["removed_at"] = item[5]
            row["version"] = item[2]
            self.files.touch(file_hash)
        for contract in self._live(file_hash, by_file=True):
            if contract["started_at"] is not None:
                self._end_contract(contract["contract_id"], item[5], "file_removed")

    @handles(ev.ChunkEncoded)
    def _chunk_encoded(self, p: dict[str, Any], item: Item) -> None:
        cid = p["contract_id"]
        row = {
            "contract_id": cid,
            "token_hash": None,
            "file_hash": p["file_hash"],
            "heartbeat": p["heartbeat"],
            "seed": p["seed"],
            "state": Json(p["state"]),
            "challenge": None,
            "challenge_index": None,
            "interval": None,
            "started_at": None,
            "due": None,
            "answered": False,
            "expiration": None,
            "ended_at": None,
            "end_reason": None,
            "challenges": 0,
            "passed": 0,
            "failed": 0,
            "rejected": 0,
            "version": 0,
        }
        self.contracts.insert(cid, row)
        self._index(row)
        self._file_version(p["file_hash"], item)

    @handles(ev.ContractAssigned)
    def _contract_assigned(self, p: dict[str, Any], item: Item) -> None:
        cid, now, due = p["contract_id"], item[5], p["due"]
        row = self._contract(cid)
        if row is not None:
            row.update(
                token_hash=p["token_hash"],
                challenge=Json(p["challenge"]),
                challenge_index=p["challenge_index"],
                state=Json(p["state"]),
                interval=p["interval"],
                started_at=now,
                due=due,
                answered=False,
                expiration=due,
                challenges=1,
            )
            self.contracts.touch(cid)
            self._index(row)
        self._file_version(p["file_hash"], item)
        self._uptime(p["token_hash"], lambda cov: cov.cover(now, due), contracts=1, challenges=1)

    @handles(ev.ChallengeIssued)
    def _challenge_issued(self, p: dict[str, Any], item: Item) -> None:
        cid = p["contract_id"]
        row = self._contract(cid)
        if row is None:
            raise _required()
        row.update(
            challenge=Json(p["challenge"]),
            challenge_index=p["challenge_index"],
            state=Json(p["state"]),
            due=p["due"],
            answered=False,
            expiration=p["due"],
            challenges=row["challenges"] + 1,
            version=item[2],
        )
        self.contracts.touch(cid)
        self._uptime(row["token_hash"], None, challenges=1)

    @handles(ev.AnswerPassed)
    def _answer_passed(self, p: dict[str, Any], item: Item) -> None:
        cid, now, expiration = p["contract_id"], item[5], p["expiration"]
        row = self._contract(cid)
        if row is None:
            raise _required()
        row["answered"] = True
        row["expiration"] = expiration
        row["passed"] += 1
        row["version"] = item[2]
        self.contracts.touch(cid)
        self._uptime(row["token_hash"], lambda cov: cov.cover(now, expiration), passed=1)

    @handles(ev.AnswerFailed)
    def _answer_failed(self, p: dict[str, Any], item: Item) -> None:
        cid = p["contract_id"]
        row = self._contract(cid)
        if row is None:
            raise _required()
        row["failed"] += 1
        row["version"] = item[2]
        self.contracts.touch(cid)
        self._uptime(row["token_hash"], None, failed=1)

    @handles(ev.AnswerRejected)
    def _answer_rejected(self, p: dict[str, Any], item: Item) -> None:
        cid = p["contract_id"]
        row = self._contract(cid)
        if row is not None:
            row["rejected"] += 1
            row["version"] = item[2]
            self.contracts.touch(cid)

    @handles(ev.ContractExpired)
    def _contract_expired(self, p: dict[str, Any], item: Item) -> None:
        cid = p["contract_id"]
        self._end_contract(cid, p["expired_at"], "expired", version=item[2])
        row = self._contract(cid)
        assert row is not None  # _end_contract required it
        self._uptime(row["token_hash"], None, expired=1)

    @handles(ev.ContractEnded)
    def _contract_ended(self, p: dict[str, Any], item: Item) -> None:
        self._end_contract(p["contract_id"], item[5], p["reason"], version=item[2])

    # -- helpers --------------------------------------------------------------------------------

    def _file_version(self, file_hash: str, item: Item) -> None:
        row = self.files.get(self.conn, file_hash)  # type: ignore[arg-type]
        if row is not None:
            row["version"] = item[2]
            self.files.touch(file_hash)

    def _end_contract(self, cid: str, at: int, reason: str, version: int | None = None) -> None:
        row = self._contract(cid)
        if row is None:
            raise _required()
        if row["ended_at"] is not None:
            return
        row["ended_at"] = at
        row["end_reason"] = reason
        if version is not None:
            row["version"] = version
        self.contracts.touch(cid)
        token_hash = row["token_hash"]
        if token_hash is None:
            raise _required()  # no uptime row to cut (the oracle's .one() fails alike)
        others = max(
            (
                c["expiration"]
                for c in self._live(token_hash, by_file=False)
                if c["contract_id"] != cid and c["expiration"] is not None
            ),
            default=0,
        )
        self._uptime(token_hash, lambda cov: cov.cut(at, others))

    def _uptime(
        self,
        token_hash: str | None,
        change: Callable[[Coverage], None] | None,
        **counters: int,
    ) -> None:
        row = self.uptime.get(self.conn, token_hash)  # type: ignore[arg-type]
        if row is None:
            if change is not None:
                raise _required()
            return  # the oracle's UPDATE found no row
        for name, amount in counters.items():
            row[name] += amount
        if change is not None:
            cov = Coverage(row["first_start"], row["closed"], row["seg_start"], row["seg_end"])
            change(cov)
            row["first_start"] = cov.first_start
            row["closed"] = cov.closed
            row["seg_start"] = cov.seg_start
            row["seg_end"] = cov.seg_end
        if change is not None or counters:
            self.uptime.touch(token_hash)  # type: ignore[arg-type]


HANDLED = Fold.HANDLED
"""The event types that change a projection (the others only move the checkpoint)."""
