"""The operator's command line, end to end on each database: every command of the ledger
issue, the rebuild's row-for-row check and ``ledger verify`` catching an edit made in SQL."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from downstream_node.cli import main
from downstream_node.config import Settings
from downstream_node.domain.tokens import make_address
from downstream_node.ledger.db import sqlite_file

ADDRESS = make_address(b"\x21" * 20)
POOR = make_address(b"\x22" * 20)


def cli(db_url: str, tmp_path: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(
        main, ["--db", db_url, "--secret-file", str(tmp_path / "secret.json"), *args]
    )
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def test_operator_workflow(db_url: str, tmp_path: Path) -> None:
    cli(db_url, tmp_path, "initdb")
    csv_file = tmp_path / "whitelist.csv"
    csv_file.write_text(f"address,balance\n{ADDRESS},25000\n{POOR},5\n")
    assert "whitelisted 2" in cli(db_url, tmp_path, "whitelist", "import", str(csv_file))
    json_file = tmp_path / "whitelist.json"
    json_file.write_text(json.dumps([{"address": make_address(b"\x23" * 20), "balance": 1e5}]))
    assert "whitelisted 1" in cli(db_url, tmp_path, "whitelist", "import", str(json_file))
    bad = tmp_path / "bad.csv"
    bad.write_text("not-an-address,100\n")
    assert "invalid_address" in cli(db_url, tmp_path, "whitelist", "import", str(bad), code=1)

    token = cli(db_url, tmp_path, "token", "create", ADDRESS).strip()
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    assert "invalid_address" in cli(db_url, tmp_path, "token", "create", POOR, code=1)

    real = tmp_path / "chunk.bin"
    real.write_bytes(bytes(range(256)) * 64)
    file_hash = cli(
        db_url, tmp_path, "file", "add", str(real), "--redundancy", "2", "--interval", "30"
    ).strip()
    assert re.fullmatch(r"[0-9a-f]{64}", file_hash)
    assert "file_exists" in cli(db_url, tmp_path, "file", "add", str(real), code=1)
    seeded = cli(db_url, tmp_path, "file", "add-seeded", "--size", "4096", "--count", "2")
    assert len(seeded.split()) == 2
    cli(db_url, tmp_path, "file", "remove", file_hash)
    assert "no_hash" in cli(db_url, tmp_path, "file", "remove", file_hash, code=1)
    # monitored again, on new terms, after its removal
    again = cli(db_url, tmp_path, "file", "add", str(real), "--redundancy", "3").strip()
    assert again == file_hash
    assert "file_exists" in cli(db_url, tmp_path, "file", "add", str(real), code=1)

    cli(db_url, tmp_path, "token", "delete", token)
    assert "no_token" in cli(db_url, tmp_path, "token", "delete", token, code=1)

    rebuilt = json.loads(cli(db_url, tmp_path, "projections", "rebuild").strip().splitlines()[-1])
    assert rebuilt["identical_to_previous"] is True
    assert rebuilt["new_generation"] == rebuilt["old_generation"] + 1
    verified = json.loads(cli(db_url, tmp_path, "ledger", "verify"))
    assert verified["ok"] is True and verified["last_position"] == rebuilt["position"]


def test_ledger_verify_finds_a_row_altered_in_sql(db_url: str, tmp_path: Path) -> None:
    cli(db_url, tmp_path, "initdb")
    cli(db_url, tmp_path, "file", "add-seeded", "--size", "1024", "--count", "4")
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        target = conn.execute(
            sa.text(
                "SELECT position, payload FROM events WHERE event_type = 'FileAdded' "
                "ORDER BY position LIMIT 1 OFFSET 2"
            )
        ).one()
        tampered = target.payload.replace('"redundancy":3', '"redundancy":30')
        assert tampered != target.payload
        conn.execute(
            sa.text("UPDATE events SET payload = :p WHERE position = :pos"),
            {"p": tampered, "pos": target.position},
        )
    engine.dispose()
    report = json.loads(cli(db_url, tmp_path, "ledger", "verify", code=1))
    assert report["ok"] is False
    assert report["first_broken"] == target.position


def test_a_whitelist_file_it_cannot_read_is_refused_whole(db_url: str, tmp_path: Path) -> None:
    cli(db_url, tmp_path, "initdb")
    before = json.loads(cli(db_url, tmp_path, "ledger", "verify"))["last_position"]
    cases = {
        "broken.json": ('[{"address": ', "not valid JSON"),
        "keys.json": ('[{"addr": "x"}]', "entry 1 is neither"),
        "scalar.json": ("42", "must be a list"),
        "balance.csv": (f"{ADDRESS},25000\n{POOR},abc\n", "invalid_balance"),
        "negative.csv": (f"{ADDRESS},-5\n", "invalid_balance"),
    }
    for name, (text, says) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        output = cli(db_url, tmp_path, "whitelist", "import", str(path), code=1)
        assert says in output and "Traceback" not in output, (name, output)
    after = json.loads(cli(db_url, tmp_path, "ledger", "verify"))["last_position"]
    assert after == before  # not even the good lines of a refused file


def test_whitelist_import_is_idempotent_and_refuses_what_it_cannot_record(
    db_url: str, tmp_path: Path
) -> None:
    """Importing the same file again records nothing; a line without a balance, with extra
    columns, or with a balance too long for the whitelist is refused whole, naming the line;
    a spreadsheet's UTF-8 byte-order mark before the header is read as nothing."""
    cli(db_url, tmp_path, "initdb")
    third = make_address(b"\x24" * 20)
    good = tmp_path / "whitelist.csv"
    good.write_bytes(f"\ufeffaddress,balance\n{ADDRESS},50000\n{POOR},5\n".encode())
    assert "whitelisted 2 addresses" in cli(db_url, tmp_path, "whitelist", "import", str(good))
    position = json.loads(cli(db_url, tmp_path, "ledger", "verify"))["last_position"]
    again = cli(db_url, tmp_path, "whitelist", "import", str(good))
    assert "whitelisted 0 addresses (2 unchanged)" in again
    assert json.loads(cli(db_url, tmp_path, "ledger", "verify"))["last_position"] == position
    changed = tmp_path / "changed.csv"
    changed.write_text(f"{ADDRESS},50000.0\n{POOR},7\n{third},20000\n")
    assert "whitelisted 2 addresses (1 unchanged)" in cli(
        db_url, tmp_path, "whitelist", "import", str(changed)
    )
    position = json.loads(cli(db_url, tmp_path, "ledger", "verify"))["last_position"]
    refused = {
        "no-balance.csv": (f"{POOR},8\n{ADDRESS}\n", "line 2: no balance"),
        "empty-balance.csv": (f"{ADDRESS},\n", "line 1: no balance"),
        "columns.csv": (f"{POOR},8\n{ADDRESS},50000,extra\n", "line 2: 3 columns"),
        "long.csv": (f"{POOR},8\n\n{ADDRESS},{'9' * 50}\n", "line 3: balance"),
        "long.json": (json.dumps({ADDRESS: "1" * 41}), "longer than 40 characters"),
        "twice.csv": (f"{POOR},8\n{POOR},9\n", "two different balances"),
        "twice.json": (f'{{"{POOR}": "8", "{POOR}": "9"}}', "two different balances"),
        "spaced.json": (f'{{"{POOR}": " 8 "}}', "not written as plain digits"),
        "underscore.csv": (f"{POOR},1_000\n", "not written as plain digits"),
        "exponent.json": (f'{{"{POOR}": 1e3}}', "not written as plain digits"),
        "signed.json": (f'[["{POOR}", "+8"]]', "not written as plain digits"),
    }
    for name, (text, says) in refused.items():
        path = tmp_path / name
        path.write_text(text)
        output = cli(db_url, tmp_path, "whitelist", "import", str(path), code=1)
        assert says in output and "Traceback" not in output, (name, output)
    # Nothing of a refused file was written: POOR keeps 7, ADDRESS stays whitelisted.
    assert json.loads(cli(db_url, tmp_path, "ledger", "verify"))["last_position"] == position
    token = cli(db_url, tmp_path, "token", "create", ADDRESS).strip()
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    # A JSON number is recorded as written, not as the float it would round to.
    exact = tmp_path / "exact.json"
    exact.write_text(f'{{"{third}": 12345678901234567890.123}}')
    assert "whitelisted 1 addresses" in cli(db_url, tmp_path, "whitelist", "import", str(exact))
    exported = tmp_path / "export.jsonl"
    cli(db_url, tmp_path, "ledger", "export", "--output", str(exported))
    balances = [
        event["payload"]["balance"]
        for event in map(json.loads, exported.read_text().splitlines())
        if event["event_type"] == "AddressWhitelisted" and event["payload"]["address"] == third
    ]
    assert balances[-1] == "12345678901234567890.123"


