"""Leases: a name held by one owner until a time, in a row every writer of the ledger sees.

A cluster-wide lock for long jobs (a projection rebuild): MySQL's named locks (``GET_LOCK``)
are per node on a Galera cluster, but a row taken and committed certifies against the others.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from ..domain.clock import Clock, SystemClock, to_micros
from .db import ABORTED_CODES, RACED_CODES, mysql_error_code, retry_raced, write_transaction
from .schema import leases

log = structlog.get_logger("downstream.ledger")

TTL = 60.0  # seconds a lease lasts unless renewed: how long a crashed holder keeps it
POLL = 0.5  # seconds between two tries of a waiting taker


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, and until when (UTC microseconds)."""

    owner: str
    expires_at: int


def new_owner() -> str:
    """A name for one holder: host, process, and a random part (one process may take a
    lease twice, and the second must be refused)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def try_take(
    engine: Engine, name: str, owner: str, *, clock: Clock, ttl: float = TTL
) -> Holder | None:
    """Take (or renew, for its owner) the lease ``name`` until now + ``ttl``: ``None`` when
    taken, else who holds it. One transaction, committed: the row lock decides between takers
    on one server; between nodes of a Galera cluster certification does (the later commit is
    aborted, and tries again to find the row taken)."""
    # A ledger made before leases existed: made now (again, if another node raced this one).
    retry_raced(lambda: leases.create(engine, checkfirst=True))
    for _ in range(10):
        now = to_micros(clock.now())
        try:
            with write_transaction(engine) as conn, conn.begin():
                row = conn.execute(
                    sa.select(leases).where(leases.c.name == name).with_for_update()
                ).first()
                if row is not None and row.owner != owner and row.expires_at > now:
                    return Holder(row.owner, row.expires_at)
                values = {"owner": owner, "expires_at": now + int(ttl * 1_000_000)}
                if row is None:
                    conn.execute(leases.insert().values(name=name, **values))
                else:
                    conn.execute(leases.update().where(leases.c.name == name).values(**values))
            return None
        except sa.exc.DBAPIError as exc:
            code = mysql_error_code(exc)
            if code not in ABORTED_CODES and code not in RACED_CODES:
                raise
            log.info("lease_raced", name=name, code=code)  # another taker won: look again
            time.sleep(0.01)
    raise RuntimeError(f"could not decide the lease {name!r} after 10 tries")


def release(engine: Engine, name: str, owner: str) -> None:
    """Give the lease up (only its owner's)."""
    with write_transaction(engine) as conn, conn.begin():
        conn.execute(leases.delete().where(leases.c.name == name, leases.c.owner == owner))


class LeaseHeld(Exception):
    """The lease is someone else's and stayed so for as long as the caller would wait."""

    def __init__(self, name: str, holder: Holder) -> None:
        super().__init__(f"{name} is held by {holder.owner}")
        self.holder = holder


@contextmanager
def held(
    engine: Engine,
    name: str,
    *,
    wait: float = 0,
    clock: Clock | None = None,
    ttl: float = TTL,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """Hold the lease ``name`` for the block (yields the owner name), renewed every
    ``ttl / 4`` seconds by a thread; a holder that dies leaves it free ``ttl`` seconds later.
    Waits up to ``wait`` seconds (``POLL`` between tries) for another holder, then raises
    ``LeaseHeld``."""
    clock = clock or SystemClock()
    owner = new_owner()
    tries = max(1, int(wait / POLL) + 1)
    for n in range(tries):
        holder = try_take(engine, name, owner, clock=clock, ttl=ttl)
        if holder is None:
            break
        if n == tries - 1:
            raise LeaseHeld(name, holder)
        sleep(POLL)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl / 4):
            try:
                lost = try_take(engine, name, owner, clock=clock, ttl=ttl)
            except Exception as exc:  # the next round tries again; the lease lasts ttl
                log.warning("lease_renewal_failed", name=name, error=repr(exc)[:200])
                continue
            if lost is not None:
                log.error("lease_lost", name=name, holder=lost.owner)
                return

    renewer = threading.Thread(target=renew, name=f"lease-{name}", daemon=True)
    renewer.start()
    try:
        yield owner
    finally:
        stop.set()
        renewer.join()
        release(engine, name, owner)
