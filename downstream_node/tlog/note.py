"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys, compatible with Go's
golang.org/x/mod/sumdb/note: key strings, signing, and verification against trusted keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

ALG_ED25519 = 0x01
EM_DASH = "\u2014"
MAX_SIGNATURES = 100  # Go's limit; the spec asks verifiers to accept at least 16.

_HEX_ID = re.compile(r"[0-9a-fA-F]{8}")


class NoteError(ValueError):
    """Base of every signed-note failure."""


class MalformedNoteError(NoteError):
    """The note, or a key string, does not follow the format."""


class UnknownKeyError(NoteError):
    """No signature in the note is from a trusted key."""


class InvalidSignatureError(NoteError):
    """A signature from a trusted key did not verify."""


def check_name(name: str) -> None:
    """Raise ``MalformedNoteError`` unless ``name`` is a valid key name."""
    if not name or any(c == "+" or c.isspace() or ord(c) < 0x20 for c in name):
        raise MalformedNoteError(f"invalid key name {name!r}")
    _utf8(name)


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key ID: SHA-256(name || 0x0A || 0x01 || Ed25519 public key)[:4]."""
    check_name(name)
    return hashlib.sha256(_utf8(name) + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def _utf8(s: str) -> bytes:
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MalformedNoteError("text is not valid UTF-8") from e


def decode_base64(s: str) -> bytes:
    # Only canonical encodings, so each value has exactly one spelling on the wire.
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedNoteError(f"invalid base64 {s!r}") from e
    if base64.b64encode(raw).decode("ascii") != s:
        raise MalformedNoteError(f"non-canonical base64 {s!r}")
    return raw


def encode_base64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _split_key(s: str, fields: int) -> list[str]:
    # The base64 key is last and may itself contain '+', so only the leading fields are split.
    parts = s.split("+", fields - 1)
    if len(parts) != fields:
        raise MalformedNoteError("key string has too few fields")
    return parts


@dataclass(frozen=True)
class Verifier:
    """A trusted Ed25519 public key with its name and ID."""

    name: str
    key_id: bytes
    public_key: bytes

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes | Ed25519PublicKey) -> Verifier:
        raw = public_key if isinstance(public_key, bytes) else _raw_public(public_key)
        try:
            Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as e:
            raise MalformedNoteError("not an Ed25519 public key") from e
        return cls(name, key_id(name, raw), raw)

    @property
    def vkey(self) -> str:
        """The verifier key string ``<name>+<hex key id>+<base64(0x01 || public key)>``."""
        key = encode_base64(bytes([ALG_ED25519]) + self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{key}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


def parse_verifier(vkey: str) -> Verifier:
    """Parse a verifier key string; raise ``MalformedNoteError`` on any defect."""
    name, hex_id, key64 = _split_key(vkey, 3)
    check_name(name)
    if not _HEX_ID.fullmatch(hex_id):
        raise MalformedNoteError(f"invalid key id {hex_id!r}")
    key = decode_base64(key64)
    if len(key) != 33 or key[0] != ALG_ED25519:
        raise MalformedNoteError("not an Ed25519 verifier key")
    verifier = Verifier.from_public_key(name, key[1:])
    if verifier.key_id != bytes.fromhex(hex_id):
        raise MalformedNoteError("key id does not match the name and key")
    return verifier


class Signer:
    """An Ed25519 private key under a name; signs note texts."""

    __slots__ = ("_key", "verifier")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.verifier = Verifier.from_public_key(name, private_key.public_key())

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def key_id(self) -> bytes:
        return self.verifier.key_id

    @property
    def vkey(self) -> str:
        return self.verifier.vkey

    def sign_bytes(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def private_key_string(self) -> str:
        """``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>``, as Go's note.GenerateKey."""
        seed = self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        key = encode_base64(bytes([ALG_ED25519]) + seed)
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{key}"

    def __repr__(self) -> str:
        return f"Signer({self.vkey!r})"


