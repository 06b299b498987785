"""Tampering against a checkpoint an auditor kept: an edited payload, a deleted event, the last
five deleted with the head made consistent, the chain rewritten with recomputed hashes (and
the stored tree rebuilt to match). ``ledger verify --checkpoint`` and the feed audit catch
each; untouched, both pass and the feed audit's figures are the database audit's."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from http_support import ADDRESS, new_node, prove, serve_in_thread, stock

from downstream_node.cli import main
from downstream_node.domain.canonical import canonical, chain_hash
from downstream_node.farmer import corrupt_proof
from downstream_node.ledger.db import make_engine
from downstream_node.ledger.store import EventStore
from downstream_node.ledger.verify import CHAIN_COLUMNS
from downstream_node.service import Node
from downstream_node.service.logkeys import LogKeys, keys_path


def cli(db_url: str, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        main, ["--db", db_url, "--secret-file", str(tmp_path / "node-secret.json"), *args]
    )
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


async def history(node: Node) -> None:
    await stock(node, files=3)
    token, heartbeat = await node.create_token(ADDRESS)
    for n in range(3):
        contract = await node.chunk(token)
        proof = prove(heartbeat, contract)
        await node.answer(token, contract["file_hash"], corrupt_proof(proof) if n else proof)


@pytest.fixture
def ledger(db_url: str, tmp_path: Path) -> tuple[str, Path, Path, str]:
    """A ledger with a farmer's history; a checkpoint and the key kept by an auditor."""

    async def go() -> None:
        node, _ = new_node(db_url, tmp_path)
        await node.start()
        await history(node)
        await node.close()

    asyncio.run(go())
    code, vkey, _ = cli(db_url, tmp_path, "ledger", "key")
    assert code == 0
    code, signed, _ = cli(db_url, tmp_path, "ledger", "checkpoint")
    assert code == 0
    kept = tmp_path / "kept-checkpoint.txt"
    kept.write_text(signed)
    return db_url, tmp_path, kept, vkey.strip()


def rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT * FROM events ORDER BY position")))


def edited(payload: str) -> str:
    return canonical({**json.loads(payload), "note": "edited"})[0]


def rechain(engine: sa.Engine, tmp_path: Path) -> None:
    """What a thorough intruder does next: every hash recomputed from position 1, the head
    moved to match, and the stored tree rebuilt with the node's own key file."""
    previous = "0" * 64
    with engine.begin() as conn:
        for row in conn.execute(sa.text("SELECT * FROM events ORDER BY position")).all():
            previous = chain_hash(previous, **{c: getattr(row, c) for c in CHAIN_COLUMNS})
            conn.execute(
                sa.text("UPDATE events SET hash = :h WHERE position = :p"),
                {"h": previous, "p": row.position},
            )
        last = conn.execute(sa.text("SELECT MAX(position) FROM events")).scalar()
        conn.execute(
            sa.text("UPDATE ledger_head SET position = :p, hash = :h"), {"p": last, "h": previous}
        )
        conn.execute(sa.text("DELETE FROM tlog_tiles"))
    keys = LogKeys.load(keys_path(tmp_path / "node-secret.json"))
    EventStore(engine, public=keys.public_forms()).catch_up_tree()


