"""The audit agrees with the live projection to the microsecond, for every token, while farmers
go through gaps, late answers, wrong proofs, removals, token deletion and file removal under a
moving clock; on SQLite and on MariaDB. The audit reads only the events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from downstream_node.audit import AuditOptions, run_audit
from downstream_node.config import Settings
from downstream_node.domain.clock import FakeClock, to_micros
from downstream_node.domain.errors import Refused
from downstream_node.domain.tokens import make_address
from downstream_node.heartbeat import Merkle, SeededChunk
from downstream_node.projections.tables import tables_for
from downstream_node.service import Context, Node

FARMER = Context(actor="farmer", remote="10.0.0.9")
S = 1_000_000


async def start_node(db_url: str, tmp_path: Path, clock: FakeClock) -> Node:
    settings = Settings(
        db_url=db_url, secret_file=tmp_path / "secret.json", interval=60, redundancy=2
    )
    return await Node(settings, clock=clock).start()


class Farmers:
    """Drives tokens through the node like farmers would, remembering what each holds."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.public = Merkle.fromdict(node.scheme.public())  # type: ignore[union-attr]
        self.held: dict[tuple[str, str], dict[str, Any]] = {}

    async def take(self, token: str, count: int = 1) -> list[str]:
        taken = []
        for _ in range(count):
            try:
                got = await self.node.chunk(token, FARMER)
            except Refused as refused:
                assert refused.status == "no_chunks"
                break
            self.held[(token, got["file_hash"])] = got
            taken.append(got["file_hash"])
        return taken

    def proof(self, token: str, file_hash: str, challenge: Any, *, wrong: bool = False) -> dict:
        got = self.held[(token, file_hash)]
        proof = self.public.prove(
            SeededChunk(got["seed"], got["size"]), challenge, got["tag"]
        ).todict()
        if wrong:
            proof["leaf"]["blob"] = proof["branch"]["rows"][0][0]
        return proof

    async def answer_first(self, token: str, *, wrong: frozenset[str] = frozenset()) -> None:
        """Answer the challenges that came with the chunks (wrong ones retried rightly)."""
        for (tok, file_hash), got in list(self.held.items()):
            if tok != token or "answered" in got:
                continue
            got["answered"] = True
            if file_hash in wrong:
                proof = self.proof(token, file_hash, got["challenge"], wrong=True)
                assert await self.answer(token, file_hash, proof) == "fail"
            proof = self.proof(token, file_hash, got["challenge"])
            assert await self.answer(token, file_hash, proof) == "pass"

    async def answer(self, token: str, file_hash: str, proof: dict) -> str:
        """Answer; the node may first find an older lapsed contract of the token on the same
        file and refuse it as expired (recording that), after which the new one answers."""
        try:
            return await self.node.answer(token, file_hash, proof, FARMER)
        except Refused as refused:
            assert refused.status == "expired"
            return await self.node.answer(token, file_hash, proof, FARMER)

    async def rounds(
        self, token: str, *, wrong: frozenset[str] = frozenset(), skip: frozenset[str] = frozenset()
    ) -> list[str]:
        """Ask for due challenges and answer them; ``wrong`` fail first, ``skip`` are ignored."""
        due = await self.node.due(token, FARMER)
        verdicts = []
        for item in due["due_contracts"]:
            if item["hash"] in skip:
                continue
            if item["hash"] in wrong:
                proof = self.proof(token, item["hash"], item["challenge"], wrong=True)
                verdicts.append(await self.node.answer(token, item["hash"], proof, FARMER))
            proof = self.proof(token, item["hash"], item["challenge"])
            verdicts.append(await self.node.answer(token, item["hash"], proof, FARMER))
        return verdicts

    async def late(self, token: str, file_hash: str, challenge: Any) -> None:
        proof = self.proof(token, file_hash, challenge)
        try:
            await self.node.answer(token, file_hash, proof, FARMER)
        except Refused as refused:
            assert refused.status == "expired"
        else:
            raise AssertionError("a late answer was accepted")


def projection_contracts(node: Node) -> dict[str, dict[str, Any]]:
    t = tables_for(node.store.head().projection_generation).contracts
    with node.engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.started_at.is_not(None))).all()
    return {r.contract_id: dict(r._mapping) for r in rows}


