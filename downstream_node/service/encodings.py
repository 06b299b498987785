"""Chunk encodings for new contracts, the node's heaviest work: one at a time per file, a
bounded number at once in all (worker threads stay free for reads, /health among them), and
an encoding made for an assignment that did not happen kept for the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..domain import contracts as cn
from ..heartbeat.scheme import SeededChunk
from .runtime import Runtime

SPARES_PER_FILE = 2
SPARE_SECONDS = 60  # an encoding's tag carries its time; an old one is not handed out


@dataclass(frozen=True)
class Encoding:
    """A fresh encoding of a file and its first challenge, made at ``made`` (microseconds)."""

    tag: dict[str, Any]
    initial_state: dict[str, Any]
    challenge: dict[str, Any]
    state: dict[str, Any]
    made: int


class Encodings:
    def __init__(self, rt: Runtime, parallel: int) -> None:
        self.rt = rt
        self.made = 0  # encodings made by this node since it started
        self._slots = asyncio.Semaphore(parallel)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._spares: dict[str, list[Encoding]] = {}

    @contextlib.asynccontextmanager
    async def of_file(self, file_hash: str) -> AsyncIterator[None]:
        """Held while a request encodes ``file_hash`` and appends its contract: requests for
        the same file wait here rather than each encoding it, which only one may use."""
        lock, users = self._locks.get(file_hash, (asyncio.Lock(), 0))
        self._locks[file_hash] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[file_hash]
            if users == 1:
                del self._locks[file_hash]
            else:
                self._locks[file_hash] = (lock, users - 1)

    async def take(self, file: cn.FileView, now: int) -> Encoding:
        """A spare encoding of ``file`` if one is fresh, else a new one (in a worker thread,
        within the bound on encodings at once). Raises what reading the file raises."""
        spares = self._spares.get(file.file_hash, [])
        while spares:
            spare = spares.pop()
            if now - spare.made <= SPARE_SECONDS * 1_000_000:
                return spare
        async with self._slots:
            tag, initial, challenge, state = await self.rt.run(self.encode, file, now)
        self.made += 1
        return Encoding(tag, initial, challenge, state, now)

    def keep(self, file_hash: str, encoding: Encoding) -> None:
        """Keep an encoding whose contract was not appended, for the file's next request."""
        spares = self._spares.setdefault(file_hash, [])
        if len(spares) < SPARES_PER_FILE:
            spares.append(encoding)

    def encode(self, file: cn.FileView, now: int) -> tuple[dict, dict, dict, dict]:
        """A fresh encoding of ``file`` and its first challenge: ``(tag, initial state,
        challenge, state after it)``. CPU-bound: run it in a worker thread."""
        scheme = self.rt.proofs()
        with _open(file) as handle:
            tag, state = scheme.encode(handle, file.size, timestamp=now // 1_000_000)
        challenge, after = scheme.next_challenge(state, file.size)
        return tag, state, challenge, after


def _open(file: cn.FileView) -> BinaryIO:
    if file.seed is not None:
        return SeededChunk(file.seed, file.size)  # type: ignore[return-value]
    assert file.path is not None
    return open(file.path, "rb")
