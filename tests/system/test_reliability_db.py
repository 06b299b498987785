"""Database faults: a dropped connection or a failed append gives the farmer a retryable 503,
never a wrong verdict; an append whose commit outcome is unknown is never reported as a pass,
and the farmer's identical retry gets the recorded verdict without a second event; the node
recovers without a restart.

The ``KILL`` tests need MariaDB (they fail, not skip, when it is unreachable): they kill the
node's own connections from the server side while a request waits on them.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
import structlog
from aiohttp.test_utils import TestClient
from http_support import ADDRESS, RECEIPT, new_node, prove, stock
from reliability_support import check_ledger, kill, start_serve
from structlog.testing import capture_logs

from downstream_node.http.app import create_app
from downstream_node.ledger.store import AppendFailed
from downstream_node.projections.queries import Reader
from downstream_node.service import Node

API = "/api/downstream"
mariadb_only = pytest.mark.parametrize("db_url", ["mysql"], indirect=True)


async def call(client: TestClient, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
    async with client.request(method, path, **kwargs) as response:
        return response.status, await response.json(), response.headers.get("Retry-After")


async def farmer(db_url: str, tmp_path: Path, aiohttp_client: Any) -> tuple[TestClient, Node, dict]:
    node, _ = new_node(db_url, tmp_path)
    client = await aiohttp_client(create_app(node))
    await stock(node, files=2)
    _, created, _ = await call(client, "GET", f"{API}/new/{ADDRESS}")
    _, contract, _ = await call(client, "GET", f"{API}/chunk/{created['token']}")
    return client, node, {**created, "contract": contract}


def recorded(db_url: str, event_type: str) -> int:
    return sum(1 for e in check_ledger(db_url).events if e.event_type == event_type)


# -- a failed append (both databases; the failure is injected) ----------------------------------


@pytest.mark.parametrize("before_commit", [True, False], ids=["before-commit", "commit-lost"])
async def test_a_failed_append_is_a_retryable_503_never_a_verdict(
    db_url: str,
    tmp_path: Path,
    aiohttp_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    before_commit: bool,
) -> None:
    """``before_commit``: nothing was written. Not: the commit happened but its outcome was
    lost (the connection dropped during COMMIT); the farmer must still not be told ``pass``,
    and its retry of the same answer gets the recorded ``pass`` instead of a second event."""
    client, node, me = await farmer(db_url, tmp_path, aiohttp_client)
    real = node.store.transact
    failures = []

    def failing(decide: Any) -> Any:
        if not failures:
            failures.append(decide)
            cause = ConnectionResetError("connection lost")
            if before_commit:
                raise AppendFailed(cause, before_commit=True)
            real(decide)  # committed ...
            raise AppendFailed(cause, before_commit=False)  # ... but the answer never came
        return real(decide)

    monkeypatch.setattr(node.store, "transact", failing)
    contract = me["contract"]
    url = f"{API}/answer/{me['token']}/{contract['file_hash']}"
    proof = {"proof": prove(me["heartbeat"], contract)}
    with capture_logs() as logs:
        status, body, retry_after = await call(client, "POST", url, json=proof)
    assert (status, body["status"]) == (503, "error") and int(retry_after) > 0
    assert ("unknown" in body["message"]) is not before_commit
    assert [e["before_commit"] for e in logs if e["event"] == "append_failed"] == [before_commit]
    # the farmer retries the same answer: the verdict, and one event either way
    status, body, _ = await call(client, "POST", url, json=proof)
    assert (status, body) == (200, {"status": "pass", "receipt": RECEIPT})
    assert (await call(client, "GET", f"{API}/due/{me['token']}"))[0] == 200
    await client.close()
    assert recorded(db_url, "AnswerPassed") == 1


async def test_an_unreachable_database_is_a_retryable_503(
    db_url: str, tmp_path: Path, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, node, me = await farmer(db_url, tmp_path, aiohttp_client)

    def down(*args: Any, **kwargs: Any) -> Any:
        raise sa.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))

    monkeypatch.setattr(node.read_model, "reader", down)
    with capture_logs():
        for path in (f"/chunk/{me['token']}", f"/due/{me['token']}", f"/new/{ADDRESS}"):
            status, body, retry_after = await call(client, "GET", API + path)
            assert (status, body["status"]) == (503, "error") and int(retry_after) > 0
    monkeypatch.undo()
    assert (await call(client, "GET", f"{API}/due/{me['token']}"))[0] == 200


# -- MariaDB: KILL the node's connections from the server side ----------------------------------


class Admin:
    """A second, independent client of the test database: sees and kills the node's
    connections (``information_schema.PROCESSLIST``) and can hold the ledger lock."""

    def __init__(self, db_url: str) -> None:
        self.url = sa.make_url(db_url)
        self.engine = sa.create_engine(
            self.url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
        )
        self.conn = self.engine.connect()
        self.own = {self.conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one()}

    def node_connections(self, info_like: str | None = None) -> list[int]:
        query = "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = :db"
        params: dict[str, Any] = {"db": self.url.database}
        if info_like is not None:
            query += " AND INFO LIKE :info"
            params["info"] = info_like
        ids = self.conn.execute(sa.text(query), params).scalars().all()
        return [i for i in ids if i not in self.own]

    async def wait_for(
        self, info_like: str, timeout: float = 15, exclude: set[int] | None = None
    ) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = await asyncio.to_thread(self.node_connections, info_like)
            found = [i for i in found if i not in (exclude or set())]
            if found:
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"no node connection ran {info_like!r} within {timeout} s")

    def kill(self, ids: list[int]) -> None:
        for connection_id in ids:
            try:
                self.conn.execute(sa.text(f"KILL CONNECTION {int(connection_id)}"))
            except sa.exc.OperationalError as exc:  # it went away by itself meanwhile
                assert "Unknown thread id" in str(exc), exc

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


@mariadb_only
async def test_connections_killed_between_requests_are_replaced(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    client, _node, me = await farmer(db_url, tmp_path, aiohttp_client)
    admin = Admin(db_url)
    try:
        for _ in range(3):
            idle = admin.node_connections()
            assert idle, "the node holds pooled connections"
            admin.kill(idle)
            status, due, _ = await call(client, "GET", f"{API}/due/{me['token']}")
            assert status == 200 and [c["hash"] for c in due["all_contracts"]] == [
                me["contract"]["file_hash"]
            ]
        contract = me["contract"]
        url = f"{API}/answer/{me['token']}/{contract['file_hash']}"
        admin.kill(admin.node_connections())
        status, body, _ = await call(
            client, "POST", url, json={"proof": prove(me["heartbeat"], contract)}
        )
        assert (status, body) == (200, {"status": "pass", "receipt": RECEIPT})
    finally:
        admin.close()
        await client.close()
    assert recorded(db_url, "AnswerPassed") == 1


@mariadb_only
async def test_a_connection_killed_during_an_answer_is_a_503_and_the_node_recovers(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """The append waits for the ledger lock (held by another client); its connection is
    killed there. Nothing was done in it, so the unit of work waits again on a fresh
    connection; killed there too, the farmer gets 503 with Retry-After and nothing is
    recorded. Once the lock is free the same answer passes, with no restart."""
    client, _node, me = await farmer(db_url, tmp_path, aiohttp_client)
    admin = Admin(db_url)
    holder_engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    holder = holder_engine.connect()
    try:
        admin.own.add(holder.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one())
        holder.execute(sa.text("SELECT position FROM ledger_head FOR UPDATE"))  # the lock
        contract = me["contract"]
        url = f"{API}/answer/{me['token']}/{contract['file_hash']}"
        proof = {"proof": prove(me["heartbeat"], contract)}
        with capture_logs() as logs:
            answering = asyncio.create_task(call(client, "POST", url, json=proof))
            killed: set[int] = set()
            for _ in range(2):  # the first wait, then the retry's
                waiting = await admin.wait_for("%ledger_head%FOR UPDATE%", exclude=killed)
                admin.kill(waiting)
                killed.update(waiting)
            status, body, retry_after = await asyncio.wait_for(answering, 30)
        assert (status, body["status"]) == (503, "error") and int(retry_after) > 0
        assert any(e["event"] == "append_failed" for e in logs)
        holder.rollback()  # the lock is free again
        assert recorded(db_url, "AnswerPassed") == 0
        status, body, _ = await call(client, "POST", url, json=proof)
        assert (status, body) == (200, {"status": "pass", "receipt": RECEIPT})
        status, _, _ = await call(client, "GET", f"{API}/chunk/{me['token']}")
        assert status == 200
    finally:
        holder.close()
        holder_engine.dispose()
        admin.close()
        await client.close()
    assert recorded(db_url, "AnswerPassed") == 1


@mariadb_only
async def test_a_read_whose_connection_is_killed_is_retried_once(
    db_url: str, tmp_path: Path, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _node, me = await farmer(db_url, tmp_path, aiohttp_client)
    admin = Admin(db_url)
    real = Reader.contracts_for_token
    slowed: list[bool] = []

    def slow_once(self: Reader, token_hash: str) -> Any:
        if not slowed:
            slowed.append(True)
            self.conn.execute(sa.text("SELECT SLEEP(20) AS dropped_read"))
        return real(self, token_hash)

    monkeypatch.setattr(Reader, "contracts_for_token", slow_once)
    try:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            polling = asyncio.create_task(
                call(client, "GET", f"{API}/due/{me['token']}", headers={"X-Request-Id": "poll-1"})
            )
            admin.kill(await admin.wait_for("%dropped_read%"))
            status, due, _ = await asyncio.wait_for(polling, 30)
        assert status == 200
        assert [c["hash"] for c in due["all_contracts"]] == [me["contract"]["file_hash"]]
        # logged in a worker thread, with the request's id
        assert [e.get("request_id") for e in logs if e["event"] == "read_retried"] == ["poll-1"]
    finally:
        admin.close()
        await client.close()


# -- a stalled database (MariaDB: another session holds the ledger's tables) --------------------


@mariadb_only
async def test_a_stalled_database_is_reported_and_does_not_hold_the_stop(
    db_url: str, tmp_path: Path
) -> None:
    """While another session holds the ledger locked, /health answers 503 within seconds and
    /metrics says the database is down, instead of hanging; SIGTERM then stops the node
    within --stop-timeout (exit status 1, saying why) instead of waiting for the lock."""
    served = await start_serve(db_url, tmp_path, "--no-demo", "--stop-timeout", "2")
    locker = sa.create_engine(db_url).connect()
    try:
        locker.exec_driver_sql("LOCK TABLES ledger_head WRITE, events WRITE")
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            async with http.get(served.url + "/health") as response:
                body = await response.json()
                assert response.status == 503 and body["status"] == "unavailable"
            assert time.monotonic() - started < 15
            async with http.get(served.url + "/metrics") as response:
                assert "downstream_database_up 0.0" in await response.text()
        started = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(served.process.wait(), 20)
        assert served.process.returncode == 1
        assert "did not stop within 2 s" in served.stderr.read_text()
    finally:
        locker.exec_driver_sql("UNLOCK TABLES")
        locker.close()
        await kill(served.process)
