"""C2SP tlog checkpoints (https://c2sp.org/tlog-checkpoint) and the node's signed receipts,
both signed notes under the log's key, whose name is the log's origin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from downstream_node.tlog import note
from downstream_node.tlog.merkle import HASH_SIZE

MAX_SIZE = 2**64 - 1  # Go and the tiles spec count leaves in a uint64.

_DECIMAL = re.compile(r"0|[1-9][0-9]*")
RECEIPT_MARKER = "receipt"


class CheckpointError(ValueError):
    """A checkpoint or receipt text does not follow its format, or names another log."""


def _check_origin(origin: str) -> None:
    if not origin or any(ord(c) < 0x20 for c in origin):
        raise CheckpointError(f"invalid origin {origin!r}")


def _check_hash(h: bytes) -> None:
    if len(h) != HASH_SIZE:
        raise CheckpointError(f"hash of {len(h)} bytes where {HASH_SIZE} were expected")


def _parse_number(s: str, what: str) -> int:
    # A number has one spelling, so two texts for one value cannot both carry a signature.
    if not _DECIMAL.fullmatch(s) or int(s) > MAX_SIZE:
        raise CheckpointError(f"invalid {what} {s!r}")
    return int(s)


def _parse_hash(s: str) -> bytes:
    try:
        h = note.decode_base64(s)
    except note.MalformedNoteError as e:
        raise CheckpointError(str(e)) from e
    _check_hash(h)
    return h


def _lines(text: str, count: int) -> list[str]:
    if not text.endswith("\n"):
        raise CheckpointError("text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) != count:
        raise CheckpointError(f"expected {count} lines, found {len(lines)}")
    return lines


def _open(signed: str | bytes, verifier: note.Verifier) -> str:
    # Only the log's own signature counts; witnesses' cosignatures are ignored as unknown keys.
    return note.verify(signed, [verifier])


def _check_signer(origin: str, name: str) -> None:
    if origin != name:
        raise CheckpointError(f"key {name!r} does not speak for log {origin!r}")


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin, its size and its RFC 6962 root hash."""

    origin: str
    size: int
    root_hash: bytes

    def __post_init__(self) -> None:
        _check_origin(self.origin)
        if not 0 <= self.size <= MAX_SIZE:
            raise CheckpointError(f"invalid tree size {self.size}")
        _check_hash(self.root_hash)

    def text(self) -> str:
        """The note text; no extension lines, which monitors cannot audit."""
        return f"{self.origin}\n{self.size}\n{note.encode_base64(self.root_hash)}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse exactly what ``text()`` writes; extension lines are refused, as we never write
        them and a checkpoint that carried some would not round-trip."""
        origin, size, root = _lines(text, 3)
        _check_origin(origin)
        return cls(origin, _parse_number(size, "tree size"), _parse_hash(root))

    def sign(self, signer: note.Signer) -> str:
        _check_signer(self.origin, signer.name)
        return note.sign(self.text(), signer)

    @classmethod
    def verify(cls, signed: str | bytes, verifier: note.Verifier) -> Checkpoint:
        """The checkpoint in ``signed`` once the log key's signature on it verifies."""
        checkpoint = cls.parse(_open(signed, verifier))
        _check_signer(checkpoint.origin, verifier.name)
        return checkpoint


@dataclass(frozen=True)
class Receipt:
    """The node's signed promise that the leaf with ``leaf_hash`` sits at ``position``.

    Its second line is a word, not a number, so no checkpoint parser, however lenient about
    extension lines, can mistake a receipt for a tree head signed by the same key.
    """

    origin: str
    position: int
    leaf_hash: bytes

    def __post_init__(self) -> None:
        _check_origin(self.origin)
        if not 0 <= self.position < MAX_SIZE:
            raise CheckpointError(f"invalid position {self.position}")
        _check_hash(self.leaf_hash)

    def text(self) -> str:
        leaf = note.encode_base64(self.leaf_hash)
        return f"{self.origin}\n{RECEIPT_MARKER}\n{self.position}\n{leaf}\n"

    @classmethod
    def parse(cls, text: str) -> Receipt:
        origin, marker, position, leaf = _lines(text, 4)
        _check_origin(origin)
        if marker != RECEIPT_MARKER:
            raise CheckpointError("not a receipt")
        return cls(origin, _parse_number(position, "position"), _parse_hash(leaf))

    def sign(self, signer: note.Signer) -> str:
        _check_signer(self.origin, signer.name)
        return note.sign(self.text(), signer)

    @classmethod
    def make(cls, signer: note.Signer, position: int, leaf_hash: bytes) -> str:
        """A signed receipt from the log whose key is ``signer``."""
        return cls(signer.name, position, leaf_hash).sign(signer)

    @classmethod
    def verify(cls, signed: str | bytes, verifier: note.Verifier) -> Receipt:
        receipt = cls.parse(_open(signed, verifier))
        _check_signer(receipt.origin, verifier.name)
        return receipt
