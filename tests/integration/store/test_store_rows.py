"""Rows go to the driver as plain tuples in hand-written SQL: text that looks like SQL or
like the drivers' placeholders is stored and read back exactly, and the chain verifies."""

from __future__ import annotations

import datetime as dt

from downstream_node.ledger.store import EventStore, NewEvent
from downstream_node.ledger.verify import verify_chain

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
AWKWARD = [
    "%s",
    "%(position)s",
    "%%",
    "?",
    ":name",
    "'); DROP TABLE events; --",
    '"quoted" \\ back\\slash',
    "\x00 nul \n newline \r\n \x1a",
    "ünïcødé ✓ 🎉",
]


def test_awkward_text_is_stored_exactly(store: EventStore) -> None:
    new = [
        NewEvent("test.awkward", 1, {"text": text, "i": i}, T0, {"note": text})
        for i, text in enumerate(AWKWARD)
    ]
    result = store.append("stream %s ?", 0, new, request_id="req %(x)s ?")
    stored = store.read_stream("stream %s ?")
    assert stored == list(result.events)
    assert [e.payload["text"] for e in stored] == AWKWARD
    assert [e.meta["note"] for e in stored] == AWKWARD
    assert store.read_request("req %(x)s ?") == stored
    assert verify_chain(store.engine).ok


# Each alone in a column the store writes as it is (not inside JSON, which escapes most of
# them): PyMySQL's escaping is skipped for strings without any of them, so each must still
# find its way to the slow path, and a string with only double quotes must not need it.
RAW = ["back\\slash", "it's", "nul\x00", "new\nline", "carriage\rreturn", "ctrl\x1az", 'say "hi"']


def test_raw_special_characters_in_plain_columns_are_stored_exactly(store: EventStore) -> None:
    for i, text in enumerate(RAW):
        store.append(f"s{i} {text}", 0, [NewEvent("test.raw", 1, {}, T0)], request_id=text)
    for i, text in enumerate(RAW):
        [stored] = store.read_request(text)
        assert (stored.stream_id, stored.request_id) == (f"s{i} {text}", text)
    assert verify_chain(store.engine).ok
