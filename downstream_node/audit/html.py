"""The audit report as one self-contained HTML file: summary, tables and charts.

Charts are drawn by matplotlib (no pyplot, no display) as SVG embedded in ``data:`` URIs, and
the few lines of sorting script are inline: viewing the file needs no network at all.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from html import escape
from typing import Any

from .formatting import COUNTERS, duration, header_lines, percent, score

MAX_LINES = 12  # uptime lines drawn in colour with a legend entry; the rest are drawn grey
MAX_BARS = 30  # tokens in the pass/fail chart (those with the most challenges)

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:2em}
.meta{color:#555;font-size:.9em}.meta code{font-size:.95em}
.ok{background:#e6f4ea;border:1px solid #9ccfa8;padding:.6em 1em;border-radius:6px}
.bad{background:#fce8e6;border:1px solid #e3a39c;padding:.6em 1em;border-radius:6px}
.cards{display:flex;flex-wrap:wrap;gap:1em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.4em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border-bottom:1px solid #e4e4e4;padding:.25em .6em;text-align:right;white-space:nowrap}
th{background:#f5f5f5;cursor:pointer;user-select:none}
td.l,th.l{text-align:left}code{font-family:ui-monospace,Menlo,Consolas,monospace}
.status-good{color:#1e7b34}.status-suspended{color:#b06000}.status-disqualified{color:#b3261e}
figure{margin:1em 0}figure img{max-width:100%;height:auto}
"""

# Click a header to sort its table; numbers sort numerically (data-v holds the raw value).
SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function(th, i) {
  th.addEventListener('click', function() {
    var body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
    var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    rows.sort(function(a, b) {
      var x = a.cells[i].dataset.v, y = b.cells[i].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      if (!isNaN(nx) && !isNaN(ny)) return dir * (nx - ny);
      return dir * String(x).localeCompare(String(y));
    });
    rows.forEach(function(r) { body.appendChild(r); });
  });
});
"""


def _cell(text: Any, value: Any = None, left: bool = False, cls: str = "") -> str:
    classes = " ".join(c for c in ("l" if left else "", cls) if c)
    attrs = f' class="{classes}"' if classes else ""
    raw = text if value is None else value
    return f'<td{attrs} data-v="{escape(str(raw), quote=True)}">{escape(str(text))}</td>'


def _table(headers: list[tuple[str, bool]], rows: list[str]) -> str:
    head = "".join(
        f'<th class="l">{escape(h)}</th>' if left else f"<th>{escape(h)}</th>"
        for h, left in headers
    )
    return (
        f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>'
        + "".join(f"<tr>{r}</tr>" for r in rows)
        + "</tbody></table>"
    )


def _label(token: dict[str, Any]) -> str:
    address = token.get("address") or "?"
    return f"{address[:10]}… {token['token_hash'][:8]}"


def span(micros: int) -> str:
    """A bucket width in words: ``5 min``, ``6 h``, ``1 d``."""
    seconds = micros // 1_000_000
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _svg_img(fig: Any, alt: str) -> str:
    import matplotlib

    # A fixed hash salt gives stable element ids and no date metadata: the same report renders
    # to the same bytes. Text stays text (smaller files, crisp at any zoom).
    with matplotlib.rc_context({"svg.hashsalt": "downstream-audit", "svg.fonttype": "none"}):
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{escape(alt, quote=True)}" src="data:image/svg+xml;base64,{data}">'


def _times(series: dict[str, Any]) -> list[dt.datetime]:
    return [dt.datetime.fromisoformat(s.replace("Z", "+00:00")) for s in series["starts"]]


def charts(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, <img>) for each chart; none when the report carries no series or no events."""
    series = report.get("series")
    if not series or not series["starts"]:
        return []
    import matplotlib

    # Labels come from the ledger (addresses): never read "$...$" in them as math.
    with matplotlib.rc_context({"text.parse_math": False}):
        return _draw(report, series)


