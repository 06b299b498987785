"""The projection oracle: the projector as first written, one event and several statements
at a time, kept as the executable specification of what the projection tables hold.

``downstream_node/projections/fold.py`` folds batches in memory and writes each table
once per batch; ``tests/integration/test_projection_oracle.py`` checks that both give the
same tables, row for row. A change to what a projection holds belongs in both.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from downstream_node.domain import events as ev
from downstream_node.domain.clock import to_micros
from downstream_node.domain.folds import handler_names, handles, ignoring
from downstream_node.domain.uptime import Coverage
from downstream_node.ledger.store import RecordedEvent
from downstream_node.projections.tables import ProjectionTables

CHECKPOINT = "projector"


def checkpoint(conn: Connection, tables: ProjectionTables) -> int:
    value = conn.execute(
        sa.select(tables.checkpoint.c.position).where(tables.checkpoint.c.name == CHECKPOINT)
    ).scalar()
    return int(value or 0)


def apply_events(
    conn: Connection, tables: ProjectionTables, recorded: Sequence[RecordedEvent]
) -> None:
    """Fold ``recorded`` (consecutive, in order) and move the checkpoint, in ``conn``'s txn."""
    if not recorded:
        return
    done = checkpoint(conn, tables)
    for item in recorded:
        if item.position <= done:
            continue  # already folded: applying is idempotent per position
        if item.position != done + 1:
            raise RuntimeError(f"projection gap: at {done}, got position {item.position}")
        domain = ev.decode(item)
        handler = HANDLERS.get(item.event_type)
        if handler is not None:
            handler(conn, tables, domain, item)
        done = item.position
    conn.execute(
        tables.checkpoint.update()
        .where(tables.checkpoint.c.name == CHECKPOINT)
        .values(position=done)
    )


# -- handlers -----------------------------------------------------------------------------------


def _t(item: RecordedEvent) -> int:
    return to_micros(item.occurred_at)


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@handles(ev.AddressWhitelisted)
def _whitelisted(
    conn: Connection, t: ProjectionTables, e: ev.AddressWhitelisted, _: RecordedEvent
) -> None:
    updated = conn.execute(
        t.whitelist.update().where(t.whitelist.c.address == e.address).values(balance=e.balance)
    )
    if updated.rowcount == 0:
        conn.execute(t.whitelist.insert().values(address=e.address, balance=e.balance))


@handles(ev.TokenCreated)
def _token_created(
    conn: Connection, t: ProjectionTables, e: ev.TokenCreated, item: RecordedEvent
) -> None:
    conn.execute(
        t.tokens.insert().values(
            token_hash=e.token_hash,
            address=e.address,
            ip=e.ip,
            created_at=_t(item),
            deleted_at=None,
            # The token stream's version (a farmer's token is created through its IP's
            # stream, leaving its own stream empty until it is deleted).
            version=item.version if item.stream_id == ev.token_stream(e.token_hash) else 0,
        )
    )
    conn.execute(
        t.uptime.insert().values(
            token_hash=e.token_hash,
            first_start=0,
            closed=0,
            seg_start=0,
            seg_end=0,
            contracts=0,
            challenges=0,
            passed=0,
            failed=0,
            expired=0,
        )
    )


@handles(ev.TokenDeleted)
def _token_deleted(
    conn: Connection, t: ProjectionTables, e: ev.TokenDeleted, item: RecordedEvent
) -> None:
    conn.execute(
        t.tokens.update()
        .where(t.tokens.c.token_hash == e.token_hash)
        .values(deleted_at=_t(item), version=item.version)
    )
    live = (
        conn.execute(
            sa.select(t.contracts.c.contract_id).where(
                t.contracts.c.token_hash == e.token_hash,
                t.contracts.c.ended_at.is_(None),
                t.contracts.c.started_at.is_not(None),
            )
        )
        .scalars()
        .all()
    )
    for contract_id in live:
        _end_contract(conn, t, contract_id, _t(item), "token_deleted")


