"""The ``downstream-node audit`` command group: ``audit uptime`` and its options.

It connects with the global ``--db`` URL (a read-only user is enough), writes the report in
the chosen format, and exits 1 after writing it when the hash chain does not verify.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..domain.clock import parse_time, to_micros
from ..domain.tokens import token_hash
from ..ledger.db import existing_ledger
from .feed import open_checkpoint, read_source, run_feed_audit
from .report import render
from .reputation import ScoringParams
from .run import AuditError, AuditOptions, AuditRun, run_audit, tree_root


def _time(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return to_micros(parse_time(value))
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO 8601 time: {value!r}") from exc


def _tokens(_ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    """A token (32 hex) is hashed here; a token hash (64 hex) is taken as it is."""
    if not values:
        return None
    hashes = set()
    for value in values:
        text = value.strip().lower()
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
            hashes.add(text)
        elif len(text) == 32 and all(c in "0123456789abcdef" for c in text):
            hashes.add(token_hash(text))
        else:
            raise click.BadParameter(f"{value!r} is neither a token nor a token hash")
    return frozenset(hashes)


# Options both audits take, spelled once.
SINCE = click.option("--since", callback=_time, help="Window start (ISO 8601 UTC).")
UNTIL = click.option(
    "--until", callback=_time, help="Window end, exclusive; also 'now' by default."
)
AT_POSITION = click.option(
    "--at-position",
    type=click.IntRange(0),
    default=None,
    help="Audit the ledger as it was at this position (default: the head).",
)
FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv", "html"]),
    default="table",
    show_default=True,
)
OUTPUT = click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the report here instead of standard output.",
)
STATE = click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Resume from the state saved in this directory and save the new one (incremental).",
)


@click.group()
def audit() -> None:
    """Auditors: recompute figures from the event history alone (read-only)."""


def _params(path: Path | None) -> ScoringParams:
    """The scoring parameters of a ``--params`` file (a JSON object), else the defaults."""
    if path is None:
        return ScoringParams()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path} ({exc.strerror or exc})", param_hint="--params"
        ) from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise click.BadParameter(f"{path} is not JSON ({exc})", param_hint="--params") from None
    try:
        return ScoringParams.fromdict(data)
    except ValueError as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--params") from None


@audit.command("uptime")
@SINCE
@UNTIL
@click.option(
    "--now",
    "now",
    callback=_time,
    help="Measure time up to this instant (default: --until, else the last event's time).",
)
@AT_POSITION
@click.option(
    "--token",
    "tokens",
    multiple=True,
    callback=_tokens,
    help="Only this token (or token hash); may be repeated.",
)
@FORMAT
@OUTPUT
@click.option(
    "--params",
    "params_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='Scoring parameters as JSON, e.g. {"lambda": 0.999, "alpha0": 1000}.',
)
@click.option(
    "--from",
    "source",
    default=None,
    metavar="URL|FILE",
    help="Audit from a node's public feed (its URL) or a 'ledger export' file, with no "
    "database; needs --checkpoint and --key.",
)
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A signed checkpoint you kept: the feed must be its history (with --from).",
)
@click.option("--key", "vkey", default=None, help="The log's verifier key (with --from).")
@STATE
@click.pass_obj
def audit_uptime(
    obj: Any,
    since: int | None,
    until: int | None,
    now: int | None,
    at_position: int | None,
    tokens: frozenset[str] | None,
    fmt: str,
    output: Path | None,
    params_file: Path | None,
    source: str | None,
    checkpoint_file: Path | None,
    vkey: str | None,
    state_dir: Path | None = None,
) -> None:
    """Uptime, challenges and reputation per token and contract, replayed from the events.

    Verifies the hash chain up to the audited position first; the report states the last
    verified position and hash. Exit status 1 (after writing the report) if it does not verify.
    """

    params = _params(params_file)
    options = AuditOptions(
        since=since,
        until=until,
        now=now,
        at_position=at_position,
        tokens=tokens,
        params=params,
        series=fmt == "html",
    )
    if source is not None or checkpoint_file is not None or vkey is not None:
        if source is None or checkpoint_file is None or vkey is None:
            raise click.UsageError("--from, --checkpoint and --key go together")
        if state_dir is not None:
            raise click.UsageError("--state resumes an audit of the database, not --from")
        _finish(
            _feed_audit(source, checkpoint_file, vkey, options),
            fmt,
            output,
            # The feed carries no hash chain: it was hashed into the checkpoint's tree.
            unverified="the feed does not verify against the checkpoint",
        )
        return
    from .incremental import resume_audit

    result, save = _replayed(obj, options, state_dir, run_audit, resume_audit)
    _finish(result, fmt, output, save=save)


def _files(_ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    """File hashes (hex, as ``file add`` printed them)."""
    if not values:
        return None
    hashes = set()
    for value in values:
        text = value.strip().lower()
        if not text or not all(c in "0123456789abcdef" for c in text):
            raise click.BadParameter(f"{value!r} is not a file hash (hex)")
        hashes.add(text)
    return frozenset(hashes)


@audit.command("redundancy")
@SINCE
@UNTIL
@AT_POSITION
@click.option(
    "--file",
    "files",
    multiple=True,
    callback=_files,
    help="Only this file hash; may be repeated.",
)
@FORMAT
@OUTPUT
@STATE
@click.pass_obj
def audit_redundancy(
    obj: Any,
    since: int | None,
    until: int | None,
    at_position: int | None,
    files: frozenset[str] | None,
    fmt: str,
    output: Path | None,
    state_dir: Path | None,
) -> None:
    """Replicas online per file over time (mean, min, max, time at each count), from the events.

    Verifies the hash chain up to the audited position first; exit status 1 (after writing the
    report) if it does not verify, 2 for bad options.
    """

    from .redundancy_report import RedundancyOptions, run_redundancy
    from .redundancy_report import render as render_redundancy

    options = RedundancyOptions(
        since=since, until=until, at_position=at_position, files=files, series=fmt == "html"
    )
    from .incremental import resume_redundancy

    result, save = _replayed(obj, options, state_dir, run_redundancy, resume_redundancy)
    _finish(result, fmt, output, render_redundancy, save=save)


def _replayed(
    obj: Any,
    options: Any,
    state_dir: Path | None,
    run_full: Callable[..., Any],
    resume: Callable[..., tuple[Any, Callable[[], None]]],
) -> tuple[Any, Callable[[], None] | None]:
    """An audit of the database: ``run_full``, or ``resume`` from ``state_dir``, with progress
    bars on a terminal; exit 2 on an ``AuditError``. Returns the run and, resumed, what saves
    its new state (``_finish`` calls it once the report is written)."""
    from tqdm import tqdm

    engine = existing_ledger(obj.settings.db_url)  # NoLedger: the command group's error
    tty = sys.stderr.isatty()
    try:
        with (
            tqdm(unit="ev", desc="verify", disable=not tty) as verify_bar,
            tqdm(unit="ev", desc="replay", disable=not tty) as replay_bar,
        ):

            def totals(position: int) -> None:
                verify_bar.reset(total=position)
                replay_bar.reset(total=position)

            progress = {
                "on_verify": verify_bar.update,
                "on_replay": replay_bar.update,
                "on_position": totals,
            }
            save = None
            if state_dir is not None:
                result, save = resume(engine, options, state_dir, **progress)
            else:
                result = run_full(engine, options, **progress)
        ledger = result.report["ledger"]
        ledger["tree_root"] = tree_root(engine, ledger["position"])
        return result, save
    except AuditError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    finally:
        engine.dispose()


def _feed_audit(source: str, checkpoint_file: Path, vkey: str, options: AuditOptions) -> AuditRun:
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    try:
        checkpoint = open_checkpoint(checkpoint_file.read_text(encoding="utf-8"), vkey)
        with tqdm(unit="ev", desc="feed", disable=not tty, total=checkpoint.size) as bar:
            return run_feed_audit(read_source(source), checkpoint, options, on_replay=bar.update)
    except AuditError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _finish(
    result: Any,
    fmt: str,
    output: Path | None,
    render_as: Callable[[dict, str], str] = render,
    *,
    save: Callable[[], None] | None = None,
    unverified: str = "the hash chain does not verify",
) -> None:
    """Write the report (``render_as``: the audit's own renderer), then save the state
    (``save``, with ``--state``); exit 1 after both when what it covers does not verify
    (``unverified``: what was checked, said so).

    The state is saved only once the report is written: a state moved past a report nobody
    got could not give it again (``--at-position`` before a state is refused)."""
    text = render_as(result.report, fmt)
    if output is not None:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            kept = "; the state was not saved" if save is not None else ""
            click.echo(
                f"error: cannot write the report to {output} ({exc.strerror or exc}){kept}",
                err=True,
            )
            sys.exit(2)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
    if save is not None:
        try:
            save()
        except AuditError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    if not result.ok:
        v = result.verified
        click.echo(f"error: {unverified} at position {v.first_broken}: {v.reason}", err=True)
        sys.exit(1)
