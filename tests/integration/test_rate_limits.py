"""Per-minute rate limits held across processes: two nodes on one database (each stands for a
``serve`` process: its own engine, its own leases) together let at most the limit through,
spending allowances they lease from the database; on SQLite and on MariaDB."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import sqlalchemy as sa
from http_support import new_node

from downstream_node.domain.tokens import new_token, token_hash
from downstream_node.ledger.schema import rate_counts


async def test_two_nodes_together_let_at_most_the_limit_through(
    db_url: str, tmp_path: Path
) -> None:
    first, clock = new_node(db_url, tmp_path)
    second, _ = new_node(db_url, tmp_path)
    second.rt.clock = clock  # one clock for both: the same minute
    await first.start()
    await second.start()
    try:
        limit, lease = 50, 5
        token = new_token()
        limits = [
            node.minute_limit("token", limit, max_lease=lease, stored_as=token_hash)
            for node in (first, second)
        ]
        chooser = random.Random(21)
        let = [0, 0]
        for _ in range(4 * limit):
            side = chooser.randrange(2)
            if await limits[side].check(token) is None:
                let[side] += 1
        # Never more than the limit; less by at most what each holds leased and unspent.
        assert limit - 2 * (lease - 1) <= sum(let) <= limit, let
        assert all(let), let
        # Leased, not counted one by one: far fewer writes than requests let through.
        assert sum(lim.leases for lim in limits) < sum(let) // 2 + 4
        refused = await limits[0].check(token)
        assert refused is not None and 1 <= refused <= 60
        # The database holds the token's hash, never the token.
        with first.engine.connect() as conn:
            subjects = set(conn.execute(sa.select(rate_counts.c.subject)).scalars())
        assert subjects == {token_hash(token)}

        clock.advance(60)  # the next minute: allowed again, on both
        assert await limits[0].check(token) is None and await limits[1].check(token) is None
    finally:
        await first.close()
        await second.close()


async def test_exact_limit_with_single_leases(db_url: str, tmp_path: Path) -> None:
    """``max_lease`` 1 (``/new`` per IP): every request counted in the database, so the two
    nodes let exactly the limit through whichever of them is asked."""
    first, clock = new_node(db_url, tmp_path)
    second, _ = new_node(db_url, tmp_path)
    second.rt.clock = clock
    await first.start()
    await second.start()
    try:
        limits = [node.minute_limit("new_ip", 7) for node in (first, second)]
        outcomes = [await limits[i % 2].check("10.1.2.3") for i in range(20)]
        assert outcomes[:7] == [None] * 7 and all(o is not None for o in outcomes[7:])
        assert await limits[0].check("10.1.2.4") is None  # per address
        # asked all at once (leases of one subject sharing a transaction): still exactly 7
        together = await asyncio.gather(*(limits[i % 2].check("10.1.2.5") for i in range(20)))
        assert sum(1 for o in together if o is None) == 7
    finally:
        await first.close()
        await second.close()


async def test_a_burst_within_the_limit_passes_whole_with_few_leases(
    db_url: str, tmp_path: Path
) -> None:
    """200 requests of one token at once under a limit of 600: all pass. Requests that find
    a lease in flight wait for it instead of each asking their own (200 leases of 7 units
    would count 1,400 against the limit and refuse the last ones)."""
    node, _ = new_node(db_url, tmp_path)
    await node.start()
    try:
        limit = node.minute_limit("token", 600, max_lease=60, stored_as=token_hash)
        token = new_token()
        outcomes = await asyncio.gather(*(limit.check(token) for _ in range(200)))
        assert outcomes == [None] * 200
        # 7, 14, 28, 56, 60, 60 units cover 200; one more may have been asked ahead.
        assert limit.leases <= 7
        with node.engine.connect() as conn:
            [used] = conn.execute(sa.select(rate_counts.c.used)).scalars()
        assert 200 <= used <= 200 + 90  # what was spent, and at most 1.5 leases unspent
    finally:
        await node.close()


async def test_the_next_lease_is_asked_ahead_so_requests_do_not_wait_for_it(
    db_url: str, tmp_path: Path
) -> None:
    """Once half a lease is spent the next one is asked in the background: a token spending
    its units one request at a time finds the next lease already granted when it needs it."""
    node, _ = new_node(db_url, tmp_path)
    await node.start()
    try:
        limit = node.minute_limit("token", 600, max_lease=60, stored_as=token_hash)
        token = new_token()
        assert await limit.check(token) is None  # waits for the first lease, of 7
        for _ in range(2):
            assert await limit.check(token) is None
        assert limit.leases == 1 and not limit._flights  # 4 left: not yet half spent
        assert await limit.check(token) is None  # 3 left: the next lease (14) asked ahead
        flight = limit._flights[token]
        await flight
        assert limit.leases == 2 and limit._left[token] == 3 + 14
    finally:
        await node.close()
