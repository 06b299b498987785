"""The farm command's live display: a tqdm status line on a terminal, plain lines otherwise.

On a TTY one line is redrawn in place (``held 3 · passed 12 · failed 0 · ...``) and notable
events (refusals, lost contracts, errors) are printed above it. Without a TTY (a log file,
CI) every event is one plain line with a UTC timestamp, so the output can be followed with
``tail -f`` and grepped.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any, TextIO

from tqdm import tqdm

from .loop import Farmer, FarmerStats
from .swarm import Swarm

QUIET_ON_TTY = {"contract", "answer", "registered", "resumed"}


def _short(file_hash: str | None) -> str:
    return (file_hash or "")[:12]


def describe(kind: str, data: dict[str, Any]) -> str:
    h = _short(data.get("file_hash"))
    if kind == "registered":
        return f"registered, token {data.get('token', '')}"
    if kind == "resumed":
        return f"resumed token {data.get('token', '')} with {data.get('contracts', 0)} contract(s)"
    if kind == "contract":
        return f"took contract {h} ({data.get('size', 0)} bytes)"
    if kind == "answer":
        return f"answered {h}: {data.get('verdict')}"
    if kind == "refused":
        return f"answer for {h} refused: {data.get('status')}"
    if kind == "lost":
        return f"contract {h} ended by the node"
    if kind == "removed":
        return f"removed contract {h}"
    if kind == "repaired":
        return f"rewrote damaged chunk {h} from its seed"
    if kind == "error" and h:
        return f"error: {h}: {data.get('error')}"
    return f"{kind}: {data.get('error', data)}"


class Display:
    def __init__(self, swarm: Swarm, *, stream: TextIO | None = None, tty: bool | None = None):
        self.swarm = swarm
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.bar: tqdm | None = None
        if self.tty:
            self.bar = tqdm(
                file=self.stream, bar_format="{desc} [{elapsed}]", dynamic_ncols=True, leave=True
            )
            self.refresh()

    def summary(self, stats: FarmerStats | None = None) -> str:
        s = stats or self.swarm.totals()
        return (
            f"held {s.contracts} · passed {s.passed} · failed {s.failed} · refused {s.refused}"
            f" · lost {s.lost} · removed {s.removed} · errors {s.errors}"
        )

    def refresh(self) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"{len(self.swarm.farmers)} farmer(s): {self.summary()}")

    def __call__(self, farmer: Farmer, kind: str, data: dict[str, Any]) -> None:
        line = f"{farmer.name}: {describe(kind, data)}"
        if self.bar is not None:
            if kind not in QUIET_ON_TTY:
                self.bar.write(line, file=self.stream)
            self.refresh()
            return
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{now} {line} | {self.summary()}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.refresh()
            self.bar.close()
            self.bar = None
