"""The operator's commands: the crowdsale whitelist, and the files the node monitors (real
files on disk, or seeded test chunks that farmers regenerate from their seed).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import structlog

from ..domain import events as ev
from ..domain import tokens as tk
from ..domain.errors import ConcurrencyConflict, Refused
from ..heartbeat.scheme import SeededChunk
from ..projections.queries import Reader
from .context import OPERATOR, Context
from .runtime import Runtime

log = structlog.get_logger("downstream.node")

HASH_BLOCK = 4 * 1024 * 1024
WHITELIST_BATCH = 1000  # events per append: one transaction each


class OperatorCommands:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def whitelist(self, entries: Sequence[tuple[str, str]], ctx: Context = OPERATOR) -> int:
        """Record (address, balance) pairs; returns how many changed.

        All or nothing: an invalid address or balance, or one address given two different
        balances, is refused before anything is written. An address already whitelisted
        with the same balance records nothing, so importing a file again is harmless."""
        bad = [a for a, _ in entries if not tk.is_valid_address(a)]
        if bad:
            raise Refused("invalid_address", f"not Base58Check addresses: {', '.join(bad[:5])}")
        # A balance the read model cannot parse would whitelist the address with none.
        unreadable = [
            f"{a}: {b!r} ({problem})"
            for a, b in entries
            if (problem := tk.balance_problem(str(b))) is not None
        ]
        if unreadable:
            raise Refused(
                "invalid_balance",
                f"balances must be non-negative decimal numbers: {', '.join(unreadable[:5])}",
            )
        wanted: dict[str, str] = {}
        for address, balance in entries:
            if address in wanted and Decimal(wanted[address]) != Decimal(str(balance)):
                raise Refused("invalid_balance", f"{address} is given two different balances")
            wanted[address] = str(balance)
        recorded = await self.rt.read(lambda r: r.balances(list(wanted)))
        events = [
            ev.AddressWhitelisted(address=a, balance=b)
            for a, b in wanted.items()
            if a not in recorded or _differ(recorded[a], b)
        ]
        for start in range(0, len(events), WHITELIST_BATCH):
            batch = events[start : start + WHITELIST_BATCH]
            await self.rt.append(ev.WHITELIST_STREAM, None, batch, ctx)
        return len(events)

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
        file_hash = await self.rt.run(_sha256_file, source)
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
        size = size or self.rt.settings.chunk_size
        if size <= 0:
            raise Refused("error", "size must be positive")
        seed = seed or secrets.token_hex(20)
        file_hash = await self.rt.run(_sha256_stream, SeededChunk(seed, size))
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
        settings = self.rt.settings
        redundancy = settings.redundancy if redundancy is None else redundancy
        interval = settings.interval if interval is None else interval
        if redundancy < 1 or interval < 1:
            raise Refused("error", "redundancy and interval must be at least 1")

        def state(r: Reader) -> tuple[int, bool]:
            # The stream's version before the projection: an add committed after the version
            # read makes the append conflict, one committed before it shows as monitored.
            return r.stream_version(ev.file_stream(file_hash)), r.file(file_hash) is not None

        version, monitored = await self.rt.read(state)
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
            await self.rt.append(ev.file_stream(file_hash), version, [event], ctx)
        except ConcurrencyConflict as exc:
            raise Refused("file_exists", f"file {file_hash} is already monitored") from exc
        log.info("file_added", file_hash=file_hash, size=size, seeded=seed is not None)
        return file_hash

    async def remove_file(self, file_hash: str, ctx: Context = OPERATOR) -> None:
        found = await self.rt.read(lambda r: r.file(file_hash))
        if found is None:
            raise Refused("no_hash", f"no monitored file {file_hash}")
        await self.rt.append(ev.file_stream(file_hash), None, [ev.FileRemoved(file_hash)], ctx)
        log.info("file_removed", file_hash=file_hash)


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return _sha256_stream(handle)


def _sha256_stream(handle: Any) -> str:
    digest = hashlib.sha256()
    while block := handle.read(HASH_BLOCK):
        digest.update(block)
    return digest.hexdigest()


def _differ(recorded: str, balance: str) -> bool:
    try:
        return Decimal(recorded) != Decimal(balance)
    except InvalidOperation:  # a recorded balance no one can read: replace it
        return True
