"""The public farmer status of the v1 API (``/status/list``, ``/status/show``), read from the
projections: one row per live token with its uptime, accepted proofs and online contracts.
Three queries whatever the number of farmers; sorting and paging are the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..domain.clock import iso_micros
from .queries import Reader

# A farmer id is this many hex digits of the token's hash (a public name, not the token).
FARMER_ID_CHARS = 20


@dataclass
class FarmerRow:
    id: str
    address: str
    ip: str | None
    uptime: float  # percent, 2 decimals
    heartbeats: int
    contracts: int
    size: int
    last_due: int | None  # UTC microseconds
    online: bool
    location: dict[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "location": self.location,
            "uptime": self.uptime,
            "heartbeats": self.heartbeats,
            "contracts": self.contracts,
            "last_due": iso_micros(self.last_due) if self.last_due is not None else None,
            "size": self.size,
            "online": self.online,
        }


def farmer_rows(r: Reader, now: int, *, farmer_id: str | None = None) -> list[FarmerRow]:
    """Every live token (or the one whose id is ``farmer_id``), unsorted."""
    t = r.t
    tk, c, f = t.tokens.c, t.contracts.c, t.files.c
    where = [tk.deleted_at.is_(None)]
    if farmer_id is not None:
        if len(farmer_id) != FARMER_ID_CHARS:
            return []
        # Hex digits only reach here (the route checks), so LIKE has nothing to escape.
        where.append(tk.token_hash.like(farmer_id.lower() + "%"))
    tokens = r.conn.execute(sa.select(tk.token_hash, tk.address, tk.ip).where(*where)).all()
    if not tokens:
        return []
    hashes = [row.token_hash for row in tokens]
    online = (
        sa.select(
            c.token_hash,
            sa.func.count().label("n"),
            sa.func.coalesce(sa.func.sum(f.size), 0).label("size"),
            sa.func.max(c.due).label("last_due"),
        )
        .select_from(t.contracts.join(t.files, f.file_hash == c.file_hash))
        .where(
            c.started_at.is_not(None),
            c.ended_at.is_(None),
            c.expiration > now,
            c.token_hash.in_(hashes) if farmer_id is not None else sa.true(),
        )
        .group_by(c.token_hash)
    )
    held = {row.token_hash: row for row in r.conn.execute(online)}
    if farmer_id is not None:
        uptimes = {h: u for h in hashes if (u := r.uptime(h)) is not None}
    else:
        uptimes = {u.token_hash: u for u in r.all_uptime()}
    out = []
    for token in tokens:
        h = held.get(token.token_hash)
        u = uptimes.get(token.token_hash)
        total = u.total(now) if u is not None else 0
        percent = round(100 * u.online(now) / total, 2) if u is not None and total > 0 else 0.0
        out.append(
            FarmerRow(
                id=token.token_hash[:FARMER_ID_CHARS],
                address=token.address,
                ip=token.ip,
                uptime=percent,
                heartbeats=u.passed if u is not None else 0,
                contracts=int(h.n) if h is not None else 0,
                size=int(h.size) if h is not None else 0,
                last_due=int(h.last_due) if h is not None and h.last_due is not None else None,
                online=h is not None and int(h.n) > 0,
            )
        )
    return out
