"""``downstream-node audit uptime`` end to end on each database: every format carries the same
figures, the HTML needs no network, ``--at-position`` reproduces an earlier audit byte for byte,
a broken chain is reported and exits 1, and a read-only MySQL user can run it."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from html.parser import HTMLParser
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_audit import FARMER, Farmers, start_node

from downstream_node.audit.formatting import duration
from downstream_node.cli import main
from downstream_node.domain.clock import FakeClock
from downstream_node.domain.tokens import make_address, token_hash
from downstream_node.service import Node

S = 1_000_000


def audit(db_url: str, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, ["--db", db_url, "audit", "uptime", *args])
    assert result.exit_code == code, (result.output, result.exception)
    return result.stdout


async def farm(node: Node, clock: FakeClock, rounds: int = 3) -> list[str]:
    """Two farmers: one steady, one that answers wrongly once and then drops out."""
    address = make_address(b"\x41" * 20)
    await node.whitelist([(address, "50000")])
    for _ in range(3):
        await node.add_seeded(4096)
    farmers = Farmers(node)
    tokens = [(await node.create_token(address, FARMER))[0] for _ in range(2)]
    for token in tokens:
        await farmers.take(token, 2)
    clock.advance(10)
    await farmers.answer_first(tokens[0])
    held = [f for (t, f) in farmers.held if t == tokens[1]]
    await farmers.answer_first(tokens[1], wrong=frozenset(held[:1]))
    for _ in range(rounds):
        clock.advance(55)
        await farmers.rounds(tokens[0])
    await node.sweep_expired()
    return tokens


@pytest.fixture
async def ledger(db_url: str, tmp_path: Path) -> tuple[str, list[str]]:
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        tokens = await farm(node, clock)
    finally:
        await node.close()
    return db_url, tokens


async def test_every_format_carries_the_same_figures(
    ledger: tuple[str, list[str]], tmp_path: Path
) -> None:
    db_url, tokens = ledger
    report = json.loads(audit(db_url, "--format", "json"))
    assert report["verified"]["ok"] is True
    assert report["verified"]["last_position"] == report["ledger"]["position"] > 0
    assert re.fullmatch(r"[0-9a-f]{64}", report["verified"]["last_hash"])
    assert report["scoring"]["version"] == "downstream-reputation/1"
    assert report["scoring"]["params"]["lambda"] == 0.999
    assert report["now_source"] == "last event"
    assert len(report["tokens"]) == 2 and len(report["contracts"]) == 4
    by_hash = {t["token_hash"]: t for t in report["tokens"]}
    steady, dropped = by_hash[token_hash(tokens[0])], by_hash[token_hash(tokens[1])]
    assert steady["passed"] > dropped["passed"] == 2 and steady["failed"] == 0
    assert dropped["failed"] == 1 and dropped["missed"] == 2
    assert steady["reputation"]["audit_score"] > dropped["reputation"]["audit_score"]
    assert steady["uptime"] > dropped["uptime"] > 0
    totals = report["totals"]
    assert totals["online_us"] == steady["online_us"] + dropped["online_us"]

    rows = list(csv.DictReader(io.StringIO(audit(db_url, "--format", "csv"))))
    assert [r["kind"] for r in rows] == ["token"] * 2 + ["contract"] * 4 + ["total"]
    for row, token in zip(rows, report["tokens"], strict=False):
        assert row["token_hash"] == token["token_hash"]
        assert int(row["online_us"]) == token["online_us"]
        assert int(row["total_us"]) == token["total_us"]
        assert float(row["audit_score"]) == token["reputation"]["audit_score"]
    assert int(rows[-1]["online_us"]) == totals["online_us"]
    assert {r["verified_hash"] for r in rows} == {report["verified"]["last_hash"]}
    assert {r["tree_root"] for r in rows} == {report["ledger"]["tree_root"]}
    assert json.loads(rows[0]["scoring_params"]) == report["scoring"]["params"]

    table = audit(db_url)
    assert report["verified"]["last_hash"] in table and "verified ok" in table
    assert f"(tree root {report['ledger']['tree_root']})" in table
    assert duration(totals["online_us"]) in table
    for token in report["tokens"]:
        assert token["token_hash"][:16] in table
        assert duration(token["online_us"]) in table

    out = tmp_path / "audit.html"
    assert audit(db_url, "--format", "html", "--output", str(out)) == ""
    page = out.read_text()
    assert_self_contained(page)
    assert report["verified"]["last_hash"] in page
    for token in report["tokens"]:
        assert token["token_hash"][:16] in page
        assert duration(token["online_us"]) in page
    assert page.count('src="data:image/svg+xml;base64,') == 3  # the three charts
    assert audit(db_url, "--format", "html") == page  # byte for byte, charts included


class Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "data", "action")]


def assert_self_contained(page: str) -> None:
    parser = Refs()
    parser.feed(page)
    assert parser.refs, "no embedded images"
    for ref in parser.refs:
        assert ref.startswith("data:"), ref
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "@import" not in page and "url(http" not in page
    assert {"table", "img", "script", "style"} <= parser.tags


async def test_at_position_reproduces_an_earlier_audit(db_url: str, tmp_path: Path) -> None:
    clock = FakeClock()
    node = await start_node(db_url, tmp_path, clock)
    try:
        tokens = await farm(node, clock, rounds=2)
        earlier = audit(db_url, "--format", "json")
        position = json.loads(earlier)["ledger"]["position"]
        earlier_csv = audit(db_url, "--format", "csv")
        # The ledger moves on: more rounds, a new farmer, a deleted token.
        more = await farm(node, clock, rounds=2)
        await node.delete_token(tokens[0])
        clock.advance(500)
        await node.sweep_expired()
        later = json.loads(audit(db_url, "--format", "json"))
        assert later["ledger"]["position"] > position
        assert len(later["tokens"]) == len(tokens) + len(more)
        # Two auditors, one then and one now, agree byte for byte on the state at `position`.
        assert audit(db_url, "--format", "json", "--at-position", str(position)) == earlier
        assert audit(db_url, "--format", "csv", "--at-position", str(position)) == earlier_csv
        assert (
            "outside the ledger"
            in CliRunner()
            .invoke(main, ["--db", db_url, "audit", "uptime", "--at-position", "99999"])
            .output
        )
    finally:
        await node.close()


async def test_options_token_window_params(ledger: tuple[str, list[str]], tmp_path: Path) -> None:
    db_url, tokens = ledger
    full = json.loads(audit(db_url, "--format", "json"))
    one = json.loads(audit(db_url, "--format", "json", "--token", tokens[1]))
    second = next(t for t in full["tokens"] if t["token_hash"] == token_hash(tokens[1]))
    assert one["tokens"] == [second]
    assert one["tokens_selected"] == [second["token_hash"]]
    by_hash = json.loads(audit(db_url, "--format", "json", "--token", one["tokens_selected"][0]))
    assert by_hash["tokens"] == one["tokens"]

    start = full["ledger"]["first_event_at"]
    windowed = json.loads(
        audit(db_url, "--format", "json", "--since", start, "--until", "2026-01-01T00:01:00Z")
    )
    assert windowed["now_source"] == "--until"
    assert windowed["window"]["until"] == "2026-01-01T00:01:00.000000Z"
    assert all(t["total_us"] <= 60 * S for t in windowed["tokens"])

    later = json.loads(audit(db_url, "--format", "json", "--now", "2026-01-01T01:00:00Z"))
    assert later["now_source"] == "--now"
    for a, b in zip(later["tokens"], full["tokens"], strict=True):
        # Live contracts stay online up to their expiration, then time runs on offline.
        assert a["online_us"] >= b["online_us"] and a["total_us"] > b["total_us"]
        assert a["total_us"] - b["total_us"] > a["online_us"] - b["online_us"]
    too_early = CliRunner().invoke(
        main, ["--db", db_url, "audit", "uptime", "--now", "2025-12-31T00:00:00Z"]
    )
    assert too_early.exit_code == 2 and "--now is before" in too_early.output

    params = tmp_path / "params.json"
    params.write_text(json.dumps({"lambda": 0.9, "alpha0": 10, "beta0": 0, "weight": 1}))
    scored = json.loads(audit(db_url, "--format", "json", "--params", str(params)))
    assert scored["scoring"]["params"]["lambda"] == 0.9
    scored_second = next(t for t in scored["tokens"] if t["token_hash"] == second["token_hash"])
    assert scored_second["reputation"]["audit_score"] < second["reputation"]["audit_score"]
    params.write_text(json.dumps({"lamda": 0.9}))
    bad = CliRunner().invoke(main, ["--db", db_url, "audit", "uptime", "--params", str(params)])
    assert bad.exit_code == 2 and "unknown scoring parameters" in bad.output


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"online_period_s": Infinity}', "online_period_s must be finite"),
        ('{"online_window_s": NaN}', "online_window_s must be finite"),
        ('{"lambda": 1e400}', "lambda must be finite"),
        ('{"weight": 1e308}', "weight must be at most 1e+12"),
        ('{"alpha0": 1e308, "beta0": 1e308}', "alpha0 must be at most 1e+12"),
        ('{"beta0": 1' + "0" * 400 + "}", "beta0 is out of range"),
        ('"lambda"', "must be a JSON object (names and numbers), not a string"),
        ("[1]", "must be a JSON object (names and numbers), not an array"),
        ("null", "must be a JSON object (names and numbers), not null"),
        ("0.9", "must be a JSON object (names and numbers), not a number"),
        ("{", "is not JSON"),
    ],
)
def test_a_bad_params_file_is_refused_with_a_clear_message(
    tmp_path: Path, text: str, says: str
) -> None:
    """Checked before the database is opened: exit 2 with what is wrong, no traceback."""
    params = tmp_path / "params.json"
    params.write_text(text)
    db_url = f"sqlite:///{tmp_path / 'unused.db'}"
    result = CliRunner().invoke(main, ["--db", db_url, "audit", "uptime", "--params", str(params)])
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert says in result.stderr, result.stderr


async def test_a_broken_chain_is_reported_and_exits_1(
    ledger: tuple[str, list[str]], tmp_path: Path
) -> None:
    db_url, _ = ledger
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        target = conn.execute(
            sa.text(
                "SELECT position, payload FROM events WHERE event_type = 'AnswerPassed' "
                "ORDER BY position LIMIT 1"
            )
        ).one()
        conn.execute(
            sa.text("UPDATE events SET payload = :p WHERE position = :pos"),
            {
                "p": target.payload.replace('"challenge_index":0', '"challenge_index":7'),
                "pos": target.position,
            },
        )
    engine.dispose()
    out = tmp_path / "broken.json"
    audit(db_url, "--format", "json", "--output", str(out), code=1)
    report = json.loads(out.read_text())  # written before exiting 1
    assert report["verified"]["ok"] is False
    assert report["verified"]["first_broken"] == target.position
    assert report["verified"]["last_position"] == target.position - 1
    table = audit(db_url, code=1)
    assert "VERIFICATION FAILED" in table
    said = CliRunner().invoke(main, ["--db", db_url, "audit", "uptime"]).stderr
    assert said.startswith(f"error: the hash chain does not verify at position {target.position}:")
    html_out = tmp_path / "broken.html"
    audit(db_url, "--format", "html", "--output", str(html_out), code=1)
    assert "VERIFICATION FAILED" in html_out.read_text()


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        ("event_type", "Bogus", "unknown event type 'Bogus'"),
        ("payload", "{", "unreadable payload"),
        ("payload", "[1]", "TypeError"),
    ],
)
async def test_an_event_the_auditor_cannot_read_is_a_clear_error(
    ledger: tuple[str, list[str]], column: str, value: str, says: str
) -> None:
    """Altered into something unreadable: the audit stops with an error naming the position
    (and the broken chain), not a traceback."""
    db_url, _ = ledger
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        position = conn.execute(
            sa.text("SELECT MIN(position) FROM events WHERE event_type = 'AnswerPassed'")
        ).scalar()
        conn.execute(
            sa.text(f"UPDATE events SET {column} = :v WHERE position = :pos"),
            {"v": value, "pos": position},
        )
    engine.dispose()
    result = CliRunner().invoke(main, ["--db", db_url, "audit", "uptime"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert not isinstance(result.exception, (ValueError, KeyError)), result.exception
    assert says in result.stderr and f"position {position}" in result.stderr
    assert f"does not verify from position {position}" in result.stderr


async def test_a_read_only_user_can_audit(ledger: tuple[str, list[str]], tmp_path: Path) -> None:
    db_url, _ = ledger
    expected = audit(db_url, "--format", "json")
    if db_url.startswith("sqlite"):
        # SQLite has no users: open the file read-only instead.
        path = db_url.split("///", 1)[1]
        ro_url = f"sqlite:///file:{path}?mode=ro&uri=true"
        probe = sa.create_engine(ro_url)
        with probe.connect() as conn, pytest.raises(sa.exc.OperationalError, match="readonly"):
            conn.execute(sa.text("UPDATE ledger_head SET position = position"))
        probe.dispose()
        assert audit(ro_url, "--format", "json") == expected
        return
    url = sa.make_url(db_url)
    user, password = f"dn_ro_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    admin = sa.create_engine(db_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        # PyMySQL formats the statement: '%%' is the host wildcard '%'.
        conn.exec_driver_sql(f"CREATE USER '{user}'@'%%' IDENTIFIED BY '{password}'")
        conn.exec_driver_sql(f"GRANT SELECT ON `{url.database}`.* TO '{user}'@'%%'")
    try:
        ro_url = url.set(username=user, password=password).render_as_string(hide_password=False)
        probe = sa.create_engine(ro_url)
        with probe.connect() as conn, pytest.raises(sa.exc.OperationalError):
            conn.execute(sa.text("UPDATE ledger_head SET position = position"))
        probe.dispose()
        assert audit(ro_url, "--format", "json") == expected
        assert audit(ro_url, "--format", "html").startswith("<!DOCTYPE html>")
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP USER IF EXISTS '{user}'@'%%'")
        admin.dispose()
