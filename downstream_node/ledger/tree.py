"""The Merkle tree over the events' public forms, kept in the append's own transaction.

``TreeKeeper`` turns the rows an append inserts into leaf hashes and writes the tiles they
fill (``tlog_tiles``, see schema.py), so the tree always covers exactly the committed events;
when it finds the tree behind the ledger (events appended by a store without the log's key) it
catches up from the events table first. The read functions answer roots and proofs of any size
from the O(log n) tiles they need, fetched in one query.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..domain.errors import LedgerError
from ..domain.public import PublicForms
from ..tlog import merkle
from .reader import PUBLIC_COLUMNS
from .schema import TILE_HEIGHT, tlog_tiles

Key = tuple[int, int]
WIDTH = 1 << TILE_HEIGHT
HASH = merkle.HASH_SIZE
TILES_PER_QUERY = 400  # (level, idx) pairs per query: below SQLite's 999 parameters


class TreeBehind(LedgerError):
    """The stored tree does not match the ledger's size (ahead of it: events were removed)."""


LAST_TILE = (
    sa.select(tlog_tiles.c.idx, sa.func.length(tlog_tiles.c.hashes))
    .where(tlog_tiles.c.level == 0)
    .order_by(tlog_tiles.c.idx.desc())
    .limit(1)
)


def tree_size(conn: Connection) -> int:
    """How many leaves the stored tree covers (0 before any)."""
    row = conn.execute(LAST_TILE).first()
    return 0 if row is None else int(row[0]) * WIDTH + int(row[1]) // HASH


def _tile_of(level: int, index: int) -> Key:
    """The tile that holds what node (level, index) is hashed from."""
    tile_level, height = divmod(level, TILE_HEIGHT)
    return tile_level, (index << height) >> TILE_HEIGHT


def fetch_tiles(conn: Connection, keys: Iterable[Key]) -> dict[Key, bytes]:
    wanted = list(dict.fromkeys(keys))
    found: dict[Key, bytes] = {}
    c = tlog_tiles.c
    for start in range(0, len(wanted), TILES_PER_QUERY):
        chunk = wanted[start : start + TILES_PER_QUERY]
        # An OR of pairs rather than a row-value IN: every backend plans it on the primary key.
        where = sa.or_(*(sa.and_(c.level == lv, c.idx == ix) for lv, ix in chunk))
        for level, idx, hashes in conn.execute(sa.select(c.level, c.idx, c.hashes).where(where)):
            found[(int(level), int(idx))] = bytes(hashes)
    return found


