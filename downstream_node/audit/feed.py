"""The audit from the public feed (a node's ``/api/ledger/events``) or an export, with no
database: every public form is hashed into the tree, the tree's root at the checkpoint's size
must be the signed root, and the same ``Replay`` as the database audit folds the events.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..domain import events as ev
from ..domain.errors import UnknownEvent
from ..domain.public import PUBLIC_FIELDS, leaf_hash, leaf_of_public
from ..ledger.verify import VerifyReport
from ..tlog import note
from ..tlog.checkpoint import Checkpoint, CheckpointError
from ..tlog.merkle import CompactRange
from .replay import Replay, Row
from .report import build_report
from .run import AuditError, AuditOptions, AuditRun, check_window, choose_now

FEED_PAGE = 1000
# An export line as ``ledger export`` writes it: the public form's own bytes, then the leaf.
_EXPORTED = re.compile(rb'\A(\{.*),"leaf_hash":"([A-Za-z0-9+/]{43}=)"\}\r?\n?\Z', re.S)

Item = tuple[bytes | None, dict[str, Any]]
"""A public form as read: its exact bytes when the source kept them (an export's line), and
the object (with ``leaf_hash`` when the source gave one)."""


def read_export(path: Path) -> Iterator[Item]:
    """An export's lines. A line as the node writes it is hashed as the bytes it holds (they
    are the form, if they hash into the signed tree); any other is serialised canonically."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            found = _EXPORTED.match(line)
            data = found[1] + b"}" if found else None
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise AuditError(f"{path}:{number}: not JSON: {exc}") from None
            yield data, obj


def read_feed(url: str, *, opener: Callable[..., Any] = urllib.request.urlopen) -> Iterator[Item]:
    """A node's public feed, page after page until an empty one."""
    after = 0
    base = url.rstrip("/")
    while True:
        query = urllib.parse.urlencode({"after": after, "limit": FEED_PAGE})
        try:
            with opener(f"{base}/api/ledger/events?{query}", timeout=60) as response:
                page = json.loads(response.read())
        except (OSError, ValueError) as exc:
            raise AuditError(f"cannot read the feed at {base} after {after}: {exc}") from None
        events = page.get("events") if isinstance(page, dict) else None
        if not isinstance(events, list):
            raise AuditError(f"{base}: not a feed page (no events list)")
        if not events:
            return
        for obj in events:
            yield None, obj
        after = int(page.get("next", after + len(events)))


def read_source(source: str) -> Iterator[Item]:
    if source.startswith(("http://", "https://")):
        return read_feed(source)
    path = Path(source)
    if not path.is_file():
        raise AuditError(f"{source}: neither a URL nor a file")
    return read_export(path)


def open_checkpoint(text: str, vkey: str) -> Checkpoint:
    try:
        return Checkpoint.verify(text, note.parse_verifier(vkey.strip()))
    except (note.NoteError, CheckpointError) as exc:
        raise AuditError(f"the checkpoint does not verify under that key: {exc}") from None


class _Broken(Exception):
    def __init__(self, position: int, reason: str) -> None:
        super().__init__(reason)
        self.position, self.reason = position, reason


def _rows(items: Iterable[Item], frontier: CompactRange, size: int) -> Iterator[Row]:
    """The first ``size`` public forms as replay rows, each hashed into ``frontier``."""
    known: set[tuple[str, int]] = set()
    handled = Replay.HANDLED
    for data, obj in items:
        expected = frontier.size + 1
        if frontier.size == size:
            return
        if not isinstance(obj, dict) or any(k not in obj for k in PUBLIC_FIELDS):
            raise _Broken(expected, f"the event at position {expected} is not a public form")
        if obj["position"] != expected:
            raise _Broken(expected, f"position {expected} is missing from the feed")
        leaf = leaf_hash(data) if data is not None else leaf_of_public(obj)
        served = obj.get("leaf_hash")
        if served is not None:
            try:
                given = base64.b64decode(served, validate=True)
            except (binascii.Error, TypeError, ValueError):
                given = b""
            if given != leaf:
                raise _Broken(
                    expected, f"the leaf_hash given at position {expected} is not its form's"
                )
        frontier.append(leaf)
        event_type, schema = obj["event_type"], obj["schema_version"]
        if (event_type, schema) not in known:
            try:
                ev.known(event_type, schema)
            except UnknownEvent as exc:
                raise AuditError(f"{exc} at position {expected}") from None
            known.add((event_type, schema))
        payload = obj["payload"] if event_type in handled else None
        yield Row(expected, event_type, obj["occurred_at"], payload)


def run_feed_audit(
    items: Iterable[Item],
    checkpoint: Checkpoint,
    options: AuditOptions,
    *,
    on_replay: Callable[[int], None] | None = None,
) -> AuditRun:
    """Replay the checkpoint's events from ``items`` and check them against its root.

    The figures cover exactly the checkpoint's ``size`` events; the report's ``verified``
    section says whether they are the signed history (``last_hash``: the recomputed root)."""
    if options.at_position is not None:
        raise AuditError("--at-position does not apply to a feed: the checkpoint's size does")
    if options.series:
        raise AuditError("the HTML report needs the database; use table, json or csv")
    check_window(options.since, options.until)
    replay = Replay(
        since=options.since, until=options.until, tokens=options.tokens, params=options.params
    )
    frontier = CompactRange()
    size = checkpoint.size
    broken: _Broken | None = None
    try:
        replay.run(_rows(items, frontier, size), progress=on_replay)
    except _Broken as exc:
        broken = exc
    except (KeyError, TypeError) as exc:
        raise AuditError(f"cannot replay the feed at position {replay.position}: {exc!r}") from exc
    root = frontier.root()
    last = frontier.size
    if broken is not None:
        verified = VerifyReport(False, last, last, root.hex(), broken.position, broken.reason)
    elif last < size:
        reason = (
            f"the feed is shorter than the checkpoint: {last} events, the checkpoint covers {size}"
        )
        verified = VerifyReport(False, last, last, root.hex(), last + 1, reason)
    elif root != checkpoint.root_hash:
        reason = (
            f"a different history: the feed's {size} events do not hash to the checkpoint's root"
        )
        verified = VerifyReport(False, last, last, root.hex(), 1, reason)
    else:
        verified = VerifyReport(True, last, last, root.hex())

    now, now_source = choose_now(replay.last_time, options.now, options.until)
    report = build_report(replay, now=now, now_source=now_source, position=last, verified=verified)
    report["ledger"]["tree_root"] = root.hex()  # what the database audit names too
    return AuditRun(report, verified)
