"""The Merkle tree over the events' public forms, kept in the append's own transaction.

``TreeKeeper`` turns the rows an append inserts into leaf hashes and stores the full subtrees
they complete (``tlog_nodes``), so the tree always covers exactly the committed events; when
it finds the tree behind the ledger (events appended by a store without the log's key) it
catches up from the events table first. The read functions answer roots and proofs of any
size in O(log n) lookups, fetched in one query.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..domain.errors import LedgerError
from ..domain.public import PublicForms
from ..tlog import merkle
from .reader import PUBLIC_COLUMNS
from .schema import tlog_nodes

Key = tuple[int, int]
NODES_PER_QUERY = 400  # (level, idx) pairs per IN list: below SQLite's 999 parameters


class TreeBehind(LedgerError):
    """The stored tree does not match the ledger's size (ahead of it: events were removed)."""


def insert_nodes_sql(dialect: sa.Dialect) -> str:
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    quote = dialect.identifier_preparer.quote
    return (
        f"INSERT INTO {quote(tlog_nodes.name)} ({quote('level')}, {quote('idx')}, {quote('hash')})"
        f" VALUES ({mark}, {mark}, {mark})"
    )


LAST_LEAF = sa.select(sa.func.max(tlog_nodes.c.idx)).where(tlog_nodes.c.level == 0)


def tree_size(conn: Connection) -> int:
    """How many leaves the stored tree covers (0 before any)."""
    last = conn.execute(LAST_LEAF).scalar()
    return 0 if last is None else int(last) + 1


def lookup(conn: Connection, keys: Iterable[Key]) -> dict[Key, bytes]:
    """The stored hashes of these (level, index) keys, in one query per 400."""
    wanted = list(dict.fromkeys(keys))
    found: dict[Key, bytes] = {}
    c = tlog_nodes.c
    for start in range(0, len(wanted), NODES_PER_QUERY):
        chunk = wanted[start : start + NODES_PER_QUERY]
        # An OR of pairs rather than a row-value IN: every backend plans it on the primary key.
        where = sa.or_(*(sa.and_(c.level == lv, c.idx == ix) for lv, ix in chunk))
        for level, idx, h in conn.execute(sa.select(c.level, c.idx, c.hash).where(where)):
            found[(int(level), int(idx))] = bytes(h)
    return found


def _getter(conn: Connection, keys: Iterable[Key]) -> Callable[[int, int], bytes]:
    found = lookup(conn, keys)

    def get(level: int, index: int) -> bytes:
        try:
            return found[(level, index)]
        except KeyError:
            raise LedgerError(f"the tree lacks node ({level}, {index})") from None

    return get


def _check(conn: Connection, size: int) -> None:
    have = tree_size(conn)
    if size > have:
        raise ValueError(f"size {size} is beyond the tree's {have} leaves")


def root(conn: Connection, size: int) -> bytes:
    """The RFC 6962 root of the first ``size`` leaves."""
    _check(conn, size)
    return merkle.tree_root(_getter(conn, merkle.root_keys(size)), size)


def inclusion_proof(conn: Connection, index: int, size: int) -> list[bytes]:
    _check(conn, size)
    return merkle.inclusion_proof(_getter(conn, merkle.inclusion_keys(index, size)), index, size)


def consistency_proof(conn: Connection, old_size: int, new_size: int) -> list[bytes]:
    _check(conn, new_size)
    keys = merkle.consistency_keys(old_size, new_size)
    return merkle.consistency_proof(_getter(conn, keys), old_size, new_size)


def leaves(conn: Connection, first: int, count: int) -> list[bytes]:
    """Leaf hashes ``first .. first + count - 1`` (0-based; leaf i is position i + 1)."""
    c = tlog_nodes.c
    rows = conn.execute(
        sa.select(c.hash).where(c.level == 0, c.idx >= first, c.idx < first + count).order_by(c.idx)
    ).all()
    return [bytes(r[0]) for r in rows]


def leaf(conn: Connection, position: int) -> bytes | None:
    """The leaf hash of the event at ``position``, if the tree covers it."""
    c = tlog_nodes.c
    found = conn.execute(sa.select(c.hash).where(c.level == 0, c.idx == position - 1)).scalar()
    return None if found is None else bytes(found)


class TreeKeeper:
    """Extends the stored tree inside append transactions (one per ``EventStore``).

    The frontier (one hash per set bit of the size) is cached as of the ledger position it was
    committed at; a transaction that finds the head elsewhere reads it back from the nodes
    table in one query. So an append alone costs its leaves' hashes, one insert and one update.
    """

    CATCH_UP_PAGE = 5000

    def __init__(self, forms: PublicForms) -> None:
        self.forms = forms
        self._insert: str | None = None
        self._lock = threading.Lock()
        self._at = -1
        self._frontier: merkle.CompactRange | None = None

    def leaf(self, row: Sequence[Any]) -> bytes:
        """The leaf hash of an events row (``EVENT_COLUMNS`` order)."""
        return self.forms.leaf(row[0], row[1], row[2], row[3], row[4], row[5], row[8], row[6])

    def frontier(self, conn: Connection, position: int, *, limit: int | None = None) -> Any:
        """The tree's frontier once it covers the ledger up to ``position`` (or ``limit``
        more leaves), catching up from the events table in this transaction if it is behind."""
        with self._lock:
            if self._at == position and self._frontier is not None:
                return merkle.CompactRange(self._frontier.size, self._frontier.hashes)
        size = tree_size(conn)
        if size > position:
            raise TreeBehind(f"the tree covers {size} events but the ledger holds {position}")
        frontier = merkle.CompactRange.from_store(_getter(conn, merkle.root_keys(size)), size)
        until = position if limit is None else min(position, size + limit)
        if size < until:
            for rows in _pages(conn, size, until, self.CATCH_UP_PAGE):
                if rows[0][0] != frontier.size + 1 or rows[-1][0] != frontier.size + len(rows):
                    raise TreeBehind(f"position {frontier.size + 1} is missing from the events")
                self._store(conn, frontier.extend(self.forms.leaf(*r) for r in rows))
        return frontier

    def extend(self, conn: Connection, position: int, new: Sequence[bytes]) -> Any:
        """Append leaf hashes after ledger ``position`` in ``conn``'s transaction; the new
        frontier, to hand to ``committed`` once the transaction commits."""
        frontier = self.frontier(conn, position)
        self._store(conn, frontier.extend(new))
        return frontier

    def _store(self, conn: Connection, nodes: list[merkle.StoredNode]) -> None:
        if not nodes:
            return
        if self._insert is None:
            self._insert = insert_nodes_sql(conn.dialect)
        conn.exec_driver_sql(self._insert, [(n.level, n.index, n.hash) for n in nodes])

    def committed(self, frontier: merkle.CompactRange) -> None:
        with self._lock:
            self._at, self._frontier = frontier.size, frontier

    def clear(self) -> None:
        with self._lock:
            self._at, self._frontier = -1, None


def _pages(conn: Connection, after: int, until: int, page: int) -> Iterable[list[tuple[Any, ...]]]:
    rows: list[tuple[Any, ...]] = []
    for row in PUBLIC_COLUMNS.stream(conn, after, until):
        rows.append(tuple(row))
        if len(rows) == page:
            yield rows
            rows = []
    if rows:
        yield rows
