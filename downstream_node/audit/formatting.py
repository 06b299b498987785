"""Formatting shared by the audit's renderings (the text table and the HTML page): the
counters' order, durations, percentages, scores and the report's header lines.
"""

from __future__ import annotations

from typing import Any

COUNTERS = ("contracts", "challenges", "passed", "failed", "rejected", "missed")


def duration(micros: int) -> str:
    """Microseconds as ``[Nd ]H:MM:SS.ffffff`` (exact: nothing is rounded away)."""
    seconds, us = divmod(micros, 1_000_000)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{hours}:{minutes:02d}:{seconds:02d}.{us:06d}"
    return f"{days}d {text}" if days else text


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.3f}%"


def score(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def header_lines(report: dict[str, Any]) -> list[str]:
    v = report["verified"]
    verified = (
        f"verified ok up to position {v['last_position']}, hash {v['last_hash']}"
        if v["ok"]
        else f"VERIFICATION FAILED at position {v['first_broken']}: {v['reason']} "
        f"(last good position {v['last_position']}, hash {v['last_hash']})"
    )
    tree_root = report["ledger"].get("tree_root")
    root = f" (tree root {tree_root})" if tree_root else ""
    w = report["window"]
    window = (
        "all time"
        if w["since"] is None and w["until"] is None
        else f"[{w['since'] or 'beginning'}, {w['until'] or 'now'})"
    )
    lines = [
        report["report"],
        f"ledger position {report['ledger']['position']}{root}: {verified}",
        f"now {report['now']} ({report['now_source']}); window {window}",
    ]
    if "scoring" in report:  # the uptime audit's; the redundancy audit scores nothing
        params = " ".join(f"{k}={v}" for k, v in report["scoring"]["params"].items())
        lines.append(f"scoring {report['scoring']['version']}: {params}")
    return lines


def text_table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """A plain-text table's lines: columns as wide as their widest cell, those in ``right``
    aligned right, the others left, a rule under the headers."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]