def assert_audit_matches_projection(node: Node) -> dict[str, Any]:
    """Every token's online and total time and counters, at the node's now and at the last
    event's time, and every contract's counters and end, equal the live projection's."""
    now = node._now()
    with node.read_model.reader() as reader:
        live = {u.token_hash: u for u in reader.all_uptime()}
    assert live, "no tokens yet"
    for options in (AuditOptions(now=now), AuditOptions()):
        report = run_audit(node.engine, options).report
        assert report["verified"]["ok"]
        at = report["now_us"]
        audited = {t["token_hash"]: t for t in report["tokens"]}
        assert set(audited) == set(live)
        for token_hash, view in live.items():
            got = audited[token_hash]
            assert (got["online_us"], got["total_us"]) == (view.online(at), view.total(at)), (
                token_hash,
                options,
            )
            assert (
                got["contracts"],
                got["challenges"],
                got["passed"],
                got["failed"],
                got["missed"],
            ) == (view.contracts, view.challenges, view.passed, view.failed, view.expired)
        assert report["ledger"]["unmatched_events"] == 0
    contracts = projection_contracts(node)
    audited_contracts = {c["contract_id"]: c for c in report["contracts"]}
    assert set(audited_contracts) == set(contracts)
    for cid, row in contracts.items():
        got = audited_contracts[cid]
        assert (got["challenges"], got["passed"], got["failed"], got["rejected"]) == (
            row["challenges"],
            row["passed"],
            row["failed"],
            row["rejected"],
        )
        assert got["end_reason"] == row["end_reason"]
        ended = None if row["ended_at"] is None else got["ended_at"]
        assert got["ended_at"] == ended
    return report


async def test_audit_equals_live_projection_through_everything(db_url: str, tmp_path: Path) -> None:
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        a, b = make_address(b"\x31" * 20), make_address(b"\x32" * 20)
        await node.whitelist([(a, "50000"), (b, "50000")])
        files = [await node.add_seeded(4096) for _ in range(5)]
        farm = Farmers(node)
        a1, _ = await node.create_token(a, FARMER)
        a2, _ = await node.create_token(a, FARMER)
        b1, _ = await node.create_token(b, FARMER)
        # Two farmers of one address with overlapping contracts, and a third farmer.
        held_a1 = await farm.take(a1, 2)
        clock.advance(5)
        held_a2 = await farm.take(a2, 2)
        held_b1 = await farm.take(b1, 1)
        assert held_a1 and held_a2 and held_b1
        assert_audit_matches_projection(node)

        clock.advance(20)
        await farm.answer_first(a1)
        await farm.answer_first(
            a2, wrong=frozenset({held_a2[0]})
        )  # a wrong proof, then a right one
        await farm.answer_first(b1)
        assert_audit_matches_projection(node)

        clock.advance(45)  # past the first due: next challenges
        await farm.rounds(a1)
        await farm.rounds(a2)
        due_b1 = await node.due(b1, FARMER)  # b1 fetches its challenge but does not answer
        assert due_b1["due_contracts"]
        assert_audit_matches_projection(node)

        clock.advance(70)  # b1's challenge lapsed; its answer now comes late
        item = due_b1["due_contracts"][0]
        await farm.late(b1, item["hash"], item["challenge"])
        await farm.rounds(a1, wrong=frozenset({held_a1[1]}))
        await farm.rounds(a2, skip=frozenset({held_a2[1]}))  # a gap on one contract
        assert_audit_matches_projection(node)

        clock.advance(200)  # a clock jump: contracts lapse with no event yet
        assert_audit_matches_projection(node)
        assert await node.sweep_expired() > 0
        assert_audit_matches_projection(node)

        await farm.take(b1, 2)
        await farm.take(a2, 2)
        await farm.take(a1, 2)
        clock.advance(10)
        for token in (a1, a2, b1):
            await farm.answer_first(token)
        clock.advance(55)
        await farm.rounds(a1)
        await farm.rounds(b1)
        live_a1 = [f for (t, f) in farm.held if t == a1]
        await node.remove(a1, live_a1[-1], FARMER)  # a farmer drops a chunk
        assert_audit_matches_projection(node)

        clock.advance(30)
        await node.delete_token(a2)  # mid-contract, online
        assert_audit_matches_projection(node)

        due = await node.due(b1, FARMER)
        target = due["all_contracts"][0]["hash"] if due["all_contracts"] else files[0]
        await node.remove_file(target)  # ends every farmer's contract on it
        assert_audit_matches_projection(node)

        clock.advance(40)
        await farm.rounds(a1)
        await farm.rounds(b1)
        clock.advance(1000)
        assert_audit_matches_projection(node)
        await node.sweep_expired()
        report = assert_audit_matches_projection(node)
        reasons = {c["end_reason"] for c in report["contracts"]}
        assert {"expired", "removed", "token_deleted", "file_removed"} <= reasons
        totals = report["totals"]
        assert totals["failed"] >= 2 and totals["missed"] >= 3 and totals["rejected"] >= 1
        assert 0 < totals["uptime"] < 1
    finally:
        await node.close()