def test_reading_commands_refuse_a_database_without_a_ledger(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    for command in (["ledger", "verify"], ["audit", "uptime"]):
        output = cli(f"sqlite:///{missing}", tmp_path, *command, code=2)
        assert "no database file" in output, output
        assert not missing.exists()  # not created on the way
    empty = tmp_path / "empty.db"
    sa.create_engine(f"sqlite:///{empty}").connect().close()
    for command in (["ledger", "verify"], ["audit", "uptime"]):
        assert "holds no ledger" in cli(f"sqlite:///{empty}", tmp_path, *command, code=2)


def test_commands_on_a_ledger_refuse_a_database_without_one(db_url: str, tmp_path: Path) -> None:
    """A mistyped --db (an SQLite file that is not there, an empty MariaDB database) is
    refused, not made into a new ledger with its own secret and log key: only ``initdb`` and
    ``serve`` create one."""
    inputs = tmp_path.parent / f"{tmp_path.name}-inputs"
    inputs.mkdir()
    whitelist, chunk = inputs / "whitelist.csv", inputs / "chunk.bin"
    whitelist.write_text(f"address,balance\n{ADDRESS},25000\n")
    chunk.write_bytes(b"x" * 4096)
    commands = (
        ["whitelist", "import", str(whitelist)],
        ["token", "create", ADDRESS],
        ["token", "delete", "0" * 32],
        ["file", "add", str(chunk)],
        ["file", "add-seeded", "--size", "4096"],
        ["file", "remove", "0" * 64],
        ["ledger", "key"],
        ["ledger", "checkpoint"],
        ["ledger", "export", "--output", str(tmp_path / "export.jsonl")],
        ["projections", "rebuild"],
    )
    says = "no database file" if db_url.startswith("sqlite") else "holds no ledger"
    for command in commands:
        output = cli(db_url, tmp_path, *command, code=2)
        assert says in output and output.count("\n") == 1, (command, output)
    assert list(tmp_path.iterdir()) == []  # no database, secret or log key
    if not db_url.startswith("sqlite"):
        engine = sa.create_engine(db_url)
        assert sa.inspect(engine).get_table_names() == []
        engine.dispose()


def test_a_database_that_cannot_be_reached_or_named_is_a_message(
    db_url: str, tmp_path: Path
) -> None:
    if db_url.startswith("sqlite"):
        unreachable = f"sqlite:///{tmp_path / 'no-such-dir' / 'ledger.db'}"
    else:
        unreachable = db_url.rsplit("/", 1)[0] + "/no_such_database_here"
    output = cli(unreachable, tmp_path, "initdb", code=1)
    assert "the database failed" in output and "Traceback" not in output, output
    output = cli("bogus://user:hunter2@host/db", tmp_path, "ledger", "verify", code=1)
    assert "invalid database URL" in output and "hunter2" not in output


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://x@127.0.0.1/x", "psycopg"),
        ("mysql+mysqldb://x:hunter2@127.0.0.1/x", "MySQLdb"),
    ],
)
def test_a_url_whose_driver_is_not_installed_is_a_message(
    url: str, driver: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a ModuleNotFoundError traceback: the invalid URL's one line, for any command."""
    monkeypatch.setitem(sys.modules, driver, None)  # not installed, wherever the test runs
    for command in (["ledger", "verify"], ["ledger", "key"], ["initdb"], ["audit", "uptime"]):
        output = cli(url, tmp_path, *command, code=1)
        assert output.startswith("Error: invalid database URL"), (command, output)
        assert output.count("\n") == 1 and "hunter2" not in output, (command, output)


def test_an_sqlite_url_in_uri_form_names_the_same_file(tmp_path: Path) -> None:
    """``sqlite:///file:PATH?...&uri=true`` (how a read-only audit opens a ledger) puts the
    secret and the rebuild lock beside PATH, as ``sqlite:///PATH`` does."""
    path = tmp_path / "ledger.db"
    plain, uri = f"sqlite:///{path}", f"sqlite:///file:{path}?mode=rwc&uri=true"
    assert sqlite_file(plain) == sqlite_file(uri) == path
    assert sqlite_file("sqlite://") is None and sqlite_file("sqlite:///:memory:") is None
    assert Settings(db_url=uri).secret_path() == Settings(db_url=plain).secret_path()
    cli(uri, tmp_path, "initdb")
    assert "identical_to_previous" in cli(uri, tmp_path, "projections", "rebuild")
    assert (tmp_path / "ledger.db.rebuild-lock").exists()


@pytest.mark.parametrize(
    "option", ["--db-read-timeout", "--db-write-timeout", "--db-wait", "--stop-timeout"]
)
@pytest.mark.parametrize("value", ["nan", "inf", "1e300"])
def test_serve_refuses_seconds_that_are_no_number_before_writing(
    tmp_path: Path, option: str, value: str
) -> None:
    db = tmp_path / "ledger.db"
    output = cli(f"sqlite:///{db}", tmp_path, "serve", option, value, code=2)
    assert "Invalid value" in output and "Traceback" not in output
    assert list(tmp_path.iterdir()) == []  # no database, secret or log key


def test_ledger_export_to_standard_output_or_nowhere(db_url: str, tmp_path: Path) -> None:
    cli(db_url, tmp_path, "initdb")
    exported = tmp_path / "export.jsonl"
    cli(db_url, tmp_path, "ledger", "export", "--output", str(exported))
    result = CliRunner().invoke(
        main,
        [
            "--db",
            db_url,
            "--secret-file",
            str(tmp_path / "secret.json"),
            "ledger",
            "export",
            "--output",
            "-",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == exported.read_bytes() and exported.read_bytes()
    missing = tmp_path / "no-such-dir" / "export.jsonl"
    output = cli(db_url, tmp_path, "ledger", "export", "--output", str(missing), code=2)
    assert "cannot write" in output and "Traceback" not in output
