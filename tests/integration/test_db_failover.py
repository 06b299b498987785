"""A URL with several hosts against the real MariaDB: a dead host in front of the live one
costs a connection only a refused connect, and is then set aside; the logs name the hosts,
never the password."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from reliability_support import free_port
from structlog.testing import capture_logs

from downstream_node.ledger.db import make_engine

mariadb_only = pytest.mark.parametrize("db_url", ["mysql"], indirect=True)


@mariadb_only
def test_a_dead_first_host_is_passed_over_and_then_set_aside(db_url: str) -> None:
    live = sa.make_url(db_url)
    dead = free_port()  # nothing listens there
    url = (
        f"mysql+pymysql://{live.username}:hunter2-not-used@/{live.database}"
        f"?host=127.0.0.1:{dead}&host={live.host}:{live.port or 3306}"
    )
    if not live.password:
        url = url.replace(":hunter2-not-used@", "@")
    engine = make_engine(url)
    try:
        with capture_logs() as logs, engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT DATABASE()").scalar() == live.database
        failed = [e for e in logs if e["event"] == "db_host_failed"]
        assert [e["host"] for e in failed] == [f"127.0.0.1:{dead}"]
        assert all("hunter2" not in str(e) for e in logs)
        with capture_logs() as logs:  # a second connection goes straight to the live host
            first, second = engine.connect(), engine.connect()
            first.close()
            second.close()
        assert not [e for e in logs if e["event"] == "db_host_failed"]
    finally:
        engine.dispose()
