"""The reference farmer as a library and as ``downstream-node farm``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner
from http_support import ADDRESS, CHUNK, INTERVAL, STRANGER, new_node, real_server, stock
from reliability_support import free_port

from downstream_node.cli import main
from downstream_node.farmer import (
    STATE_FILE,
    Display,
    Farmer,
    FarmerError,
    Swarm,
    corrupt_proof,
    run_farmers,
    write_chunk,
)
from downstream_node.heartbeat import Merkle, MerkleProof, SeededChunk
from downstream_node.http.app import create_app
from downstream_node.service import Node


def test_write_chunk_streams_checks_and_reuses(tmp_path: Path) -> None:
    size = 3 * 1024 * 1024 + 5  # several write blocks and a ragged end
    expected = hashlib.sha256(SeededChunk("s", size).read()).hexdigest()
    path = write_chunk("s", size, expected, tmp_path / "c")
    assert path.stat().st_size == size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected
    stamp = path.stat().st_mtime_ns
    write_chunk("s", size, expected, path)  # already there: kept as is
    assert path.stat().st_mtime_ns == stamp
    with pytest.raises(FarmerError, match="does not hash"):
        write_chunk("other seed", 1000, expected, tmp_path / "d")
    assert not list(tmp_path.glob("d*"))  # no partial file left behind


def test_corrupt_proof_is_well_formed_but_wrong() -> None:
    secret = Merkle(check_fraction=0.01)
    data = SeededChunk("x", 65536)
    tag, state = secret.encode(data, n=4, seed=b"\0" * 32, filesz=65536)
    challenge, state = secret.next_challenge(state)
    proof = secret.get_public().prove(data, challenge, tag).todict()
    bad = corrupt_proof(proof)
    MerkleProof.fromdict(bad)  # parses: the node answers fail, not bad_proof_format
    assert bad != proof and bad["branch"] == proof["branch"]
    assert secret.verify(proof, challenge, state) is True
    assert secret.verify(bad, challenge, state) is False


async def test_run_loop_takes_answers_and_registers_anew_when_its_token_is_deleted(
    db_url: str, tmp_path: Path
) -> None:
    node, clock = new_node(db_url, tmp_path)
    async with real_server(create_app(node)) as server:
        files = await stock(node, files=2)
        events: list[str] = []
        async with Farmer(
            server.url,
            ADDRESS,
            directory=tmp_path / "farm",
            on_event=lambda farmer, kind, data: events.append(kind),
        ) as farmer:
            task = asyncio.create_task(farmer.run(duration=30, poll_seconds=0.05))
            for _ in range(200):
                if farmer.stats.passed == 2:
                    break
                await asyncio.sleep(0.05)
            assert farmer.stats.taken == 2 and farmer.stats.passed == 2
            assert sorted(farmer.contracts) == sorted(files)
            clock.advance(60)  # the next round comes while the loop polls
            for _ in range(200):
                if farmer.stats.passed == 4:
                    break
                await asyncio.sleep(0.05)
            assert farmer.stats.passed == 4
            first = farmer.token
            assert first is not None
            # The operator deletes the token mid-run: the farmer registers anew and takes
            # the chunks again, rather than ending (a service would stay down).
            await node.delete_token(first)
            for _ in range(200):
                if farmer.token not in (None, first) and farmer.stats.taken == 4:
                    break
                await asyncio.sleep(0.05)
            assert farmer.token not in (None, first) and sorted(farmer.contracts) == sorted(files)
            assert not task.done() and farmer.ended is None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert farmer.stats.failed == 0 and farmer.stats.refused == 0
        assert events[:3] == ["registered", "contract", "contract"]
        assert events.count("registered") == 2 and "error" in events


async def test_swarm_with_plain_display(db_url: str, tmp_path: Path) -> None:
    node, _ = new_node(db_url, tmp_path)
    async with real_server(create_app(node)) as server:
        await stock(node, files=2, redundancy=2)
        out = io.StringIO()
        swarm = Swarm()
        display = Display(swarm, stream=out, tty=False)
        await run_farmers(
            server.url,
            ADDRESS,
            farmers=2,
            directory=tmp_path / "farm",
            duration=1.0,
            poll_seconds=0.1,
            on_event=display,
            swarm=swarm,
        )
        display.close()
    totals = swarm.totals()
    assert (totals.taken, totals.passed, totals.failed) == (4, 4, 0)
    lines = out.getvalue().splitlines()
    assert any("farmer-1: registered" in line for line in lines)
    assert any("farmer-2: answered" in line and ": pass" in line for line in lines)
    assert all(" | held " in line for line in lines)
    assert sorted(p.name for p in (tmp_path / "farm").iterdir()) == ["farmer-1", "farmer-2"]


async def test_swarm_wrong_proofs_and_refused_registration(db_url: str, tmp_path: Path) -> None:
    node, _ = new_node(db_url, tmp_path)
    async with real_server(create_app(node)) as server:
        await stock(node, files=1)
        # Stop once the liar was told "fail" twice (it asks again after a fail), not after a
        # fixed time: a loaded machine may not fit two rounds into any short window.
        fails = asyncio.Event()

        def count_fails(farmer: object, kind: str, data: dict) -> None:
            if kind == "answer" and data["verdict"] == "fail":
                count_fails.seen += 1  # type: ignore[attr-defined]
                if count_fails.seen >= 2:  # type: ignore[attr-defined]
                    fails.set()

        count_fails.seen = 0  # type: ignore[attr-defined]
        liar = await asyncio.wait_for(
            run_farmers(
                server.url,
                ADDRESS,
                directory=tmp_path / "liar",
                poll_seconds=0.1,
                wrong_proofs=True,
                on_event=count_fails,
                stop=fails,
            ),
            timeout=60,
        )
        assert liar.totals().passed == 0 and liar.totals().failed >= 2  # asked again: fail
        out = io.StringIO()
        swarm = Swarm()
        await run_farmers(
            server.url,
            STRANGER,
            directory=tmp_path / "stranger",
            duration=0.5,
            on_event=Display(swarm, stream=out, tty=True),
            swarm=swarm,
        )
        [stranger] = swarm.farmers
        assert stranger.token is None and stranger.stats.errors == 1
        assert "invalid_address" in out.getvalue()


async def start_farm(url: str, tmp_path: Path, *options: str) -> asyncio.subprocess.Process:
    """``downstream-node farm`` as a process of its own, farming into ``tmp_path/farm``."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "downstream_node.cli",
        "farm",
        "--url",
        url,
        "--address",
        ADDRESS,
        "--dir",
        str(tmp_path / "farm"),
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_farm_command(db_url: str, tmp_path: Path) -> None:
    node, _ = new_node(db_url, tmp_path)
    async with real_server(create_app(node)) as server:
        await stock(node, files=2, redundancy=2)
        process = await start_farm(
            server.url, tmp_path, "--farmers", "2", "--duration", "1.5", "--poll", "0.2"
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["farmers"] == 2 and summary["passed"] == 4 and summary["errors"] == 0
    assert "farmer-1: registered" in err.decode()


async def test_a_chunk_that_cannot_be_regenerated_is_handed_back(
    db_url: str, tmp_path: Path
) -> None:
    node, _ = new_node(db_url, tmp_path)
    async with real_server(create_app(node)) as server:
        await stock(node, files=0)
        real = tmp_path / "real-file"
        real.write_bytes(b"operator data " * 5000)
        file_hash = await node.add_file(real)  # a real file: its bytes are not derivable
        async with Farmer(server.url, ADDRESS, directory=tmp_path / "farm") as farmer:
            await farmer.register()
            with pytest.raises(FarmerError, match="does not hash"):
                await farmer.take_contract()
            assert farmer.contracts == {}
            assert (await farmer.due())["all_contracts"] == []  # handed back to the node
            other = Farmer(server.url, ADDRESS, directory=tmp_path / "other")
            async with other:
                await other.register()
                with pytest.raises(FarmerError):
                    await other.take_contract()  # the replica was free again
        assert not list((tmp_path / "farm").glob(f"{file_hash}*"))


# -- robustness: what a real farm meets -----------------------------------------------------------


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for ``condition`` (checked every 20 ms), failing with ``what`` after ``timeout``."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


async def stopped(run: Awaitable[object], stop: asyncio.Event, within: float = 5.0) -> None:
    stop.set()
    await asyncio.wait_for(run, within)


async def test_a_chunk_it_cannot_store_does_not_stop_the_answers(
    db_url: str, tmp_path: Path
) -> None:
    node, clock = new_node(db_url, tmp_path)
    async with real_server(create_app(node)) as server:
        [seeded] = await stock(node, files=1)
        clock.advance(1)  # the real file comes second in the node's order of offers
        real = tmp_path / "real-file"
        real.write_bytes(b"operator data " * 5000)
        real_hash = await node.add_file(real)  # its bytes are not derivable from a seed
        out = io.StringIO()
        async with Farmer(
            server.url,
            ADDRESS,
            directory=tmp_path / "farm",
            on_event=Display(Swarm(), stream=out, tty=False),
        ) as farmer:
            stop = asyncio.Event()
            run = asyncio.create_task(farmer.run(poll_seconds=0.05, retake_seconds=0.05, stop=stop))
            await until(lambda: farmer.stats.passed == 1, "the seeded chunk's first pass")
            clock.advance(INTERVAL)  # the seeded contract's next round is still answered
            await until(lambda: farmer.stats.passed == 2, "the seeded chunk's second pass")
            await stopped(run, stop)
            assert list(farmer.contracts) == [seeded]
            due = await farmer.due()
        assert [c["hash"] for c in due["all_contracts"]] == [seeded]  # the real one went back
        said = [line for line in out.getvalue().splitlines() if real_hash[:12] in line]
        # offered again and again (the node's order is fixed), told once
        assert len(said) == 1 and "cannot store chunk" in said[0], said
        assert farmer.stats.errors == 1


async def test_a_full_disk_hands_back_one_chunk_and_ends_the_round(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk error is the farmer's trouble, not the chunk's: one chunk goes back, the round
    ends (the disk would refuse the next one too), and once there is room again the farmer
    takes the others."""
    node, _ = new_node(db_url, tmp_path)
    async with real_server(create_app(node)) as server:
        files = await stock(node, files=4)
        async with Farmer(server.url, ADDRESS, directory=tmp_path / "farm") as farmer:
            await farmer.register()

            def full(*args: object) -> None:
                raise OSError(28, "No space left on device")

            monkeypatch.setattr("downstream_node.farmer.loop.write_chunk", full)
            assert await farmer.take_contracts(4) == []
            assert farmer.stats.errors == 1 and farmer.unstorable == set()
            monkeypatch.undo()
            taken = await farmer.take_contracts(4)
            assert len(taken) == len(files) - 1  # all but the one handed back


async def test_a_deleted_chunk_is_rewritten_or_handed_back(db_url: str, tmp_path: Path) -> None:
    node, clock = new_node(db_url, tmp_path)
    async with real_server(create_app(node)) as server:
        deleted, blocked = await stock(node, files=2)
        events: list[tuple[str, str | None]] = []
        async with Farmer(
            server.url,
            ADDRESS,
            directory=tmp_path / "farm",
            on_event=lambda f, kind, data: events.append((kind, data.get("file_hash"))),
        ) as farmer:
            stop = asyncio.Event()
            run = asyncio.create_task(farmer.run(poll_seconds=0.05, stop=stop))
            await until(lambda: farmer.stats.passed == 2, "both first passes")
            (tmp_path / "farm" / deleted).unlink()
            # A directory where the chunk was: it can be neither read nor written again.
            (tmp_path / "farm" / blocked).unlink()
            (tmp_path / "farm" / blocked).mkdir()
            (tmp_path / "farm" / blocked / "in-the-way").write_text("x")
            clock.advance(INTERVAL)
            await until(
                lambda: farmer.stats.passed == 3 and farmer.stats.removed == 1,
                "the deleted chunk's pass and the blocked one's removal",
            )
            await stopped(run, stop)  # ends normally: no exception out of run()
            due = await farmer.due()
        assert [c["hash"] for c in due["all_contracts"]] == [deleted]
        assert hashlib.sha256((tmp_path / "farm" / deleted).read_bytes()).hexdigest() == deleted
        assert ("repaired", deleted) in events and ("removed", blocked) in events
        assert ("error", blocked) in events
        assert farmer.stats.errors == 1 and farmer.stats.failed == 0


async def test_damaged_chunks_are_rewritten_and_answered_again(db_url: str, tmp_path: Path) -> None:
    node, clock = new_node(db_url, tmp_path)
    async with real_server(create_app(node)) as server:
        files = await stock(node, files=2)
        async with Farmer(server.url, ADDRESS, directory=tmp_path / "farm") as farmer:
            await farmer.register()
            await farmer.take_contracts(2)
            assert await farmer.poll_and_answer() == dict.fromkeys(files, "pass")
            clock.advance(INTERVAL)
            zeroed, truncated = (tmp_path / "farm" / h for h in files)
            zeroed.write_bytes(bytes(CHUNK))  # right size, wrong bytes: the node says fail
            with open(truncated, "r+b") as handle:
                handle.truncate(10)  # too short to prove from at all
            assert await farmer.poll_and_answer() == dict.fromkeys(files, "pass")
            # the fail came first, then the rewritten chunk's proof passed
            assert (farmer.stats.passed, farmer.stats.failed, farmer.stats.errors) == (4, 1, 0)
        for path, file_hash in zip((zeroed, truncated), files, strict=True):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == file_hash


async def test_a_retry_after_is_waited_out_and_stop_cuts_the_wait(
    db_url: str, tmp_path: Path
) -> None:
    # Three requests per token per minute, on a clock that does not move: the fourth is
    # refused with Retry-After: 60.
    node, _ = new_node(db_url, tmp_path, requests_per_token_per_minute=3)
    sent: list[str] = []

    async def count(session: object, context: object, params: aiohttp.TraceRequestStartParams):
        sent.append(params.url.path)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(count)
    async with (
        real_server(create_app(node)) as server,
        aiohttp.ClientSession(trace_configs=[trace]) as session,
    ):
        await stock(node, files=1)
        refused: list[str] = []
        farmer = Farmer(
            server.url,
            ADDRESS,
            directory=tmp_path / "farm",
            session=session,
            on_event=lambda f, kind, data: (
                refused.append(data["status"]) if kind == "refused" else None
            ),
        )
        stop = asyncio.Event()
        run = asyncio.create_task(farmer.run(poll_seconds=0.05, stop=stop))
        await until(lambda: refused == ["too_many_requests"], "the rate limit's refusal")
        before = list(sent)
        await asyncio.sleep(1.0)  # twenty polls' worth
        assert sent == before, "asked again before the Retry-After passed"
        started = time.monotonic()
        await stopped(run, stop)
        assert time.monotonic() - started < 2  # not the 60 s of the Retry-After


@pytest.fixture
async def silent_node() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A server that accepts connections and never replies (its URL, and an event set at
    the first connection)."""
    connected = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        connected.set()
        await reader.read()  # until the client goes

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connected
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_node_that_never_replies(
    silent_node: tuple[str, asyncio.Event], tmp_path: Path
) -> None:
    url, connected = silent_node
    errors: list[str] = []

    def seen(_farmer: object, kind: str, data: dict) -> None:
        if kind == "error":
            errors.append(data["error"])

    # Registration timing out is tried again, as any request is, until the run ends.
    async with Farmer(url, ADDRESS, directory=tmp_path / "a", timeout=0.3, on_event=seen) as farmer:
        stats = await farmer.run(duration=1.5, poll_seconds=0.1)
    assert farmer.token is None and stats.errors == len(errors) >= 2
    assert set(errors) == {"registration: TimeoutError: timed out after 0.3 s"}
    async with Farmer(url, ADDRESS, directory=tmp_path / "b") as farmer:  # 60 s timeout
        stop = asyncio.Event()
        run = asyncio.create_task(farmer.run(stop=stop))
        await asyncio.wait_for(connected.wait(), 10)
        await stopped(run, stop, within=2)


async def test_farm_command_stops_at_once_on_ctrl_c(
    silent_node: tuple[str, asyncio.Event], tmp_path: Path
) -> None:
    url, connected = silent_node
    process = await start_farm(url, tmp_path)
    try:
        await asyncio.wait_for(connected.wait(), 30)
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), 15)  # not the 60 s timeout
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert b"Traceback" not in err, err.decode()
    summary = json.loads(out.decode().strip().splitlines()[-1])  # the stats line, as ever
    assert summary["farmers"] == 1 and summary["errors"] == 0


