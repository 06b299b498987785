"""Group commit: many coroutines' appends share transactions, off the event loop.

Callers await ``append``; a ``Batcher`` drains the queue into batches and commits each batch
in one transaction in a thread. While a batch is being committed the next one fills, so
throughput grows with concurrency, and each caller is answered only once its own events are
durable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Executor

from .batching import Batcher
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
        self.appended = 0
        # Whether a batch that raised in its thread committed is unknown; a request id makes
        # a retry safe.
        self._batcher: Batcher[AppendRequest, AppendResult] = Batcher(
            self._commit,
            max_batch=max_batch,
            executor=executor,
            name="group-commit",
            on_lost=lambda exc: AppendFailed(exc, before_commit=False),
        )

    @property
    def batches(self) -> int:
        return self._batcher.batches

    @property
    def executor(self) -> Executor | None:
        return self._batcher.executor

    @executor.setter
    def executor(self, executor: Executor | None) -> None:
        self._batcher.executor = executor

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
        return await self._batcher.submit(request)

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        await self._batcher.close()

    def _commit(self, requests: list[AppendRequest]) -> list[AppendResult | BaseException]:
        outcomes = self._commit_all(requests)
        # Counted in the worker thread, one batch at a time (the batcher runs one at once).
        self.appended += sum(
            len(o.positions) for o in outcomes if isinstance(o, AppendResult) and not o.duplicate
        )
        return outcomes

    def _commit_all(self, requests: list[AppendRequest]) -> list[AppendResult | BaseException]:
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
