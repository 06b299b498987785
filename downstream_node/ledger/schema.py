"""The ledger's tables: ``events`` (append-only, hash-chained), ``ledger_head``, and
``ledger_leases`` (cluster-wide locks for long jobs).

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

# Per-minute request counters shared by every node process on this database (the rate limits
# of service/limits.py): how many requests of a limit's subject (a token's hash, an IP) were
# let through, or leased to a process, in one period. Not part of the ledger: no event, no
# hash; rows of past periods are deleted.
rate_counts = sa.Table(
    "rate_counts",
    metadata,
    sa.Column("limit_name", sa.String(16), primary_key=True),
    sa.Column("subject", sa.String(128), primary_key=True),
    sa.Column("period", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("used", sa.BigInteger, nullable=False),
    **MYSQL_TABLE_ARGS,
)

# Leases: a name held by one owner until a time, cluster-wide (``ledger/leases.py``): MySQL's
# named locks are per node on a Galera cluster.
leases = sa.Table(
    "ledger_leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    # UTC microseconds from the holder's injected clock; the lease is free after it.
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    **MYSQL_TABLE_ARGS,
)

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