async def test_farm_runs_reuse_their_saved_token(db_url: str, tmp_path: Path) -> None:
    node, clock = new_node(db_url, tmp_path)
    async with real_server(create_app(node)) as server:
        [file_hash] = await stock(node, files=1)
        out = io.StringIO()

        async def farm_until_a_pass() -> Farmer:
            """One ``farm`` run: until its first pass (or 10 s)."""
            swarm = Swarm()
            display = Display(swarm, stream=out, tty=False)
            passed = asyncio.Event()

            def watch(farmer: Farmer, kind: str, data: dict) -> None:
                display(farmer, kind, data)
                if kind == "answer" and data["verdict"] == "pass":
                    passed.set()

            await run_farmers(
                server.url,
                ADDRESS,
                directory=tmp_path / "farm",
                duration=10,
                poll_seconds=0.05,
                on_event=watch,
                stop=passed,
                swarm=swarm,
            )
            [farmer] = swarm.farmers
            return farmer

        first = await farm_until_a_pass()
        token = first.token
        assert token is not None and first.stats.taken == 1 and first.stats.passed == 1
        # More runs than the node's five live tokens per IP: each goes on with the token
        # and answers the contract the first run took.
        for _ in range(6):
            clock.advance(INTERVAL)
            again = await farm_until_a_pass()
            assert again.token == token
            assert (again.stats.taken, again.stats.passed, again.stats.errors) == (0, 1, 0)
        assert out.getvalue().count("resumed token") == 6
        state = tmp_path / "farm" / "farmer-1" / STATE_FILE
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o600  # the token is a secret

        # The operator deleted the token: the next run gets a new one and the chunk again.
        await node.delete_token(token)
        fresh = await farm_until_a_pass()
        assert fresh.token not in (None, token)
        assert fresh.stats.taken == 1 and list(fresh.contracts) == [file_hash]
        assert "no longer knows our saved token" in out.getvalue()
        assert fresh.token in state.read_text() and token not in state.read_text()
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    assert token not in out.getvalue() and fresh.token not in out.getvalue()  # redacted


