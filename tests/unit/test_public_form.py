"""The public form of an event: the issue's canonical JSON, its leaf hash, the IP pseudonyms
and the meta commitments that the operator can open one at a time."""

from __future__ import annotations

import hashlib
import json

import pytest

from downstream_node.domain import events as ev
from downstream_node.domain.canonical import canonical
from downstream_node.domain.public import (
    PUBLIC_FIELDS,
    PublicForms,
    canonical_bytes,
    leaf_of_public,
    meta_commitment,
    meta_key,
    open_commitment,
)

KEY = b"k" * 32
META = canonical({"actor": "farmer", "remote": "203.0.113.7", "request_id": "r-1"})[0]


def columns(event_type: str, payload: dict, stream: str = "contract-1", position: int = 7):
    text = canonical(payload)[0]
    return (position, stream, 3, event_type, 1, text, 1_700_000_000_000_001, META)


@pytest.mark.parametrize(
    ("event_type", "payload", "stream"),
    [
        ("AnswerPassed", {"contract_id": "c", "proof": {"z": [1, 2], "a": "é\u2028"}}, "c-1"),
        ("TokenCreated", {"token_hash": "ab" * 32, "address": "1A", "ip": "203.0.113.7"}, "x"),
        ("TokenCreated", {"token_hash": "ab" * 32, "address": "1A", "ip": None}, "token-ab"),
        ("FileAdded", {"path": 'C:\\"quoted"\n', "size": 2**62}, "file-ü"),
    ],
)
def test_the_spliced_bytes_are_the_formats_json_dumps_of_the_form(
    event_type: str, payload: dict, stream: str
) -> None:
    forms = PublicForms(KEY)
    cols = columns(event_type, payload, stream)
    obj = forms.form(*cols[:5], json.loads(cols[5]), *cols[6:])
    data = forms.form_bytes(*cols)
    assert (
        data == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert sorted(obj) == list(PUBLIC_FIELDS)
    assert forms.leaf(*cols) == hashlib.sha256(b"\x00" + data).digest()
    assert leaf_of_public({**json.loads(data), "leaf_hash": "ignored"}) == forms.leaf(*cols)


def test_ip_addresses_become_one_keyed_pseudonym_per_address() -> None:
    forms = PublicForms(KEY)
    ip = "203.0.113.7"
    created = forms.form_bytes(
        *columns("TokenCreated", {"token_hash": "ab" * 32, "address": "1A", "ip": ip}, "ip-" + ip)
    )
    assert ip.encode() not in created
    obj = json.loads(created)
    assert obj["stream_id"] == obj["payload"]["ip"]
    assert obj["stream_id"].startswith("ip-hmac-")
    # Another node's key gives another pseudonym: nobody can tabulate addresses without it.
    assert PublicForms(b"o" * 32).public_stream("ip-" + ip) != obj["stream_id"]
    # An address too odd for a plain stream id is grouped the same way.
    odd = " 10.0.0.1 "
    assert forms.public_payload("TokenCreated", {"ip": odd})["ip"] == forms.public_stream(
        ev.ip_stream(odd)
    )
    assert forms.public_stream("contract-1") == "contract-1"


def test_a_commitment_opens_with_its_events_key_only() -> None:
    commitment = meta_commitment(KEY, 7, META)
    assert open_commitment(meta_key(KEY, 7), META, commitment)
    assert not open_commitment(meta_key(KEY, 8), META, commitment)
    assert not open_commitment(meta_key(KEY, 7), META.replace("203", "198"), commitment)
    assert meta_commitment(KEY, 8, META) != commitment


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 to 64 bytes"):
        PublicForms(b"short")


def test_canonical_bytes_sort_and_keep_unicode() -> None:
    assert canonical_bytes({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


@pytest.mark.parametrize("key", [b"k" * 16, b"k" * 32, bytes(range(64))])
def test_the_fast_commitment_is_the_hmac_of_the_format(key: bytes) -> None:
    forms = PublicForms(key)
    for position in (1, 9, 10, 12345, 2**62):
        for meta in ("{}", META, '{"remote":"é"}'):
            assert forms.commitment(position, meta) == meta_commitment(key, position, meta)
