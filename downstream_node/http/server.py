"""Running the API: ``downstream-node serve``.

Starts the node on the configured database, optionally stocks a demo (a whitelisted demo
address and a few seeded chunks), listens, sweeps expired contracts in the background, and
stops cleanly on SIGINT/SIGTERM. Database and proof work run in the node's threads, so the
event loop keeps answering while they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import math
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

import structlog
from aiohttp import web

from ..config import MiB, Settings
from ..domain.clock import Clock
from ..domain.errors import Refused
from ..domain.tokens import make_address
from ..service import Node
from .app import create_app

log = structlog.get_logger("downstream.serve")

DEMO_ADDRESS = make_address(hashlib.sha256(b"downstream-node demo farmer").digest()[:20])
DEMO_BALANCE = Decimal(1_000_000)
DEMO_CHUNKS = 3
DEMO_CHUNK_SIZE = 1 * MiB
DEMO_INTERVAL = 60
DEMO_SEED = "downstream-node-demo-{}"
STOP_GRACE = 30.0  # seconds the node gets to close after SIGTERM


@dataclass(frozen=True)
class DemoStock:
    """What ``--demo`` stocks: seeded chunks (size in bytes, interval in seconds)."""

    chunks: int = DEMO_CHUNKS
    size: int = DEMO_CHUNK_SIZE
    interval: int = DEMO_INTERVAL
    redundancy: int | None = None  # None: the node's setting


@dataclass
class Demo:
    address: str
    files: list[str] = field(default_factory=list)
    added: int = 0


async def ensure_demo(node: Node, stock: DemoStock | None = None) -> Demo:
    """Whitelist the demo address and add the demo chunks, unless they are there already.

    Idempotent: a restart finds them (by address balance and by seed) and adds nothing; a
    node starting at the same time as another on the same database finds the other's.
    """
    stock = stock or DemoStock()

    def state() -> tuple[Decimal | None, dict[str, str]]:
        with node.read_model.reader() as reader:
            live = {
                row["seed"]: row["file_hash"]
                for row in reader.files()
                if row["removed_at"] is None and row["seed"]
            }
            return reader.balance(DEMO_ADDRESS), live

    balance, live = await asyncio.to_thread(state)
    if balance is None or balance < node.settings.token_policy.min_balance:
        await node.whitelist([(DEMO_ADDRESS, str(DEMO_BALANCE))])
    demo = Demo(DEMO_ADDRESS)
    for i in range(stock.chunks):
        seed = DEMO_SEED.format(i + 1)
        if seed in live:
            demo.files.append(live[seed])
            continue
        try:
            added = await node.add_seeded(
                stock.size, seed=seed, interval=stock.interval, redundancy=stock.redundancy
            )
        except Refused as refused:
            if refused.status != "file_exists":
                raise
            _, live = await asyncio.to_thread(state)  # another node added it just now
            demo.files.append(live[seed])
            continue
        demo.files.append(added)
        demo.added += 1
    return demo


def settle_heap() -> None:
    """Keep the cyclic garbage collector's pauses out of request latency.

    A full collection walks every tracked object: with the modules, the app and the node
    loaded that took 60-80 ms here, stalling every request in flight (it set the p99 in
    the benchmark). What exists at startup lives as long as the process, so it is frozen
    out of collections; and the young generation is collected less often, so that the
    full collections, now over request-lived objects only, come rarely.

    A process-wide setting: the ``serve`` command calls it once the node is up, a library
    user embedding ``serve`` decides for its own process.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


async def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    demo: bool = False,
    demo_stock: DemoStock | None = None,
    clock: Clock | None = None,
    on_ready: Callable[[str, Demo | None], None] | None = None,
    stop: asyncio.Event | None = None,
    stop_grace: float = STOP_GRACE,
) -> None:
    """Serve until ``stop`` is set (SIGINT and SIGTERM set it); then close within
    ``stop_grace`` seconds or raise ``StopTimedOut``. ``CannotListen`` if the address cannot
    be bound (its cause says why)."""
    stop = stop or asyncio.Event()
    try:
        # Bound before the node starts: a port in use is found before anything is written.
        sock = socket.create_server((host, port), family=_family(host), reuse_port=False)
    except OSError as exc:
        raise CannotListen() from exc
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on every platform
            loop.add_signal_handler(signum, stop.set)
    node = Node(settings, clock=clock)
    app = create_app(node, sweep_seconds=settings.sweep_seconds)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    try:
        # The node's start (schema, projections, perhaps a rebuild waiting for another one)
        # is raced against a stop, which must not wait for it.
        if not await _unless_stopped(runner.setup(), stop):
            sock.close()
            _remove_signal_handlers(loop)
            log.info("stopping", while_starting=True)
            await _within(node.close(), stop_grace)
            return
    except BaseException:
        sock.close()
        _remove_signal_handlers(loop)
        raise
    try:
        stocked: list[Demo] = []

        async def stock_demo() -> None:
            # Part of the node's start: outside a request's db_wait, and stopped by a stop.
            with node.rt.wait_budget(math.inf):
                stocked.append(await ensure_demo(node, demo_stock))

        try:
            if demo and not await _unless_stopped(stock_demo(), stop):
                sock.close()
                log.info("stopping", while_starting=True)
                return
            site = web.SockSite(runner, sock)
        except BaseException:
            sock.close()
            raise
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
        url = f"http://{shown}:{bound_port}"
        log.info("listening", url=url, db=_safe_url(settings.db_url), demo=demo)
        if on_ready is not None:
            on_ready(url, stocked[0] if stocked else None)
        await stop.wait()
        log.info("stopping")
    finally:
        _remove_signal_handlers(loop)
        # Closes the node; a stalled database would hold it (and the stop) forever.
        await _within(runner.cleanup(), stop_grace)


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run ``work`` unless ``stop`` is set first (then cancel it: False)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        task.result()  # its exception, if it failed
        return True
    task.cancel()
    with contextlib.suppress(BaseException):  # cancelled (its threads may go on a while)
        await task
    return False


async def _within(closing: Awaitable[None], grace: float) -> None:
    try:
        await asyncio.wait_for(closing, grace)
    except TimeoutError:
        log.error("stop_timed_out", seconds=grace)
        raise StopTimedOut(
            f"the node did not stop within {grace:g} s (database calls still running); "
            "stopping anyway: what was acknowledged is committed"
        ) from None


def _remove_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signum)


class CannotListen(Exception):
    """The address could not be bound (in use, not this machine's, not allowed)."""


class StopTimedOut(Exception):
    """The node did not close within the grace period (database calls hanging)."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _safe_url(url: str) -> str:
    """The database URL without its password, for the log."""
    try:
        import sqlalchemy as sa

        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]
