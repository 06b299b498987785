"""The reference farmer: an async client of the farmers' API, usable from tests and the CLI.

A ``Farmer`` gets a token for its address, takes chunk contracts, regenerates each chunk from
its seed into a file on disk (streamed, checked against the file hash), polls ``due`` and
answers every open challenge with ``Heartbeat.fromdict(public).prove(file, challenge, tag)``.
Errors from the node arrive as ``FarmerError(status, message, http_status)``.

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
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .ledger.heartbeat import HeartbeatError, Merkle, SeededChunk, Swizzle
from .ledger.tokens import redact

PREFIX = "/api/downstream"
WRITE_BLOCK = 1024 * 1024

EventHook = Callable[["Farmer", str, dict[str, Any]], None]


class FarmerError(Exception):
    """The node refused a request (or answered something that is not the API)."""

    def __init__(self, status: str, message: str, http_status: int) -> None:
        super().__init__(f"{http_status} {status}: {message}")
        self.status = status
        self.message = message
        self.http_status = http_status


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
    if path.is_file() and path.stat().st_size == size and _sha256(path) == file_hash:
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
    ) -> None:
        self.url = url.rstrip("/")
        self.address = address
        self.directory = Path(directory)
        self.wrong_proofs = wrong_proofs
        self.name = name
        self.on_event = on_event
        self.token: str | None = None
        self.heartbeat: dict[str, Any] | None = None
        self.contracts: dict[str, Contract] = {}
        self.stats = FarmerStats()
        self._beat: Merkle | Swizzle | None = None
        self._session = session
        self._own_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

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

    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One API call: the JSON object on success, ``FarmerError`` on an error status."""
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        async with self._http().request(method, self.url + path, **kwargs) as response:
            text = await response.text()
            try:
                data = json.loads(text)
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise FarmerError("error", f"not a JSON object: {text[:200]!r}", response.status)
            if response.status >= 400:
                raise FarmerError(
                    str(data.get("status", "error")), str(data.get("message", "")), response.status
                )
            return data

    def _need_token(self) -> str:
        if self.token is None:
            raise RuntimeError("register() first")
        return self.token

    # -- the protocol ---------------------------------------------------------------------------

    async def register(self) -> str:
        """Get a token for the address, and the node's public heartbeat."""
        data = await self.request("GET", f"{PREFIX}/new/{self.address}")
        self.token, self.heartbeat = data["token"], data["heartbeat"]
        self._beat = _beat_for(data["heartbeat"])
        self._emit("registered", token=redact(self.token))
        return self.token

    async def take_contract(self) -> Contract | None:
        """One new contract with its chunk written to disk; None when the node has none."""
        token = self._need_token()
        try:
            data = await self.request("GET", f"{PREFIX}/chunk/{token}")
        except FarmerError as exc:
            if exc.status == "no_chunks":
                return None
            raise
        path = self.directory / data["file_hash"]
        try:
            await asyncio.to_thread(
                write_chunk, data["seed"], data["size"], data["file_hash"], path
            )
        except FarmerError:
            # Not a seeded chunk we can regenerate (an operator's real file): hand it back
            # at once rather than hold a contract we cannot prove.
            with contextlib.suppress(FarmerError, aiohttp.ClientError):
                await self.request("GET", f"{PREFIX}/remove/{token}/{data['file_hash']}")
            self._emit("error", file_hash=data["file_hash"], error="cannot regenerate chunk")
            raise
        contract = Contract(
            file_hash=data["file_hash"],
            seed=data["seed"],
            size=data["size"],
            tag=data["tag"],
            challenge=data["challenge"],
            due=data["due"],
            expiration=data["expiration"],
            path=path,
        )
        self.contracts[contract.file_hash] = contract
        self.stats.taken += 1
        self._emit("contract", file_hash=contract.file_hash, size=contract.size)
        return contract

    async def take_contracts(self, limit: int) -> list[Contract]:
        """Take contracts until the node has none left for us or we hold ``limit``."""
        taken = []
        while len(self.contracts) < limit:
            contract = await self.take_contract()
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

    async def answer(
        self,
        file_hash: str,
        *,
        wrong: bool | None = None,
        proof: Any = None,
        challenge: dict[str, Any] | None = None,
    ) -> str:
        """Answer the contract's challenge: ``"pass"`` or ``"fail"`` (``FarmerError`` if
        refused). ``wrong`` sends a deliberately corrupted proof; ``proof`` sends as is."""
        token = self._need_token()
        if proof is None:
            proof = await self.prove(file_hash, challenge)
            if self.wrong_proofs if wrong is None else wrong:
                proof = corrupt_proof(proof)
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

        Returns ``{file_hash: verdict}`` with ``pass``/``fail`` or the refusal's status word.
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
            except HeartbeatError as exc:
                self.stats.errors += 1
                self._emit("error", file_hash=file_hash, error=str(exc))
                return "error"

        verdicts = await asyncio.gather(*(one(h) for h in todo))
        return dict(zip(todo, verdicts, strict=True))

    async def remove(self, file_hash: str) -> None:
        """End the contract on ``file_hash`` and delete the chunk from disk."""
        await self.request("GET", f"{PREFIX}/remove/{self._need_token()}/{file_hash}")
        self._drop(file_hash)
        self.stats.removed += 1
        self._emit("removed", file_hash=file_hash)

    def _drop(self, file_hash: str) -> None:
        contract = self.contracts.pop(file_hash, None)
        if contract is not None:
            contract.path.unlink(missing_ok=True)
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
        """Farm until ``duration`` seconds pass (forever if None) or ``stop`` is set."""
        stop = stop or asyncio.Event()
        if self.token is None:
            await self.register()
        deadline = None if duration is None else time.monotonic() + duration
        next_take = 0.0
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                if len(self.contracts) < max_contracts and time.monotonic() >= next_take:
                    await self.take_contracts(max_contracts)
                    if len(self.contracts) < max_contracts:
                        next_take = time.monotonic() + retake_seconds
                await self.poll_and_answer()
            except FarmerError as exc:
                if exc.status == "no_token":
                    self._emit("error", error="the node no longer knows our token")
                    break
                self.stats.errors += 1
                self._emit("error", error=str(exc))
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.stats.errors += 1
                self._emit("error", error=f"{type(exc).__name__}: {exc}")
            wait = poll_seconds
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
        return self.stats


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
                farmer._emit("error", error=f"cannot reach {url}: {exc}")

        await asyncio.gather(*(one(f) for f in swarm.farmers))
    return swarm
