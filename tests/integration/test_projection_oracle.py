"""The projector folds batches in memory; the oracle (``projection_oracle.py``) folds one event
and several statements at a time, as the projector was first written. Over random farming
histories (tokens deleted, files removed, wrong, late and repeated answers, expiries, spent
encodings, whitelist changes) both must fill the tables identically, whether the events come
one append at a time (the live projector), in a rebuild's pages, or in one large batch."""

from __future__ import annotations

import random
from pathlib import Path

import projection_oracle as oracle
import pytest
import sqlalchemy as sa

from downstream_node.config import Settings
from downstream_node.domain.clock import FakeClock
from downstream_node.domain.errors import Refused
from downstream_node.domain.tokens import make_address
from downstream_node.heartbeat import Merkle, SeededChunk
from downstream_node.ledger.db import write_transaction
from downstream_node.projections import fold
from downstream_node.projections.projector import apply_events, create_tables
from downstream_node.projections.rebuild import compare_generations, rebuild
from downstream_node.projections.tables import tables_for
from downstream_node.service import Context, Node


async def farm_randomly(node: Node, clock: FakeClock, rng: random.Random, steps: int) -> None:
    addresses = [make_address(bytes([i + 1]) * 20) for i in range(3)]
    await node.whitelist([(a, "50000") for a in addresses])
    seeds = {  # file hash -> seed: a removed file may be added again
        await node.add_seeded(4096, seed=f"oracle-{i}", interval=60): f"oracle-{i}"
        for i in range(3)
    }
    files = list(seeds)
    removed: list[str] = []
    public = Merkle.fromdict(node.scheme.public())  # type: ignore[union-attr]
    tokens: list[str] = []
    held: dict[tuple[str, str], dict] = {}  # (token, file hash) -> chunk and current challenge

    async def answer(wrong: bool) -> None:
        await answer_one(*rng.choice(sorted(held)), wrong=wrong)

    async def answer_one(token: str, file_hash: str, wrong: bool = False) -> None:
        got = held[(token, file_hash)]
        proof = public.prove(
            SeededChunk(got["seed"], got["size"]), got["challenge"], got["tag"]
        ).todict()
        if wrong:
            proof["leaf"]["blob"] = proof["branch"]["rows"][0][0]
        try:
            await node.answer(token, file_hash, proof)
        except Refused as refused:
            if refused.status in ("expired", "no_hash", "no_token"):
                held.pop((token, file_hash), None)

    async def due(token: str) -> list[str]:
        due = (await node.due(token))["due_contracts"]
        for item in due:
            if (token, item["hash"]) in held:
                held[(token, item["hash"])]["challenge"] = item["challenge"]
        return [item["hash"] for item in due if (token, item["hash"]) in held]

    for _ in range(steps):
        roll = rng.random()
        try:
            if roll < 0.06 or not tokens:
                ctx = Context(actor="farmer", remote=f"10.0.0.{rng.randrange(3)}")
                tokens.append((await node.create_token(rng.choice(addresses), ctx))[0])
            elif roll < 0.18:
                token = rng.choice(tokens)
                got = await node.chunk(token)
                held[(token, got["file_hash"])] = got
            elif roll < 0.30 and held:
                await answer(wrong=rng.random() < 0.3)
            elif roll < 0.50:
                # A round: every farmer answers what is due (some forget one), time moves on.
                for token in list(tokens):
                    for file_hash in await due(token):
                        if rng.random() < 0.9:
                            await answer_one(token, file_hash)
                clock.advance(rng.choice([31, 61, 61, 61]))
            elif roll < 0.60:
                await due(rng.choice(tokens))
            elif roll < 0.68:
                clock.advance(rng.choice([5, 30, 61, 125]))
            elif roll < 0.73 and held:
                token, file_hash = rng.choice(sorted(held))
                await node.remove(token, file_hash)
                held.pop((token, file_hash))
            elif roll < 0.77:
                token = tokens.pop(rng.randrange(len(tokens)))
                await node.delete_token(token)
                for key in [k for k in held if k[0] == token]:
                    held.pop(key)
            elif roll < 0.79 and len(files) > 1:
                file_hash = files.pop(rng.randrange(len(files)))
                await node.remove_file(file_hash)
                removed.append(file_hash)
                for key in [k for k in held if k[1] == file_hash]:
                    held.pop(key)
            elif roll < 0.81 and removed:
                file_hash = removed.pop(rng.randrange(len(removed)))
                readded = await node.add_seeded(
                    4096, seed=seeds[file_hash], interval=rng.choice([30, 60])
                )
                assert readded == file_hash
                files.append(file_hash)
            elif roll < 0.84:
                seed = f"oracle-{rng.getrandbits(64):x}"
                files.append(await node.add_seeded(4096, seed=seed, interval=rng.choice([30, 60])))
                seeds[files[-1]] = seed
            elif roll < 0.90:
                await node.whitelist([(rng.choice(addresses), str(rng.randrange(10_000, 90_000)))])
            else:
                await node.sweep_expired()
        except Refused:
            pass


def oracle_fold(node: Node, generation: int, chunk: int) -> None:
    """The whole ledger into ``generation`` by the oracle, ``chunk`` events per transaction."""
    tables = tables_for(generation)
    with write_transaction(node.engine) as conn, conn.begin():
        create_tables(conn, tables)
    recorded = list(node.store.read_all())
    for start in range(0, len(recorded), chunk):
        with write_transaction(node.engine) as conn, conn.begin():
            oracle.apply_events(conn, tables, recorded[start : start + chunk])


@pytest.mark.parametrize("seed", [1, 2])
async def test_projector_equals_the_oracle(
    db_url: str, tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    settings = Settings(
        db_url=db_url,
        secret_file=tmp_path / "secret.json",
        interval=60,
        redundancy=2,
        challenges=4,  # encodings run out: contracts end out of challenges
    )
    node = await Node(settings, clock=clock).start()
    try:
        rng = random.Random(seed)
        await farm_randomly(node, clock, rng, steps=200)
        live = node.store.head().projection_generation
        with node.engine.connect() as conn:
            ended = conn.execute(
                sa.select(tables_for(live).contracts.c.end_reason).distinct()
            ).scalars()
            assert len({r for r in ended if r}) >= 2  # the history ended contracts variously
        added = [e.stream_id for e in node.store.read_all() if e.event_type == "FileAdded"]
        assert len(added) > len(set(added))  # and added a removed file again

        oracle_fold(node, 90, chunk=rng.choice([1, 7, 50]))
        assert compare_generations(node.engine, live, 90) == {}

        report = rebuild(node.store, batch=rng.choice([3, 11, 1000]))
        assert compare_generations(node.engine, 90, report.new_generation) == {}
        # A rebuild that has to let its rows go and read them back as it goes.
        monkeypatch.setattr(fold, "MAX_CACHED", 3)
        report = rebuild(node.store, batch=rng.choice([5, 20]))
        assert compare_generations(node.engine, 90, report.new_generation) == {}
        monkeypatch.undo()

        # Everything in one batch, as one large group commit would hand it over.
        with write_transaction(node.engine) as conn, conn.begin():
            create_tables(conn, tables_for(91))
            apply_events(conn, tables_for(91), list(node.store.read_all()))
        assert compare_generations(node.engine, 90, 91) == {}
    finally:
        await node.close()
