"""Concurrency, as callers live it: group commit under 64 writers, several nodes (threads with
their own engines, and real processes) on one database, and a reader tailing the ledger while
writers append. Every run ends with the same proof: nothing lost, positions 1..N, stream
versions gap-free, the hash chain verifies.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from downstream_node.ledger.db import make_engine
from downstream_node.ledger.group_commit import GroupCommitter
from downstream_node.ledger.schema import events
from downstream_node.ledger.store import ConcurrencyConflict, EventStore, NewEvent
from downstream_node.ledger.verify import verify_chain

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
REPO = Path(__file__).resolve().parents[3]


def new(payload: dict) -> NewEvent:
    return NewEvent("test.written", 1, payload, T0)


@pytest.fixture
def store(db_url: str) -> Iterator[EventStore]:
    engine = make_engine(db_url)
    store = EventStore(engine)
    store.create_schema()
    yield store
    engine.dispose()


def assert_whole_ledger(store: EventStore, acked: list[tuple[str, tuple[int, ...], list]]) -> None:
    """Every acknowledged append is in the ledger as acknowledged, and nothing else is."""
    stored = list(store.read_all(page=97))
    total = sum(len(pos) for _, pos, _ in acked)
    assert [e.position for e in stored] == list(range(1, total + 1)), "positions not 1..N"
    by_position = {e.position: e for e in stored}
    for stream, pos, payloads in acked:
        got = [by_position[p] for p in pos]
        assert [e.stream_id for e in got] == [stream] * len(pos)
        assert [e.payload for e in got] == payloads
        assert [e.version for e in got] == list(range(got[0].version, got[0].version + len(pos)))
    versions: dict[str, list[int]] = defaultdict(list)
    for e in stored:
        versions[e.stream_id].append(e.version)
    for stream, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), f"stream {stream} versions not gap-free"
        assert store.stream_version(stream) == len(seen)
    report = verify_chain(store.engine)
    head = store.head()
    assert report.ok, report.reason
    assert report.checked == total == head.position
    assert report.last_hash == head.hash


async def retrying_append(
    committer: GroupCommitter, stream: str, payloads: list[dict], **kwargs: str
) -> tuple[tuple[int, ...], int]:
    """Read the stream's version, append expecting it, and on a conflict read again."""
    loop = asyncio.get_running_loop()
    conflicts = 0
    while True:
        expected = await loop.run_in_executor(None, committer.store.stream_version, stream)
        try:
            result = await committer.append(stream, expected, [new(p) for p in payloads], **kwargs)
        except ConcurrencyConflict:
            conflicts += 1
            continue
        assert result.stream_version == expected + len(payloads)
        return result.positions, conflicts


# -- one node, many coroutines: group commit ----------------------------------------------------


async def test_64_concurrent_writers_lose_nothing_and_share_commits(
    store: EventStore, db_url: str
) -> None:
    writers, rounds, per_append = 64, 3, 3
    committer = GroupCommitter(store)
    observer = make_engine(db_url)  # another connection pool: what others can see
    loop = asyncio.get_running_loop()
    acked: list[tuple[str, tuple[int, ...], list]] = []
    conflicts = 0

    def visible(pos: tuple[int, ...]) -> int:
        with observer.connect() as conn:
            query = sa.select(sa.func.count()).where(events.c.position.in_(pos))
            return conn.execute(query).scalar_one()

    async def writer(w: int) -> None:
        nonlocal conflicts
        # Half the writers own a stream; the other half contend for four shared ones.
        stream = f"own-{w}" if w % 2 == 0 else f"shared-{w // 2 % 4}"
        for r in range(rounds):
            payloads = [{"w": w, "r": r, "k": k, "text": f"{w}/{r}/{k}"} for k in range(per_append)]
            pos, lost = await retrying_append(committer, stream, payloads)
            conflicts += lost
            # Acknowledged means durable and visible to everyone, not just to this process.
            assert await loop.run_in_executor(None, visible, pos) == per_append
            acked.append((stream, pos, payloads))

    try:
        await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(writers))), 120)
    finally:
        await committer.close()
        observer.dispose()

    appends = writers * rounds
    assert len(acked) == appends
    assert committer.appended == appends * per_append
    assert conflicts > 0, "the shared streams should have seen conflicts"
    # Group commit really batched: far fewer transactions than appends (+ conflicted tries).
    assert committer.batches < appends
    assert_whole_ledger(store, acked)


