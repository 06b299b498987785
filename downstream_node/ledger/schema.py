"""The ledger's two tables: ``events`` (append-only, hash-chained) and ``ledger_head``.

One schema serves MySQL/MariaDB and SQLite. Positions are assigned by the application under
the lock on the single ``ledger_head`` row, never by auto-increment, so they are gap-free
and become visible in order.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

# Byte-exact comparisons for identifiers (Base58 addresses are case-sensitive).
MYSQL_TABLE_ARGS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

GENESIS_HASH = "0" * 64
REQUEST_ID_INDEX = "ix_events_request_id"

events = sa.Table(
    "events",
    metadata,
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("stream_id", sa.String(160), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("schema_version", sa.SmallInteger, nullable=False),
    sa.Column("payload", LongText, nullable=False),
    sa.Column("meta", sa.Text, nullable=False),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("occurred_at", sa.BigInteger, nullable=False),  # UTC microseconds
    sa.Column("hash", sa.String(64), nullable=False),
    sa.UniqueConstraint("stream_id", "version", name="uq_events_stream_version"),
    sa.Index(REQUEST_ID_INDEX, "request_id"),
    **MYSQL_TABLE_ARGS,
)
# Every column of an event row, in table order: the hash chain's content, then the hash.
EVENT_COLUMNS = tuple(column.name for column in events.columns)

ledger_head = sa.Table(
    "ledger_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # Which generation of projection tables is live; a rebuild swaps it under the head lock.
    sa.Column("projection_generation", sa.Integer, nullable=False),
    **MYSQL_TABLE_ARGS,
)

HEAD_ID = 1

# The transparency log over the events (RFC 6962), kept as tiles (after C2SP tlog-tiles, of
# height TILE_HEIGHT): the row (level L, idx N) holds the hashes at tree level L * TILE_HEIGHT of
# indices N * 2**TILE_HEIGHT onwards, 32 bytes each, up to 2**TILE_HEIGHT of them (the last tile
# of a level is partial, and rewritten as it fills). Any other node is hashed up from the
# tile below it. An append writes a few rows, not one per node; the tree's size is read from
# its last level-0 tile. Kept apart from ledger_head so that a store without the log's key (an
# older release, a benchmark) appends as before and a store with it catches the tree up.
TILE_HEIGHT = 6

tlog_tiles = sa.Table(
    "tlog_tiles",
    metadata,
    sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hashes", sa.LargeBinary, nullable=False),
    **MYSQL_TABLE_ARGS,
)
