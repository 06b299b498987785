"""Per-minute rate limits that hold across every ``serve`` process on one database.

Each process leases allowances from a counter in the database (``ledger/counters.py``) and
spends them in memory: a subject's first request in a minute waits for a lease, later ones
for none: once half a lease is spent the next is asked ahead, in the background. Leases start
at an eighth of ``max_lease`` and double up to it, so a busy subject costs a few leases a
minute and a quiet one a single lease; leases asked at the same time share one transaction
(a ``Batcher``, as appends share group commits). The
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
    subject spread over several processes through less than the limit (per process, what it
    holds unspent: at most half a lease and the one asked ahead, under ``1.5 * max_lease``).
    Memory holds one minute's subjects.
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
        # a few requests a minute costs one write a minute, not a doubling series of them.
        self.first_lease = max(1, self.max_lease // 8)
        self.leases = 0  # leases asked (several may share a transaction), for tests
        self._period = -1
        self._left: dict[str, int] = {}  # units leased and not spent, per subject
        self._next: dict[str, int] = {}  # the size of the subject's next lease
        self._spent: set[str] = set()  # subjects whose limit this period is reached
        self._low: dict[str, int] = {}  # units left at which the next lease is asked ahead
        self._flights: dict[str, asyncio.Task[None]] = {}  # leases being taken, per subject
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
        if self.max_lease == 1:
            return await self._check_exact(subject)
        while True:
            period, retry_after = self._now()
            left = self._left.get(subject, 0)
            if left > 0:
                self._left[subject] = left - 1
                if left - 1 <= self._low.get(subject, 0):
                    # Half the lease spent: the next one is asked now, so that the requests
                    # after it find their units waiting instead of waiting for a write.
                    self._lease_ahead(subject, period)
                return None
            if subject in self._spent:
                return retry_after
            # One lease per subject in flight: requests arriving meanwhile share what it
            # brings instead of each asking a lease of their own (a burst would ask far more
            # than it spends, and the count would reach the limit with units still unspent).
            flight = self._lease_ahead(subject, period)
            await self.rt.waited(asyncio.shield(flight))

    async def _check_exact(self, subject: str) -> int | None:
        """Leases of one unit: each request asks its own (what it spends; several asked at
        once share a transaction)."""
        period, retry_after = self._now()
        if subject in self._spent:
            return retry_after
        ask = counters.Ask(self.name, self.stored_as(subject)[:128], period, 1, self.limit)
        granted = await self.rt.waited(self._leases.submit(ask))
        self.leases += 1
        if granted == 0 and period == self._period:
            self._spent.add(subject)
        return None if granted else retry_after

    def _now(self) -> tuple[int, int]:
        """The current period, and the seconds until it turns (turning the state over)."""
        now = to_micros(self.rt.clock.now()) // 1_000_000
        period, into = divmod(now, PERIOD)
        if period != self._period:
            self._turn(period)
        return period, PERIOD - into

    def _lease_ahead(self, subject: str, period: int) -> asyncio.Task[None]:
        """The subject's lease in flight, started now if none is."""
        flight = self._flights.get(subject)
        if flight is None:
            flight = self._flights[subject] = self.rt.spawn(self._lease(subject, period))
            flight.add_done_callback(self._leased)
        return flight

    async def _lease(self, subject: str, period: int) -> None:
        """Lease the subject's next allowance and add it to what it has left."""
        lease = self._next.get(subject, self.first_lease)
        ask = counters.Ask(self.name, self.stored_as(subject)[:128], period, lease, self.limit)
        try:
            granted = await self.rt.waited(self._leases.submit(ask))
        finally:
            if self._flights.get(subject) is asyncio.current_task():
                del self._flights[subject]
        self.leases += 1
        if period != self._period:
            return  # the period turned meanwhile: what was granted belongs to none now
        self._next[subject] = min(lease * 2, self.max_lease)
        self._low[subject] = lease // 2
        if granted == 0:
            self._spent.add(subject)
        else:
            self._left[subject] = self._left.get(subject, 0) + granted

    def _leased(self, flight: asyncio.Task[None]) -> None:
        # A lease that failed fails the requests waiting for it (a 503 each); one asked ahead,
        # that nobody waited for, is only logged: the next request asks again.
        if not flight.cancelled() and flight.exception() is not None:
            log.warning("rate_lease_failed", limit=self.name, error=repr(flight.exception()))

    def _turn(self, period: int) -> None:
        first = self._period < 0
        self._period = period
        self._left, self._next, self._low, self._spent, self._flights = {}, {}, {}, set(), {}
        if not first:
            self.rt.spawn(self._forget(period - 1))

    async def _forget(self, before: int) -> None:
        """Delete the counts of periods before the last one (any process may; all do, once a
        minute): the table holds two minutes of subjects."""
        try:
            await self.rt.run_db(counters.forget_before, self.rt.engine, before)
        except Exception as exc:
            log.warning("rate_counts_cleanup_failed", limit=self.name, error=repr(exc))
