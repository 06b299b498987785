"""The ``downstream-node`` command line: operator functions, projections, ledger checks, serve.

Every command takes the global ``--db URL`` (default ``DOWNSTREAM_DB``, else ``downstream.db``
in the working directory). Commands that change state go through the same node service as
the HTTP API, so they append events exactly as a farmer's request would.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import math
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import sqlalchemy.exc
import structlog

from .audit.cli import audit as audit_commands
from .config import Settings
from .domain import tokens as tk
from .domain.clock import SystemClock
from .domain.errors import Refused
from .ledger.db import NoLedger, default_url, existing_ledger
from .ledger.verify import verify_chain
from .service import Node, bootstrap

T = TypeVar("T")


class Obj:
    def __init__(
        self,
        db: str,
        secret: Path | None,
        heartbeat: str,
        new_secret: bool,
        log_origin: str | None = None,
        new_log_key: bool = False,
    ) -> None:
        self.settings = Settings(
            db_url=db,
            secret_file=secret,
            heartbeat=heartbeat,
            new_secret=new_secret,
            log_origin=log_origin,
            new_log_key=new_log_key,
        )


def run_node(obj: Obj, work: Callable[[Node], Awaitable[T]], *, create: bool = False) -> T:
    """Open a node on the configured database, run ``work``, close it; refusals exit 1.

    Only ``create`` (``initdb``) makes a ledger where there is none: any other command
    refuses such a database (``_require_ledger``)."""
    if not create:
        _require_ledger(obj)

    async def main() -> T:
        node = await Node(obj.settings, clock=SystemClock()).start()
        try:
            return await work(node)
        finally:
            await node.close()

    try:
        return asyncio.run(main())
    except Refused as refused:
        click.echo(f"error: {refused.status}: {refused.message}", err=True)
        sys.exit(1)


def _require_ledger(obj: Obj) -> None:
    """Raise ``NoLedger`` unless the database already holds a ledger: any command but
    ``initdb`` and ``serve`` would otherwise create a new ledger (schema, node secret, log
    key) on a mistyped --db and succeed on it (a token printed for a ledger no node
    serves)."""
    existing_ledger(obj.settings.db_url).dispose()


class Commands(click.Group):
    """The command group; a database that cannot be reached or named is an error message,
    not a traceback (the URL is not repeated: it may hold a password)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NoLedger as missing:
            raise CannotRun(str(missing)) from None
        except sqlalchemy.exc.ArgumentError:
            raise click.ClickException(
                "invalid database URL; expected mysql+pymysql://user:password@host/database "
                "or sqlite:///path/to/file.db"
            ) from None
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            raise click.ClickException(f"the database failed: {exc.orig}") from None


class CannotRun(click.ClickException):
    """The command cannot run as asked (exit status 2, as the auditors' errors)."""

    exit_code = 2


@click.group(cls=Commands)
@click.option(
    "--db",
    default=default_url,
    show_default="$DOWNSTREAM_DB or ./downstream.db",
    help="Database URL (mysql+pymysql://... or sqlite:///file).",
)
@click.option(
    "--secret-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the node's secret heartbeat is kept (created if missing).",
)
@click.option(
    "--heartbeat",
    type=click.Choice(["Merkle", "Swizzle"]),
    default="Merkle",
    show_default=True,
    help="Proof scheme for a new node secret.",
)
@click.option(
    "--new-secret",
    is_flag=True,
    help="Record a new secret heartbeat for a ledger configured with another one, when that "
    "one is lost: contracts sealed with it end at their next challenge.",
)
@click.option(
    "--log-origin",
    default=None,
    help="The transparency log's name in its checkpoints (default: the one in the log's key "
    "file, downstream-node/<16 hex digits of its first public key>).",
)
@click.option(
    "--new-log-key",
    is_flag=True,
    help="Rotate the transparency log's signing key (recorded in the ledger; the meta "
    "commitment key is kept).",
)
@click.pass_context
def main(
    ctx: click.Context,
    db: str,
    secret_file: Path | None,
    heartbeat: str,
    new_secret: bool,
    log_origin: str | None,
    new_log_key: bool,
) -> None:
    """downstream-node: an event-sourced contract ledger for proof-of-storage farming."""
    ctx.obj = Obj(db, secret_file, heartbeat, new_secret, log_origin, new_log_key)


