"""The event store: atomic, optimistically concurrent, idempotent appends and ordered reads.

Every append runs in one transaction that locks the single ``ledger_head`` row, checks the
expected stream versions, draws gap-free positions, extends the hash chain, inserts the rows,
lets in-transaction listeners (the projections) fold them, and moves the head. The lock ends
with the commit, so positions become visible strictly in order, across processes too.
"""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from ..domain.canonical import canonical, chain_next
from ..domain.clock import from_micros, to_micros
from ..domain.errors import ConcurrencyConflict, LedgerError
from ..domain.public import PublicForms
from ..domain.records import NewEvent, RecordedEvent
from . import reader, tree
from .db import (
    aborted,
    create_all,
    execute_multi,
    in_lists,
    is_sqlite,
    named_lock,
    read_transaction,
    retry_raced,
    write_transaction,
)
from .schema import (
    EVENT_COLUMNS,
    GENESIS_HASH,
    HEAD_ID,
    REQUEST_ID_INDEX,
    events,
    ledger_head,
    metadata,
)


class AppendFailed(LedgerError):
    """The database failed during an append; ``before_commit`` says nothing was written."""

    def __init__(self, cause: BaseException, *, before_commit: bool) -> None:
        super().__init__(
            f"append failed ({'before' if before_commit else 'during'} commit): {cause!r}"
        )
        self.cause = cause
        self.before_commit = before_commit


log = structlog.get_logger("downstream.ledger")
T = TypeVar("T")


class _Dropped(Exception):
    """A unit of work's first statement found its pooled connection dead (see transact)."""


class _Aborted(Exception):
    """The database rolled a unit of work back whole (``db.aborted``): nothing was written."""

    def __init__(self, cause: BaseException, code: int) -> None:
        super().__init__(f"transaction aborted ({code}): {cause!r}")
        self.cause = cause
        self.code = code


@dataclass(frozen=True)
class Backoff:
    """How often, and after which pauses, a unit of work the database aborted runs again.

    ``tries`` runs in all; before run *n+1* a pause of ``first * 2**(n-1)`` seconds, at most
    ``most``, jittered to between half and all of it (``random`` in [0, 1)) so that writers
    that collided do not collide again in step. ``random`` and ``sleep`` are injected.
    """

    # Writers on three Galera nodes at once, on the one head row: 5 tries of 5-50 ms were
    # spent now and then under test load (a 503); 10 of 5-100 ms (at most ~0.6 s) were not.
    tries: int = 10
    first: float = 0.005
    most: float = 0.1
    random: Callable[[], float] = random.random
    sleep: Callable[[float], None] = time.sleep

    def pauses(self) -> Iterator[float]:
        for n in range(self.tries - 1):
            pause = min(self.most, self.first * 2**n)
            yield pause * (0.5 + self.random() / 2)


