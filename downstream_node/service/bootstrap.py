"""The composition root: the one place that builds engines, the event store with its
projector, and the node's runtime, for ``serve``, the CLI and the scripts alike.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from ..config import Settings
from ..domain.clock import Clock, SystemClock
from ..ledger.db import DbTimeouts, make_engine
from ..ledger.store import EventStore
from ..projections.projector import Projector
from ..projections.queries import ReadModel
from .logkeys import LogKeys
from .runtime import Runtime


def store_on(engine: Engine, *, projections: bool = True) -> EventStore:
    """An event store on ``engine``; with ``projections`` the live projector folds every
    append into the projection tables in the append's own transaction."""
    return EventStore(engine, [Projector()] if projections else [])


def open_store(
    url: str, *, projections: bool = True, timeouts: DbTimeouts | None = None
) -> EventStore:
    """An event store on a new engine for ``url`` (see ``store_on``)."""
    return store_on(make_engine(url, timeouts=timeouts), projections=projections)


def runtime(settings: Settings, clock: Clock | None = None, *, workers: int = 4) -> Runtime:
    """Everything a node's commands share, wired on ``settings.db_url``."""
    store = open_store(settings.db_url, timeouts=settings.db_timeouts())
    return Runtime(
        settings,
        clock or SystemClock(),
        engine=store.engine,
        store=store,
        read_model=ReadModel(store.engine),
        workers=workers,
        # The node's start (schema, indexes, perhaps a rebuild of the projections) may run
        # statements longer than a request's read timeout: on an engine without one.
        maintenance=lambda: open_store(
            settings.db_url, timeouts=DbTimeouts(connect=settings.db_connect_timeout)
        ),
    )


def attach_log(rt: Runtime, keys: LogKeys) -> None:
    """Give a starting node its transparency log: the keys, and the store's tree kept with
    every append under the ledger's commitment key."""
    rt.log_keys = keys
    rt.store.keep_tree(keys.public_forms())