class Tiles:
    """``get(level, index)`` over fetched tiles: a stored hash, or one hashed up from at most
    ``2**(TILE_HEIGHT - 1)`` stored ones below it."""

    def __init__(self, tiles: dict[Key, bytes]) -> None:
        self.tiles = tiles
        self._memo: dict[Key, bytes] = {}

    def get(self, level: int, index: int) -> bytes:
        found = self._memo.get((level, index))
        if found is not None:
            return found
        tile_level, height = divmod(level, TILE_HEIGHT)
        first = index << height
        tile = self.tiles.get((tile_level, first >> TILE_HEIGHT))
        offset = (first & (WIDTH - 1)) * HASH
        end = offset + (HASH << height)
        if tile is None or len(tile) < end:
            raise LedgerError(f"the tree lacks node ({level}, {index})")
        hashes = [tile[i : i + HASH] for i in range(offset, end, HASH)]
        while len(hashes) > 1:
            hashes = [merkle.node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
        self._memo[(level, index)] = hashes[0]
        return hashes[0]


def _getter(conn: Connection, keys: Iterable[Key]) -> Tiles:
    return Tiles(fetch_tiles(conn, (_tile_of(level, index) for level, index in keys)))


def _check(conn: Connection, size: int) -> None:
    have = tree_size(conn)
    if size > have:
        raise ValueError(f"size {size} is beyond the tree's {have} leaves")


def root(conn: Connection, size: int) -> bytes:
    """The RFC 6962 root of the first ``size`` leaves."""
    _check(conn, size)
    return merkle.tree_root(_getter(conn, merkle.root_keys(size)).get, size)


def inclusion_proof(conn: Connection, index: int, size: int) -> list[bytes]:
    _check(conn, size)
    get = _getter(conn, merkle.inclusion_keys(index, size)).get
    return merkle.inclusion_proof(get, index, size)


def consistency_proof(conn: Connection, old_size: int, new_size: int) -> list[bytes]:
    _check(conn, new_size)
    get = _getter(conn, merkle.consistency_keys(old_size, new_size)).get
    return merkle.consistency_proof(get, old_size, new_size)


def leaf(conn: Connection, position: int) -> bytes | None:
    """The leaf hash of the event at ``position``, if the tree covers it."""
    key = _tile_of(0, position - 1)
    tile = fetch_tiles(conn, [key]).get(key)
    offset = ((position - 1) & (WIDTH - 1)) * HASH
    if tile is None or len(tile) < offset + HASH:
        return None
    return tile[offset : offset + HASH]


_HASHER: ThreadPoolExecutor | None = None
_HASHER_LOCK = threading.Lock()


def hash_leaves(keeper: TreeKeeper, rows: Sequence[Sequence[Any]]) -> Future[list[bytes]]:
    """The leaf hashes of events rows, made in the process's one hashing thread."""
    global _HASHER
    with _HASHER_LOCK:
        if _HASHER is None:
            _HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tree-leaves")
    return _HASHER.submit(lambda: [keeper.leaf(row) for row in rows])


class _State:
    """Where appends go on: the frontier, and the last tile of each stored level."""

    __slots__ = ("edges", "frontier")

    def __init__(self, frontier: merkle.CompactRange, edges: dict[int, tuple[int, bytearray]]):
        self.frontier = frontier
        self.edges = edges

    def copy(self) -> _State:
        frontier = merkle.CompactRange(self.frontier.size, self.frontier.hashes)
        return _State(frontier, {lv: (ix, bytearray(b)) for lv, (ix, b) in self.edges.items()})

    def extend(self, leaves: Iterable[bytes]) -> dict[Key, bytearray]:
        """Append leaf hashes; the tiles they changed."""
        dirty: dict[Key, bytearray] = {}
        edges = self.edges
        for level, index, h in self.frontier.extend(leaves):
            tile_level, height = divmod(level, TILE_HEIGHT)
            if height:
                continue  # hashed up from the tile below when read
            idx, offset = divmod(index, WIDTH)
            edge = edges.get(tile_level)
            if edge is None or edge[0] != idx:
                edge = edges[tile_level] = (idx, bytearray())
            if len(edge[1]) != offset * HASH:
                raise LedgerError(f"the tree's tile ({tile_level}, {idx}) has a hole")
            edge[1].extend(h)
            dirty[(tile_level, idx)] = edge[1]
        return dirty


def _load(conn: Connection, size: int) -> _State:
    """The state of a stored tree of ``size`` leaves, from its tiles (one query)."""
    edge_keys = []
    level = 0
    while size >> level:
        count = size >> level
        edge_keys.append((level // TILE_HEIGHT, (count - 1) >> TILE_HEIGHT))
        level += TILE_HEIGHT
    root_keys = merkle.root_keys(size)
    tiles = fetch_tiles(conn, [*edge_keys, *(_tile_of(lv, ix) for lv, ix in root_keys)])
    frontier = merkle.CompactRange.from_store(Tiles(tiles).get, size)
    edges = {}
    for key in edge_keys:
        if key not in tiles:
            raise LedgerError(f"the tree lacks its tile {key}")
        edges[key[0]] = (key[1], bytearray(tiles[key]))
    return _State(frontier, edges)


def upsert_sql(dialect: sa.Dialect) -> str:
    quote = dialect.identifier_preparer.quote
    columns = f"{quote(tlog_tiles.name)} ({quote('level')}, {quote('idx')}, {quote('hashes')})"
    if dialect.paramstyle == "qmark":
        return f"INSERT OR REPLACE INTO {columns} VALUES (?, ?, ?)"
    return (
        f"INSERT INTO {columns} VALUES {{values}} ON DUPLICATE KEY UPDATE hashes = VALUES(hashes)"
    )


class TreeKeeper:
    """Extends the stored tree inside append transactions (one per ``EventStore``).

    The frontier and each level's last tile are cached as of the ledger position they were
    committed at; a transaction that finds the head elsewhere reads them back in one query. So
    an append alone costs its leaves' hashes and one statement writing a few tiles.
    """

    CATCH_UP_PAGE = 5000

    def __init__(self, forms: PublicForms) -> None:
        self.forms = forms
        self._upsert: str | None = None
        self._lock = threading.Lock()
        self._at = -1
        self._state: _State | None = None

    def leaf(self, row: Sequence[Any]) -> bytes:
        """The leaf hash of an events row (``EVENT_COLUMNS`` order)."""
        return self.forms.leaf(row[0], row[1], row[2], row[3], row[4], row[5], row[8], row[6])

    def state(self, conn: Connection, position: int, *, limit: int | None = None) -> _State:
        """The tree's state once it covers the ledger up to ``position`` (or ``limit`` more
        leaves), catching up from the events table in this transaction if it is behind."""
        with self._lock:
            if self._at == position and self._state is not None:
                return self._state.copy()
        size = tree_size(conn)
        if size > position:
            raise TreeBehind(f"the tree covers {size} events but the ledger holds {position}")
        state = _load(conn, size)
        until = position if limit is None else min(position, size + limit)
        if size < until:
            for rows in _pages(conn, size, until, self.CATCH_UP_PAGE):
                first = state.frontier.size + 1
                if rows[0][0] != first or rows[-1][0] != first + len(rows) - 1:
                    raise TreeBehind(f"position {first} is missing from the events")
                self.write(conn, state.extend(self.forms.leaf(*r) for r in rows))
        return state

    def extend(
        self, conn: Connection, position: int, leaves: Sequence[bytes]
    ) -> tuple[_State, dict[Key, bytearray]]:
        """Append leaf hashes after ledger ``position`` in ``conn``'s transaction: the new
        state, to hand to ``committed`` once the transaction commits, and the tiles it
        changed, which the caller writes in the same transaction (``write``, or on MySQL
        ``upsert_text`` sent with its own last statement)."""
        state = self.state(conn, position)
        return state, state.extend(leaves)

    def write(self, conn: Connection, tiles: dict[Key, bytearray]) -> None:
        if not tiles:
            return
        if conn.dialect.paramstyle == "qmark":
            if self._upsert is None:
                self._upsert = upsert_sql(conn.dialect)
            rows = [(lv, ix, bytes(h)) for (lv, ix), h in tiles.items()]
            conn.exec_driver_sql(self._upsert, rows)
            return
        conn.exec_driver_sql(self.upsert_text(conn.dialect, tiles))

    def upsert_text(self, dialect: sa.Dialect, tiles: dict[Key, bytearray]) -> str:
        """MySQL: the statement writing ``tiles``, its values as literals (ints, hex):
        nothing to escape, no parameter, so it can lead a multi-statement packet."""
        if self._upsert is None:
            self._upsert = upsert_sql(dialect)
        values = ",".join(f"({lv},{ix},X'{h.hex()}')" for (lv, ix), h in tiles.items())
        return self._upsert.replace("{values}", values)

    def committed(self, state: _State) -> None:
        with self._lock:
            self._at, self._state = state.frontier.size, state

    def clear(self) -> None:
        with self._lock:
            self._at, self._state = -1, None


def _pages(conn: Connection, after: int, until: int, page: int) -> Iterable[list[tuple[Any, ...]]]:
    rows: list[tuple[Any, ...]] = []
    for row in PUBLIC_COLUMNS.stream(conn, after, until):
        rows.append(tuple(row))
        if len(rows) == page:
            yield rows
            rows = []
    if rows:
        yield rows
