"""The event store as a caller sees it: appends, conflicts, idempotency, listeners, validation.

Every test runs on SQLite and, when ``DOWNSTREAM_TEST_MYSQL_URL`` is set, on MySQL/MariaDB.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from downstream_node.ledger import store as store_module
from downstream_node.ledger.db import make_engine
from downstream_node.ledger.group_commit import Decision, GroupCommitter
from downstream_node.ledger.schema import GENESIS_HASH, events
from downstream_node.ledger.store import (
    AppendFailed,
    AppendRequest,
    AppendResult,
    ConcurrencyConflict,
    EventStore,
    Head,
    NewEvent,
    RecordedEvent,
    UnitOfWork,
)
from downstream_node.ledger.verify import verify_chain

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def ev(n: int = 0, **payload: object) -> NewEvent:
    return NewEvent("test.happened", 1, {"n": n, **payload}, T0 + dt.timedelta(seconds=n))


def count_events(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()


def positions(store: EventStore) -> list[int]:
    return [e.position for e in store.read_all()]


# -- appending and reading ---------------------------------------------------------------------


def test_append_assigns_positions_versions_and_round_trips(store: EventStore) -> None:
    first = store.append("contract:a", 0, [ev(1, text="héllo ✓"), ev(2, nested={"k": [1, "x"]})])
    second = store.append("contract:b", 0, [ev(3)])
    third = store.append("contract:a", 2, [ev(4, big=2**62)])

    assert first.positions == (1, 2) and first.stream_version == 2 and not first.duplicate
    assert second.positions == (3,) and second.stream_version == 1
    assert third.positions == (4,) and third.stream_version == 3
    assert store.stream_version("contract:a") == 3
    assert store.stream_version("nobody") == 0

    stored = list(store.read_all())
    assert [e.position for e in stored] == [1, 2, 3, 4]
    assert stored[0].payload == {"n": 1, "text": "héllo ✓"}
    assert stored[1].payload == {"n": 2, "nested": {"k": [1, "x"]}}
    assert stored[3].payload == {"n": 4, "big": 2**62}
    assert stored[0].occurred_at == T0 + dt.timedelta(seconds=1)
    assert stored[0].occurred_at.tzinfo is not None
    # What append returned is what the ledger holds.
    assert list(first.events) + list(second.events) + list(third.events) == stored

    assert [(e.version, e.payload["n"]) for e in store.read_stream("contract:a")] == [
        (1, 1),
        (2, 2),
        (3, 4),
    ]
    assert [e.version for e in store.read_stream("contract:a", after_version=2)] == [3]

    head = store.head()
    assert head.position == 4 and head.hash == stored[-1].hash
    assert [e.position for e in store.read_all(after=1, until=3, page=1)] == [2, 3]


def test_events_given_as_a_generator_are_all_appended(store: EventStore) -> None:
    result = store.append("s", 0, (ev(i) for i in range(3)))
    assert result.positions == (1, 2, 3)
    assert [e.payload["n"] for e in store.read_all()] == [0, 1, 2]


def test_empty_ledger(store: EventStore) -> None:
    assert store.head() == Head(0, GENESIS_HASH, 1)
    assert list(store.read_all()) == []
    report = verify_chain(store.engine)
    assert report.ok and report.checked == 0 and report.last_hash == GENESIS_HASH
    store.create_schema()  # idempotent
    assert store.head().position == 0


# -- optimistic concurrency --------------------------------------------------------------------


def test_stale_expected_version_raises_and_writes_nothing(store: EventStore) -> None:
    store.append("s", 0, [ev(1), ev(2)])
    store.append("other", None, [ev(3)])
    before = store.head()

    with pytest.raises(ConcurrencyConflict) as caught:
        store.append("s", 1, [ev(4), ev(5)])
    assert caught.value.stream_id == "s"
    assert caught.value.expected == 1 and caught.value.actual == 2
    assert "'s'" in str(caught.value) and "version 2" in str(caught.value)

    with pytest.raises(ConcurrencyConflict) as caught:
        store.append("brand-new", 3, [ev(6)])
    assert caught.value.actual == 0

    assert count_events(store.engine) == 3
    assert store.head() == before
    assert store.stream_version("s") == 2 and store.stream_version("brand-new") == 0

    # No hole: the next successful append takes the very next position.
    assert store.append("s", 2, [ev(7)]).positions == (4,)
    assert positions(store) == [1, 2, 3, 4]
    assert verify_chain(store.engine).ok


def test_conflict_inside_a_batch_fails_only_that_request(store: EventStore) -> None:
    store.append("s1", 0, [ev(0)])
    outcomes = store.append_batch(
        [
            AppendRequest("s1", 1, [ev(1), ev(2)]),
            AppendRequest("s2", 0, [ev(3)]),
            AppendRequest("s1", 1, [ev(4)]),  # s1 moved to 3 earlier in this very batch
            AppendRequest("s3", 7, [ev(5)]),  # never was at 7
            AppendRequest("s3", None, [ev(6), ev(7)]),
            AppendRequest("s1", 3, [ev(8)]),  # builds on the first request of the batch
        ]
    )
    ok, s2, lost, never, anyv, chained = outcomes
    assert isinstance(ok, AppendResult) and ok.positions == (2, 3)
    assert isinstance(s2, AppendResult) and s2.positions == (4,)
    assert isinstance(lost, ConcurrencyConflict) and (lost.expected, lost.actual) == (1, 3)
    assert isinstance(never, ConcurrencyConflict) and (never.expected, never.actual) == (7, 0)
    assert isinstance(anyv, AppendResult) and anyv.positions == (5, 6)
    assert isinstance(chained, AppendResult) and chained.positions == (7,)
    assert chained.stream_version == 4

    assert positions(store) == [1, 2, 3, 4, 5, 6, 7]
    assert [e.payload["n"] for e in store.read_stream("s1")] == [0, 1, 2, 8]
    assert [e.version for e in store.read_stream("s3")] == [1, 2]
    assert verify_chain(store.engine).ok


async def test_conflict_through_group_committer(store: EventStore) -> None:
    committer = GroupCommitter(store)
    try:
        await committer.append("s", 0, [ev(1)])
        with pytest.raises(ConcurrencyConflict):
            await committer.append("s", 0, [ev(2)])
        assert (await committer.append("s", 1, [ev(3)])).positions == (2,)
    finally:
        await committer.close()
    assert positions(store) == [1, 2]


async def test_committer_that_cannot_run_a_batch_fails_its_callers(store: EventStore) -> None:
    broken = ThreadPoolExecutor(1)
    broken.shutdown()
    committer = GroupCommitter(store, executor=broken)
    results = await asyncio.wait_for(
        asyncio.gather(
            *(committer.append(f"s{i}", 0, [ev(i)]) for i in range(3)), return_exceptions=True
        ),
        10,
    )
    assert all(isinstance(r, AppendFailed) for r in results), results
    assert count_events(store.engine) == 0
    committer.executor = None  # once batches can run again, appends go through
    assert (await asyncio.wait_for(committer.append("s", 0, [ev(9)]), 10)).positions == (1,)
    await committer.close()


# -- idempotency -------------------------------------------------------------------------------


def test_retried_request_id_returns_original_positions(store: EventStore) -> None:
    store.append("x", None, [ev(0)])
    original = store.append("s", 0, [ev(1), ev(2)], request_id="req-1")
    store.append("x", None, [ev(3)])
    head = store.head()

    # The retry still carries expected version 0, now stale: a retry, not a conflict.
    again = store.append("s", 0, [ev(1), ev(2)], request_id="req-1")
    assert again.duplicate and not original.duplicate
    assert again.positions == original.positions == (2, 3)
    assert again.stream_version == original.stream_version == 2
    assert again.stream_id == "s"
    assert store.head() == head and count_events(store.engine) == 4

    # Request ids are exact: another id (even differing only in case) is a new append.
    assert not store.append("s", 2, [ev(4)], request_id="REQ-1").duplicate
    assert count_events(store.engine) == 5


def test_duplicate_request_ids_inside_one_batch(store: EventStore) -> None:
    first, second, third = store.append_batch(
        [
            AppendRequest("s", 0, [ev(1)], request_id="r"),
            AppendRequest("s", 0, [ev(1)], request_id="r"),
            AppendRequest("t", 0, [ev(2)], request_id="r2"),
        ]
    )
    assert isinstance(first, AppendResult) and isinstance(second, AppendResult)
    assert isinstance(third, AppendResult)
    assert not first.duplicate and second.duplicate
    assert first.positions == second.positions == (1,)
    assert third.positions == (2,)
    assert count_events(store.engine) == 2


async def test_same_request_id_submitted_concurrently(store: EventStore) -> None:
    committer = GroupCommitter(store)
    try:
        # Same batch: both submitted before the committer runs.
        together = await asyncio.gather(
            *(committer.append("s", 0, [ev(1), ev(2)], request_id="twice") for _ in range(2))
        )
        # Different batches: one lands while the other is queued behind it.
        first = asyncio.create_task(committer.append("t", 0, [ev(3)], request_id="again"))
        await asyncio.sleep(0)
        second = asyncio.create_task(committer.append("t", 0, [ev(3)], request_id="again"))
        apart = await asyncio.gather(first, second)
    finally:
        await committer.close()

    for pair in (together, apart):
        assert sorted(r.duplicate for r in pair) == [False, True]
        assert pair[0].positions == pair[1].positions
    assert together[0].positions == (1, 2) and apart[0].positions == (3,)
    assert count_events(store.engine) == 3
    assert committer.appended == 3


# -- listeners (projections folded inside the append's transaction) ----------------------------

side = sa.Table(
    "listener_side",
    sa.MetaData(),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("head_before", sa.BigInteger, nullable=False),
)


class Recorder:
    """Writes a row per event it folds, with the connection of the append's transaction."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[int]]] = []

    def __call__(self, unit: UnitOfWork, recorded: Sequence[RecordedEvent]) -> None:
        head = unit.head
        self.calls.append((head.position, [e.position for e in recorded]))
        unit.conn.execute(
            side.insert(),
            [{"position": e.position, "head_before": head.position} for e in recorded],
        )


