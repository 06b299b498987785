"""Helpers of the HTTP, farmer and end-to-end tests: a node on a FakeClock, a real server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from downstream_node.config import Settings
from downstream_node.domain.clock import FakeClock
from downstream_node.domain.tokens import make_address
from downstream_node.heartbeat import Merkle, SeededChunk, Swizzle
from downstream_node.http.app import create_app
from downstream_node.service import Node

KiB = 1024
CHUNK = 64 * KiB
INTERVAL = 60
ADDRESS = make_address(hashlib.sha256(b"farmer one").digest()[:20])
POOR = make_address(hashlib.sha256(b"poor farmer").digest()[:20])  # below the minimum
STRANGER = make_address(hashlib.sha256(b"not whitelisted").digest()[:20])


def settings_for(db_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(
        db_url=db_url,
        secret_file=tmp_path / "node-secret.json",
        interval=INTERVAL,
        chunk_size=CHUNK,
        redundancy=1,
    )
    return replace(base, **overrides)


def new_node(db_url: str, tmp_path: Path, **overrides: Any) -> tuple[Node, FakeClock]:
    clock = FakeClock()
    return Node(settings_for(db_url, tmp_path, **overrides), clock=clock), clock


async def stock(node: Node, files: int = 3, redundancy: int = 1) -> list[str]:
    """Whitelist the test addresses and add ``files`` seeded chunks."""
    await node.whitelist([(ADDRESS, "20000"), (POOR, "10")])
    return [
        await node.add_seeded(CHUNK, seed=f"test-chunk-{i}", redundancy=redundancy)
        for i in range(files)
    ]


@dataclass
class Server:
    url: str
    runner: web.AppRunner


@contextlib.asynccontextmanager
async def real_server(app: web.Application) -> AsyncIterator[Server]:
    """The app on a real TCP port of 127.0.0.1 (port 0: the OS picks one)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Server(f"http://{host}:{port}", runner)
    finally:
        await runner.cleanup()


def make_app(node: Node, **kwargs: Any) -> web.Application:
    return create_app(node, **kwargs)


def prove(public: dict, contract: dict, challenge: dict | None = None) -> dict:
    """An honest proof for a chunk contract, straight from its seed (a Swizzle node's public
    heartbeat carries its prime, a Merkle node's does not)."""
    chunk = SeededChunk(contract["seed"], contract["size"])
    beat = Swizzle.fromdict(public) if "prime" in public else Merkle.fromdict(public)
    return beat.prove(chunk, challenge or contract["challenge"], contract["tag"]).todict()


def head(node: Node) -> int:
    return node.store.head().position


class _AnyReceipt:
    """Equal to a signed receipt note (``<origin>\\nreceipt\\n<position>\\n<leaf>\\n``, then a
    signature line): where a test compares a whole answer body, the receipt's own checks are
    in tests/integration/test_receipts.py."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, str) or "\n\n— " not in other:
            return False
        from downstream_node.tlog.checkpoint import CheckpointError, Receipt

        try:
            Receipt.parse(other.split("\n\n", 1)[0] + "\n")
        except CheckpointError:
            return False
        return True

    def __repr__(self) -> str:
        return "<a signed receipt>"


RECEIPT = _AnyReceipt()


@contextlib.contextmanager
def serve_in_thread(db_url: str, tmp_path: Path, **overrides: Any) -> Iterator[str]:
    """A node's HTTP API on a real port, its event loop in a thread of its own, for tests
    whose own thread blocks (a CLI command run in-process); the node's URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    url: list[str] = []
    stop = asyncio.Event()

    async def serve() -> None:
        app = create_app(Node(settings_for(db_url, tmp_path, **overrides)))
        async with real_server(app) as server:
            url.append(server.url)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the node did not start"
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
