"""Read-side queries over the live projection generation, for the node and the API.

A ``Reader`` is opened per request: it reads the head row once (generation and position) and
answers every question from that generation, returning the ledger's own view types.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..domain.contracts import ContractView, FileView
from ..domain.uptime import Coverage
from ..ledger.db import IN_LIST, in_lists, read_transaction
from ..ledger.schema import HEAD_ID, ledger_head
from ..ledger.store import UnitOfWork, stream_versions
from .held import CONTRACT_READ, UPTIME_FIELDS, UPTIME_READ, Held
from .projector import checkpoint
from .tables import ProjectionTables, tables_for


@dataclass(frozen=True)
class TokenView:
    token_hash: str
    address: str
    ip: str | None
    created_at: int
    deleted_at: int | None
    version: int


@dataclass(frozen=True)
class UptimeView:
    token_hash: str
    coverage: Coverage
    contracts: int
    challenges: int
    passed: int
    failed: int
    expired: int

    def online(self, now: int) -> int:
        return self.coverage.online(now)

    def total(self, now: int) -> int:
        return self.coverage.total(now)


class Reader:
    def __init__(
        self,
        conn: Connection,
        tables: ProjectionTables,
        head_position: int,
        memo: dict[str, Any] | None = None,
    ) -> None:
        self.conn = conn
        self.t = tables
        self.head_position = head_position
        self.memo = memo

    @classmethod
    def under_lock(cls, unit: UnitOfWork) -> Reader:
        """A reader in a unit of work's transaction (``EventStore.transact``), which found
        its head under the ledger lock: what it reads cannot change before the commit, and
        the contract and uptime rows it reads are left in the unit's memo for the projector."""
        head = unit.head
        return cls(unit.conn, tables_for(head.projection_generation), head.position, unit.memo)

    # -- tokens and whitelist -------------------------------------------------------------------

    def token(self, token_hash: str) -> TokenView | None:
        row = self.conn.execute(hot(self.t).token, {"token_hash": token_hash}).first()
        return TokenView(**row._mapping) if row is not None else None

    def tokens(self, token_hashes: Collection[str]) -> dict[str, TokenView]:
        """The tokens of these hashes that exist, by hash: one query for a batch of requests."""
        found: dict[str, TokenView] = {}
        for chunk in in_lists(token_hashes):
            for row in self.conn.execute(hot(self.t).tokens_in, {"tokens": chunk}):
                found[row.token_hash] = TokenView(**row._mapping)
        return found

    def balance(self, address: str) -> Decimal | None:
        value = self.conn.execute(
            sa.select(self.t.whitelist.c.balance).where(self.t.whitelist.c.address == address)
        ).scalar()
        if value is None:
            return None
        try:
            return Decimal(value)
        except InvalidOperation:
            return None

    def balances(self, addresses: Collection[str]) -> dict[str, str]:
        """The recorded balance text of each of ``addresses`` that is whitelisted."""
        c = self.t.whitelist.c
        found: dict[str, str] = {}
        for chunk in in_lists(addresses):
            query = sa.select(c.address, c.balance).where(c.address.in_(chunk))
            found.update((row.address, row.balance) for row in self.conn.execute(query))
        return found

    def stream_version(self, stream_id: str) -> int:
        """A ledger stream's version, read in this reader's transaction."""
        return stream_versions(self.conn, [stream_id])[stream_id]

    def tokens_for_ip(self, ip: str) -> int:
        c = self.t.tokens.c
        return int(
            self.conn.execute(
                sa.select(sa.func.count())
                .select_from(self.t.tokens)
                .where(c.ip == ip, c.deleted_at.is_(None))
            ).scalar()
            or 0
        )

    # -- files ----------------------------------------------------------------------------------

    def file(self, file_hash: str, now: int = 0) -> FileView | None:
        row = self.conn.execute(
            sa.select(self.t.files).where(self.t.files.c.file_hash == file_hash)
        ).first()
        if row is None or row.removed_at is not None:
            return None
        return self._file_view(row, self._live_count(file_hash, now))

    def files(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(sa.select(self.t.files).order_by(self.t.files.c.added_at))
        return [dict(r._mapping) for r in rows]

    def candidate_files(
        self, token_hash: str, now: int, limit: int = 8, returned_since: int | None = None
    ) -> list[FileView]:
        """Live files with a free replica that this token does not hold, least held first;
        not those it handed back (``/remove``) after ``returned_since``."""
        f, c = self.t.files.c, self.t.contracts.c
        live = sa.and_(c.started_at.is_not(None), c.ended_at.is_(None), c.expiration > now)
        counts = (
            sa.select(c.file_hash, sa.func.count().label("n"))
            .where(live)
            .group_by(c.file_hash)
            .subquery()
        )
        held = sa.select(c.file_hash).where(live, c.token_hash == token_hash)
        n = sa.func.coalesce(counts.c.n, 0)
        query = (
            sa.select(self.t.files, n.label("live"))
            .outerjoin(counts, counts.c.file_hash == f.file_hash)
            .where(f.removed_at.is_(None), n < f.redundancy, f.file_hash.not_in(held))
            .order_by(n, f.added_at, f.file_hash)
            .limit(limit)
        )
        if returned_since is not None:
            returned = sa.select(c.file_hash).where(
                c.token_hash == token_hash,
                c.end_reason == "removed",
                c.ended_at > returned_since,
            )
            query = query.where(f.file_hash.not_in(returned))
        rows = self.conn.execute(query).all()
        return [self._file_view(r, int(r.live)) for r in rows]

    def hand_backs(self, token_hash: str, address: str, since: int) -> tuple[list[int], list[int]]:
        """When contracts were handed back (``/remove``) after ``since``: by this token, and
        by every token of ``address``."""
        c, tk = self.t.contracts.c, self.t.tokens.c
        rows = self.conn.execute(
            sa.select(c.token_hash, c.ended_at)
            .select_from(self.t.contracts.join(self.t.tokens, tk.token_hash == c.token_hash))
            .where(tk.address == address, c.end_reason == "removed", c.ended_at > since)
        ).all()
        by_token = [int(r.ended_at) for r in rows if r.token_hash == token_hash]
        return by_token, [int(r.ended_at) for r in rows]

    def _live_count(self, file_hash: str, now: int) -> int:
        c = self.t.contracts.c
        return int(
            self.conn.execute(
                sa.select(sa.func.count())
                .select_from(self.t.contracts)
                .where(
                    c.file_hash == file_hash,
                    c.started_at.is_not(None),
                    c.ended_at.is_(None),
                    c.expiration > now,
                )
            ).scalar()
            or 0
        )

    @staticmethod
    def _file_view(row: Any, live: int) -> FileView:
        return FileView(
            row.file_hash,
            row.size,
            row.redundancy,
            row.interval,
            row.seed,
            row.path,
            row.version,
            live,
        )

    # -- contracts ------------------------------------------------------------------------------

    def contracts_for_token(self, token_hash: str) -> list[ContractView]:
        """Contracts not yet ended (some may have expired without being marked yet)."""
        return self._views(
            self.conn.execute(hot(self.t).contracts_for_token, {"token_hash": token_hash})
        )

    def contract_for(self, token_hash: str, file_hash: str) -> ContractView | None:
        found = self._views(
            self.conn.execute(
                hot(self.t).contract_for, {"token_hash": token_hash, "file_hash": file_hash}
            )
        )
        # The newest: an older one that lapsed may not have been marked expired yet.
        return found[-1] if found else None

    def contracts_for_pairs(
        self, pairs: Collection[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], ContractView], dict[str, TokenView]]:
        """``contract_for`` of many (token hash, file hash) pairs, and the tokens named: one
        query per 250 pairs, which brings each contract's token along; the tokens of pairs
        with no contract (an error for the caller, rarely met) take one more. Under a unit of
        work (``memo``) the whole contract rows and their tokens' uptime rows are left there
        for the projector."""
        found: dict[tuple[str, str], ContractView] = {}
        owners: dict[str, TokenView] = {}
        sqlite = self.conn.dialect.name == "sqlite"
        for chunk in in_lists(pairs, IN_LIST // 2):
            # Oldest first, so the newest of a pair is the one left in ``found``.
            if sqlite:
                # Padded (repeating the last pair) to one of a few sizes: few statements.
                size = next(n for n in PAIR_QUERY_SIZES if n >= len(chunk))
                chunk += chunk[-1:] * (size - len(chunk))
                query, params = contracts_for_pairs_sqlite(self.t, size), _pair_params(chunk)
            else:
                query = hot(self.t).contracts_for_pairs
                params = {"pairs": chunk, "tokens": sorted({token for token, _ in chunk})}
            rows = self.conn.execute(query, params).all()
            for view in self._views(rows):
                found[(view.token_hash, view.file_hash)] = view
            if self.memo is not None:
                held = Held.of(self.memo)
                held.contracts.extend(_contract_row(r) for r in rows)
                uptime = held.uptime
                for r in rows:  # first_start is NOT NULL: a NULL one means no uptime row
                    has_row = r[_UPTIME_FIRST_START] is not None
                    uptime[r[_TOKEN_HASH]] = _uptime_row(r) if has_row else None
            for r in rows:
                owners[r[_TOKEN_HASH]] = TokenView(*_token_row(r))
        missing = {token for token, _ in pairs} - owners.keys()
        if missing:
            owners.update(self.tokens(missing))
        return found, owners

    def expired_contracts(
        self, now: int, limit: int = 500, token_hash: str | None = None
    ) -> list[ContractView]:
        c = self.t.contracts.c
        where = sa.and_(c.ended_at.is_(None), c.started_at.is_not(None), c.expiration <= now)
        if token_hash is not None:
            where = sa.and_(where, c.token_hash == token_hash)
        return self._contracts(where, limit=limit)

    def _contracts(self, where: Any, limit: int | None = None) -> list[ContractView]:
        c = self.t.contracts.c
        query = hot(self.t).contracts.where(where).order_by(c.started_at, c.contract_id)
        if limit is not None:
            query = query.limit(limit)
        return self._views(self.conn.execute(query))

    @staticmethod
    def _views(rows: Iterable[Any]) -> list[ContractView]:
        """The contract views of rows of ``hot(t).contracts`` (or of a query adding columns
        after them)."""
        return [_view(r) for r in rows]

    def bytes_held_by_address(self, address: str, now: int) -> int:
        c, f, tk = self.t.contracts.c, self.t.files.c, self.t.tokens.c
        value = self.conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(f.size), 0))
            .select_from(
                self.t.contracts.join(self.t.files, f.file_hash == c.file_hash).join(
                    self.t.tokens, tk.token_hash == c.token_hash
                )
            )
            .where(
                tk.address == address,
                c.ended_at.is_(None),
                c.started_at.is_not(None),
                c.expiration > now,
            )
        ).scalar()
        return int(value or 0)

    # -- uptime and health ----------------------------------------------------------------------

    def uptime(self, token_hash: str) -> UptimeView | None:
        row = self.conn.execute(
            sa.select(self.t.uptime).where(self.t.uptime.c.token_hash == token_hash)
        ).first()
        return _uptime_view(row) if row is not None else None

    def all_uptime(self) -> list[UptimeView]:
        rows = self.conn.execute(sa.select(self.t.uptime).order_by(self.t.uptime.c.token_hash))
        return [_uptime_view(r) for r in rows]

    def files_below_target(self, now: int) -> tuple[int, int]:
        """Monitored files with fewer replicas online at ``now`` than their redundancy, and
        those with none online (the redundancy audit's "below target now" and "unavailable")."""
        f, c = self.t.files.c, self.t.contracts.c
        online = sa.and_(c.started_at.is_not(None), c.ended_at.is_(None), c.expiration > now)
        counts = (
            sa.select(c.file_hash, sa.func.count().label("n"))
            .where(online)
            .group_by(c.file_hash)
            .subquery()
        )
        n = sa.func.coalesce(counts.c.n, 0)
        row = self.conn.execute(
            sa.select(
                # SUM(CASE ...): MariaDB has no aggregate FILTER clause.
                sa.func.sum(sa.case((n < f.redundancy, 1), else_=0)),
                sa.func.sum(sa.case((n == 0, 1), else_=0)),
            )
            .select_from(self.t.files)
            .outerjoin(counts, counts.c.file_hash == f.file_hash)
            .where(f.removed_at.is_(None))
        ).one()
        return int(row[0] or 0), int(row[1] or 0)

    def lag(self) -> int:
        """Events appended but not yet folded into this generation."""
        return max(0, self.head_position - checkpoint(self.conn, self.t))


