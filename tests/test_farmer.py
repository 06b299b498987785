"""The reference farmer as a library and as ``downstream-node farm``."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import sys
from pathlib import Path

import pytest
from http_support import ADDRESS, STRANGER, new_node, real_server, stock

from downstream_node.farmer import (
    Farmer,
    FarmerError,
    Swarm,
    corrupt_proof,
    run_farmers,
    write_chunk,
)
from downstream_node.farmer_display import Display
from downstream_node.http.app import create_app
from downstream_node.ledger.heartbeat import Merkle, MerkleProof, SeededChunk


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


async def test_run_loop_takes_answers_and_stops_without_token(db_url: str, tmp_path: Path) -> None:
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
            assert farmer.token is not None
            await node.delete_token(farmer.token)
            stats = await asyncio.wait_for(task, 10)  # no_token ends the loop
            assert stats.failed == 0 and stats.refused == 0
        assert events[:3] == ["registered", "contract", "contract"]
        assert events[-1] == "error"


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


async def test_farm_command(db_url: str, tmp_path: Path) -> None:
    node, _ = new_node(db_url, tmp_path)
    async with real_server(create_app(node)) as server:
        await stock(node, files=2, redundancy=2)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "downstream_node.cli",
            "farm",
            "--url",
            server.url,
            "--address",
            ADDRESS,
            "--farmers",
            "2",
            "--duration",
            "1.5",
            "--poll",
            "0.2",
            "--dir",
            str(tmp_path / "farm"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
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
