"""The log's keys: created once beside the secret (0600), their public half recorded in the
ledger, refused when missing or another, rotated on request with the commitment key kept."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_support import new_node

from downstream_node.cli import main
from downstream_node.domain.errors import Refused
from downstream_node.service.logkeys import LogKeys, keys_path
from downstream_node.tlog import note


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


def seeded_keys(count: int) -> list[LogKeys]:
    """``count`` key pairs from fixed seeds: the same keys every run."""
    return [
        LogKeys(
            note.Signer(
                "downstream-node/test",
                Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"%d" % n).digest()),
            ),
            bytes(32),
        )
        for n in range(count)
    ]


def base64_of(keys: LogKeys) -> str:
    return keys.signer.private_key_string().split("+", 4)[4]


def test_another_origin_keeps_the_key_whatever_its_base64_holds() -> None:
    """``--log-origin`` renames the signing key; about half of all keys' base64 holds a '+',
    which the key string also separates its fields with."""
    keys = seeded_keys(64)
    assert sum("+" in base64_of(k) for k in keys) >= 16
    for original in keys:
        renamed = original.named("foo")
        assert renamed.origin == "foo"
        assert renamed.verifier.public_key == original.verifier.public_key
        assert renamed.commit_key == original.commit_key
        assert note.parse_signer(renamed.signer.private_key_string()).vkey == renamed.vkey


def test_ledger_key_under_another_origin(db_url: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    keys = next(k for k in seeded_keys(64) if "+" in base64_of(k))
    keys.save(keys_path(secret))

    def cli(*args: str) -> str:
        result = CliRunner().invoke(main, ["--db", db_url, "--secret-file", str(secret), *args])
        assert result.exit_code == 0, (result.output, result.exception)
        return result.output

    cli("initdb")
    vkey = note.parse_verifier(cli("--log-origin", "foo", "ledger", "key").strip())
    assert vkey.name == "foo" and vkey.public_key == keys.verifier.public_key


def test_keys_that_sign_one_ledger_refuse_a_fresh_one(db_url: str, tmp_path: Path) -> None:
    """The database recreated empty (or a mistyped --db) beside an existing ledger's files:
    the node refuses to sign a second history under the same key, which auditors would take
    for a fork, and records nothing; its own ledger still starts with them."""
    import sqlalchemy as sa

    started(db_url, tmp_path)
    path = keys_path(tmp_path / "node-secret.json")
    bound = LogKeys.load(path).ledger
    assert bound is not None
    started(db_url, tmp_path)  # a restart: the same ledger
    assert LogKeys.load(path).ledger == bound

    engine = sa.create_engine(db_url)
    dropped = sa.MetaData()
    dropped.reflect(engine)
    dropped.drop_all(engine)  # the database, recreated empty

    async def fresh() -> None:
        node, _ = new_node(db_url, tmp_path)
        try:
            with pytest.raises(Refused) as refused:
                await node.start()
            assert refused.value.status == "log_key_mismatch"
            assert "another ledger" in refused.value.message
            assert await node.rt.run(lambda: list(node.store.read_all())) == []  # nothing recorded
        finally:
            await node.close()

    asyncio.run(fresh())
    engine.dispose()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert started(db_url, tmp_path, secret_file=elsewhere / "node-secret.json")  # its own