def _draw(report: dict[str, Any], series: dict[str, Any]) -> list[tuple[str, str]]:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    out = []
    times = _times(series)
    width = dt.timedelta(microseconds=series["bucket_us"])
    hours = series["bucket_us"] / 3_600_000_000
    tokens = {t["token_hash"]: t for t in report["tokens"]}

    # 1. Uptime per farmer over time: one line per token, the busiest in colour.
    fig = Figure(figsize=(10, 4.2))
    ax = fig.add_subplot()
    ranked = sorted(series["uptime"], key=lambda h: -(tokens.get(h, {}).get("total_us", 0)))
    for i, token_hash in enumerate(ranked):
        values = [float("nan") if v is None else 100 * v for v in series["uptime"][token_hash]]
        centres = [t + width / 2 for t in times]
        if i < MAX_LINES:
            label = _label(tokens.get(token_hash, {"token_hash": token_hash}))
            ax.plot(centres, values, marker=".", linewidth=1.4, label=label)
        else:
            ax.plot(centres, values, color="#bbbbbb", linewidth=0.8, zorder=0)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("uptime in bucket (%)")
    ax.set_title(f"Uptime per farmer (token) over time, per {span(series['bucket_us'])}")
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.grid(alpha=0.3)
    if ranked:
        ax.legend(fontsize=7, loc="lower left", ncol=2)
    out.append(("Uptime per farmer over time", _svg_img(fig, "uptime per farmer over time")))

    # 2. Answers per hour (all tokens), stacked passed / failed, misses on top.
    fig = Figure(figsize=(10, 3.6))
    ax = fig.add_subplot()
    passed = [n / hours for n in series["passed"]]
    failed = [n / hours for n in series["failed"]]
    missed = [n / hours for n in series["missed"]]
    bar_width = width * 0.9
    ax.bar(times, passed, width=bar_width, align="edge", color="#34a853", label="passed")
    ax.bar(
        times, failed, width=bar_width, align="edge", bottom=passed, color="#ea4335", label="failed"
    )
    ax.bar(
        times,
        missed,
        width=bar_width,
        align="edge",
        bottom=[p + f for p, f in zip(passed, failed, strict=True)],
        color="#fbbc04",
        label="missed",
    )
    ax.set_ylabel("per hour")
    ax.set_title("Answers per hour (all audited tokens)")
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    out.append(("Answers per hour", _svg_img(fig, "answers per hour")))

    # 3. Pass / fail / missed per token.
    busiest = sorted(report["tokens"], key=lambda t: (-t["challenges"], t["token_hash"]))[:MAX_BARS]
    if busiest:
        fig = Figure(figsize=(10, 0.9 + 0.28 * len(busiest)))
        ax = fig.add_subplot()
        labels = [_label(t) for t in busiest]
        p = [t["passed"] for t in busiest]
        f = [t["failed"] for t in busiest]
        m = [t["missed"] for t in busiest]
        ax.barh(labels, p, color="#34a853", label="passed")
        ax.barh(labels, f, left=p, color="#ea4335", label="failed")
        ax.barh(
            labels,
            m,
            left=[a + b for a, b in zip(p, f, strict=True)],
            color="#fbbc04",
            label="missed",
        )
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlabel("challenges")
        ax.set_title("Passed, failed and missed challenges per token")
        ax.legend(fontsize=8, loc="lower right")
        out.append(("Pass / fail per token", _svg_img(fig, "pass and fail per token")))
    return out


def page(
    report: dict[str, Any],
    heading: str,
    cards: list[tuple[str, str]],
    figures: list[tuple[str, str]],
    body: str,
) -> str:
    """A whole self-contained report page: the header naming the audited position, the
    chain's verdict as a banner, the cards, the charts, then ``body`` (the tables, HTML)."""
    v = report["verified"]
    head = header_lines(report)
    banner_cls = "ok" if v["ok"] else "bad"
    banner = (
        f"Hash chain verified up to position {v['last_position']}; last hash "
        f"<code>{escape(v['last_hash'])}</code>"
        if v["ok"]
        else f"HASH CHAIN VERIFICATION FAILED at position {escape(str(v['first_broken']))}: "
        f"{escape(v['reason'])} (last good position {v['last_position']}, hash "
        f"<code>{escape(v['last_hash'])}</code>)"
    )
    card_html = "".join(
        f'<div class="card">{escape(k)}<b>{escape(val)}</b></div>' for k, val in cards
    )
    figure_html = "".join(
        f"<h2>{escape(title)}</h2><figure>{img}</figure>" for title, img in figures
    )
    position = report["ledger"]["position"]
    meta = "<br>".join(escape(line) for line in head[1:])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(head[0])} at position {position}</title>