def _uptime_view(row: Any) -> UptimeView:
    return UptimeView(
        row.token_hash,
        Coverage(row.first_start, row.closed, row.seg_start, row.seg_end),
        row.contracts,
        row.challenges,
        row.passed,
        row.failed,
        row.expired,
    )


@dataclass(frozen=True)
class HotQueries:
    """The statements of the farmer API's hot paths for one generation, built once."""

    token: Any
    contracts: Any  # contract views, to be narrowed with .where()
    contracts_for_token: Any
    contract_for: Any
    tokens_in: Any  # parameter tokens: the token hashes
    contracts_for_pairs: Any  # parameters pairs, (token hash, file hash) tuples, and tokens


# The contract columns a ContractView is made of (see ``Reader._views``).
VIEW_COLUMNS = (
    "contract_id",
    "token_hash",
    "file_hash",
    "heartbeat",
    "seed",
    "state",
    "challenge",
    "challenge_index",
    "interval",
    "started_at",
    "due",
    "answered",
    "expiration",
    "version",
    "challenge_failures",
)


def hot_contracts(t: ProjectionTables) -> sa.Select:
    """Contract views: only what a ContractView holds. Not the tag: the node never needs it
    once the contract is made, and a Merkle tag is some 24 KiB of JSON, read and decoded on
    every answer otherwise; nor the counters, which PyMySQL would parse for nothing."""
    c, f = t.contracts.c, t.files.c
    columns = (c[name] for name in VIEW_COLUMNS)
    # Its rows are read by position (``_view``).
    return sa.select(*columns, f.size).join(t.files, f.file_hash == c.file_hash)