@main.command()
@click.pass_obj
def initdb(obj: Obj) -> None:
    """Create the ledger and projection tables and the node secret (idempotent)."""
    run_node(obj, lambda node: asyncio.sleep(0), create=True)
    click.echo(f"initialised {obj.settings.db_url}")


# -- whitelist ----------------------------------------------------------------------------------


@main.group()
def whitelist() -> None:
    """The crowdsale address whitelist."""


@whitelist.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def whitelist_import(obj: Obj, file: Path) -> None:
    """Import FILE: CSV lines ``address,balance`` or JSON (a list or an object).

    All or nothing: a line without a balance, with more columns, or with a balance that is
    not a non-negative decimal of at most 40 characters refuses the whole file, naming the
    line. Addresses already whitelisted with the same balance record nothing."""
    try:
        entries = read_whitelist(file)
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {file}: {exc}") from None
    except Refused as refused:
        click.echo(f"error: {refused.status}: {file}: {refused.message}", err=True)
        sys.exit(1)
    count = run_node(obj, lambda node: node.whitelist(entries))
    unchanged = len({address for address, _ in entries}) - count
    click.echo(f"whitelisted {count} addresses ({unchanged} unchanged)")


def read_whitelist(file: Path) -> list[tuple[str, str]]:
    """(address, balance) pairs; ``ValueError`` saying what is wrong with the file's shape,
    ``Refused("invalid_balance")`` naming the line of a balance that cannot be recorded."""
    text = file.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is no text
    if file.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        entries = _json_whitelist(text)
    else:
        entries = _csv_whitelist(text)
    for where, _, balance in entries:
        problem = tk.balance_problem(balance)
        if problem is not None:
            raise Refused("invalid_balance", f"{where}: balance {balance!r} is {problem}")
    return [(address, balance) for _, address, balance in entries]


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its key-value pairs, in order and with any key given twice."""


def _json_whitelist(text: str) -> list[tuple[str, str, str]]:
    try:
        # Numbers are kept as written: a float would record 12345678901234567890.123 as
        # 1.2345678901234567e+19 in the ledger for ever. Objects keep a key given twice, so
        # that two balances for one address are refused as they are in a CSV file.
        data: Any = json.loads(text, parse_float=str, parse_int=str, object_pairs_hook=_Pairs)
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if isinstance(data, _Pairs):
        return [(f"entry {a!r}", str(a), str(b)) for a, b in data]
    if not isinstance(data, list):
        raise ValueError("JSON must be a list of entries or an object of address: balance")
    out = []
    for n, item in enumerate(data, 1):
        keys = [k for k, _ in item] if isinstance(item, _Pairs) else None
        if keys is not None and sorted(keys) == ["address", "balance"]:
            fields = dict(item)
            out.append((f"entry {n}", str(fields["address"]), str(fields["balance"])))
        elif isinstance(item, list) and len(item) == 2:
            out.append((f"entry {n}", str(item[0]), str(item[1])))
        else:
            raise ValueError(
                f"entry {n} is neither {{'address': ..., 'balance': ...}} nor "
                f"[address, balance]: {json.dumps(dict(item) if keys is not None else item)[:80]}"
            )
    return out


def _csv_whitelist(text: str) -> list[tuple[str, str, str]]:
    out = []
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in row]
        if not out and [c.lower() for c in cells] == ["address", "balance"]:
            continue  # the header
        if len(cells) == 1 or not cells[1]:
            raise ValueError(f"line {n}: no balance after the address (address,balance)")
        if len(cells) > 2:
            raise ValueError(f"line {n}: {len(cells)} columns; expected address,balance")
        out.append((f"line {n}", cells[0], cells[1]))
    return out


# -- tokens -------------------------------------------------------------------------------------


@main.group()
def token() -> None:
    """Farmer tokens."""


@token.command("create")
@click.argument("address")
@click.pass_obj
def token_create(obj: Obj, address: str) -> None:
    """Create a token for ADDRESS and print it (it is shown only this once)."""
    created, _ = run_node(obj, lambda node: node.create_token(address))
    click.echo(created)


@token.command("delete")
@click.argument("token_value", metavar="TOKEN")
@click.pass_obj
def token_delete(obj: Obj, token_value: str) -> None:
    """Delete TOKEN; its chunks return to the pool for other farmers."""
    run_node(obj, lambda node: node.delete_token(token_value))
    click.echo("deleted")


# -- files --------------------------------------------------------------------------------------


@main.group("file")
def file_group() -> None:
    """Chunks the node monitors."""


@file_group.command("add")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--redundancy", type=click.IntRange(1), default=None)
@click.option("--interval", type=click.IntRange(1), default=None, help="Seconds per challenge.")
@click.pass_obj
def file_add(obj: Obj, path: Path, redundancy: int | None, interval: int | None) -> None:
    """Monitor the file at PATH; prints its hash."""
    click.echo(
        run_node(obj, lambda node: node.add_file(path, redundancy=redundancy, interval=interval))
    )


@file_group.command("add-seeded")
@click.option("--size", type=click.IntRange(1), required=True, help="Bytes per chunk.")
@click.option("--count", type=click.IntRange(1), default=1, show_default=True)
@click.option("--redundancy", type=click.IntRange(1), default=None)
@click.option("--interval", type=click.IntRange(1), default=None, help="Seconds per challenge.")
@click.pass_obj
def file_add_seeded(
    obj: Obj, size: int, count: int, redundancy: int | None, interval: int | None
) -> None:
    """Add COUNT seeded test chunks of SIZE bytes; prints their hashes."""

    async def work(node: Node) -> list[str]:
        return [
            await node.add_seeded(size, redundancy=redundancy, interval=interval)
            for _ in range(count)
        ]

    for file_hash in run_node(obj, work):
        click.echo(file_hash)


@file_group.command("remove")
@click.argument("file_hash", metavar="HASH")
@click.pass_obj
def file_remove(obj: Obj, file_hash: str) -> None:
    """Stop monitoring HASH; its contracts end."""
    run_node(obj, lambda node: node.remove_file(file_hash))
    click.echo("removed")


# -- projections and ledger ---------------------------------------------------------------------


@main.group()
def projections() -> None:
    """The read models."""


@projections.command("rebuild")
@click.option(
    "--batch",
    type=click.IntRange(1),
    default=20_000,
    show_default=True,
    help="Events per transaction (on SQLite, live appends wait for each).",
)
@click.pass_obj
def projections_rebuild(obj: Obj, batch: int) -> None:
    """Rebuild every projection from position 0 and swap it in, without stopping the node.

    Prints whether the new tables equal the ones they replaced, both as of the swap (what
    the node appends meanwhile is not a difference), naming each differing row by table
    and key; exits 1 when they differ."""
    from tqdm import tqdm

    from .projections.rebuild import RebuildRunning, ensure_projections, rebuild

    _require_ledger(obj)
    store = bootstrap.open_store(obj.settings.db_url)
    store.create_schema()
    ensure_projections(store)
    with tqdm(
        total=store.head().position, unit="ev", disable=not sys.stderr.isatty(), desc="rebuild"
    ) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            report = rebuild(store, batch=batch, progress=progress, compare=True)
        except RebuildRunning as running:
            raise click.ClickException(f"{running}; try again once it has finished") from None
    differences = report.differences or {}
    click.echo(
        json.dumps(
            {
                "old_generation": report.old_generation,
                "new_generation": report.new_generation,
                "position": report.position,
                "events": report.events,
                "identical_to_previous": not differences,
                "differences": differences,
            }
        )
    )
    if differences:
        # The previous generation was made by the live projector: a difference is a bug in
        # a fold or a row edited by hand. The new generation is live either way.
        click.echo(
            "error: the rebuilt projections differ from the ones they replaced, as of "
            f"position {report.position}: "
            + "; ".join(
                f"{table} ({d['count']} rows, e.g. {d['key']} {d['rows'][0][d['key']]})"
                for table, d in differences.items()
            ),
            err=True,
        )
        sys.exit(1)


@main.group()
def ledger() -> None:
    """The event history."""


@ledger.command("verify")
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A signed checkpoint kept earlier: also prove the ledger extends it.",
)
@click.option("--key", "vkey", default=None, help="The log's verifier key (with --checkpoint).")
@click.pass_obj
def ledger_verify(obj: Obj, checkpoint_file: Path | None, vkey: str | None) -> None:
    """Walk the hash chain; report the first broken position (exit 1 if any).

    With --checkpoint and --key, also recompute the Merkle tree from the events and prove
    by a consistency proof that the checkpoint's tree is a prefix of it: exit 1 naming what
    is wrong (shorter than the checkpoint, or a different history)."""
    from tqdm import tqdm

    checkpoint = None
    if (checkpoint_file is None) != (vkey is None):
        raise click.UsageError("--checkpoint and --key go together")
    if checkpoint_file is not None and vkey is not None:
        checkpoint = _checkpoint(checkpoint_file, vkey)
    engine = existing_ledger(obj.settings.db_url)
    with tqdm(unit="ev", disable=not sys.stderr.isatty(), desc="verify") as bar:
        report = verify_chain(engine, progress=bar.update)
    result = report.todict()
    ok = report.ok
    if checkpoint is not None:
        against = _against(obj, engine, checkpoint)
        result["checkpoint"] = against.todict()
        ok = ok and against.ok
        if not against.ok:
            click.echo(f"error: {against.reason}", err=True)
    engine.dispose()
    click.echo(json.dumps(result))
    sys.exit(0 if ok else 1)


def _checkpoint(path: Path, vkey: str) -> Any:
    from .tlog import note
    from .tlog.checkpoint import Checkpoint, CheckpointError

    try:
        return Checkpoint.verify(path.read_text(encoding="utf-8"), note.parse_verifier(vkey))
    except (note.NoteError, CheckpointError, UnicodeDecodeError) as exc:
        raise CannotRun(f"{path}: the checkpoint does not verify under that key: {exc}") from None


def _log_keys(obj: Obj, engine: Any) -> Any:
    """The log's keys beside the secret, if they are the ledger on ``engine``'s: another
    node's commitment key would hash every leaf differently, and the checkpoint would then
    seem to sign a different history (as a starting node, which refuses ``log_key_mismatch``)."""
    from .domain.events import NODE_STREAM
    from .ledger.reader import read_stream
    from .service.lifecycle import configured_log_key
    from .service.logkeys import LogKeys, keys_path

    path = keys_path(obj.settings.secret_path())
    try:
        keys = LogKeys.load(path)
    except FileNotFoundError:
        raise CannotRun(f"the log's key file is not at {path} (see --secret-file)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CannotRun(f"cannot read the log's key file {path}: {exc}") from None
    configured = configured_log_key(read_stream(engine, NODE_STREAM))
    if configured is not None and keys.commit_key_id() != configured["commit_key_id"]:
        raise CannotRun(
            f"the log's key file {path} is not this ledger's: it holds another commitment "
            "key (see --secret-file)"
        )
    return keys.named(obj.settings.log_origin) if obj.settings.log_origin else keys


def _against(obj: Obj, engine: Any, checkpoint: Any) -> Any:
    from .ledger import feed, tree
    from .ledger.db import read_transaction

    keys = _log_keys(obj, engine)
    with read_transaction(engine) as conn:
        size = tree.tree_size(conn)
        stored = (size, tree.root(conn, size))
    return feed.against_checkpoint(engine, keys.public_forms(), checkpoint, stored)


@ledger.command("key")
@click.pass_obj
def ledger_key(obj: Obj) -> None:
    """Print the log's verifier key (give it to auditors and farmers)."""
    click.echo(run_node(obj, lambda node: asyncio.sleep(0, node.rt.keys().vkey)))


