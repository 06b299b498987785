"""Database faults: a dropped connection or a failed append gives the farmer a retryable 503,
never a wrong verdict; an append whose commit outcome is unknown is never reported as a pass,
and the farmer's identical retry gets the recorded verdict without a second event; the node
recovers without a restart.

The ``KILL`` tests need MariaDB (they fail, not skip, when it is unreachable): they kill the
node's own connections from the server side while a request waits on them. The stall test
starts a MariaDB server of its own and stops it (SIGSTOP): every request is answered in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
import structlog
from aiohttp.test_utils import TestClient
from http_support import ADDRESS, RECEIPT, new_node, prove, stock
from reliability_support import check_ledger, demo_args, kill, private_mariadb, start_serve
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


async def test_a_node_starts_whatever_its_request_budget(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """``db_wait`` bounds what a farmer's request waits for, not the node's own start (its
    schema, secret and log key), which a slow database may take longer over; requests are
    bounded all the same."""
    node, _ = new_node(db_url, tmp_path, db_wait=1e-6)
    client = await aiohttp_client(create_app(node))  # starts the node
    status, body, _ = await call(client, "GET", f"{API}/new/{ADDRESS}")
    assert (status, body["status"]) == (503, "error")
    assert "did not answer within" in body["message"]
    await client.close()


async def test_a_request_waits_for_a_locked_ledger_at_most_its_budget(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """Another client holds the ledger (SQLite's write lock; MariaDB's ledger-head row): a
    request that must write gets 503 with Retry-After once its budget for the database
    (``db_wait``) is spent, not when the lock is freed; then the node answers again."""
    node, _ = new_node(db_url, tmp_path, db_wait=1.0)
    client = await aiohttp_client(create_app(node))
    await stock(node, files=1)
    if db_url.startswith("sqlite"):
        holder: Any = sqlite3.connect(sa.make_url(db_url).database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    else:
        holder_engine = sa.create_engine(db_url, poolclass=sa.NullPool)
        holder = holder_engine.connect()
        holder.execute(sa.text("SELECT position FROM ledger_head FOR UPDATE"))
    try:
        with capture_logs() as logs:
            status, body, retry_after = await asyncio.wait_for(
                call(client, "GET", f"{API}/new/{ADDRESS}"), 10
            )
        assert (status, body["status"]) == (503, "error") and int(retry_after) > 0
        assert "did not answer within 1 s" in body["message"]
        assert any(e["event"] == "database_timeout" for e in logs)
    finally:
        holder.rollback()
        holder.close()
        if not db_url.startswith("sqlite"):
            holder_engine.dispose()
    status, body, _ = await call(client, "GET", f"{API}/new/{ADDRESS}")
    assert status == 200 and body["token"]
    await client.close()


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


# -- MariaDB stalled (SIGSTOP): every request answered in time, nothing acknowledged lost ---------

STALL = 20.0  # seconds the server is stopped
IN_TIME = 6.0  # seconds any request may take, its answer or a 503 with Retry-After


@dataclass(frozen=True)
class Timed:
    started: float  # loop time
    seconds: float
    route: str
    status: int
    word: str
    retry_after: str | None


async def _stall_farmer(
    http: aiohttp.ClientSession,
    url: str,
    address: str,
    stop: asyncio.Event,
    seen: list[Timed],
    passes: list[tuple[str, str, int]],
) -> None:
    """A farmer timing every request: a token, two contracts, then polls and answers until
    ``stop`` (a contract that ended, by expiring in the stall, is dropped and replaced)."""
    loop = asyncio.get_running_loop()

    async def call(route: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        started = loop.time()
        try:
            async with http.request(method, url + API + path, **kwargs) as response:
                body = await response.json()
                status, retry_after = response.status, response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:  # no answer in the client's 30 s
            body, status, retry_after = {"status": type(exc).__name__}, 0, None
        word = body.get("status", "ok") if isinstance(body, dict) else "ok"
        seen.append(Timed(started, loop.time() - started, route, status, word, retry_after))
        return status, body

    status, created = await call("new", "GET", f"/new/{address}")
    assert status == 200, created
    token, heartbeat = created["token"], created["heartbeat"]
    held: dict[str, dict] = {}
    while not stop.is_set():
        if len(held) < 2:
            status, got = await call("chunk", "GET", f"/chunk/{token}")
            if status == 200:
                held[got["file_hash"]] = got
        status, due = await call("due", "GET", f"/due/{token}")
        if status == 200:
            live = {c["hash"] for c in due["all_contracts"]}
            held = {h: c for h, c in held.items() if h in live}
            for item in due["due_contracts"]:
                contract = held.get(item["hash"])
                if contract is None:
                    continue
                proof = prove(heartbeat, contract, item["challenge"])
                path = f"/answer/{token}/{item['hash']}"
                status, reply = await call("answer", "POST", path, json={"proof": proof})
                if status == 200 and reply["status"] == "pass":
                    passes.append((token, item["hash"], int(item["challenge"]["index"])))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def test_a_stalled_database_gets_503_in_time_and_loses_nothing(tmp_path: Path) -> None:
    """A MariaDB of the test's own, SIGSTOPped for 20 s under farmer load: every request gets
    its answer or a 503 with Retry-After within 6 s (the driver's read timeout and the
    request's budget for the database, ``serve --db-*``); after SIGCONT the farmers go on,
    every ``pass`` they were told is in the ledger and the chain verifies."""
    async with private_mariadb() as server:
        served = await start_serve(server.url, tmp_path, *demo_args(redundancy=2, interval=2))
        seen: list[Timed] = []
        passes: list[tuple[str, str, int]] = []
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                assert served.address is not None
                farmers = [
                    asyncio.create_task(
                        _stall_farmer(http, served.url, served.address, stop, seen, passes)
                    )
                    for _ in range(4)
                ]
                try:
                    await asyncio.sleep(4)
                    before = len(passes)
                    server.process.send_signal(signal.SIGSTOP)
                    stalled = loop.time()
                    try:
                        await asyncio.sleep(STALL)
                    finally:
                        server.process.send_signal(signal.SIGCONT)
                    resumed = loop.time()
                    await asyncio.sleep(8)
                finally:
                    stop.set()
                    outcomes = await asyncio.gather(*farmers, return_exceptions=True)
            assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
        finally:
            await kill(served.process, signal.SIGTERM)
        facts = check_ledger(server.url)  # chain verifies, no gap, rebuild equals live

    slow = [t for t in seen if t.seconds > IN_TIME]
    assert not slow, slow[:10]
    in_stall = [t for t in seen if stalled + 0.5 < t.started < resumed - IN_TIME]
    assert in_stall and all(t.status == 503 for t in in_stall), in_stall[:10]
    unavailable = [t for t in seen if t.status == 503 and t.word == "error"]
    assert all(t.retry_after and int(t.retry_after) > 0 for t in unavailable), unavailable[:5]
    assert not [t for t in seen if t.status >= 500 and t.status != 503], seen
    assert before > 0 and [p for p in passes[before:] if p], "no pass before or after the stall"
    after = [t for t in seen if t.started > resumed + 3 and t.route == "answer"]
    assert any(t.status == 200 and t.word == "pass" for t in after), after[:10]
    for token, file_hash, index in passes:
        assert index in facts.passes_of(token, file_hash), (token[:4], file_hash[:8], index)
