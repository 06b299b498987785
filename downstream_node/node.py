"""The node's application service: the private functions and the farmer commands.

Each command reads the projections, lets a pure decision in the ledger say which events to
write, and appends them with optimistic concurrency (retrying on a conflict with fresh
state). Database calls and proof work run in threads: the event loop never blocks. Answers,
the hot path, are looked up, verified and recorded in batches, each one unit of work in a group
commit's transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import secrets
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import sqlalchemy.exc
import structlog

from . import logs  # noqa: F401 - logs go to stderr even when used as a library
from .config import Settings
from .domain import contracts as cn
from .domain import events as ev
from .domain import tokens as tk
from .domain.canonical import digest_text
from .domain.clock import Clock, SystemClock, from_micros, iso_micros, to_micros
from .domain.errors import Refused
from .heartbeat.scheme import HeartbeatError, OutOfChallenges, ProofScheme, SeededChunk
from .ledger.db import make_engine
from .ledger.group_commit import Decision, GroupCommitter
from .ledger.store import (
    AppendRequest,
    AppendResult,
    ConcurrencyConflict,
    EventStore,
    RecordedEvent,
    UnitOfWork,
)
from .projections.projector import Projector
from .projections.queries import Reader, ReadModel, TokenView
from .projections.rebuild import ensure_projections

log = structlog.get_logger("downstream.node")

T = TypeVar("T")
RETRIES = 8
HEALTH_TIMEOUT = 5.0  # seconds a health probe waits for the database
HASH_BLOCK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Context:
    """Who asked: recorded in each event's metadata (never a token)."""

    request_id: str | None = None
    actor: str = "operator"
    remote: str | None = None

    def meta(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (
                ("request_id", self.request_id),
                ("actor", self.actor),
                ("remote", self.remote),
            )
            if v is not None
        }


OPERATOR = Context(actor="operator")


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


# The decision value of a late answer: its expiry is recorded, then it is refused.
EXPIRED = "expired"


