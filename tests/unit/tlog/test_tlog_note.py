"""Signed notes against the C2SP example vector and Go's golang.org/x/mod/sumdb/note test
vectors: key strings, exact signatures, and the rejections the spec and Go require."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from downstream_node.tlog.note import (
    EM_DASH,
    InvalidSignatureError,
    MalformedNoteError,
    NoteError,
    Signature,
    Signer,
    UnknownKeyError,
    Verifier,
    generate_key,
    key_id,
    parse_signer,
    parse_verifier,
    sign,
    split_note,
    verify,
)

VECTOR = json.loads((Path(__file__).parents[2] / "data" / "signed-note.json").read_text())

# From golang.org/x/mod sumdb/note/note_test.go (TestNewVerifier, TestNewSigner, TestSign,
# TestOpen).
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    f"{EM_DASH} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXg"
    "KvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    f"{EM_DASH} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOT"
    "GwnWLox33WWd1RvMc+QQ=\n"
)


# --- the C2SP example (tests/data/signed-note.json) -----------------------------------------


def test_spec_vector_key_and_note() -> None:
    v = parse_verifier(VECTOR["verifier_key"])
    assert v.name == "example.com/foo"
    assert v.key_id.hex() == VECTOR["key_id_hex"]
    assert v.key_id == key_id(v.name, v.public_key)
    assert v.vkey == VECTOR["verifier_key"]
    assert verify(VECTOR["note"], [v]) == VECTOR["text"]
    assert verify(VECTOR["note"].encode(), [v]) == VECTOR["text"]


def test_spec_vector_rejections() -> None:
    v = parse_verifier(VECTOR["verifier_key"])
    note: str = VECTOR["note"]
    with pytest.raises(InvalidSignatureError):
        verify(note.replace("example message", "example massage"), [v])
    text, [sig] = split_note(note)
    forged = sig.signature[:10] + bytes([sig.signature[10] ^ 1]) + sig.signature[11:]
    forged_note = text + "\n" + Signature(sig.name, sig.key_id, forged).line()
    with pytest.raises(InvalidSignatureError):
        verify(forged_note, [v])
    other = Signer.generate("example.com/foo")
    with pytest.raises(UnknownKeyError):
        verify(note, [other.verifier])
    with pytest.raises(UnknownKeyError):
        verify(note, [])
    with pytest.raises(MalformedNoteError):
        verify(note.rstrip("\n"), [v])


# --- Go's vectors ---------------------------------------------------------------------------


def test_go_sign_is_byte_for_byte() -> None:
    signer = parse_signer(PETER_SKEY)
    assert signer.vkey == PETER_VKEY
    assert signer.private_key_string() == PETER_SKEY
    assert sign(TEXT, signer) == TEXT + "\n" + PETER_SIG
    with pytest.raises(MalformedNoteError):
        sign("abc", signer)


def test_go_verifier_key_manglings_rejected() -> None:
    parse_verifier(PETER_VKEY)
    b = PETER_VKEY
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                with pytest.raises(MalformedNoteError):
                    parse_verifier(b[i:j])
    for i in range(len(b)):
        with pytest.raises(MalformedNoteError):
            parse_verifier(b[:i] + chr(ord(b[i]) + 1) + b[i + 1 :])
    # Wrong key length and unknown algorithm, each with its key ID adjusted to match.
    with pytest.raises(MalformedNoteError):
        parse_verifier("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==")
    with pytest.raises(MalformedNoteError):
        parse_verifier("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_go_signer_key_manglings_rejected() -> None:
    b = PETER_SKEY
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                with pytest.raises(MalformedNoteError):
                    parse_signer(b[i:j])
    for i in range(len(b)):
        with pytest.raises(MalformedNoteError):
            parse_signer(b[:i] + chr(ord(b[i]) + 1) + b[i + 1 :])


def test_go_open() -> None:
    peter, enoch = parse_verifier(PETER_VKEY), parse_verifier(ENOCH_VKEY)
    both = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    # An unknown key's signature is ignored; every known key's must verify.
    assert verify(both, [peter]) == TEXT
    assert verify(both, [enoch]) == TEXT
    assert verify(both, [peter, enoch, enoch]) == TEXT
    with pytest.raises(UnknownKeyError):
        verify(both, [])
    text, sigs = split_note(both)
    assert text == TEXT
    assert [(s.name, s.key_id.hex()) for s in sigs] == [
        ("PeterNeumann", "c74f20a3"),
        ("EnochRoot", "af0cfe78"),
    ]
    with pytest.raises(MalformedNoteError):
        verify(TEXT + "\n" + PETER_SIG * 101, [peter])
    with pytest.raises(InvalidSignatureError):
        verify(TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:], [peter])
    # A corrupt signature from a key nobody trusts does not spoil the note.
    dup = TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG
    assert verify(dup + ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:], [peter]) == TEXT
    # The same name with another ID, or another name with the same ID, is an unknown key.
    with pytest.raises(UnknownKeyError):
        verify(TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "CarmenSandiego"), [peter])
    with pytest.raises(UnknownKeyError):
        verify(TEXT + "\n" + PETER_SIG.replace("x08g", "xxxx"), [peter])


@pytest.mark.parametrize(
    "msg",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        b"\xff" + (TEXT + "\n" + PETER_SIG).encode(),
        TEXT + "\n" + f"{EM_DASH} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FF"
        "YC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG.replace(EM_DASH, "-"),
        TEXT + "\n" + PETER_SIG.replace("=\n", "\n"),
        TEXT + "\n" + PETER_SIG.replace(" x08", "  x08"),
        TEXT + "\n" + f"{EM_DASH} PeterNeumann AAAA\n",
        TEXT.replace("\n", "\r\n") + "\r\n" + PETER_SIG,
    ],
)
def test_go_malformed_notes(msg: str | bytes) -> None:
    with pytest.raises(MalformedNoteError):
        verify(msg, [parse_verifier(PETER_VKEY)])


def test_ambiguous_verifiers() -> None:
    peter = parse_verifier(PETER_VKEY)
    impostor = Verifier(peter.name, peter.key_id, parse_verifier(ENOCH_VKEY).public_key)
    with pytest.raises(UnknownKeyError, match="ambiguous"):
        verify(TEXT + "\n" + PETER_SIG, [peter, impostor])
    # An unrelated verifier may still be ambiguous without spoiling a note it is not used for.
    enoch = parse_verifier(ENOCH_VKEY)
    clash = Verifier(enoch.name, enoch.key_id, peter.public_key)
    assert verify(TEXT + "\n" + PETER_SIG, [peter, enoch, clash]) == TEXT


# --- generated keys -------------------------------------------------------------------------


def test_generate_round_trip() -> None:
    skey, vkey = generate_key("example.com/log")
    signer, verifier = parse_signer(skey), parse_verifier(vkey)
    assert signer.vkey == vkey and signer.private_key_string() == skey
    assert signer.key_id == verifier.key_id == key_id("example.com/log", verifier.public_key)
    note = sign("hello\n\nworld\n", signer)
    assert verify(note, [verifier]) == "hello\n\nworld\n"
    assert verifier.verify(b"hi", signer.sign_bytes(b"hi"))
    assert not verifier.verify(b"ho", signer.sign_bytes(b"hi"))


def test_several_signers() -> None:
    a, b = Signer.generate("a.example"), Signer.generate("b.example")
    note = sign("text\n", a, b)
    assert verify(note, [b.verifier]) == "text\n"
    assert [s.name for s in split_note(note)[1]] == ["a.example", "b.example"]
    with pytest.raises(ValueError):
        sign("text\n", a, a)
    with pytest.raises(ValueError):
        sign("text\n")


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\tb", "a\u00a0b", "a\u2028b", "\x01"])
def test_bad_names(name: str) -> None:
    with pytest.raises(MalformedNoteError):
        Signer.generate(name)


@pytest.mark.parametrize("text", ["no newline", "tab\there\n", "cr\r\n", "\ud800\n"])
def test_bad_texts(text: str) -> None:
    with pytest.raises(MalformedNoteError):
        sign(text, Signer.generate("n"))


def test_errors_share_a_base() -> None:
    for e in (MalformedNoteError, UnknownKeyError, InvalidSignatureError):
        assert issubclass(e, NoteError) and issubclass(e, ValueError)
