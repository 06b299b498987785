"""Receipts: every verdict's signed receipt names the leaf of its recorded event, verifies by an
inclusion proof against later checkpoints (after a restart, a rebuild and more appends), and a
receipt with another position or leaf does not."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from http_support import ADDRESS, CHUNK, new_node, prove, stock

from downstream_node.farmer import corrupt_proof
from downstream_node.projections.rebuild import rebuild
from downstream_node.service import Node
from downstream_node.tlog import merkle, note
from downstream_node.tlog.checkpoint import Checkpoint, Receipt
from downstream_node.tlog.note import InvalidSignatureError, NoteError


async def farm(node: Node, files: int) -> list[str]:
    """A farmer takes ``files`` contracts and answers each: right, then wrong, alternately."""
    token, heartbeat = await node.create_token(ADDRESS)
    receipts = []
    for n in range(files):
        contract = await node.chunk(token)
        proof = prove(heartbeat, contract)
        if n % 2:
            proof = corrupt_proof(proof)
        verdict = await node.answer_receipted(token, contract["file_hash"], proof)
        assert verdict.status == ("fail" if n % 2 else "pass")
        again = await node.answer_receipted(token, contract["file_hash"], proof)
        assert again == verdict  # a retried identical answer: the very same receipt
        receipts.append(verdict.receipt)
    return receipts


async def check(node: Node, receipt: str) -> None:
    """What a farmer does with a receipt: the signature, then inclusion in a fresh checkpoint."""
    verifier = note.parse_verifier(node.rt.keys().vkey)
    promised = Receipt.verify(receipt, verifier)
    checkpoint = Checkpoint.verify(await node.ledger.checkpoint(), verifier)
    proof = await node.ledger.inclusion(promised.position, checkpoint.size)
    merkle.verify_inclusion(
        promised.leaf_hash, promised.position - 1, checkpoint.size, proof, checkpoint.root_hash
    )


def test_receipts_verify_after_a_restart_a_rebuild_and_more_appends(
    db_url: str, tmp_path: Path
) -> None:
    async def go() -> None:
        node, _ = new_node(db_url, tmp_path)
        await node.start()
        await stock(node, files=4)
        receipts = await farm(node, 4)
        verdicts = [e for e in node.store.read_all() if e.event_type.startswith("Answer")]
        positions = [Receipt.parse(r.split("\n\n")[0] + "\n").position for r in receipts]
        assert positions == [e.position for e in verdicts]
        for receipt in receipts:
            await check(node, receipt)
        await node.close()

        node, _ = new_node(db_url, tmp_path)  # a restart
        await node.start()
        await node.rt.run(rebuild, node.store)
        for n in range(2):  # more appends
            await node.add_seeded(CHUNK, seed=f"later-{n}", redundancy=1)
        receipts += await farm(node, 2)
        for receipt in receipts:
            await check(node, receipt)

        # Another position or leaf under the old signature: the signature fails.
        text, signature = receipts[0].split("\n\n")
        promised = Receipt.parse(text + "\n")
        moved = text.replace(f"\n{promised.position}\n", f"\n{promised.position + 1}\n")
        with pytest.raises(InvalidSignatureError):
            await check(node, f"{moved}\n\n{signature}")
        # Signed anew by the node's own key for a neighbour's position: no inclusion proof.
        keys = node.rt.keys()
        with pytest.raises(merkle.ProofError):
            await check(node, keys.receipt(promised.position + 1, promised.leaf_hash))
        flipped = bytes([promised.leaf_hash[0] ^ 1]) + promised.leaf_hash[1:]
        with pytest.raises(merkle.ProofError):
            await check(node, keys.receipt(promised.position, flipped))
        # And another log's key does not speak for this one.
        with pytest.raises(NoteError):
            Receipt.verify(receipts[0], note.Signer.generate(keys.origin).verifier)
        await node.close()

    asyncio.run(go())