@handles(ev.FileAdded)
def _file_added(
    conn: Connection, t: ProjectionTables, e: ev.FileAdded, item: RecordedEvent
) -> None:
    values = dict(
        size=e.size,
        redundancy=e.redundancy,
        interval=e.interval,
        seed=e.seed,
        path=e.path,
        added_at=_t(item),
        removed_at=None,
        version=item.version,
    )
    readded = conn.execute(
        t.files.update()
        .where(t.files.c.file_hash == e.file_hash, t.files.c.removed_at.is_not(None))
        .values(**values)
    )
    if readded.rowcount == 0:
        conn.execute(t.files.insert().values(file_hash=e.file_hash, **values))


@handles(ev.FileRemoved)
def _file_removed(
    conn: Connection, t: ProjectionTables, e: ev.FileRemoved, item: RecordedEvent
) -> None:
    conn.execute(
        t.files.update()
        .where(t.files.c.file_hash == e.file_hash)
        .values(removed_at=_t(item), version=item.version)
    )
    live = (
        conn.execute(
            sa.select(t.contracts.c.contract_id).where(
                t.contracts.c.file_hash == e.file_hash,
                t.contracts.c.ended_at.is_(None),
                t.contracts.c.started_at.is_not(None),
            )
        )
        .scalars()
        .all()
    )
    for contract_id in live:
        _end_contract(conn, t, contract_id, _t(item), "file_removed")


@handles(ev.ChunkEncoded)
def _chunk_encoded(
    conn: Connection, t: ProjectionTables, e: ev.ChunkEncoded, item: RecordedEvent
) -> None:
    conn.execute(
        t.contracts.insert().values(
            contract_id=e.contract_id,
            token_hash=None,
            file_hash=e.file_hash,
            heartbeat=e.heartbeat,
            seed=e.seed,
            state=_dump(e.state),
            answered=False,
            challenges=0,
            passed=0,
            failed=0,
            rejected=0,
            challenge_failures=0,
            version=0,
        )
    )
    _file_version(conn, t, e.file_hash, item)


@handles(ev.ContractAssigned)
def _contract_assigned(
    conn: Connection, t: ProjectionTables, e: ev.ContractAssigned, item: RecordedEvent
) -> None:
    now = _t(item)
    conn.execute(
        t.contracts.update()
        .where(t.contracts.c.contract_id == e.contract_id)
        .values(
            token_hash=e.token_hash,
            challenge=_dump(e.challenge),
            challenge_index=e.challenge_index,
            state=_dump(e.state),
            interval=e.interval,
            started_at=now,
            due=e.due,
            answered=False,
            expiration=e.due,
            challenges=1,
            challenge_failures=0,
        )
    )
    _file_version(conn, t, e.file_hash, item)
    _uptime(conn, t, e.token_hash, lambda cov: cov.cover(now, e.due), contracts=1, challenges=1)


@handles(ev.ChallengeIssued)
def _challenge_issued(
    conn: Connection, t: ProjectionTables, e: ev.ChallengeIssued, item: RecordedEvent
) -> None:
    c = t.contracts.c
    conn.execute(
        t.contracts.update()
        .where(c.contract_id == e.contract_id)
        .values(
            challenge=_dump(e.challenge),
            challenge_index=e.challenge_index,
            state=_dump(e.state),
            due=e.due,
            answered=False,
            expiration=e.due,
            challenges=c.challenges + 1,
            challenge_failures=0,
            version=item.version,
        )
    )
    _uptime(conn, t, _token_of(conn, t, e.contract_id), None, challenges=1)


@handles(ev.AnswerPassed)
def _answer_passed(
    conn: Connection, t: ProjectionTables, e: ev.AnswerPassed, item: RecordedEvent
) -> None:
    c = t.contracts.c
    now = _t(item)
    conn.execute(
        t.contracts.update()
        .where(c.contract_id == e.contract_id)
        .values(answered=True, expiration=e.expiration, passed=c.passed + 1, version=item.version)
    )
    _uptime(
        conn,
        t,
        _token_of(conn, t, e.contract_id),
        lambda cov: cov.cover(now, e.expiration),
        passed=1,
    )