@functools.cache
def hot(t: ProjectionTables) -> HotQueries:
    c = t.contracts.c
    contracts = hot_contracts(t)
    live = (c.ended_at.is_(None), c.started_at.is_not(None))
    order = (c.started_at, c.contract_id)
    of_token = c.token_hash == sa.bindparam("token_hash")
    return HotQueries(
        token=sa.select(t.tokens).where(t.tokens.c.token_hash == sa.bindparam("token_hash")),
        contracts=contracts,
        contracts_for_token=contracts.where(of_token, *live).order_by(*order),
        contract_for=contracts.where(
            of_token, c.file_hash == sa.bindparam("file_hash"), *live
        ).order_by(*order),
        tokens_in=sa.select(t.tokens).where(
            t.tokens.c.token_hash.in_(sa.bindparam("tokens", expanding=True))
        ),
        contracts_for_pairs=_pairs_query(t).where(
            # The token list lets both databases walk the token_hash index; a row-value IN
            # alone makes SQLite scan every contract.
            c.token_hash.in_(sa.bindparam("tokens", expanding=True)),
            sa.tuple_(c.token_hash, c.file_hash).in_(sa.bindparam("pairs", expanding=True)),
        ),
    )


def _pairs_query(t: ProjectionTables) -> sa.Select:
    """Live contract views, each with the rest of its row and its token's uptime row (for
    the projector: ``held.Held``) and its token; the pairs are the caller's condition."""
    c, tk, u = t.contracts.c, t.tokens.c, t.uptime.c
    query = (
        hot_contracts(t)
        .add_columns(
            *(c[name] for name in CONTRACT_READ if name not in VIEW_COLUMNS),
            tk.address,
            tk.ip,
            tk.created_at,
            tk.deleted_at,
            tk.version.label("token_version"),
            # The projector would read these next, in a round trip of their own.
            *(u[name].label(f"uptime_{name}") for name in UPTIME_FIELDS),
        )
        .join(t.tokens, tk.token_hash == c.token_hash)
        .outerjoin(t.uptime, u.token_hash == c.token_hash)
        .where(c.ended_at.is_(None), c.started_at.is_not(None))
        .order_by(c.started_at, c.contract_id)
    )
    # Its rows are read by position (``PAIR_COLUMNS``).
    assert tuple(column.key for column in query.selected_columns) == PAIR_COLUMNS
    return query