def tamper(kind: str, db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    try:
        events = rows(engine)
        middle = events[len(events) // 2]
        with engine.begin() as conn:
            if kind in ("payload", "rewritten"):
                conn.execute(
                    sa.text("UPDATE events SET payload = :p WHERE position = :k"),
                    {"p": edited(middle.payload), "k": middle.position},
                )
            elif kind == "deleted":
                conn.execute(
                    sa.text("DELETE FROM events WHERE position = :k"), {"k": middle.position}
                )
            elif kind == "truncated":
                conn.execute(
                    sa.text("DELETE FROM events WHERE position > :k"), {"k": len(events) - 5}
                )
        if kind in ("rewritten", "truncated"):
            rechain(engine, tmp_path)
    finally:
        engine.dispose()


CAUGHT = {
    "payload": "a different history",
    "deleted": "is missing",
    "truncated": "shorter than the checkpoint",
    "rewritten": "a different history",
}


@pytest.mark.parametrize("kind", list(CAUGHT))
def test_each_tampering_is_caught_against_the_kept_checkpoint(
    ledger: tuple[str, Path, Path, str], kind: str
) -> None:
    db_url, tmp_path, kept, vkey = ledger
    export = tmp_path / "before.jsonl"
    assert cli(db_url, tmp_path, "ledger", "export", "--output", str(export))[0] == 0
    tamper(kind, db_url, tmp_path)

    code, out, err = cli(
        db_url, tmp_path, "ledger", "verify", "--checkpoint", str(kept), "--key", vkey
    )
    assert code == 1, (out, err)
    assert CAUGHT[kind] in json.loads(out)["checkpoint"]["reason"]
    assert CAUGHT[kind] in err
    if kind in ("truncated", "rewritten"):
        # The hash chain alone, recomputed by the intruder, would have passed.
        assert json.loads(out)["ok"] is True

    after = tmp_path / "after.jsonl"
    assert cli(db_url, tmp_path, "ledger", "export", "--output", str(after))[0] == 0
    audit = ("audit", "uptime", "--format", "json", "--checkpoint", str(kept), "--key", vkey)
    code, out, err = cli(db_url, tmp_path, *audit, "--from", str(after))
    assert code == 1, (out, err)
    report = json.loads(out)
    assert not report["verified"]["ok"]
    # What was checked is the checkpoint's tree: the feed carries no hash chain.
    first = report["verified"]["first_broken"]
    assert err.startswith(
        f"error: the feed does not verify against the checkpoint at position {first}: "
    ), err
    assert "hash chain" not in err, err
    assert CAUGHT[kind].replace("is missing", "missing") in report["verified"]["reason"]
    # The export taken before still audits clean against the same checkpoint.
    code, out, _ = cli(db_url, tmp_path, *audit, "--from", str(export))
    assert code == 0 and json.loads(out)["verified"]["ok"]


def test_another_nodes_key_file_is_named_not_the_ledger_blamed(
    ledger: tuple[str, Path, Path, str],
) -> None:
    """A --secret-file of another node holds another commitment key: every leaf would hash
    differently, which is the key file's fault, not a different history in the ledger."""
    db_url, tmp_path, kept, vkey = ledger
    other = tmp_path / "other" / "node-secret.json"
    other.parent.mkdir()
    LogKeys.generate().save(keys_path(other))
    verify = ("ledger", "verify", "--checkpoint", str(kept), "--key", vkey)
    result = CliRunner().invoke(main, ["--db", db_url, "--secret-file", str(other), *verify])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert f"the log's key file {keys_path(other)} is not this ledger's" in result.stderr


def test_untouched_the_feed_audit_gives_the_database_audits_figures(
    ledger: tuple[str, Path, Path, str],
) -> None:
    db_url, tmp_path, kept, vkey = ledger
    code, out, _ = cli(
        db_url, tmp_path, "ledger", "verify", "--checkpoint", str(kept), "--key", vkey
    )
    assert code == 0 and json.loads(out)["checkpoint"]["ok"]
    code, out, _ = cli(db_url, tmp_path, "audit", "uptime", "--format", "json")
    assert code == 0
    database = json.loads(out)
    export = tmp_path / "all.jsonl"
    assert cli(db_url, tmp_path, "ledger", "export", "--output", str(export))[0] == 0
    text = export.read_text()
    assert "127.0.0.1" not in text and "request_id" not in text

    audit = ("audit", "uptime", "--format", "json", "--checkpoint", str(kept), "--key", vkey)
    with serve_in_thread(db_url, tmp_path) as url:
        sources = [str(export), url]
        reports = []
        for n, source in enumerate(sources):
            # The report to a file: the server in this process logs its requests meanwhile.
            report_file = tmp_path / f"report-{n}.json"
            code, _, err = cli(
                db_url, tmp_path, *audit, "--from", source, "--output", str(report_file)
            )
            assert code == 0, err
            reports.append(json.loads(report_file.read_text()))
    # Both audits name the history by the root its checkpoint signs ("ledger" compared below).
    signed_root = base64.b64decode(kept.read_text().splitlines()[2]).hex()
    assert database["ledger"]["tree_root"] == signed_root
    for report in reports:
        assert report["verified"]["ok"]
        for section in ("tokens", "totals", "contracts", "ledger", "now_us"):
            assert report[section] == database[section], section
    assert database["totals"]["passed"] == 1 and database["totals"]["failed"] == 2

    other = LogKeys.generate().vkey
    code, _, err = cli(
        db_url,
        tmp_path,
        *audit[:4],
        "--checkpoint",
        str(kept),
        "--key",
        other,
        "--from",
        str(export),
    )
    assert code == 2 and "does not verify under that key" in err
