"""Records: an event on its way into the ledger (``NewEvent``) and one read back from it
(``RecordedEvent``). Plain data, shared by the domain, the store and every reader.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NewEvent:
    """An event to append: its type, schema version, JSON payload and when it happened."""

    event_type: str
    schema_version: int
    payload: Mapping[str, Any]
    occurred_at: dt.datetime
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedEvent:
    """An event as the ledger holds it."""

    position: int
    stream_id: str
    version: int
    event_type: str
    schema_version: int
    payload: dict[str, Any]
    meta: dict[str, Any]
    request_id: str | None
    occurred_at: dt.datetime
    hash: str
