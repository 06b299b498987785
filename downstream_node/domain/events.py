"""Domain events: one frozen dataclass per fact the ledger records, named in the past tense.

Each carries an explicit schema version and turns into a canonical JSON payload. Times inside
payloads are integer UTC microseconds, so a replay needs no clock. Tokens appear only as
their SHA-256 hash: a leaked ledger hands no one a working token.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from .errors import UnknownEvent
from .records import NewEvent, RecordedEvent

REGISTRY: dict[str, type[DomainEvent]] = {}

E = TypeVar("E", bound="DomainEvent")


@dataclasses.dataclass(frozen=True)
class DomainEvent:
    SCHEMA: ClassVar[int] = 1

    @classmethod
    def type_name(cls) -> str:
        return cls.__name__

    def payload(self) -> dict[str, Any]:
        # Shallow (dataclasses.asdict deep-copies every proof, tag and state): the ledger
        # turns it into canonical text at once, when the append request is made.
        return {name: getattr(self, name) for name in _field_names(type(self))}

    def to_new(self, occurred_at: dt.datetime, meta: Mapping[str, Any] | None = None) -> NewEvent:
        return NewEvent(self.type_name(), self.SCHEMA, self.payload(), occurred_at, meta or {})

    @classmethod
    def from_payload(cls: type[E], payload: Mapping[str, Any]) -> E:
        names = _field_names(cls)
        return cls(**{k: v for k, v in payload.items() if k in names})


@functools.cache
def _field_names(cls: type[DomainEvent]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def event(cls: type[E]) -> type[E]:
    """Register an event class under its name so recorded rows decode back into it."""
    REGISTRY[cls.__name__] = cls
    return cls


def known(event_type: str, schema_version: int) -> type[DomainEvent]:
    """The class of a recorded type; ``UnknownEvent`` for a type this code does not know or
    a schema newer than its own (a reader must stop rather than misread it)."""
    cls = REGISTRY.get(event_type)
    if cls is None:
        raise UnknownEvent(f"unknown event type {event_type!r}")
    if schema_version > cls.SCHEMA:
        raise UnknownEvent(f"{event_type} schema {schema_version} is newer than this code")
    return cls


def decode(recorded: RecordedEvent) -> DomainEvent:
    return known(recorded.event_type, recorded.schema_version).from_payload(recorded.payload)


# -- stream names ------------------------------------------------------------------------------

NODE_STREAM = "node"
WHITELIST_STREAM = "whitelist"


def token_stream(token_hash: str) -> str:
    return f"token-{token_hash}"


def ip_stream(ip: str) -> str:
    """The stream through which farmers at one IP address create tokens.

    Appending with the stream's expected version serialises the per-IP token limit in the
    database, across processes too. Token events still name only the token's hash.
    """
    if len(ip) > 64 or not ip.strip() or ip != ip.strip():
        return "ip-sha256-" + hashlib.sha256(ip.encode()).hexdigest()
    return f"ip-{ip}"


def file_stream(file_hash: str) -> str:
    return f"file-{file_hash}"


def contract_stream(contract_id: str) -> str:
    return f"contract-{contract_id}"


# -- the node and its operator -----------------------------------------------------------------


@event
@dataclasses.dataclass(frozen=True)
class HeartbeatConfigured(DomainEvent):
    """The node's secret heartbeat was created or rotated; only its fingerprint is recorded."""

    SCHEMA: ClassVar[int] = 1
    kind: str  # "Merkle" or "Swizzle"
    public: str  # the public heartbeat's JSON text (it holds a float check fraction)
    key_fingerprint: str  # SHA-256 of the secret heartbeat's canonical dict


@event
@dataclasses.dataclass(frozen=True)
class LogKeyConfigured(DomainEvent):
    """The transparency log's signing key was created or rotated: checkpoints and receipts
    from here on verify with ``vkey``; ``origin`` names the log (the key's name)."""

    SCHEMA: ClassVar[int] = 1
    origin: str
    vkey: str  # the C2SP verifier key string <name>+<hex key id>+<base64 key>
    commit_key_id: str  # fingerprint of the meta-commitment key, which never changes


