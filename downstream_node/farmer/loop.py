"""The Farmer: one address's token on one node, its contracts and chunks, each step of the
farmers' protocol (register, take, prove, answer, repair, remove) and the loop that runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from ..domain.clock import Clock, SystemClock
from ..domain.tokens import redact
from ..heartbeat import HeartbeatError, Merkle, Swizzle
from . import receipts
from .client import PREFIX, CannotStore, FarmerError, NodeClient, describe_error
from .proofs import beat_for, corrupt_proof, prove_file
from .state import STATE_FILE, Contract, UnreadableState, load_node, save_node, write_private
from .storage import intact, write_chunk

EventHook = Callable[["Farmer", str, dict[str, Any]], None]

# Answers to /new that say "not now" rather than "no": tried again after Retry-After. A
# refusal (400, 403, 404, a 429 too_many_tokens of the per-IP limit) ends the farmer.
TRY_AGAIN = {500, 502, 503, 504}


def _try_again(exc: FarmerError) -> bool:
    if exc.http_status == 429:
        return exc.status != "too_many_tokens"
    return exc.http_status in TRY_AGAIN


class CannotKeepState(FarmerError):
    """The farmer's directory cannot keep a token: the farmer ends rather than register
    tokens it would lose."""

    def __init__(self, reason: str) -> None:
        super().__init__("cannot_keep_state", reason, 0)


@dataclass
class FarmerStats:
    contracts: int = 0  # held now
    taken: int = 0
    passed: int = 0
    failed: int = 0
    refused: int = 0  # answers refused (expired, already_answered, ...)
    lost: int = 0  # contracts the node ended (expired, file removed, token deleted)
    removed: int = 0
    errors: int = 0  # transport errors and unexpected answers

    def todict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Farmer:
    def __init__(
        self,
        url: str,
        address: str,
        *,
        directory: str | Path,
        session: aiohttp.ClientSession | None = None,
        wrong_proofs: bool = False,
        name: str = "farmer",
        on_event: EventHook | None = None,
        timeout: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.address = address
        self.directory = Path(directory)
        self.wrong_proofs = wrong_proofs
        self.name = name
        self.on_event = on_event
        self.clock = clock or SystemClock()
        self.token: str | None = None
        self.heartbeat: dict[str, Any] | None = None
        self.contracts: dict[str, Contract] = {}
        self.unstorable: set[str] = set()  # chunks this run could not write: not taken again
        self.ended: str | None = None  # why the farming ended before its time, if it did
        self.stats = FarmerStats()
        self._beat: Merkle | Swizzle | None = None
        self.client = NodeClient(self.url, clock=self.clock, session=session, timeout=timeout)

    async def __aenter__(self) -> Farmer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.client.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _emit(self, kind: str, **data: Any) -> None:
        self.stats.contracts = len(self.contracts)
        if self.on_event is not None:
            self.on_event(self, kind, data)

    def record_error(self, error: str, file_hash: str | None = None) -> None:
        """Count an error in the stats and report it."""
        self.stats.errors += 1
        if file_hash is None:
            self._emit("error", error=error)
        else:
            self._emit("error", file_hash=file_hash, error=error)

    def _seconds_until(self, when: dt.datetime) -> float:
        return (when - self.clock.now()).total_seconds()

    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One API call: the JSON object on success, ``FarmerError`` on an error status.

        Waits out the node's last ``Retry-After`` first (cancel the caller to stop waiting).
        """
        return await self.client.request(method, path, body)

    def _need_token(self) -> str:
        if self.token is None:
            raise RuntimeError("register() first")
        return self.token

    # -- saved state ------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    def save_state(self) -> None:
        """Write the token, the heartbeat and the contracts for this node (others are kept)."""
        save_node(
            self.state_path,
            self.url,
            self.address,
            self.token,
            self.heartbeat,
            self.contracts,
        )

    def load_state(self) -> bool:
        """Take up the token saved for this node and address, with its contracts.

        As in the original client, a saved token for another address is not used.
        """
        saved = load_node(self.directory, self.url, self.address, self._warn)
        if saved is None:
            return False
        self.token, self.heartbeat, self._beat = saved.token, saved.heartbeat, saved.beat
        self.contracts = saved.contracts
        return True

    def _warn(self, error: str) -> None:
        self._emit("error", error=error)

    # -- the protocol ---------------------------------------------------------------------------

    async def register(self) -> str:
        """Get a new token for the address, and the node's public heartbeat."""
        self.check_writable()
        return self.registered(await self.request("GET", f"{PREFIX}/new/{self.address}"))

    def registered(self, data: dict[str, Any]) -> str:
        """Take up the token and heartbeat of a ``/new`` answer, saved at once."""
        self.token, self.heartbeat = data["token"], data["heartbeat"]
        self._beat = beat_for(data["heartbeat"])
        self.save_registered()
        self._emit("registered", token=redact(self.token))
        return self.token

    def check_writable(self) -> None:
        """Fail before asking for a token the state file could not keep: each token lost so
        counts against the node's tokens per IP address until the operator deletes it."""
        probe = self.directory / (STATE_FILE + ".probe")
        try:
            write_private(probe, "")
            probe.unlink()
        except OSError as exc:
            raise self._cannot_write(exc) from None

    def _cannot_write(self, exc: OSError) -> CannotKeepState:
        return CannotKeepState(f"cannot write in {self.directory}: {describe_error(exc)}")

    def save_registered(self) -> None:
        try:
            self.save_state()
        except OSError as exc:
            raise CannotKeepState(
                f"the new token could not be saved ({describe_error(exc)}); the node keeps "
                "it until the operator deletes it"
            ) from None

    async def connect(self) -> str:
        """Go on with the token saved for this node and address, else register a new one."""
        if self.load_state():
            try:
                await self.due()  # is the token still the node's?
            except FarmerError as exc:
                if exc.status != "no_token":
                    raise
                self._emit("error", error="the node no longer knows our saved token")
                self._forget_token()
            else:
                assert self.token is not None
                self._emit("resumed", token=redact(self.token), contracts=len(self.contracts))
                return self.token
        return await self.register()

    async def take_contract(self) -> Contract | None:
        """One new contract with its chunk written to disk; None when the node has none.

        A chunk that cannot be written is handed back and ``CannotStore`` raised; one that
        failed before in this run is handed back without trying again.
        """
        token = self._need_token()
        try:
            data = await self.request("GET", f"{PREFIX}/chunk/{token}")
        except FarmerError as exc:
            if exc.status == "no_chunks":
                return None
            raise
        file_hash = data["file_hash"]
        path = self.directory / file_hash
        if file_hash in self.unstorable:
            await self._hand_back(file_hash)
            raise CannotStore(file_hash, "this chunk could not be stored earlier in this run")
        try:
            await asyncio.to_thread(write_chunk, data["seed"], data["size"], file_hash, path)
        except (FarmerError, OSError) as exc:
            # Not a seeded chunk we can regenerate (an operator's real file), or a full
            # disk: hand it back at once rather than hold a contract we cannot prove. Only
            # the first is the chunk's fault: after a disk error the chunk may be taken
            # again once there is room.
            local = isinstance(exc, OSError)
            if not local:
                self.unstorable.add(file_hash)
            await self._hand_back(file_hash)
            reason = exc.message if isinstance(exc, FarmerError) else describe_error(exc)
            self.record_error(f"cannot store chunk: {reason}", file_hash)
            raise CannotStore(file_hash, reason, local=local) from exc
        contract = Contract(
            file_hash=file_hash,
            seed=data["seed"],
            size=data["size"],
            tag=data["tag"],
            challenge=data["challenge"],
            due=data["due"],
            expiration=data["expiration"],
            path=path,
        )
        self.contracts[contract.file_hash] = contract
        self.save_state()
        self.stats.taken += 1
        self._emit("contract", file_hash=contract.file_hash, size=contract.size)
        return contract

    async def _hand_back(self, file_hash: str) -> None:
        """End a contract we cannot keep; if the node does not hear it, it lapses anyway."""
        with contextlib.suppress(FarmerError, aiohttp.ClientError, TimeoutError):
            await self.request("GET", f"{PREFIX}/remove/{self._need_token()}/{file_hash}")

    async def take_contracts(self, limit: int) -> list[Contract]:
        """Take contracts until the node has none left for us or we hold ``limit``.

        A chunk it cannot store is handed back and the next one asked for (this node does not
        offer a handed-back chunk again soon); a node that offers the same one again, or a
        disk that refused a chunk (it would refuse the next one too), ends the round.
        """
        taken: list[Contract] = []
        handed_back: set[str] = set()
        while len(self.contracts) < limit:
            try:
                contract = await self.take_contract()
            except CannotStore as refused:
                if refused.local or refused.file_hash in handed_back:
                    break
                handed_back.add(refused.file_hash)
                continue
            if contract is None:
                break
            taken.append(contract)
        return taken

    async def due(self) -> dict[str, Any]:
        return await self.request("GET", f"{PREFIX}/due/{self._need_token()}")

    async def prove(self, file_hash: str, challenge: dict[str, Any] | None = None) -> dict:
        """The proof of ``file_hash``'s current (or the given) challenge, from the file."""
        contract = self.contracts[file_hash]
        beat = self._beat
        assert beat is not None, "register() first"

        def work() -> dict[str, Any]:
            return prove_file(beat, contract.path, challenge or contract.challenge, contract.tag)

        return await asyncio.to_thread(work)

    async def repair(self, file_hash: str, challenge: dict[str, Any] | None = None) -> bool:
        """Rewrite a missing or damaged chunk from its seed, at most once per challenge.

        True if it was rewritten (a new proof is worth sending), False if the file was
        intact or was rewritten for this challenge already. A chunk that cannot be
        rewritten is handed back to the node and ``CannotStore`` raised.
        """
        contract = self.contracts[file_hash]
        challenge = challenge or contract.challenge
        if contract.repaired == challenge:
            return False
        contract.repaired = challenge
        if await asyncio.to_thread(intact, contract.path, contract.size, file_hash):
            return False
        try:
            await asyncio.to_thread(
                write_chunk, contract.seed, contract.size, file_hash, contract.path
            )
        except (FarmerError, OSError) as exc:
            reason = exc.message if isinstance(exc, FarmerError) else describe_error(exc)
            self.unstorable.add(file_hash)
            self.record_error(f"cannot rewrite chunk: {reason}", file_hash)
            await self._hand_back(file_hash)
            self._drop(file_hash)
            self.stats.removed += 1
            self._emit("removed", file_hash=file_hash)
            raise CannotStore(file_hash, reason) from exc
        self._emit("repaired", file_hash=file_hash)
        return True

    async def answer(
        self,
        file_hash: str,
        *,
        wrong: bool | None = None,
        proof: Any = None,
        challenge: dict[str, Any] | None = None,
    ) -> str:
        """Answer the contract's challenge: ``"pass"`` or ``"fail"`` (``FarmerError`` if
        refused). ``wrong`` sends a deliberately corrupted proof; ``proof`` sends as is.

        A chunk that cannot be read, or whose proof fails, is checked against its hash and
        rewritten from its seed if damaged; after a fail (the challenge is still open) the
        new proof is sent."""
        if proof is not None:
            return await self._send(file_hash, proof)
        wrong = self.wrong_proofs if wrong is None else wrong
        try:
            proof = await self.prove(file_hash, challenge)
        except (OSError, HeartbeatError):
            if not await self.repair(file_hash, challenge):
                raise
            proof = await self.prove(file_hash, challenge)
        verdict = await self._send(file_hash, corrupt_proof(proof) if wrong else proof)
        if verdict == "fail" and not wrong and await self.repair(file_hash, challenge):
            verdict = await self._send(file_hash, await self.prove(file_hash, challenge))
        return verdict

    async def _send(self, file_hash: str, proof: Any) -> str:
        token = self._need_token()
        try:
            data = await self.request(
                "POST", f"{PREFIX}/answer/{token}/{file_hash}", {"proof": proof}
            )
        except FarmerError as exc:
            self.stats.refused += 1
            if exc.status in ("expired", "no_hash"):
                self._drop(file_hash)
            self._emit("refused", file_hash=file_hash, status=exc.status)
            raise
        verdict = str(data["status"])
        if verdict == "pass":
            self.stats.passed += 1
        else:
            self.stats.failed += 1
        await self.keep_receipt(file_hash, verdict, data.get("receipt"))
        self._emit("answer", file_hash=file_hash, verdict=verdict)
        return verdict

    async def keep_receipt(self, file_hash: str, verdict: str, receipt: Any) -> None:
        """Keep a verdict's receipt, if the node sent one, to show later (``receipts
        verify``) that the node still holds this verdict."""
        if isinstance(receipt, str):
            await asyncio.to_thread(
                receipts.keep, self.directory, self.url, file_hash, verdict, receipt
            )

    async def poll_and_answer(self, *, wrong: bool | None = None) -> dict[str, str]:
        """Poll ``due``, forget contracts the node ended, answer every open challenge.

        Returns ``{file_hash: verdict}`` with ``pass``/``fail``, the refusal's status word,
        ``cannot_store`` (handed back) or ``error``.
        """
        data = await self.due()
        live = {item["hash"] for item in data["all_contracts"]}
        for file_hash in [h for h in self.contracts if h not in live]:
            self._drop(file_hash)
            self.stats.lost += 1
            self._emit("lost", file_hash=file_hash)
        todo = []
        for item in data["due_contracts"]:
            contract = self.contracts.get(item["hash"])
            if contract is None:  # taken by an earlier run of this farmer: no tag to prove
                continue
            contract.challenge = item["challenge"]
            contract.due = item.get("due", contract.due)
            contract.expiration = item.get("expiration", contract.expiration)
            todo.append(contract.file_hash)

        async def one(file_hash: str) -> str:
            try:
                return await self.answer(file_hash, wrong=wrong)
            except FarmerError as exc:
                return exc.status
            except (HeartbeatError, OSError) as exc:
                self.record_error(describe_error(exc), file_hash)
                return "error"

        verdicts = await asyncio.gather(*(one(h) for h in todo))
        return dict(zip(todo, verdicts, strict=True))

    async def remove(self, file_hash: str) -> None:
        """End the contract on ``file_hash`` and delete the chunk from disk."""
        await self.request("GET", f"{PREFIX}/remove/{self._need_token()}/{file_hash}")
        self._drop(file_hash)
        self.stats.removed += 1
        self._emit("removed", file_hash=file_hash)

    def _forget_token(self) -> None:
        """The node no longer knows our token: its contracts are over too (the state file
        keeps them until the new token is saved, should the registration fail)."""
        for file_hash in list(self.contracts):
            self._drop(file_hash, save=False)
        self.token = None

    def _drop(self, file_hash: str, *, save: bool = True) -> None:
        contract = self.contracts.pop(file_hash, None)
        if contract is not None:
            # The contract is over whatever is on disk; a path we cannot delete (say, a
            # directory in the chunk's place) must not keep it in our books.
            with contextlib.suppress(OSError):
                contract.path.unlink(missing_ok=True)
            if save:
                self.save_state()
        self.stats.contracts = len(self.contracts)

    # -- the loop -------------------------------------------------------------------------------

    async def run(
        self,
        *,
        duration: float | None = None,
        max_contracts: int = 10,
        poll_seconds: float = 5.0,
        retake_seconds: float = 30.0,
        stop: asyncio.Event | None = None,
    ) -> FarmerStats:
        """Farm until ``duration`` seconds pass (forever if None) or ``stop`` is set.

        Either ends the farming at once, also in the middle of a request or of a wait
        for the node's ``Retry-After``.
        """
        stop = stop or asyncio.Event()
        with self._locked():
            farming = asyncio.ensure_future(
                self._farm(duration, max_contracts, poll_seconds, retake_seconds, stop)
            )
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait(
                    {farming, stopping}, timeout=duration, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stopping.cancel()
                if not farming.done():
                    farming.cancel()
                    await asyncio.wait({farming})
            if not farming.cancelled():
                farming.result()  # what ended the farming early, if anything
        return self.stats

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the farmer directory's lock for the run: two farmers on one directory
        would share a token and write over each other's state file, each losing the
        contracts the other took."""
        path = self.directory / (STATE_FILE + ".lock")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._cannot_write(exc) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FarmerError(
                    "in_use", f"another farmer is running in {self.directory}", 0
                ) from None
            yield
        finally:
            os.close(fd)  # and the lock with it

    async def _connect_or_wait(self) -> bool:
        """``connect()``; ``False`` (recorded as an error) when the node answered 503 or could
        not be reached, so that the farm loop tries again in its next round, after the
        node's ``Retry-After`` (``request`` waits it out). A refusal (a bad address, too
        many tokens) still ends the farming."""
        try:
            await self.connect()
            return True
        except UnreadableState:
            raise
        except FarmerError as exc:
            if not _try_again(exc):
                raise
            self.record_error(f"registration: {exc}")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.record_error(f"registration: {type(exc).__name__}: {describe_error(exc)}")
        return False

    async def _farm(
        self,
        duration: float | None,
        max_contracts: int,
        poll_seconds: float,
        retake_seconds: float,
        stop: asyncio.Event,
    ) -> None:
        started = self.clock.now()
        deadline = None if duration is None else started + dt.timedelta(seconds=duration)
        next_take = started

        def going_on() -> bool:
            return not stop.is_set() and (deadline is None or self.clock.now() < deadline)

        async def pause() -> None:
            wait = poll_seconds
            if deadline is not None:
                wait = min(wait, max(0.0, self._seconds_until(deadline)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)

        # Registration is tried again after a 503 or a connection error, as every other
        # request is (a refusal still ends the farming); so is a token the node forgot.
        while going_on():
            if self.token is None and not await self._connect_or_wait():
                await pause()
                continue
            try:
                if len(self.contracts) < max_contracts and self.clock.now() >= next_take:
                    await self.take_contracts(max_contracts)
                    if len(self.contracts) < max_contracts:
                        next_take = self.clock.now() + dt.timedelta(seconds=retake_seconds)
                await self.poll_and_answer()
            except FarmerError as exc:
                if exc.status == "no_token":
                    self._emit("error", error="the node no longer knows our token")
                    self._forget_token()
                    next_take = self.clock.now()  # and takes contracts again at once
                    continue
                self.record_error(str(exc))
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self.record_error(f"{type(exc).__name__}: {describe_error(exc)}")
            await pause()
