"""The node's secret heartbeat: a node starts only with the secret its ledger was configured
with; a missing, different or unreadable one is refused before anything is written, and a new
one is recorded only when asked (``--new-secret``), ending the contracts sealed with the old."""

from __future__ import annotations

from pathlib import Path

import pytest
from http_support import ADDRESS, INTERVAL, head, new_node, prove, stock

from downstream_node.domain.errors import Refused
from downstream_node.heartbeat.scheme import ProofScheme


async def test_a_node_starts_only_with_its_ledgers_secret(db_url: str, tmp_path: Path) -> None:
    node, clock = new_node(db_url, tmp_path)
    await node.start()
    await stock(node, files=1)
    token, public = await node.create_token(ADDRESS)
    contract = await node.chunk(token)
    assert await node.answer(token, contract["file_hash"], prove(public, contract)) == "pass"
    await node.close()
    written = head(node)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # started from another directory: the default secret path holds nothing
    missing = elsewhere / "node-secret.json"
    node, _ = new_node(db_url, tmp_path, secret_file=missing)
    with pytest.raises(Refused) as refused:
        await node.start()
    assert refused.value.status == "secret_missing" and str(missing) in refused.value.message
    assert not missing.exists()  # no new secret made on the way
    await node.close()

    other = elsewhere / "other-secret.json"
    ProofScheme.create("Merkle").save(other)
    unreadable = elsewhere / "broken-secret.json"
    unreadable.write_text('{"kind": "Merkle", "secret": ')
    for path, word in ((other, "secret_mismatch"), (unreadable, "bad_secret")):
        node, _ = new_node(db_url, tmp_path, secret_file=path)
        with pytest.raises(Refused) as refused:
            await node.start()
        assert refused.value.status == word, refused.value.message
        assert head(node) == written  # nothing recorded
        await node.close()

    # the original secret: the contract goes on
    node, clock = new_node(db_url, tmp_path)
    await node.start()
    try:
        clock.advance(INTERVAL + 1)  # answered: its next challenge is due, and made
        due = await node.due(token)
        assert [c["hash"] for c in due["due_contracts"]] == [contract["file_hash"]]
    finally:
        await node.close()


async def test_a_new_secret_only_when_asked_and_the_old_contracts_end(
    db_url: str, tmp_path: Path
) -> None:
    node, clock = new_node(db_url, tmp_path)
    await node.start()
    [file_hash] = await stock(node, files=1)
    token, public = await node.create_token(ADDRESS)
    contract = await node.chunk(token)
    assert await node.answer(token, file_hash, prove(public, contract)) == "pass"
    await node.close()
    written = head(node)

    # A new secret elsewhere, without the log's key file beside it: refused, and nothing
    # recorded (the ledger would otherwise name a secret that no node can start with).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    node, _ = new_node(db_url, tmp_path, new_secret=True, secret_file=elsewhere / "new.json")
    with pytest.raises(Refused) as refused:
        await node.start()
    assert refused.value.status == "log_key_missing" and head(node) == written
    await node.close()

    (tmp_path / "node-secret.json").unlink()  # lost
    node, clock = new_node(db_url, tmp_path, new_secret=True)
    await node.start()
    try:
        configured = [e for e in node.store.read_all() if e.event_type == "HeartbeatConfigured"]
        assert len(configured) == 2
        assert configured[-1].payload["key_fingerprint"] == node.scheme.fingerprint()  # type: ignore[union-attr]
        clock.advance(INTERVAL + 1)  # its next challenge is due: the old seal cannot make it
        due = await node.due(token)
        assert due == {"all_contracts": [], "due_contracts": []}
        ended = [e for e in node.store.read_all() if e.event_type == "ContractEnded"]
        assert [e.payload["reason"] for e in ended] == ["unverifiable"]
        again = await node.chunk(token)  # and the file can be taken anew, under the new secret
        assert again["file_hash"] == file_hash
    finally:
        await node.close()