def counting_new(
    node: Node, first: tuple[int, str] | None = None
) -> tuple[aiohttp.web.Application, list[str]]:
    """The node's app, and the paths of the ``/new`` requests it got; ``first``: the status
    and body the first one is answered with instead (with ``Retry-After: 1``)."""
    app = create_app(node)
    news: list[str] = []

    @aiohttp.web.middleware
    async def count(request: aiohttp.web.Request, handler):  # type: ignore[no-untyped-def]
        if "/new/" in request.path:
            news.append(request.path)
            if len(news) == 1 and first is not None:
                status, body = first
                return aiohttp.web.Response(text=body, status=status, headers={"Retry-After": "1"})
        return await handler(request)

    app.middlewares.append(count)
    return app, news


NOT_NOW = {
    "503": (503, '{"status": "busy", "message": "try again"}'),
    "500": (500, '{"status": "internal_error", "message": "internal error"}'),
    "502-page": (502, "<html><body>502 Bad Gateway</body></html>"),
    "429": (429, '{"status": "too_many_requests", "message": "slow down"}'),
}


@pytest.mark.parametrize("first", [*NOT_NOW, "unreachable"])
async def test_a_farmer_whose_first_registration_fails_registers_on_its_next_try(
    db_url: str, tmp_path: Path, first: str
) -> None:
    """``/new`` answered 503 (with ``Retry-After``), a server error, a proxy's page or a
    rate limit, or the node not answering at all: the farm loop tries again in its next
    round instead of giving up for the whole run."""
    node, _ = new_node(db_url, tmp_path)
    app, news = counting_new(node, NOT_NOW.get(first))
    port = free_port()
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()  # starts the node
    await stock(node, files=1)
    errors: list[str] = []

    def seen(_farmer: object, kind: str, data: dict) -> None:
        if kind == "error":
            errors.append(data["error"])

    try:
        if first in NOT_NOW:
            await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
        async with Farmer(
            f"http://127.0.0.1:{port}", ADDRESS, directory=tmp_path / "farm", on_event=seen
        ) as farmer:
            task = asyncio.create_task(farmer.run(duration=30, poll_seconds=0.05))
            for _ in range(400):
                if first == "unreachable" and errors and not runner.sites:
                    # the node comes up only after the farmer's first try failed
                    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
                if farmer.stats.passed == 1:
                    break
                await asyncio.sleep(0.05)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await runner.cleanup()
    assert farmer.token is not None and farmer.stats.passed == 1, errors
    assert errors and errors[0].startswith("registration: ")
    assert len(news) == (2 if first in NOT_NOW else 1)


