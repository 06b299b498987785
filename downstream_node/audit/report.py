"""The audit report as one plain document, and its table, JSON and CSV renderings.

The document holds only what the events up to the audited position and the options decide (no
wall-clock time of the run), so equal inputs give byte-identical reports.
"""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Any

from ..domain.clock import from_micros
from ..ledger.verify import VerifyReport
from .formatting import COUNTERS, duration, header_lines, percent, score, text_table
from .html import render_html
from .reputation import SCORING_VERSION

if TYPE_CHECKING:
    from .replay import Replay

REPORT_VERSION = 1


def iso_us(micros: int | None) -> str | None:
    """UTC microseconds -> ISO 8601 with microseconds and a Z (None stays None)."""
    if micros is None:
        return None
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fraction(online: int, total: int) -> float | None:
    return online / total if total else None


def build_report(
    replay: Replay, *, now: int, now_source: str, position: int, verified: VerifyReport
) -> dict[str, Any]:
    params = replay.params
    contracts_by_token: dict[str, int] = {}
    contract_rows = []
    for c in sorted(replay.contracts.values(), key=lambda c: (c.started_at, c.contract_id)):
        if not replay.held_in_window(c):
            continue
        contracts_by_token[c.token_hash] = contracts_by_token.get(c.token_hash, 0) + 1
        online, total = replay.contract_online(c, now), replay.contract_total(c, now)
        contract_rows.append(
            {
                "contract_id": c.contract_id,
                "token_hash": c.token_hash,
                "file_hash": c.file_hash,
                "started_at": iso_us(c.started_at),
                "ended_at": iso_us(c.ended_at),
                "end_reason": c.end_reason,
                "challenges": c.challenges,
                "passed": c.passed,
                "failed": c.failed,
                "rejected": c.rejected,
                "missed": c.missed,
                "online_us": online,
                "total_us": total,
                "uptime": fraction(online, total),
            }
        )

    token_rows = []
    totals = dict.fromkeys(COUNTERS, 0) | {"online_us": 0, "total_us": 0}
    for t in sorted(replay.tokens.values(), key=lambda t: (t.created_at or 0, t.token_hash)):
        if replay.until is not None and t.created_at is not None and t.created_at >= replay.until:
            continue  # created after the window
        rep = t.reputation
        online_score, windows = rep.online_score(now, params, replay.pending_windows(t, now))
        row = {
            "token_hash": t.token_hash,
            "address": t.address,
            "created_at": iso_us(t.created_at),
            "deleted_at": iso_us(t.deleted_at),
            "contracts": contracts_by_token.get(t.token_hash, 0),
            "challenges": t.challenges,
            "passed": t.passed,
            "failed": t.failed,
            "rejected": t.rejected,
            "missed": t.missed,
            "online_us": t.coverage.online_in_window(now),
            "total_us": t.coverage.total_in_window(now),
        }
        row["uptime"] = fraction(row["online_us"], row["total_us"])
        row["reputation"] = {
            "alpha": rep.alpha,
            "beta": rep.beta,
            "audits": rep.audits,
            "audit_score": rep.audit_score(),
            "online_score": online_score,
            "online_windows": windows,
            "status": rep.status(online_score, params),
        }
        for name in totals:
            totals[name] += row[name]
        token_rows.append(row)
    totals["tokens"] = len(token_rows)
    totals["uptime"] = fraction(totals["online_us"], totals["total_us"])

    report: dict[str, Any] = {
        "report": "downstream-node audit uptime",
        "report_version": REPORT_VERSION,
        "ledger": {
            "position": position,
            "events_replayed": replay.events,
            "first_event_at": iso_us(replay.first_time),
            "last_event_at": iso_us(replay.last_time),
            "unmatched_events": replay.unmatched,
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
        "window": {
            "since": iso_us(replay.since),
            "until": iso_us(replay.until),
        },
        "tokens_selected": sorted(replay.only) if replay.only is not None else None,
        "scoring": {"version": SCORING_VERSION, "params": params.todict()},
        "totals": totals,
        "tokens": token_rows,
        "contracts": contract_rows,
    }
    if replay.series is not None:
        report["series"] = series_document(replay, now)
    return report


def series_document(replay: Replay, now: int) -> dict[str, Any]:
    """Per-bucket figures for the charts: answers (all tokens) and uptime per token."""
    from .replay import BucketedCoverage

    assert replay.series is not None
    b = replay.series.buckets
    end = min(now, replay.until) if replay.until is not None else now
    first = b.index(max(b.origin, replay.since or b.origin))
    last = b.index(max(end - 1, b.origin))
    keys = list(range(first, last + 1))
    per_token = {}
    for t in replay.tokens.values():
        cov = t.coverage
        if not isinstance(cov, BucketedCoverage) or not cov.first_start:
            continue
        online = dict(cov.online_by_bucket)
        b.spread(online, *cov.open_segment(now))  # the open segment, as measured now
        total: dict[int, int] = {}
        b.spread(total, cov.first_start, now)
        per_token[t.token_hash] = [
            fraction(online.get(k, 0), total[k]) if total.get(k) else None for k in keys
        ]
    return {
        "bucket_us": b.width,
        "starts": [iso_us(b.start(k)) for k in keys],
        "passed": [replay.series.passed.get(k, 0) for k in keys],
        "failed": [replay.series.failed.get(k, 0) for k in keys],
        "missed": [replay.series.missed.get(k, 0) for k in keys],
        "uptime": per_token,
    }


# -- renderings ---------------------------------------------------------------------------------


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False) + "\n"