@ledger.command("checkpoint")
@click.pass_obj
def ledger_checkpoint(obj: Obj) -> None:
    """Print a fresh signed checkpoint of the whole ledger (keep it to verify against later)."""
    click.echo(run_node(obj, lambda node: node.ledger.checkpoint()), nl=False)


@ledger.command("export")
@click.option("--after", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    required=True,
    help="FILE, or - for standard output",
)
@click.pass_obj
def ledger_export(obj: Obj, after: int, output: Path) -> None:
    """Write the events' public forms after position --after as JSON Lines, with leaf_hash:
    what the public feed serves, for an audit with no database (audit uptime --from FILE)."""
    from .ledger import feed, tree
    from .ledger.db import read_transaction

    def export(node: Node) -> int:
        with read_transaction(node.engine) as conn:
            size = tree.tree_size(conn)  # what the tree covers, as the feed serves it
        forms = node.rt.keys().public_forms()

        def write(out: Any) -> int:
            count = 0
            for _, data, leaf in feed.public_lines(node.engine, forms, after, size):
                out.write(feed.export_line(data, leaf))
                count += 1
            out.flush()
            return count

        if str(output) == "-":
            return write(sys.stdout.buffer)
        tmp = output.with_name(output.name + ".tmp")
        with tmp.open("wb") as out:
            count = write(out)
        tmp.replace(output)  # a reader never sees half an export
        return count

    try:
        count = run_node(obj, lambda node: node.rt.run(export, node))
    except OSError as exc:
        raise CannotRun(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"exported {count} events to {output}", err=True)


