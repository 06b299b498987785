"""The redundancy audit: its run, its report document and the table, JSON, CSV and HTML views.

Seconds are exact: the fold counts integer microseconds and the JSON writes them as decimals
with six places (``12.000001``), so a reader parsing numbers as decimals loses nothing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Engine

from ..ledger import reader
from ..ledger.verify import VerifyReport, verify_chain
from .formatting import duration, header_lines, text_table
from .redundancy import REDUNDANCY_EVENTS, FileStats, RedundancyReplay
from .replay import choose_buckets, stream_events
from .report import iso_us
from .run import audit_now, audited_position, check_window, replay_error

REPORT_VERSION = 1


@dataclass(frozen=True)
class RedundancyOptions:
    since: int | None = None  # window start, UTC microseconds
    until: int | None = None  # window end (exclusive); also "now"
    at_position: int | None = None
    files: frozenset[str] | None = None  # file hashes to audit (None: all)
    series: bool = False  # per-bucket replicas for the charts
    page: int = 5000


@dataclass(frozen=True)
class RedundancyRun:
    report: dict[str, Any]
    verified: VerifyReport

    @property
    def ok(self) -> bool:
        return self.verified.ok


def seconds(micros: int) -> Decimal:
    """Microseconds as exact decimal seconds."""
    return Decimal(micros).scaleb(-6)


def run_redundancy(
    engine: Engine,
    options: RedundancyOptions,
    *,
    on_verify: Callable[[int], None] | None = None,
    on_replay: Callable[[int], None] | None = None,
    on_position: Callable[[int], None] | None = None,
) -> RedundancyRun:
    """Verify, then replay, up to one position, as ``run_audit`` does for uptime."""
    position = audited_position(engine, options.at_position)
    if on_position is not None:
        on_position(position)
    check_window(options.since, options.until)
    verified = verify_chain(engine, until=position, progress=on_verify)
    now, now_source = audit_now(engine, position, None, options.until)
    fold = new_fold(engine, options, position, now)
    try:
        rows = stream_events(engine, until=position, page=options.page, source=REDUNDANCY_EVENTS)
        fold.run(rows, progress=on_replay)
    except (ValueError, KeyError, TypeError) as exc:
        raise replay_error(exc, fold.position, verified) from exc
    report = build_redundancy_report(
        fold, now=now, now_source=now_source, position=position, verified=verified
    )
    return RedundancyRun(report, verified)


def new_fold(
    engine: Engine, options: RedundancyOptions, position: int, now: int
) -> RedundancyReplay:
    buckets = None
    if options.series and position:
        first = reader.occurred_at(engine, 1) or 0
        start = options.since if options.since is not None else first
        end = min(now, options.until) if options.until is not None else now
        buckets = choose_buckets(start, max(end, start + 1), options.since, options.until)
    return RedundancyReplay(
        since=options.since, until=options.until, files=options.files, buckets=buckets
    )


# -- the document -------------------------------------------------------------------------------


def file_row(f: FileStats, fold: RedundancyReplay, now: int) -> dict[str, Any] | None:
    observed = sum(f.seconds_at.values())
    observed_now = f.observed_since is not None and (fold.since is None or now >= fold.since)
    if not observed and not observed_now:
        return None  # not monitored at any time in the window
    replica_us = sum(n * us for n, us in f.seconds_at.items())
    counts = sorted(n for n, us in f.seconds_at.items() if us)
    online_now = f.online_at(now) if observed_now else 0
    addresses = sorted({fold.addresses.get(h, h) for h in f.holders})
    return {
        "file_hash": f.file_hash,
        "target": f.target,
        "observed_seconds": seconds(observed),
        "mean_online": replica_us / observed if observed else None,
        "min_online": counts[0] if counts else None,
        "max_online": counts[-1] if counts else None,
        "seconds_at": {str(n): seconds(f.seconds_at[n]) for n in counts},
        "below_target_seconds": seconds(f.below_us),
        "unavailable_seconds": seconds(f.seconds_at.get(0, 0)),
        "replica_seconds": seconds(replica_us),
        "mean_independent_online": f.independent_us / observed if observed else None,
        "independent_replica_seconds": seconds(f.independent_us),
        "holders": sorted(f.holders),
        "addresses": addresses,
        "observed_now": observed_now,
        "online_now": online_now,
        "below_target_now": observed_now and online_now < f.target,
        "unavailable_now": observed_now and online_now == 0,
    }


def build_redundancy_report(
    fold: RedundancyReplay, *, now: int, now_source: str, position: int, verified: VerifyReport
) -> dict[str, Any]:
    figures = fold.figures(now)
    rows = []
    for file_hash in sorted(figures):
        row = file_row(figures[file_hash], fold, now)
        if row is not None:
            rows.append(row)
    observed = sum(r["observed_seconds"] for r in rows)
    below = sum(r["below_target_seconds"] for r in rows)
    totals = {
        "files": len(rows),
        "observed_seconds": seconds(0) + observed,
        "at_or_above_target_seconds": seconds(0) + observed - below,
        "below_target_seconds": seconds(0) + below,
        "unavailable_seconds": seconds(0) + sum(r["unavailable_seconds"] for r in rows),
        "files_below_target_now": sum(1 for r in rows if r["below_target_now"]),
        "files_unavailable_now": sum(1 for r in rows if r["unavailable_now"]),
    }
    report: dict[str, Any] = {
        "report": "downstream-node audit redundancy",
        "report_version": REPORT_VERSION,
        "ledger": {
            "position": position,
            "events_replayed": fold.events,
            "first_event_at": iso_us(fold.first_time),
            "last_event_at": iso_us(fold.last_time),
            "unmatched_events": fold.unmatched,
        },
        "verified": {
            "ok": verified.ok,
            "last_position": verified.last_position,
            "last_hash": verified.last_hash,
            "first_broken": verified.first_broken,
            "reason": verified.reason,
        },
        "now": iso_us(now),
        "now_us": now,
        "now_source": now_source,
        "window": {"since": iso_us(fold.since), "until": iso_us(fold.until)},
        "files_selected": sorted(fold.only) if fold.only is not None else None,
        "totals": totals,
        "files": rows,
    }
    if fold.buckets is not None:
        report["series"] = series_document(fold, figures, rows, now)
    return report


def series_document(
    fold: RedundancyReplay, figures: dict[str, FileStats], rows: list[dict[str, Any]], now: int
) -> dict[str, Any]:
    """Mean replicas online per file and bucket (``None`` where the file was not observed)."""
    b = fold.buckets
    assert b is not None
    end = min(now, fold.until) if fold.until is not None else now
    first = b.index(max(b.origin, fold.since or b.origin))
    last = b.index(max(end - 1, b.origin))
    keys = list(range(first, last + 1))
    per_file = {}
    for row in rows:
        f = figures[row["file_hash"]]
        per_file[f.file_hash] = [
            f.replica_by_bucket.get(k, 0) / f.observed_by_bucket[k]
            if f.observed_by_bucket.get(k)
            else None
            for k in keys
        ]
    return {
        "bucket_us": b.width,
        "starts": [iso_us(b.start(k)) for k in keys],
        "mean_online": per_file,
    }


# -- renderings ---------------------------------------------------------------------------------


def _encode(value: Any, indent: str) -> str:
    """JSON like ``json.dumps(indent=2)``, but decimals written exactly as numbers."""
    inner = indent + "  "
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = (f"{inner}{json.dumps(str(k))}: {_encode(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(f"{inner}{_encode(v, inner)}" for v in value) + f"\n{indent}]"
    return json.dumps(value)


def render_json(report: dict[str, Any]) -> str:
    return _encode(report, "") + "\n"


def _plain(value: Any) -> Any:
    return format(value, "f") if isinstance(value, Decimal) else value


CSV_COLUMNS = (
    "kind",
    "file_hash",
    "target",
    "files",
    "observed_seconds",
    "mean_online",
    "min_online",
    "max_online",
    "seconds_at",
    "below_target_seconds",
    "at_or_above_target_seconds",
    "unavailable_seconds",
    "mean_independent_online",
    "holders",
    "addresses",
    "online_now",
    "below_target_now",
    "unavailable_now",
    "files_below_target_now",
    "files_unavailable_now",
    "position",
    "verified",
    "verified_hash",
    "tree_root",
    "now",
    "since",
    "until",
)


def render_csv(report: dict[str, Any]) -> str:
    """One row per file and one for the totals; every row names what it was audited at."""
    common = {
        "position": report["ledger"]["position"],
        "verified": "ok" if report["verified"]["ok"] else "FAILED",
        "verified_hash": report["verified"]["last_hash"],
        "tree_root": report["ledger"].get("tree_root"),
        "now": report["now"],
        "since": report["window"]["since"],
        "until": report["window"]["until"],
    }
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in report["files"]:
        flat = {k: _plain(v) for k, v in row.items()}
        flat["seconds_at"] = json.dumps(
            {k: format(v, "f") for k, v in row["seconds_at"].items()}, separators=(",", ":")
        )
        flat["holders"] = " ".join(row["holders"])
        flat["addresses"] = " ".join(row["addresses"])
        writer.writerow({**flat, "kind": "file", **common})
    totals = {k: _plain(v) for k, v in report["totals"].items()}
    writer.writerow({**totals, "kind": "total", **common})
    return out.getvalue()


def _micros(value: Decimal) -> int:
    return int(value.scaleb(6))


def _mean(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_table(report: dict[str, Any]) -> str:
    t = report["totals"]
    lines = header_lines(report)
    lines += ["", f"TOTALS ({t['files']} files)"]
    lines += text_table(
        ["at/above target", "below target", "unavailable", "below now", "unavailable now"],
        [
            [
                duration(_micros(t["at_or_above_target_seconds"])),
                duration(_micros(t["below_target_seconds"])),
                duration(_micros(t["unavailable_seconds"])),
                str(t["files_below_target_now"]),
                str(t["files_unavailable_now"]),
            ]
        ],
        set(range(5)),
    )
    lines += ["", "FILES"]
    rows = [
        [
            r["file_hash"][:16],
            str(r["target"]),
            _mean(r["mean_online"]),
            "-" if r["min_online"] is None else str(r["min_online"]),
            "-" if r["max_online"] is None else str(r["max_online"]),
            _mean(r["mean_independent_online"]),
            duration(_micros(r["observed_seconds"])),
            duration(_micros(r["below_target_seconds"])),
            duration(_micros(r["unavailable_seconds"])),
            str(r["online_now"]) if r["observed_now"] else "-",
            str(len(r["holders"])),
            str(len(r["addresses"])),
            ", ".join(f"{n} for {duration(_micros(s))}" for n, s in r["seconds_at"].items()),
        ]
        for r in report["files"]
    ]
    lines += text_table(
        [
            "file",
            "target",
            "mean",
            "min",
            "max",
            "indep",
            "observed",
            "below",
            "unavailable",
            "now",
            "holders",
            "addresses",
            "replicas online for (time at each count)",
        ],
        rows,
        set(range(1, 12)),
    )
    return "\n".join(lines) + "\n"


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return render_json(report)
    if fmt == "csv":
        return render_csv(report)
    if fmt == "html":
        from .redundancy_html import render_redundancy_html

        return render_redundancy_html(report)
    return render_table(report)