@dataclass(frozen=True)
class AppendRequest:
    """Append ``events`` to ``stream_id`` if it is at ``expected_version`` (None: any).

    ``guards``: other streams that must still be at the given versions, checked under the
    same lock (e.g. an answer on a contract stream requires its token's stream unchanged, so
    it cannot be recorded after the token's deletion). A guard that fails is a
    ``ConcurrencyConflict`` naming the guarded stream; nothing is written to it.
    """

    stream_id: str
    expected_version: int | None
    events: Sequence[NewEvent]
    request_id: str | None = None
    guards: Mapping[str, int] | Sequence[tuple[str, int]] = ()
    # Per event, made once when the request is made: (payload text, the payload it decodes
    # to, meta text, meta, occurred_at in microseconds). The transaction uses these, so what
    # was validated is exactly what is written, whatever the caller does with its dicts.
    encoded: tuple[tuple[str, dict[str, Any], str, dict[str, Any], int], ...] = field(
        default=(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Held as a tuple: validated below and read again in the transaction, so a generator
        # (or a list the caller goes on changing) cannot be consumed or altered in between.
        object.__setattr__(self, "events", tuple(self.events))
        guards = self.guards.items() if isinstance(self.guards, Mapping) else self.guards
        object.__setattr__(self, "guards", tuple((str(g), int(v)) for g, v in guards))
        for guarded, _ in self.guards:
            if not guarded or len(guarded) > 160 or guarded.endswith(" "):
                raise ValueError("a guarded stream id must be 1..160 characters, no end space")
        if not self.events:
            raise ValueError("an append needs at least one event")
        if not self.stream_id or len(self.stream_id) > 160:
            raise ValueError("stream id must be 1..160 characters")
        if self.request_id is not None and not 0 < len(self.request_id) <= 128:
            raise ValueError("request id must be 1..128 characters")
        for name, value in (("stream id", self.stream_id), ("request id", self.request_id)):
            # MySQL compares VARCHARs ignoring trailing spaces: "s " would share stream "s".
            if value is not None and value.endswith(" "):
                raise ValueError(f"{name} must not end with a space")
        encoded = []
        for new in self.events:
            # Refused here, before the request can join a batch or take the ledger lock, so a
            # float or a naive time raises its own TypeError/ValueError and fails no neighbour.
            if not 0 < len(new.event_type) <= 64:
                raise ValueError("event type must be 1..64 characters")
            if not 0 <= new.schema_version <= 32767:
                raise ValueError("schema version must be 0..32767")
            payload_text, payload = canonical(dict(new.payload))
            meta_text, meta = canonical(dict(new.meta))
            encoded.append((payload_text, payload, meta_text, meta, to_micros(new.occurred_at)))
        object.__setattr__(self, "encoded", tuple(encoded))


@dataclass(frozen=True)
class AppendResult:
    """Where an append landed. ``duplicate`` means an earlier append had the same request id."""

    stream_id: str
    positions: tuple[int, ...]
    stream_version: int
    duplicate: bool = False
    events: tuple[RecordedEvent, ...] = ()
    # The events' leaf hashes in the ledger's Merkle tree (empty when the store keeps none).
    leaves: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Head:
    position: int
    hash: str
    projection_generation: int


class Listener(Protocol):
    """Folds freshly appended events inside the append's transaction (a projection): on
    ``unit.conn``, the head as ``unit.head`` found it under the lock."""

    def __call__(self, unit: UnitOfWork, recorded: Sequence[RecordedEvent]) -> None: ...


BatchOutcome = AppendResult | LedgerError
# A unit of work's decision, made under the ledger lock: the requests to append (see transact).
Decide = Callable[["UnitOfWork"], Iterable[AppendRequest | None]]

# The append transaction's statements, built once.
VERSIONS_PER_QUERY = 100  # SQLite allows 500 SELECTs in one compound
VERSIONS_QUERY_SIZES = (1, 2, 4, 8, 16, 32, 64, VERSIONS_PER_QUERY)
LOCK_HEAD = sa.select(ledger_head).where(ledger_head.c.id == HEAD_ID).with_for_update()
MOVE_HEAD = (
    ledger_head.update()
    .where(ledger_head.c.id == HEAD_ID)
    .values(position=sa.bindparam("new_position"), hash=sa.bindparam("new_hash"))
)


def insert_events_sql(dialect: sa.Dialect) -> str:
    """The events ``INSERT`` as driver SQL with positional parameters, for
    ``exec_driver_sql`` with one tuple per row: SQLAlchemy's compiled ``INSERT`` processes
    every row's parameters in Python (a third of the statement's time for 64 rows), while
    these rows hold only ints, strings and None, which both drivers take as they are."""
    quote = dialect.identifier_preparer.quote
    mark = "?" if dialect.paramstyle == "qmark" else "%s"  # sqlite3; PyMySQL's format
    return (
        f"INSERT INTO {quote(events.name)} ({', '.join(quote(c) for c in EVENT_COLUMNS)})"
        f" VALUES ({', '.join([mark] * len(EVENT_COLUMNS))})"
    )


@functools.cache
def stream_versions_query(count: int) -> sa.CompoundSelect | sa.Select:
    """``(stream_id, max version)`` of ``count`` streams (parameters ``s0``...), one query.

    SQLite's form: a scalar ``MAX`` per stream, answered from the (stream_id, version) index
    in a few page reads; ``GROUP BY stream_id`` over an ``IN`` list would make SQLite read
    every version of every stream named.
    """
    parts = []
    for i in range(count):
        stream = sa.bindparam(f"s{i}", type_=sa.String(160))
        latest = sa.select(sa.func.max(events.c.version)).where(events.c.stream_id == stream)
        parts.append(sa.select(stream.label("stream_id"), latest.scalar_subquery().label("v")))
    return parts[0] if count == 1 else sa.union_all(*parts)


# MySQL's form: a range or a loose index scan of the (stream_id, version) index, picked on
# cost (loose when streams hold many versions). Parsing and planning the UNION of a scalar
# MAX per stream took MariaDB twice as long: 1.7-2.3 against 1.1-1.4 ms for 100 streams.
STREAM_VERSIONS_GROUPED = (
    sa.select(events.c.stream_id, sa.func.max(events.c.version))
    .where(events.c.stream_id.in_(sa.bindparam("stream_ids", expanding=True)))
    .group_by(events.c.stream_id)
)


def stream_versions(conn: Connection, stream_ids: Iterable[str]) -> dict[str, int]:
    """Each stream's version (0 for a stream with no events), in the caller's transaction:
    one query per 100 streams on SQLite, per 500 on MySQL."""
    versions = dict.fromkeys(stream_ids, 0)
    if conn.dialect.name != "sqlite":
        for chunk in in_lists(sorted(versions)):
            for stream_id, version in conn.execute(STREAM_VERSIONS_GROUPED, {"stream_ids": chunk}):
                versions[stream_id] = int(version)
        return versions
    for chunk in in_lists(sorted(versions), VERSIONS_PER_QUERY):
        # Padded (repeating the last stream) to one of a few sizes, so that only those
        # few statements are ever compiled.
        size = next(n for n in VERSIONS_QUERY_SIZES if n >= len(chunk))
        chunk += chunk[-1:] * (size - len(chunk))
        for stream_id, version in conn.execute(
            stream_versions_query(size), {f"s{i}": stream for i, stream in enumerate(chunk)}
        ):
            versions[stream_id] = int(version or 0)
    return versions


FIND_REQUESTS = (
    sa.select(
        events.c.request_id,
        events.c.position,
        events.c.stream_id,
        events.c.version,
        events.c.event_type,
    )
    .where(events.c.request_id.in_(sa.bindparam("request_ids", expanding=True)))
    .order_by(events.c.position)
    # Most events have no request id, and InnoDB counts all NULLs as one value by default,
    # so its sampled statistics can put hundreds of rows behind each id: with more ids than
    # the optimizer dives into (200), it may then scan the whole ledger under the ledger lock
    # (seen: 20 ms at 70,000 events, growing with the ledger); SQLite does the same once
    # ANALYZE has run. A few ids among many events: the index is always the right plan.
    .with_hint(events, f"FORCE INDEX ({REQUEST_ID_INDEX})", "mysql")
    .with_hint(events, f"FORCE INDEX ({REQUEST_ID_INDEX})", "mariadb")
)
# SQLAlchemy renders no table hint for SQLite: the same query, with SQLite's own.
FIND_REQUESTS_SQLITE = sa.text(
    "SELECT request_id, position, stream_id, version, event_type "
    f"FROM events INDEXED BY {REQUEST_ID_INDEX} "
    "WHERE request_id IN :request_ids ORDER BY position"
).bindparams(sa.bindparam("request_ids", expanding=True, type_=sa.String()))


@dataclass(frozen=True)
class RecordedRequest:
    """What an earlier append under a request id recorded: where, and which events."""

    stream_id: str
    positions: tuple[int, ...]
    stream_version: int
    event_types: tuple[str, ...]


def find_requests(conn: Connection, request_ids: Iterable[str]) -> dict[str, RecordedRequest]:
    """The appends already recorded under these request ids, in one query per 500."""
    rows: dict[str, list[Any]] = {}
    query = FIND_REQUESTS_SQLITE if conn.dialect.name == "sqlite" else FIND_REQUESTS
    for chunk in in_lists(sorted(request_ids)):
        for row in conn.execute(query, {"request_ids": chunk}):
            rows.setdefault(row.request_id, []).append(row)
    return {
        request_id: RecordedRequest(
            found[0].stream_id,
            tuple(r.position for r in found),
            found[-1].version,
            tuple(r.event_type for r in found),
        )
        for request_id, found in rows.items()
    }


class UnitOfWork:
    """What ``EventStore.transact`` hands a decision and then its listeners: the transaction's
    connection, the head found under the ledger lock, and the appends recorded under request
    ids, each id looked up once per unit (the append that follows the decision does not ask
    again).

    ``memo``: what a step of the unit read and a later step may reuse instead of reading it
    again, under keys of the reader's choosing. It holds until the unit ends: nothing else
    writes while the unit holds the lock, and the unit's own appends come after its decision.
    """

    def __init__(self, conn: Connection, head: Head) -> None:
        self.conn = conn
        self.head = head
        self.memo: dict[str, Any] = {}
        self._requests: dict[str, RecordedRequest | None] = {}

    def recorded(self, request_ids: Iterable[str]) -> dict[str, RecordedRequest]:
        """The appends recorded under these request ids (ids with none are left out)."""
        ids = set(request_ids)
        unknown = ids - self._requests.keys()
        if unknown:
            self._requests.update(dict.fromkeys(unknown))
            self._requests.update(find_requests(self.conn, unknown))
        return {r: found for r in ids if (found := self._requests[r]) is not None}


@dataclass
class Seen:
    """What one append transaction learnt: stream versions as of its head position ``after``
    (it found the head at ``before``)."""

    before: int = -1
    after: int = -1
    versions: dict[str, int] = field(default_factory=dict)
    frontier: Any = None  # the tree's state after the append, when the store keeps one


class VersionCache:
    """Stream versions as of one head position, learnt from this store's own commits.

    Valid only while the head is still at that position: any append, by this process or
    another, moves the head, and the next transaction, finding the head elsewhere, asks the
    database. So a process appending alone asks only about streams it has not seen yet.
    """

    LIMIT = 100_000

    def __init__(self) -> None:
        self._at = -1
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, position: int, streams: set[str]) -> dict[str, int]:
        with self._lock:
            if position != self._at:
                return {}
            held = self._versions
            return {s: held[s] for s in streams if s in held}

    def committed(self, seen: Seen) -> None:
        with self._lock:
            if seen.before != self._at or len(self._versions) > self.LIMIT:
                self._versions = {}  # what is held is not as of ``before``: start afresh
            self._versions.update(seen.versions)
            self._at = seen.after

    def clear(self) -> None:
        with self._lock:
            self._at, self._versions = -1, {}


# MySQL named lock (one per database: named_lock) under which nodes starting together create
# the schema.
SCHEMA_LOCK = "downstream_node.ledger.schema"
SCHEMA_LOCK_WAIT = 60


class EventStore:
    """Synchronous event store over one SQLAlchemy engine; safe to call from many threads."""

    def __init__(
        self,
        engine: Engine,
        listeners: Sequence[Listener] = (),
        public: PublicForms | None = None,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        """``public``: the ledger's public forms (its commitment key); with them every append
        also extends the Merkle tree over the events, in the same transaction. ``backoff``:
        how a unit of work the database aborted whole runs again."""
        self.engine = engine
        self.listeners: list[Listener] = list(listeners)
        self.backoff = backoff or Backoff()
        self.aborted_retries = 0  # units of work run again after the database aborted them
        self._versions = VersionCache()
        self._insert_events = insert_events_sql(engine.dialect)
        self._move_head_text: tuple[str, dict[str, Any]] | None = None  # MySQL, compiled once
        self.tree: tree.TreeKeeper | None = None
        if public is not None:
            self.keep_tree(public)

    def keep_tree(self, public: PublicForms) -> None:
        """From now on, extend the Merkle tree with every append (the composition root calls
        this once the node has loaded the ledger's commitment key)."""
        self.tree = tree.TreeKeeper(public)

    def catch_up_tree(self, batch: int = 10_000) -> int:
        """Bring the tree level with the ledger, ``batch`` events per transaction (so a node
        starting on a long ledger made without the tree does not hold the lock for long);
        the tree's size."""
        tree = self.tree
        if tree is None:
            raise LedgerError("this store keeps no tree")

        def step() -> tuple[Any, Any]:
            try:
                with write_transaction(self.engine) as conn, conn.begin():
                    head = conn.execute(LOCK_HEAD).one()
                    return head, tree.state(conn, head.position, limit=batch)
            except Exception:
                tree.clear()  # whatever it held may not have been committed
                raise

        while True:
            # Nodes of a Galera cluster starting together lock the head row each on its own
            # node: the losers' transactions are aborted whole, and run again.
            head, state = self.retrying(step)
            tree.committed(state)
            if state.frontier.size >= head.position:
                return int(state.frontier.size)

    # -- schema -------------------------------------------------------------------------------

    def create_schema(self) -> None:
        """Create the ledger tables and the head row; idempotent.

        Safe when several nodes start at once on a fresh database: SQLite runs it all under
        the write lock, MySQL (whose DDL is not transactional) under a named server lock;
        on a Galera cluster, where that lock is per node, a node that raced another one
        checks again (``retry_raced``).
        """
        retry_raced(self._create_schema)

    def _create_schema(self) -> None:
        with write_transaction(self.engine) as conn:
            locked = (
                contextlib.nullcontext(True)
                if is_sqlite(self.engine)
                else named_lock(conn, SCHEMA_LOCK, SCHEMA_LOCK_WAIT)
            )
            with locked as got:
                if not got:
                    raise LedgerError("timed out waiting for another node to create the schema")
                with conn.begin():
                    # With any index missing put back: the request-id lookup names its index
                    # (FORCE INDEX / INDEXED BY), and would refuse every answer without it.
                    create_all(conn, metadata)
                    exists = conn.execute(
                        sa.select(ledger_head.c.id).where(ledger_head.c.id == HEAD_ID)
                    ).first()
                    if exists is None:
                        conn.execute(
                            ledger_head.insert().values(
                                id=HEAD_ID, position=0, hash=GENESIS_HASH, projection_generation=1
                            )
                        )

    # -- appending ----------------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        expected_version: int | None,
        new_events: Sequence[NewEvent],
        *,
        request_id: str | None = None,
        guards: Mapping[str, int] | None = None,
    ) -> AppendResult:
        """Append atomically; raise ``ConcurrencyConflict`` when the stream has moved on."""
        outcome = self.append_batch(
            [AppendRequest(stream_id, expected_version, new_events, request_id, guards or {})]
        )[0]
        if isinstance(outcome, LedgerError):
            raise outcome
        return outcome

    def append_batch(self, requests: Sequence[AppendRequest]) -> list[BatchOutcome]:
        """Append many independent requests in one transaction (group commit).

        Each request succeeds or fails on its own stream version; a database error fails the
        whole batch with ``AppendFailed`` (raised), telling whether the commit was reached.
        """
        return self.transact(lambda _unit: requests)  # type: ignore[return-value]

    def transact(self, decide: Decide) -> list[BatchOutcome | None]:
        """One unit of work: ``decide`` reads what it needs on the transaction's connection
        under the ledger lock (``UnitOfWork``) and returns the requests to append, ``None``
        where it appends nothing; they are appended in the same transaction.

        What ``decide`` read cannot change before the commit: the lock holds every writer
        off, in this process and in any other. One outcome per request, ``None`` for
        ``None``; a database error (or an exception from ``decide``) fails the whole unit
        with ``AppendFailed``, as ``append_batch`` does.

        A unit the database aborted whole (``db.aborted``: a Galera certification conflict,
        a deadlock, a node outside the primary component; also at COMMIT) wrote nothing and
        runs again from ``decide`` on, in a new transaction, up to ``backoff.tries`` times;
        then ``AppendFailed(before_commit=True)``.
        """
        pauses = self.backoff.pauses()
        while True:
            try:
                return self._attempt(decide)
            except _Aborted as failed:
                pause = next(pauses, None)
                if pause is None:
                    log.warning("transaction_aborted", code=failed.code, tries=self.backoff.tries)
                    raise AppendFailed(failed.cause, before_commit=True) from failed.cause
                self.aborted_retries += 1
                log.info("transaction_aborted_retried", code=failed.code, pause=round(pause, 4))
                self.backoff.sleep(pause)

    def retrying(self, fn: Callable[[], T]) -> T:
        """``fn()``, a transaction of its own (a projection catch-up, a rebuild's swap), run
        again as ``transact`` runs a unit the database aborted whole; when the tries are
        spent its error goes to the caller as it is. On Galera any transaction that takes
        row locks can be aborted, by another node's write set, at any statement."""
        pauses = self.backoff.pauses()
        while True:
            try:
                return fn()
            except Exception as exc:
                code = aborted(exc)
                pause = None if code is None else next(pauses, None)
                if pause is None:
                    raise
                self.aborted_retries += 1
                log.info("transaction_aborted_retried", code=code, pause=round(pause, 4))
                self.backoff.sleep(pause)

    def _attempt(self, decide: Decide) -> list[BatchOutcome | None]:
        try:
            return self._transact(decide, retry_dropped=True)
        except _Dropped:
            # The pooled connection had died (a server restart, a KILL, also one that came
            # while it waited for the lock): its first statement failed and nothing was done
            # in it, so the unit runs once more on a fresh connection. This replaces a ping
            # per transaction, a round trip on every batch.
            return self._transact(decide, retry_dropped=False)

    def _transact(self, decide: Decide, *, retry_dropped: bool) -> list[BatchOutcome | None]:
        committing = False
        seen = Seen()
        try:
            with write_transaction(self.engine, ping=False) as conn, conn.begin():
                try:
                    row = conn.execute(LOCK_HEAD).one()
                except sa.exc.DBAPIError as exc:
                    if retry_dropped and exc.connection_invalidated:
                        raise _Dropped from exc
                    raise
                unit = UnitOfWork(conn, Head(row.position, row.hash, row.projection_generation))
                decided = list(decide(unit))
                requests = [req for req in decided if req is not None]
                appended = iter(self._append_locked(unit, requests, seen))
                committing = True
            self._versions.committed(seen)
            if self.tree is not None and seen.frontier is not None:
                self.tree.committed(seen.frontier)
            return [None if req is None else next(appended) for req in decided]
        except (LedgerError, _Dropped):
            raise
        except Exception as exc:
            code = aborted(exc)
            if code is not None:
                # Rolled back whole, at COMMIT too: certain, so the version cache needs no
                # clearing; the tree's is cleared all the same (it reads its state again).
                if self.tree is not None:
                    self.tree.clear()
                raise _Aborted(exc, code) from exc
            if committing:
                self._versions.clear()  # whether it committed is unknown
                if self.tree is not None:
                    self.tree.clear()
            raise AppendFailed(exc, before_commit=not committing) from exc

    def _append_locked(
        self, unit: UnitOfWork, requests: Sequence[AppendRequest], seen: Seen
    ) -> list[BatchOutcome]:
        conn, head = unit.conn, unit.head
        position, last_hash = head.position, head.hash
        # At most two queries for the whole batch (not two per request): the versions of the
        # streams this process has not seen at this very head position, and every request id
        # already recorded.
        streams = {req.stream_id for req in requests} | {
            guarded for req in requests for guarded, _ in req.guards
        }
        versions = self._versions.get(head.position, streams)
        versions.update(self._stream_versions(conn, streams - versions.keys()))
        recorded_requests = unit.recorded(
            req.request_id for req in requests if req.request_id is not None
        )
        seen_requests: dict[str, AppendResult | RecordedRequest] = {}
        outcomes: list[BatchOutcome] = []
        rows: list[tuple[Any, ...]] = []
        recorded_all: list[RecordedEvent] = []
        keeper = self.tree
        spans: list[tuple[int, int, int]] = []  # (outcome, its rows' first and end)

        for req in requests:
            if req.request_id is not None:
                earlier = seen_requests.get(req.request_id) or recorded_requests.get(req.request_id)
                if earlier is not None:
                    outcomes.append(
                        AppendResult(
                            earlier.stream_id,
                            earlier.positions,
                            earlier.stream_version,
                            duplicate=True,
                        )
                    )
                    continue
            refused = self._refusal(req, versions)
            if refused is not None:
                outcomes.append(refused)
                continue
            first_row = len(rows)
            recorded, last_hash = self._record(
                req, position, versions[req.stream_id], last_hash, rows
            )
            position = recorded[-1].position
            versions[req.stream_id] = current = recorded[-1].version
            spans.append((len(outcomes), first_row, len(rows)))
            result = AppendResult(
                req.stream_id, tuple(e.position for e in recorded), current, events=recorded
            )
            if req.request_id is not None:
                seen_requests[req.request_id] = result
            recorded_all.extend(recorded)
            outcomes.append(result)

        if rows:
            # The leaf hashes are made in a thread of their own while this one waits for the
            # database (the inserts, the projections): CPU work that would otherwise add to
            # the time the ledger lock is held.
            hashed = tree.hash_leaves(keeper, rows) if keeper is not None else None
            conn.exec_driver_sql(self._insert_events, rows)
            for listener in self.listeners:
                listener(unit, recorded_all)
            tiles: dict[tree.Key, bytearray] = {}
            if keeper is not None and hashed is not None:
                leaves = hashed.result()
                seen.frontier, tiles = keeper.extend(conn, head.position, leaves)
                for at, first, end in spans:
                    # Results made above, seen by no one yet: completed in place, as their
                    # __init__ would have (dataclasses.replace cost 1.4 us per event).
                    object.__setattr__(outcomes[at], "leaves", tuple(leaves[first:end]))
            self._move_head(conn, position, last_hash, tiles)
        seen.before, seen.after, seen.versions = head.position, position, versions
        return outcomes

    def _move_head(
        self, conn: Connection, position: int, last_hash: str, tiles: dict[tree.Key, bytearray]
    ) -> None:
        """The append's last writes: the tree's changed tiles, then the head. On MySQL in one
        round trip (the connections allow several statements in one packet for this): a
        statement more per batch was what the tree cost an append there."""
        params = {"new_position": position, "new_hash": last_hash}
        if not tiles or self.tree is None:
            conn.execute(MOVE_HEAD, params)
        elif is_sqlite(self.engine):
            self.tree.write(conn, tiles)
            conn.execute(MOVE_HEAD, params)
        else:
            if self._move_head_text is None:
                compiled = MOVE_HEAD.compile(dialect=conn.dialect)
                assert not compiled.positional  # PyMySQL's pyformat: %(name)s
                self._move_head_text = (compiled.string, dict(compiled.params))
            text, fixed = self._move_head_text
            upsert = self.tree.upsert_text(conn.dialect, tiles)
            execute_multi(conn, f"{upsert}; {text}", {**fixed, **params})

    @staticmethod
    def _refusal(req: AppendRequest, versions: Mapping[str, int]) -> ConcurrencyConflict | None:
        """The conflict that refuses ``req`` (a guard, then its own stream), if any.

        Checked before any position is drawn, so a losing writer leaves no hole."""
        for guarded, wanted in req.guards:
            if versions[guarded] != wanted:
                return ConcurrencyConflict(guarded, wanted, versions[guarded])
        current = versions[req.stream_id]
        if req.expected_version is not None and req.expected_version != current:
            return ConcurrencyConflict(req.stream_id, req.expected_version, current)
        return None

    @staticmethod
    def _record(
        req: AppendRequest, position: int, version: int, last_hash: str, rows: list[tuple]
    ) -> tuple[tuple[RecordedEvent, ...], str]:
        """``req``'s events as recorded after ``position`` (the stream at ``version``),
        chained from ``last_hash``, and the last hash; their rows (``EVENT_COLUMNS``) are
        added to ``rows``."""
        recorded = []
        stream_id, request_id = req.stream_id, req.request_id
        for new, (payload_text, payload, meta_text, meta, micros) in zip(
            req.events, req.encoded, strict=True
        ):
            position += 1
            version += 1
            content = (
                position,
                stream_id,
                version,
                new.event_type,
                new.schema_version,
                payload_text,
                meta_text,
                request_id,
                micros,
            )
            last_hash = chain_next(last_hash, content)
            rows.append((*content, last_hash))
            recorded.append(
                RecordedEvent(
                    position,
                    stream_id,
                    version,
                    new.event_type,
                    new.schema_version,
                    payload,
                    meta,
                    request_id,
                    from_micros(micros),
                    last_hash,
                )
            )
        return tuple(recorded), last_hash

    _stream_versions = staticmethod(stream_versions)  # an attribute, so tests can spy

    # -- reading ------------------------------------------------------------------------------

    def head(self, conn: Connection | None = None) -> Head:
        if conn is None:
            with read_transaction(self.engine) as own:
                return self.head(own)
        row = conn.execute(sa.select(ledger_head).where(ledger_head.c.id == HEAD_ID)).one()
        return Head(row.position, row.hash, row.projection_generation)

    def stream_version(self, stream_id: str) -> int:
        with read_transaction(self.engine) as conn:
            return self._stream_versions(conn, [stream_id])[stream_id]

    # Reads of the events table go through ledger/reader.py; these are the store's doors to it.

    def read_all(
        self, after: int = 0, *, until: int | None = None, page: int = 2000
    ) -> Iterator[RecordedEvent]:
        """Every event after ``after`` (up to ``until``) in position order, in pages."""
        return reader.read_all(self.engine, after, until=until, page=page)

    def read_request(self, request_id: str) -> list[RecordedEvent]:
        """The events an append with this request id recorded (empty if none did)."""
        return reader.read_request(self.engine, request_id)

    def read_stream(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
        return reader.read_stream(self.engine, stream_id, after_version)
