"""Coalesce concurrent calls into one call over a batch, run in a worker thread.

Callers ``await submit(item)``; one task drains the queue into batches and hands each batch to
a synchronous function in an executor, so many callers share one thread hop and one database
transaction. While a batch runs the next one fills: batches grow with concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        run: Callable[[list[In]], list[Out | BaseException]],
        *,
        max_batch: int = 500,
        executor: Executor | None = None,
        name: str = "batcher",
        on_lost: Callable[[BaseException], BaseException] = lambda exc: exc,
    ) -> None:
        """``run`` gets a batch and returns one outcome per item, in order. ``on_lost`` makes
        the exception every caller of a batch gets when ``run`` itself raised (or the
        executor refused it, or this worker was cancelled while it ran)."""
        self.run = run
        self.max_batch = max_batch
        self.executor = executor
        self.name = name
        self.on_lost = on_lost
        self.batches = 0
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(self, item: In) -> Out:
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name=self.name)
        # A caller that gives up cancels only its own future, which the batch then skips:
        # the batch itself, shared with other callers, runs on.
        return await future

    async def close(self) -> None:
        """Finish what is queued, then stop taking items."""
        self._closed = True
        if self._worker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            # A caller that gave up (cancelled its future) before its batch began is told
            # nothing was done: so nothing is (a stalled database leaves many such).
            batch = [(item, future) for item, future in batch if not future.done()]
            if not batch:
                continue
            try:
                outcomes = await loop.run_in_executor(
                    self.executor, self.run, [item for item, _ in batch]
                )
            except BaseException as exc:
                # No outcome to hand out: fail the callers rather than leave them waiting.
                lost = self.on_lost(exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(lost)
                if not isinstance(exc, Exception):
                    raise
                continue
            self.batches += 1
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