@main.group("receipts")
def receipts_group() -> None:
    """A farmer's receipts for its verdicts."""


@receipts_group.command("verify")
@click.option(
    "--dir",
    "directory",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="The farm directory (every receipts.jsonl below it is read).",
)
@click.option("--url", required=True, help="The node, e.g. http://127.0.0.1:8000")
@click.option("--key", "vkey", required=True, help="The node's log verifier key.")
def receipts_verify(directory: Path, url: str, vkey: str) -> None:
    """Check every receipt kept for URL against a fresh checkpoint, by inclusion proofs:
    prints {"receipts": n, "verified": n, "failed": 0}; exit 1 on any failure."""
    from .farmer.receipts import ReceiptsError, verify_receipts

    try:
        report = asyncio.run(verify_receipts(directory, url, vkey))
    except ReceiptsError as exc:
        raise CannotRun(str(exc)) from None
    click.echo(json.dumps(report.todict()))
    for failure in report.failures:
        click.echo(f"error: {failure}", err=True)
    if not report.receipts:
        # Receipts are kept per node URL as the farmer spelled it (localhost is not
        # 127.0.0.1): a check that found none says so rather than pass in silence.
        click.echo(
            f"warning: no receipts for {url} under {directory}; is it the URL the farmer "
            "was given (--url), spelled the same way?",
            err=True,
        )
    sys.exit(1 if report.failed else 0)


