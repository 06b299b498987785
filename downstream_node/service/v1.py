"""The commands behind the v1 API (farmer 0.1.8): several contracts per /chunk, bulk challenge
and bulk answer with a result per item, the token check of /heartbeat, and the public status.
Each item goes through the same decisions and pipelines as the 2014-10 routes' commands, so a
contract taken through one API is the same contract in the other.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import structlog

from ..domain import contracts as cn
from ..domain.errors import ConcurrencyConflict, Refused
from ..domain.signatures import REFUSAL_MESSAGES, check_new_signature
from ..heartbeat.scheme import HeartbeatError
from ..projections.queries import Reader, TokenView
from ..projections.status import FarmerRow, farmer_rows
from . import tokens
from .answers import Answers
from .context import OPERATOR, Context
from .contracts import ContractCommands
from .geoip import GeoIP
from .retry import RETRIES
from .runtime import Runtime
from .tokens import TokenCommands

log = structlog.get_logger("downstream.node")

HASH_RE = re.compile(r"^[0-9a-fA-F]{64}\Z")
MICROS = 1_000_000
# How many pooled files one /chunk weighs to find the largest that fits.
CANDIDATES = 1000

# The original's per-item texts (protocol v1, sections 6 and 7): farmer 0.1.8 logs them and
# drops the contract; only "ok" counts as a proof.
NOT_FOUND = "contract not found"
EXPIRED = "contract expired"
NO_MORE = "no more challenges"
ANSWER_ERRORS = {
    "no_hash": NOT_FOUND,
    "bad_proof_format": "Proof corrupted",
    "expired": "Answer failed: contract expired.",
    "already_answered": "Challenge already answered.",
    "busy": "Too much contention on this contract; answer again.",
    # Not in the original (it recorded every wrong answer): issue 21's cap, said as such.
    "too_many_failures": "Too many wrong answers to this challenge; answer the next one.",
}
SORT_KEYS = ("id", "address", "uptime", "heartbeats", "contracts", "size", "online")


class SignatureRefused(Refused):
    """A signed /new refused before the token command runs; ``message`` is the original's."""

    def __init__(self, reason: str) -> None:
        super().__init__("invalid_address", REFUSAL_MESSAGES[reason])
        self.reason = reason


def _seconds(micros: int) -> float:
    return round(micros / MICROS, 6)


def _file_key(value: Any) -> str | None:
    """A v1 ``file_hash`` as sent, as our contracts name it (64 hex), or None."""
    return value.lower() if isinstance(value, str) and HASH_RE.match(value) else None