class Exploding:
    def __init__(self, when: str = "always") -> None:
        self.when = when

    def __call__(self, unit: UnitOfWork, recorded: Sequence[RecordedEvent]) -> None:
        if self.when == "always" or any(e.payload.get("bad") for e in recorded):
            raise RuntimeError("projection bug")


def side_rows(engine: Engine) -> list[tuple[int, int]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(side).order_by(side.c.position))]


@pytest.fixture
def recorder(store: EventStore) -> Recorder:
    side.metadata.create_all(store.engine)
    recorder = Recorder()
    store.listeners.append(recorder)
    return recorder


def test_listener_sees_events_in_position_order_and_commits_with_them(
    store: EventStore, recorder: Recorder
) -> None:
    store.append("a", 0, [ev(1), ev(2)])
    store.append_batch([AppendRequest("b", 0, [ev(3)]), AppendRequest("a", 2, [ev(4), ev(5)])])
    store.append_batch([AppendRequest("a", 0, [ev(6)])])  # only a conflict: nothing to fold

    assert recorder.calls == [(0, [1, 2]), (2, [3, 4, 5])]
    assert side_rows(store.engine) == [(1, 0), (2, 0), (3, 2), (4, 2), (5, 2)]


def test_failing_listener_fails_the_append_and_writes_nothing(
    store: EventStore, recorder: Recorder
) -> None:
    store.append("a", 0, [ev(1)])
    head = store.head()
    store.listeners.append(Exploding())

    with pytest.raises(AppendFailed) as caught:
        store.append("a", 1, [ev(2)], request_id="will-fail")
    assert caught.value.before_commit
    assert isinstance(caught.value.cause, RuntimeError)

    assert store.head() == head and count_events(store.engine) == 1
    assert side_rows(store.engine) == [(1, 0)]  # the first listener's rows rolled back too
    store.listeners.pop()
    # Nothing of the failed append remains: its request id is free, its position unused.
    result = store.append("a", 1, [ev(2)], request_id="will-fail")
    assert result.positions == (2,) and not result.duplicate
    assert side_rows(store.engine) == [(1, 0), (2, 1)]
    assert verify_chain(store.engine).ok


