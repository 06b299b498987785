"""The reference farmer: an async client of the farmers' API, usable from tests and the CLI.

A ``Farmer`` gets a token for its address, takes chunk contracts, regenerates each chunk from
its seed into a file on disk (streamed, checked against the file hash), polls ``due`` and
answers every open challenge with ``Heartbeat.fromdict(public).prove(file, challenge, tag)``.
Errors from the node arrive as ``FarmerError(status, message, http_status)``; a reply's
``Retry-After`` is honoured before the farmer's next request to that node.

Each farmer keeps its token, the node's public heartbeat and its contracts in
``<directory>/state.json`` (mode 0600: the token is a secret), keyed by node URL like the
original client's history file, so a restarted farmer goes on with the same token.

    async with Farmer(url, address, directory=path) as farmer:
        await farmer.register()
        await farmer.take_contracts(3)
        verdicts = await farmer.poll_and_answer()    # {file_hash: "pass" | "fail" | word}

``downstream-node farm`` runs ``run_farmers`` with a live display.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import email.utils
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ..domain.clock import Clock, SystemClock
from ..domain.tokens import redact
from ..heartbeat import HeartbeatError, Merkle, SeededChunk, Swizzle

PREFIX = "/api/downstream"
WRITE_BLOCK = 1024 * 1024
STATE_FILE = "state.json"
MAX_RETRY_AFTER = 300.0  # seconds: a node's Retry-After beyond this is not waited out in full

EventHook = Callable[["Farmer", str, dict[str, Any]], None]


class FarmerError(Exception):
    """The node refused a request (or answered something that is not the API)."""

    def __init__(
        self, status: str, message: str, http_status: int, retry_after: float | None = None
    ) -> None:
        text = f"{http_status} {status}: {message}"
        if retry_after is not None:
            text += f" (retry after {retry_after:g} s)"
        super().__init__(text)
        self.status = status
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after


class CannotStore(FarmerError):
    """A contract's chunk could not be written (not derivable from its seed, or the disk
    refused it: ``local``); the contract was handed back."""

    def __init__(self, file_hash: str, reason: str, *, local: bool = False) -> None:
        super().__init__("cannot_store", reason, 0)
        self.file_hash = file_hash
        self.local = local


@dataclass
class Contract:
    file_hash: str
    seed: str
    size: int
    tag: dict[str, Any]
    challenge: dict[str, Any]
    due: str
    expiration: str
    path: Path
    repaired: dict[str, Any] | None = None  # the challenge the chunk was last rewritten for

    def todict(self) -> dict[str, Any]:
        keys = ("seed", "size", "tag", "challenge", "due", "expiration")
        return {key: getattr(self, key) for key in keys}


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


def _beat_for(public: dict[str, Any]) -> Merkle | Swizzle:
    """The node's public heartbeat: Swizzle's carries a prime, Merkle's a check fraction."""
    if isinstance(public, dict) and "prime" in public:
        return Swizzle.fromdict(public)
    return Merkle.fromdict(public)


def corrupt_proof(proof: dict[str, Any]) -> dict[str, Any]:
    """A well-formed but wrong proof: the node answers ``fail``, not ``bad_proof_format``."""
    if "leaf" in proof:  # Merkle: flip a bit of the leaf's HMAC
        blob = bytearray(base64.b64decode(proof["leaf"]["blob"]))
        blob[0] ^= 0x01
        leaf = {**proof["leaf"], "blob": base64.b64encode(bytes(blob)).decode()}
        return {**proof, "leaf": leaf}
    return {**proof, "sigma": int(proof["sigma"]) ^ 1}  # Swizzle


def write_chunk(seed: str, size: int, file_hash: str, path: Path) -> Path:
    """Regenerate a seeded chunk into ``path`` in blocks, checking it against its hash.

    An existing file of the right size and hash is kept, so a restarted farmer reuses it.
    """
    if intact(path, size, file_hash):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    source = SeededChunk(seed, size)
    with open(tmp, "wb") as out:
        while block := source.read(WRITE_BLOCK):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != file_hash:
        tmp.unlink(missing_ok=True)
        raise FarmerError(
            "error", f"the chunk regenerated from its seed does not hash to {file_hash}", 0
        )
    os.replace(tmp, path)
    return path


def intact(path: Path, size: int, file_hash: str) -> bool:
    """Whether ``path`` holds the chunk: its size and hash (unreadable counts as damaged)."""
    try:
        return path.is_file() and path.stat().st_size == size and _sha256(path) == file_hash
    except OSError:
        return False


def retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), bounded."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, MAX_RETRY_AFTER))


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.unlink(missing_ok=True)  # a leftover could have a wider mode, which open() keeps
    with open(tmp, "w", encoding="utf-8", opener=lambda p, f: os.open(p, f, 0o600)) as out:
        out.write(text)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(WRITE_BLOCK):
            digest.update(block)
    return digest.hexdigest()


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
        self.stats = FarmerStats()
        self._beat: Merkle | Swizzle | None = None
        self._session = session
        self._own_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._not_before: dt.datetime | None = None  # from the node's last Retry-After

    async def __aenter__(self) -> Farmer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- plumbing -------------------------------------------------------------------------------

    def _emit(self, kind: str, **data: Any) -> None:
        self.stats.contracts = len(self.contracts)
        if self.on_event is not None:
            self.on_event(self, kind, data)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    def _seconds_until(self, when: dt.datetime) -> float:
        return (when - self.clock.now()).total_seconds()

    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One API call: the JSON object on success, ``FarmerError`` on an error status.

        Waits out the node's last ``Retry-After`` first (cancel the caller to stop waiting).
        """
        if self._not_before is not None:
            wait = self._seconds_until(self._not_before)
            if wait > 0:
                await asyncio.sleep(wait)
            self._not_before = None
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        try:
            async with self._http().request(
                method, self.url + path, timeout=self._timeout, **kwargs
            ) as response:
                text = await response.text()
                after = retry_after(response.headers.get("Retry-After"), self.clock.now())
        except TimeoutError as exc:
            # aiohttp's timeout carries no message: the user saw "cannot reach ...: ".
            raise TimeoutError(f"timed out after {self._timeout.total:g} s") from exc
        if response.status >= 400 and after is not None:
            self._not_before = self.clock.now() + dt.timedelta(seconds=after)
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise FarmerError("error", f"not a JSON object: {text[:200]!r}", response.status, after)
        if response.status >= 400:
            raise FarmerError(
                str(data.get("status", "error")),
                str(data.get("message", "")),
                response.status,
                after,
            )
        return data

    def _need_token(self) -> str:
        if self.token is None:
            raise RuntimeError("register() first")
        return self.token

    # -- saved state ------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            self._emit("error", error=f"ignoring unreadable {self.state_path}: {_describe(exc)}")
            return {}
        return state if isinstance(state, dict) else {}

    def save_state(self) -> None:
        """Write the token, the heartbeat and the contracts for this node (others are kept)."""
        state = self._read_state()
        nodes = state.get("nodes")
        if not isinstance(nodes, dict):
            nodes = state["nodes"] = {}
        if self.token is None:
            nodes.pop(self.url, None)
        else:
            nodes[self.url] = {
                "address": self.address,
                "token": self.token,
                "heartbeat": self.heartbeat,
                "contracts": {h: c.todict() for h, c in self.contracts.items()},
            }
        _write_private(self.state_path, json.dumps(state, sort_keys=True))

    def load_state(self) -> bool:
        """Take up the token saved for this node and address, with its contracts.

        As in the original client, a saved token for another address is not used.
        """
        try:
            saved = self._read_state()["nodes"][self.url]
            if saved["address"] != self.address:
                return False
            token, heartbeat = str(saved["token"]), saved["heartbeat"]
            beat = _beat_for(heartbeat)
            contracts = {
                h: Contract(
                    file_hash=h,
                    seed=c["seed"],
                    size=int(c["size"]),
                    tag=c["tag"],
                    challenge=c["challenge"],
                    due=c["due"],
                    expiration=c["expiration"],
                    path=self.directory / h,
                )
                for h, c in saved.get("contracts", {}).items()
            }
        except (KeyError, TypeError, ValueError, AttributeError, HeartbeatError):
            return False
        self.token, self.heartbeat, self._beat = token, heartbeat, beat
        self.contracts = contracts
        return True

    # -- the protocol ---------------------------------------------------------------------------

    async def register(self) -> str:
        """Get a new token for the address, and the node's public heartbeat."""
        data = await self.request("GET", f"{PREFIX}/new/{self.address}")
        self.token, self.heartbeat = data["token"], data["heartbeat"]
        self._beat = _beat_for(data["heartbeat"])
        self.save_state()
        self._emit("registered", token=redact(self.token))
        return self.token

    async def connect(self) -> str:
        """Go on with the token saved for this node and address, else register a new one."""
        if self.load_state():
            try:
                await self.due()  # is the token still the node's?
            except FarmerError as exc:
                if exc.status != "no_token":
                    raise
                self._emit("error", error="the node no longer knows our saved token")
                for file_hash in list(self.contracts):
                    self._drop(file_hash, save=False)
                self.token = None
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
            reason = exc.message if isinstance(exc, FarmerError) else _describe(exc)
            self.stats.errors += 1
            self._emit("error", file_hash=file_hash, error=f"cannot store chunk: {reason}")
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
            with open(contract.path, "rb") as handle:
                return beat.prove(handle, challenge or contract.challenge, contract.tag).todict()

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
            reason = exc.message if isinstance(exc, FarmerError) else _describe(exc)
            self.unstorable.add(file_hash)
            self.stats.errors += 1
            self._emit("error", file_hash=file_hash, error=f"cannot rewrite chunk: {reason}")
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
        self._emit("answer", file_hash=file_hash, verdict=verdict)
        return verdict

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
                self.stats.errors += 1
                self._emit("error", file_hash=file_hash, error=_describe(exc))
                return "error"

        verdicts = await asyncio.gather(*(one(h) for h in todo))
        return dict(zip(todo, verdicts, strict=True))

    async def remove(self, file_hash: str) -> None:
        """End the contract on ``file_hash`` and delete the chunk from disk."""
        await self.request("GET", f"{PREFIX}/remove/{self._need_token()}/{file_hash}")
        self._drop(file_hash)
        self.stats.removed += 1
        self._emit("removed", file_hash=file_hash)

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
        if self.token is None:
            await self.connect()
        next_take = started
        while not stop.is_set() and (deadline is None or self.clock.now() < deadline):
            try:
                if len(self.contracts) < max_contracts and self.clock.now() >= next_take:
                    await self.take_contracts(max_contracts)
                    if len(self.contracts) < max_contracts:
                        next_take = self.clock.now() + dt.timedelta(seconds=retake_seconds)
                await self.poll_and_answer()
            except FarmerError as exc:
                if exc.status == "no_token":
                    self._emit("error", error="the node no longer knows our token")
                    break
                self.stats.errors += 1
                self._emit("error", error=str(exc))
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self.stats.errors += 1
                self._emit("error", error=f"{type(exc).__name__}: {_describe(exc)}")
            wait = poll_seconds
            if deadline is not None:
                wait = min(wait, max(0.0, self._seconds_until(deadline)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)


@dataclass
class Swarm:
    """Several farmers on one address (each with its own token and directory)."""

    farmers: list[Farmer] = field(default_factory=list)

    def totals(self) -> FarmerStats:
        total = FarmerStats()
        for farmer in self.farmers:
            for key, value in farmer.stats.todict().items():
                setattr(total, key, getattr(total, key) + value)
        return total


async def run_farmers(
    url: str,
    address: str,
    *,
    farmers: int = 1,
    directory: str | Path = "farm-data",
    duration: float | None = None,
    max_contracts: int = 10,
    poll_seconds: float = 5.0,
    wrong_proofs: bool = False,
    on_event: EventHook | None = None,
    stop: asyncio.Event | None = None,
    swarm: Swarm | None = None,
) -> Swarm:
    """Run ``farmers`` farmers side by side until ``duration`` passes or ``stop`` is set.

    Farmers whose registration the node refuses are reported through ``on_event`` and end;
    the others go on. Pass ``swarm`` to watch the farmers while they run.
    """
    stop = stop or asyncio.Event()
    swarm = swarm if swarm is not None else Swarm()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for i in range(farmers):
            swarm.farmers.append(
                Farmer(
                    url,
                    address,
                    directory=Path(directory) / f"farmer-{i + 1}",
                    session=session,
                    wrong_proofs=wrong_proofs,
                    name=f"farmer-{i + 1}",
                    on_event=on_event,
                )
            )

        async def one(farmer: Farmer) -> None:
            try:
                await farmer.run(
                    duration=duration,
                    max_contracts=max_contracts,
                    poll_seconds=poll_seconds,
                    stop=stop,
                )
            except FarmerError as exc:
                farmer.stats.errors += 1
                farmer._emit("error", error=str(exc))
            except (TimeoutError, aiohttp.ClientError) as exc:
                farmer.stats.errors += 1
                farmer._emit("error", error=f"cannot reach {url}: {_describe(exc)}")
            except OSError as exc:  # its directory or state file
                farmer.stats.errors += 1
                farmer._emit("error", error=f"{type(exc).__name__}: {_describe(exc)}")

        await asyncio.gather(*(one(f) for f in swarm.farmers))
    return swarm
