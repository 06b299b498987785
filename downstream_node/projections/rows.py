"""The write-back of a fold: rows of one table held in memory, keyed by primary key, read
in one query per batch (``prefetch``), changed in Python, and written back at ``flush`` in one
``executemany`` of compiled statements for new rows and one for changed rows.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql import visitors

from ..ledger.db import in_lists

# json.dumps(value, sort_keys=True, separators=(",", ":")), with its encoder made once.
_dump = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


class Json:
    """A value for a JSON text column, encoded when its row is written: a contract's state
    may change several times in one batch, and only the last one is written."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


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
