"""Canonical JSON and the hash chain: the exact bytes each event is hashed over.

Anything written into the ledger goes through ``canonical_json`` so that the same event always
has the same text, on any database, and an auditor can recompute every hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, NoReturn

FLOATS_REFUSED = "floats are not allowed in ledger events; use integers or strings"

# Made once: json.dumps with non-default options builds a new encoder on every call.
_encode_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False
).encode
_encode_chain = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _refuse_float(_text: str) -> NoReturn:
    raise TypeError(FLOATS_REFUSED)


# Decodes canonical text back, refusing any float (or NaN/Infinity) it meets, in C.
_decode_checked = json.JSONDecoder(parse_float=_refuse_float, parse_constant=_refuse_float).decode


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text; floats are refused (they do not round-trip)."""
    return canonical(value)[0]


def canonical(value: Any) -> tuple[str, Any]:
    """The canonical text of ``value`` and what that text decodes to (what readers get back).

    Same rules as walking the value for floats and non-string keys before encoding, but done
    by the C encoder and decoder: a float anywhere shows up as a float in the text, and a
    non-string key (or a tuple, which is allowed) makes the decoded value differ from the
    original, in which case the walk decides.
    """
    try:
        text = _encode_canonical(value)
    except TypeError:
        _reject_floats(value)  # the precise reason when it is a float or a key
        raise
    decoded = _decode_checked(text)
    if decoded != value:
        _reject_floats(value)
    return text, decoded


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise TypeError(FLOATS_REFUSED)
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
    content = _encode_chain(
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
        ]
    )
    return hashlib.sha256(f"{prev_hash}\n{content}".encode()).hexdigest()
