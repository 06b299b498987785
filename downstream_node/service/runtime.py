"""What every command of the node shares: its settings, clock and proof scheme, and the
plumbing to the ledger. Database calls and proof work run in worker threads (the event loop
never blocks); reads are short transactions; appends go through the group committer. Every
wait for the database is bounded (``settings.db_wait``, per request): a stalled database is
``DatabaseTimeout``, which the API answers with 503 and Retry-After, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy.exc
import structlog
from sqlalchemy.engine import Engine

from ..config import Settings
from ..domain import events as ev
from ..domain.clock import Clock, to_micros
from ..heartbeat.scheme import ProofScheme
from ..ledger.group_commit import GroupCommitter
from ..ledger.store import AppendResult, EventStore
from ..projections.queries import Reader, ReadModel
from .context import Context
from .logkeys import LogKeys

log = structlog.get_logger("downstream.node")

T = TypeVar("T")


class DatabaseTimeout(Exception):
    """The database did not answer within the request's budget (``settings.db_wait``).

    What the worker thread was doing goes on until its own timeouts end it (the driver's
    read timeout): a read then has no effect, an append's outcome is unknown (an answer's
    identical retry gets the recorded verdict)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the database did not answer within {seconds:g} s")
        self.seconds = seconds


@dataclass
class WaitBudget:
    """What one request may still wait for the database, in seconds: every wait (a read, an
    append, a lease of a rate limit) spends from it, time spent on proofs does not."""

    seconds: float
    spent: float = 0.0


_BUDGET: contextvars.ContextVar[WaitBudget | None] = contextvars.ContextVar(
    "downstream_db_wait_budget", default=None
)


class Runtime:
    """The node's shared state and its doors to the database (built by ``bootstrap``)."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        *,
        engine: Engine,
        store: EventStore,
        read_model: ReadModel,
        workers: int,
        maintenance: Callable[[], EventStore] | None = None,
    ) -> None:
        self.settings = settings
        # A store for the node's start, on an engine without read timeouts; None: ``store``.
        self.maintenance = maintenance
        self._tasks: set[asyncio.Task[Any]] = set()
        self.clock = clock
        self.engine = engine
        self.store = store
        self.read_model = read_model
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="node-db")
        self.committer = GroupCommitter(store, executor=self.executor)
        self.scheme: ProofScheme | None = None  # loaded (or given) when the node starts
        self.log_keys: LogKeys | None = None  # the transparency log's, loaded at start

    def proofs(self) -> ProofScheme:
        """The node's proof scheme; only a started node has one."""
        if self.scheme is None:
            raise RuntimeError("the node has not been started")
        return self.scheme

    def keys(self) -> LogKeys:
        """The transparency log's keys; only a started node has them."""
        if self.log_keys is None:
            raise RuntimeError("the node has not been started")
        return self.log_keys

    def now(self) -> int:
        """Now, in UTC microseconds, from the injected clock."""
        return to_micros(self.clock.now())

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in a worker thread, in a copy of the caller's context (so that what the
        thread logs carries the request id)."""
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: context.run(fn, *args, **kwargs))

    @contextlib.contextmanager
    def wait_budget(self, seconds: float | None = None) -> Iterator[None]:
        """Within: the waits for the database together take at most ``seconds`` (default
        ``settings.db_wait``: one request's; the HTTP middleware opens one per request).
        ``math.inf``: no bound, for the node's own start, which a farmer does not wait for."""
        seconds = self.settings.db_wait if seconds is None else seconds
        if seconds is None:
            yield
            return
        token = _BUDGET.set(WaitBudget(seconds))
        try:
            yield
        finally:
            _BUDGET.reset(token)

    async def waited(self, awaitable: Awaitable[T]) -> T:
        """``awaitable`` (work on the database), waited for at most what is left of the
        request's budget (outside a request: ``settings.db_wait``); else ``DatabaseTimeout``.
        Giving up cancels the wait, not the worker thread's statement, which its own driver
        timeout ends; an append not yet begun is dropped (``Batcher``)."""
        limit = self.settings.db_wait
        if limit is None:
            return await awaitable
        budget = _BUDGET.get()
        left = limit if budget is None else budget.seconds - budget.spent
        if left == math.inf:
            return await awaitable
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            # A timeout context, not wait_for: no task made per database call on the hot path.
            async with asyncio.timeout(max(left, 0.0)):
                return await awaitable
        except TimeoutError:
            raise DatabaseTimeout(limit) from None  # logged by whoever answers for it
        finally:
            if budget is not None:
                budget.spent += loop.time() - started

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` (a database call) in a worker thread, within the wait budget."""
        return await self.waited(self.run(fn, *args))

    def spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` in the background (housekeeping, or work a caller may join later);
        cancelled when the node closes."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def read(self, fn: Callable[[Reader], T]) -> T:
        return await self.waited(self.run(self.read_now, fn))

    def read_now(self, fn: Callable[[Reader], T]) -> T:
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

    async def append(
        self,
        stream: str,
        expected: int | None,
        events: Sequence[ev.DomainEvent],
        ctx: Context,
        request_id: str | None = None,
        guards: dict[str, int] | None = None,
    ) -> AppendResult:
        """Append ``events`` to ``stream`` at version ``expected`` (None: any), stamped now."""
        at = self.clock.now()
        meta = ctx.meta()
        return await self.waited(
            self.committer.append(
                stream,
                expected,
                [e.to_new(at, meta) for e in events],
                request_id=request_id,
                guards=guards,
            )
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
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


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():  # the waiter may have given up (cancelled)
        future.set_result(None)
