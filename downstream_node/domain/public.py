"""The public form of an event, the exact bytes the transparency log's leaves hash: the stored
event minus its meta (a keyed commitment stands in) and with IP addresses pseudonymised.

Pure: the per-ledger commitment key is given; nothing here reads a file or a database.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

from .events import ip_stream

# The one text form of a public event: what the leaf hash covers, what exports write.
PUBLIC_FIELDS = (
    "event_type",
    "meta_commitment",
    "occurred_at",
    "payload",
    "position",
    "schema_version",
    "stream_id",
    "version",
)
IP_STREAM_PREFIX = "ip-"
# Pseudonyms look like this, so a reader of the feed sees they are not addresses.
PSEUDONYM_PREFIX = "ip-hmac-"
MIN_KEY_BYTES = 16


def canonical_bytes(obj: Mapping[str, Any]) -> bytes:
    """The format's serialisation: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def leaf_hash(public: bytes) -> bytes:
    """RFC 6962 leaf hash of a public form's bytes."""
    return hashlib.sha256(b"\x00" + public).digest()


def meta_key(commit_key: bytes, position: int) -> bytes:
    """The key that commits to one event's meta. The operator hands out this key (not the
    ledger's) to open one commitment: it reveals nothing about any other event's meta."""
    return hmac.digest(commit_key, b"meta-commitment:" + str(position).encode(), "sha256")


def meta_commitment(commit_key: bytes, position: int, meta_text: str) -> str:
    """HMAC-SHA-256, under the event's own key, of its meta as stored (canonical text), hex."""
    return hmac.digest(meta_key(commit_key, position), meta_text.encode(), "sha256").hex()


_BLOCK = 64  # SHA-256's block: HMAC pads its key to it
_IPAD = int.from_bytes(b"\x36" * _BLOCK)
_OPAD = int.from_bytes(b"\x5c" * _BLOCK)


def _pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC's inner and outer key blocks (RFC 2104) of a key no longer than a block."""
    padded = int.from_bytes(key.ljust(_BLOCK, b"\0"))
    return (padded ^ _IPAD).to_bytes(_BLOCK), (padded ^ _OPAD).to_bytes(_BLOCK)


def open_commitment(event_key: bytes, meta_text: str, commitment: str) -> bool:
    """Whether ``meta_text`` is what ``commitment`` commits to under the opened ``event_key``
    (what anyone can check once the operator revealed both)."""
    mac = hmac.digest(event_key, meta_text.encode(), "sha256").hex()
    return hmac.compare_digest(mac, commitment)


class PublicForms:
    """Public forms and leaf hashes of events under one ledger's commitment key.

    Two fields are transformed, and only these: a stream id ``ip-<address>`` (the per-IP
    token stream) becomes ``ip-hmac-<hex>``, and ``TokenCreated``'s ``ip`` payload field
    becomes that same pseudonym of its IP's stream; both are HMAC-SHA-256 under the ledger's
    key, so tokens made from one address still group together without naming it.
    """

    __slots__ = ("_inner", "_key", "_outer", "_pseudonyms")

    def __init__(self, commit_key: bytes) -> None:
        if not MIN_KEY_BYTES <= len(commit_key) <= _BLOCK:
            raise ValueError(f"a commitment key has {MIN_KEY_BYTES} to {_BLOCK} bytes")
        self._key = commit_key
        # HMAC under the ledger's key with its padded blocks hashed once: the append path
        # derives one event key per event, and copying two hash states is half the cost of
        # hmac.digest setting them up each time.
        inner, outer = _pads(commit_key)
        self._inner, self._outer = hashlib.sha256(inner), hashlib.sha256(outer)
        # Few distinct IPs, many events per IP stream: each pseudonym is computed once.
        self._pseudonyms: dict[str, str] = {}

    def pseudonym(self, stream_id: str) -> str:
        """The public name of an ``ip-...`` stream."""
        found = self._pseudonyms.get(stream_id)
        if found is None:
            mac = hmac.digest(self._key, b"ip-stream:" + stream_id.encode(), "sha256").hex()
            found = PSEUDONYM_PREFIX + mac
            if len(self._pseudonyms) < 100_000:
                self._pseudonyms[stream_id] = found
        return found

    def public_stream(self, stream_id: str) -> str:
        return self.pseudonym(stream_id) if stream_id.startswith(IP_STREAM_PREFIX) else stream_id

    def public_payload(self, event_type: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        if event_type == "TokenCreated" and payload.get("ip") is not None:
            return {**payload, "ip": self.pseudonym(ip_stream(str(payload["ip"])))}
        return dict(payload)

    def form(
        self,
        position: int,
        stream_id: str,
        version: int,
        event_type: str,
        schema_version: int,
        payload: Mapping[str, Any],
        occurred_at: int,
        meta_text: str,
    ) -> dict[str, Any]:
        """The public form as an object (``occurred_at`` in UTC microseconds, ``meta_text``
        the stored meta column)."""
        return {
            "event_type": event_type,
            "meta_commitment": meta_commitment(self._key, position, meta_text),
            "occurred_at": occurred_at,
            "payload": self.public_payload(event_type, payload),
            "position": position,
            "schema_version": schema_version,
            "stream_id": self.public_stream(stream_id),
            "version": version,
        }

    def form_bytes(
        self,
        position: int,
        stream_id: str,
        version: int,
        event_type: str,
        schema_version: int,
        payload_text: str,
        occurred_at: int,
        meta_text: str,
    ) -> bytes:
        """``canonical_bytes(form(...))`` from the stored payload text, without decoding it.

        The stored text is already the canonical serialisation of the payload (the ledger's
        canonical JSON is ``json.dumps`` with these very settings), so it is spliced in as it
        is: the append path hashes a large tag without encoding it a second time. Only a
        payload that is transformed is decoded and encoded again.
        """
        if event_type == "TokenCreated":
            payload_text = canonical_bytes(
                self.public_payload(event_type, json.loads(payload_text))
            ).decode()
        commitment = self.commitment(position, meta_text)
        # The C string encoder json.dumps uses with ensure_ascii=False, without its set-up.
        head = encode_basestring(event_type)
        stream = encode_basestring(
            self.pseudonym(stream_id) if stream_id.startswith(IP_STREAM_PREFIX) else stream_id
        )
        return (
            f'{{"event_type":{head},"meta_commitment":"{commitment}",'
            f'"occurred_at":{occurred_at},"payload":{payload_text},"position":{position},'
            f'"schema_version":{schema_version},"stream_id":{stream},"version":{version}}}'
        ).encode()

    def commitment(self, position: int, meta_text: str) -> str:
        """``meta_commitment(key, position, meta_text)``, the same bytes, faster."""
        inner = self._inner.copy()
        inner.update(b"meta-commitment:%d" % position)
        outer = self._outer.copy()
        outer.update(inner.digest())
        # The event's key is new each time: OpenSSL's one-shot HMAC is then the fastest.
        return hmac.digest(outer.digest(), meta_text.encode(), "sha256").hex()

    def leaf(self, *columns: Any) -> bytes:
        """The leaf hash of ``form_bytes(*columns)``."""
        return leaf_hash(self.form_bytes(*columns))


def leaf_of_public(obj: Mapping[str, Any]) -> bytes:
    """The leaf hash of a public form as a reader got it (an exported or served object,
    without its ``leaf_hash``): what an auditor recomputes."""
    return leaf_hash(canonical_bytes({k: obj[k] for k in PUBLIC_FIELDS}))
