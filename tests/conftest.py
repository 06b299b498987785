"""Shared fixtures: every database test runs on SQLite and, when ``DOWNSTREAM_TEST_MYSQL_URL``
is set, on MySQL/MariaDB too (a fresh database per test; unreachable means fail, not skip)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from downstream_node.ledger.db import make_engine
from downstream_node.ledger.store import EventStore

MYSQL_URL = os.environ.get("DOWNSTREAM_TEST_MYSQL_URL", "").strip()
BACKENDS = ["sqlite", "mysql"] if MYSQL_URL else ["sqlite"]
DATA = Path(__file__).parent / "data"


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
