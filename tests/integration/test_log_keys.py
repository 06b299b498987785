"""The log's keys: created once beside the secret (0600), their public half recorded in the
ledger, refused when missing or another, rotated on request with the commitment key kept."""

from __future__ import annotations

import asyncio
import dataclasses
import stat
from pathlib import Path

import pytest
from http_support import new_node

from downstream_node.domain.errors import Refused
from downstream_node.service.logkeys import LogKeys, keys_path


def started(db_url: str, tmp_path: Path, **overrides: object) -> list[dict]:
    """Start and close a node; the LogKeyConfigured payloads it leaves in the ledger."""

    async def go() -> list[dict]:
        node, _ = new_node(db_url, tmp_path, **overrides)
        await node.start()
        try:
            stream = await node.rt.run(node.store.read_stream, "node")
            return [e.payload for e in stream if e.event_type == "LogKeyConfigured"]
        finally:
            await node.close()

    return asyncio.run(go())


def test_the_key_is_made_once_and_its_public_half_recorded(db_url: str, tmp_path: Path) -> None:
    first = started(db_url, tmp_path)
    path = keys_path(tmp_path / "node-secret.json")
    assert path.name == "node-secret.tlog.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = LogKeys.load(path)
    assert first == [
        {"origin": keys.origin, "vkey": keys.vkey, "commit_key_id": keys.commit_key_id()}
    ]
    assert keys.origin.startswith("downstream-node/")
    assert started(db_url, tmp_path) == first  # a restart records nothing new


def test_a_missing_or_other_key_is_refused_and_a_rotation_recorded(
    db_url: str, tmp_path: Path
) -> None:
    started(db_url, tmp_path)
    path = keys_path(tmp_path / "node-secret.json")
    original = LogKeys.load(path)
    path.rename(tmp_path / "kept.json")
    with pytest.raises(Refused) as refused:
        started(db_url, tmp_path)
    assert refused.value.status == "log_key_missing"

    LogKeys.generate(original.origin).save(path)  # another commitment key: refused
    with pytest.raises(Refused) as refused:
        started(db_url, tmp_path)
    assert refused.value.status == "log_key_mismatch"

    dataclasses.replace(original, signer=LogKeys.generate(original.origin).signer).save(path)
    with pytest.raises(Refused) as refused:  # another signing key, not asked for
        started(db_url, tmp_path)
    assert refused.value.status == "log_key_mismatch"

    original.save(path)
    rotated = started(db_url, tmp_path, new_log_key=True)
    assert len(rotated) == 2
    assert rotated[1]["vkey"] != rotated[0]["vkey"]
    assert rotated[1]["commit_key_id"] == rotated[0]["commit_key_id"]
    assert rotated[1]["origin"] == rotated[0]["origin"]
    assert LogKeys.load(path).vkey == rotated[1]["vkey"]
