"""The transparency log's keys, kept in a file beside the node secret (mode 0600): the Ed25519
signing key of checkpoints and receipts (its name is the log's origin) and the commitment key
of the events' meta (never rotated: every leaf of the tree was hashed with it).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..domain.public import PublicForms
from ..tlog import note
from ..tlog.checkpoint import Checkpoint, Receipt

ORIGIN_PREFIX = "downstream-node/"


def keys_path(secret_path: Path) -> Path:
    """``<secret stem>.tlog.json`` beside the node secret: one backup holds both."""
    return secret_path.with_name(secret_path.stem + ".tlog.json")


def default_origin(public_key: bytes) -> str:
    """A stable per-ledger name when the operator gives none: the first 16 hex digits of the
    first signing key's SHA-256 (kept in the key file, so a rotation keeps the origin)."""
    return ORIGIN_PREFIX + hashlib.sha256(public_key).hexdigest()[:16]


def _seed(signer: note.Signer) -> bytes:
    # PRIVATE+KEY+<name>+<hex id>+<base64>: the name holds no '+' but the base64 may, so the
    # four leading fields are split off and the rest is the key, as ``note.parse_signer`` does.
    return note.decode_base64(signer.private_key_string().split("+", 4)[4])[1:]


@dataclass(frozen=True)
class LogKeys:
    signer: note.Signer
    commit_key: bytes
    # The ledger these keys sign for: the hash of its first event, written into the file
    # once the ledger names the keys. A fresh database met with keys bound to another ledger
    # is refused: one key signing two histories is what a fork looks like to an auditor.
    ledger: str | None = None

    @property
    def origin(self) -> str:
        return self.signer.name

    @property
    def vkey(self) -> str:
        return self.signer.vkey

    @property
    def verifier(self) -> note.Verifier:
        return self.signer.verifier

    def commit_key_id(self) -> str:
        """A fingerprint of the commitment key, recorded so another key is noticed."""
        return hashlib.sha256(b"downstream-node commitment key\n" + self.commit_key).hexdigest()

    def public_forms(self) -> PublicForms:
        return PublicForms(self.commit_key)

    def checkpoint(self, size: int, root_hash: bytes) -> str:
        return Checkpoint(self.origin, size, root_hash).sign(self.signer)

    def receipt(self, position: int, leaf_hash: bytes) -> str:
        return Receipt.make(self.signer, position, leaf_hash)

    @classmethod
    def generate(cls, origin: str | None = None) -> LogKeys:
        private = Ed25519PrivateKey.generate()
        name = origin or default_origin(
            note.Verifier.from_public_key("x", private.public_key()).public_key
        )
        return cls(note.Signer(name, private), secrets.token_bytes(32))

    def named(self, origin: str) -> LogKeys:
        """The same keys under another origin (the name is part of the key id)."""
        if origin == self.origin:
            return self
        return LogKeys(
            note.Signer(origin, Ed25519PrivateKey.from_private_bytes(_seed(self.signer))),
            self.commit_key,
            self.ledger,
        )

    def rotated(self) -> LogKeys:
        """A new signing key under the same origin; the commitment key stays."""
        return LogKeys(
            note.Signer(self.origin, Ed25519PrivateKey.generate()), self.commit_key, self.ledger
        )

    # -- the file -------------------------------------------------------------------------------

    def save(self, path: Path, *, replace: bool = True) -> None:
        """Write the keys readable by the owner only, atomically; ``replace=False`` never
        overwrites (``FileExistsError``), so two nodes creating them end up with one pair."""
        tmp = path.with_name(path.name + f".{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            kept = {
                "signing_key": self.signer.private_key_string(),
                "commit_key": self.commit_key.hex(),
            }
            if self.ledger is not None:
                kept["ledger"] = self.ledger
            json.dump(kept, out)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        finally:
            tmp.unlink()

    @classmethod
    def load(cls, path: Path) -> LogKeys:
        data = json.loads(path.read_text())
        commit_key = bytes.fromhex(data["commit_key"])
        if len(commit_key) < 16:
            raise ValueError("the commitment key is too short")
        ledger = data.get("ledger")
        if ledger is not None and not isinstance(ledger, str):
            raise ValueError("the ledger it is bound to is not a hash")
        return cls(note.parse_signer(data["signing_key"]), commit_key, ledger)

    @classmethod
    def load_or_create(cls, path: Path, origin: str | None = None) -> tuple[LogKeys, bool]:
        """The keys in ``path`` (under ``origin`` if given), created there if missing."""
        if path.exists():
            keys = cls.load(path)
            return (keys.named(origin) if origin else keys), False
        keys = cls.generate(origin)
        try:
            keys.save(path, replace=False)
        except FileExistsError:  # another node created them meanwhile: use theirs
            keys = cls.load(path)
            return (keys.named(origin) if origin else keys), False
        return keys, True
