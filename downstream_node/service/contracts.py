"""A farmer's contracts: taking one (``/chunk``), bringing them up to date and listing them
(``/due``), handing one back (``/remove``), and ending those nobody answered in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from typing import Any, BinaryIO

import structlog

from ..domain import contracts as cn
from ..domain import events as ev
from ..domain.clock import iso_micros
from ..domain.errors import ConcurrencyConflict, Refused
from ..heartbeat.scheme import HeartbeatError, OutOfChallenges, SeededChunk
from ..ledger.store import AppendResult
from ..projections.queries import Reader, TokenView
from . import tokens
from .context import OPERATOR, Context
from .retry import RETRIES, until_appended
from .runtime import Runtime

log = structlog.get_logger("downstream.node")


class ContractCommands:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def chunk(self, token: str, ctx: Context = OPERATOR) -> dict[str, Any]:
        """Give the token a new contract on the least-replicated file it does not hold."""
        rt = self.rt
        scheme = rt.proofs()
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
                    returned_since=now - settings.handed_back_seconds * 1_000_000,
                ),
                r.bytes_held_by_address(owner.address, now),
            )

        async def attempt() -> dict[str, Any]:
            while True:  # until a candidate encodes: an unreadable file is not a conflict
                now = rt.now()
                candidates, held = await rt.read(lambda r, now=now: state(r, now, owner))
                candidates = [
                    f
                    for f in candidates
                    if held + f.size <= settings.max_bytes_per_address
                    and f.file_hash not in unreadable
                ]
                if not candidates:
                    raise Refused("no_chunks", "no chunk is available for this token right now")
                chosen = spread(candidates, owner.token_hash)
                try:
                    tag, initial, challenge, state_after = await rt.run(self.encode, chosen, now)
                    break
                except (OSError, HeartbeatError) as exc:
                    # A monitored real file that was moved, shrunk or made unreadable: the
                    # operator's to mend; the farmer gets the next candidate meanwhile.
                    log.error("file_unreadable", file_hash=chosen.file_hash, error=str(exc))
                    unreadable.add(chosen.file_hash)
            events = cn.decide_assign(
                chosen,
                contract_id=secrets.token_hex(16),
                token_hash=owner.token_hash,
                heartbeat=scheme.kind,
                tag=tag,
                initial_state=initial,
                challenge=challenge,
                challenge_index=0,
                state=state_after,
                already_held=False,
                now=now,
            )
            await rt.append(
                ev.file_stream(chosen.file_hash),
                chosen.version,
                events,
                ctx,
                guards=tokens.guard(owner),
            )
            assigned = events[1]
            assert isinstance(assigned, ev.ContractAssigned)
            return {
                "seed": events[0].seed,  # type: ignore[attr-defined]
                "file_hash": chosen.file_hash,
                "size": chosen.size,
                "challenge": challenge,
                "tag": tag,
                "due": iso_micros(assigned.due),
                "expiration": iso_micros(assigned.due),
            }

        async def reread_owner() -> None:
            # Another farmer took a replica meanwhile (look again), or the token was deleted
            # (then this raises no_token).
            nonlocal owner
            owner = await tokens.live(rt, token)

        return await until_appended(
            attempt, busy="too much contention for chunks; try again", on_conflict=reread_owner
        )

    def encode(self, file: cn.FileView, now: int) -> tuple[dict, dict, dict, dict]:
        """A fresh encoding of ``file`` and its first challenge: ``(tag, initial state,
        challenge, state after it)``. CPU-bound: run it in a worker thread."""
        scheme = self.rt.proofs()
        with _open(file) as handle:
            tag, state = scheme.encode(handle, file.size, timestamp=now // 1_000_000)
        challenge, after = scheme.next_challenge(state, file.size)
        return tag, state, challenge, after

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

    async def remove(self, token: str, file_hash: str, ctx: Context = OPERATOR) -> None:
        """Hand a contract back: it ends and its replica returns to the pool."""
        rt = self.rt
        owner = await tokens.live(rt, token)

        async def attempt() -> None:
            contract = await rt.read(
                lambda r, held_by=owner.token_hash: r.contract_for(held_by, file_hash)
            )
            events = cn.decide_remove(contract)
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


def _open(file: cn.FileView) -> BinaryIO:
    if file.seed is not None:
        return SeededChunk(file.seed, file.size)  # type: ignore[return-value]
    assert file.path is not None
    return open(file.path, "rb")


def spread(candidates: list[cn.FileView], token_hash: str) -> cn.FileView:
    """The candidate to take: one of the least held, which one by the token. Tokens asking at
    once then mostly take different files instead of all racing for the same one (each
    loser reads and tries again: with several nodes writing, enough rounds of that came to
    ``busy``)."""
    least = [f for f in candidates if f.live_contracts == candidates[0].live_contracts]
    return min(least, key=lambda f: hashlib.sha256(f"{token_hash}{f.file_hash}".encode()).digest())
