"""Answers, the hot path: a proof for a contract's open challenge, verified and recorded.

Answers that arrive together are looked up, verified and decided in batches, each batch one
unit of work in the group committer's transaction (two queries for the whole batch, under
the ledger lock). Identical answers arriving at once wait for the first (single flight).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..domain import contracts as cn
from ..domain import events as ev
from ..domain.canonical import digest_text
from ..domain.clock import from_micros
from ..domain.errors import ConcurrencyConflict, Refused
from ..heartbeat.scheme import HeartbeatError
from ..ledger.group_commit import Decision
from ..ledger.store import AppendRequest, AppendResult, UnitOfWork
from ..projections.queries import Reader, TokenView
from . import tokens
from .context import OPERATOR, Context
from .ledger import receipt_now
from .retry import RETRIES
from .runtime import Runtime

# The decision value of a late answer: its expiry is recorded, then it is refused.
EXPIRED = "expired"


@dataclass(frozen=True)
class Verdict:
    """An answer's verdict (``pass`` or ``fail``) and the node's signed receipt for the
    recorded verdict event: the same for a retried identical answer."""

    status: str
    receipt: str | None


@dataclass(frozen=True)
class AnswerAsk:
    """One answer to decide: the farmer's token, the file, the proof as parsed (to verify)
    and as sent (to record), its digest, when it arrived and who sent it."""

    token: str
    hashed: str
    file_hash: str
    proof: Any  # as ProofScheme.parse_proof parsed it
    recorded: dict[str, Any]
    digest: str
    now: int
    ctx: Context


class Answers:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.on_answer: Callable[[str], None] | None = None  # metrics hook: "pass"/"fail"
        # Single flight: the answer being verified per (token hash, file hash) in this
        # process, settled with (proof digest, verdict) or None; answers arriving meanwhile
        # wait for it, and identical ones take its verdict instead of verifying again.
        self._answering: dict[tuple[str, str], asyncio.Future[tuple[str, Verdict] | None]] = {}

    async def answer(self, token: str, file_hash: str, proof: Any, ctx: Context = OPERATOR) -> str:
        """The verdict word of ``answer_receipted``."""
        return (await self.answer_receipted(token, file_hash, proof, ctx)).status

    async def answer_receipted(
        self, token: str, file_hash: str, proof: Any, ctx: Context = OPERATOR
    ) -> Verdict:
        """Verify a proof for the token's current challenge on ``file_hash``: pass or fail.

        Idempotent: the same proof for the same challenge is recorded once (request id from
        the contract, the challenge index and the proof's SHA-256) and sent again gets the
        same verdict, also after a commit whose outcome the node could not learn. Identical
        answers arriving together wait for the first one (single flight per token and file)
        and are not verified again; across processes the append's expected version and
        request id still record one verdict. Any other answer after a pass is
        ``already_answered``.
        """
        scheme = self.rt.proofs()
        token_hash = tokens.hashed(token)
        try:
            parsed, proof = scheme.parse_proof(proof)
        except HeartbeatError as exc:
            await tokens.live(self.rt, token)  # an unknown token is no_token, whatever its proof
            raise Refused("bad_proof_format", f"the proof is malformed: {exc}") from exc
        digest = hashlib.sha256(digest_text(proof).encode()).hexdigest()
        key = (token_hash, file_hash)
        conflicts = 0
        while conflicts < RETRIES:  # waiting for another answer's flight is not a conflict
            leader = self._answering.get(key)
            if leader is not None:
                settled = await self.rt.waited(asyncio.shield(leader))  # its database wait
                if settled is not None and settled[0] == digest:
                    return settled[1]  # the very same answer: the same verdict
                continue  # another answer: look again (answered now, or still open)
            done: asyncio.Future[tuple[str, Verdict] | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._answering[key] = done
            outcome: tuple[str, Verdict] | None = None
            try:
                verdict = await self._answer_once(
                    token, token_hash, file_hash, parsed, proof, digest, ctx
                )
                outcome = (digest, verdict)
                return verdict
            except ConcurrencyConflict:
                conflicts += 1  # the contract or the token moved: look again, fresh state
            finally:
                del self._answering[key]
                done.set_result(outcome)
        raise Refused("busy", "too much contention on this contract; try again")

    async def _answer_once(
        self,
        token: str,
        token_hash: str,
        file_hash: str,
        parsed: Any,
        proof: dict[str, Any],
        digest: str,
        ctx: Context,
    ) -> Verdict:
        """One attempt: looked up, verified, decided and recorded in one unit of work
        (``parsed`` is the proof as verified, ``proof`` its dict as recorded)."""
        ask = AnswerAsk(token, token_hash, file_hash, parsed, proof, digest, self.rt.now(), ctx)
        (verdict, recorded_at, receipt), result = await self.rt.waited(
            self.rt.committer.decide(self._decide_answers, ask)
        )
        if verdict == EXPIRED:
            raise Refused("expired", "the challenge expired before this answer arrived")
        # A duplicate request id means this proof for this challenge was recorded already
        # (by another process, or by a commit whose outcome was lost): verification is
        # deterministic, so its verdict is this one.
        if self.on_answer is not None and result is not None and not result.duplicate:
            self.on_answer(verdict)
        if receipt is not None:  # a fresh verdict, signed in the commit's thread
            return Verdict(verdict, receipt)
        # A recorded or duplicate verdict's leaf is read from the tree.
        if result is not None:
            recorded_at = result.positions[-1]
        if recorded_at is not None:
            receipt = await self.rt.run(receipt_now, self.rt, recorded_at)
        return Verdict(verdict, receipt)

    def _decide_answers(
        self, unit: UnitOfWork, asks: list[AnswerAsk]
    ) -> list[Decision | BaseException]:
        """In the group commit's transaction, under the ledger lock: look up a batch of
        answers (two queries for the whole batch: the contracts with their tokens, and the
        store's own lookup of request ids, which the append then reuses), verify the proofs
        that may be verified and decide each one's events. A refusal is that answer's own
        outcome.

        Reading under the lock, in the transaction that records the verdicts, costs one
        thread hop and one transaction per batch instead of two, and what was read cannot
        move before the commit (the expected versions are still checked)."""
        r = Reader.under_lock(unit)
        contracts, owners = r.contracts_for_pairs({(ask.hashed, ask.file_hash) for ask in asks})
        request_ids = {
            i: answer_request_id(c.contract_id, c.challenge_index, ask.digest)
            for i, ask in enumerate(asks)
            if (c := contracts.get((ask.hashed, ask.file_hash))) is not None
        }
        recorded = unit.recorded(request_ids.values())
        decided: list[Decision | BaseException] = []
        for i, ask in enumerate(asks):
            try:
                owner = tokens.checked(ask.token, owners.get(ask.hashed))
                contract = contracts.get((ask.hashed, ask.file_hash))
                if contract is None:
                    raise Refused("no_hash", "this token holds no contract for that file hash")
                earlier = recorded.get(request_ids[i])
                verdict = recorded_verdict(earlier.event_types if earlier else (), contract)
                at = earlier.positions[-1] if earlier is not None else None
                decided.append(
                    self._decide_answer(ask, owner, contract, request_ids[i], verdict, at)
                )
            except Refused as refused:
                decided.append(refused)
        return decided

    def _decide_answer(
        self,
        ask: AnswerAsk,
        owner: TokenView,
        contract: cn.ContractView,
        request_id: str,
        recorded: str | None,
        recorded_at: int | None,
    ) -> Decision:
        """One looked-up answer's decision: the recorded verdict (and where it was
        recorded), the late answer's expiry (its value ``EXPIRED``), or the verified verdict
        with its events. The value is (word, position of a recorded verdict or None, receipt
        of a fresh verdict or None)."""
        if recorded is not None:
            return Decision(None, (recorded, recorded_at, None))
        stream = ev.contract_stream(contract.contract_id)
        at, meta = from_micros(ask.now), ask.ctx.meta()
        guard = tokens.guard(owner)
        refused = cn.check_answerable(contract, ask.now)  # already_answered raises
        if refused:
            expiry = [e.to_new(at, meta) for e in refused]
            request = AppendRequest(stream, contract.version, expiry, None, guard)
            return Decision(request, (EXPIRED, None, None))
        valid = self.rt.proofs().verify(ask.proof, contract.challenge, contract.state)
        events = [e.to_new(at, meta) for e in cn.decide_answer(contract, ask.recorded, valid)]
        request = AppendRequest(stream, contract.version, events, request_id, guard)
        return Decision(request, ("pass" if valid else "fail", None, None), self._receipted)

    def _receipted(self, value: tuple[str, None, None], result: AppendResult) -> Any:
        """A fresh verdict's receipt, signed in the commit's thread once it is durable: the
        signature releases the interpreter lock, so the event loop goes on meanwhile (on
        the loop, one signature per answer was the largest single cost of the route)."""
        if not result.leaves or result.duplicate:
            return value
        return (value[0], None, self.rt.keys().receipt(result.positions[-1], result.leaves[-1]))


def recorded_verdict(event_types: Iterable[str], contract: cn.ContractView) -> str | None:
    """The verdict already recorded for an answer from its request id's event types (a retry,
    or a duplicate that came after the first one's single flight): not verified again. A
    recorded fail no longer stands once the challenge was passed (``already_answered``)."""
    for event_type in event_types:
        if event_type == "AnswerPassed":
            return "pass"
        if event_type == "AnswerFailed" and not contract.answered:
            return "fail"
    return None


def answer_request_id(contract_id: str, challenge_index: int, proof_digest: str) -> str:
    """The idempotency key of an answer: the same proof for the same challenge."""
    return f"answer-{contract_id}-{challenge_index}-{proof_digest}"