_VIEW_WIDTH = len(VIEW_COLUMNS) + 1  # and the file's size


def _view(r: Any) -> ContractView:
    """A row's ``VIEW_COLUMNS`` and size as a ContractView (fields in the same order), taken
    by position: a row's named attribute costs about eight times its item, and a batch of
    answers reads 35 columns of each of hundreds of rows."""
    (
        cid, token, file, hb, seed, state, challenge, index, interval, started, due, answered,
        expiration, version, failures, size,
    ) = r[:_VIEW_WIDTH]  # fmt: skip
    return ContractView(
        cid, token, file, hb, seed, None, json.loads(state), json.loads(challenge), index,
        interval, started, due, bool(answered), expiration, version, size, failures,
    )  # fmt: skip


PAIR_QUERY_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, IN_LIST // 2)


@functools.cache
def contracts_for_pairs_sqlite(t: ProjectionTables, count: int) -> Any:
    """``hot(t).contracts_for_pairs`` for SQLite, whose planner walks every contract of
    each token named by the token list and row-value ``IN`` (72 index entries per pair
    for a farmer with 72 contracts): one index seek per pair instead, an ``OR`` of
    ``count`` pairs (parameters ``t0``, ``f0``...), which it answers with a multi-index
    ``OR``. MySQL's planner does as well with the other form, and worse with this one."""
    c = t.contracts.c
    pairs = sa.or_(
        *(
            sa.and_(c.token_hash == sa.bindparam(f"t{i}"), c.file_hash == sa.bindparam(f"f{i}"))
            for i in range(count)
        )
    )
    return _pairs_query(t).where(pairs)


