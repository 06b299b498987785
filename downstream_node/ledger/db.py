"""Database engines for the ledger: one URL picks MySQL/MariaDB (PyMySQL) or SQLite.

The engines are synchronous SQLAlchemy Core engines; async callers run them in threads.
SQLite write transactions start with ``BEGIN IMMEDIATE`` so that writers serialise up front.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .schema import ledger_head

DEFAULT_SQLITE_FILE = "downstream.db"
# Values per IN list: well under every database's limit on bound parameters.
IN_LIST = 500

T = TypeVar("T")


def default_url() -> str:
    """``DOWNSTREAM_DB`` if set, else an SQLite file in the working directory."""
    return os.environ.get("DOWNSTREAM_DB") or f"sqlite:///{Path.cwd() / DEFAULT_SQLITE_FILE}"


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url)
    return url.startswith("sqlite")


def sqlite_file(url: str) -> Path | None:
    """The database file an SQLite URL names (``sqlite:///path``, or the URI form
    ``sqlite:///file:path?mode=ro&uri=true``); ``None`` for an in-memory database."""
    parsed = sa.engine.make_url(url)
    database = parsed.database or ""
    if parsed.query.get("uri") == "true":
        database = database.removeprefix("file:")
    return None if database in ("", ":memory:") else Path(database)


class NoLedger(Exception):
    """The database holds no ledger: nothing for a reading command to read."""


def existing_ledger(url: str) -> Engine:
    """An engine on a database that already holds a ledger, for commands that only read it
    (``ledger verify``, ``audit uptime``): a missing SQLite file is not created on the way,
    and a database without the ledger's tables is ``NoLedger``, not a failed query."""
    if is_sqlite(url):
        database = sqlite_file(url)
        if database is not None and not database.exists():
            raise NoLedger(f"no database file at {database}; 'initdb' creates a ledger")
    engine = make_engine(url)
    if not sa.inspect(engine).has_table(ledger_head.name):
        engine.dispose()
        raise NoLedger("this database holds no ledger; 'initdb' creates one")
    return engine


@dataclass(frozen=True)
class DbTimeouts:
    """Seconds a connection may take to connect, and then to read or write on its socket
    (PyMySQL's ``connect_timeout``, ``read_timeout``, ``write_timeout``); ``None``: the
    driver's own (no bound on reads and writes). On SQLite ``read`` is also how long a
    statement waits for another connection's lock (busy timeout; else 30 s). A read that
    runs out drops its connection: a COMMIT cut short that way has an unknown outcome, as
    the store already reports (``AppendFailed(before_commit=False)``)."""

    connect: float | None = None
    read: float | None = None
    write: float | None = None


def make_engine(url: str, *, pool_size: int = 8, timeouts: DbTimeouts | None = None) -> Engine:
    timeouts = timeouts or DbTimeouts()
    if is_sqlite(url):
        return _sqlite_engine(url, pool_size, busy=timeouts.read or SQLITE_BUSY)
    if url.startswith("mysql://"):
        url = "mysql+pymysql://" + url[len("mysql://") :]
    sep = "&" if "?" in url else "?"
    if "charset=" not in url:
        url += f"{sep}charset=utf8mb4"
    connect_args = {
        name: value
        for name, value in (
            ("connect_timeout", timeouts.connect),
            ("read_timeout", timeouts.read),
            ("write_timeout", timeouts.write),
        )
        if value is not None
    }
    engine = sa.create_engine(
        url,
        connect_args=connect_args,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No ping per checkout: it was a round trip more for every transaction. A pooled
        # connection that died (a server restart, a KILL) fails its first statement instead;
        # SQLAlchemy then drops every connection pooled before that moment and the node's
        # reads are retried once on a fresh connection (Node._read_now), and so is a unit of
        # work whose first statement found the connection dead (EventStore.transact); other
        # write transactions ping their connection first (write_transaction).
        pool_pre_ping=False,
        # No rollback when a connection goes back to the pool: every transaction here is a
        # SQLAlchemy one, which the connection's close() rolls back itself if it is still
        # open; after a commit the pool's rollback was one more round trip for nothing.
        pool_reset_on_return=None,
        pool_recycle=3600,
        # Locking reads under the ledger head see the latest commits; plain reads after them
        # must too, which REPEATABLE READ's snapshot would not guarantee.
        isolation_level="READ COMMITTED",
    )
    sa.event.listen(engine, "connect", lambda dbapi_conn, _record: _quick_escape(dbapi_conn))
    return engine


# What a MySQL string literal must not hold raw: PyMySQL's escape table without the double
# quote, which is harmless inside the single quotes PyMySQL puts around every string.
MYSQL_SPECIAL = ("\\", "'", "\0", "\n", "\r", "\x1a")


def _quick_escape(dbapi_conn: object) -> None:
    """Let PyMySQL send a string with nothing to escape as it is.

    PyMySQL escapes every string with ``str.translate`` and a table that maps characters to
    strings, which takes about 20 µs for the 1 KiB of JSON an answer event holds: an
    append's largest cost after the database's own. Six substring tests find the (rare)
    strings that need it, which still go through PyMySQL's own escaping. A PyMySQL without
    this private method keeps its escaping unchanged.
    """
    escape = getattr(dbapi_conn, "_escape_string", None)
    if escape is None:
        return

    def quick(text: str) -> str:
        for special in MYSQL_SPECIAL:
            if special in text:
                return escape(text)
        return text

    dbapi_conn._escape_string = quick  # type: ignore[attr-defined]


SQLITE_BUSY = 30.0  # seconds a statement waits for another connection's lock, by default


def _sqlite_engine(url: str, pool_size: int = 8, busy: float = SQLITE_BUSY) -> Engine:
    # A file's pool keeps as many connections as the node has threads: opening one runs
    # the pragmas below, which an overflow connection would repeat on every checkout.
    memory = sa.make_url(url).database in (None, "", ":memory:")  # sqlite:// is in memory too
    pool = {} if memory else {"pool_size": pool_size, "max_overflow": pool_size}
    engine = sa.create_engine(
        url, connect_args={"timeout": busy, "check_same_thread": False}, **pool
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
        if not memory:
            _wal(cur)
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA mmap_size=1073741824")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    def _do_begin(dbapi_conn) -> None:  # type: ignore[no-untyped-def]
        # Straight to the driver (every transaction, every read, starts here), inside
        # SQLAlchemy's begin, which still turns a driver error into its own.
        dbapi_conn.execute("BEGIN IMMEDIATE" if dbapi_conn.info.get("write") else "BEGIN")

    engine.dialect.do_begin = _do_begin  # type: ignore[method-assign]
    return engine


def _wal(cur: sqlite3.Cursor) -> None:
    """Switch the file to WAL (persistent: later connections find it set and skip this).

    Switching needs the file to itself and SQLite does not wait for that (no busy handler),
    so connections opening a fresh file together retry for a while instead of failing.
    """
    deadline = time.monotonic() + 30
    while True:
        if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            return
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01 + random.random() * 0.04)


def server_lock_name(engine: Engine, name: str) -> str:
    """``name`` for this engine's database only: MySQL's named locks are server-wide, and
    two ledgers on one server must not wait for each other. At most 64 characters."""
    full = f"{name}.{engine.url.database}"
    if len(full) <= 64:
        return full
    return f"{name[:40]}.{hashlib.sha256(full.encode()).hexdigest()[:20]}"


@contextmanager
def named_lock(conn: sa.engine.Connection, name: str, wait: int) -> Iterator[bool]:
    """A MySQL named lock for this database only (``server_lock_name``), held by ``conn``:
    yields whether it was had within ``wait`` seconds, and releases it afterwards. The
    caller says what a lock not had means. Use before ``conn.begin()``."""
    name = server_lock_name(conn.engine, name)
    got = conn.execute(sa.select(sa.func.get_lock(name, wait))).scalar() == 1
    conn.commit()
    try:
        yield got
    finally:
        if got:
            conn.execute(sa.select(sa.func.release_lock(name)))
            conn.commit()


@contextmanager
def schema_lock(
    conn: sa.engine.Connection, name: str = "downstream_node.schema", wait: int = 60
) -> Iterator[None]:
    """Hold a MySQL named lock around DDL (not transactional there: two nodes that both see
    a table missing would both create it, and one fails). SQLite's DDL runs under its write
    lock, so there this does nothing. Use before ``conn.begin()``."""
    if is_sqlite(conn.engine):
        yield
        return
    with named_lock(conn, name, wait) as got:
        if not got:
            raise TimeoutError(
                f"waited {wait} s for another node's schema change "
                f"({server_lock_name(conn.engine, name)})"
            )
        yield


def in_lists(values: Iterable[T], size: int = IN_LIST) -> Iterator[list[T]]:
    """``values`` in lists of at most ``size``, one per ``IN (...)`` query."""
    ordered = list(values)
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


def create_all(conn: sa.engine.Connection, metadata: sa.MetaData) -> None:
    """Create ``metadata``'s missing tables, and the indexes that tables an older release
    made lack (``create_all`` leaves a table that exists as it is)."""
    metadata.create_all(conn)
    for table in metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def write_transaction(engine: Engine, *, ping: bool = True) -> sa.engine.Connection:
    """A connection whose next ``begin()`` takes the write lock at once on SQLite.

    Use as ``with write_transaction(engine) as conn, conn.begin(): ...``. On MySQL the pooled
    connection is pinged first and replaced if the server dropped it, so that a write does
    not fail for a connection that died in the pool (where a plain read is simply retried).
    ``ping=False``: the caller retries a transaction whose first statement failed that way
    (``EventStore.transact``, which saves the round trip on every batch).
    """
    conn = engine.connect()
    conn.info["write"] = True
    if ping and not is_sqlite(engine):
        try:
            conn.connection.dbapi_connection.ping(reconnect=False)  # type: ignore[union-attr]
        except Exception:
            conn.invalidate()  # the next statement takes a fresh connection from the pool
    return conn


def read_transaction(engine: Engine) -> sa.engine.Connection:
    conn = engine.connect()
    conn.info["write"] = False
    return conn
