"""Walks the hash chain from position 1 (or from a known position and hash) and reports the
first row that does not hold.

An auditor runs this to prove that no event was altered, removed, inserted or reordered.
It streams the events, so memory stays constant on any ledger size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..domain.canonical import chain_hash
from . import reader
from .db import read_transaction
from .schema import EVENT_COLUMNS, GENESIS_HASH, events

CHAIN_COLUMNS = EVENT_COLUMNS[:-1]  # what a row's hash covers: every column but the hash


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    checked: int
    last_position: int
    last_hash: str
    first_broken: int | None = None
    reason: str = ""

    def todict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "last_position": self.last_position,
            "last_hash": self.last_hash,
            "first_broken": self.first_broken,
            "reason": self.reason,
        }


def verify_chain(
    engine: Engine,
    *,
    until: int | None = None,
    page: int = 5000,
    progress: Callable[[int], None] | None = None,
    start: tuple[int, str] | None = None,
) -> VerifyReport:
    """Check positions are 1, 2, 3, ... and each row's hash chains from the previous one.

    ``start``: a known ``(position, hash)`` (an incremental audit's saved state, verified when
    it was saved): the walk begins after it, chaining from that hash; the checks are the same.
    The caller makes sure the ledger still holds that hash at that position (``hash_at``).
    """
    with read_transaction(engine) as conn:
        head = reader.ledger_head_row(conn)
    if head is None:
        return VerifyReport(False, 0, 0, GENESIS_HASH, 0, "ledger head row is missing")
    stop = head.position if until is None else min(until, head.position)

    after, prev_hash = start if start is not None else (0, GENESIS_HASH)
    expected_pos, checked = after + 1, 0
    for rows in reader.ALL_COLUMNS.pages(engine, after, stop, page):
        for row in rows:
            position, stored = row[0], row[-1]
            if position != expected_pos:
                return VerifyReport(
                    False,
                    checked,
                    expected_pos - 1,
                    prev_hash,
                    expected_pos,
                    f"position {expected_pos} is missing",
                )
            computed = chain_hash(prev_hash, **dict(zip(CHAIN_COLUMNS, row[:-1], strict=True)))
            if computed != stored:
                return VerifyReport(
                    False,
                    checked,
                    expected_pos - 1,
                    prev_hash,
                    position,
                    f"hash mismatch at position {position}: the row or its stored hash was altered",
                )
            prev_hash = computed
            expected_pos += 1
            checked += 1
        if progress is not None:
            progress(len(rows))

    last = expected_pos - 1
    if last < stop:
        return VerifyReport(
            False,
            checked,
            last,
            prev_hash,
            last + 1,
            f"position {last + 1} is missing (head says {head.position})",
        )
    # A row before position 1 is outside the chain the walk checks, yet the store reads it
    # (stream versions, request ids): a forged "recorded" answer could hide there.
    before, beyond = reader.outside_chain(engine, head.position)
    if before is not None:
        return VerifyReport(
            False,
            checked,
            last,
            prev_hash,
            before,
            f"an event at position {before}, before the chain's first position (1)",
        )
    if until is None and beyond:
        return VerifyReport(
            False,
            checked,
            last,
            prev_hash,
            head.position + 1,
            "events exist beyond the ledger head",
        )
    if until is None and prev_hash != head.hash:
        return VerifyReport(
            False,
            checked,
            last,
            prev_hash,
            last,
            "the ledger head's hash does not match the last event",
        )
    return VerifyReport(True, checked, last, prev_hash)


def hash_at(engine: Engine, position: int) -> str | None:
    """The stored hash of the event at ``position`` (the genesis hash at 0), if there is one."""
    if position == 0:
        return GENESIS_HASH
    with read_transaction(engine) as conn:
        value = conn.execute(sa.select(events.c.hash).where(events.c.position == position)).scalar()
    return None if value is None else str(value)
