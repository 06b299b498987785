"""Counters shared by every process on one database: per (limit, subject, period), an atomic
"add and tell me the new total". The rate limits of ``service/limits.py`` lease their
allowances through it, many leases in one short transaction (``take_many``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Engine

from .db import in_lists, write_transaction
from .schema import rate_counts


@dataclass(frozen=True)
class Ask:
    """Add ``wanted`` to the count of (``limit_name``, ``subject``, ``period``); the caller
    is granted the units that fall within ``limit``."""

    limit_name: str
    subject: str
    period: int
    wanted: int
    limit: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.limit_name, self.subject, self.period)


def _upsert(dialect: str) -> sa.Insert:
    """Insert the row with ``used = :used``, or add ``:used`` to the row already there."""
    if dialect == "sqlite":
        insert = sqlite.insert(rate_counts)
        return insert.on_conflict_do_update(
            index_elements=[c.name for c in rate_counts.primary_key.columns],
            set_={"used": rate_counts.c.used + insert.excluded.used},
        )
    insert = mysql.insert(rate_counts)
    return insert.on_duplicate_key_update(used=rate_counts.c.used + insert.inserted.used)


COUNTS = sa.select(
    rate_counts.c.limit_name, rate_counts.c.subject, rate_counts.c.period, rate_counts.c.used
).where(
    rate_counts.c.limit_name.in_(sa.bindparam("names", expanding=True)),
    rate_counts.c.subject.in_(sa.bindparam("subjects", expanding=True)),
    rate_counts.c.period.in_(sa.bindparam("periods", expanding=True)),
)


def take_many(engine: Engine, asks: Sequence[Ask]) -> list[int]:
    """Each ask's grant (0 to its ``wanted``), all in one transaction: the counts are raised
    by what was asked (upserts, in key order so that two processes never wait for each
    other in a cycle), then read; the upserts hold their rows locked until the commit, so
    what is read is this transaction's own total, and the grants of all processes together
    never exceed a limit (the count may: it records what was asked).

    A connection found dead is replaced once. Should a commit whose outcome was lost have
    counted, the count is higher than what was granted: fewer let through, never more."""
    totals: dict[tuple[str, str, int], int] = {}
    for ask in asks:
        totals[ask.key] = totals.get(ask.key, 0) + ask.wanted
    try:
        used = _raise_counts(engine, totals)
    except sa.exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        used = _raise_counts(engine, totals)
    before = {key: used[key] - total for key, total in totals.items()}
    grants = []
    for ask in asks:  # in the order asked: the first asks get the units first
        start = before[ask.key]
        grants.append(max(0, min(ask.wanted, ask.limit - start)))
        before[ask.key] = start + ask.wanted
    return grants


def _raise_counts(
    engine: Engine, totals: dict[tuple[str, str, int], int]
) -> dict[tuple[str, str, int], int]:
    keys = sorted(totals)
    used: dict[tuple[str, str, int], int] = {}
    with write_transaction(engine, ping=False) as conn, conn.begin():
        conn.execute(
            _upsert(conn.dialect.name),
            [
                {"limit_name": name, "subject": subject, "period": period, "used": totals[key]}
                for key in keys
                for name, subject, period in [key]
            ],
        )
        names = sorted({k[0] for k in keys})
        periods = sorted({k[2] for k in keys})
        for subjects in in_lists(sorted({k[1] for k in keys})):
            params = {"names": names, "subjects": subjects, "periods": periods}
            for name, subject, period, count in conn.execute(COUNTS, params):
                if (name, subject, period) in totals:
                    used[(name, subject, period)] = int(count)
    return used


def forget_before(engine: Engine, period: int) -> int:
    """Delete the counts of periods before ``period``; how many rows went."""
    with write_transaction(engine) as conn, conn.begin():
        return conn.execute(rate_counts.delete().where(rate_counts.c.period < period)).rowcount