def parse_signer(skey: str) -> Signer:
    """Parse a ``PRIVATE+KEY+...`` string; raise ``MalformedNoteError`` on any defect."""
    private, key_word, name, hex_id, key64 = _split_key(skey, 5)
    if private != "PRIVATE" or key_word != "KEY":
        raise MalformedNoteError("a signer key starts with PRIVATE+KEY+")
    check_name(name)
    if not _HEX_ID.fullmatch(hex_id):
        raise MalformedNoteError(f"invalid key id {hex_id!r}")
    key = decode_base64(key64)
    if len(key) != 33 or key[0] != ALG_ED25519:
        raise MalformedNoteError("not an Ed25519 signer key")
    signer = Signer(name, Ed25519PrivateKey.from_private_bytes(key[1:]))
    if signer.key_id != bytes.fromhex(hex_id):
        raise MalformedNoteError("key id does not match the name and key")
    return signer


def generate_key(name: str) -> tuple[str, str]:
    """A new key pair as (signer key string, verifier key string)."""
    signer = Signer.generate(name)
    return signer.private_key_string(), signer.vkey


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{EM_DASH} {self.name} {encode_base64(self.key_id + self.signature)}\n"


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise MalformedNoteError("note text must end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise MalformedNoteError("note contains a control character")
    _utf8(text)


def sign(text: str, *signers: Signer) -> str:
    """The signed note: ``text``, a blank line, then one signature line per signer."""
    _check_text(text)
    if not signers:
        raise ValueError("a note needs at least one signer")
    if len({(s.name, s.key_id) for s in signers}) != len(signers):
        raise ValueError("the same key signs a note once")
    message = _utf8(text)
    lines = (Signature(s.name, s.key_id, s.sign_bytes(message)).line() for s in signers)
    return text + "\n" + "".join(lines)


def split_note(note: str | bytes) -> tuple[str, list[Signature]]:
    """Separate a note into its text and signatures, checking the format but no signature."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedNoteError("note is not valid UTF-8") from e
    # The text may hold blank lines of its own; the signatures start after the last one.
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedNoteError("note has no signature block")
    text, block = note[: split + 1], note[split + 2 :]
    _check_text(text)
    if not block.endswith("\n"):
        raise MalformedNoteError("signature block must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError("note has too many signatures")
    signatures = []
    for line in lines:
        prefix = EM_DASH + " "
        if not line.startswith(prefix):
            raise MalformedNoteError(f"not a signature line: {line!r}")
        fields = line[len(prefix) :].split(" ")
        if len(fields) != 2:
            raise MalformedNoteError(f"not a signature line: {line!r}")
        name, sig64 = fields
        check_name(name)
        raw = decode_base64(sig64)
        if len(raw) < 5:
            raise MalformedNoteError("signature is too short")
        signatures.append(Signature(name, raw[:4], raw[4:]))
    return text, signatures


def verify(note: str | bytes, verifiers: Iterable[Verifier]) -> str:
    """Return the note's text once a trusted key's signature on it verifies.

    Signatures from unknown keys are ignored, as the spec requires; a bad signature from a
    trusted key rejects the whole note, as it recommends.
    """
    text, signatures = split_note(note)
    trusted: dict[tuple[str, bytes], Verifier | None] = {}
    for v in verifiers:
        key = (v.name, v.key_id)
        # Two different keys with one name and ID cannot be told apart, so neither is trusted.
        trusted[key] = v if trusted.get(key, v) == v else None
    message = _utf8(text)
    verified = False
    for sig in signatures:
        key = (sig.name, sig.key_id)
        if key not in trusted:
            continue
        verifier = trusted[key]
        if verifier is None:
            raise UnknownKeyError(f"ambiguous key {sig.name}+{sig.key_id.hex()}")
        if not verifier.verify(message, sig.signature):
            raise InvalidSignatureError(f"invalid signature for key {verifier.vkey}")
        verified = True
    if not verified:
        raise UnknownKeyError("note has no signature from a trusted key")
    return text