# The auditors' group (``audit uptime``) lives with the auditors; it only reads the ledger.
main.add_command(audit_commands)


# -- serve and farm -----------------------------------------------------------------------------


def _finite(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    # FloatRange lets NaN through (it compares false with every bound), and an infinite or
    # huge number of seconds overflows a datetime or a driver's timeout: a year is the most
    # (MySQL's connect timeout takes no more).
    if value is not None and not (math.isfinite(value) and value <= 365 * 86400):
        raise click.BadParameter(f"{value} is not a number of seconds up to a year")
    return value


def _trusted_proxies(values: tuple[str, ...]) -> tuple[str, ...]:
    from .http.proxies import parse_trusted

    try:
        parse_trusted(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trusted-proxy") from None
    return values


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any."
)
@click.option(
    "--log-format",
    type=click.Choice(["console", "json"]),
    default="console",
    show_default=True,
    help="One event per line: aligned text, or one JSON object.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
)
@click.option(
    "--demo/--no-demo",
    default=None,
    help="Whitelist a demo address and add seeded chunks (see --demo-*) if missing. "
    "Default: on for an SQLite database, off for MySQL/MariaDB.",
)
@click.option(
    "--demo-chunks", type=click.IntRange(1), default=3, show_default=True, help="Demo chunks."
)
@click.option(
    "--demo-size",
    type=click.IntRange(1),
    default=1024 * 1024,
    show_default=True,
    help="Bytes per demo chunk.",
)
@click.option(
    "--demo-interval",
    type=click.IntRange(1),
    default=60,
    show_default=True,
    help="Seconds between a demo chunk's challenges (a few seconds for load tests).",
)
@click.option(
    "--demo-redundancy",
    type=click.IntRange(1),
    default=None,
    help="Replicas per demo chunk (default: the node's redundancy, 3).",
)
@click.option(
    "--stop-timeout",
    type=click.FloatRange(0, min_open=True),
    callback=_finite,
    default=30.0,
    show_default=True,
    help="Seconds the node gets to finish its requests and close after SIGTERM/Ctrl-C; then "
    "it exits anyway (status 1): what was acknowledged is committed.",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    callback=lambda ctx, param, values: _trusted_proxies(values),
    help="A reverse proxy (address or network, repeatable) whose X-Forwarded-For names the "
    "farmer, for the per-IP limits and the events. Default: none; the peer's address counts.",
)
@click.option(
    "--requests-per-minute",
    type=click.IntRange(0),
    default=600,
    show_default=True,
    help="Requests per token per minute, for all the processes on this database (0: no limit).",
)
@click.option(
    "--new-per-minute",
    type=click.IntRange(0),
    default=60,
    show_default=True,
    help="Requests to /new per IP address (its group) per minute, refused ones included, for "
    "all the processes on this database (0: no limit).",
)
@click.option(
    "--ipv6-prefix",
    type=click.IntRange(32, 128),
    default=64,
    show_default=True,
    help="Per-IP limits count an IPv6 farmer by its network of this prefix length (one "
    "subscriber commonly holds a whole /64); 128 counts each address alone.",
)
@click.option(
    "--geoip",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A MaxMind DB (GeoLite2-City) to locate farmers in the v1 status routes. Read "
    "locally; without it every location is null (there is never a network lookup).",
)
@click.option(
    "--db-connect-timeout",
    type=click.FloatRange(0, min_open=True),
    callback=_finite,
    default=3.0,
    show_default=True,
    help="Seconds to connect to MySQL/MariaDB.",
)
@click.option(
    "--db-read-timeout",
    type=click.FloatRange(0, min_open=True),
    callback=_finite,
    default=5.0,
    show_default=True,
    help="Seconds a MySQL/MariaDB connection waits to read (then it is dropped; a COMMIT cut "
    "short has an unknown outcome, retried safely by request id); on SQLite, the busy timeout.",
)
@click.option(
    "--db-write-timeout",
    type=click.FloatRange(0, min_open=True),
    callback=_finite,
    default=5.0,
    show_default=True,
    help="Seconds a MySQL/MariaDB connection waits to write.",
)
@click.option(
    "--db-wait",
    type=click.FloatRange(0, min_open=True),
    callback=_finite,
    default=4.0,
    show_default=True,
    help="Seconds one request waits for the database in all before the farmer gets 503 with "
    "Retry-After.",
)
@click.pass_obj
def serve(
    obj: Obj,
    host: str,
    port: int,
    log_format: str,
    log_level: str,
    demo: bool | None,
    demo_chunks: int,
    demo_size: int,
    demo_interval: int,
    demo_redundancy: int | None,
    stop_timeout: float,
    trusted_proxies: tuple[str, ...],
    requests_per_minute: int,
    new_per_minute: int,
    ipv6_prefix: int,
    geoip: Path | None,
    db_connect_timeout: float,
    db_read_timeout: float,
    db_write_timeout: float,
    db_wait: float,
) -> None:
    """Serve the farmers' API (and /health, /metrics, /api/docs) until Ctrl-C."""
    from .http.logs import configure_logging
    from .http.server import CannotListen, Demo, DemoStock, StopTimedOut, settle_heap
    from .http.server import serve as serve_api
    from .ledger.db import is_sqlite

    configure_logging(log_format, level=log_level, cache_loggers=True)
    if demo is None:
        demo = is_sqlite(obj.settings.db_url)

    def ready(url: str, stocked: Demo | None) -> None:
        settle_heap()
        click.echo(f"downstream-node listening on {url}")
        click.echo(f"  API docs: {url}/api/docs   health: {url}/health   metrics: {url}/metrics")
        if stocked is not None:
            click.echo(
                f"  demo address {stocked.address} (whitelisted), "
                f"{len(stocked.files)} seeded chunks ({stocked.added} added now)"
            )
            click.echo("  point a farmer at it:")
            click.echo(f"    downstream-node farm --url {url} --address {stocked.address}")
        sys.stdout.flush()

    # A Runner rather than asyncio.run: a stop that timed out must leave at once, not wait
    # for the default executor's threads (one may be stuck on the database) on the way out.
    runner = asyncio.Runner()
    try:
        stock = DemoStock(demo_chunks, demo_size, demo_interval, demo_redundancy)
        runner.run(
            serve_api(
                dataclasses.replace(
                    obj.settings,
                    trusted_proxies=trusted_proxies,
                    geoip=geoip,
                    requests_per_token_per_minute=requests_per_minute,
                    new_tokens_per_ip_per_minute=new_per_minute,
                    token_policy=dataclasses.replace(
                        obj.settings.token_policy, ipv6_prefix=ipv6_prefix
                    ),
                    db_connect_timeout=db_connect_timeout,
                    db_read_timeout=db_read_timeout,
                    db_write_timeout=db_write_timeout,
                    db_wait=db_wait,
                ),
                host=host,
                port=port,
                demo=demo,
                demo_stock=stock,
                on_ready=ready,
                stop_grace=stop_timeout,
            )
        )
    except Refused as refused:
        _serve_failed(log_format, f"{refused.status}: {refused.message}")
    except CannotListen as exc:
        _serve_failed(log_format, f"cannot listen on {host}:{port}: {exc.__cause__}")
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        _serve_failed(log_format, f"the database failed: {exc.orig}")
    except OSError as exc:
        _serve_failed(log_format, str(exc))
    except StopTimedOut as exc:
        _serve_failed(log_format, str(exc), force=True)
    finally:
        runner.close()


def _serve_failed(log_format: str, message: str, *, force: bool = False) -> NoReturn:
    """Exit 1 with ``message``: a JSON log line when the log is JSON (one format per log),
    else ``error: ...``. ``force``: at once, as worker threads stuck on the database would
    otherwise hold the process."""
    if log_format == "json":
        structlog.get_logger("downstream.serve").error("serve_failed", message=message)
    else:
        click.echo(f"error: {message}", err=True)
    sys.stderr.flush()
    if force:
        os._exit(1)
    sys.exit(1)


def _http_url(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not value.lower().startswith(("http://", "https://")):
        raise click.BadParameter(f"{value!r} is not an http:// or https:// URL")
    return value


@main.command()
@click.option(
    "--url", required=True, callback=_http_url, help="The node, e.g. http://127.0.0.1:8000"
)
@click.option(
    "--address",
    default=None,
    help="The SJCX address to farm for (required for the 2014-10 API; with --api v1 the "
    "address whose key the state file keeps, by default each farmer's own).",
)
@click.option(
    "--api",
    type=click.Choice(["2014-10", "v1"]),
    default="2014-10",
    show_default=True,
    help="The farmers' API: the seed's routes, or v1 (farmer 0.1.8's: signed /new, bulk "
    "routes), signing with a key kept in each farmer's state file.",
)
@click.option("--farmers", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--duration",
    type=click.FloatRange(0),
    default=None,
    callback=_finite,
    help="Seconds to farm. Default: until Ctrl-C.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("farm-data"),
    show_default=True,
    help="Where chunks are written (one subdirectory per farmer), with each farmer's token "
    "and contracts (state.json, mode 0600): a later run goes on with them.",
)
@click.option("--max-contracts", type=click.IntRange(1), default=10, show_default=True)
@click.option(
    "--poll", type=click.FloatRange(0.1), default=5.0, show_default=True, callback=_finite
)
@click.option("--wrong-proofs", is_flag=True, help="Send corrupted proofs (to test a node).")
def farm(
    url: str,
    address: str | None,
    api: str,
    farmers: int,
    duration: float | None,
    directory: Path,
    max_contracts: int,
    poll: float,
    wrong_proofs: bool,
) -> None:
    """Run reference farmers against a node: take contracts, store chunks, answer challenges."""
    import signal

    from .farmer import Display, Swarm, run_farmers

    if api == "2014-10" and not address:
        raise click.UsageError("--address is required with --api 2014-10")
    from .farmer.client import describe_error
    from .farmer.state import load_node

    for i in range(farmers):
        home = directory / f"farmer-{i + 1}"
        signs_as = address
        try:
            if api == "v1":
                from .domain.signatures import address_for
                from .farmer.v1 import load_key

                signs_as = address_for(load_key(home, address))
                click.echo(f"farmer-{i + 1} signs as {signs_as} (the node must whitelist it)")
            # A state file that cannot be read is refused before any farmer starts: it may
            # hold a token and a signing key that a new registration would lose.
            load_node(home, url.rstrip("/"), signs_as or "", lambda _warning: None)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        except OSError as exc:
            raise CannotRun(describe_error(exc)) from None
    swarm = Swarm()

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        display = Display(swarm)
        try:
            await run_farmers(
                url,
                address,
                api=api,
                farmers=farmers,
                directory=directory,
                duration=duration,
                max_contracts=max_contracts,
                poll_seconds=poll,
                wrong_proofs=wrong_proofs,
                on_event=display,
                stop=stop,
                swarm=swarm,
            )
        finally:
            display.close()

    asyncio.run(go())
    totals = swarm.totals()
    click.echo(json.dumps({"farmers": len(swarm.farmers), **totals.todict()}))
    # A farmer that stopped on an error (a refused registration, a state file it cannot
    # keep) fails the run, so that a service manager restarts it or says so.
    if any(f.ended for f in swarm.farmers) or not any(f.token for f in swarm.farmers):
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
