"""Contract decisions: what events a farmer's request produces, given the contract as it is.

Pure functions of a ``ContractView`` and the time, following the protocol's lifecycle: a
contract is online while ``expiration > now``; after ``due`` the next challenge is issued;
an answer before expiration is verified once; a late answer is refused as expired.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import events as ev
from .errors import Refused
from .uptime import expiration as expiration_for

MICROS = 1_000_000
MAX_FAILURES = 8  # wrong answers recorded per challenge; later ones are refused unrecorded


@dataclass(frozen=True)
class ContractView:
    """A live contract as the read model holds it (times in UTC microseconds)."""

    contract_id: str
    token_hash: str
    file_hash: str
    heartbeat: str
    seed: str
    tag: dict[str, Any] | None  # None as the read model gives it: it does not read the tag
    state: dict[str, Any]
    challenge: dict[str, Any]
    challenge_index: int
    interval: int
    started_at: int
    due: int
    answered: bool
    expiration: int
    version: int
    size: int = 0
    failures: int = 0  # wrong answers recorded for the open challenge

    def online(self, now: int) -> bool:
        return self.expiration > now


@dataclass(frozen=True)
class FileView:
    file_hash: str
    size: int
    redundancy: int
    interval: int
    seed: str | None
    path: str | None
    version: int
    live_contracts: int = 0


def spread(candidates: Sequence[FileView], token_hash: str) -> list[FileView]:
    """The files a token is offered, least held first; among files held equally often, in an
    order of the token's own, so that many farmers asking at once go for different files
    instead of all racing for the first and all but one conflicting."""

    def key(file: FileView) -> tuple[int, bytes]:
        mixed = hashlib.blake2b(f"{token_hash}:{file.file_hash}".encode(), digest_size=8)
        return file.live_contracts, mixed.digest()

    return sorted(candidates, key=key)


def is_expired(contract: ContractView, now: int) -> bool:
    return now >= contract.expiration


def is_due(contract: ContractView, now: int) -> bool:
    """Past ``due`` but still online: time for the next challenge."""
    return contract.due <= now < contract.expiration


def decide_expire(contract: ContractView) -> list[ev.DomainEvent]:
    return [ev.ContractExpired(contract_id=contract.contract_id, expired_at=contract.expiration)]


def decide_next_challenge(
    contract: ContractView, challenge: dict[str, Any], index: int, state: dict[str, Any]
) -> list[ev.DomainEvent]:
    """The next challenge: ``due`` moves on one interval from the previous due."""
    return [
        ev.ChallengeIssued(
            contract_id=contract.contract_id,
            challenge=challenge,
            challenge_index=index,
            state=state,
            due=contract.due + contract.interval * MICROS,
        )
    ]


def decide_out_of_challenges(contract: ContractView) -> list[ev.DomainEvent]:
    return [ev.ContractEnded(contract_id=contract.contract_id, reason="out_of_challenges")]


def decide_unverifiable(contract: ContractView) -> list[ev.DomainEvent]:
    """A contract whose state the node's secret no longer opens (it was replaced)."""
    return [ev.ContractEnded(contract_id=contract.contract_id, reason="unverifiable")]


def check_answerable(contract: ContractView, now: int) -> list[ev.DomainEvent]:
    """Before verifying: the events of a refused answer, or ``[]`` if it may be verified.

    A late answer is recorded (an auditor sees it) and ends the contract as expired; the
    caller appends those events and then refuses with ``expired``. A second answer to an
    answered challenge is refused without an event: it is a farmer's harmless retry.
    """
    if is_expired(contract, now):
        return [
            ev.AnswerRejected(
                contract_id=contract.contract_id,
                challenge_index=contract.challenge_index,
                reason="expired",
            ),
            *decide_expire(contract),
        ]
    if contract.answered:
        raise Refused("already_answered", "this challenge was already answered")
    return []


def decide_answer(
    contract: ContractView, proof: dict[str, Any], valid: bool
) -> list[ev.DomainEvent]:
    if valid:
        return [
            ev.AnswerPassed(
                contract_id=contract.contract_id,
                challenge_index=contract.challenge_index,
                proof=proof,
                expiration=expiration_for(contract.due, contract.interval, True),
            )
        ]
    if contract.failures >= MAX_FAILURES:
        # Each wrong answer is an event for ever: a farmer may not grow the ledger without
        # bound by sending distinct wrong proofs for one challenge. A right one still passes.
        raise Refused(
            "too_many_failures",
            f"{MAX_FAILURES} wrong answers were recorded for this challenge; answer the next one",
        )
    return [
        ev.AnswerFailed(
            contract_id=contract.contract_id, challenge_index=contract.challenge_index, proof=proof
        )
    ]


@dataclass(frozen=True)
class HandBackPolicy:
    """How many contracts a token, and an address across its tokens, may hand back per
    ``window`` seconds."""

    per_token: int = 10
    per_address: int = 30
    window: int = 3600


def decide_remove(
    contract: ContractView | None,
    *,
    now: int = 0,
    token_hand_backs: Sequence[int] = (),
    address_hand_backs: Sequence[int] = (),
    policy: HandBackPolicy | None = None,
) -> list[ev.DomainEvent]:
    """Hand the contract back, unless the token or its address handed back their quota
    within the policy's window (``*_hand_backs``: when each ended, UTC microseconds)."""
    if contract is None:
        raise Refused("no_hash", "this token holds no contract for that file hash")
    if policy is not None:
        since = now - policy.window * MICROS
        for recent, limit, per in (
            (token_hand_backs, policy.per_token, "token"),
            (address_hand_backs, policy.per_address, "address"),
        ):
            inside = sorted(t for t in recent if t > since)
            if len(inside) >= limit:
                # Free again once the oldest hand-back counted leaves the window.
                wait = (inside[-limit] - since) // MICROS + 1
                raise Refused(
                    "too_many_requests",
                    f"at most {limit} hand-backs per {policy.window} s per {per}; retry later",
                    retry_after=int(wait),
                )
    return [ev.ContractEnded(contract_id=contract.contract_id, reason="removed")]


def decide_assign(
    file: FileView,
    *,
    contract_id: str,
    token_hash: str,
    heartbeat: str,
    tag: dict[str, Any],
    initial_state: dict[str, Any],
    challenge: dict[str, Any],
    challenge_index: int,
    state: dict[str, Any],
    already_held: bool,
    now: int,
) -> list[ev.DomainEvent]:
    """A new replica of ``file`` for a token: its encoding and its first challenge."""
    if file.live_contracts >= file.redundancy:
        raise Refused("no_chunks", "every replica of this file is taken")
    if already_held:
        raise Refused("no_chunks", "this token already holds this file")
    return [
        ev.ChunkEncoded(
            contract_id=contract_id,
            file_hash=file.file_hash,
            heartbeat=heartbeat,
            seed=file.seed or file.file_hash,
            tag=tag,
            state=initial_state,
        ),
        ev.ContractAssigned(
            contract_id=contract_id,
            token_hash=token_hash,
            file_hash=file.file_hash,
            challenge=challenge,
            challenge_index=challenge_index,
            state=state,
            interval=file.interval,
            due=now + file.interval * MICROS,
        ),
    ]
