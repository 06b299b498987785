"""Heartbeat proofs of a stored chunk: the node's public heartbeat (Merkle or Swizzle), a
proof computed from the chunk's file, and a deliberately wrong proof for testing a node.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from ..heartbeat import Merkle, Swizzle


def beat_for(public: dict[str, Any]) -> Merkle | Swizzle:
    """The node's public heartbeat: Swizzle's carries a prime, Merkle's a check fraction."""
    if isinstance(public, dict) and "prime" in public:
        return Swizzle.fromdict(public)
    return Merkle.fromdict(public)


def prove_file(
    beat: Merkle | Swizzle, path: Path, challenge: dict[str, Any], tag: dict[str, Any]
) -> dict[str, Any]:
    """The proof of the chunk in ``path`` for ``challenge`` (reads the file: run in a thread)."""
    with open(path, "rb") as handle:
        return beat.prove(handle, challenge, tag).todict()


def corrupt_proof(proof: dict[str, Any]) -> dict[str, Any]:
    """A well-formed but wrong proof: the node answers ``fail``, not ``bad_proof_format``."""
    if "leaf" in proof:  # Merkle: flip a bit of the leaf's HMAC
        blob = bytearray(base64.b64decode(proof["leaf"]["blob"]))
        blob[0] ^= 0x01
        leaf = {**proof["leaf"], "blob": base64.b64encode(bytes(blob)).decode()}
        return {**proof, "leaf": leaf}
    return {**proof, "sigma": int(proof["sigma"]) ^ 1}  # Swizzle