class V1Commands:
    def __init__(
        self,
        rt: Runtime,
        token_commands: TokenCommands,
        contracts: ContractCommands,
        answers: Answers,
    ) -> None:
        self.rt = rt
        self.token_commands = token_commands
        self.contracts = contracts
        self.answers = answers
        # Opened with the node, so that a database that cannot be read stops serve at once.
        self.geoip = GeoIP(rt.settings.geoip) if rt.settings.geoip is not None else None

    # -- tokens ---------------------------------------------------------------------------------

    async def new_signed(
        self, address: str, message: Any, signature: Any, ctx: Context = OPERATOR
    ) -> tuple[str, dict[str, Any]]:
        """A token for ``address`` if the signature proves it (the original's checks in its
        order, then the same whitelist and per-IP rules as the 2014-10 ``/new``)."""
        # Elliptic-curve recovery takes milliseconds: off the event loop.
        reason = await self.rt.run(check_new_signature, address, message, signature)
        if reason is not None:
            raise SignatureRefused(reason)
        return await self.token_commands.create_token(address, ctx)

    async def heartbeat(self, token: str) -> dict[str, Any]:
        """The node's public heartbeat, for a live token (``no_token`` otherwise)."""
        await tokens.live(self.rt, token)
        return self.rt.proofs().public()

    # -- contracts ------------------------------------------------------------------------------

    async def chunks(self, token: str, size: int, ctx: Context = OPERATOR) -> list[dict[str, Any]]:
        """Up to ``max_chunks_per_request`` new contracts whose sizes add up to at most ``size``
        and to at most what the address may still hold (across all its tokens): each time the
        largest pooled seeded chunk that still fits. Only seeded chunks: a v1 farmer writes
        the chunk from its seed and could never prove an operator's real file."""
        rt = self.rt
        settings = rt.settings
        owner = await tokens.live(rt, token)
        await self.contracts.sweep_expired(ctx, token_hash=owner.token_hash)
        now = rt.now()
        held = await rt.read(lambda r: r.bytes_held_by_address(owner.address, now))
        budget = min(size, settings.max_bytes_per_address - held)
        issued: list[dict[str, Any]] = []
        skipped: set[str] = set()  # unreadable just now
        total = 0
        conflicts = 0
        while len(issued) < settings.max_chunks_per_request and total < budget:
            now = rt.now()
            since = now - settings.handed_back_seconds * MICROS

            def state(
                r: Reader, held_by: str = owner.token_hash, now: int = now, since: int = since
            ) -> list[cn.FileView]:
                return r.candidate_files(held_by, now, limit=CANDIDATES, returned_since=since)

            fitting = [
                f
                for f in await rt.read(state)
                if f.seed is not None and f.size <= budget - total and f.file_hash not in skipped
            ]
            if not fitting:
                break
            # The largest; among equals the least held (candidate_files' order).
            chosen = max(fitting, key=lambda f: f.size)
            try:
                issued.append(await self._assign(owner, chosen, ctx))
                total += chosen.size
            except (OSError, HeartbeatError) as exc:
                log.error("file_unreadable", file_hash=chosen.file_hash, error=str(exc))
                skipped.add(chosen.file_hash)
            except (ConcurrencyConflict, Refused) as exc:
                if isinstance(exc, Refused) and exc.status != "no_chunks":
                    raise
                # Another farmer took that replica meanwhile, or the token moved: look again.
                conflicts += 1
                if conflicts >= RETRIES:
                    if issued:
                        break
                    raise Refused("busy", "too much contention for chunks; try again") from None
                owner = await tokens.live(rt, token)
        return issued

    async def _assign(self, owner: TokenView, chosen: cn.FileView, ctx: Context) -> dict[str, Any]:
        """One contract, as the 2014-10 route makes it (one encoder per file, the byte cap
        checked under the ledger lock), in the v1 reply's terms."""
        now = self.rt.now()
        async with self.contracts.encodings.of_file(chosen.file_hash):
            assigned = await self.contracts.assign(chosen, owner, now, ctx)
        return {
            "file_hash": chosen.file_hash,
            "seed": assigned.seed,
            "size": chosen.size,
            "challenge": assigned.challenge,
            "tag": assigned.tag,
            "due": _seconds(assigned.due - now),
        }

    async def challenges(
        self, token: str, hashes: list[Any] | None, ctx: Context = OPERATOR
    ) -> list[dict[str, Any]]:
        """Per contract (every one of the token's when ``hashes`` is None): its open challenge,
        the next one when the answered one fell due, or why there is none."""
        token_hash = tokens.hashed(token)

        def state(r: Reader) -> tuple[TokenView, list[cn.ContractView]]:
            owner = tokens.checked(token, r.token(token_hash))
            return owner, r.contracts_for_token(token_hash)

        owner, held = await self.rt.read(state)
        guard = tokens.guard(owner)
        newest: dict[str, cn.ContractView] = {}
        for c in held:  # the newest per file, as contract_for picks it
            newest[c.file_hash] = c
        asked = list(newest) if hashes is None else hashes
        keys = {_file_key(h) for h in asked} - {None}
        outcomes = dict(
            zip(
                keys,
                await asyncio.gather(
                    *(self._challenge(newest.get(k), ctx, guard) for k in keys)  # type: ignore[arg-type]
                ),
                strict=True,
            )
        )
        out = []
        for h in asked:
            key = _file_key(h)
            outcome = outcomes.get(key) if key is not None else None
            out.append({"file_hash": h, **(outcome or {"error": NOT_FOUND})})
        return out

    async def _challenge(
        self, contract: cn.ContractView | None, ctx: Context, guard: dict[str, int]
    ) -> dict[str, Any]:
        if contract is None:
            return {"error": NOT_FOUND}
        if cn.is_expired(contract, self.rt.now()):
            await self.contracts.refresh(contract, ctx, guard)  # records the expiry
            return {"error": EXPIRED}
        fresh = await self.contracts.refresh(contract, ctx, guard)
        if fresh is None:  # it was due and could not go on: its 256 challenges are spent
            return {"status": NO_MORE}
        now = self.rt.now()
        if cn.is_expired(fresh, now):
            return {"error": EXPIRED}
        return {
            "challenge": fresh.challenge,
            "due": _seconds(fresh.due - now),
            "answered": fresh.answered,
        }

    async def answer_all(
        self, token: str, proofs: list[Any], ctx: Context = OPERATOR
    ) -> list[dict[str, Any]]:
        """Each proof through the per-contract answer command (so they are verified and
        recorded together in the group commit's batches): a result per item, in order.

        The token is checked where each answer is decided, under the ledger lock: a batch
        whose token is unknown (or was deleted meanwhile) is ``no_token`` as a whole. Only a
        batch with no proof to decide reads the token on its own."""
        decided = False
        unknown_token = False

        async def one(item: Any) -> dict[str, Any]:
            nonlocal decided, unknown_token
            sent = item.get("file_hash") if isinstance(item, dict) else None
            key = _file_key(sent)
            if key is None:
                return {"file_hash": sent, "error": NOT_FOUND}
            decided = True
            try:
                verdict = await self.answers.answer_receipted(token, key, item.get("proof"), ctx)
            except Refused as refused:
                unknown_token = unknown_token or refused.status == "no_token"
                return {"file_hash": sent, "error": ANSWER_ERRORS.get(refused.status, NOT_FOUND)}
            # Every recorded verdict, passed or failed, comes with the node's receipt for it.
            if verdict.status == "pass":
                return {"file_hash": sent, "status": "ok", "receipt": verdict.receipt}
            return {"file_hash": sent, "error": "Invalid proof", "receipt": verdict.receipt}

        report = list(await asyncio.gather(*(one(item) for item in proofs)))
        if unknown_token:
            raise Refused("no_token", "no such token")
        if not decided:
            await tokens.live(self.rt, token)
        return report

    # -- public status --------------------------------------------------------------------------

    async def farmers(
        self,
        *,
        sort: str = "id",
        descending: bool = False,
        limit: int | None = None,
        page: int = 0,
        online_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Every live token as the status list shows it: sorted, filtered, then paged (the
        original paged first, so its online pages came back short)."""
        if sort not in SORT_KEYS:
            raise Refused("bad_request", "Invalid sort.")
        now = self.rt.now()
        rows = await self.rt.read(lambda r: farmer_rows(r, now))
        if online_only:
            rows = [row for row in rows if row.online]
        rows.sort(key=lambda row: (getattr(row, sort), row.id), reverse=descending)
        if limit is not None:
            start = limit * page
            rows = rows[start : start + limit]
        return await self._located(rows)

    async def farmer(self, farmer_id: str) -> dict[str, Any]:
        now = self.rt.now()
        for row in await self.rt.read(lambda r: farmer_rows(r, now, farmer_id=farmer_id)):
            return (await self._located([row]))[0]
        raise Refused("no_token", "Nonexistent farmer id.")

    async def _located(self, rows: list[FarmerRow]) -> list[dict[str, Any]]:
        """The rows as shown, each located by the IP that created its token (only the rows
        shown are looked up; in a worker thread, as the reader reads a file)."""
        geoip = self.geoip
        if geoip is not None:

            def locate() -> None:
                for row in rows:
                    row.location = geoip.locate(row.ip)

            await self.rt.run(locate)
        return [row.public() for row in rows]
