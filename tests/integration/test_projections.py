"""Projections: read-your-writes, and a rebuild from position 0 equal to the live tables,
even while the node keeps writing; on SQLite and on MariaDB."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from downstream_node.config import Settings
from downstream_node.domain.clock import FakeClock
from downstream_node.domain.tokens import make_address, token_hash
from downstream_node.heartbeat import Merkle, SeededChunk
from downstream_node.ledger.store import EventStore
from downstream_node.ledger.verify import verify_chain
from downstream_node.projections.rebuild import (
    RebuildRunning,
    compare_generations,
    ensure_projections,
    rebuild,
    rebuild_lock,
)
from downstream_node.projections.tables import tables_for
from downstream_node.service import Context, Node

FARMER = Context(actor="farmer", remote="10.0.0.1")
mariadb_only = pytest.mark.parametrize("db_url", ["mysql"], indirect=True)


async def start_node(db_url: str, tmp_path: Path, clock: FakeClock) -> Node:
    settings = Settings(
        db_url=db_url, secret_file=tmp_path / "secret.json", interval=60, redundancy=2
    )
    return await Node(settings, clock=clock).start()


async def farm_a_while(
    node: Node, clock: FakeClock, address: str, rounds: int, *, files: int, size: int
) -> list[str]:
    """``files`` seeded chunks of ``size`` bytes; two farmers of ``address`` take contracts,
    answer (one wrongly once), let one expire, remove one."""
    await node.whitelist([(address, "50000")])
    for _ in range(files):
        await node.add_seeded(size)
    tokens = [(await node.create_token(address, FARMER))[0] for _ in range(2)]
    public = Merkle.fromdict(node.scheme.public())  # type: ignore[union-attr]
    held: dict[str, dict] = {}
    for tok in tokens:
        for _ in range(2):
            got = await node.chunk(tok, FARMER)
            held[tok + got["file_hash"]] = got
    for r in range(rounds):
        for tok in tokens:
            due = await node.due(tok, FARMER)
            for item in due["due_contracts"]:
                got = held[tok + item["hash"]]
                proof = public.prove(
                    SeededChunk(got["seed"], got["size"]), item["challenge"], got["tag"]
                ).todict()
                if r == 1 and tok == tokens[1]:
                    proof["leaf"]["blob"] = proof["branch"]["rows"][0][0]  # a wrong proof
                await node.answer(tok, item["hash"], proof, FARMER)
        clock.advance(61)
    first = next(iter(held.values()))
    await node.remove(tokens[0], first["file_hash"], FARMER)
    return tokens


def table_rows(node: Node, generation: int, name: str) -> list[tuple]:
    table = getattr(tables_for(generation), name)
    with node.engine.connect() as conn:
        return [
            tuple(r) for r in conn.execute(sa.select(table).order_by(*table.primary_key.columns))
        ]


async def test_reads_its_own_writes_and_rebuild_equals_live(db_url: str, tmp_path: Path) -> None:
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        address = make_address(b"\x11" * 20)
        tokens = await farm_a_while(node, clock, address, 3, files=3, size=16 * 1024)
        # Read your writes: the contract list reflects the removal at once.
        due = await node.due(tokens[0], FARMER)
        assert len(due["all_contracts"]) == 1
        live_gen = node.store.head().projection_generation
        before = {
            name: table_rows(node, live_gen, name)
            for name in ("tokens", "files", "contracts", "uptime", "whitelist")
        }
        assert before["contracts"] and before["uptime"]

        report = await asyncio.to_thread(rebuild, node.store, batch=7)
        assert report.new_generation == live_gen + 1
        assert report.position == node.store.head().position
        assert compare_generations(node.engine, live_gen, report.new_generation) == {}
        after = {name: table_rows(node, report.new_generation, name) for name in before}
        assert after == before
        # The node keeps working on the new generation.
        await node.due(tokens[1], FARMER)
        assert node.store.head().projection_generation == report.new_generation
        assert verify_chain(node.engine).ok
    finally:
        await node.close()


async def test_rebuild_while_the_node_writes(db_url: str, tmp_path: Path) -> None:
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        address = make_address(b"\x12" * 20)
        await farm_a_while(node, clock, address, 2, files=4, size=8 * 1024)

        stop = threading.Event()
        reports = []

        def rebuild_twice() -> None:
            reports.append(rebuild(node.store, batch=3))
            reports.append(rebuild(node.store, batch=5))
            stop.set()

        rebuilder = asyncio.create_task(asyncio.to_thread(rebuild_twice))
        written = 0
        while not stop.is_set() or written < 5:
            await node.whitelist(
                [(make_address(b"\xee" + bytes([written % 256]) * 19), str(written))]
            )
            await node.create_token(address)
            written += 1
        await rebuilder
        # The live generation got every write made during and after the swaps: a fresh
        # rebuild from position 0 must equal it row for row.
        live = node.store.head().projection_generation
        final = await asyncio.to_thread(rebuild, node.store)
        assert compare_generations(node.engine, live, final.new_generation) == {}
        with node.read_model.reader() as reader:
            assert reader.lag() == 0
            assert reader.balance(make_address(b"\xee" + bytes([0]) * 19)) is not None
    finally:
        await node.close()


async def test_one_rebuild_at_a_time(db_url: str, tmp_path: Path) -> None:
    """A second rebuild started while one runs is refused (or, told to wait, runs after it):
    two at once would both fill generation g+1, and the second would drop the tables the
    first had just swapped in."""
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        address = make_address(b"\x13" * 20)
        await farm_a_while(node, clock, address, 2, files=3, size=8 * 1024)
        paused, release = threading.Event(), threading.Event()

        def progress(done: int, total: int) -> None:
            paused.set()
            release.wait(30)

        first = asyncio.create_task(
            asyncio.to_thread(rebuild, node.store, batch=3, progress=progress)
        )
        assert await asyncio.to_thread(paused.wait, 30)
        with pytest.raises(RebuildRunning):
            await asyncio.to_thread(rebuild, node.store)
        second = asyncio.create_task(asyncio.to_thread(rebuild, node.store, wait=30))
        await node.create_token(address)  # the node writes meanwhile
        await asyncio.sleep(0.3)
        assert not second.done()
        release.set()
        one, two = await first, await second
        assert (
            two.old_generation == one.new_generation == node.store.head().projection_generation - 1
        )
        final = await asyncio.to_thread(rebuild, node.store)
        assert compare_generations(node.engine, two.new_generation, final.new_generation) == {}
    finally:
        release.set()
        await node.close()


@mariadb_only
def test_rebuilds_of_two_ledgers_on_one_server_do_not_wait_for_each_other(
    db_url: str, tmp_path: Path
) -> None:
    """MySQL's named locks are server-wide: the rebuild lock is named per database."""
    other_url = db_url + "_other"
    admin = sa.create_engine(db_url.rsplit("/", 1)[0], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{other_url.rsplit('/', 1)[1]}`")
    try:
        stores = [EventStore(sa.create_engine(url)) for url in (db_url, other_url)]
        for store in stores:
            store.create_schema()
            ensure_projections(store)
        with rebuild_lock(stores[0].engine):
            with pytest.raises(RebuildRunning):
                rebuild(stores[0])  # this ledger's: refused
            assert rebuild(stores[1]).new_generation == 2  # the other's: not held up
        for store in stores:
            store.engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{other_url.rsplit('/', 1)[1]}`")
        admin.dispose()


async def test_uptime_projection_counts_online_time(db_url: str, tmp_path: Path) -> None:
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        address = make_address(b"\x13" * 20)
        await node.whitelist([(address, "50000")])
        await node.add_seeded(4096)
        token, public = await node.create_token(address, FARMER)
        got = await node.chunk(token, FARMER)
        proof = (
            Merkle.fromdict(public)
            .prove(SeededChunk(got["seed"], got["size"]), got["challenge"], got["tag"])
            .todict()
        )
        assert await node.answer(token, got["file_hash"], proof, FARMER) == "pass"
        clock.advance(300)  # answered once: online 120 s (due 60 s + one interval)
        await node.due(token, FARMER)  # marks it expired
        with node.read_model.reader() as reader:
            up = reader.uptime(token_hash(token))
        now = node._now()
        assert up is not None
        assert up.online(now) == 120 * 1_000_000
        assert up.total(now) == 300 * 1_000_000
        assert (up.contracts, up.passed, up.expired) == (1, 1, 1)
    finally:
        await node.close()


def test_projection_tables_of_an_older_release_get_the_new_index(store: EventStore) -> None:
    """The (token, file) index came after the first release: a node starting on tables made
    without it creates it, and a second start finds it there."""
    live = ensure_projections(store)
    name = f"ix_{live.contracts.name}_token_hash_file_hash"
    [index] = [i for i in live.contracts.indexes if i.name == name]
    with store.engine.begin() as conn:
        conn.execute(sa.schema.DropIndex(index))
    assert name not in _indexes(store, live.contracts.name)
    for _ in range(2):
        ensure_projections(store)
        assert name in _indexes(store, live.contracts.name)


def _indexes(store: EventStore, table: str) -> set[str]:
    return {index["name"] for index in sa.inspect(store.engine).get_indexes(table)}


async def test_projection_tables_of_an_older_layout_are_rebuilt_on_start(
    db_url: str, tmp_path: Path
) -> None:
    """Releases before this one kept each contract's tag (some 24 KiB) in its projection
    row: a node starting on such tables folds the ledger into a new generation of this
    release's layout, with the same rows, and a second start leaves it alone."""
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        address = make_address(b"\x14" * 20)
        tokens = await farm_a_while(node, clock, address, 1, files=2, size=8 * 1024)
        old = node.store.head().projection_generation
        before = {name: table_rows(node, old, name) for name in ("contracts", "uptime")}
        with node.engine.begin() as conn:
            conn.exec_driver_sql(
                f"ALTER TABLE {tables_for(old).contracts.name} ADD COLUMN tag TEXT"
            )
    finally:
        await node.close()

    node = await start_node(db_url, tmp_path, clock)
    try:
        new = node.store.head().projection_generation
        assert new == old + 1
        columns = sa.inspect(node.engine).get_columns(tables_for(new).contracts.name)
        assert "tag" not in {c["name"] for c in columns}
        assert {name: table_rows(node, new, name) for name in before} == before
        assert len((await node.due(tokens[1], FARMER))["all_contracts"]) == 2
    finally:
        await node.close()
    node = await start_node(db_url, tmp_path, clock)
    try:
        assert node.store.head().projection_generation == new
    finally:
        await node.close()


async def test_contracts_of_many_token_and_file_pairs_are_read_in_one_go(
    db_url: str, tmp_path: Path
) -> None:
    """A batch of answers reads its contracts by (token, file) pairs: each held pair gives
    its contract, a pair without one gives none, and every token named comes back. On
    SQLite each pair is one index seek, not a walk through all of the token's contracts."""
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        address = make_address(b"\x12" * 20)
        tokens = await farm_a_while(node, clock, address, 1, files=3, size=16 * 1024)
        hashes = [token_hash(t) for t in tokens]
        with node.read_model.reader() as reader:
            files = [f["file_hash"] for f in reader.files()]
            pairs = {(h, f) for h in hashes for f in files}  # 6 pairs: some held, some not
            found, owners = reader.contracts_for_pairs(pairs)
            expected = {
                pair: contract
                for pair in pairs
                if (contract := reader.contract_for(*pair)) is not None
            }
            plan = _pairs_plan(reader) if node.engine.dialect.name == "sqlite" else None
        assert found == expected and 0 < len(found) < len(pairs)
        assert set(owners) == set(hashes)
        if plan is not None:
            assert "MULTI-INDEX OR" in plan and "token_hash=? AND file_hash=?" in plan
    finally:
        await node.close()


def _pairs_plan(reader) -> str:  # type: ignore[no-untyped-def]
    from downstream_node.projections.queries import contracts_for_pairs_sqlite

    query = contracts_for_pairs_sqlite(reader.t, 2)
    sql = str(query.compile(reader.conn))
    params = ("a", "b", "c", "d")
    rows = reader.conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params).all()
    return "\n".join(row[-1] for row in rows)


