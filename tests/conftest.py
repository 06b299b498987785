"""Shared fixtures: every database test runs on SQLite and, when ``DOWNSTREAM_TEST_MYSQL_URL``
is set, on MySQL/MariaDB too (a fresh database per test; unreachable means fail, not skip).
Cluster tests get a fresh database on the Galera cluster of ``DOWNSTREAM_TEST_GALERA_PORTS``
(``galera``; unset or unreachable means fail, not skip)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from downstream_node.ledger.db import make_engine
from downstream_node.ledger.store import EventStore

MYSQL_URL = os.environ.get("DOWNSTREAM_TEST_MYSQL_URL", "").strip()
BACKENDS = ["sqlite", "mysql"] if MYSQL_URL else ["sqlite"]
DATA = Path(__file__).parent / "data"
GALERA_PORTS = os.environ.get("DOWNSTREAM_TEST_GALERA_PORTS", "").strip()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database of each backend under test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    if not MYSQL_URL:  # a MariaDB-only test asked for it: fail, never skip
        pytest.fail("DOWNSTREAM_TEST_MYSQL_URL is not set (scripts/test.sh sets it)")
    name = f"dn_test_{uuid.uuid4().hex[:12]}"
    base = sa.make_url(MYSQL_URL)
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # fails loudly when MariaDB is unreachable
        conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on the test database (tests that need their own store may still make one)."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> EventStore:
    """An event store with its schema, and no listeners."""
    store = EventStore(engine)
    store.create_schema()
    return store


@pytest.fixture
def vectors() -> list[dict]:
    import json

    return json.loads((DATA / "heartbeat-interop.json").read_text())


@dataclass(frozen=True)
class Galera:
    """A fresh database on the test cluster: one node's URL, or all nodes' with one first."""

    ports: tuple[int, ...]
    database: str

    def node_url(self, node: int) -> str:
        """Node ``node`` (1-based) alone."""
        return f"mysql+pymysql://root@127.0.0.1:{self.ports[node - 1]}/{self.database}"

    def url(self, first: int) -> str:
        """Every node, node ``first`` preferred, the others in order after it."""
        order = [first, *(n for n in range(1, len(self.ports) + 1) if n != first)]
        hosts = "&".join(f"host=127.0.0.1:{self.ports[n - 1]}" for n in order)
        return f"mysql+pymysql://root@/{self.database}?{hosts}"


@pytest.fixture
def galera() -> Iterator[Galera]:
    """A database made for this test on the cluster (scripts/cluster.sh), dropped after."""
    if not GALERA_PORTS:
        pytest.fail("DOWNSTREAM_TEST_GALERA_PORTS is not set (scripts/test.sh sets it)")
    ports = tuple(int(p) for p in GALERA_PORTS.replace(",", " ").split())
    cluster = Galera(ports, f"dn_test_{uuid.uuid4().hex[:12]}")
    # Through any node that is up (a test may kill one); DDL replicates to the others.
    admin = make_engine(cluster.url(1).replace(f"/{cluster.database}?", "/?"))
    try:
        with admin.connect() as conn:  # fails loudly when the cluster is unreachable
            conn.exec_driver_sql(f"CREATE DATABASE `{cluster.database}` CHARACTER SET utf8mb4")
        yield cluster
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{cluster.database}`")
        admin.dispose()