async def test_simultaneous_appends_share_one_transaction(store: EventStore) -> None:
    committer = GroupCommitter(store)
    try:
        results = await asyncio.gather(
            *(committer.append(f"s{i}", 0, [new({"i": i})]) for i in range(64))
        )
    finally:
        await committer.close()
    assert sorted(p for r in results for p in r.positions) == list(range(1, 65))
    assert committer.batches <= 2
    assert verify_chain(store.engine).ok


# -- several nodes on one database ---------------------------------------------------------------


def test_nodes_with_their_own_engines_make_one_ledger(db_url: str) -> None:
    """Three nodes in threads, each with its own engine and group committer, as separate
    processes would be: only the database can serialise them."""
    nodes, writers, rounds = 3, 12, 4
    setup = make_engine(db_url)
    EventStore(setup).create_schema()
    start = threading.Barrier(nodes)

    def node(n: int) -> list[tuple[str, tuple[int, ...], list]]:
        engine = make_engine(db_url)
        store = EventStore(engine)
        store.head()  # connect before the race starts

        async def run() -> list[tuple[str, tuple[int, ...], list]]:
            committer = GroupCommitter(store)
            acked = []

            async def writer(w: int) -> None:
                stream = "shared" if w % 3 == 0 else f"node{n}-{w % 2}"
                for r in range(rounds):
                    payloads = [{"node": n, "w": w, "r": r}, {"node": n, "w": w, "r": r, "b": 1}]
                    pos, _ = await retrying_append(
                        committer, stream, payloads, request_id=f"{n}.{w}.{r}"
                    )
                    acked.append((stream, pos, payloads))

            try:
                await asyncio.gather(*(writer(w) for w in range(writers)))
            finally:
                await committer.close()
            return acked

        try:
            start.wait(timeout=30)
            return asyncio.run(run())
        finally:
            engine.dispose()

    try:
        with ThreadPoolExecutor(nodes) as pool:
            results = list(pool.map(node, range(nodes), timeout=120))
        acked = [a for r in results for a in r]
        assert len(acked) == nodes * writers * rounds
        assert_whole_ledger(EventStore(setup), acked)
    finally:
        setup.dispose()


NODE_PROCESS = textwrap.dedent(
    """
    import asyncio, datetime as dt, json, sys
    from downstream_node.ledger.db import make_engine
    from downstream_node.ledger.group_commit import GroupCommitter
    from downstream_node.ledger.store import ConcurrencyConflict, EventStore, NewEvent

    url, node = sys.argv[1], sys.argv[2]
    T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    async def main():
        store = EventStore(make_engine(url))
        store.head()
        print("ready", flush=True)
        sys.stdin.readline()  # wait until every process is ready, then go together
        committer = GroupCommitter(store)
        loop = asyncio.get_running_loop()
        acked = []

        async def writer(w):
            stream = "shared" if w % 2 else f"{node}-{w}"
            for r in range(5):
                payload = {"node": node, "w": w, "r": r}
                while True:
                    expected = await loop.run_in_executor(None, store.stream_version, stream)
                    try:
                        result = await committer.append(
                            stream, expected, [NewEvent("test.written", 1, payload, T0)]
                        )
                        break
                    except ConcurrencyConflict:
                        pass
                acked.append([stream, list(result.positions), [payload]])

        await asyncio.gather(*(writer(w) for w in range(8)))
        await committer.close()
        print(json.dumps(acked), flush=True)

    asyncio.run(main())
    """
)