<style>{CSS}</style></head><body>
<h1>{escape(heading)}</h1>
<p class="meta">{meta}</p>
<p class="{banner_cls}">{banner}</p>
<div class="cards">{card_html}</div>
{figure_html}
{body}
<script>{SCRIPT}</script>
</body></html>
"""


def render_html(report: dict[str, Any]) -> str:
    t = report["totals"]
    cards = [
        ("tokens", str(t["tokens"])),
        ("contracts", str(t["contracts"])),
        ("challenges", str(t["challenges"])),
        ("passed", str(t["passed"])),
        ("failed", str(t["failed"])),
        ("missed", str(t["missed"])),
        ("overall uptime", percent(t["uptime"])),
        ("online", duration(t["online_us"])),
    ]
    token_rows = []
    for r in report["tokens"]:
        rep = r["reputation"]
        token_rows.append(
            _cell(r["token_hash"][:16], r["token_hash"], left=True)
            + _cell(r["address"] or "-", left=True)
            + "".join(_cell(r[c]) for c in COUNTERS)
            + _cell(duration(r["online_us"]), r["online_us"])
            + _cell(duration(r["total_us"]), r["total_us"])
            + _cell(percent(r["uptime"]), r["uptime"] if r["uptime"] is not None else -1)
            + _cell(score(rep["audit_score"]), rep["audit_score"])
            + _cell(
                score(rep["online_score"]),
                rep["online_score"] if rep["online_score"] is not None else -1,
            )
            + _cell(rep["status"], left=True, cls=f"status-{rep['status']}")
        )
    contract_rows = [
        _cell(r["contract_id"][:16], r["contract_id"], left=True)
        + _cell(r["token_hash"][:16], r["token_hash"], left=True)
        + _cell(r["file_hash"][:16], r["file_hash"], left=True)
        + _cell(r["started_at"], left=True)
        + _cell(r["ended_at"] or "-", left=True)
        + _cell(r["end_reason"] or "-", left=True)
        + "".join(_cell(r[c]) for c in COUNTERS[1:])
        + _cell(duration(r["online_us"]), r["online_us"])
        + _cell(duration(r["total_us"]), r["total_us"])
        + _cell(percent(r["uptime"]), r["uptime"] if r["uptime"] is not None else -1)
        for r in report["contracts"]
    ]
    params = "".join(
        f"<tr><td class=l>{escape(str(k))}</td><td>{escape(str(val))}</td></tr>"
        for k, val in report["scoring"]["params"].items()
    )
    counters = [(c, False) for c in COUNTERS]
    token_table = _table(
        [
            ("token", True),
            ("address", True),
            *counters,
            ("online", False),
            ("total", False),
            ("uptime", False),
            ("audit score", False),
            ("online score", False),
            ("status", True),
        ],
        token_rows,
    )
    contract_table = _table(
        [
            ("contract", True),
            ("token", True),
            ("file", True),
            ("started", True),
            ("ended", True),
            ("reason", True),
            *counters[1:],
            ("online", False),
            ("total", False),
            ("uptime", False),
        ],
        contract_rows,
    )
    position = report["ledger"]["position"]
    body = f"""<h2>Tokens</h2>
{token_table}
<h2>Contracts ({len(report["contracts"])})</h2>
<details><summary>show the contracts</summary>
{contract_table}
</details>
<h2>Scoring {escape(report["scoring"]["version"])}</h2>
<table>{params}</table>
<p class="meta">Replaying the events up to position {position} with these parameters
reproduces every figure and score above.</p>"""
    return page(report, "Uptime audit", cards, charts(report), body)
