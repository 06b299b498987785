"""Database engines for the ledger: one URL picks MySQL/MariaDB (PyMySQL) or SQLite.

The engines are synchronous SQLAlchemy Core engines; async callers run them in threads.
SQLite write transactions start with ``BEGIN IMMEDIATE`` so that writers serialise up front.
A MySQL URL may name several hosts (a Galera cluster): connections go to the first that
answers (``HostChooser``); ``aborted`` says which driver errors rolled a transaction back whole.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from pymysql.constants import CLIENT
from sqlalchemy.engine import Engine

from ..domain.clock import Clock, SystemClock
from .schema import ledger_head

log = structlog.get_logger("downstream.db")

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


def _require_driver(url: str | sa.URL) -> None:
    """Raise ``ArgumentError`` unless the URL's driver is installed: a URL this node cannot
    use (``postgresql://`` wants psycopg), as an unknown dialect already is, rather than the
    ``ImportError`` create_engine would raise (a traceback on the command line). An unknown
    dialect raises its own ``ArgumentError`` (``NoSuchModuleError``) here."""
    dialect = sa.make_url(url).get_dialect()
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise sa.exc.ArgumentError(f"the database driver is not installed: {exc}") from exc


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


def make_engine(
    url: str,
    *,
    pool_size: int = 8,
    timeouts: DbTimeouts | None = None,
    clock: Clock | None = None,
) -> Engine:
    """An engine for ``url``, its connections bounded by ``timeouts``. A MySQL URL may name
    several hosts as query parameters, ``mysql+pymysql://user:pw@/db?host=h1:3306&host=h2:3306``
    (see ``HostChooser``; ``clock`` times its return to a preferred host)."""
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
    # FOUND_ROWS as SQLAlchemy sets it (connect_args replace its flags); MULTI_STATEMENTS so
    # that an append sends its last two writes, the tree's tiles and the head, in one round
    # trip (``execute_multi``). Every statement's values go through PyMySQL's escaping.
    connect_args["client_flag"] = CLIENT.FOUND_ROWS | CLIENT.MULTI_STATEMENTS
    parsed, hosts = split_hosts(url)
    _require_driver(parsed)
    extra: dict[str, Any] = {"pool_recycle": 3600, "connect_args": connect_args}
    if hosts:
        chooser = HostChooser(hosts, clock=clock or SystemClock())
        # The creator connects itself: SQLAlchemy's connect_args do not reach it.
        extra["creator"] = _host_creator(parsed, chooser, connect_args)
        # A pooled connection lives at most this long, so connections made on a fallback
        # host while a preferred one was down move back to it once it answers again.
        extra["pool_recycle"] = chooser.retry_after
    engine = sa.create_engine(
        parsed,
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
        # Locking reads under the ledger head see the latest commits; plain reads after them
        # must too, which REPEATABLE READ's snapshot would not guarantee.
        isolation_level="READ COMMITTED",
        **extra,
    )
    sa.event.listen(engine, "connect", lambda dbapi_conn, _record: _quick_escape(dbapi_conn))
    sa.event.listen(engine, "connect", lambda dbapi_conn, _record: _causal_reads(dbapi_conn))
    sa.event.listen(engine, "handle_error", _not_ready_is_a_disconnect)
    return engine


# -- Galera: transactions rolled back whole -----------------------------------------------------

# ER_LOCK_DEADLOCK: a deadlock, or on Galera a certification conflict with a transaction
# committed on another node (also reported at COMMIT).
CERTIFICATION_CONFLICT = 1213
# ER_UNKNOWN_COM_ERROR: "WSREP has not yet prepared node for application use" (the node is
# not in the primary component, or not synced yet), for any table access, BEGIN and COMMIT.
NODE_NOT_READY = 1047
ABORTED_CODES = frozenset({CERTIFICATION_CONFLICT, NODE_NOT_READY})
# The database's state, not the request's fault: dropped or being restored (ER_BAD_DB_ERROR
# 1049, ER_NO_SUCH_TABLE 1146), or this user's privileges revoked (ER_DBACCESS_DENIED_ERROR
# 1044, ER_ACCESS_DENIED_ERROR 1045, ER_TABLEACCESS_DENIED_ERROR 1142).
UNAVAILABLE_CODES = frozenset({1044, 1045, 1049, 1142, 1146})


def mysql_error_code(exc: BaseException | None) -> int | None:
    """The MySQL error number carried by ``exc`` (a driver error, SQLAlchemy's wrapper of
    one, or an exception caused by one), else ``None``."""
    seen = 0
    while exc is not None and seen < 8:
        orig = getattr(exc, "orig", None)
        candidate = orig if orig is not None else exc
        args = getattr(candidate, "args", ())
        if args and isinstance(args[0], int) and type(candidate).__module__.startswith("pymysql"):
            return args[0]
        exc, seen = exc.__cause__, seen + 1
    return None


def aborted(exc: BaseException) -> int | None:
    """The error number when ``exc`` means "this transaction was rolled back whole, nothing
    was written" (so running the whole unit of work again is safe), else ``None``.

    - 1213 (``ER_LOCK_DEADLOCK``): InnoDB rolls back the whole transaction of a deadlock
      victim; Galera reports a certification failure (a conflicting write set committed on
      another node first) the same way, also at COMMIT, and rolls it back too.
    - 1047 (``ER_UNKNOWN_COM_ERROR``, "WSREP has not yet prepared node for application use"):
      the node is outside the primary component (``wsrep_cluster_status`` is not
      ``Primary``) and refuses every statement, COMMIT included; the write set of a
      transaction refused at COMMIT never reached the cluster.

    Not aborted: 1205 (lock wait timeout rolls back only the statement, the transaction goes
    on), and a connection lost during COMMIT (2013/2006), whose outcome is unknown.

    Documentation: https://mariadb.com/docs/galera-cluster/reference/mariadb-galera-cluster-known-limitations
    (conflicts as deadlock errors, GET_LOCK unsupported),
    https://mariadb.com/docs/reference/mdb/status-variables/wsrep_cluster_status/ and
    https://dev.mysql.com/doc/refman/8.0/en/innodb-deadlocks.html .
    """
    code = mysql_error_code(exc)
    return code if code in ABORTED_CODES else None


# What a node finds when another node (of a cluster, or beside it on one server) created the
# same table, index or row a moment before: ER_TABLE_EXISTS_ERROR, ER_DUP_KEYNAME, ER_DUP_ENTRY,
# and ER_WARN_I_S_SKIPPED_TABLE (1684, the table is being altered by another node's DDL, seen
# by an inspection while it runs).
RACED_CODES = frozenset({1050, 1061, 1062, 1684})


def retry_raced(fn: Callable[[], T], *, tries: int = 5, pause: float = 0.2) -> T:
    """``fn()`` (idempotent schema work: check, then create), run again when it raced another
    node's: on a Galera cluster a named lock excludes only the clients of one node, so two
    nodes starting together may both find a table missing; DDL is replicated in total
    order, and the loser finds it made (or its write set aborted) and checks again."""
    for n in range(tries):
        try:
            return fn()
        except sa.exc.DBAPIError as exc:
            code = mysql_error_code(exc)
            if n == tries - 1 or not (code in RACED_CODES or code in ABORTED_CODES):
                raise
            log.info("schema_raced", code=code)
            time.sleep(pause * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")


def _causal_reads(dbapi_conn: Any) -> None:
    """On a Galera node, reads wait until the node has applied what the cluster committed
    before them (``wsrep_sync_wait = 1``): a read on one node then sees a write certified on
    another, as on one server, and a decision read under the ledger lock is not stale (a
    stale one would only fail certification and run again). Nothing on other servers."""
    with dbapi_conn.cursor() as cur:
        cur.execute("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
        row = cur.fetchone()
        if row is not None and str(row[1]).upper() == "ON":
            cur.execute("SET SESSION wsrep_sync_wait = 1")


def _not_ready_is_a_disconnect(context: sa.engine.ExceptionContext) -> None:
    """A node that answers 1047 answers nothing else until it rejoins the primary component:
    its connections are dropped like dead ones, so the next try (a read's, or a unit of
    work's) takes a fresh connection, which ``HostChooser`` puts on a node that is ready."""
    if mysql_error_code(context.original_exception) == NODE_NOT_READY:
        context.is_disconnect = True


# -- several hosts in one URL ------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def split_hosts(url: str | sa.URL) -> tuple[sa.URL, tuple[Host, ...]]:
    """The URL without its ``host`` query parameters, and the hosts they name, in order
    (``host=h1:3306&host=h2``; no port: 3306). No ``host`` parameter: no hosts. A URL with
    both a host before the path and ``host`` parameters, or a malformed one, is refused."""
    parsed = sa.make_url(url)
    given = parsed.query.get("host")
    if given is None:
        return parsed, ()
    if parsed.host:
        raise ValueError(
            "give the hosts either before the database name or as host= parameters, not both"
        )
    hosts = []
    for item in (given,) if isinstance(given, str) else given:
        name, _, port = item.rpartition(":") if ":" in item else (item, "", "3306")
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad host parameter {item!r}: expected host or host:port")
        hosts.append(Host(name, int(port)))
    if not parsed.drivername.endswith("pymysql"):
        raise ValueError("several hosts need the PyMySQL driver (mysql+pymysql://)")
    return parsed.difference_update_query(["host"]), tuple(hosts)


class HostChooser:
    """The order in which to try a URL's hosts for a new connection.

    The hosts' own order is the operator's preference. A host that failed (refused the
    connection, timed out, or was not a ready Galera node) goes to the end of the order for
    ``retry_after`` seconds, so new connections go to the next one that worked and do not
    wait on a dead host each time; after that the preferred host is tried first again.
    """

    def __init__(self, hosts: Iterable[Host], *, clock: Clock, retry_after: float = 30.0) -> None:
        self.hosts = tuple(hosts)
        if not self.hosts:
            raise ValueError("no host to choose from")
        self.retry_after = retry_after
        self._clock = clock
        self._failed: dict[Host, float] = {}
        self._lock = threading.Lock()

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def order(self) -> list[Host]:
        now = self._now()
        with self._lock:
            recent = {h for h, at in self._failed.items() if now - at < self.retry_after}
        return [h for h in self.hosts if h not in recent] + [h for h in self.hosts if h in recent]

    def failed(self, host: Host) -> None:
        with self._lock:
            self._failed[host] = self._now()

    def worked(self, host: Host) -> None:
        with self._lock:
            self._failed.pop(host, None)


CONNECT_TIMEOUT = 2  # seconds per host: a dead host must not hold a request up for long


def _host_creator(url: sa.URL, chooser: HostChooser, connect_args: dict[str, Any]) -> Any:
    """A DB-API ``connect()`` that tries ``chooser``'s hosts in order: the first that accepts
    the connection and, on Galera, says it is ready (``wsrep_ready``) is used."""
    import pymysql

    dialect = url.get_dialect()()

    def connect() -> Any:
        errors = []
        for host in chooser.order():
            _, kwargs = dialect.create_connect_args(url.set(host=host.host, port=host.port))
            kwargs.update(connect_args)
            kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
            try:
                conn = pymysql.connect(**kwargs)
                try:
                    if not _ready(conn):
                        raise pymysql.err.OperationalError(NODE_NOT_READY, "wsrep_ready is OFF")
                except Exception:
                    conn.close()
                    raise
            except pymysql.err.MySQLError as exc:
                chooser.failed(host)
                errors.append(f"{host}: {exc}")
                log.warning("db_host_failed", host=str(host), error=str(exc)[:200])
                continue
            if host != chooser.hosts[0] or errors:
                log.info("db_host_connected", host=str(host), preferred=str(chooser.hosts[0]))
            chooser.worked(host)
            return conn
        raise pymysql.err.OperationalError(2003, "no database host answered: " + "; ".join(errors))

    return connect


def _ready(conn: Any) -> bool:
    """Whether a new connection's server may serve transactions: not a Galera node, or one
    whose ``wsrep_ready`` is ON (synced, in the primary component). A MariaDB built with
    Galera but running alone says ``wsrep_ready`` OFF too, and ``wsrep_on`` OFF."""
    with conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep_ready'")
        row = cur.fetchone()
        if row is None or str(row[1]).upper() == "ON":
            return True
        cur.execute("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
        row = cur.fetchone()
    return row is None or str(row[1]).upper() != "ON"


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
    _require_driver(url)
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


def execute_multi(conn: sa.engine.Connection, sql: str, params: Any) -> None:
    """MySQL: ``sql``, several ``;``-separated statements, in one round trip on ``conn``'s
    transaction, every statement's error raised as SQLAlchemy raises a statement's.

    On the DBAPI cursor, not through SQLAlchemy: SQLAlchemy would read the results after the
    first only when it closes the cursor, and swallow an error found there."""
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, params)
        while cursor.nextset():
            pass
    except conn.dialect.loaded_dbapi.Error as exc:
        raise sa.exc.DBAPIError.instance(sql, params, exc, conn.dialect.loaded_dbapi.Error) from exc
    finally:
        cursor.close()


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
