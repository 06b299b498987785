"""The transparency log's read side: signed checkpoints, the public feed, inclusion and
consistency proofs, and receipts. Every database read and every signature runs in a worker
thread (a fresh verdict's receipt in the group commit's, ``service/answers.py``); the feed
and proofs cover only what the tree covers.
"""

from __future__ import annotations

import threading
from typing import Any

from ..domain.errors import Refused
from ..ledger import feed, tree
from ..ledger.db import read_transaction
from ..tlog.merkle import ProofError
from .runtime import Runtime

MAX_PAGE = 1000


class LedgerLog:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._lock = threading.Lock()
        # The last signed checkpoint (size, text): Ed25519 is deterministic, so it is the same
        # text for as long as the tree does not grow; signing it again would only cost.
        self._signed: tuple[int, str, str] | None = None

    # -- checkpoints ----------------------------------------------------------------------------

    async def checkpoint(self) -> str:
        return await self.rt.run(self.checkpoint_now)

    def checkpoint_now(self) -> str:
        """A signed checkpoint of the whole tree as it is now (blocking)."""
        keys = self.rt.keys()
        with read_transaction(self.rt.engine) as conn:
            size = tree.tree_size(conn)
            with self._lock:
                signed = self._signed
            if signed is not None and signed[0] == size and signed[1] == keys.vkey:
                return signed[2]
            root = tree.root(conn, size)
        text = keys.checkpoint(size, root)
        with self._lock:
            self._signed = (size, keys.vkey, text)
        return text

    # -- the feed -------------------------------------------------------------------------------

    async def events(self, after: int, limit: int) -> dict[str, Any]:
        """At most ``limit`` public forms after position ``after`` that the tree covers:
        ``{"events", "next", "size"}`` (``size``: the tree's size when read)."""
        if after < 0 or not 0 < limit <= MAX_PAGE:
            raise Refused("bad_request", f"after must be >= 0 and limit 1..{MAX_PAGE}")
        forms = self.rt.keys().public_forms()

        def read() -> dict[str, Any]:
            with read_transaction(self.rt.engine) as conn:
                size = tree.tree_size(conn)
                count = max(0, min(limit, size - after))
                events = feed.page(conn, forms, after, count) if count else []
            return {"events": events, "next": after + len(events), "size": size}

        return await self.rt.run(read)

    # -- proofs ---------------------------------------------------------------------------------

    async def inclusion(self, position: int, size: int) -> list[bytes]:
        """The RFC 9162 inclusion proof of the event at ``position`` (leaf ``position - 1``)
        in the tree of ``size`` leaves."""
        if not 1 <= position <= size:
            raise Refused("not_in_log", f"position {position} is not in a tree of size {size}")
        return await self._proof(lambda conn: tree.inclusion_proof(conn, position - 1, size))

    async def consistency(self, first: int, second: int) -> list[bytes]:
        if not 0 <= first <= second:
            raise Refused("bad_request", "the sizes must satisfy 0 <= first <= second")
        return await self._proof(lambda conn: tree.consistency_proof(conn, first, second))

    async def _proof(self, prove: Any) -> list[bytes]:
        def read() -> list[bytes]:
            with read_transaction(self.rt.engine) as conn:
                return list(prove(conn))

        try:
            return await self.rt.run(read)
        except (ValueError, ProofError) as exc:
            raise Refused("not_in_log", str(exc)) from None


def receipt_now(rt: Runtime, position: int, leaf: bytes | None = None) -> str | None:
    """The signed receipt of the event at ``position`` (blocking: signs, and reads its leaf
    hash from the tree unless given). None if the tree does not hold it."""
    if leaf is None:
        with read_transaction(rt.engine) as conn:
            leaf = tree.leaf(conn, position)
        if leaf is None:
            return None
    return rt.keys().receipt(position, leaf)