async def test_a_state_file_it_cannot_read_is_left_alone_and_the_run_refused(
    db_url: str, tmp_path: Path
) -> None:
    """A damaged state file may hold the farmer's token: ``farm`` refuses to start rather
    than register a new token (each lost one counts against the node's per-IP limit) and
    write over it. One unreadable contract in it is skipped, the token kept."""
    node, _ = new_node(db_url, tmp_path)
    async with real_server(create_app(node)) as server:
        await stock(node, files=2)
        first = await start_farm(server.url, tmp_path, "--duration", "1.5", "--poll", "0.2")
        _, err = await asyncio.wait_for(first.communicate(), 60)
        assert first.returncode == 0, err.decode()
        state = tmp_path / "farm" / "farmer-1" / STATE_FILE
        saved = json.loads(state.read_text())
        [entry] = saved["nodes"].values()
        token, held = entry["token"], sorted(entry["contracts"])
        assert len(held) == 2

        state.write_text(state.read_text()[:-40])  # cut short
        damaged = state.read_text()
        refused = await start_farm(server.url, tmp_path, "--duration", "1")
        _, err = await asyncio.wait_for(refused.communicate(), 60)
        assert refused.returncode == 2 and "left as it is" in err.decode(), err.decode()
        assert "Traceback" not in err.decode() and state.read_text() == damaged

        del entry["contracts"][held[0]]["tag"]
        state.write_text(json.dumps(saved))
        again = await start_farm(server.url, tmp_path, "--duration", "1", "--poll", "0.2")
        _, err = await asyncio.wait_for(again.communicate(), 60)
        assert again.returncode == 0, err.decode()
        assert f"skipping the saved contract {held[0][:12]}" in err.decode()
        assert "resumed token" in err.decode() and token[:4] in err.decode()
        assert json.loads(state.read_text())["nodes"][server.url]["token"] == token


