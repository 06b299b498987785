"""Checkpoints and receipts: exact text, strict parsing, signing under the origin's key, and
that neither can pass for the other."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from downstream_node.tlog.checkpoint import MAX_SIZE, Checkpoint, CheckpointError, Receipt
from downstream_node.tlog.merkle import EMPTY_ROOT, MemoryTree, leaf_hash, verify_inclusion
from downstream_node.tlog.note import (
    InvalidSignatureError,
    MalformedNoteError,
    Signer,
    UnknownKeyError,
    sign,
)

ORIGIN = "example.com/behind-the-sofa"
# The example checkpoint text of c2sp.org/tlog-checkpoint.
SPEC_TEXT = f"{ORIGIN}\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
ROOT = base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate(ORIGIN)


def test_spec_example_round_trips() -> None:
    cp = Checkpoint.parse(SPEC_TEXT)
    assert cp == Checkpoint(ORIGIN, 20852163, ROOT)
    assert cp.text() == SPEC_TEXT


def test_empty_and_largest_trees() -> None:
    assert Checkpoint(ORIGIN, 0, EMPTY_ROOT).text() == (
        f"{ORIGIN}\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    )
    big = Checkpoint(ORIGIN, MAX_SIZE, ROOT)
    assert Checkpoint.parse(big.text()) == big


@pytest.mark.parametrize(
    "text",
    [
        SPEC_TEXT + "extension\n",  # we never write extension lines
        SPEC_TEXT[:-1],
        SPEC_TEXT.replace("\n", "\r\n"),
        SPEC_TEXT.replace("20852163", "020852163"),
        SPEC_TEXT.replace("20852163", "+20852163"),
        SPEC_TEXT.replace("20852163", " 20852163"),
        SPEC_TEXT.replace("20852163", "20_852_163"),
        SPEC_TEXT.replace("20852163", "-1"),
        SPEC_TEXT.replace("20852163", ""),
        SPEC_TEXT.replace("20852163", "\u0662\u0660"),  # Arabic-Indic digits
        SPEC_TEXT.replace("20852163", str(MAX_SIZE + 1)),
        SPEC_TEXT.replace("20852163", "0x10"),
        SPEC_TEXT.replace("q2I=", "q2J="),  # non-canonical trailing bits
        SPEC_TEXT.replace("q2I=", "q2I"),
        SPEC_TEXT.replace("q2I=", "q2I=="),
        SPEC_TEXT.replace("CsUY", "CsU_"),
        SPEC_TEXT.replace("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=", "AAAA"),
        SPEC_TEXT.replace(ORIGIN, ""),
        SPEC_TEXT.replace(ORIGIN, "a\tb"),
        "\n" + SPEC_TEXT,
        "",
    ],
)
def test_strict_rejections(text: str) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.parse(text)


def test_invalid_fields() -> None:
    for args in [("", 1, ROOT), (ORIGIN, -1, ROOT), (ORIGIN, MAX_SIZE + 1, ROOT), (ORIGIN, 1, b"")]:
        with pytest.raises(CheckpointError):
            Checkpoint(*args)
    with pytest.raises(CheckpointError):
        Receipt(ORIGIN, -1, ROOT)
    with pytest.raises(CheckpointError):
        Receipt(ORIGIN, 0, ROOT[:31])


def test_checkpoint_sign_verify(signer: Signer) -> None:
    cp = Checkpoint(ORIGIN, 20852163, ROOT)
    signed = cp.sign(signer)
    assert signed.startswith(SPEC_TEXT + "\n\u2014 " + ORIGIN + " ")
    assert Checkpoint.verify(signed, signer.verifier) == cp
    assert Checkpoint.verify(signed.encode(), signer.verifier) == cp
    with pytest.raises(UnknownKeyError):
        Checkpoint.verify(signed, Signer.generate(ORIGIN).verifier)
    with pytest.raises(InvalidSignatureError):
        Checkpoint.verify(signed.replace("20852163", "20852164"), signer.verifier)
    with pytest.raises(CheckpointError):
        cp.sign(Signer.generate("another.example/log"))


def test_checkpoint_from_another_log_refused() -> None:
    # A well-signed checkpoint whose origin is not the key's name is not this log's tree head.
    other = Signer.generate("other.example/log")
    signed = sign(SPEC_TEXT, other)
    with pytest.raises(CheckpointError):
        Checkpoint.verify(signed, other.verifier)


def test_cosignatures_are_ignored(signer: Signer) -> None:
    witness = Signer.generate("witness.example")
    signed = sign(SPEC_TEXT, signer, witness)
    assert Checkpoint.verify(signed, signer.verifier).size == 20852163


def test_receipt_round_trip(signer: Signer) -> None:
    leaf = leaf_hash(b"entry")
    r = Receipt(ORIGIN, 42, leaf)
    leaf64 = base64.b64encode(leaf).decode()
    assert r.text() == f"{ORIGIN}\nreceipt\n42\n{leaf64}\n"
    assert Receipt.parse(r.text()) == r
    signed = Receipt.make(signer, 42, leaf)
    assert Receipt.verify(signed, signer.verifier) == r
    with pytest.raises(InvalidSignatureError):
        Receipt.verify(signed.replace("\n42\n", "\n43\n"), signer.verifier)
    with pytest.raises(UnknownKeyError):
        Receipt.verify(signed, Signer.generate(ORIGIN).verifier)
    with pytest.raises(MalformedNoteError):
        Receipt.verify(r.text(), signer.verifier)


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.replace("receipt", "Receipt"),
        lambda t: t.replace("\n42\n", "\n042\n"),
        lambda t: t.replace("\n42\n", "\n\n"),
        lambda t: t + "extra\n",
        lambda t: t[:-1],
        lambda t: t.replace("=\n", "\n"),
    ],
)
def test_receipt_strict(edit: Callable[[str], str]) -> None:
    with pytest.raises(CheckpointError):
        Receipt.parse(edit(Receipt(ORIGIN, 42, leaf_hash(b"entry")).text()))


def test_receipts_and_checkpoints_do_not_cross(signer: Signer) -> None:
    receipt = Receipt.make(signer, 7, leaf_hash(b"x"))
    checkpoint = Checkpoint(ORIGIN, 7, leaf_hash(b"x")).sign(signer)
    with pytest.raises(CheckpointError):
        Checkpoint.verify(receipt, signer.verifier)
    with pytest.raises(CheckpointError):
        Receipt.verify(checkpoint, signer.verifier)
    # Even a parser that allowed extension lines would stop at the receipt's second line.
    with pytest.raises(CheckpointError):
        Checkpoint.parse(
            "\n".join(Receipt(ORIGIN, 7, leaf_hash(b"x")).text().split("\n")[:3]) + "\n"
        )


def test_receipt_backed_by_checkpoint_and_proof(signer: Signer) -> None:
    tree = MemoryTree()
    for i in range(10):
        tree.append(f"entry {i}".encode())
    receipt = Receipt.verify(Receipt.make(signer, 6, tree.get(0, 6)), signer.verifier)
    head = Checkpoint.verify(
        Checkpoint(ORIGIN, tree.size, tree.root()).sign(signer), signer.verifier
    )
    proof = tree.inclusion_proof(receipt.position, head.size)
    verify_inclusion(receipt.leaf_hash, receipt.position, head.size, proof, head.root_hash)
