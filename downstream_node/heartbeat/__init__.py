"""Proof-of-storage heartbeats (Merkle and Swizzle), wire-compatible with ``storj-heartbeat``.

Objects travel as the original library's dicts (``todict`` / ``fromdict``); every bad input
raises ``HeartbeatError`` and ``verify`` answers only ``True`` or ``False`` for parsed input.
"""

from .errors import HeartbeatError, OutOfChallenges
from .merkle import Merkle, MerkleChallenge, MerkleProof, MerkleState, MerkleTag
from .prf import KeyedPRF
from .seeded import SeededChunk
from .swizzle import Swizzle, SwizzleChallenge, SwizzleProof, SwizzleState, SwizzleTag

__all__ = [
    "HeartbeatError",
    "KeyedPRF",
    "Merkle",
    "MerkleChallenge",
    "MerkleProof",
    "MerkleState",
    "MerkleTag",
    "OutOfChallenges",
    "SeededChunk",
    "Swizzle",
    "SwizzleChallenge",
    "SwizzleProof",
    "SwizzleState",
    "SwizzleTag",
]