async def test_a_farmer_that_cannot_keep_a_token_asks_for_none(db_url: str, tmp_path: Path) -> None:
    """A farmer directory that cannot be written: the farmer ends before ``/new`` (a token
    it could not save would count against the node's per-IP limit), and the run fails."""
    node, _ = new_node(db_url, tmp_path)
    app, news = counting_new(node)
    async with real_server(app) as server:
        await stock(node, files=1)
        blocked = tmp_path / "blocked"
        blocked.write_text("a file where the farmer's directory should be")
        swarm = await run_farmers(server.url, ADDRESS, directory=blocked, duration=5)
    [farmer] = swarm.farmers
    assert news == [] and farmer.token is None
    assert farmer.ended is not None and "cannot write in" in farmer.ended


async def test_a_page_that_echoes_the_path_never_shows_the_token(tmp_path: Path) -> None:
    """A proxy's error page quoting the request's path, and a redirect (never followed: the
    token is in the path), reach the farmer's messages with the token cut short."""
    token = "7ff6a6b35e27d1797a8dc90410a0a974"

    async def echo(request: aiohttp.web.Request) -> aiohttp.web.Response:
        if request.path.startswith("/api/downstream/due/"):
            raise aiohttp.web.HTTPFound(f"http://elsewhere.example{request.path}")
        return aiohttp.web.Response(
            text=f"The requested URL {request.path} was not found", status=404
        )

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    async with (
        real_server(app) as server,
        Farmer(server.url, ADDRESS, directory=tmp_path / "farm") as farmer,
    ):
        farmer.token = token
        with pytest.raises(FarmerError) as page:
            await farmer.request("GET", f"/api/downstream/chunk/{token}")
        with pytest.raises(FarmerError) as redirect:
            await farmer.due()
    assert page.value.http_status == 404 and token not in str(page.value)
    assert "/api/downstream/chunk/7ff6…" in str(page.value)
    assert redirect.value.status == "redirect" and token not in str(redirect.value)


