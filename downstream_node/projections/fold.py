"""The event fold of the projections: ``Fold`` applies events to the rows of one generation's
tables, held in memory (``rows.Rows``), one handler per event type; the live projector and the
rebuild both run it.

A batch of events (a group commit, a page of a rebuild) is folded in memory: the rows it will
touch are read first, one query per table, the events change them in Python, and each table
is written back once at the end (one ``executemany`` for new rows, one for changed rows). So a
batch costs a handful of statements whatever its size, instead of several per event.
``tests/projection_oracle.py`` keeps the one-statement-at-a-time version this replaced, and
``tests/test_projection_oracle.py`` checks that both fill the tables identically.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..domain import events as ev
from ..domain.folds import EventFold, handles, ignoring
from ..domain.uptime import Coverage
from .held import CONTRACT_MUTABLE, CONTRACT_READ, UPTIME_FIELDS, UPTIME_READ, Held
from .rows import Json, Rows
from .tables import ProjectionTables


class Item(NamedTuple):
    """An event as the fold takes it (``rebuild.ITEMS`` reads these columns, in this order).

    A rebuild hands the fold its events as plain tuples of these fields (``ItemTuple``): an
    ``Item`` made per event costs some 3% of a rebuild. So the fold takes any tuple in this
    order, and unpacks it once per event in its loop (``Fold.run``), never reading a field
    by attribute or by index; its handlers get the fields they need by name.
    """

    position: int
    stream_id: str
    version: int
    event_type: str
    schema_version: int
    occurred_at: int  # UTC microseconds
    payload: dict[str, Any] | None  # None for the types no projection reads


ItemTuple = tuple[int, str, int, str, int, int, dict[str, Any] | None]
"""An ``Item``'s fields as a plain tuple, in the same order (what ``rebuild.read_items`` yields)."""

# A handler: the payload, then the event's occurred at, version and stream id.
Handler = Callable[[dict[str, Any], int, int, str], None]

# A rebuild keeps the rows it touched between its transactions (only it writes the new
# generation); past this many contracts it starts afresh, so memory stays bounded.
MAX_CACHED = 50_000


def _required() -> sa.exc.NoResultFound:
    # What the statement-per-event projector raised (``.one()``) for a row that must exist.
    return sa.exc.NoResultFound("No row was found when one was required")