@event
@dataclasses.dataclass(frozen=True)
class AddressWhitelisted(DomainEvent):
    SCHEMA: ClassVar[int] = 1
    address: str
    balance: str  # decimal text: crowdsale balances are not floats


# -- tokens -------------------------------------------------------------------------------------


@event
@dataclasses.dataclass(frozen=True)
class TokenCreated(DomainEvent):
    SCHEMA: ClassVar[int] = 1
    token_hash: str
    address: str
    ip: str | None


@event
@dataclasses.dataclass(frozen=True)
class TokenDeleted(DomainEvent):
    """The token stops working; every contract it held ends (reason ``token_deleted``)."""

    SCHEMA: ClassVar[int] = 1
    token_hash: str


# -- files --------------------------------------------------------------------------------------


@event
@dataclasses.dataclass(frozen=True)
class FileAdded(DomainEvent):
    """A chunk to monitor: a real file (``path``) or a seeded test chunk (``seed``)."""

    SCHEMA: ClassVar[int] = 1
    file_hash: str
    size: int
    redundancy: int
    interval: int  # seconds between challenges
    seed: str | None
    path: str | None


@event
@dataclasses.dataclass(frozen=True)
class FileRemoved(DomainEvent):
    """Monitoring stops; every contract on the file ends (reason ``file_removed``)."""

    SCHEMA: ClassVar[int] = 1
    file_hash: str


# -- contracts ----------------------------------------------------------------------------------


@event
@dataclasses.dataclass(frozen=True)
class ChunkEncoded(DomainEvent):
    """A replica's chunk was encoded for one contract: its own tag and initial state.

    Each contract gets its own encoding so that farmers holding the same file receive
    different challenges and cannot share proofs. The state never leaves the node.
    """

    SCHEMA: ClassVar[int] = 1
    contract_id: str
    file_hash: str
    heartbeat: str  # "Merkle" or "Swizzle"
    seed: str  # what the farmer regenerates or downloads the chunk from
    tag: dict[str, Any]
    state: dict[str, Any]


@event
@dataclasses.dataclass(frozen=True)
class ContractAssigned(DomainEvent):
    """A farmer took the replica encoded just before, with its first challenge.

    ``state`` is the node's state after issuing that challenge; ``due`` is UTC microseconds.
    """

    SCHEMA: ClassVar[int] = 1
    contract_id: str
    token_hash: str
    file_hash: str
    challenge: dict[str, Any]
    challenge_index: int
    state: dict[str, Any]
    interval: int
    due: int


@event
@dataclasses.dataclass(frozen=True)
class ChallengeIssued(DomainEvent):
    """The next challenge: ``due`` moves on one interval and the contract is unanswered."""

    SCHEMA: ClassVar[int] = 1
    contract_id: str
    challenge: dict[str, Any]
    challenge_index: int
    state: dict[str, Any]
    due: int


@event
@dataclasses.dataclass(frozen=True)
class AnswerPassed(DomainEvent):
    """A valid proof arrived in time: the contract stays online until ``expiration``."""

    SCHEMA: ClassVar[int] = 1
    contract_id: str
    challenge_index: int
    proof: dict[str, Any]
    expiration: int


@event
@dataclasses.dataclass(frozen=True)
class AnswerFailed(DomainEvent):
    """A well-formed proof that does not verify; the challenge stays open until it expires."""

    SCHEMA: ClassVar[int] = 1
    contract_id: str
    challenge_index: int
    proof: dict[str, Any]


@event
@dataclasses.dataclass(frozen=True)
class AnswerRejected(DomainEvent):
    """An answer refused without verification, e.g. after the contract expired."""

    SCHEMA: ClassVar[int] = 1
    contract_id: str
    challenge_index: int
    reason: str


@event
@dataclasses.dataclass(frozen=True)
class ContractExpired(DomainEvent):
    """Nobody answered in time; the contract went offline at ``expired_at`` and ends."""

    SCHEMA: ClassVar[int] = 1
    contract_id: str
    expired_at: int


@event
@dataclasses.dataclass(frozen=True)
class ContractEnded(DomainEvent):
    """The contract ended for ``reason`` (``removed``, ``out_of_challenges``,
    ``unverifiable``)."""

    SCHEMA: ClassVar[int] = 1
    contract_id: str
    reason: str
