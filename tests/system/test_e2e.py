"""End to end: the real server on a TCP port, the reference farmer, a FakeClock moved by hand.

Token, several contracts, several challenge rounds, pass, a deliberately wrong proof (fail),
already answered, a late answer (expired), remove, token deletion and reassignment of its
chunks to another farmer; then the projections rebuild to identical tables and the ledger's
hash chain verifies.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from http_support import ADDRESS, INTERVAL, head, new_node, real_server, stock

from downstream_node.cli import main
from downstream_node.farmer import Farmer, FarmerError
from downstream_node.http.app import create_app


def cli(db_url: str, *args: str) -> dict:
    result = CliRunner().invoke(main, ["--db", db_url, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


async def test_farmers_against_a_real_server(db_url: str, tmp_path: Path) -> None:
    node, clock = new_node(db_url, tmp_path)
    app = create_app(node)
    async with real_server(app) as server:
        files = await stock(node, files=3, redundancy=1)
        async with (
            Farmer(server.url, ADDRESS, directory=tmp_path / "one", name="one") as one,
            Farmer(server.url, ADDRESS, directory=tmp_path / "two", name="two") as two,
        ):
            # -- a token and several contracts, until the node has none left ---------------
            token = await one.register()
            assert len(token) == 32
            taken = await one.take_contracts(10)
            assert sorted(c.file_hash for c in taken) == sorted(files)
            for contract in taken:  # regenerated from the seed, on disk, full size
                assert contract.path.stat().st_size == contract.size
            await two.register()
            assert await two.take_contract() is None  # no_chunks: every replica is held

            # -- several rounds: answer, move the clock one interval, next challenge -------
            seen_indexes = []
            for _ in range(4):
                verdicts = await one.poll_and_answer()
                assert verdicts == dict.fromkeys(files, "pass")
                seen_indexes.append({c.challenge["index"] for c in one.contracts.values()})
                clock.advance(INTERVAL)
            assert seen_indexes == [{0}, {1}, {2}, {3}]

            # -- a deliberately wrong proof fails; the challenge stays open ----------------
            due = await one.due()
            assert sorted(d["hash"] for d in due["due_contracts"]) == sorted(files)
            for item in due["due_contracts"]:
                one.contracts[item["hash"]].challenge = item["challenge"]
            first, second, third = files
            assert await one.answer(first, wrong=True) == "fail"
            assert await one.answer(first) == "pass"
            assert await one.answer(first) == "pass"  # the same answer again: its verdict
            with pytest.raises(FarmerError) as refused:  # another answer after the pass
                await one.answer(first, wrong=True)
            assert (refused.value.status, refused.value.http_status) == ("already_answered", 409)
            assert await one.answer(second) == "pass"

            # -- a late answer: the third contract's challenge expires unanswered ----------
            clock.advance(INTERVAL + 1)
            with pytest.raises(FarmerError) as late:
                await one.answer(third)
            assert (late.value.status, late.value.http_status) == ("expired", 410)
            assert third not in one.contracts

            # -- remove: the farmer ends a contract; the hash is then unknown to it --------
            assert await one.poll_and_answer() == {first: "pass", second: "pass"}
            proof = await one.prove(second)
            await one.remove(second)
            assert not (tmp_path / "one" / second).exists()
            with pytest.raises(FarmerError) as gone:
                await one.answer(second, proof=proof)
            assert (gone.value.status, gone.value.http_status) == ("no_hash", 404)
            with pytest.raises(FarmerError) as gone:
                await one.remove(second)
            assert (gone.value.status, gone.value.http_status) == ("no_hash", 404)
            assert [c["hash"] for c in (await one.due())["all_contracts"]] == [first]

            # -- the second farmer picks up the expired and the removed chunk --------------
            picked = await two.take_contracts(10)
            assert sorted(c.file_hash for c in picked) == sorted([second, third])
            assert set((await two.poll_and_answer()).values()) == {"pass"}

            # -- token deletion: its chunk returns to the pool, the other farmer takes it --
            await node.delete_token(token)
            with pytest.raises(FarmerError) as deleted:
                await one.due()
            assert (deleted.value.status, deleted.value.http_status) == ("no_token", 404)
            reassigned = await two.take_contracts(10)
            assert [c.file_hash for c in reassigned] == [first]
            assert await two.poll_and_answer() == {first: "pass"}
            clock.advance(INTERVAL)
            assert await two.poll_and_answer() == dict.fromkeys(files, "pass")

            # -- the node's own view: metrics and health -----------------------------------
            async with aiohttp.ClientSession() as http:
                async with http.get(server.url + "/metrics") as response:
                    metrics = await response.text()
                async with http.get(server.url + "/health") as response:
                    assert response.status == 200
                    health = await response.json()
            assert 'downstream_answers_total{verdict="fail"} 1.0' in metrics
            assert 'downstream_answers_total{verdict="pass"}' in metrics
            assert health["database"] is True and health["projection_lag"] == 0
            assert health["position"] == head(node)
        assert one.stats.failed == 1 and one.stats.passed >= 14
        final = head(node)

    # -- afterwards: the projections rebuild to the same tables, the chain verifies ----------
    rebuilt = cli(db_url, "projections", "rebuild")
    assert rebuilt["identical_to_previous"] is True, rebuilt["differences"]
    assert rebuilt["position"] == final
    verified = cli(db_url, "ledger", "verify")
    assert verified["ok"] is True and verified["checked"] == final


async def _serve_process(db: Path, *extra: str, port: int = 0) -> asyncio.subprocess.Process:
    """``serve`` on the SQLite file ``db``, its output piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "downstream_node.cli",
        "--db",
        f"sqlite:///{db}",
        "serve",
        "--port",
        str(port),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _start_serve(db: Path, *extra: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    process = await _serve_process(db, *extra)
    assert process.stdout is not None
    lines: list[str] = []
    while not lines or "farm --url" not in lines[-1]:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert line, f"serve exited early: {lines}"
        lines.append(line.decode().strip())
    return process, lines


async def _stop(process: asyncio.subprocess.Process) -> str:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        _, err = await asyncio.wait_for(process.communicate(), 30)
    except TimeoutError:
        process.kill()
        _, err = await process.communicate()
    return err.decode()


async def test_serve_demo_answers_health(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    process, lines = await _start_serve(db, "--demo", "--log-format", "json")
    try:
        url = re.search(r"listening on (http://\S+)", lines[0])[1]  # type: ignore[index]
        address = re.search(r"--address (\S+)", lines[-1])[1]  # type: ignore[index]
        assert any("3 seeded chunks (3 added now)" in line for line in lines)
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/health") as response:
                assert response.status == 200
                health = await response.json()
            async with http.get(f"{url}/api/downstream/new/{address}") as response:
                assert response.status == 200
                token = (await response.json())["token"]
                new_request = response.headers["X-Request-Id"]
            async with http.get(f"{url}/api/downstream/chunk/{token}") as response:
                contract = await response.json()
        assert health["status"] == "ok" and health["position"] >= 5
        assert contract["size"] == 1024 * 1024
    finally:
        err = await _stop(process)
    assert process.returncode == 0, err
    logged = [json.loads(line) for line in err.splitlines() if line.strip()]  # one per line
    assert {"listening", "request", "stopping"} <= {e["event"] for e in logged}
    assert all("timestamp" in e and "level" in e for e in logged)
    assert token not in err
    # The node's own line and the access line of a request carry its id (the server caches
    # its loggers: the id comes from the request's context, not from the logger).
    of_new = [e["event"] for e in logged if e.get("request_id") == new_request]
    assert of_new == ["token_created", "request"]

    # a restart finds the demo stock and adds nothing
    process, lines = await _start_serve(db)  # SQLite: --demo is the default
    await _stop(process)
    assert any("3 seeded chunks (0 added now)" in line for line in lines)
    # ... and adds back a demo chunk the operator removed
    removed = await asyncio.to_thread(  # the CLI runs its own event loop
        CliRunner().invoke,
        main,
        ["--db", f"sqlite:///{db}", "file", "remove", contract["file_hash"]],
    )
    assert removed.exit_code == 0, removed.output
    process, lines = await _start_serve(db)
    await _stop(process)
    assert any("3 seeded chunks (1 added now)" in line for line in lines), lines


async def test_the_demo_stock_is_part_of_the_start_outside_the_request_budget(
    tmp_path: Path,
) -> None:
    """``--db-wait`` bounds a farmer's request, not the node's start: a fresh node with a
    budget no database meets still stocks its demo and starts; its requests get 503."""
    db = tmp_path / "demo.db"
    process, lines = await _start_serve(db, "--db-wait", "0.000001")
    try:
        url = re.search(r"listening on (http://\S+)", lines[0])[1]  # type: ignore[index]
        assert any("3 seeded chunks (3 added now)" in line for line in lines)
        async with (
            aiohttp.ClientSession() as http,
            http.get(url + "/api/downstream/new/1") as response,
        ):
            assert response.status == 503
    finally:
        err = await _stop(process)
    assert process.returncode == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("log_format", ["console", "json"])
async def test_serve_on_a_port_in_use_writes_nothing(tmp_path: Path, log_format: str) -> None:
    """The port is bound before the node starts: a port in use is one line (in the log's own
    format) and exit 1, before any ledger, secret or demo stock is written."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await _serve_process(
            tmp_path / "ledger.db", "--log-format", log_format, port=port
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    said = f"cannot listen on 127.0.0.1:{port}:"
    if log_format == "json":
        [line] = [json.loads(line) for line in err.decode().splitlines()]
        assert line["event"] == "serve_failed" and line["message"].startswith(said), line
    else:
        assert err.decode().startswith(f"error: {said}"), err
    assert "Traceback" not in err.decode()
    assert list(tmp_path.iterdir()) == []  # no database, no secret


async def test_a_stop_while_starting_is_not_ignored(tmp_path: Path) -> None:
    """SIGTERM while the node is still starting (here: its projections are of an older
    layout and another rebuild holds the lock it waits for) stops it within --stop-timeout
    instead of being ignored until the start ends."""
    db = tmp_path / "ledger.db"
    process, _ = await _start_serve(db)  # a ledger with its projections
    await _stop(process)
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:  # what an older release's table would look like
        conn.exec_driver_sql("ALTER TABLE proj1_tokens ADD COLUMN retired INTEGER")
    engine.dispose()
    with open(f"{db}.rebuild-lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # an operator's rebuild, running
        process = await _serve_process(db, "--stop-timeout", "2")
        await asyncio.sleep(3)  # well into its start, waiting for the lock
        assert process.returncode is None
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 1, err.decode()  # its waiting thread was left behind
    assert "did not stop within 2 s" in err.decode() and "Traceback" not in err.decode()