async def test_a_window_splits_time_exactly(db_url: str, tmp_path: Path) -> None:
    """Online time over [start, mid) plus [mid, end) equals the whole, for every token."""
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        a = make_address(b"\x33" * 20)
        await node.whitelist([(a, "50000")])
        for _ in range(3):
            await node.add_seeded(4096)
        farm = Farmers(node)
        tokens = [(await node.create_token(a, FARMER))[0] for _ in range(2)]
        start = to_micros(clock.now())
        for token in tokens:
            await farm.take(token, 1)
        for r in range(6):
            clock.advance(50)
            for i, token in enumerate(tokens):
                await farm.answer_first(token)
                if not (i == 1 and r in (2, 3)):  # the second farmer drops out for a while
                    await farm.rounds(token)
            if r == 3:
                await node.sweep_expired()
                await farm.take(tokens[1], 1)
        end = node._now()
        mid = start + (end - start) // 2 + 7  # not on an event
        whole = run_audit(node.engine, AuditOptions(since=start, until=end)).report
        first = run_audit(node.engine, AuditOptions(since=start, until=mid)).report
        second = run_audit(node.engine, AuditOptions(since=mid, until=end)).report
        with node.read_model.reader() as reader:
            live = {u.token_hash: u for u in reader.all_uptime()}
        for i, token in enumerate(whole["tokens"]):
            assert token["online_us"] == live[token["token_hash"]].online(end)
            parts = first["tokens"][i]["online_us"] + second["tokens"][i]["online_us"]
            assert parts == token["online_us"]
            assert (
                first["tokens"][i]["total_us"] + second["tokens"][i]["total_us"]
                == (token["total_us"])
            )
            for name in ("challenges", "passed", "failed", "missed"):
                assert first["tokens"][i][name] + second["tokens"][i][name] == token[name]
        assert whole["now_source"] == "--until" and whole["now_us"] == end
    finally:
        await node.close()


async def test_audit_equals_live_projection_on_a_random_walk(db_url: str, tmp_path: Path) -> None:
    """Random farmers' behaviour (seeded, so a failure replays) under a jumping clock."""
    import random

    rng = random.Random(20260101)
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        a, b = make_address(b"\x34" * 20), make_address(b"\x35" * 20)
        await node.whitelist([(a, "50000"), (b, "50000")])
        files = [await node.add_seeded(2048) for _ in range(6)]
        farm = Farmers(node)
        tokens = [(await node.create_token(rng.choice((a, b)), FARMER))[0] for _ in range(4)]
        deleted: set[str] = set()
        for step in range(24):
            for token in [t for t in tokens if t not in deleted]:
                action = rng.random()
                held = [f for (t, f) in farm.held if t == token]
                if action < 0.2 or not held:
                    taken = await farm.take(token, rng.randint(1, 2))
                    await farm.answer_first(token, wrong=frozenset(taken[:1]))
                elif action < 0.8:
                    wrong = frozenset(f for f in held if rng.random() < 0.15)
                    skip = frozenset(f for f in held if rng.random() < 0.2)
                    await farm.rounds(token, wrong=wrong, skip=skip)
                elif action < 0.86:
                    due = await node.due(token, FARMER)
                    if due["all_contracts"]:
                        await node.remove(token, due["all_contracts"][0]["hash"], FARMER)
                elif action < 0.92:
                    await node.sweep_expired()
                elif action < 0.94 and len(tokens) - len(deleted) > 2:
                    await node.delete_token(token)
                    deleted.add(token)
                elif action < 0.96 and len(files) > 3:
                    await node.remove_file(files.pop(rng.randrange(len(files))))
            clock.advance(rng.choice((1, 7, 20, 30, 45, 61, 150)) + rng.random())
            if step % 4 == 3:
                assert_audit_matches_projection(node)
        totals = assert_audit_matches_projection(node)["totals"]
        assert totals["passed"] and totals["failed"] and totals["missed"]
    finally:
        await node.close()