CSV_COLUMNS = (
    "kind",
    "token_hash",
    "address",
    "contract_id",
    "file_hash",
    "started_at",
    "ended_at",
    "end_reason",
    *COUNTERS,
    "online_us",
    "total_us",
    "uptime",
    "audit_alpha",
    "audit_beta",
    "audit_score",
    "online_score",
    "status",
    "position",
    "verified",
    "verified_hash",
    "tree_root",
    "now",
    "since",
    "until",
    "scoring_version",
    "scoring_params",
)


def render_csv(report: dict[str, Any]) -> str:
    """One row per token, per contract and the totals; each row names what it was audited at.

    Plain CSV without comment lines, so any reader takes it; the identifying columns repeat.
    """
    common = {
        "position": report["ledger"]["position"],
        "verified": "ok" if report["verified"]["ok"] else "FAILED",
        "verified_hash": report["verified"]["last_hash"],
        "tree_root": report["ledger"].get("tree_root"),
        "now": report["now"],
        "since": report["window"]["since"],
        "until": report["window"]["until"],
        "scoring_version": report["scoring"]["version"],
        "scoring_params": json.dumps(report["scoring"]["params"], separators=(",", ":")),
    }
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in report["tokens"]:
        rep = row["reputation"]
        writer.writerow(
            {
                **row,
                "kind": "token",
                "started_at": row["created_at"],
                "ended_at": row["deleted_at"],
                "audit_alpha": rep["alpha"],
                "audit_beta": rep["beta"],
                "audit_score": rep["audit_score"],
                "online_score": rep["online_score"],
                "status": rep["status"],
                **common,
            }
        )
    for row in report["contracts"]:
        writer.writerow({**row, "kind": "contract", **common})
    writer.writerow({**report["totals"], "kind": "total", **common})
    return out.getvalue()


def render_table(report: dict[str, Any]) -> str:
    lines = header_lines(report)
    counters = ["contracts", "challenges", "passed", "failed", "rejected", "missed"]
    t = report["totals"]
    lines += ["", f"TOTALS ({t['tokens']} tokens)"]
    lines += text_table(
        [*counters, "online", "total", "uptime"],
        [
            [
                *(str(t[c]) for c in counters),
                duration(t["online_us"]),
                duration(t["total_us"]),
                percent(t["uptime"]),
            ]
        ],
        set(range(9)),
    )
    lines += ["", "TOKENS"]
    rows = [
        [
            r["token_hash"][:16],
            r["address"] or "-",
            *(str(r[c]) for c in counters),
            duration(r["online_us"]),
            duration(r["total_us"]),
            percent(r["uptime"]),
            score(r["reputation"]["audit_score"]),
            score(r["reputation"]["online_score"]),
            r["reputation"]["status"],
        ]
        for r in report["tokens"]
    ]
    lines += text_table(
        [
            "token",
            "address",
            *counters,
            "online",
            "total",
            "uptime",
            "audit",
            "online_sc",
            "status",
        ],
        rows,
        set(range(2, 13)),
    )
    lines += ["", "CONTRACTS"]
    rows = [
        [
            r["contract_id"][:16],
            r["token_hash"][:16],
            r["file_hash"][:16],
            r["started_at"],
            r["ended_at"] or "-",
            r["end_reason"] or "-",
            *(str(r[c]) for c in counters[1:]),
            duration(r["online_us"]),
            duration(r["total_us"]),
            percent(r["uptime"]),
        ]
        for r in report["contracts"]
    ]
    lines += text_table(
        [
            "contract",
            "token",
            "file",
            "started",
            "ended",
            "reason",
            *counters[1:],
            "online",
            "total",
            "uptime",
        ],
        rows,
        set(range(6, 14)),
    )
    return "\n".join(lines) + "\n"


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return render_json(report)
    if fmt == "csv":
        return render_csv(report)
    if fmt == "html":
        return render_html(report)
    return render_table(report)
