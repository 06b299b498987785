"""Incremental audits (``--state DIR``): resume a fold saved at an audited position, verify
the chain from that position's hash, replay only the later events, save the new state.

The report is exactly the full replay's: a fold's state after position N does not depend on
"now" or on anything read later, so resuming it and folding N+1.. equals folding 1.. again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from ..ledger.verify import VerifyReport, hash_at, verify_chain
from .redundancy import REDUNDANCY_EVENTS
from .redundancy_report import (
    RedundancyOptions,
    RedundancyRun,
    build_redundancy_report,
    new_fold,
)
from .replay import Replay, stream_events
from .report import build_report
from .run import (
    AuditOptions,
    AuditRun,
    audit_now,
    audited_position,
    check_window,
    replay_error,
)
from .state import StateError, load_state, load_uptime_fold, save_state, uptime_fold_state

Progress = Callable[[int], None] | None
R = TypeVar("R")
Save = Callable[[], None]
"""Saves a resumed run's new state (nothing when the chain did not verify); raises
``StateError`` when it cannot be written."""


def _resume_point(
    engine: Engine, saved: dict[str, Any] | None, position: int, directory: Path
) -> tuple[int, str] | None:
    """(position, hash) to resume from, after checking the ledger still holds that hash."""
    if saved is None:
        return None
    at, expected = int(saved["position"]), str(saved["hash"])
    # The hash first, even beyond the audited position: a ledger that ends before the saved
    # position is not this state's ledger, and no --at-position could change that.
    found = hash_at(engine, at)
    if found != expected:
        why = (
            "another ledger, or a history rewritten under it"
            if found is not None
            else "another ledger, or one shorter than the saved state"
        )
        raise StateError(
            f"the saved state in {directory} does not match this ledger: at position {at} it "
            f"recorded hash {expected}, the ledger holds {found or 'no event'} ({why}); "
            "remove it or use another --state directory"
        )
    if at > position:  # only an --at-position before the state's (the head is past it)
        raise StateError(
            f"the saved state in {directory} is at position {at}, beyond the audited position "
            f"{position}: it cannot be taken back; use another --state directory"
        )
    return at, expected


def _restore(directory: Path, load: Callable[[], None]) -> None:
    """Load a fold's saved data; a document whose checksum holds but whose content does not
    fit this auditor's fold is refused like a corrupt one."""
    try:
        load()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(
            f"the saved state in {directory} does not fit this auditor's fold ({exc!r}); "
            "remove it or use another --state directory"
        ) from None


def _verify(
    engine: Engine, position: int, start: tuple[int, str] | None, on_verify: Progress
) -> VerifyReport:
    verified = verify_chain(engine, until=position, progress=on_verify, start=start)
    if start is not None and verified.ok:
        # The rows up to the state's position were verified when it was saved.
        return VerifyReport(
            True, verified.checked + start[0], verified.last_position, verified.last_hash
        )
    return verified


def uptime_options(options: AuditOptions) -> dict[str, Any]:
    """The options that shape the uptime fold (not "now", the position or the format)."""
    return {
        "since": options.since,
        "until": options.until,
        "tokens": sorted(options.tokens) if options.tokens is not None else None,
        "params": options.params.todict(),
    }


def resume_audit(
    engine: Engine,
    options: AuditOptions,
    directory: Path,
    *,
    on_verify: Progress = None,
    on_replay: Progress = None,
    on_position: Progress = None,
) -> tuple[AuditRun, Save]:
    """``run_audit`` resuming from ``directory/uptime.json``, and what saves the new state
    there: the caller writes the report first, so a report that cannot be written does not
    move the state past it."""
    if options.series:
        raise StateError(
            "--state cannot be used with --format html: its chart buckets depend on 'now'"
        )
    check_window(options.since, options.until)
    position = audited_position(engine, options.at_position)
    if on_position is not None:
        on_position(position)
    shape = uptime_options(options)
    saved = load_state(directory, "uptime", shape)
    start = _resume_point(engine, saved, position, directory)
    verified = _verify(engine, position, start, on_verify)
    now, now_source = audit_now(engine, position, options.now, options.until)

    replay = Replay(
        since=options.since, until=options.until, tokens=options.tokens, params=options.params
    )
    after = 0
    if saved is not None and start is not None:
        _restore(directory, lambda: load_uptime_fold(replay, saved["fold"]))
        after = start[0]
    try:
        rows = stream_events(engine, after=after, until=position, page=options.page)
        replay.run(rows, progress=on_replay)
    except (ValueError, KeyError, TypeError) as exc:
        raise replay_error(exc, replay.position, verified) from exc
    report = build_report(
        replay, now=now, now_source=now_source, position=position, verified=verified
    )

    def save() -> None:
        if verified.ok:  # only a verified history is vouched for by a saved state
            save_state(
                directory,
                "uptime",
                position=position,
                chain_hash=verified.last_hash,
                options=shape,
                fold=uptime_fold_state(replay),
            )

    return AuditRun(report, verified), save


def redundancy_options(options: RedundancyOptions) -> dict[str, Any]:
    return {
        "since": options.since,
        "until": options.until,
        "files": sorted(options.files) if options.files is not None else None,
    }


def resume_redundancy(
    engine: Engine,
    options: RedundancyOptions,
    directory: Path,
    *,
    on_verify: Progress = None,
    on_replay: Progress = None,
    on_position: Progress = None,
) -> tuple[RedundancyRun, Save]:
    """``run_redundancy`` resuming from ``directory/redundancy.json``, and what saves the new
    state there (after the report, as ``resume_audit``)."""
    if options.series:
        raise StateError(
            "--state cannot be used with --format html: its chart buckets depend on 'now'"
        )
    position = audited_position(engine, options.at_position)
    if on_position is not None:
        on_position(position)
    check_window(options.since, options.until)
    shape = redundancy_options(options)
    saved = load_state(directory, "redundancy", shape)
    start = _resume_point(engine, saved, position, directory)
    verified = _verify(engine, position, start, on_verify)
    now, now_source = audit_now(engine, position, None, options.until)
    fold = new_fold(engine, options, position, now)
    after = 0
    if saved is not None and start is not None:
        _restore(directory, lambda: fold.load_state(saved["fold"]))
        after = start[0]
    try:
        rows = stream_events(
            engine, after=after, until=position, page=options.page, source=REDUNDANCY_EVENTS
        )
        fold.run(rows, progress=on_replay)
    except (ValueError, KeyError, TypeError) as exc:
        raise replay_error(exc, fold.position, verified) from exc
    report = build_redundancy_report(
        fold, now=now, now_source=now_source, position=position, verified=verified
    )

    def save() -> None:
        if verified.ok:
            save_state(
                directory,
                "redundancy",
                position=position,
                chain_hash=verified.last_hash,
                options=shape,
                fold=fold.state(),
            )

    return RedundancyRun(report, verified), save


def run_with_state(
    resume: Callable[..., tuple[R, Save]],
    engine: Engine,
    options: Any,
    directory: Path,
    **progress: Progress,
) -> R:
    """A resumed audit (``resume_audit`` or ``resume_redundancy``) with its new state saved
    at once: for callers with no report to write first (benchmarks, tests)."""
    run, save = resume(engine, options, directory, **progress)
    save()
    return run
