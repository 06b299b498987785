"""Per-minute rate limits that hold across every ``serve`` process on one database.

Each process leases allowances from a counter in the database (``ledger/counters.py``) and
spends them in memory: a subject's first request in a minute costs a lease, later ones none
until the lease is spent. Leases start at an eighth of ``max_lease`` and double up to it, so
a busy subject costs a few leases a minute and a quiet one a single lease; leases asked at
the same time share one transaction (a ``Batcher``, as appends share group commits). The
processes together never let more than the limit through (units leased and not spent are
lost, so they may let fewer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from ..domain.clock import to_micros
from ..ledger import counters
from ..ledger.batching import Batcher
from .runtime import Runtime

log = structlog.get_logger("downstream.node")

PERIOD = 60  # seconds: clock minutes, fixed windows


class MinuteLimit:
    """At most ``limit`` requests per subject per clock minute, across processes.

    ``max_lease``: the most units one lease takes. 1 makes every request a write to the
    database and the limit exact; more saves writes on a hot path, at the price of letting a
    subject spread over several processes through less than the limit (at most
    ``max_lease - 1`` per process fewer). Memory holds one minute's subjects.
    """

    def __init__(
        self,
        rt: Runtime,
        name: str,
        limit: int,
        *,
        max_lease: int = 1,
        stored_as: Callable[[str], str] | None = None,
    ) -> None:
        self.rt = rt
        # The subject as the database may hold it (a token's hash, never the token).
        self.stored_as = stored_as or (lambda subject: subject)
        self.name = name
        self.limit = limit
        self.max_lease = max(1, max_lease)
        # A subject's first lease in a minute: an eighth of the most, so that a farmer making
        # a few requests a minute costs one write a minute, not one per request doubling up
        # (each process may still hold at most max_lease - 1 unspent).
        self.first_lease = max(1, self.max_lease // 8)
        self.leases = 0  # leases asked (several may share a transaction), for tests
        self._period = -1
        self._left: dict[str, int] = {}  # units leased and not spent, per subject
        self._next: dict[str, int] = {}  # the size of the subject's next lease
        self._spent: set[str] = set()  # subjects whose limit this period is reached
        self._flights: dict[str, asyncio.Future[None]] = {}  # leases being taken, per subject
        self._leases: Batcher[counters.Ask, int] = Batcher(
            # On a Galera cluster every node's leases raise the same counter rows, and
            # certification aborts the losers whole: such a transaction runs again.
            lambda asks: rt.store.retrying(lambda: list(counters.take_many(rt.engine, asks))),
            executor=rt.executor,
            name=f"rate-leases-{name}",
        )

    async def check(self, subject: str) -> int | None:
        """``None`` if the request may go on, else the seconds until the period turns."""
        if self.limit <= 0:
            return None
        while True:
            now = to_micros(self.rt.clock.now()) // 1_000_000
            period, retry_after = divmod(now, PERIOD)
            retry_after = PERIOD - retry_after
            if period != self._period:
                self._turn(period)
            left = self._left.get(subject, 0)
            if left > 0:
                self._left[subject] = left - 1
                return None
            if subject in self._spent:
                return retry_after
            # One lease per subject in flight: requests arriving meanwhile share what it
            # brings instead of each asking a lease of their own (a burst would ask far more
            # than it spends, and the count would reach the limit with units still unspent).
            flight = self._flights.get(subject)
            if flight is None:
                break
            await self.rt.waited(asyncio.shield(flight))
        lease = self._next.get(subject, self.first_lease)
        ask = counters.Ask(self.name, self.stored_as(subject)[:128], period, lease, self.limit)
        flight = asyncio.get_running_loop().create_future()
        if lease > 1:  # a lease of one unit is what its request spends: nothing to share
            self._flights[subject] = flight
        try:
            granted = await self.rt.waited(self._leases.submit(ask))
        finally:
            if self._flights.get(subject) is flight:
                del self._flights[subject]
            flight.set_result(None)
        self.leases += 1
        if period != self._period:
            # The period turned while the lease was taken: this request was counted in the
            # one it asked in; what was left of the lease belongs to none now.
            return None if granted else retry_after
        self._next[subject] = min(lease * 2, self.max_lease)
        if granted == 0:
            self._spent.add(subject)
            return retry_after
        self._left[subject] = self._left.get(subject, 0) + granted - 1
        return None

    def _turn(self, period: int) -> None:
        first = self._period < 0
        self._period = period
        self._left, self._next, self._spent, self._flights = {}, {}, set(), {}
        if not first:
            self.rt.spawn(self._forget(period - 1))

    async def _forget(self, before: int) -> None:
        """Delete the counts of periods before the last one (any process may; all do, once a
        minute): the table holds two minutes of subjects."""
        try:
            await self.rt.run_db(counters.forget_before, self.rt.engine, before)
        except Exception as exc:
            log.warning("rate_counts_cleanup_failed", limit=self.name, error=repr(exc))