def test_the_sweep_and_the_replica_count_read_only_open_contracts(store: EventStore) -> None:
    """Ended contracts stay in the projection for ever; the sweep (every 30 s) and /chunk's
    count of live replicas must not read them all. On a projection where most contracts
    ended, and whose statistics say so, their queries go through the open-contracts index,
    and still find exactly the lapsed open contracts and the files with a free replica."""
    from downstream_node.projections.queries import Reader

    t = ensure_projections(store)
    now = 10_000
    files = [f"{n:064x}" for n in range(10)]
    tokens = [f"{n:064x}" for n in range(100, 120)]
    contract = {
        "heartbeat": "merkle", "seed": "s", "state": "{}", "challenge": "{}",
        "challenge_index": 0, "interval": 60, "answered": False, "end_reason": None,
        "challenges": 0, "passed": 0, "failed": 0, "rejected": 0, "version": 2,
    }  # fmt: skip
    rows = [
        {
            **contract,
            "contract_id": f"{n:032x}",
            "token_hash": tokens[n % 20],
            "file_hash": files[n % 10],
            "started_at": n,
            "due": n + 60,
            # 3,000 ended; of the 30 open, the first 5 lapsed before now
            "expiration": now - 1 if 3000 <= n < 3005 else now + 1000,
            "ended_at": n + 100 if n < 3000 else None,
        }
        for n in range(3030)
    ]
    sqlite = store.engine.dialect.name == "sqlite"
    with store.engine.begin() as conn:
        conn.execute(
            t.files.insert(),
            [
                {"file_hash": f, "size": 1, "redundancy": 4, "interval": 60, "seed": "s",
                 "path": None, "added_at": 0, "removed_at": None, "version": 1}
                for f in files
            ],
        )  # fmt: skip
        conn.execute(t.contracts.insert(), rows)
        conn.exec_driver_sql("ANALYZE" if sqlite else f"ANALYZE TABLE {t.contracts.name}")

    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if t.contracts.name in statement:
            statements.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", capture)
    try:
        with store.engine.connect() as conn:
            reader = Reader(conn, t, 0)
            expired = reader.expired_contracts(now)
            candidates = reader.candidate_files(tokens[0], now)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", capture)
    assert sorted(c.contract_id for c in expired) == [f"{n:032x}" for n in range(3000, 3005)]
    # Three open contracts per file, the lapsed ones (on files 0-4) not counted: files 1-4
    # first (2 live), then 5-8 (3 live, limit 8); token 0 holds file 0 (contract 3020).
    assert [f.file_hash for f in candidates] == files[1:9]
    assert [f.live_contracts for f in candidates] == [2, 2, 2, 2, 3, 3, 3, 3]
    assert len(statements) == 2
    with store.engine.connect() as conn:
        for statement, parameters in statements:
            # No step reads the contracts table whole (only the open-contracts index may be
            # walked), and both queries go through that index.
            if sqlite:
                plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
                steps = [row[-1] for row in plan if t.contracts.name in row[-1]]
                scans = [step for step in steps if step.startswith("SCAN")]
                assert all(step.endswith("contracts_open") for step in scans), steps
                assert any("contracts_open" in step for step in steps), steps
            else:
                plan = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).mappings().all()
                steps = [row for row in plan if row["table"] == t.contracts.name]
                assert all(row["type"] not in ("ALL", "index") for row in steps), plan
                assert any(row["key"].endswith("contracts_open") for row in steps), plan
