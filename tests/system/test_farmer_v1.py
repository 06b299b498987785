"""The reference farmer on the v1 API (``farm --api v1``) against a real server: it signs its
/new with the key its state file keeps, takes several contracts per /chunk, answers them all in
one bulk /answer per round, goes on after a restart, and registers again when its token is
deleted. Node and farmer share one fake clock, so challenge rounds need no waiting."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from http_support import CHUNK, INTERVAL, new_node, real_server

from downstream_node.domain.signatures import address_for
from downstream_node.farmer import receipts
from downstream_node.farmer.state import UnreadableState
from downstream_node.farmer.v1 import V1Farmer, load_key
from downstream_node.http.app import create_app


async def test_the_reference_farmer_farms_through_v1(db_url: str, tmp_path: Path) -> None:
    node, clock = new_node(db_url, tmp_path)
    home = tmp_path / "farmer"
    async with real_server(create_app(node)) as server:
        for i in range(4):
            await node.add_seeded(CHUNK, seed=f"v1-farmer-{i}")
        async with V1Farmer(server.url, directory=home, clock=clock, size=2 * CHUNK) as farmer:
            await node.whitelist([(farmer.address, "10000")])
            token = await farmer.connect()
            assert len(await farmer.take_contracts(10)) == 2  # two chunks fit the size asked
            held = set(farmer.contracts)
            assert await farmer.poll_and_answer() == dict.fromkeys(held, "pass")
            assert await farmer.poll_and_answer() == {}  # answered: nothing until due
            clock.advance(INTERVAL + 1)
            assert await farmer.poll_and_answer() == dict.fromkeys(held, "pass")
            # A chunk damaged on disk: the node's fail makes the farmer rewrite it from its
            # seed, and the next round passes the still open challenge.
            clock.advance(INTERVAL)
            damaged = sorted(held)[0]
            path = home / damaged
            path.write_bytes(b"\0" * path.stat().st_size)
            verdicts = await farmer.poll_and_answer()
            assert verdicts[damaged] == "fail" and path.read_bytes() != b"\0" * CHUNK
            assert await farmer.poll_and_answer() == {damaged: "pass"}
            clock.advance(INTERVAL)
            assert await farmer.poll_and_answer(wrong=True) == dict.fromkeys(held, "fail")
            assert farmer.stats.passed == 6 and farmer.stats.failed == 3
            # Every verdict's receipt is kept, for ``receipts verify``.
            kept = list(receipts.kept(home, server.url))
            assert len(kept) == 9 and {r["verdict"] for r in kept} == {"pass", "fail"}
            assert all(r["receipt"] for r in kept)

        state = home / "state.json"
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        keys = json.loads(state.read_text())["keys"]
        assert list(keys) == [farmer.address]

        # Restarted: the same key and token, its contracts taken up again.
        async with V1Farmer(server.url, directory=home, clock=clock) as again:
            assert again.address == farmer.address
            assert await again.connect() == token and set(again.contracts) == held
            assert await again.poll_and_answer() == dict.fromkeys(held, "pass")

            # Its token deleted by the operator: the next start registers again.
            await node.delete_token(token)
        async with V1Farmer(server.url, directory=home, clock=clock) as third:
            fresh = await third.connect()
            assert fresh != token and third.contracts == {}
            # All four: the deleted token's two went back to the pool.
            assert len(await third.take_contracts(10)) == 4


def test_the_key_is_made_once_and_kept(tmp_path: Path) -> None:
    key = load_key(tmp_path, None)
    assert load_key(tmp_path, None) == key == load_key(tmp_path, address_for(key))
    other = address_for(bytes(31) + b"\x01")
    try:
        load_key(tmp_path, other)
    except ValueError as exc:
        assert other in str(exc)
    else:
        raise AssertionError("an address without a key was accepted")


def test_a_state_file_it_cannot_read_keeps_its_key(tmp_path: Path) -> None:
    """A damaged state file is refused, never replaced by one holding a new key (the
    whitelisted address would be lost for good)."""
    key = load_key(tmp_path, None)
    state = tmp_path / "state.json"
    damaged = state.read_text()[:20]
    state.write_text(damaged)
    with pytest.raises(UnreadableState, match="left as it is"):
        load_key(tmp_path, None)
    assert state.read_text() == damaged
    state.write_text(json.dumps({"keys": {address_for(key): key.hex()}}))
    assert load_key(tmp_path, None) == key
