"""The reference farmer on the v1 API (``farm --api v1``), as farmer 0.1.8 speaks it: a signed
``POST /new``, ``/heartbeat`` to check a saved token, several contracts per ``/chunk``, and one
bulk ``/challenge`` and one bulk ``/answer`` per round for all its contracts.

Its signing key lives in the state file beside its tokens (``keys``: address -> private key,
hex; the file is mode 0600), made on first use; the operator whitelists its address.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import secrets
from pathlib import Path
from typing import Any

from ..domain.signatures import address_for, sign_message
from ..heartbeat import HeartbeatError
from .client import PREFIX, CannotStore, FarmerError, describe_error
from .loop import Farmer
from .proofs import corrupt_proof
from .state import STATE_FILE, Contract, read_state, write_private
from .storage import write_chunk

V1 = PREFIX + "/v1"
NO_TOKEN = "Nonexistent token."
DEFAULT_SIZE = 33554432  # bytes asked for per /chunk, farmer 0.1.8's default total


def load_key(directory: Path, address: str | None) -> bytes:
    """The private key kept in ``directory``'s state file: the one for ``address``, else the
    first kept, else a new one (saved). ``address`` without a key kept for it is an error."""
    path = directory / STATE_FILE
    state = read_state(path)  # UnreadableState: a key it holds must not be replaced
    keys = state.get("keys") if isinstance(state.get("keys"), dict) else {}
    if address is not None:
        if address not in keys:
            raise ValueError(f"{path} keeps no key for {address}; leave out --address to make one")
        return bytes.fromhex(keys[address])
    if keys:
        return bytes.fromhex(next(iter(keys.values())))
    key = secrets.token_bytes(32)
    state["keys"] = {address_for(key): key.hex()}
    write_private(path, json.dumps(state, sort_keys=True))
    return key


class V1Farmer(Farmer):
    """A ``Farmer`` whose protocol steps are the v1 API's (same state file, stats, events)."""

    def __init__(
        self,
        url: str,
        address: str | None = None,
        *,
        directory: str | Path,
        size: int = DEFAULT_SIZE,
        **kwargs: Any,
    ) -> None:
        self.key = load_key(Path(directory), address)
        super().__init__(url, address_for(self.key), directory=directory, **kwargs)
        self.size = size

    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """As ``Farmer.request``; the v1 API's ``Nonexistent token.`` is ``no_token``."""
        try:
            return await super().request(method, path, body)
        except FarmerError as exc:
            if exc.message == NO_TOKEN:
                raise FarmerError("no_token", exc.message, exc.http_status) from None
            raise

    async def register(self) -> str:
        self.check_writable()
        message = f"downstream-node reference farmer {self.address} {self.clock.now():%s}"
        signed = {"message": message, "signature": sign_message(self.key, message)}
        return self.registered(await self.request("POST", f"{V1}/new/{self.address}", signed))

    async def due(self) -> dict[str, Any]:
        """The token check of ``connect`` (the v1 API has no ``/due``)."""
        return await self.request("GET", f"{V1}/heartbeat/{self._need_token()}")

    async def _hand_back(self, file_hash: str) -> None:
        """The v1 API cannot end a contract: one we cannot keep lapses at its due time."""

    async def remove(self, file_hash: str) -> None:
        self._drop(file_hash)
        self.stats.removed += 1
        self._emit("removed", file_hash=file_hash)

    def _when(self, seconds: float) -> str:
        when = self.clock.now() + dt.timedelta(seconds=float(seconds))
        return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    async def take_contracts(self, limit: int) -> list[Contract]:
        """One ``/chunk`` for up to ``limit - held`` contracts' worth of ``size``; each chunk
        written from its seed (one that cannot be is dropped and lapses)."""
        token = self._need_token()
        if len(self.contracts) >= limit:
            return []
        data = await self.request("GET", f"{V1}/chunk/{token}/{self.size}")
        taken = []
        for item in data["chunks"][: limit - len(self.contracts)]:
            file_hash = str(item["file_hash"])
            path = self.directory / file_hash
            try:
                await asyncio.to_thread(write_chunk, item["seed"], item["size"], file_hash, path)
            except (FarmerError, OSError) as exc:
                reason = exc.message if isinstance(exc, FarmerError) else describe_error(exc)
                self.record_error(f"cannot store chunk: {reason}", file_hash)
                continue
            contract = Contract(
                file_hash=file_hash,
                seed=item["seed"],
                size=item["size"],
                tag=item["tag"],
                challenge=item["challenge"],
                due=self._when(item["due"]),
                expiration=self._when(item["due"]),
                path=path,
            )
            self.contracts[file_hash] = contract
            taken.append(contract)
            self.stats.taken += 1
            self._emit("contract", file_hash=file_hash, size=contract.size)
        self.save_state()
        return taken

    async def poll_and_answer(self, *, wrong: bool | None = None) -> dict[str, str]:
        """One bulk ``/challenge`` for every contract held, then one bulk ``/answer`` with a
        proof for each open challenge: ``{file_hash: verdict}`` as ``Farmer`` reports it."""
        token = self._need_token()
        wrong = self.wrong_proofs if wrong is None else wrong
        if not self.contracts:
            return {}
        data = await self.request(
            "POST", f"{V1}/challenge/{token}", {"hashes": list(self.contracts)}
        )
        todo = []
        for item in data["challenges"]:
            file_hash = str(item.get("file_hash"))
            contract = self.contracts.get(file_hash)
            if contract is None:
                continue
            if "challenge" not in item:  # expired, ended, out of challenges, unknown
                self._drop(file_hash)
                self.stats.lost += 1
                self._emit("lost", file_hash=file_hash)
                continue
            contract.challenge = item["challenge"]
            contract.due = contract.expiration = self._when(item["due"])
            if not item.get("answered"):
                todo.append(contract)
        proofs = []
        verdicts: dict[str, str] = {}
        for contract in todo:
            try:
                proof = await self.prove(contract.file_hash)
            except (OSError, HeartbeatError) as exc:
                try:
                    await self.repair(contract.file_hash)
                    proof = await self.prove(contract.file_hash)
                except (CannotStore, OSError, HeartbeatError):
                    self.record_error(describe_error(exc), contract.file_hash)
                    verdicts[contract.file_hash] = "error"
                    continue
            proofs.append(
                {"file_hash": contract.file_hash, "proof": corrupt_proof(proof) if wrong else proof}
            )
        if proofs:
            report = await self.request("POST", f"{V1}/answer/{token}", {"proofs": proofs})
            for item in report["report"]:
                file_hash = str(item["file_hash"])
                verdicts[file_hash] = verdict = self._verdict(item)
                if verdict in ("pass", "fail"):
                    await self.keep_receipt(file_hash, verdict, item.get("receipt"))
        for file_hash, verdict in verdicts.items():
            if verdict == "fail" and file_hash in self.contracts:
                # A damaged chunk (the node said so) is rewritten from its seed once per
                # challenge, and the next round answers the still open challenge again.
                with contextlib.suppress(CannotStore):
                    await self.repair(file_hash)
        self.save_state()
        return verdicts

    def _verdict(self, item: dict[str, Any]) -> str:
        file_hash = str(item["file_hash"])
        if item.get("status") == "ok":
            self.stats.passed += 1
            verdict = "pass"
        elif item.get("error") == "Invalid proof":
            self.stats.failed += 1  # the challenge stays open until it expires
            verdict = "fail"
        else:
            self.stats.refused += 1
            verdict = str(item.get("error", "error"))
            self._drop(file_hash, save=False)
        self._emit("answer", file_hash=file_hash, verdict=verdict)
        return verdict