class Node:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        scheme: ProofScheme | None = None,
        workers: int = 4,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.engine = make_engine(settings.db_url)
        self.store = EventStore(self.engine, [Projector()])
        self.read_model = ReadModel(self.engine)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="node-db")
        self.committer = GroupCommitter(self.store, executor=self.executor)
        self.scheme = scheme
        self.on_answer: Callable[[str], None] | None = None  # metrics hook: "pass"/"fail"
        # Single flight: the answer being verified per (token hash, file hash) in this
        # process, settled with (proof digest, verdict) or None; answers arriving meanwhile
        # wait for it, and identical ones take its verdict instead of verifying again.
        self._answering: dict[tuple[str, str], asyncio.Future[tuple[str, str] | None]] = {}

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> Node:
        """Create the schema and projections if needed and load (or create) the secret.

        The secret must be the one the ledger's last ``HeartbeatConfigured`` names: the
        contracts' states are sealed with it. A missing or other secret is refused (a node
        started from another directory would otherwise make a new one and fail every
        contract), unless ``settings.new_secret`` says to record a new one.
        """
        await self._run(self.store.create_schema)
        await self._run(ensure_projections, self.store)
        configured = await self._configured_fingerprint()
        if self.scheme is None:
            path = self.settings.secret_path()
            keep = configured is not None and not self.settings.new_secret
            if keep and not await self._run(path.exists):
                raise Refused(
                    "secret_missing",
                    f"this ledger's heartbeat secret (fingerprint {str(configured)[:12]}) is "
                    f"not at {path}: point --secret-file at it (or use --new-secret if it is "
                    "lost; contracts made under it then end)",
                )
            try:
                self.scheme, _ = await self._run(
                    ProofScheme.load_or_create,
                    path,
                    self.settings.heartbeat,
                    check_fraction=self.settings.check_fraction,
                    challenges=self.settings.challenges,
                )
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                raise Refused(
                    "bad_secret", f"cannot read the secret file {path}: {_reason(exc)}"
                ) from exc
        await self._record_heartbeat()
        return self

    async def _configured_fingerprint(self) -> str | None:
        return configured_fingerprint(await self._run(self.store.read_stream, ev.NODE_STREAM))

    async def close(self) -> None:
        await self.committer.close()
        # Joining the worker threads blocks: off the event loop, and in a thread of its own,
        # not the loop's default executor, which a caller giving up on a stalled database
        # could then not shut down.
        joined = asyncio.get_running_loop().create_future()

        def join() -> None:
            self.executor.shutdown()
            with contextlib.suppress(RuntimeError):  # the loop may be gone (a forced stop)
                joined.get_loop().call_soon_threadsafe(_settle, joined)

        threading.Thread(target=join, name="node-close", daemon=True).start()
        await joined
        self.engine.dispose()

    async def _record_heartbeat(self) -> None:
        assert self.scheme is not None
        fingerprint = self.scheme.fingerprint()
        event = ev.HeartbeatConfigured(
            kind=self.scheme.kind,
            public=json.dumps(self.scheme.public(), sort_keys=True),
            key_fingerprint=fingerprint,
        )
        for _ in range(RETRIES):
            history = await self._run(self.store.read_stream, ev.NODE_STREAM)
            last = configured_fingerprint(history)
            if last is not None:
                if last == fingerprint:
                    return
                if not self.settings.new_secret:
                    # Read at the version the append would need: also a node that started
                    # together with another holding a different secret stops here.
                    raise Refused(
                        "secret_mismatch",
                        f"the secret file {self.settings.secret_path()} (fingerprint "
                        f"{fingerprint[:12]}) is not the one this ledger was configured with "
                        f"({last[:12]}): point --secret-file at that one (or use --new-secret "
                        "if it is lost; contracts made under it then end)",
                    )
            version = history[-1].version if history else 0
            try:  # at the version read: nodes starting together record it once
                await self._append(ev.NODE_STREAM, version, [event], OPERATOR)
                return
            except ConcurrencyConflict:
                continue
        raise Refused("busy", "could not record the node's heartbeat; try again")

    # -- plumbing -------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # In a copy of the caller's context, so what the thread logs carries the request id.
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: context.run(fn, *args, **kwargs))

    async def _read(self, fn: Callable[[Reader], T]) -> T:
        return await self._run(self._read_now, fn)

    def _read_now(self, fn: Callable[[Reader], T]) -> T:
        """Run ``fn`` in a read transaction; once more if the connection was dropped under it.

        A read has no effect, so repeating it on a fresh connection is safe (the pool, which
        does not ping, drops every connection it held when one turns out dead); a second
        failure goes to the caller (HTTP 503). Blocking: call it in a worker thread.
        """

        def work() -> T:
            with self.read_model.reader() as reader:
                return fn(reader)

        try:
            return work()
        except sqlalchemy.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            log.warning("read_retried", error=type(exc.orig).__name__)
            return work()

    async def _append(
        self,
        stream: str,
        expected: int | None,
        events: Sequence[ev.DomainEvent],
        ctx: Context,
        request_id: str | None = None,
        guards: dict[str, int] | None = None,
    ) -> AppendResult:
        at = self.clock.now()
        meta = ctx.meta()
        return await self.committer.append(
            stream,
            expected,
            [e.to_new(at, meta) for e in events],
            request_id=request_id,
            guards=guards,
        )

    @staticmethod
    def _token_guard(owner: TokenView) -> dict[str, int]:
        """The token's stream must not have moved: nothing lands after its deletion."""
        return {ev.token_stream(owner.token_hash): owner.version}

    def _now(self) -> int:
        return to_micros(self.clock.now())

    @staticmethod
    def _token_hash(token: str) -> str:
        if not isinstance(token, str) or not tk.TOKEN_RE.match(token):
            raise Refused("no_token", "no such token")
        return tk.token_hash(token)

    @staticmethod
    def _check_token(token: str, found: TokenView | None) -> TokenView:
        """The token's view if it is live and really this token (compared in constant time)."""
        if (
            found is None
            or found.deleted_at is not None
            or not tk.same_token(token, found.token_hash)
        ):
            raise Refused("no_token", "no such token")
        return found

    async def _token(self, token: str) -> TokenView:
        hashed = self._token_hash(token)
        return self._check_token(token, await self._read(lambda r: r.token(hashed)))

    # -- operator functions ---------------------------------------------------------------------

    async def whitelist(self, entries: Sequence[tuple[str, str]], ctx: Context = OPERATOR) -> int:
        """Record (address, balance) pairs; invalid addresses are refused before any write."""
        bad = [a for a, _ in entries if not tk.is_valid_address(a)]
        if bad:
            raise Refused("invalid_address", f"not Base58Check addresses: {', '.join(bad[:5])}")
        # A balance the read model cannot parse would whitelist the address with none.
        unreadable = [f"{a}: {b!r}" for a, b in entries if not _is_balance(str(b))]
        if unreadable:
            raise Refused(
                "invalid_balance",
                f"balances must be non-negative decimal numbers: {', '.join(unreadable[:5])}",
            )
        events = [ev.AddressWhitelisted(address=a, balance=str(b)) for a, b in entries]
        for start in range(0, len(events), 1000):
            await self._append(ev.WHITELIST_STREAM, None, events[start : start + 1000], ctx)
        return len(events)

    async def create_token(
        self, address: str, ctx: Context = OPERATOR
    ) -> tuple[str, dict[str, Any]]:
        """A new token for ``address``; a farmer's counts against its IP address's limit.

        A farmer's TokenCreated is appended to its IP's stream at the version read together
        with the count, so simultaneous requests from one IP (in any process) cannot pass
        the limit together: the losers re-read the count and decide again.
        """
        assert self.scheme is not None
        ip = ctx.remote if ctx.actor == "farmer" else None
        ip_stream = ev.ip_stream(ip) if ip else None
        for _ in range(RETRIES):
            token = tk.new_token()

            def state(r: Reader) -> tuple[int, Any, int]:
                # The version first: a creation committed after it makes the append conflict,
                # one committed before it is in the count read next.
                version = r.stream_version(ip_stream) if ip_stream else 0
                return version, r.balance(address), (r.tokens_for_ip(ip) if ip else 0)

            version, balance, per_ip = await self._read(state)
            events = tk.decide_create_token(
                address,
                token=token,
                ip=ip,
                balance=balance,
                tokens_for_ip=per_ip,
                policy=self.settings.token_policy,
            )
            stream = ip_stream or ev.token_stream(tk.token_hash(token))
            try:
                await self._append(stream, version if ip_stream else 0, events, ctx)
            except ConcurrencyConflict:
                continue  # another token was created from this IP meanwhile: count again
            log.info("token_created", token=tk.redact(token), address=address)
            return token, self.scheme.public()
        raise Refused("busy", "too many tokens are being created from this address; try again")

    async def delete_token(self, token: str, ctx: Context = OPERATOR) -> None:
        found = await self._token(token)
        events = tk.decide_delete_token(True, False, found.token_hash)
        try:
            await self._append(ev.token_stream(found.token_hash), found.version, events, ctx)
        except ConcurrencyConflict as exc:
            raise Refused("no_token", "the token changed meanwhile; try again") from exc
        log.info("token_deleted", token=tk.redact(token))

    async def add_file(
        self,
        path: str | Path,
        *,
        redundancy: int | None = None,
        interval: int | None = None,
        ctx: Context = OPERATOR,
    ) -> str:
        """Monitor a real file on disk; returns its SHA-256 (the file hash)."""
        source = Path(path).resolve()
        if not source.is_file():
            raise Refused("no_file", f"{source} is not a readable file")
        size = source.stat().st_size
        if size == 0:
            raise Refused("no_file", "cannot monitor an empty file")
        file_hash = await self._run(_sha256_file, source)
        return await self._add(file_hash, size, None, str(source), redundancy, interval, ctx)

    async def add_seeded(
        self,
        size: int | None = None,
        *,
        seed: str | None = None,
        redundancy: int | None = None,
        interval: int | None = None,
        ctx: Context = OPERATOR,
    ) -> str:
        """Monitor a seeded test chunk whose bytes farmers regenerate from its seed."""
        size = size or self.settings.chunk_size
        if size <= 0:
            raise Refused("error", "size must be positive")
        seed = seed or secrets.token_hex(20)
        file_hash = await self._run(_sha256_stream, SeededChunk(seed, size))
        return await self._add(file_hash, size, seed, None, redundancy, interval, ctx)

    async def _add(
        self,
        file_hash: str,
        size: int,
        seed: str | None,
        path: str | None,
        redundancy: int | None,
        interval: int | None,
        ctx: Context,
    ) -> str:
        redundancy = self.settings.redundancy if redundancy is None else redundancy
        interval = self.settings.interval if interval is None else interval
        if redundancy < 1 or interval < 1:
            raise Refused("error", "redundancy and interval must be at least 1")

        def state(r: Reader) -> tuple[int, bool]:
            # The stream's version before the projection: an add committed after the version
            # read makes the append conflict, one committed before it shows as monitored.
            return r.stream_version(ev.file_stream(file_hash)), r.file(file_hash) is not None

        version, monitored = await self._read(state)
        if monitored:
            raise Refused("file_exists", f"file {file_hash} is already monitored")
        event = ev.FileAdded(
            file_hash=file_hash,
            size=size,
            redundancy=redundancy,
            interval=interval,
            seed=seed,
            path=path,
        )
        try:
            await self._append(ev.file_stream(file_hash), version, [event], ctx)
        except ConcurrencyConflict as exc:
            raise Refused("file_exists", f"file {file_hash} is already monitored") from exc
        log.info("file_added", file_hash=file_hash, size=size, seeded=seed is not None)
        return file_hash

    async def remove_file(self, file_hash: str, ctx: Context = OPERATOR) -> None:
        found = await self._read(lambda r: r.file(file_hash))
        if found is None:
            raise Refused("no_hash", f"no monitored file {file_hash}")
        await self._append(ev.file_stream(file_hash), None, [ev.FileRemoved(file_hash)], ctx)
        log.info("file_removed", file_hash=file_hash)

    # -- farmer commands ------------------------------------------------------------------------

    async def chunk(self, token: str, ctx: Context = OPERATOR) -> dict[str, Any]:
        """Give the token a new contract on the least-replicated file it does not hold."""
        assert self.scheme is not None
        owner = await self._token(token)
        # End this token's lapsed contracts first, so a file it let lapse can be offered to
        # it again without two unended contracts on the same file.
        await self.sweep_expired(ctx, token_hash=owner.token_hash)
        unreadable: set[str] = set()  # real files that could not be encoded just now
        conflicts = 0
        while conflicts < RETRIES:
            now = self._now()

            def state(
                r: Reader,
                now: int = now,
                owner: TokenView = owner,
            ) -> tuple[list[cn.FileView], int]:
                return (
                    r.candidate_files(
                        owner.token_hash,
                        now,
                        returned_since=now - self.settings.handed_back_seconds * 1_000_000,
                    ),
                    r.bytes_held_by_address(owner.address, now),
                )

            candidates, held = await self._read(state)
            candidates = [
                f
                for f in candidates
                if held + f.size <= self.settings.max_bytes_per_address
                and f.file_hash not in unreadable
            ]
            if not candidates:
                raise Refused("no_chunks", "no chunk is available for this token right now")
            chosen = candidates[0]
            contract_id = secrets.token_hex(16)
            try:
                tag, initial, challenge, state_after = await self._run(self._encode, chosen, now)
            except (OSError, HeartbeatError) as exc:
                # A monitored real file that was moved, shrunk or made unreadable: the
                # operator's to mend; the farmer gets the next candidate meanwhile.
                log.error("file_unreadable", file_hash=chosen.file_hash, error=str(exc))
                unreadable.add(chosen.file_hash)
                continue
            events = cn.decide_assign(
                chosen,
                contract_id=contract_id,
                token_hash=owner.token_hash,
                heartbeat=self.scheme.kind,
                tag=tag,
                initial_state=initial,
                challenge=challenge,
                challenge_index=0,
                state=state_after,
                already_held=False,
                now=now,
            )
            try:
                await self._append(
                    ev.file_stream(chosen.file_hash),
                    chosen.version,
                    events,
                    ctx,
                    guards=self._token_guard(owner),
                )
            except ConcurrencyConflict:
                # Another farmer took a replica meanwhile (look again), or the token was
                # deleted (then this raises no_token).
                owner = await self._token(token)
                conflicts += 1
                continue
            assigned = events[1]
            assert isinstance(assigned, ev.ContractAssigned)
            return {
                "seed": events[0].seed,
                "file_hash": chosen.file_hash,  # type: ignore[attr-defined]
                "size": chosen.size,
                "challenge": challenge,
                "tag": tag,
                "due": iso_micros(assigned.due),
                "expiration": iso_micros(assigned.due),
            }
        raise Refused("busy", "too much contention for chunks; try again")

    def _encode(self, file: cn.FileView, now: int) -> tuple[dict, dict, dict, dict]:
        assert self.scheme is not None
        with self._open(file) as handle:
            tag, state = self.scheme.encode(handle, file.size, timestamp=now // 1_000_000)
        challenge, after = self.scheme.next_challenge(state, file.size)
        return tag, state, challenge, after

    @staticmethod
    def _open(file: cn.FileView) -> BinaryIO:
        if file.seed is not None:
            return SeededChunk(file.seed, file.size)  # type: ignore[return-value]
        assert file.path is not None
        return open(file.path, "rb")

    async def due(self, token: str, ctx: Context = OPERATOR) -> dict[str, Any]:
        """Bring every contract of the token up to date, then list them."""
        hashed = self._token_hash(token)

        def state(r: Reader) -> tuple[TokenView, list[cn.ContractView]]:
            # One read for both: a farmer's poll is one thread hop and one transaction.
            owner = self._check_token(token, r.token(hashed))
            return owner, r.contracts_for_token(hashed)

        owner, contracts = await self._read(state)
        guard = self._token_guard(owner)
        now = self._now()
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
        """Expire or advance one contract; None once it has ended."""
        assert self.scheme is not None
        for _ in range(RETRIES):
            now = self._now()
            if cn.is_expired(contract, now):
                events = cn.decide_expire(contract)
            elif cn.is_due(contract, now):
                try:
                    challenge, state = await self._run(
                        self.scheme.next_challenge, contract.state, contract.size
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
                await self._append(
                    ev.contract_stream(contract.contract_id),
                    contract.version,
                    events,
                    ctx,
                    guards=guard,
                )
            fresh = await self._read(
                lambda r, c=contract: r.contract_for(c.token_hash, c.file_hash)
            )
            if fresh is None or fresh.contract_id != contract.contract_id:
                return None
            contract = fresh
        return contract

    async def answer(self, token: str, file_hash: str, proof: Any, ctx: Context = OPERATOR) -> str:
        """Verify a proof for the token's current challenge on ``file_hash``: pass or fail.

        Idempotent: the same proof for the same challenge is recorded once (request id from
        the contract, the challenge index and the proof's SHA-256) and sent again gets the
        same verdict, also after a commit whose outcome the node could not learn. Identical
        answers arriving together wait for the first one (single flight per token and file)
        and are not verified again; across processes the append's expected version and
        request id still record one verdict. Any other answer after a pass is
        ``already_answered``.
        """
        assert self.scheme is not None
        hashed = self._token_hash(token)
        try:
            parsed, proof = self.scheme.parse_proof(proof)
        except HeartbeatError as exc:
            await self._token(token)  # an unknown token is no_token, whatever its proof
            raise Refused("bad_proof_format", f"the proof is malformed: {exc}") from exc
        digest = hashlib.sha256(digest_text(proof).encode()).hexdigest()
        key = (hashed, file_hash)
        conflicts = 0
        while conflicts < RETRIES:  # waiting for another answer's flight is not a conflict
            leader = self._answering.get(key)
            if leader is not None:
                settled = await asyncio.shield(leader)
                if settled is not None and settled[0] == digest:
                    return settled[1]  # the very same answer: the same verdict
                continue  # another answer: look again (answered now, or still open)
            done: asyncio.Future[tuple[str, str] | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._answering[key] = done
            outcome: tuple[str, str] | None = None
            try:
                verdict = await self._answer_once(
                    token, hashed, file_hash, parsed, proof, digest, ctx
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
        hashed: str,
        file_hash: str,
        parsed: Any,
        proof: dict[str, Any],
        digest: str,
        ctx: Context,
    ) -> str:
        """One attempt: looked up, verified, decided and recorded in one unit of work
        (``parsed`` is the proof as verified, ``proof`` its dict as recorded)."""
        ask = AnswerAsk(token, hashed, file_hash, parsed, proof, digest, self._now(), ctx)
        verdict, result = await self.committer.decide(self._decide_answers, ask)
        if verdict == EXPIRED:
            raise Refused("expired", "the challenge expired before this answer arrived")
        # A duplicate request id means this proof for this challenge was recorded already
        # (by another process, or by a commit whose outcome was lost): verification is
        # deterministic, so its verdict is this one.
        if self.on_answer is not None and result is not None and not result.duplicate:
            self.on_answer(verdict)
        return verdict

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
                owner = self._check_token(ask.token, owners.get(ask.hashed))
                contract = contracts.get((ask.hashed, ask.file_hash))
                if contract is None:
                    raise Refused("no_hash", "this token holds no contract for that file hash")
                earlier = recorded.get(request_ids[i])
                verdict = recorded_verdict(earlier.event_types if earlier else (), contract)
                decided.append(self._decide_answer(ask, owner, contract, request_ids[i], verdict))
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
    ) -> Decision:
        """One looked-up answer's decision: the recorded verdict, the late answer's expiry
        (its value ``EXPIRED``), or the verified verdict with its events."""
        assert self.scheme is not None
        if recorded is not None:
            return Decision(None, recorded)
        stream = ev.contract_stream(contract.contract_id)
        at, meta = from_micros(ask.now), ask.ctx.meta()
        guard = self._token_guard(owner)
        refused = cn.check_answerable(contract, ask.now)  # already_answered raises
        if refused:
            expiry = [e.to_new(at, meta) for e in refused]
            return Decision(AppendRequest(stream, contract.version, expiry, None, guard), EXPIRED)
        valid = self.scheme.verify(ask.proof, contract.challenge, contract.state)
        events = [e.to_new(at, meta) for e in cn.decide_answer(contract, ask.recorded, valid)]
        request = AppendRequest(stream, contract.version, events, request_id, guard)
        return Decision(request, "pass" if valid else "fail")

    async def remove(self, token: str, file_hash: str, ctx: Context = OPERATOR) -> None:
        owner = await self._token(token)
        for _ in range(RETRIES):
            contract = await self._read(
                lambda r, held_by=owner.token_hash: r.contract_for(held_by, file_hash)
            )
            events = cn.decide_remove(contract)
            assert contract is not None
            try:
                await self._append(
                    ev.contract_stream(contract.contract_id),
                    contract.version,
                    events,
                    ctx,
                    guards=self._token_guard(owner),
                )
                return
            except ConcurrencyConflict:
                owner = await self._token(token)  # no_token if it was deleted meanwhile
                continue
        raise Refused("busy", "too much contention on this contract; try again")

    async def sweep_expired(self, ctx: Context = OPERATOR, token_hash: str | None = None) -> int:
        """Mark contracts whose expiration passed, so their replicas return to the pool."""
        now = self._now()
        expired = await self._read(lambda r: r.expired_contracts(now, token_hash=token_hash))
        results = await asyncio.gather(
            *(
                self._append(ev.contract_stream(c.contract_id), c.version, cn.decide_expire(c), ctx)
                for c in expired
            ),
            return_exceptions=True,
        )
        return sum(1 for r in results if isinstance(r, AppendResult))

    async def health(self) -> dict[str, Any]:
        def probe(r: Reader) -> dict[str, Any]:
            return {
                "position": r.head_position,
                "projection_lag": r.lag(),
                "generation": r.t.generation,
            }

        # A stalled database (a lock held elsewhere, a dead connection) is reported, not
        # waited for: monitors get their 503 instead of a hung probe.
        return await asyncio.wait_for(self._read(probe), HEALTH_TIMEOUT)


def configured_fingerprint(node_stream: Iterable[RecordedEvent]) -> str | None:
    """The key fingerprint of the node stream's last ``HeartbeatConfigured``, if any."""
    configured = [e for e in node_stream if e.event_type == "HeartbeatConfigured"]
    return str(configured[-1].payload["key_fingerprint"]) if configured else None


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():  # the waiter may have given up (cancelled)
        future.set_result(None)


def _reason(exc: BaseException) -> str:
    return f"missing {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__


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


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return _sha256_stream(handle)


def _sha256_stream(handle: Any) -> str:
    digest = hashlib.sha256()
    while block := handle.read(HASH_BLOCK):
        digest.update(block)
    return digest.hexdigest()


def _is_balance(text: str) -> bool:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return False
    return value.is_finite() and value >= 0
