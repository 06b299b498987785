"""Canonical JSON and the hash chain: the exact bytes each event is hashed over.

Anything written into the ledger goes through ``canonical_json`` so that the same event always
has the same text, on any database, and an auditor can recompute every hash.
"""

from __future__ import annotations

import hashlib
import json
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from json.scanner import c_make_scanner  # type: ignore[attr-defined]
from typing import Any, NoReturn

FLOATS_REFUSED = "floats are not allowed in ledger events; use integers or strings"


def json_kind(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words, for a message refusing it."""
    for kind, name in (
        (dict, "an object"),
        (list, "an array"),
        (str, "a string"),
        (bool, "a boolean"),  # before int: a bool is one
    ):
        if isinstance(value, kind):
            return name
    return "null" if value is None else "a number"


def _refuse_type(value: Any) -> NoReturn:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def _refuse_float(_text: str) -> NoReturn:
    raise TypeError(FLOATS_REFUSED)


# The C encoder and scanner that json.dumps/json.loads use, made once and called directly:
# json.JSONEncoder.encode builds a new C encoder on every call, and JSONDecoder.decode wraps
# the scanner in two regular-expression matches, which is half the cost of a small value.
# Same text as json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).
# Without circular-reference markers (an encoder made once cannot share them between calls
# and threads): a circular value ends in a RecursionError, turned into a ValueError below.
_encode_sorted = c_make_encoder(
    None, _refuse_type, encode_basestring, None, ":", ",", True, False, True
)
# The hash chain's content, a tuple of scalars: as json.dumps(list(content),
# separators=(",", ":"), ensure_ascii=False).
_encode_list = c_make_encoder(
    None, _refuse_type, encode_basestring, None, ":", ",", False, False, True
)
# Canonical text back to a value, refusing any float (or NaN/Infinity) it meets, in C.
_scan = c_make_scanner(json.JSONDecoder(parse_float=_refuse_float, parse_constant=_refuse_float))


def _encode_canonical(value: Any) -> str:
    try:
        return "".join(_encode_sorted(value, 0))
    except RecursionError:
        raise ValueError("a ledger value is circular or nested too deeply") from None


def _decode_checked(text: str) -> Any:
    # The text is the encoder's own: one value, no surrounding whitespace.
    return _scan(text, 0)[0]


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text; floats are refused (they do not round-trip)."""
    return canonical(value)[0]


def digest_text(value: Any) -> str:
    """The text ``canonical_json`` gives ``value``, without its check for floats and
    non-string keys: for hashing a value into an identifier (a proof into its answer's
    request id), where a float would only make a different identifier. What goes into the
    ledger is checked when it is written."""
    return _encode_canonical(value)


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
    return chain_next(
        prev_hash,
        (
            position,
            stream_id,
            version,
            event_type,
            schema_version,
            payload,
            meta,
            request_id,
            occurred_at,
        ),
    )


def chain_next(prev_hash: str, content: tuple[Any, ...]) -> str:
    """``chain_hash`` of a row's content given as one tuple, in the order of its arguments
    (the order of the ``events`` columns): what the append transaction calls per event."""
    text = "".join(_encode_list(content, 0))
    return hashlib.sha256(f"{prev_hash}\n{text}".encode()).hexdigest()
