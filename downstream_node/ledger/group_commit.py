"""Group commit: many coroutines' appends share transactions, off the event loop.

Callers await ``append`` (a request decided already) or ``decide`` (a request to decide
inside the transaction, under the ledger lock, from state read there: a unit of work). A
``Batcher`` drains the queue into batches and commits each batch in one transaction in a
thread. While a batch is being committed the next one fills, so throughput grows with
concurrency, and each caller is answered only once its own events are durable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from .batching import Batcher
from .db import aborted
from .store import (
    AppendFailed,
    AppendRequest,
    AppendResult,
    EventStore,
    LedgerError,
    NewEvent,
    UnitOfWork,
)


@dataclass(frozen=True)
class Decision:
    """What a unit of work decided for one item: the request to append (``None``: nothing)
    and the value its caller gets back with the append's result.

    ``settle``, if given, runs in the commit's thread once the batch is durable and turns
    (value, result) into the value the caller gets: work that needs the append's positions
    (a receipt's signature) done there rather than on the event loop."""

    request: AppendRequest | None
    value: Any
    settle: Callable[[Any, AppendResult], Any] | None = None


# Decides a batch of items under the ledger lock, reading in the unit of work: one Decision
# (or the exception that refuses it) per item, in order.
Decider = Callable[[UnitOfWork, list[Any]], list[Decision | BaseException]]


@dataclass(frozen=True)
class Deferred:
    """An item whose request ``decider`` decides inside the commit's transaction."""

    decider: Decider
    item: Any


Job = AppendRequest | Deferred
Decided = AppendRequest | Decision | BaseException  # a job once its decider has run
Outcome = AppendResult | tuple[Any, AppendResult | None]


class GroupCommitter:
    def __init__(
        self, store: EventStore, *, max_batch: int = 500, executor: Executor | None = None
    ) -> None:
        self.store = store
        self.appended = 0
        # Whether a batch that raised in its thread committed is unknown; a request id makes
        # a retry safe.
        self._batcher: Batcher[Job, Outcome] = Batcher(
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
        outcome = await self._batcher.submit(request)
        assert isinstance(outcome, AppendResult)
        return outcome

    async def decide(self, decider: Decider, item: Any) -> tuple[Any, AppendResult | None]:
        """Let ``decider`` decide ``item`` in the next commit's transaction (with the other
        items of the batch that name the same decider) and wait until its events, if any,
        are durable: the decision's value and the append's result (``None`` when it
        appended nothing). Raises what the decider refused the item with, or
        ``ConcurrencyConflict`` / ``AppendFailed`` as ``append`` does."""
        outcome = await self._batcher.submit(Deferred(decider, item))
        assert isinstance(outcome, tuple)
        return outcome

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        await self._batcher.close()

    def _commit(self, jobs: list[Job]) -> list[Outcome | BaseException]:
        outcomes = self._commit_all(jobs)
        # Counted in the worker thread, one batch at a time (the batcher runs one at once).
        self.appended += sum(len(r.positions) for r in map(_result, outcomes) if r is not None)
        return outcomes

    def _commit_all(self, jobs: list[Job]) -> list[Outcome | BaseException]:
        try:
            return self._transact(jobs)
        except AppendFailed as failed:
            if failed.before_commit and len(jobs) > 1 and aborted(failed.cause) is None:
                # Nothing was written: retry one by one so a single bad request (or a
                # listener bug it triggers) fails alone instead of failing its neighbours.
                # Not after the database aborted the batch, retries spent: that was no
                # request's fault, and each one alone would go through every retry again.
                return [self._commit_one(job) for job in jobs]
            return [failed] * len(jobs)
        except LedgerError as exc:
            return [exc] * len(jobs)

    def _commit_one(self, job: Job) -> Outcome | BaseException:
        try:
            return self._transact([job])[0]
        except LedgerError as exc:
            return exc

    def _transact(self, jobs: list[Job]) -> list[Outcome | BaseException]:
        decided: list[Decided] = []

        def decide(unit: UnitOfWork) -> list[AppendRequest | None]:
            decided[:] = _decide_all(unit, jobs)
            return [_request(d) for d in decided]

        outcomes: list[Outcome | BaseException] = []
        for d, appended in zip(decided, self.store.transact(decide), strict=True):
            if isinstance(d, BaseException):
                outcomes.append(d)
            elif isinstance(appended, LedgerError):
                outcomes.append(appended)
            elif isinstance(d, Decision):
                outcomes.append(_settled(d, appended))
            else:
                assert appended is not None
                outcomes.append(appended)
        return outcomes


def _decide_all(unit: UnitOfWork, jobs: list[Job]) -> list[Decided]:
    """Each job's request: a plain request as it is, the deferred ones decided, one call per
    decider for all of its items."""
    decided: list[Decided] = []
    by_decider: dict[Decider, list[int]] = {}
    for i, job in enumerate(jobs):
        decided.append(job if isinstance(job, AppendRequest) else _PENDING)
        if isinstance(job, Deferred):
            by_decider.setdefault(job.decider, []).append(i)
    for decider, indexes in by_decider.items():
        items = [jobs[i].item for i in indexes]  # type: ignore[union-attr]
        for i, d in zip(indexes, decider(unit, items), strict=True):
            decided[i] = d
    return decided


def _settled(decision: Decision, appended: AppendResult | None) -> Outcome | BaseException:
    """What the decision's caller gets: its value (settled, if it asks to be) and result."""
    if decision.settle is None or appended is None:
        return decision.value, appended
    try:
        return decision.settle(decision.value, appended), appended
    except Exception as exc:
        # Its events are durable: that caller alone fails, as after a commit whose outcome
        # it could not learn, and its retry (same request id) finds them.
        return AppendFailed(exc, before_commit=False)


def _request(decided: Decided) -> AppendRequest | None:
    if isinstance(decided, Decision):
        return decided.request
    return decided if isinstance(decided, AppendRequest) else None


def _result(outcome: Outcome | BaseException) -> AppendResult | None:
    """The new (not duplicate) append in an outcome, if any: what ``appended`` counts."""
    result = outcome[1] if isinstance(outcome, tuple) else outcome
    if isinstance(result, AppendResult) and not result.duplicate:
        return result
    return None


_PENDING = LedgerError("not decided")  # a placeholder every decider replaces