def _pair_params(pairs: list[tuple[str, str]]) -> dict[str, str]:
    params = {}
    for i, (token_hash, file_hash) in enumerate(pairs):
        params[f"t{i}"], params[f"f{i}"] = token_hash, file_hash
    return params


TOKEN_COLUMNS = ("address", "ip", "created_at", "deleted_at", "token_version")
# The columns of a contracts_for_pairs row, in order (``_pairs_query`` checks it), and,
# taken from it by position: the contract's columns as the projector holds them
# (``held.CONTRACT_READ``), its token's uptime row (``held.UPTIME_READ``) and its TokenView's
# fields.
PAIR_COLUMNS = (
    *VIEW_COLUMNS,
    "size",
    *(name for name in CONTRACT_READ if name not in VIEW_COLUMNS),
    *TOKEN_COLUMNS,
    *(f"uptime_{name}" for name in UPTIME_FIELDS),
)
_at = {name: i for i, name in enumerate(PAIR_COLUMNS)}
_contract_row = operator.itemgetter(*(_at[name] for name in CONTRACT_READ))
# An uptime row's key is its contract's token_hash; its fields are labelled uptime_<name>.
_uptime_row = operator.itemgetter(
    *(_at[f"uptime_{n}" if n in UPTIME_FIELDS else n] for n in UPTIME_READ)
)
_token_row = operator.itemgetter(_at["token_hash"], *(_at[name] for name in TOKEN_COLUMNS))
_TOKEN_HASH, _UPTIME_FIRST_START = _at["token_hash"], _at["uptime_first_start"]


HEAD = sa.select(ledger_head.c.position, ledger_head.c.projection_generation).where(
    ledger_head.c.id == HEAD_ID
)


class ReadModel:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def reader(self) -> Iterator[Reader]:
        # Never committed: closing the connection rolls the read transaction back, one round
        # trip, where a commit would cost one and the pool's reset on return another.
        with read_transaction(self.engine) as conn:
            conn.begin()
            head = conn.execute(HEAD).one()
            yield Reader(conn, tables_for(head.projection_generation), head.position)
