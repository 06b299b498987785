"""Counters shared by every process on one database: per (limit, subject, period), an atomic
"add and tell me the new total" in one short transaction. The rate limits of
``service/limits.py`` lease their allowances through it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Engine

from .db import write_transaction
from .schema import rate_counts

COUNT_OF = sa.select(rate_counts.c.used).where(
    rate_counts.c.limit_name == sa.bindparam("limit_name"),
    rate_counts.c.subject == sa.bindparam("subject"),
    rate_counts.c.period == sa.bindparam("period"),
)


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


def take(
    engine: Engine, limit_name: str, subject: str, period: int, wanted: int, limit: int
) -> int:
    """Add ``wanted`` to the count of (``limit_name``, ``subject``, ``period``) and return how
    many of those units fall within ``limit``: the caller's grant, 0 to ``wanted``.

    The upsert locks the row until the commit, so the count read after it is this
    transaction's own total, and the grants of all processes together never exceed
    ``limit`` (the count may: it records what was asked)."""
    params = {"limit_name": limit_name, "subject": subject, "period": period}
    with write_transaction(engine) as conn, conn.begin():
        conn.execute(_upsert(conn.dialect.name), {**params, "used": wanted})
        used = int(conn.execute(COUNT_OF, params).scalar_one())
    return max(0, min(wanted, limit - (used - wanted)))


def forget_before(engine: Engine, period: int) -> int:
    """Delete the counts of periods before ``period``; how many rows went."""
    with write_transaction(engine) as conn, conn.begin():
        return conn.execute(rate_counts.delete().where(rate_counts.c.period < period)).rowcount