@functools.cache
def _live_queries(contracts: sa.Table) -> tuple[sa.Select, sa.Select]:
    """Contracts not yet ended of a token, and of a file (parameter ``k``)."""
    c = contracts.c
    read = [c[name] for name in CONTRACT_READ]
    return (
        sa.select(*read).where(c.token_hash == sa.bindparam("k"), c.ended_at.is_(None)),
        sa.select(*read).where(c.file_hash == sa.bindparam("k"), c.ended_at.is_(None)),
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
        self._handlers: dict[str, Handler] = self.bound_handlers()

    def _reset(self) -> None:
        t = self.t
        self.whitelist = Rows(t.whitelist, "address", ("address", "balance"), ("balance",))
        self.tokens = Rows(t.tokens, "token_hash", TOKEN_COLUMNS, ("deleted_at", "version"))
        self.files = Rows(t.files, "file_hash", FILE_COLUMNS, FILE_COLUMNS[1:])
        self.contracts = Rows(t.contracts, "contract_id", CONTRACT_READ, CONTRACT_MUTABLE)
        self.uptime = Rows(t.uptime, "token_hash", UPTIME_READ, UPTIME_FIELDS)
        # Every contract held, by token and by file; and the tokens and files whose contracts
        # not yet ended have all been read (so the held rows answer "which are live").
        self.by_token: dict[str, set[str]] = {}
        self.by_file: dict[str, set[str]] = {}
        self.complete_tokens: set[str] = set()
        self.complete_files: set[str] = set()
        self.all_held = False
        self.conn: Connection | None = None

    def hold(self, held: Held) -> None:
        """Hold the rows the read model read in this transaction before any of its events
        were folded, as if this fold had read them."""
        for row in self.contracts.add_found(held.contracts):
            self._index(row)
        self.uptime.add_found(row for row in held.uptime.values() if row is not None)
        for token_hash, row in held.uptime.items():
            if row is None:
                self.uptime.rows.setdefault(token_hash, None)

    def _all_rows(self) -> tuple[Rows, ...]:
        return (self.whitelist, self.tokens, self.files, self.contracts, self.uptime)

    # -- running --------------------------------------------------------------------------------

    def run(self, conn: Connection, items: Iterable[ItemTuple]) -> None:
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
            for _, stream_id, version, kind, _, at, payload in items:
                handler = handlers.get(kind)
                if handler is not None:
                    handler(payload, at, version, stream_id)  # type: ignore[arg-type]
            for rows in self._all_rows():
                rows.flush(conn)
        except BaseException:
            self._reset()  # what is held may not match the rolled-back tables
            raise
        finally:
            self.conn = None

    def _prefetch(self, conn: Connection, items: Sequence[ItemTuple]) -> None:
        contract_ids: set[str] = set()
        new_contracts: set[str] = set()
        tokens: set[str] = set()
        deleted: set[str] = set()
        files: set[str] = set()
        addresses: set[str] = set()
        for _, _, _, kind, _, _, p in items:
            if p is None:
                continue
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
    def _whitelisted(self, p: dict[str, Any], at: int, version: int, stream_id: str) -> None:
        row = self.whitelist.get(self.conn, p["address"])  # type: ignore[arg-type]
        if row is not None:
            row["balance"] = p["balance"]
            self.whitelist.touch(p["address"])
        else:
            self.whitelist.insert(p["address"], {"address": p["address"], "balance": p["balance"]})

    @handles(ev.TokenCreated)
    def _token_created(self, p: dict[str, Any], at: int, version: int, stream_id: str) -> None:
        token_hash = p["token_hash"]
        self.tokens.insert(
            token_hash,
            {
                "token_hash": token_hash,
                "address": p["address"],
                "ip": p["ip"],
                "created_at": at,
                "deleted_at": None,
                # The token stream's version (a farmer's token is created through its IP's
                # stream, leaving its own stream empty until it is deleted).
                "version": version if stream_id == ev.token_stream(token_hash) else 0,
            },
        )
        self.uptime.insert(
            token_hash, {"token_hash": token_hash, **dict.fromkeys(UPTIME_FIELDS, 0)}
        )

    @handles(ev.TokenDeleted)
    def _token_deleted(self, p: dict[str, Any], at: int, version: int, stream_id: str) -> None:
        token_hash = p["token_hash"]
        row = self.tokens.get(self.conn, token_hash)  # type: ignore[arg-type]
        if row is not None:
            row["deleted_at"] = at
            row["version"] = version
            self.tokens.touch(token_hash)
        for contract in self._live(token_hash, by_file=False):
            if contract["started_at"] is not None:
                self._end_contract(contract["contract_id"], at, "token_deleted")

    @handles(ev.FileAdded)
    def _file_added(self, p: dict[str, Any], at: int, version: int, stream_id: str) -> None:
        file_hash = p["file_hash"]
        row = {
            "file_hash": file_hash,
            "size": p["size"],
            "redundancy": p["redundancy"],
            "interval": p["interval"],
            "seed": p["seed"],
            "path": p["path"],
            "added_at": at,
            "removed_at": None,
            "version": version,
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
    def _file_removed(self, p: dict[str, Any], at: int, version: int, stream_id: str) -> None:
        file_hash = p["file_hash"]
        row = self.files.get(self.conn, file_hash)  # type: ignore[arg-type]
        if row is not None:
            row["removed_at"] = at
            row["version"] = version
            self.files.touch(file_hash)
        for contract in self._live(file_hash, by_file=True):
            if contract["started_at"] is not None:
                self._end_contract(contract["contract_id"], at, "file_removed")

    @handles(ev.ChunkEncoded)
    def _chunk_encoded(self, p: dict[str, Any], at: int, version: int, stream_id: str) -> None:
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
            "challenge_failures": 0,
            "version": 0,
        }
        self.contracts.insert(cid, row)
        self._index(row)
        self._file_version(p["file_hash"], version)

    @handles(ev.ContractAssigned)
    def _contract_assigned(self, p: dict[str, Any], at: int, version: int, stream_id: str) -> None:
        cid, due = p["contract_id"], p["due"]
        row = self._contract(cid)
        if row is not None:
            row.update(
                token_hash=p["token_hash"],
                challenge=Json(p["challenge"]),
                challenge_index=p["challenge_index"],
                state=Json(p["state"]),
                interval=p["interval"],
                started_at=at,
                due=due,
                answered=False,
                expiration=due,
                challenges=1,
                challenge_failures=0,
            )
            self.contracts.touch(cid)
            self._index(row)
        self._file_version(p["file_hash"], version)
        self._uptime(p["token_hash"], lambda cov: cov.cover(at, due), contracts=1, challenges=1)

    @handles(ev.ChallengeIssued)
    def _challenge_issued(self, p: dict[str, Any], at: int, version: int, stream_id: str) -> None:
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
            challenge_failures=0,
            version=version,
        )
        self.contracts.touch(cid)
        self._uptime(row["token_hash"], None, challenges=1)

    @handles(ev.AnswerPassed)
    def _answer_passed(self, p: dict[str, Any], at: int, version: int, stream_id: str) -> None:
        cid, expiration = p["contract_id"], p["expiration"]
        row = self._contract(cid)
        if row is None:
            raise _required()
        row["answered"] = True
        row["expiration"] = expiration
        row["passed"] += 1
        row["version"] = version
        self.contracts.touch(cid)
        self._uptime(row["token_hash"], lambda cov: cov.cover(at, expiration), passed=1)

    @handles(ev.AnswerFailed)
    def _answer_failed(self, p: dict[str, Any], at: int, version: int, stream_id: str) -> None:
        cid = p["contract_id"]
        row = self._contract(cid)
        if row is None:
            raise _required()
        row["failed"] += 1
        row["challenge_failures"] += 1
        row["version"] = version
        self.contracts.touch(cid)
        self._uptime(row["token_hash"], None, failed=1)

    @handles(ev.AnswerRejected)
    def _answer_rejected(self, p: dict[str, Any], at: int, version: int, stream_id: str) -> None:
        cid = p["contract_id"]
        row = self._contract(cid)
        if row is not None:
            row["rejected"] += 1
            row["version"] = version
            self.contracts.touch(cid)

    @handles(ev.ContractExpired)
    def _contract_expired(self, p: dict[str, Any], at: int, version: int, stream_id: str) -> None:
        cid = p["contract_id"]
        self._end_contract(cid, p["expired_at"], "expired", version=version)
        row = self._contract(cid)
        assert row is not None  # _end_contract required it
        self._uptime(row["token_hash"], None, expired=1)

    @handles(ev.ContractEnded)
    def _contract_ended(self, p: dict[str, Any], at: int, version: int, stream_id: str) -> None:
        self._end_contract(p["contract_id"], at, p["reason"], version=version)

    # -- helpers --------------------------------------------------------------------------------

    def _file_version(self, file_hash: str, version: int) -> None:
        row = self.files.get(self.conn, file_hash)  # type: ignore[arg-type]
        if row is not None:
            row["version"] = version
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
