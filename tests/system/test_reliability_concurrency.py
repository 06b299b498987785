"""Concurrency: the same answer posted 50 times at once is verified and recorded once; tokens
racing for the last replica cannot both get it; deleting a token while its farmer answers,
polls and takes chunks leaves a consistent ledger. On SQLite and on MariaDB, over HTTP."""

from __future__ import annotations

import asyncio
import random
import secrets
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from http_support import ADDRESS, CHUNK, RECEIPT, new_node, prove, stock
from reliability_support import check_ledger, live_contracts_of

from downstream_node.domain.errors import Refused
from downstream_node.domain.tokens import token_hash
from downstream_node.farmer import corrupt_proof
from downstream_node.http.app import create_app
from downstream_node.service import Node

API = "/api/downstream"


class CountingVerify:
    """Wraps ``node.scheme.verify`` (it runs in the node's threads) and counts its calls."""

    def __init__(self, node: Node) -> None:
        assert node.scheme is not None
        self.inner = node.scheme.verify
        self.calls = 0
        self._lock = threading.Lock()
        node.scheme.verify = self  # type: ignore[method-assign]

    def __call__(self, *args: Any) -> bool:
        with self._lock:
            self.calls += 1
        return self.inner(*args)


async def call(client: TestClient, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.request(method, path, **kwargs) as response:
        return response.status, await response.json()


def answers_recorded(db_url: str, event_type: str) -> list[Any]:
    return [e for e in check_ledger(db_url).events if e.event_type == event_type]


async def test_the_same_answer_posted_50_times_at_once_is_verified_once(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    node, _ = new_node(db_url, tmp_path)
    client = await aiohttp_client(create_app(node))
    await stock(node, files=2)
    status, created = await call(client, "GET", f"{API}/new/{ADDRESS}")
    token, heartbeat = created["token"], created["heartbeat"]
    contracts = [(await call(client, "GET", f"{API}/chunk/{token}"))[1] for _ in range(2)]
    verify = CountingVerify(node)

    # -- a valid proof, 50 times at once: one verification, one event, 50 times "pass" -------
    good, wrong = contracts
    url = f"{API}/answer/{token}/{good['file_hash']}"
    proof = prove(heartbeat, good)
    results = await asyncio.gather(
        *(call(client, "POST", url, json={"proof": proof}) for _ in range(50))
    )
    assert results == [(200, {"status": "pass", "receipt": RECEIPT})] * 50
    [receipt] = {body["receipt"] for _, body in results}  # one verdict, one receipt
    assert verify.calls == 1
    # -- later: the same answer again gets its verdict; another answer is already_answered ---
    assert await call(client, "POST", url, json={"proof": proof}) == (
        200,
        {"status": "pass", "receipt": receipt},
    )
    status, body = await call(client, "POST", url, json={"proof": corrupt_proof(proof)})
    assert (status, body["status"]) == (409, "already_answered")
    assert verify.calls == 1

    # -- a wrong proof, 50 times at once: one verification, one AnswerFailed, 50 "fail" ------
    url = f"{API}/answer/{token}/{wrong['file_hash']}"
    bad = corrupt_proof(prove(heartbeat, wrong))
    results = await asyncio.gather(
        *(call(client, "POST", url, json={"proof": bad}) for _ in range(50))
    )
    assert results == [(200, {"status": "fail", "receipt": RECEIPT})] * 50
    [receipt] = {body["receipt"] for _, body in results}
    assert verify.calls == 2
    # sent again later it gets the recorded verdict, without a second verification
    assert await call(client, "POST", url, json={"proof": bad}) == (
        200,
        {"status": "fail", "receipt": receipt},
    )
    assert verify.calls == 2
    good_proof = prove(heartbeat, wrong)
    assert await call(client, "POST", url, json={"proof": good_proof}) == (
        200,
        {"status": "pass", "receipt": RECEIPT},
    )

    await client.close()
    assert len(answers_recorded(db_url, "AnswerPassed")) == 2
    assert len(answers_recorded(db_url, "AnswerFailed")) == 1


@pytest.mark.parametrize("heartbeat", ["Merkle", "Swizzle"])
async def test_answers_arriving_together_each_get_their_own_outcome(
    db_url: str, tmp_path: Path, heartbeat: str
) -> None:
    """Answers that arrive together are looked up, verified and recorded as one batch (the
    proofs verified in that unit of work, whatever the scheme): a wrong proof, an unknown
    token or a file the token does not hold refuses that answer alone."""
    node, _ = new_node(db_url, tmp_path, heartbeat=heartbeat)
    await node.start()
    try:
        await stock(node, files=8)
        farmers = []
        for _ in range(8):
            token, public = await node.create_token(ADDRESS)
            assert ("prime" in public) == (heartbeat == "Swizzle")  # the scheme asked for
            farmers.append((token, public, await node.chunk(token)))
        calls, expected = [], []
        for i, (token, public, contract) in enumerate(farmers):
            proof, file_hash = prove(public, contract), contract["file_hash"]
            kind = ("pass", "fail", "no_hash", "no_token")[i % 4]
            if kind == "fail":
                proof = corrupt_proof(proof)
            elif kind == "no_hash":
                file_hash = farmers[(i + 1) % len(farmers)][2]["file_hash"]
            elif kind == "no_token":
                token = secrets.token_hex(16)
            calls.append(node.answer(token, file_hash, proof))
            expected.append(kind)
        batches = node.committer.batches
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert [r if isinstance(r, str) else getattr(r, "status", r) for r in results] == expected
        assert node.committer.batches - batches < len(calls)  # they were decided together
    finally:
        await node.close()
    facts = check_ledger(db_url)

    def held(event_type: str) -> set[tuple[str, str]]:
        """(token hash, file hash) of the contracts with an event of this type."""
        return {
            facts.contracts[e.payload["contract_id"]]
            for e in facts.events
            if e.event_type == event_type
        }

    def farmer(i: int) -> tuple[str, str]:
        return token_hash(farmers[i][0]), farmers[i][2]["file_hash"]

    assert held("AnswerPassed") == {farmer(0), farmer(4)}
    assert held("AnswerFailed") == {farmer(1), farmer(5)}


async def test_answers_with_the_same_request_id_from_two_nodes_record_one_verdict(
    db_url: str, tmp_path: Path
) -> None:
    """Two processes (here: two nodes on their own engines) answering the same challenge with
    the same proof at once: the expected version and the request id leave one event."""
    first, _ = new_node(db_url, tmp_path)
    await first.start()
    files = await stock(first, files=1)
    token, public = await first.create_token(ADDRESS)
    contract = await first.chunk(token)
    second, _ = new_node(db_url, tmp_path)
    await second.start()
    try:
        proof = prove(public, contract)
        verdicts = await asyncio.gather(
            *(n.answer(token, files[0], proof) for n in (first, second, first, second))
        )
        assert verdicts == ["pass"] * 4
    finally:
        await first.close()
        await second.close()
    assert len(answers_recorded(db_url, "AnswerPassed")) == 1


async def test_tokens_racing_for_the_last_replica_cannot_both_get_it(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    node, _ = new_node(db_url, tmp_path)
    client = await aiohttp_client(create_app(node))
    await node.whitelist([(ADDRESS, "20000")])
    last = await node.add_seeded(CHUNK, seed="the-last-replica", redundancy=1)
    tokens = [(await node.create_token(ADDRESS))[0] for _ in range(8)]
    calls = [call(client, "GET", f"{API}/chunk/{t}") for t in tokens for _ in range(3)]
    random.shuffle(calls)
    results = await asyncio.gather(*calls)
    won = [body for status, body in results if status == 200]
    assert len(won) == 1 and won[0]["file_hash"] == last
    assert sorted({(s, b["status"]) for s, b in results if s != 200}) == [(404, "no_chunks")]
    await client.close()
    assert len(answers_recorded(db_url, "ContractAssigned")) == 1


async def test_delete_token_racing_with_its_farmer_leaves_a_consistent_ledger(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    node, _ = new_node(db_url, tmp_path)
    client = await aiohttp_client(create_app(node))
    await node.whitelist([(ADDRESS, "20000")])
    for i in range(4):
        await node.add_seeded(CHUNK, seed=f"race-{i}", redundancy=6)
    rng = random.Random(7)
    deleted: list[str] = []
    outcomes: set[tuple[int, str]] = set()
    for _ in range(6):
        token, public = await node.create_token(ADDRESS)
        held = [(await call(client, "GET", f"{API}/chunk/{token}"))[1] for _ in range(3)]

        async def later(coro: Any, delay: float) -> Any:
            await asyncio.sleep(delay)
            return await coro

        async def delete(token: str = token) -> tuple[int, dict]:
            try:
                await node.delete_token(token)
            except Refused as refused:
                return 404, {"status": refused.status}
            return 200, {"status": "deleted"}

        jobs = [later(delete(), rng.random() * 0.02)]
        for contract in held:
            url = f"{API}/answer/{token}/{contract['file_hash']}"
            proof = {"proof": prove(public, contract)}
            jobs.append(later(call(client, "POST", url, json=proof), rng.random() * 0.02))
        jobs.append(later(call(client, "GET", f"{API}/due/{token}"), rng.random() * 0.02))
        jobs.append(later(call(client, "GET", f"{API}/chunk/{token}"), rng.random() * 0.02))
        for status, body in await asyncio.gather(*jobs):
            outcomes.add((status, body.get("status") if isinstance(body, dict) else "?"))
        deleted.append(token)
    await client.close()

    # Every answer was a verdict or a refusal (never a 5xx), and the ledger holds together.
    assert all(status < 500 for status, _ in outcomes), outcomes
    facts = check_ledger(db_url)
    for token in deleted:
        assert live_contracts_of(db_url, token) == []
    # Nothing of a deleted token lands after its TokenDeleted: no answer, no challenge, no
    # new contract.
    deleted_at = {
        e.payload["token_hash"]: e.position for e in facts.events if e.event_type == "TokenDeleted"
    }
    assert set(deleted_at) == {token_hash(t) for t in deleted}
    for item in facts.events:
        contract_id = item.payload.get("contract_id")
        if contract_id is None or contract_id not in facts.contracts:
            continue
        owner = facts.contracts[contract_id][0]
        if item.event_type in (
            "AnswerPassed",
            "AnswerFailed",
            "ChallengeIssued",
            "ContractAssigned",
        ):
            assert item.position < deleted_at[owner], item


def test_nodes_creating_the_secret_at_once_end_up_with_one(tmp_path: Path) -> None:
    """Nodes started together beside one secret file must not each make (and record) their
    own: the first one's is linked into place, the others load it."""
    from concurrent.futures import ThreadPoolExecutor

    from downstream_node.heartbeat.scheme import ProofScheme

    path = tmp_path / "node-secret.json"
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: ProofScheme.load_or_create(path, "Merkle"), range(16)))
    assert len({scheme.fingerprint() for scheme, _ in made}) == 1
    assert sum(created for _, created in made) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["node-secret.json"]
    assert path.stat().st_mode & 0o777 == 0o600


async def test_a_burst_of_chunk_requests_finds_the_free_replicas(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """150 simultaneous /chunk from 50 tokens on 20 free replicas (10 files, redundancy 2):
    every free replica is granted, and at most 10% of the requests are told ``busy``."""
    node, _ = new_node(db_url, tmp_path)
    client = await aiohttp_client(create_app(node))
    await node.whitelist([(ADDRESS, "20000")])
    for i in range(10):
        await node.add_seeded(CHUNK, seed=f"burst-{i}", redundancy=2)
    tokens = [(await node.create_token(ADDRESS))[0] for _ in range(50)]

    async def take(token: str) -> tuple[int, str]:
        async with client.get(f"{API}/chunk/{token}") as response:
            body = await response.json()
            return response.status, body.get("status") or body["file_hash"]

    results = await asyncio.gather(*(take(tokens[i % 50]) for i in range(150)))
    granted = [what for status, what in results if status == 200]
    busy = [what for status, what in results if what == "busy"]
    assert len(granted) == 20 and len(set(granted)) == 10
    assert len(busy) <= 15, f"{len(busy)} of 150 were told busy"
    assert {what for status, what in results if status != 200} <= {"busy", "no_chunks"}


async def test_the_byte_cap_per_address_holds_for_simultaneous_chunks_on_two_nodes(
    db_url: str, tmp_path: Path
) -> None:
    """Eight tokens of one address, on two nodes sharing the database (as two processes),
    all asking /chunk at once for 200 KiB chunks under a 1 MiB cap per address: at most five
    are granted, whatever the interleaving; the others are ``no_chunks``."""
    cap, size = 1024 * 1024, 200 * 1024
    nodes = [new_node(db_url, tmp_path, max_bytes_per_address=cap)[0] for _ in range(2)]
    for node in nodes:
        await node.start()
    try:
        await nodes[0].whitelist([(ADDRESS, "20000")])
        for i in range(10):
            await nodes[0].add_seeded(size, seed=f"big-{i}", redundancy=3)
        tokens = [(await nodes[0].create_token(ADDRESS))[0] for _ in range(8)]

        async def take(i: int) -> str:
            try:
                return (await nodes[i % 2].chunk(tokens[i]))["file_hash"]
            except Refused as refused:
                return refused.status

        for _ in range(3):  # three rounds of eight at once, the cap never passed
            results = await asyncio.gather(*(take(i) for i in range(8)))
            granted = [r for r in results if len(r) == 64]
            assert set(results) - set(granted) <= {"no_chunks", "busy"}
            live = sum(len(live_contracts_of(db_url, token)) for token in tokens)
            assert live * size <= cap, results
        assert live == cap // size
    finally:
        for node in nodes:
            await node.close()


async def test_concurrent_chunks_of_a_large_file_encode_it_once_per_contract(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """10 simultaneous /chunk for a 1 GiB (sparse) file at redundancy 3: one encoding per
    contract granted (one spare at most), never one per request; /health answers 200 all the
    while, since encodings leave worker threads free for reads."""
    node, _ = new_node(db_url, tmp_path, max_bytes_per_address=4 * 1024**3)
    client = await aiohttp_client(create_app(node))
    await node.whitelist([(ADDRESS, "20000")])
    big = tmp_path / "big.bin"
    with big.open("wb") as handle:
        handle.truncate(1024**3)
    await node.add_file(big, redundancy=3)
    tokens = [(await node.create_token(ADDRESS))[0] for _ in range(10)]
    health: list[int] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            async with client.get("/health") as response:
                health.append(response.status)
            await asyncio.sleep(0.2)

    async def take(token: str) -> int:
        async with client.get(f"{API}/chunk/{token}") as response:
            return response.status

    prober = asyncio.create_task(probe())
    statuses = await asyncio.gather(*(take(token) for token in tokens))
    done.set()
    await prober
    assert sorted(statuses) == [200] * 3 + [404] * 7
    assert 3 <= node.contracts.encodings.made <= 4
    assert health and set(health) == {200}
