"""Several hosts in one MySQL URL: parsed from SQLAlchemy's multi-host form (bad ones refused
clearly), tried in the operator's order, a failed host set aside for a while and then
preferred again; no host answering is a database error naming them. No database."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from reliability_support import free_port

from downstream_node.domain.clock import FakeClock
from downstream_node.ledger.db import Host, HostChooser, make_engine, split_hosts

mariadb_only = pytest.mark.parametrize("db_url", ["mysql"], indirect=True)


def test_the_host_parameters_are_taken_out_of_the_url_in_their_order() -> None:
    url, hosts = split_hosts(
        "mysql+pymysql://u:s3cret@/ledger?host=db1:3306&host=db2&charset=utf8mb4&host=db3:3307"
    )
    assert hosts == (Host("db1", 3306), Host("db2", 3306), Host("db3", 3307))
    assert url.host is None and "host" not in url.query
    assert (url.username, url.password, url.database) == ("u", "s3cret", "ledger")
    assert url.query["charset"] == "utf8mb4"
    assert "s3cret" not in url.render_as_string(hide_password=True)
    assert split_hosts("mysql+pymysql://u@db1/ledger")[1] == ()  # the ordinary form


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql+pymysql://u@/d?host=db1:port", "bad host parameter 'db1:port'"),
        ("mysql+pymysql://u@/d?host=db1:70000", "bad host parameter"),
        ("mysql+pymysql://u@/d?host=:3306", "bad host parameter"),
        ("mysql+pymysql://u@db0/d?host=db1", "either before the database name"),
        ("mysql+mysqldb://u@/d?host=db1&host=db2", "PyMySQL"),
    ],
)
def test_a_malformed_host_list_is_refused_with_a_clear_error(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        make_engine(url)


def test_a_failed_host_goes_last_for_a_while_then_is_preferred_again() -> None:
    clock = FakeClock()
    a, b, c = Host("a", 1), Host("b", 2), Host("c", 3)
    chooser = HostChooser([a, b, c], clock=clock, retry_after=30)
    assert chooser.order() == [a, b, c]
    chooser.failed(a)
    assert chooser.order() == [b, c, a]  # the next that works first; a as a last resort
    chooser.failed(b)
    assert chooser.order() == [c, a, b]
    clock.advance(29)
    assert chooser.order() == [c, a, b]
    clock.advance(1)
    assert chooser.order() == [a, b, c]  # back to the operator's preference
    chooser.failed(c)
    chooser.worked(c)
    assert chooser.order() == [a, b, c]


def test_no_live_host_is_a_database_error_naming_the_hosts_tried() -> None:
    ports = free_port(), free_port()
    engine = make_engine(
        f"mysql+pymysql://u:pw@/d?host=127.0.0.1:{ports[0]}&host=127.0.0.1:{ports[1]}"
    )
    try:
        with pytest.raises(sa.exc.OperationalError, match=f"127.0.0.1:{ports[1]}"):
            engine.connect()
    finally:
        engine.dispose()
