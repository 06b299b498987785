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
from ..tlog.checkpoint import Checkpoint
from ..tlog.merkle import MemoryTree, ProofError, verify_consistency
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


@dataclass(frozen=True)
class CheckpointCheck:
    """Whether the ledger, as its events are now, extends a checkpoint an auditor kept."""

    ok: bool
    checkpoint_size: int
    ledger_size: int
    reason: str = ""
    consistency_proof: tuple[bytes, ...] = ()
    stored_tree_matches: bool = True

    def todict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "checkpoint_size": self.checkpoint_size,
            "ledger_size": self.ledger_size,
            "reason": self.reason,
            "consistency_proof": [base64.b64encode(h).decode() for h in self.consistency_proof],
            "stored_tree_matches": self.stored_tree_matches,
        }


def against_checkpoint(
    engine: Engine,
    forms: PublicForms,
    checkpoint: Checkpoint,
    stored: tuple[int, bytes] | None = None,
) -> CheckpointCheck:
    """Recompute the tree from the events (never trusting the stored one) and prove, with an
    RFC 9162 consistency proof, that the checkpoint's tree is its prefix. ``stored``: the
    stored tree's (size, root), compared with the recomputed tree's root at that size."""
    recomputed = recompute(engine, forms)
    memory, size, wanted = recomputed.tree, recomputed.tree.size, checkpoint.size
    matches = stored is None or (stored[0] <= size and stored[1] == memory.root(stored[0]))
    if recomputed.gap is not None and recomputed.gap <= wanted:
        return CheckpointCheck(
            False,
            wanted,
            size,
            f"position {recomputed.gap} is missing: the ledger no longer holds the "
            f"checkpoint's {wanted} events",
            stored_tree_matches=matches,
        )
    if size < wanted:
        return CheckpointCheck(
            False,
            wanted,
            size,
            f"the ledger is shorter than the checkpoint: {size} events, the checkpoint "
            f"covers {wanted}",
            stored_tree_matches=matches,
        )
    if memory.root(wanted) != checkpoint.root_hash:
        return CheckpointCheck(
            False,
            wanted,
            size,
            f"a different history: the first {wanted} events do not hash to the checkpoint's root",
            stored_tree_matches=matches,
        )
    proof = memory.consistency_proof(wanted, size)
    try:
        verify_consistency(wanted, size, proof, checkpoint.root_hash, memory.root())
    except ProofError as exc:  # pragma: no cover - the tree's own proof: a bug, not tampering
        return CheckpointCheck(False, wanted, size, f"consistency proof failed: {exc}")
    if not matches:
        return CheckpointCheck(
            False,
            wanted,
            size,
            "the stored tree does not match the events (edited, or the commitment key "
            "is not this ledger's)",
            tuple(proof),
            stored_tree_matches=False,
        )
    return CheckpointCheck(True, wanted, size, "", tuple(proof))
