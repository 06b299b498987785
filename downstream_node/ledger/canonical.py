"""Canonical JSON and the hash chain: the exact bytes each event is hashed over.

Anything written into the ledger goes through ``canonical_json`` so that the same event always
has the same text, on any database, and an auditor can recompute every hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text; floats are refused (they do not round-trip)."""
    _reject_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise TypeError("floats are not allowed in ledger events; use integers or strings")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("event keys must be strings")
            _reject_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_floats(item)


def chain_hash(
    prev_hash: str,
    *,
    position: int,
    stream_id: str,
    version: int,
    event_type: str,
    schema_version: int,
    payload: str,
    meta: str,
    request_id: str | None,
    occurred_at: int,
) -> str:
    """SHA-256 over the previous row's hash and this row's stored content."""
    content = json.dumps(
        [
            position,
            stream_id,
            version,
            event_type,
            schema_version,
            payload,
            meta,
            request_id,
            occurred_at,
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(f"{prev_hash}\n{content}".encode()).hexdigest()
