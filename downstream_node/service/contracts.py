"""A farmer's contracts: taking one (``/chunk``), bringing them up to date and listing them
(``/due``), handing one back (``/remove``), and ending those nobody answered in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass
from typing import Any

import structlog

from ..domain import contracts as cn
from ..domain import events as ev
from ..domain.clock import from_micros, iso_micros
from ..domain.errors import ConcurrencyConflict, Refused
from ..heartbeat.scheme import HeartbeatError, OutOfChallenges
from ..ledger.group_commit import Decision
from ..ledger.store import AppendRequest, AppendResult, UnitOfWork
from ..projections.queries import Reader, TokenView
from . import tokens
from .context import OPERATOR, Context
from .encodings import Encodings
from .retry import RETRIES, until_appended
from .runtime import Runtime

log = structlog.get_logger("downstream.node")

# Files a /chunk looks at, least held first: enough that a burst of farmers spreads over the
# free replicas (cn.spread) rather than racing for one.
CANDIDATES = 64


@dataclass(frozen=True)
class Assignment:
    """A contract to append if its address may hold ``size`` more bytes."""

    address: str
    size: int
    now: int
    request: AppendRequest


@dataclass(frozen=True)
class Assigned:
    """A contract just appended, as a farmer is told of it (``due`` in UTC microseconds)."""

    seed: str
    challenge: dict[str, Any]
    tag: dict[str, Any]
    due: int


class ContractCommands:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.encodings = Encodings(rt, parallel=max(1, rt.workers // 2))

    async def chunk(self, token: str, ctx: Context = OPERATOR) -> dict[str, Any]:
        """Give the token a new contract on the least-replicated file it does not hold."""
        rt = self.rt
        rt.proofs()  # a node that has not started has no scheme to encode with
        settings = rt.settings
        owner = await tokens.live(rt, token)
        # End this token's lapsed contracts first, so a file it let lapse can be offered to
        # it again without two unended contracts on the same file.
        await self.sweep_expired(ctx, token_hash=owner.token_hash)
        unreadable: set[str] = set()  # real files that could not be encoded just now

        def state(r: Reader, now: int, owner: TokenView) -> tuple[list[cn.FileView], int]:
            return (
                r.candidate_files(
                    owner.token_hash,
                    now,
                    limit=CANDIDATES,
                    returned_since=now - settings.handed_back_seconds * 1_000_000,
                ),
                r.bytes_held_by_address(owner.address, now),
            )

        async def attempt() -> dict[str, Any]:
            for _ in range(RETRIES * 2):  # an unreadable file or a moved one is no conflict
                now = rt.now()
                candidates, held = await rt.read(lambda r, now=now: state(r, now, owner))
                candidates = [
                    f
                    for f in cn.spread(candidates, owner.token_hash)
                    if held + f.size <= settings.max_bytes_per_address
                    and f.file_hash not in unreadable
                ]
                if not candidates:
                    raise Refused("no_chunks", "no chunk is available for this token right now")
                chosen = candidates[0]
                async with self.encodings.of_file(chosen.file_hash):
                    # Another request may have taken a replica while this one waited: then
                    # look again before encoding for nothing.
                    current = await rt.read(lambda r, f=chosen.file_hash, t=now: r.file(f, t))
                    if current is None or current.version != chosen.version:
                        continue
                    try:
                        assigned = await self.assign(chosen, owner, now, ctx)
                    except (OSError, HeartbeatError) as exc:
                        # A monitored real file that was moved, shrunk or made unreadable:
                        # the operator's to mend; the farmer gets the next candidate.
                        log.error("file_unreadable", file_hash=chosen.file_hash, error=str(exc))
                        unreadable.add(chosen.file_hash)
                        continue
                return {
                    "seed": assigned.seed,
                    "file_hash": chosen.file_hash,
                    "size": chosen.size,
                    "challenge": assigned.challenge,
                    "tag": assigned.tag,
                    "due": iso_micros(assigned.due),
                    "expiration": iso_micros(assigned.due),
                }
            raise Refused("busy", "too much contention for chunks; try again")

        async def reread_owner() -> None:
            # Another farmer took a replica meanwhile (look again), or the token was deleted
            # (then this raises no_token).
            nonlocal owner
            owner = await tokens.live(rt, token)

        return await until_appended(
            attempt, busy="too much contention for chunks; try again", on_conflict=reread_owner
        )

    async def assign(self, file: cn.FileView, owner: TokenView, now: int, ctx: Context) -> Assigned:
        """A new contract on ``file`` for ``owner``: encoded (or a spare encoding taken) and
        appended at the file's version and the token's, and only if the address's bytes
        still fit once read under the ledger lock, so that simultaneous requests from one
        address's tokens (in any process) cannot pass its cap together. The caller holds
        ``encodings.of_file(file)``. Raises ``ConcurrencyConflict``, ``Refused`` (the cap:
        ``no_chunks``), or what reading the file raises."""
        encoding = await self.encodings.take(file, now)
        events = cn.decide_assign(
            file,
            contract_id=secrets.token_hex(16),
            token_hash=owner.token_hash,
            heartbeat=self.rt.proofs().kind,
            tag=encoding.tag,
            initial_state=encoding.initial_state,
            challenge=encoding.challenge,
            challenge_index=0,
            state=encoding.state,
            already_held=False,
            now=now,
        )
        at, meta = from_micros(now), ctx.meta()
        request = AppendRequest(
            ev.file_stream(file.file_hash),
            file.version,
            [e.to_new(at, meta) for e in events],
            guards=tokens.guard(owner),
        )
        try:
            await self.rt.committer.decide(
                self._within_cap, Assignment(owner.address, file.size, now, request)
            )
        except (ConcurrencyConflict, Refused):
            self.encodings.keep(file.file_hash, encoding)  # for the file's next request
            raise
        encoded, assigned = events
        assert isinstance(encoded, ev.ChunkEncoded) and isinstance(assigned, ev.ContractAssigned)
        return Assigned(encoded.seed, encoding.challenge, encoding.tag, assigned.due)

    def _within_cap(
        self, unit: UnitOfWork, asks: list[Assignment]
    ) -> list[Decision | BaseException]:
        """Under the ledger lock, in the commit's transaction: each assignment of the batch
        appended only if its address's bytes, read now, with those granted before it in the
        batch, stay within the cap; otherwise ``no_chunks``, nothing written."""
        r = Reader.under_lock(unit)
        cap = self.rt.settings.max_bytes_per_address
        held: dict[str, int] = {}
        decided: list[Decision | BaseException] = []
        for ask in asks:
            if ask.address not in held:
                held[ask.address] = r.bytes_held_by_address(ask.address, ask.now)
            if held[ask.address] + ask.size > cap:
                decided.append(
                    Refused("no_chunks", "no chunk is available for this token right now")
                )
                continue
            held[ask.address] += ask.size
            decided.append(Decision(ask.request, None))
        return decided

    async def due(self, token: str, ctx: Context = OPERATOR) -> dict[str, Any]:
        """Bring every contract of the token up to date, then list them."""
        token_hash = tokens.hashed(token)

        def state(r: Reader) -> tuple[TokenView, list[cn.ContractView]]:
            # One read for both: a farmer's poll is one thread hop and one transaction.
            owner = tokens.checked(token, r.token(token_hash))
            return owner, r.contracts_for_token(token_hash)

        owner, contracts = await self.rt.read(state)
        guard = tokens.guard(owner)
        now = self.rt.now()
        # Only the contracts whose challenge lapsed or fell due need work (a coroutine each,
        # which re-checks); a farmer polling holds mostly the others.
        stale = [c for c in contracts if cn.is_expired(c, now) or cn.is_due(c, now)]
        refreshed = await asyncio.gather(*(self._refresh(c, ctx, guard) for c in stale))
        fresh = dict(zip((c.contract_id for c in stale), refreshed, strict=True))
        live = [c for c in (fresh.get(c.contract_id, c) for c in contracts) if c is not None]
        return {
            "all_contracts": [{"hash": c.file_hash} for c in live],
            "due_contracts": [
                {
                    "hash": c.file_hash,
                    "challenge": c.challenge,
                    "due": iso_micros(c.due),
                    "expiration": iso_micros(c.expiration),
                }
                for c in live
                if not c.answered
            ],
        }

    async def _refresh(
        self, contract: cn.ContractView, ctx: Context, guard: dict[str, int]
    ) -> cn.ContractView | None:
        """Expire or advance one contract; None once it has ended.

        Not ``until_appended``: a conflict here is no failure (whoever moved the contract
        did the work), so after any append the contract is read again and, after the last
        try, returned as it stands."""
        rt = self.rt
        scheme = rt.proofs()
        for _ in range(RETRIES):
            now = rt.now()
            if cn.is_expired(contract, now):
                events = cn.decide_expire(contract)
            elif cn.is_due(contract, now):
                try:
                    challenge, state = await rt.run(
                        scheme.next_challenge, contract.state, contract.size
                    )
                    events = cn.decide_next_challenge(
                        contract, challenge, contract.challenge_index + 1, state
                    )
                except OutOfChallenges:
                    events = cn.decide_out_of_challenges(contract)
                except HeartbeatError:
                    # Sealed under a secret this node no longer holds (--new-secret): it can
                    # be neither challenged nor verified again.
                    events = cn.decide_unverifiable(contract)
            else:
                return contract
            # On a conflict someone else moved the contract: re-read below and decide again.
            with contextlib.suppress(ConcurrencyConflict):
                await rt.append(
                    ev.contract_stream(contract.contract_id),
                    contract.version,
                    events,
                    ctx,
                    guards=guard,
                )
            fresh = await rt.read(lambda r, c=contract: r.contract_for(c.token_hash, c.file_hash))
            if fresh is None or fresh.contract_id != contract.contract_id:
                return None
            contract = fresh
        return contract

    async def refresh(
        self, contract: cn.ContractView, ctx: Context, guard: dict[str, int]
    ) -> cn.ContractView | None:
        """``_refresh`` for the v1 bulk challenge (``service/v1.py``)."""
        return await self._refresh(contract, ctx, guard)

    async def remove(self, token: str, file_hash: str, ctx: Context = OPERATOR) -> None:
        """Hand a contract back: it ends and its replica returns to the pool."""
        rt = self.rt
        owner = await tokens.live(rt, token)

        policy = rt.settings.hand_backs

        def state(
            r: Reader, now: int
        ) -> tuple[cn.ContractView | None, tuple[list[int], list[int]]]:
            since = now - policy.window * 1_000_000
            return (
                r.contract_for(owner.token_hash, file_hash),
                r.hand_backs(owner.token_hash, owner.address, since),
            )

        async def attempt() -> None:
            now = rt.now()
            contract, (by_token, by_address) = await rt.read(lambda r: state(r, now))
            events = cn.decide_remove(
                contract,
                now=now,
                token_hand_backs=by_token,
                address_hand_backs=by_address,
                policy=policy,
            )
            assert contract is not None
            await rt.append(
                ev.contract_stream(contract.contract_id),
                contract.version,
                events,
                ctx,
                guards=tokens.guard(owner),
            )

        async def reread_owner() -> None:
            nonlocal owner
            owner = await tokens.live(rt, token)  # no_token if it was deleted meanwhile

        await until_appended(
            attempt,
            busy="too much contention on this contract; try again",
            on_conflict=reread_owner,
        )

    async def sweep_expired(self, ctx: Context = OPERATOR, token_hash: str | None = None) -> int:
        """Mark contracts whose expiration passed, so their replicas return to the pool."""
        rt = self.rt
        now = rt.now()
        expired = await rt.read(lambda r: r.expired_contracts(now, token_hash=token_hash))
        results = await asyncio.gather(
            *(
                rt.append(ev.contract_stream(c.contract_id), c.version, cn.decide_expire(c), ctx)
                for c in expired
            ),
            return_exceptions=True,
        )
        return sum(1 for r in results if isinstance(r, AppendResult))
