"""The public feed: events read through ``reader`` and turned into their public forms, with
their leaf hashes; and the tree recomputed from them, which is what a check against a
checkpoint trusts (never the stored tree, which whoever edits the events can edit too).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy.engine import Connection, Engine

from ..domain.public import PublicForms, leaf_hash
from ..tlog.merkle import MemoryTree
from .reader import PUBLIC_COLUMNS


def public_lines(
    engine: Engine, forms: PublicForms, after: int = 0, until: int | None = None, page: int = 2000
) -> Iterator[tuple[int, bytes, bytes]]:
    """(position, public form bytes, leaf hash) in position order, in short read pages."""
    stop = 2**63 - 1 if until is None else until
    for rows in PUBLIC_COLUMNS.pages(engine, after, stop, page):
        for row in rows:
            data = forms.form_bytes(*row)
            yield row[0], data, leaf_hash(data)


def export_line(data: bytes, leaf: bytes) -> bytes:
    """One JSON Lines record: the public form with ``leaf_hash`` (base64) added."""
    return data[:-1] + b',"leaf_hash":"' + base64.b64encode(leaf) + b'"}\n'


def page(conn: Connection, forms: PublicForms, after: int, limit: int) -> list[dict]:
    """At most ``limit`` public forms after ``after``, each with its ``leaf_hash``, in
    ``conn``'s read transaction (one query)."""
    out = []
    for row in PUBLIC_COLUMNS.stream(conn, after, after + limit):
        data = forms.form_bytes(*row)
        obj = json.loads(data)
        obj["leaf_hash"] = base64.b64encode(leaf_hash(data)).decode()
        out.append(obj)
    return out


@dataclass
class Recomputed:
    """The tree over the events as they are now, and the first gap in positions if any."""

    tree: MemoryTree
    gap: int | None = None


def recompute(engine: Engine, forms: PublicForms, until: int | None = None) -> Recomputed:
    """The Merkle tree of the events' public forms from position 1, up to the first missing
    position (a deleted event) if there is one."""
    tree = MemoryTree()
    for position, _, leaf in public_lines(engine, forms, 0, until, page=5000):
        if position != tree.size + 1:
            return Recomputed(tree, tree.size + 1)
        tree.append_hash(leaf)
    return Recomputed(tree)
