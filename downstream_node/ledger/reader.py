"""The one reader of the events table: events in position order, by stream or by request id.

Rebuild, audit, verify and the store's own read methods all come through here. A ranged read
names the columns it needs and the event types whose payloads it folds (the others come back
as ``None`` and never cross the wire); it is either streamed through the driver's cursor in
the caller's transaction (a rebuild's hot loop) or paged, each page its own short read
transaction (audits and verification, which must not hold the database's history open).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..domain.clock import from_micros
from ..domain.records import RecordedEvent
from .db import read_transaction
from .schema import EVENT_COLUMNS, HEAD_ID, events, ledger_head

_TYPE_NAME = re.compile(r"\A[A-Za-z][A-Za-z0-9]*\Z")


class EventRange:
    """Reads ``after < position <= until`` in order, as tuples of ``columns``.

    ``payloads_of``: the event types whose payload text is wanted; for every other type the
    payload column (if asked for) is ``None``, decided by the database, so a large payload
    nobody folds (a ``ChunkEncoded`` tag, for an auditor) is never sent.
    """

    def __init__(
        self, columns: Sequence[str] = EVENT_COLUMNS, *, payloads_of: Collection[str] | None = None
    ) -> None:
        unknown = set(columns) - set(EVENT_COLUMNS)
        if unknown:
            raise ValueError(f"not columns of the events table: {sorted(unknown)}")
        selected = []
        for name in columns:
            if name == "payload" and payloads_of is not None:
                # Type names are identifiers (checked), so they can stand in the SQL text.
                if not all(_TYPE_NAME.match(t) for t in payloads_of):
                    raise ValueError("event type names must be identifiers")
                listed = ", ".join(f"'{t}'" for t in sorted(payloads_of)) or "NULL"
                selected.append(f"CASE WHEN event_type IN ({listed}) THEN payload END")
            else:
                selected.append(name)
        self.columns = tuple(columns)
        self._sql = (
            f"SELECT {', '.join(selected)} FROM {events.name}"
            " WHERE position > {mark} AND position <= {mark} ORDER BY position"
        )

    def _text(self, conn: Connection, limit: int | None = None) -> str:
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        sql = self._sql.format(mark=mark)
        return sql if limit is None else f"{sql} LIMIT {int(limit)}"

    def stream(self, conn: Connection, after: int, until: int) -> Iterator[tuple[Any, ...]]:
        """Rows streamed through the driver's own cursor, in ``conn``'s transaction."""
        cursor = conn.connection.cursor()
        try:
            cursor.execute(self._text(conn), (after, until))
            while rows := cursor.fetchmany(1000):
                yield from rows
        finally:
            cursor.close()

    def pages(
        self, engine: Engine, after: int, until: int, page: int = 5000
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Pages of at most ``page`` rows, each read in a short read transaction of its own.

        Paging by position keeps memory constant however long the ledger is; a page that
        comes back empty ends the read (a caller checking for gaps sees where).
        """
        position = self.columns.index("position") if "position" in self.columns else None
        if position is None:
            raise ValueError("a paged read needs the position column")
        while after < until:
            with read_transaction(engine) as conn:
                rows = [
                    tuple(r)
                    for r in conn.exec_driver_sql(self._text(conn, page), (after, until)).all()
                ]
            if not rows:
                return
            yield rows
            after = rows[-1][position]


ALL_COLUMNS = EventRange()
# What an event's public form is made of, in ``PublicForms.form_bytes`` argument order.
PUBLIC_COLUMNS = EventRange(
    (
        "position",
        "stream_id",
        "version",
        "event_type",
        "schema_version",
        "payload",
        "occurred_at",
        "meta",
    )
)


def ledger_head_row(conn: Connection) -> Any:
    """The ledger head (position, hash, projection generation), or None: no ledger here."""
    return conn.execute(sa.select(ledger_head).where(ledger_head.c.id == HEAD_ID)).first()


def head_position(engine: Engine) -> int | None:
    with read_transaction(engine) as conn:
        row = ledger_head_row(conn)
    return None if row is None else int(row.position)


def occurred_at(engine: Engine, position: int) -> int | None:
    """When the event at ``position`` happened (UTC microseconds), if there is one."""
    e = events.c
    with read_transaction(engine) as conn:
        value = conn.execute(sa.select(e.occurred_at).where(e.position == position)).scalar()
    return int(value) if value is not None else None


def outside_chain(engine: Engine, head: int) -> tuple[int | None, int]:
    """The lowest position below 1, if any, and how many rows lie beyond ``head``: rows the
    chain's walk from 1 to the head never reaches."""
    e = events.c
    with read_transaction(engine) as conn:
        before = conn.execute(sa.select(sa.func.min(e.position)).where(e.position < 1)).scalar()
        beyond = conn.execute(
            sa.select(sa.func.count()).select_from(events).where(e.position > head)
        ).scalar()
    return before, int(beyond or 0)


def recorded(rows: Sequence[tuple[Any, ...]]) -> Iterator[RecordedEvent]:
    """Rows of every column (``ALL_COLUMNS``) as recorded events."""
    for row in rows:
        yield row_to_event(row)


def read_all(
    engine: Engine, after: int = 0, *, until: int | None = None, page: int = 2000
) -> Iterator[RecordedEvent]:
    """Every event after ``after`` (up to ``until``) in position order, in pages."""
    if until is None:
        until = 2**63 - 1
    for rows in ALL_COLUMNS.pages(engine, after, until, page):
        yield from recorded(rows)


def read_request(engine: Engine, request_id: str) -> list[RecordedEvent]:
    """The events an append with this request id recorded (empty if none did)."""
    with read_transaction(engine) as conn:
        rows = conn.execute(
            sa.select(events).where(events.c.request_id == request_id).order_by(events.c.position)
        ).all()
    return [row_to_event(r) for r in rows]


def read_stream(engine: Engine, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
    with read_transaction(engine) as conn:
        rows = conn.execute(
            sa.select(events)
            .where(events.c.stream_id == stream_id, events.c.version > after_version)
            .order_by(events.c.version)
        ).all()
    return [row_to_event(r) for r in rows]


def row_to_event(row: Sequence[Any], decode: Callable[[str], Any] = json.loads) -> RecordedEvent:
    """A row of every column, in table order, as a recorded event."""
    position, stream_id, version, event_type, schema, payload, meta, request_id, at, hash_ = row
    return RecordedEvent(
        position=position,
        stream_id=stream_id,
        version=version,
        event_type=event_type,
        schema_version=schema,
        payload=decode(payload),
        meta=decode(meta),
        request_id=request_id,
        occurred_at=from_micros(at),
        hash=hash_,
    )
