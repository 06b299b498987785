"""Group commit: many coroutines' appends share transactions, off the event loop.

Callers await ``append``; one worker drains the queue into batches and runs each batch in a
thread. While a batch is being committed the next one fills, so throughput grows with
concurrency, and each caller is answered only once its own events are durable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor

from .store import (
    AppendFailed,
    AppendRequest,
    AppendResult,
    BatchOutcome,
    EventStore,
    LedgerError,
    NewEvent,
)


class GroupCommitter:
    def __init__(
        self, store: EventStore, *, max_batch: int = 500, executor: Executor | None = None
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.executor = executor
        self._pending: list[tuple[AppendRequest, asyncio.Future[AppendResult]]] = []
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        self.appended = 0

    async def append(
        self,
        stream_id: str,
        expected_version: int | None,
        new_events: Sequence[NewEvent],
        *,
        request_id: str | None = None,
        guards: Mapping[str, int] | None = None,
    ) -> AppendResult:
        """Append and wait until durable; raises ``ConcurrencyConflict`` or ``AppendFailed``."""
        return await self.submit(
            AppendRequest(stream_id, expected_version, new_events, request_id, guards or {})
        )

    async def submit(self, request: AppendRequest) -> AppendResult:
        if self._closed:
            raise RuntimeError("group committer is closed")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        self._wakeup.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="group-commit")
        # Shielded: a caller that gives up must not cancel a batch other callers share.
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        self._closed = True
        self._wakeup.set()
        if self._worker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = (
                self._pending[: self.max_batch],
                self._pending[self.max_batch :],
            )
            requests = [req for req, _ in batch]
            try:
                outcomes = await loop.run_in_executor(self.executor, self._commit, requests)
            except BaseException as exc:
                # No outcome to hand out (the executor refused the batch, or this worker was
                # cancelled while it ran): fail the callers rather than leave them waiting.
                # Whether a running batch committed is unknown; a request id makes retry safe.
                failed = AppendFailed(exc, before_commit=False)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failed)
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
                    self.appended += len(outcome.positions) if not outcome.duplicate else 0
                    future.set_result(outcome)
            self._wakeup.clear()

    def _commit(self, requests: list[AppendRequest]) -> list[BatchOutcome | BaseException]:
        try:
            return list(self.store.append_batch(requests))
        except AppendFailed as failed:
            if failed.before_commit and len(requests) > 1:
                # Nothing was written: retry one by one so a single bad request (or a
                # listener bug it triggers) fails alone instead of failing its neighbours.
                return [self._commit_one(req) for req in requests]
            return [failed] * len(requests)
        except LedgerError as exc:
            return [exc] * len(requests)

    def _commit_one(self, request: AppendRequest) -> BatchOutcome | BaseException:
        try:
            return self.store.append_batch([request])[0]
        except LedgerError as exc:
            return exc