async def test_failing_listener_fails_only_its_own_caller_in_a_batch(store: EventStore) -> None:
    store.listeners.append(Exploding(when="bad"))
    committer = GroupCommitter(store)
    try:
        results = await asyncio.gather(
            *(
                committer.append(f"s{i}", 0, [ev(i, bad=(i == 3))], request_id=f"r{i}")
                for i in range(8)
            ),
            return_exceptions=True,
        )
    finally:
        await committer.close()
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [3]
    assert isinstance(results[3], AppendFailed) and results[3].before_commit
    assert positions(store) == list(range(1, 8))
    assert sorted(e.stream_id for e in store.read_all()) == [f"s{i}" for i in range(8) if i != 3]
    assert verify_chain(store.engine).ok


# -- what is refused before anything is written -------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "meta"),
    [
        ({"amount": 1.5}, {}),
        ({"deep": [{"x": 0.0}]}, {}),
        ({"n": 1}, {"took": 2.5}),
    ],
)
async def test_floats_are_refused_before_anything_is_written(
    store: EventStore, payload: dict, meta: dict
) -> None:
    bad = NewEvent("test.happened", 1, payload, T0, meta)
    with pytest.raises(TypeError, match="float"):
        store.append("s", 0, [ev(1), bad])
    committer = GroupCommitter(store)
    try:
        good = asyncio.create_task(committer.append("t", 0, [ev(2)]))
        with pytest.raises(TypeError, match="float"):
            await committer.append("s", 0, [bad])
        assert (await good).positions == (1,)  # a neighbour is not failed by the bad one
    finally:
        await committer.close()
    assert positions(store) == [1]
    assert store.stream_version("s") == 0