def test_separate_processes_make_one_ledger(store: EventStore, db_url: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", NODE_PROCESS, db_url, f"p{i}"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", proc.communicate(timeout=30)[1]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        acked = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            acked += [(s, tuple(p), payloads) for s, p, payloads in json.loads(out)]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert len(acked) == 3 * 8 * 5
    assert_whole_ledger(store, acked)


def test_nodes_starting_together_create_the_schema_once(db_url: str) -> None:
    nodes = 4
    engines = [make_engine(db_url) for _ in range(nodes)]
    start = threading.Barrier(nodes)

    def boot(engine: Engine) -> None:
        start.wait(timeout=30)
        EventStore(engine).create_schema()

    try:
        with ThreadPoolExecutor(nodes) as pool:
            list(pool.map(boot, engines, timeout=60))
        store = EventStore(engines[0])
        assert store.append("s", 0, [new({"n": 1})]).positions == (1,)
        assert verify_chain(engines[0]).ok
    finally:
        for engine in engines:
            engine.dispose()


# -- a reader tailing the ledger while writers append ------------------------------------------


def test_tailing_reader_never_skips_a_position(db_url: str) -> None:
    """Writers in threads with their own engines append for real in parallel; two readers
    poll ``position > last_seen`` and must see last_seen + 1 every time, never a later one."""
    writers, appends = 6, 30
    sizes = [1 + i % 3 for i in range(appends)]
    total = writers * sum(sizes)
    setup = make_engine(db_url)
    EventStore(setup).create_schema()
    start = threading.Barrier(writers + 1)
    failures: list[BaseException] = []

    def writer(w: int) -> None:
        engine = make_engine(db_url, pool_size=1)
        store = EventStore(engine)
        mine = 0
        try:
            start.wait(timeout=30)
            for i, size in enumerate(sizes):
                payloads = [new({"w": w, "i": i, "k": k}) for k in range(size)]
                if i % 2:
                    store.append("shared", None, payloads)
                else:
                    mine = store.append(f"w{w}", mine, payloads).stream_version
        except BaseException as exc:
            failures.append(exc)
        finally:
            engine.dispose()

    def raw_reader(seen: list[int]) -> None:
        """A projector-like tail: one long-lived connection, one short transaction per poll."""
        engine = make_engine(db_url, pool_size=1)
        last = 0
        try:
            with engine.connect() as conn:
                while last < total and not failures:
                    rows = conn.execute(
                        sa.select(events.c.position)
                        .where(events.c.position > last)
                        .order_by(events.c.position)
                        .limit(40)
                    ).scalars()
                    for position in rows:
                        if position != last + 1:
                            raise AssertionError(f"raw reader skipped from {last} to {position}")
                        last = position
                    conn.commit()
                    seen.append(last)
        except BaseException as exc:
            failures.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(writers)]
    raw_seen: list[int] = []
    threads.append(threading.Thread(target=raw_reader, args=(raw_seen,), daemon=True))
    for t in threads:
        t.start()

    reader = EventStore(make_engine(db_url))
    heads_seen: set[int] = set()
    last = 0
    deadline = time.monotonic() + 120
    try:
        start.wait(timeout=30)
        while last < total:
            for e in reader.read_all(after=last, page=25):
                assert e.position == last + 1, f"read_all skipped from {last} to {e.position}"
                last = e.position
            heads_seen.add(last)
            assert not failures, failures
            assert time.monotonic() < deadline, f"reader stuck at {last} of {total}"
        for t in threads:
            t.join(timeout=60)
        assert not failures, failures
        assert last == total and raw_seen[-1] == total
        # The readers really tailed a moving ledger rather than reading it once at the end.
        assert len(heads_seen) >= 3 and len(set(raw_seen)) > 5
        assert verify_chain(setup).ok
    finally:
        reader.engine.dispose()
        setup.dispose()
