"""A tiny MaxMind DB writer for the GeoIP tests: an IPv4 City-style database holding a record
per network, in the published MaxMind DB format 2.0 (24-bit records), readable by the
``maxminddb`` reader. Only what the tests need: maps, strings, doubles, unsigned ints, arrays.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path
from typing import Any

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"


def _control(kind: int, size: int) -> bytes:
    """A field's control byte(s): type and payload size (up to 284)."""
    assert size < 285
    small, extra = (size, b"") if size < 29 else (29, bytes([size - 29]))
    if kind <= 7:
        return bytes([(kind << 5) | small]) + extra
    return bytes([small, kind - 7]) + extra  # extended type, then the size's extra byte


class U16(int):
    """An unsigned 16-bit field (the metadata's record_size, ip_version and versions must be
    typed so for libmaxminddb)."""


class U64(int):
    """An unsigned 64-bit field (the metadata's build_epoch)."""


def encode(value: Any) -> bytes:
    if isinstance(value, U64):
        raw = int(value).to_bytes(8, "big").lstrip(b"\0")
        return _control(9, len(raw)) + raw
    if isinstance(value, U16):
        raw = int(value).to_bytes(2, "big").lstrip(b"\0")
        return _control(5, len(raw)) + raw
    if isinstance(value, str):
        raw = value.encode()
        return _control(2, len(raw)) + raw
    if isinstance(value, float):
        return _control(3, 8) + struct.pack(">d", value)
    if isinstance(value, int):
        raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big").lstrip(b"\0")
        kind = 6 if value < 2**32 else 9  # uint32, uint64 (build_epoch: see below)
        return _control(kind, len(raw)) + raw
    if isinstance(value, dict):
        return _control(7, len(value)) + b"".join(encode(k) + encode(v) for k, v in value.items())
    if isinstance(value, list):
        return _control(11, len(value)) + b"".join(encode(v) for v in value)
    raise TypeError(type(value))


def write_city_db(path: Path, records: dict[str, dict[str, Any]]) -> Path:
    """An IPv4 database: each network (CIDR) maps to its record."""
    data = b""
    offsets = []
    for record in records.values():
        offsets.append(len(data))
        data += encode(record)
    # The search tree: node 0 is the root; a record is a node number, node_count (nothing),
    # or node_count + 16 + offset of the data.
    tree: list[list[int | None]] = [[None, None]]
    leaves: list[tuple[int, int, int]] = []  # (node, side, data index)
    for index, network in enumerate(records):
        net = ipaddress.ip_network(network)
        bits = int(net.network_address)
        node = 0
        for depth in range(net.prefixlen):
            side = (bits >> (31 - depth)) & 1
            if depth == net.prefixlen - 1:
                leaves.append((node, side, index))
                break
            nxt = tree[node][side]
            if nxt is None:
                tree.append([None, None])
                nxt = tree[node][side] = len(tree) - 1
            node = nxt
    count = len(tree)
    for node, side, index in leaves:
        tree[node][side] = -1 - index  # marked, resolved below
    out = bytearray()
    for left, right in tree:
        values = []
        for record in (left, right):
            if record is None:
                values.append(count)
            elif record < 0:
                values.append(count + 16 + offsets[-1 - record])
            else:
                values.append(record)
        out += values[0].to_bytes(3, "big") + values[1].to_bytes(3, "big")
    metadata = {
        "node_count": count,
        "record_size": U16(24),
        "ip_version": U16(4),
        "database_type": "Test-City",
        "languages": ["en"],
        "binary_format_major_version": U16(2),
        "binary_format_minor_version": U16(0),
        "build_epoch": U64(1_700_000_000),
        "description": {"en": "downstream-node test database"},
    }
    path.write_bytes(bytes(out) + b"\0" * 16 + data + METADATA_MARKER + encode(metadata))
    return path


def city(
    country: str, state: str | None, city_name: str, postal: str | None, lat: float, lon: float
) -> dict[str, Any]:
    """A record shaped as GeoLite2-City's."""
    record: dict[str, Any] = {
        "city": {"names": {"en": city_name}},
        "country": {"iso_code": "XX", "names": {"en": country}},
        "location": {"latitude": lat, "longitude": lon},
    }
    if state is not None:
        record["subdivisions"] = [{"names": {"en": state}}]
    if postal is not None:
        record["postal"] = {"code": postal}
    return record