@pytest.mark.parametrize(
    "options",
    [
        ["--duration", "nan"],
        ["--duration", "inf"],
        ["--duration", "1e12"],
        ["--poll", "nan"],
        ["--url", "127.0.0.1:8000"],
        ["--address", ""],
    ],
)
def test_farm_options_that_make_no_sense_are_usage_errors(
    tmp_path: Path, options: list[str]
) -> None:
    result = CliRunner().invoke(
        main,
        [
            "farm",
            "--url",
            "http://127.0.0.1:9",
            "--address",
            ADDRESS,
            "--dir",
            str(tmp_path),
            *options,
        ],
    )
    assert result.exit_code == 2 and "Error: " in result.output, result.output
    assert not isinstance(result.exception, (OverflowError, ValueError))


async def test_two_farmers_on_one_directory_do_not_share_it(db_url: str, tmp_path: Path) -> None:
    """A second farmer started on a directory in use refuses to farm: they would share one
    token and write over each other's state file, each losing the other's contracts."""
    node, _ = new_node(db_url, tmp_path)
    async with real_server(create_app(node)) as server:
        await stock(node, files=2)
        home = tmp_path / "farm"
        async with Farmer(server.url, ADDRESS, directory=home) as first:
            running = asyncio.create_task(first.run(duration=30, poll_seconds=0.05))
            for _ in range(200):
                if first.stats.taken:
                    break
                await asyncio.sleep(0.05)
            async with Farmer(server.url, ADDRESS, directory=home) as second:
                with pytest.raises(FarmerError) as refused:
                    await second.run(duration=5, poll_seconds=0.05)
            assert refused.value.status == "in_use" and second.token is None
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        # once the first has stopped, the directory is free again
        async with Farmer(server.url, ADDRESS, directory=home) as third:
            await third.run(duration=0.3, poll_seconds=0.05)
            assert third.token == first.token
