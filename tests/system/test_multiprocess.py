"""Several processes, one ledger: two ``downstream-node serve`` processes on one MariaDB
database, started together, under farmer load split across both, make one gap-free,
verifiable ledger whose projections rebuild to the live ones, with every pass recorded;
the same answer sent to both at once is recorded once; the per-minute limits hold for both
together. MariaDB only (fails, never skips,
when it is unreachable)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp
import pytest
from http_support import RECEIPT, prove
from reliability_support import (
    Load,
    Served,
    assert_passes_recorded,
    check_ledger,
    demo_args,
    farm,
    kill_all,
    start_serve,
)

from downstream_node.config import Settings
from downstream_node.farmer import Farmer

mariadb_only = pytest.mark.parametrize("db_url", ["mysql"], indirect=True)
DEMO = demo_args(redundancy=2)


async def start_two(db_url: str, tmp_path: Path) -> list[Served]:
    """Both at once on a fresh database: schema, projections and demo stock race too."""
    started = await asyncio.gather(
        start_serve(db_url, tmp_path, *DEMO, name="a"),
        start_serve(db_url, tmp_path, *DEMO, name="b"),
        return_exceptions=True,
    )
    servers = [s for s in started if isinstance(s, Served)]
    if len(servers) != 2:
        await kill_all(s.process for s in servers)
        raise next(s for s in started if isinstance(s, BaseException))
    assert servers[0].url != servers[1].url
    return servers


@mariadb_only
async def test_two_serve_processes_make_one_ledger(db_url: str, tmp_path: Path) -> None:
    servers = await start_two(db_url, tmp_path)
    stop = asyncio.Event()
    load = Load()
    urls = [s.url for s in servers]
    address = servers[0].address
    assert address is not None and address == servers[1].address
    farming = asyncio.create_task(
        farm(urls, address, tmp_path / "farm", stop, load, farmers=4, max_contracts=6)
    )
    try:
        await asyncio.sleep(7)
        stop.set()
        await asyncio.wait_for(farming, 30)
        facts = check_ledger(db_url)  # chain, no gap, every row parses, rebuild == live
    finally:
        stop.set()
        if not farming.done():
            farming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await farming
        await kill_all(s.process for s in servers)

    by_server = {url: sum(f.stats.passed for f in load.farmers if f.url == url) for url in urls}
    assert all(n > 0 for n in by_server.values()), (by_server, load.errors)
    # "busy" (503, Retry-After) is a retryable refusal when many farmers want one file at once
    assert set(load.errors) <= {"503 busy"}, load.errors
    assert load.verdicts.get("fail", 0) == 0, load.verdicts
    assert_passes_recorded(load, facts)
    # the demo stock was added once, though both processes stocked it at the same time
    assert sum(1 for e in facts.events if e.event_type == "FileAdded") == 6
    assert sum(1 for e in facts.events if e.event_type == "HeartbeatConfigured") == 1


@mariadb_only
async def test_the_same_answer_sent_to_both_processes_is_recorded_once(
    db_url: str, tmp_path: Path
) -> None:
    servers = await start_two(db_url, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            farmer = Farmer(
                servers[0].url, servers[0].address or "", directory=tmp_path, session=http
            )
            await farmer.register()
            contract = await farmer.take_contract()
            assert contract is not None and farmer.heartbeat is not None
            proof = prove(
                farmer.heartbeat,
                {
                    "seed": contract.seed,
                    "size": contract.size,
                    "tag": contract.tag,
                    "challenge": contract.challenge,
                },
            )
            path = f"/api/downstream/answer/{farmer.token}/{contract.file_hash}"

            async def post(url: str) -> tuple[int, dict]:
                async with http.post(url + path, json={"proof": proof}) as response:
                    return response.status, await response.json()

            results = await asyncio.gather(*(post(servers[i % 2].url) for i in range(20)))
    finally:
        await kill_all(s.process for s in servers)
    assert results == [(200, {"status": "pass", "receipt": RECEIPT})] * 20
    assert len({body["receipt"] for _, body in results}) == 1  # both nodes: one receipt
    facts = check_ledger(db_url)
    assert sum(1 for e in facts.events if e.event_type == "AnswerPassed") == 1


@mariadb_only
async def test_new_per_ip_per_minute_holds_across_both_processes(
    db_url: str, tmp_path: Path
) -> None:
    """Twice the limit of /new (60 a minute per IP) from one address, alternating between
    the two processes: at most the limit get past it, the rest are 429 with Retry-After."""
    limit = Settings().new_tokens_per_ip_per_minute
    servers = await start_two(db_url, tmp_path)
    try:
        # The limit is per clock minute: start early in one, so that all go into the same.
        second = time.time() % 60
        if second > 40:
            await asyncio.sleep(60.5 - second)
        async with aiohttp.ClientSession() as http:

            async def new(i: int) -> tuple[int, str, str | None]:
                url = f"{servers[i % 2].url}/api/downstream/new/{servers[0].address}"
                async with http.get(url) as response:
                    body = await response.json()
                    word = body.get("status", "ok")  # a token has no status word
                    return response.status, word, response.headers.get("Retry-After")

            replies = []
            for wave in range(2 * limit // 10):  # 10 at a time, 5 to each process
                replies += await asyncio.gather(*(new(wave * 10 + i) for i in range(10)))
    finally:
        await kill_all(s.process for s in servers)
    limited = [r for r in replies if r[1] == "too_many_requests"]
    past = [r for r in replies if r[1] != "too_many_requests"]
    assert len(past) == limit, sorted({(s, w) for s, w, _ in past})
    assert all(status == 429 and 1 <= int(after or 0) <= 60 for status, _, after in limited)
    # what got past was served: 5 tokens (the per-IP token limit), then too_many_tokens
    assert sorted({(s, w) for s, w, _ in past}) == [(200, "ok"), (429, "too_many_tokens")]
