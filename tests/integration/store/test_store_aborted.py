"""Transactions the database rolled back whole (a Galera certification conflict, a node
outside the primary component) run again, a few times, with jittered pauses; an outcome
that is really unknown is never retried. No database server: an SQLite ledger whose driver
is made to raise PyMySQL's errors where MariaDB raises them (at COMMIT, at a statement).
Which errors count as aborted, and the pauses' jitter: tests/unit/test_aborted.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from driver_errors import DEADLOCK, LOCK_WAIT, LOST, NOT_READY

from downstream_node.domain.clock import FakeClock
from downstream_node.domain.records import NewEvent
from downstream_node.ledger.db import make_engine
from downstream_node.ledger.group_commit import GroupCommitter
from downstream_node.ledger.store import AppendFailed, AppendRequest, Backoff, EventStore


class Faults:
    """Raises the queued errors, one per COMMIT (or per INSERT into events), then lets
    everything through."""

    def __init__(self, engine: sa.engine.Engine, at: str) -> None:
        self.queue: list[BaseException] = []
        self.commits = 0
        if at == "commit":
            real = engine.dialect.do_commit

            def do_commit(dbapi_conn: object) -> None:
                self.commits += 1
                if self.queue:
                    dbapi_conn.rollback()  # type: ignore[attr-defined]  # as the server did
                    raise self.queue.pop(0)
                real(dbapi_conn)

            engine.dialect.do_commit = do_commit  # type: ignore[method-assign]
        else:

            @sa.event.listens_for(engine, "before_cursor_execute")
            def before(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
                if statement.startswith("INSERT INTO events") and self.queue:
                    raise self.queue.pop(0)


@pytest.fixture
def pauses() -> list[float]:
    return []


@pytest.fixture
def make_store(
    tmp_path, pauses: list[float]
) -> Iterator[Callable[[str], tuple[EventStore, Faults]]]:  # type: ignore[no-untyped-def]
    engines = []

    def make(at: str = "commit") -> tuple[EventStore, Faults]:
        engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
        engines.append(engine)
        # random() == 0: every pause is the lower end of its jitter, half the nominal pause
        backoff = Backoff(tries=5, first=0.005, most=0.05, random=lambda: 0.0, sleep=pauses.append)
        store = EventStore(engine, backoff=backoff)
        store.create_schema()
        return store, Faults(engine, at)

    yield make
    for engine in engines:
        engine.dispose()


def event(n: int = 0) -> NewEvent:
    return NewEvent("Tested", 1, {"n": n}, FakeClock().now())


@pytest.mark.parametrize("error", [DEADLOCK, NOT_READY])
def test_a_unit_aborted_at_commit_runs_again_on_a_fresh_read_and_commits_once(
    make_store, pauses: list[float], error: BaseException
) -> None:
    store, faults = make_store("commit")
    faults.queue = [error, error]
    heads: list[int] = []

    def decide(unit):  # type: ignore[no-untyped-def]
        heads.append(unit.head.position)
        return [AppendRequest("s-1", 0, [event()], request_id="r-1")]

    [result] = store.transact(decide)
    assert heads == [0, 0, 0]  # decided three times, each time under the lock
    assert result is not None and not isinstance(result, Exception)
    assert result.positions == (1,)
    assert store.head().position == 1
    assert [e.request_id for e in store.read_all()] == ["r-1"]  # written once
    assert pauses == [0.0025, 0.005]  # 5 ms, then 10 ms, each jittered down to half
    # the request id still makes the same request a duplicate, not a second event
    again = store.append("s-1", None, [event()], request_id="r-1")
    assert again.duplicate and again.positions == (1,)


def test_an_abort_at_a_statement_also_retries_and_writes_nothing_meanwhile(
    make_store, pauses: list[float]
) -> None:
    store, faults = make_store("statement")
    faults.queue = [DEADLOCK]
    result = store.append("s-1", 0, [event()])
    assert result.positions == (1,)
    assert [e.position for e in store.read_all()] == [1]
    assert len(pauses) == 1


def test_when_every_try_is_aborted_the_caller_gets_append_failed_before_commit(
    make_store, pauses: list[float]
) -> None:
    store, faults = make_store("commit")
    faults.queue = [DEADLOCK] * 10
    with pytest.raises(AppendFailed) as failed:
        store.append("s-1", 0, [event()])
    assert failed.value.before_commit
    assert faults.commits == 5
    assert pauses == [0.0025, 0.005, 0.01, 0.02]  # doubling, capped at 50 ms
    assert store.head().position == 0
    assert faults.queue == [DEADLOCK] * 5


@pytest.mark.parametrize(
    ("error", "at", "before_commit"),
    [(LOST, "commit", False), (LOCK_WAIT, "statement", True)],
)
def test_an_unknown_outcome_or_a_statement_error_is_not_retried(
    make_store, pauses: list[float], error: BaseException, at: str, before_commit: bool
) -> None:
    store, faults = make_store(at)
    faults.queue = [error]
    with pytest.raises(AppendFailed) as failed:
        store.append("s-1", 0, [event()])
    assert failed.value.before_commit is before_commit
    assert pauses == []


async def test_a_batch_aborted_on_every_try_fails_each_caller_without_running_each_again(
    make_store, pauses: list[float]
) -> None:
    store, faults = make_store("commit")
    faults.queue = [DEADLOCK] * 100
    committer = GroupCommitter(store)
    outcomes = await asyncio.gather(
        *(committer.append(f"s-{i}", 0, [event(i)]) for i in range(4)), return_exceptions=True
    )
    await committer.close()
    assert all(isinstance(o, AppendFailed) and o.before_commit for o in outcomes), outcomes
    # not five tries for the batch and then five for each of its requests alone
    assert faults.commits <= 5 * committer.batches
    assert store.head().position == 0


def test_retrying_runs_a_transaction_again_only_when_the_database_aborted_it(
    make_store, pauses: list[float]
) -> None:
    store, _ = make_store("commit")
    errors = [DEADLOCK, NOT_READY]
    calls: list[int] = []

    def catch_up() -> str:
        calls.append(1)
        if errors:
            raise sa.exc.OperationalError("SELECT", {}, errors.pop(0))
        return "folded"

    assert store.retrying(catch_up) == "folded"
    assert len(calls) == 3 and len(pauses) == 2
    with pytest.raises(sa.exc.OperationalError):
        store.retrying(lambda: (_ for _ in ()).throw(sa.exc.OperationalError("S", {}, LOCK_WAIT)))
    assert len(pauses) == 2  # a lock wait timeout is the caller's
