"""The projection tables, one set per generation (``proj<g>_tokens`` ...).

The live generation is named in the ledger head row; a rebuild fills the next generation from
position 0 and swaps the number under the head lock, so a running node never sees a half-built
read model. Times are UTC microseconds, as in the events.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import sqlalchemy as sa

from ..domain.tokens import BALANCE_CHARS
from ..ledger.schema import MYSQL_TABLE_ARGS

NAMES = ("checkpoint", "whitelist", "tokens", "files", "contracts", "uptime")


@dataclass(frozen=True)
class ProjectionTables:
    generation: int
    metadata: sa.MetaData
    checkpoint: sa.Table
    whitelist: sa.Table
    tokens: sa.Table
    files: sa.Table
    contracts: sa.Table
    uptime: sa.Table

    def all(self) -> list[sa.Table]:
        return [getattr(self, name) for name in NAMES]


@cache
def tables_for(generation: int) -> ProjectionTables:
    md = sa.MetaData()
    p = f"proj{generation}_"
    checkpoint = sa.Table(
        p + "checkpoint",
        md,
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        **MYSQL_TABLE_ARGS,
    )
    whitelist = sa.Table(
        p + "whitelist",
        md,
        sa.Column("address", sa.String(64), primary_key=True),
        sa.Column("balance", sa.String(BALANCE_CHARS), nullable=False),
        **MYSQL_TABLE_ARGS,
    )
    tokens = sa.Table(
        p + "tokens",
        md,
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("address", sa.String(64), nullable=False, index=True),
        sa.Column("ip", sa.String(64), nullable=True, index=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("deleted_at", sa.BigInteger, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        **MYSQL_TABLE_ARGS,
    )
    files = sa.Table(
        p + "files",
        md,
        sa.Column("file_hash", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("redundancy", sa.Integer, nullable=False),
        sa.Column("interval", sa.Integer, nullable=False),
        sa.Column("seed", sa.String(128), nullable=True),
        sa.Column("path", sa.Text, nullable=True),
        sa.Column("added_at", sa.BigInteger, nullable=False),
        sa.Column("removed_at", sa.BigInteger, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        **MYSQL_TABLE_ARGS,
    )
    contracts = sa.Table(
        p + "contracts",
        md,
        sa.Column("contract_id", sa.String(32), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=True),
        sa.Column("file_hash", sa.String(64), nullable=False, index=True),
        sa.Column("heartbeat", sa.String(16), nullable=False),
        sa.Column("seed", sa.String(128), nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("challenge", sa.Text, nullable=True),
        sa.Column("challenge_index", sa.Integer, nullable=True),
        sa.Column("interval", sa.Integer, nullable=True),
        sa.Column("started_at", sa.BigInteger, nullable=True),
        sa.Column("due", sa.BigInteger, nullable=True),
        sa.Column("answered", sa.Boolean, nullable=False),
        sa.Column("expiration", sa.BigInteger, nullable=True),
        sa.Column("ended_at", sa.BigInteger, nullable=True),
        sa.Column("end_reason", sa.String(32), nullable=True),
        sa.Column("challenges", sa.Integer, nullable=False),
        sa.Column("passed", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("rejected", sa.Integer, nullable=False),
        # Wrong answers recorded for the open challenge (the cap on them: domain/contracts.py).
        sa.Column("challenge_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("version", sa.Integer, nullable=False),
        # A token's contracts, and the contract of a (token, file) pair that each answer
        # looks up: both databases go straight to the pairs of a batch of answers.
        sa.Index(f"ix_{p}contracts_token_hash_file_hash", "token_hash", "file_hash"),
        **MYSQL_TABLE_ARGS,
    )
    # The open contracts (ended_at NULL), by file: what the sweep (every 30 s) and /chunk's
    # count of live replicas read. Open ones are at most files x redundancy; ended ones pile
    # up for ever, and without this both read every contract ever made. MySQL weighs it by
    # its statistics; SQLite plans without any, and would take an ordinary index led by
    # ended_at over the (token, file) one in the answers' own lookups, so there it is a
    # partial index, read only where a query wants all open contracts. Neither holds a column
    # an answer changes.
    c = contracts.c
    sa.Index(f"ix_{p}contracts_open", c.ended_at, c.file_hash).ddl_if(dialect=("mysql", "mariadb"))
    sa.Index(f"ix_{p}contracts_open", c.file_hash, sqlite_where=c.ended_at.is_(None)).ddl_if(
        dialect="sqlite"
    )
    uptime = sa.Table(
        p + "uptime",
        md,
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("first_start", sa.BigInteger, nullable=False),
        sa.Column("closed", sa.BigInteger, nullable=False),
        sa.Column("seg_start", sa.BigInteger, nullable=False),
        sa.Column("seg_end", sa.BigInteger, nullable=False),
        sa.Column("contracts", sa.Integer, nullable=False),
        sa.Column("challenges", sa.Integer, nullable=False),
        sa.Column("passed", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("expired", sa.Integer, nullable=False),
        **MYSQL_TABLE_ARGS,
    )
    return ProjectionTables(generation, md, checkpoint, whitelist, tokens, files, contracts, uptime)
