"""One audit run: fix the audited position, verify the hash chain up to it, replay up to it.

Only SELECTs are issued (a read-only database user suffices), and the report depends only on
the events up to that position and the options, so two auditors can compare reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy.exc
from sqlalchemy.engine import Engine

from ..domain.errors import LedgerError
from ..ledger import reader, tree
from ..ledger.verify import VerifyReport, verify_chain
from .replay import Replay, choose_buckets, stream_events
from .report import build_report
from .reputation import ScoringParams


class AuditError(Exception):
    """The audit cannot run as asked (no ledger, a position beyond the head, ...)."""


@dataclass(frozen=True)
class AuditOptions:
    since: int | None = None  # window start, UTC microseconds
    until: int | None = None  # window end (exclusive); also "now" unless ``now`` is given
    now: int | None = None  # when time is measured; default: until, else the last event's time
    at_position: int | None = None  # audit the ledger as it was at this position
    tokens: frozenset[str] | None = None  # token hashes to audit (None: all)
    params: ScoringParams = field(default_factory=ScoringParams)
    series: bool = False  # per-bucket series for the charts
    page: int = 5000


@dataclass(frozen=True)
class AuditRun:
    report: dict
    verified: VerifyReport

    @property
    def ok(self) -> bool:
        return self.verified.ok


def audited_position(engine: Engine, at_position: int | None) -> int:
    head = reader.head_position(engine)
    if head is None:
        raise AuditError("this database holds no ledger (no ledger_head row)")
    if at_position is None:
        return head
    if at_position < 0 or at_position > head:
        raise AuditError(f"position {at_position} is outside the ledger (head is {head})")
    return at_position


def check_window(since: int | None, until: int | None) -> None:
    if since is not None and until is not None and until <= since:
        raise AuditError("--until must be after --since")


def choose_now(
    last: int | None, now: int | None, until: int | None, earlier: str = ""
) -> tuple[int, str]:
    """When the audit measures time, and what set it: ``--now``, else ``--until``, else
    ``last`` (the last audited event's time). ``earlier``: how else to ask for the past."""
    if now is not None:
        if last is not None and now < last and until is None:
            raise AuditError(
                "--now is before the last audited event; "
                f"use --until for an earlier window{earlier}"
            )
        return now, "--now"
    if until is not None:
        return until, "--until"
    return (last or 0), "last event"


def tree_root(engine: Engine, position: int) -> str | None:
    """The transparency log's root (hex) over the first ``position`` events, the value a
    checkpoint of that size signs, so that a database audit and a feed audit of one history
    name it alike; None where the stored tree does not reach that far (or there is none)."""
    try:
        with engine.connect() as conn:
            return tree.root(conn, position).hex()
    except (ValueError, LedgerError, sqlalchemy.exc.DBAPIError):
        return None


def audit_now(engine: Engine, position: int, now: int | None, until: int | None) -> tuple[int, str]:
    """``choose_now`` for the ledger as it was at ``position``."""
    last = reader.occurred_at(engine, position) if position else None
    return choose_now(last, now, until, " or --at-position for an earlier state")


def replay_error(exc: Exception, position: int, verified: VerifyReport) -> AuditError:
    """An event this auditor cannot read (at ``position``): the audit stops rather than
    report figures that miss it, and says whether the chain verified."""
    cause = str(exc) if isinstance(exc, ValueError) else f"position {position}: {exc!r}"
    broken = (
        ""
        if verified.ok
        else f"; the hash chain does not verify from position {verified.first_broken} "
        f"({verified.reason})"
    )
    return AuditError(f"cannot replay the ledger: {cause}{broken}")


def run_audit(
    engine: Engine,
    options: AuditOptions,
    *,
    on_verify: Callable[[int], None] | None = None,
    on_replay: Callable[[int], None] | None = None,
    on_position: Callable[[int], None] | None = None,
) -> AuditRun:
    """Verify, then replay, up to one position; the callbacks drive progress bars."""
    position = audited_position(engine, options.at_position)
    if on_position is not None:
        on_position(position)
    check_window(options.since, options.until)
    # Fixed before reading, so verification and replay cover the same events even while the
    # node keeps appending.
    verified = verify_chain(engine, until=position, progress=on_verify)
    first = reader.occurred_at(engine, 1) if position else None
    now, now_source = audit_now(engine, position, options.now, options.until)

    buckets = None
    if options.series and first is not None:
        start = options.since if options.since is not None else first
        end = min(now, options.until) if options.until is not None else now
        buckets = choose_buckets(start, max(end, start + 1), options.since, options.until)

    replay = Replay(
        since=options.since,
        until=options.until,
        tokens=options.tokens,
        params=options.params,
        buckets=buckets,
    )
    try:
        replay.run(stream_events(engine, until=position, page=options.page), progress=on_replay)
    except (ValueError, KeyError, TypeError) as exc:
        raise replay_error(exc, replay.position, verified) from exc
    report = build_report(
        replay, now=now, now_source=now_source, position=position, verified=verified
    )
    return AuditRun(report, verified)
