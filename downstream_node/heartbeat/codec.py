"""Validation helpers that turn untrusted dict fields into typed values.

Every helper raises ``HeartbeatError`` naming the offending field; nothing else escapes,
so ``fromdict`` of any heartbeat object has one failure mode.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from .errors import HeartbeatError

__all__ = [
    "b64",
    "check_bytes",
    "check_int",
    "check_number",
    "coerce",
    "get_b64",
    "get_bool",
    "get_int",
    "get_list",
    "get_mapping",
    "get_number",
    "parse_b64",
]

_T = TypeVar("_T")

# A Base64 text longer than this is rejected before decoding, so a hostile multi-megabyte
# string costs no more than a length check (largest legitimate field: 64-byte keys).
_MAX_B64_CHARS = 4096


def b64(data: bytes) -> str:
    """Standard Base64 with padding, as text (the original's ``hb_encode``)."""
    # binascii directly: base64's wrappers double the cost of a 32-byte value, and a proof
    # has 17 of them, on every answer.
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def parse_b64(value: object, field: str, *, sizes: Sequence[int] | None = None) -> bytes:
    """Decode canonical standard Base64; ``sizes`` lists the allowed decoded lengths.

    Only the canonical encoding is accepted, so ``b64(parse_b64(x)) == x`` always holds and
    dict round trips are exact.
    """
    if type(value) is not str:
        raise HeartbeatError(f"{field}: expected a Base64 string, got {type(value).__name__}")
    if len(value) > _MAX_B64_CHARS:
        raise HeartbeatError(f"{field}: Base64 text too long")
    try:
        # What base64.b64decode(value, validate=True) does, without its wrapper: strict
        # mode refuses anything but the alphabet and correct padding (a non-ASCII ``str``
        # is a ValueError).
        raw = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise HeartbeatError(f"{field}: invalid Base64") from exc
    if b64(raw) != value:
        raise HeartbeatError(f"{field}: non-canonical Base64")
    if sizes is not None and len(raw) not in sizes:
        allowed = " or ".join(str(s) for s in sizes)
        raise HeartbeatError(f"{field}: expected {allowed} bytes, got {len(raw)}")
    return raw


def get_mapping(value: object, field: str, keys: Sequence[str]) -> Mapping[str, Any]:
    """A dict holding exactly ``keys``: missing and unknown keys are both refused, since an
    unknown key would be silently dropped by ``todict`` and break exact round trips."""
    if not isinstance(value, Mapping):
        raise HeartbeatError(f"{field}: expected an object, got {type(value).__name__}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise HeartbeatError(f"{field}: missing key(s) {', '.join(missing)}")
    if len(value) != len(keys):
        extra = sorted(str(k) for k in value if k not in keys)
        raise HeartbeatError(f"{field}: unknown key(s) {', '.join(extra)}")
    return value


def get_b64(
    d: Mapping[str, Any], key: str, field: str, *, sizes: Sequence[int] | None = None
) -> bytes:
    return parse_b64(d[key], f"{field}.{key}", sizes=sizes)


def get_int(d: Mapping[str, Any], key: str, field: str, *, lo: int, hi: int | None = None) -> int:
    """An exact JSON integer in ``[lo, hi]``: bools and floats are refused, because
    ``True`` would print as ``True`` in a MAC input and a float loses big integers."""
    return check_int(d[key], f"{field}.{key}", lo=lo, hi=hi)


def check_int(value: object, name: str, *, lo: int, hi: int | None = None) -> int:
    if type(value) is not int:
        raise HeartbeatError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise HeartbeatError(f"{name}: out of range (must be {bound})")
    return value


def get_number(d: Mapping[str, Any], key: str, field: str) -> int | float:
    return check_number(d[key], f"{field}.{key}")


def check_number(value: object, name: str) -> int | float:
    """A finite JSON number (int or float, never bool), kept in its own type so that its
    decimal text, which a MAC may cover, survives a round trip."""
    if type(value) is float:
        if not math.isfinite(value):
            raise HeartbeatError(f"{name}: must be finite")
        return value
    if type(value) is int:
        if abs(value) > 1 << 64:
            raise HeartbeatError(f"{name}: out of range")
        return value
    raise HeartbeatError(f"{name}: expected a number, got {type(value).__name__}")


def get_bool(d: Mapping[str, Any], key: str, field: str) -> bool:
    value = d[key]
    if type(value) is not bool:
        raise HeartbeatError(f"{field}.{key}: expected a boolean, got {type(value).__name__}")
    return value


def get_list(d: Mapping[str, Any], key: str, field: str, *, lo: int = 0, hi: int) -> Sequence[Any]:
    """A JSON array (list or tuple) whose length is in ``[lo, hi]``."""
    value = d[key]
    if type(value) not in (list, tuple):
        raise HeartbeatError(f"{field}.{key}: expected a list, got {type(value).__name__}")
    if not lo <= len(value) <= hi:
        raise HeartbeatError(f"{field}.{key}: length {len(value)} not in [{lo}, {hi}]")
    return value


def check_bytes(value: object, name: str, sizes: Sequence[int]) -> None:
    """``value`` is exactly ``bytes`` of one of the allowed lengths."""
    if type(value) is not bytes:
        raise HeartbeatError(f"{name}: expected bytes, got {type(value).__name__}")
    if len(value) not in sizes:
        raise HeartbeatError(f"{name}: expected {' or '.join(map(str, sizes))} bytes")


def coerce(obj: object, cls: type[_T], what: str) -> _T:
    """``obj`` itself if it is a ``cls``, ``cls.fromdict(obj)`` if it is a dict."""
    if isinstance(obj, cls):
        return obj
    if isinstance(obj, Mapping):
        return cls.fromdict(obj)  # type: ignore[attr-defined, no-any-return]
    raise HeartbeatError(f"{what}: expected {cls.__name__} or dict, got {type(obj).__name__}")
