"""The redundancy report as one self-contained HTML file: totals, charts and the file table.

Charts as in the uptime report (matplotlib, SVG in ``data:`` URIs, no network): replicas
online over time per file (a heat map beyond a dozen files) and the time spent at each count.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from .formatting import duration
from .html import _cell, _svg_img, _table, page, span
from .redundancy_report import _mean, _micros

MAX_LINES = 12  # files drawn as lines; beyond this, one heat-map row per file
MAX_ROWS = 200  # heat-map rows (the files longest below target first)


def charts(report: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    series = report.get("series")
    out: list[tuple[str, str]] = []
    with matplotlib.rc_context({"text.parse_math": False}):
        if series and series["starts"] and series["mean_online"]:
            out.append(_over_time(report, series))
        if report["files"]:
            out.append(_distribution(report))
    return out


def _over_time(report: dict[str, Any], series: dict[str, Any]) -> tuple[str, str]:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
    from matplotlib.figure import Figure

    times = [dt.datetime.fromisoformat(s.replace("Z", "+00:00")) for s in series["starts"]]
    width = dt.timedelta(microseconds=series["bucket_us"])
    files = {r["file_hash"]: r for r in report["files"]}
    per = f"per {span(series['bucket_us'])}"
    if len(series["mean_online"]) <= MAX_LINES:
        fig = Figure(figsize=(10, 4.2))
        ax = fig.add_subplot()
        centres = [t + width / 2 for t in times]
        for file_hash, values in series["mean_online"].items():
            line = [float("nan") if v is None else v for v in values]
            target = files[file_hash]["target"]
            drawn = ax.plot(centres, line, marker=".", label=f"{file_hash[:10]}… (target {target})")
            ax.axhline(target, color=drawn[0].get_color(), linestyle=":", linewidth=0.8)
        ax.set_ylabel("replicas online (mean in bucket)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="lower left", ncol=2)
        ax.grid(alpha=0.3)
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        ax.set_title(f"Replicas online per file, {per} (dotted: the target)")
        return "Replicas online over time", _svg_img(fig, "replicas online per file over time")
    # Many files: one row each, coloured by replicas online as a share of the target (red:
    # none, yellow: below target, green: at or above it).
    ranked = sorted(
        series["mean_online"],
        key=lambda h: (-_micros(files[h]["below_target_seconds"]), h),
    )[:MAX_ROWS]
    grid = [
        [
            float("nan") if v is None else min(1.0, v / max(1, files[h]["target"]))
            for v in series["mean_online"][h]
        ]
        for h in ranked
    ]
    fig = Figure(figsize=(10, 1.5 + 0.05 * len(ranked)))
    ax = fig.add_subplot()
    left, right = date2num(times[0]), date2num(times[-1] + width)
    image = ax.imshow(
        grid,
        aspect="auto",
        interpolation="nearest",
        cmap="RdYlGn",
        vmin=0,
        vmax=1,
        extent=(left, right, len(ranked), 0),
    )
    ax.xaxis_date()
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_yticks([])
    ax.set_ylabel(f"{len(ranked)} files (longest below target on top)")
    fig.colorbar(image, ax=ax, label="replicas online / target")
    ax.set_title(f"Replicas online as a share of the target, {per}")
    return "Replicas online over time", _svg_img(fig, "heat map of replicas online per file")


def _distribution(report: dict[str, Any]) -> tuple[str, str]:
    from matplotlib.figure import Figure

    hours: dict[int, float] = {}
    for row in report["files"]:
        for n, s in row["seconds_at"].items():
            hours[int(n)] = hours.get(int(n), 0.0) + float(s) / 3600
    counts = list(range(0, max(hours, default=0) + 1))
    fig = Figure(figsize=(10, 3.4))
    ax = fig.add_subplot()
    colours = ["#ea4335" if n == 0 else "#4285f4" for n in counts]
    ax.bar([str(n) for n in counts], [hours.get(n, 0.0) for n in counts], color=colours)
    ax.set_xlabel("replicas online")
    ax.set_ylabel("file-hours")
    ax.set_title("Time spent at each count of replicas online (all files; red: unavailable)")
    ax.grid(alpha=0.3, axis="y")
    return "Time at each replica count", _svg_img(fig, "file-hours at each replica count")


def render_redundancy_html(report: dict[str, Any]) -> str:
    t = report["totals"]
    cards = [
        ("files", str(t["files"])),
        ("below target now", str(t["files_below_target_now"])),
        ("unavailable now", str(t["files_unavailable_now"])),
        ("at/above target", duration(_micros(t["at_or_above_target_seconds"]))),
        ("below target", duration(_micros(t["below_target_seconds"]))),
        ("unavailable", duration(_micros(t["unavailable_seconds"]))),
    ]

    def secs(value: Decimal) -> str:
        return _cell(duration(_micros(value)), format(value, "f"))

    rows = [
        _cell(r["file_hash"][:16], r["file_hash"], left=True)
        + _cell(r["target"])
        + _cell(_mean(r["mean_online"]), r["mean_online"] if r["mean_online"] is not None else -1)
        + _cell("-" if r["min_online"] is None else r["min_online"])
        + _cell("-" if r["max_online"] is None else r["max_online"])
        + _cell(
            _mean(r["mean_independent_online"]),
            r["mean_independent_online"] if r["mean_independent_online"] is not None else -1,
        )
        + secs(r["observed_seconds"])
        + secs(r["below_target_seconds"])
        + secs(r["unavailable_seconds"])
        + _cell(r["online_now"] if r["observed_now"] else "-")
        + _cell(len(r["holders"]))
        + _cell(len(r["addresses"]))
        for r in report["files"]
    ]
    table = _table(
        [
            ("file", True),
            ("target", False),
            ("mean online", False),
            ("min", False),
            ("max", False),
            ("mean independent", False),
            ("observed", False),
            ("below target", False),
            ("unavailable", False),
            ("online now", False),
            ("holders", False),
            ("addresses", False),
        ],
        rows,
    )
    position = report["ledger"]["position"]
    body = f"""<h2>Files</h2>
{table}
<p class="meta">A replica is online while its contract is (docs/audit.md). Replaying the
events up to position {position} reproduces every figure above.</p>"""
    return page(report, "Redundancy audit", cards, charts(report), body)