def test_naive_datetime_is_refused(store: EventStore) -> None:
    naive = NewEvent("test.happened", 1, {"n": 1}, dt.datetime(2026, 1, 1, 12, 0))
    with pytest.raises(ValueError, match="naive"):
        store.append("s", 0, [naive])
    assert count_events(store.engine) == 0 and store.head().position == 0


def test_non_utc_times_are_stored_as_the_same_instant(store: EventStore) -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    store.append("s", 0, [NewEvent("t", 1, {}, dt.datetime(2026, 1, 1, 13, 0, 0, 7, cet))])
    (stored,) = store.read_all()
    assert stored.occurred_at == dt.datetime(2026, 1, 1, 12, 0, 0, 7, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "make",
    [
        lambda: AppendRequest("s", 0, []),
        lambda: AppendRequest("", 0, [ev()]),
        lambda: AppendRequest("x" * 161, 0, [ev()]),
        lambda: AppendRequest("s", 0, [ev()], request_id=""),
        lambda: AppendRequest("s", 0, [ev()], request_id="r" * 129),
        lambda: AppendRequest("s", 0, [NewEvent("", 1, {}, T0)]),
        lambda: AppendRequest("s", 0, [NewEvent("e" * 65, 1, {}, T0)]),
        lambda: AppendRequest("s", 0, [NewEvent("t", 1, {1: "x"}, T0)]),  # type: ignore[dict-item]
        # MySQL compares VARCHARs ignoring trailing spaces: "s " would share stream "s".
        lambda: AppendRequest("s ", 0, [ev()]),
        lambda: AppendRequest("s", 0, [ev()], request_id="r "),
    ],
)
def test_malformed_requests_are_refused(store: EventStore, make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((ValueError, TypeError)):
        make()
    assert count_events(store.engine) == 0


def test_identifiers_are_exact_on_every_database(store: EventStore) -> None:
    store.append("Stream", 0, [ev(1)])
    store.append("stream", 0, [ev(2)])
    store.append("strëam", 0, [ev(3)])
    assert [store.stream_version(s) for s in ("Stream", "stream", "strëam", "STREAM")] == [
        1,
        1,
        1,
        0,
    ]


def test_stream_versions_of_many_streams_at_once(store: EventStore) -> None:
    # More streams than one query takes on either database (100 on SQLite, 500 on MySQL),
    # with 0 to 3 events each, names differing only in case, and streams with no events.
    names = [f"s-{i}" for i in range(600)] + [f"S-{i}" for i in range(0, 600, 7)]
    wanted = {name: i % 4 for i, name in enumerate(names)}
    store.append_batch(
        [
            AppendRequest(name, 0, [ev(v) for v in range(count)])
            for name, count in wanted.items()
            if count
        ]
    )
    asked = [*names, "never-written", "s-0 x"]
    with store.engine.connect() as conn:
        found = store_module.stream_versions(conn, asked)
    assert found == {**wanted, "never-written": 0, "s-0 x": 0}


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sqlite_url_makes_a_working_store(url: str) -> None:
    engine = make_engine(url)
    try:
        store = EventStore(engine)
        store.create_schema()
        assert store.append("s", 0, [ev(1)]).positions == (1,)
        assert store.head().position == 1
    finally:
        engine.dispose()


# -- units of work: deciding under the ledger lock -------------------------------------------


def stream_version_on(conn: Connection, stream_id: str) -> int:
    query = sa.select(sa.func.max(events.c.version)).where(events.c.stream_id == stream_id)
    return int(conn.execute(query).scalar() or 0)


def test_transact_decides_on_what_it_read_under_the_lock(store: EventStore) -> None:
    store.append("a", 0, [ev(1)])
    heads: list[Head] = []

    def decide(unit: UnitOfWork) -> list[AppendRequest | None]:
        heads.append(unit.head)
        version = stream_version_on(unit.conn, "a")
        return [AppendRequest("a", version, [ev(2)]), None, AppendRequest("b", 5, [ev(3)])]

    appended, nothing, refused = store.transact(decide)
    assert heads[0].position == 1
    assert isinstance(appended, AppendResult) and appended.positions == (2,)
    assert nothing is None
    assert isinstance(refused, ConcurrencyConflict) and refused.stream_id == "b"
    assert positions(store) == [1, 2] and verify_chain(store.engine).ok


def test_a_unit_of_work_whose_decision_raises_writes_nothing(store: EventStore) -> None:
    def decide(unit: UnitOfWork) -> list[AppendRequest | None]:
        unit.conn.execute(sa.select(sa.func.count()).select_from(events))
        raise RuntimeError("a bug in the decision")

    with pytest.raises(AppendFailed) as failed:
        store.transact(decide)
    assert failed.value.before_commit
    assert count_events(store.engine) == 0 and store.head().position == 0


async def test_committer_decides_a_batch_in_one_call_beside_plain_appends(
    store: EventStore,
) -> None:
    """Deferred items of one decider are decided together, in the batch's transaction; each
    caller gets its own value and append, or its own refusal; plain appends ride along."""
    calls: list[list[str]] = []

    def decider(unit: UnitOfWork, items: list[str]) -> list[Decision | BaseException]:
        calls.append(list(items))
        decided: list[Decision | BaseException] = []
        for item in items:
            if item == "refuse":
                decided.append(ValueError("refused: " + item))
            elif item == "read-only":
                decided.append(Decision(None, "nothing to write"))
            else:
                version = stream_version_on(unit.conn, item)
                decided.append(Decision(AppendRequest(item, version, [ev(len(item))]), item))
        return decided

    committer = GroupCommitter(store)
    try:
        results = await asyncio.gather(
            committer.append("plain", 0, [ev(0)]),
            *(committer.decide(decider, item) for item in ("x", "refuse", "read-only", "yy")),
            return_exceptions=True,
        )
    finally:
        await committer.close()
    plain, x, refused, read_only, yy = results
    assert isinstance(plain, AppendResult) and plain.stream_version == 1
    assert isinstance(refused, ValueError) and str(refused) == "refused: refuse"
    assert read_only == ("nothing to write", None)
    assert x[0] == "x" and x[1].stream_version == 1  # type: ignore[index]
    assert yy[0] == "yy" and yy[1].stream_version == 1  # type: ignore[index]
    assert calls == [["x", "refuse", "read-only", "yy"]]  # one call, in the callers' order
    assert sorted(e.stream_id for e in store.read_all()) == ["plain", "x", "yy"]
    assert committer.appended == 3


async def test_a_decision_is_settled_once_durable_in_the_commits_thread(
    store: EventStore,
) -> None:
    """``settle`` (how a fresh verdict gets its receipt) sees the append's positions, runs in
    the commit's thread after the commit, and never runs for an append that failed or for a
    decision that appends nothing; one that fails fails its own caller alone, as a commit
    whose outcome is unknown (the events are durable)."""
    settled: list[tuple[str, int, bool, str]] = []

    def settle(value: str, result: AppendResult) -> str:
        if value == "cannot-settle":
            raise RuntimeError("the signer failed")
        # The caller sees what ``settle`` returns; a read of the ledger here finds the event.
        durable = any(e.position == result.positions[-1] for e in store.read_all())
        settled.append((value, result.positions[-1], durable, threading.current_thread().name))
        return f"{value}@{result.positions[-1]}"

    def decider(unit: UnitOfWork, items: list[str]) -> list[Decision | BaseException]:
        return [
            Decision(None, item, settle)
            if item == "read-only"
            else Decision(AppendRequest(item, 0, [ev(1, bad=(item == "bad"))]), item, settle)
            for item in items
        ]

    store.listeners.append(Exploding(when="bad"))
    committer = GroupCommitter(store)
    try:
        results = await asyncio.gather(
            *(
                committer.decide(decider, item)
                for item in ("a", "bad", "read-only", "b", "cannot-settle")
            ),
            return_exceptions=True,
        )
    finally:
        await committer.close()
    a, bad, read_only, b, unsettled = results
    assert isinstance(bad, AppendFailed) and bad.before_commit
    assert isinstance(unsettled, AppendFailed) and not unsettled.before_commit
    assert "cannot-settle" in {e.stream_id for e in store.read_all()}
    assert read_only == ("read-only", None)
    assert a[0] == f"a@{a[1].positions[-1]}" and b[0] == f"b@{b[1].positions[-1]}"  # type: ignore[index]
    assert sorted(value for value, *_ in settled) == ["a", "b"]
    assert all(durable for _, _, durable, _ in settled)
    assert {thread for *_, thread in settled} != {threading.main_thread().name}


def test_a_unit_of_work_looks_each_request_id_up_once(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the decision learnt of request ids (recorded or not) is what the append uses:
    a recorded id is a duplicate, an unknown one is appended, and neither is asked twice."""
    first = store.append("a", 0, [ev(1), ev(2)], request_id="done")
    queries: list[set[str]] = []
    real = store_module.find_requests

    def counting(conn: Connection, request_ids: Any) -> Any:
        queries.append(set(request_ids))
        return real(conn, request_ids)

    monkeypatch.setattr(store_module, "find_requests", counting)
    seen: dict[str, Any] = {}

    def decide(unit: UnitOfWork) -> list[AppendRequest | None]:
        seen.update(unit.recorded(["done", "new"]))
        return [AppendRequest("a", 2, [ev(3)], "done"), AppendRequest("b", 0, [ev(4)], "new")]

    again, new = store.transact(decide)
    assert seen["done"].positions == first.positions and "new" not in seen
    assert seen["done"].event_types == ("test.happened", "test.happened")
    assert isinstance(again, AppendResult) and again.duplicate and again.positions == (1, 2)
    assert isinstance(new, AppendResult) and not new.duplicate and new.positions == (3,)
    assert queries == [{"done", "new"}]


def test_pooled_connections_come_back_without_a_transaction(store: EventStore) -> None:
    """Connections go back to the pool without the pool's own rollback: every transaction,
    a committed unit of work, a failed one, a read, must have ended itself, or a pooled
    connection would keep the ledger lock from every other writer."""
    store.append("a", 0, [ev(1)])
    with pytest.raises(AppendFailed):
        store.transact(lambda unit: (_ for _ in ()).throw(RuntimeError("decision failed")))
    assert store.head().position == 1  # a read on a pooled connection
    other = sa.create_engine(
        str(store.engine.url.render_as_string(hide_password=False)),
        poolclass=sa.NullPool,
        connect_args={"timeout": 1} if store.engine.dialect.name == "sqlite" else {},
    )
    try:
        with other.connect() as conn:
            if other.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits 1 s at most for the lock
            else:
                conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
                conn.exec_driver_sql("SELECT position FROM ledger_head FOR UPDATE")
            conn.rollback()
    finally:
        other.dispose()


def test_request_ids_are_looked_up_by_their_index_whatever_the_statistics(
    store: EventStore,
) -> None:
    """A batch's request-id lookup must not scan the ledger under the ledger lock. Most events
    carry no request id; InnoDB's statistics count all of those NULLs as one value, and with
    more ids than the optimizer dives into (200) it has chosen a scan of the whole table,
    which grows with the ledger (SQLite does the same once ``ANALYZE`` has run). A 250-id
    lookup uses the index on a ledger whose statistics say a scan would be better."""
    requests = [
        AppendRequest(f"s{n}", 0, [ev(n)], f"req-{n}" if n % 250 == 0 else None)
        for n in range(3000)
    ]
    for start in range(0, len(requests), 500):
        store.append_batch(requests[start : start + 500])
    ids = [f"req-{n}" for n in range(0, 250 * 250, 250)]  # 12 of them recorded
    mysql = store.engine.dialect.name != "sqlite"
    with store.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE TABLE events" if mysql else "ANALYZE events")
        query = store_module.FIND_REQUESTS if mysql else store_module.FIND_REQUESTS_SQLITE
        bound = query.params(request_ids=ids)
        sql = str(bound.compile(conn, compile_kwargs={"literal_binds": True}))
        if mysql:
            plan = conn.exec_driver_sql(f"EXPLAIN {sql}").mappings().all()
            assert [(row["type"], row["key"]) for row in plan] == [
                ("range", "ix_events_request_id")
            ]
        else:
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
            assert any("INDEX ix_events_request_id" in row[-1] for row in plan), plan
        found = store_module.find_requests(conn, ids)
    assert sorted(found) == sorted(f"req-{n}" for n in range(0, 3000, 250))


def test_a_ledger_that_lost_the_request_id_index_gets_it_back(store: EventStore) -> None:
    """The request-id lookup names its index to the database; a start puts a dropped one
    back, and a retried append is then still answered with its recorded positions."""
    first = store.append("a", 0, [ev(1)], request_id="r1")
    [index] = [i for i in events.indexes if i.name == store_module.REQUEST_ID_INDEX]
    with store.engine.begin() as conn:
        conn.execute(sa.schema.DropIndex(index))
    names = {i["name"] for i in sa.inspect(store.engine).get_indexes("events")}
    assert index.name not in names
    store.create_schema()
    names = {i["name"] for i in sa.inspect(store.engine).get_indexes("events")}
    assert index.name in names
    again = store.append("a", 0, [ev(1)], request_id="r1")
    assert again.duplicate and again.positions == first.positions
