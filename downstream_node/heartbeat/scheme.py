"""The node's proof-of-storage scheme: its secret heartbeat, kept in a file, and the dict-level
operations the decisions need (encode, next challenge, verify).

The secret never enters the ledger: events hold tags, states and challenges (data the secret
signs), and one ``HeartbeatConfigured`` event records the secret's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO

from . import HeartbeatError, Merkle, OutOfChallenges, SeededChunk, Swizzle

KINDS: dict[str, type[Merkle] | type[Swizzle]] = {"Merkle": Merkle, "Swizzle": Swizzle}

__all__ = ["KINDS", "HeartbeatError", "OutOfChallenges", "ProofScheme", "SeededChunk"]


class ProofScheme:
    """A secret heartbeat with dict-in, dict-out operations (CPU-bound: run them in threads)."""

    def __init__(self, beat: Merkle | Swizzle, challenges: int = 256) -> None:
        self.beat = beat
        self.kind = "Merkle" if isinstance(beat, Merkle) else "Swizzle"
        self.challenges = challenges

    @classmethod
    def create(
        cls, kind: str, *, check_fraction: float | None = 0.01, challenges: int = 256
    ) -> ProofScheme:
        if kind == "Merkle":
            return cls(Merkle(check_fraction=check_fraction), challenges)
        if kind == "Swizzle":
            return cls(Swizzle(), challenges)
        raise ValueError(f"unknown heartbeat {kind!r} (Merkle or Swizzle)")

    # -- the secret file ------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path, challenges: int = 256) -> ProofScheme:
        data = json.loads(path.read_text())
        kind = data["kind"]
        if kind not in KINDS:
            raise ValueError(f"{path}: unknown heartbeat kind {kind!r}")
        return cls(KINDS[kind].fromdict(data["secret"]), challenges)

    def save(self, path: Path, *, replace: bool = True) -> None:
        """Write the secret readable by its owner only, atomically.

        ``replace=False``: never overwrite; ``FileExistsError`` if ``path`` exists (two nodes
        creating the secret at once must end up with one secret, not one each).
        """
        tmp = path.with_name(path.name + f".{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"kind": self.kind, "secret": self.beat.todict()}, out)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # atomic, and fails if another node's secret got there first
        finally:
            tmp.unlink()

    @classmethod
    def load_or_create(
        cls, path: Path, kind: str, *, check_fraction: float | None = 0.01, challenges: int = 256
    ) -> tuple[ProofScheme, bool]:
        if path.exists():
            return cls.load(path, challenges), False
        scheme = cls.create(kind, check_fraction=check_fraction, challenges=challenges)
        try:
            scheme.save(path, replace=False)
        except FileExistsError:  # another node (process) created it meanwhile: use theirs
            return cls.load(path, challenges), False
        return scheme, True

    def fingerprint(self) -> str:
        return hashlib.sha256(canonical_json_any(self.beat.todict()).encode()).hexdigest()

    # -- operations -----------------------------------------------------------------------------

    def public(self) -> dict[str, Any]:
        return self.beat.get_public().todict()

    def encode(
        self, file: BinaryIO, size: int, *, timestamp: int = 0
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A fresh encoding (random root seed) of ``file``: ``(tag, state)`` dicts."""
        if isinstance(self.beat, Merkle):
            tag, state = self.beat.encode(
                file, n=self.challenges, seed=os.urandom(32), filesz=size, timestamp=timestamp
            )
        else:
            tag, state = self.beat.encode(file)
            if len(tag.sigma) != size // self.beat.chunk_size + 1:
                # Swizzle reads to the end of the file: one that shrank or grew since it was
                # added would be encoded as other bytes than the ledger's.
                raise HeartbeatError(f"the file no longer holds the {size} bytes recorded")
        return tag.todict(), state.todict()

    def next_challenge(
        self, state: dict[str, Any], file_size: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(challenge, new_state)`` for a file of ``file_size`` bytes; raises
        ``OutOfChallenges`` when the encoding is spent."""
        if isinstance(self.beat, Swizzle):
            challenge, new_state = self.beat.next_challenge(state, file_size=file_size)
        else:
            challenge, new_state = self.beat.next_challenge(state)
        return challenge.todict(), new_state.todict()

    def parse_proof(self, proof: Any) -> tuple[Any, dict[str, Any]]:
        """A farmer's proof parsed, and its normal form as a dict (what the ledger records);
        ``HeartbeatError`` when it is not a well-formed proof. ``verify`` takes the parsed
        one as it is, so a proof is parsed once per answer."""
        parsed = type(self.beat).Proof.fromdict(proof)
        return parsed, parsed.todict()

    def verify(self, proof: Any, challenge: dict[str, Any], state: dict[str, Any]) -> bool:
        """Whether ``proof`` (parsed, or a dict) answers ``challenge`` for ``state``."""
        try:
            return bool(self.beat.verify(proof, challenge, state))
        except HeartbeatError:
            return False


def canonical_json_any(value: Any) -> str:
    """Canonical text of a heartbeat dict: sorted keys, no whitespace, UTF-8. Unlike the
    ledger's canonical JSON it keeps floats (a Merkle secret holds its check fraction)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
