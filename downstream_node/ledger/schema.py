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

# The transparency log over the events (RFC 6962): every full subtree's hash, keyed by
# (level, index), level 0 the leaves. The tree's size is its last leaf's index + 1 (read from
# the primary key, and never a row to update on every append). Kept apart from ledger_head so
# that a store without the log's key (an older release, a benchmark) appends as before and a
# store with it catches the tree up.
Hash32 = sa.LargeBinary(32).with_variant(mysql.BINARY(32), "mysql", "mariadb")

tlog_nodes = sa.Table(
    "tlog_nodes",
    metadata,
    sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", Hash32, nullable=False),
    **MYSQL_TABLE_ARGS,
)
