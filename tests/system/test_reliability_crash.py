"""Crash safety: ``downstream-node serve`` under farmer load is killed with SIGKILL at random
moments, several times, and restarted each time. Afterwards every answer that got a ``pass``
response is in the ledger as an AnswerPassed, no event is half-written (the hash chain
verifies, positions have no gap, every row parses) and projections rebuilt from position 0
equal the restarted node's. On an SQLite file and on MariaDB."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import aiohttp
from reliability_support import (
    Load,
    assert_passes_recorded,
    check_ledger,
    demo_args,
    farm,
    free_port,
    kill,
    start_serve,
)

KILLS = 3
# Short intervals so that farmers answer all the time: 6 chunks x 3 replicas, a challenge
# every 2 s per contract, farmers polling every 0.2 s.
DEMO = demo_args(redundancy=3)


async def passes_after(load: Load, count: int, timeout: float = 30) -> None:
    """Until the farmers have had more than ``count`` pass responses."""
    async with asyncio.timeout(timeout):
        while len(load.passes) <= count:
            await asyncio.sleep(0.05)


async def test_sigkill_under_load_loses_no_pass_and_no_event(db_url: str, tmp_path: Path) -> None:
    rng = random.Random()
    port = free_port()
    served = await start_serve(db_url, tmp_path, *DEMO, port=port)
    assert served.address is not None
    stop, registered = asyncio.Event(), asyncio.Event()
    load = Load()
    farming = asyncio.create_task(
        farm([served.url], served.address, tmp_path / "farm", stop, load, registered=registered)
    )
    passes_at_kill = []
    try:
        await asyncio.wait_for(registered.wait(), 30)
        for _ in range(KILLS):
            await passes_after(load, len(load.passes) if passes_at_kill else 0)  # under load
            await asyncio.sleep(rng.uniform(0.3, 2.0))  # then a random moment
            passes_at_kill.append(len(load.passes))
            await kill(served.process)  # SIGKILL: no cleanup, no flush, mid-request
            assert served.process.returncode == -9
            served = await start_serve(db_url, tmp_path, *DEMO, port=port)
        await passes_after(load, len(load.passes))  # the farmers carry on with the new node
        await asyncio.sleep(1)
        stop.set()
        await asyncio.wait_for(farming, 30)

        # The restarted node is live while the ledger is checked and rebuilt beside it.
        facts = check_ledger(db_url)
        async with aiohttp.ClientSession() as http, http.get(served.url + "/health") as response:
            health = await response.json()
        assert health["position"] == facts.head and health["projection_lag"] == 0
    finally:
        stop.set()
        if not farming.done():
            farming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await farming
        await kill(served.process)

    assert len(load.passes) > passes_at_kill[-1] > passes_at_kill[0] > 0, passes_at_kill
    assert load.verdicts.get("fail", 0) == 0, load.verdicts
    assert_passes_recorded(load, facts)
    assert len(facts.passed) >= len(set(load.passes))