@handles(ev.AnswerFailed)
def _answer_failed(
    conn: Connection, t: ProjectionTables, e: ev.AnswerFailed, item: RecordedEvent
) -> None:
    c = t.contracts.c
    conn.execute(
        t.contracts.update()
        .where(c.contract_id == e.contract_id)
        .values(
            failed=c.failed + 1,
            challenge_failures=c.challenge_failures + 1,
            version=item.version,
        )
    )
    _uptime(conn, t, _token_of(conn, t, e.contract_id), None, failed=1)


@handles(ev.AnswerRejected)
def _answer_rejected(
    conn: Connection, t: ProjectionTables, e: ev.AnswerRejected, item: RecordedEvent
) -> None:
    c = t.contracts.c
    conn.execute(
        t.contracts.update()
        .where(c.contract_id == e.contract_id)
        .values(rejected=c.rejected + 1, version=item.version)
    )


@handles(ev.ContractExpired)
def _contract_expired(
    conn: Connection, t: ProjectionTables, e: ev.ContractExpired, item: RecordedEvent
) -> None:
    _end_contract(conn, t, e.contract_id, e.expired_at, "expired", version=item.version)
    _uptime(conn, t, _token_of(conn, t, e.contract_id), None, expired=1)


@handles(ev.ContractEnded)
def _contract_ended(
    conn: Connection, t: ProjectionTables, e: ev.ContractEnded, item: RecordedEvent
) -> None:
    _end_contract(conn, t, e.contract_id, _t(item), e.reason, version=item.version)


# -- helpers ------------------------------------------------------------------------------------


def _file_version(
    conn: Connection, t: ProjectionTables, file_hash: str, item: RecordedEvent
) -> None:
    conn.execute(
        t.files.update().where(t.files.c.file_hash == file_hash).values(version=item.version)
    )


def _token_of(conn: Connection, t: ProjectionTables, contract_id: str) -> str:
    return conn.execute(
        sa.select(t.contracts.c.token_hash).where(t.contracts.c.contract_id == contract_id)
    ).scalar_one()


def _end_contract(
    conn: Connection,
    t: ProjectionTables,
    contract_id: str,
    at: int,
    reason: str,
    version: int | None = None,
) -> None:
    c = t.contracts.c
    row = conn.execute(
        sa.select(c.token_hash, c.ended_at).where(c.contract_id == contract_id)
    ).one()
    if row.ended_at is not None:
        return
    values: dict[str, Any] = {"ended_at": at, "end_reason": reason}
    if version is not None:
        values["version"] = version
    conn.execute(t.contracts.update().where(c.contract_id == contract_id).values(**values))
    others = conn.execute(
        sa.select(sa.func.max(c.expiration)).where(
            c.token_hash == row.token_hash, c.ended_at.is_(None), c.contract_id != contract_id
        )
    ).scalar()
    _uptime(conn, t, row.token_hash, lambda cov: cov.cut(at, int(others or 0)))


def _uptime(
    conn: Connection,
    t: ProjectionTables,
    token_hash: str,
    change: Callable[[Coverage], None] | None,
    **counters: int,
) -> None:
    u = t.uptime.c
    values: dict[str, Any] = {name: u[name] + amount for name, amount in counters.items()}
    if change is not None:
        row = conn.execute(
            sa.select(u.first_start, u.closed, u.seg_start, u.seg_end).where(
                u.token_hash == token_hash
            )
        ).one()
        cov = Coverage(row.first_start, row.closed, row.seg_start, row.seg_end)
        change(cov)
        values.update(
            first_start=cov.first_start,
            closed=cov.closed,
            seg_start=cov.seg_start,
            seg_end=cov.seg_end,
        )
    if values:
        conn.execute(t.uptime.update().where(u.token_hash == token_hash).values(**values))


# Derived from the handlers above, as every fold's table is.
HANDLERS = {t: globals()[name] for t, name in handler_names(sys.modules[__name__]).items()}
IGNORED = ignoring(ev.HeartbeatConfigured, ev.LogKeyConfigured)
