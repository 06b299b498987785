"""Bitcoin signed messages and the original node's ``POST /new`` signature check."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from pathlib import Path

import pytest

from downstream_node.domain import signatures as sig
from downstream_node.domain.tokens import b58decode

DATA = Path(__file__).resolve().parent.parent / "data"


def _key(i: int) -> bytes:
    return hashlib.sha256(b"test_signatures key %d" % i).digest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _wif_secret(wif: str) -> tuple[bytes, bool]:
    """The 32-byte secret of a WIF private key and whether it asks for a compressed key."""
    raw = b58decode(wif)
    assert sig._checksum(raw[:-4]) == raw[-4:]
    return raw[1:33], len(raw) == 38


# --- RIPEMD-160 ---------------------------------------------------------------------------------

# The test vectors of the RIPEMD-160 paper (Dobbertin, Bosselaers, Preneel), appendix B.
RIPEMD160_VECTORS = [
    (b"", "9c1185a5c5e9fc54612808977ee8f548b2258d31"),
    (b"a", "0bdc9d2d256b3ee9daae347be6f4dc835a467ffe"),
    (b"abc", "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"),
    (b"message digest", "5d0689ef49d2fae572b881b123a85ffa21595f36"),
    (b"abcdefghijklmnopqrstuvwxyz", "f71c27109c692c1b56bbdceb5b9d2865b3708dbc"),
    (
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "12a053384a9c0c88e405a06c27dcf49ada62eb2b",
    ),
    (
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        "b0e20b6e3116640286ed3a87a5713079b21f5189",
    ),
    (b"1234567890" * 8, "9b752e45573d4b39f4dbd3323cab82bf63326bfb"),
]


@pytest.mark.parametrize(("data", "digest"), RIPEMD160_VECTORS)
def test_pure_ripemd160_matches_the_published_vectors(data: bytes, digest: str) -> None:
    assert sig._ripemd160_py(data).hex() == digest
    assert sig.ripemd160(data).hex() == digest


def test_pure_ripemd160_million_a() -> None:
    assert sig._ripemd160_py(b"a" * 1_000_000).hex() == "52783243c1697bdbe16d37f97f68f08325dc1528"


def test_pure_ripemd160_agrees_with_openssl_on_every_padding_length() -> None:
    try:
        hashlib.new("ripemd160")
    except ValueError:
        pytest.skip("this OpenSSL has no RIPEMD-160 to compare with")
    rnd = random.Random(7)
    for n in range(0, 200):
        data = rnd.randbytes(n)
        assert sig._ripemd160_py(data) == hashlib.new("ripemd160", data).digest(), n


def test_ripemd160_falls_back_when_openssl_lacks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ripemd(name: str, *args: object, **kwargs: object) -> object:
        raise ValueError(f"unsupported hash type {name}")

    monkeypatch.setattr(sig.hashlib, "new", no_ripemd)
    assert sig.ripemd160(b"abc").hex() == "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"
    key = bytes.fromhex("18E14A7B6A307F426A94F8114701E7C8E774E7F9A47E2C2035DB29A206321725")
    assert sig.address_for(key, compressed=False) == "16UwLL9Risc3QfPqBUvKofHmBQ7wMtjvM"


# --- addresses ----------------------------------------------------------------------------------


def test_address_for_matches_the_bitcoin_wiki_example() -> None:
    # en.bitcoin.it "Technical background of version 1 Bitcoin addresses": this private key's
    # uncompressed address; the compressed one is from bitcoinjs-lib's test/message.js (below).
    key = bytes.fromhex("18E14A7B6A307F426A94F8114701E7C8E774E7F9A47E2C2035DB29A206321725")
    assert sig.address_for(key, compressed=False) == "16UwLL9Risc3QfPqBUvKofHmBQ7wMtjvM"
    assert sig.address_for(key, compressed=True) == "1PMycacnJaSqwwJqjawXBErnLsZ7RkXUAs"
    h160 = sig.decode_address("16UwLL9Risc3QfPqBUvKofHmBQ7wMtjvM")
    assert h160 is not None and h160.hex() == "010966776006953d5567439e5e39f86a0d273bee"


def test_decode_address_refuses_what_pycoin_refused() -> None:
    good = sig.address_for(_key(1))
    assert sig.decode_address(good) is not None
    assert sig.decode_address(good[:-1] + ("1" if good[-1] != "1" else "2")) is None  # checksum
    assert sig.decode_address("1" + good) is None  # 26 bytes
    assert sig.decode_address(good[1:]) is None
    assert sig.decode_address(good.replace(good[5], "0")) is None  # not Base58
    assert sig.decode_address("") is None
    assert sig.decode_address(None) is None
    assert sig.decode_address(12) is None
    testnet = sig.address_for(_key(1), version=0x6F)
    p2sh = sig.encode_address(bytes(20), version=0x05)
    assert sig.decode_address(testnet) is None
    assert sig.decode_address(p2sh) is None
    assert sig.decode_address(testnet, versions={0x6F}) is not None


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(32), sig._N.to_bytes(32, "big"), "00" * 32])
def test_bad_private_keys_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        sig.address_for(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sig.sign_message(bad, "m")  # type: ignore[arg-type]


# --- fixed vectors from public sources -----------------------------------------------------------

# The identity in downstream-farmer 0.1.8's README (its sample data/identities.json).
README_ADDRESS = "19qVgG8C6eXwKMMyvVegsi3xCsKyk3Z3jV"
README_MESSAGE = "test message"
README_SIGNATURE = (
    "HyzVUenXXo4pa+kgm1vS8PNJM83eIXFC5r0q86FGbqFcdla6rcw72/ciXiEPfjli3ENfwWuESHhv6K9esI0dl5I="
)


def test_farmer_readme_identity() -> None:
    assert sig.verify_message(README_ADDRESS, README_MESSAGE, README_SIGNATURE)
    assert sig.check_new_signature(README_ADDRESS, README_MESSAGE, README_SIGNATURE) is None
    assert not sig.verify_message(README_ADDRESS, "test message.", README_SIGNATURE)
    altered = "test messagf"
    assert sig.check_new_signature(README_ADDRESS, altered, README_SIGNATURE) == (
        "signature_invalid"
    )
    other = sig.address_for(_key(2))
    assert sig.check_new_signature(other, README_MESSAGE, README_SIGNATURE) == "signature_invalid"


def test_bitcoin_core_signmessagewithprivkey_vector() -> None:
    # bitcoin/bitcoin test/functional/rpc_signmessage.py ("test signing with priv_key"), a
    # testnet key: Core's signature is reproduced byte for byte (RFC 6979 nonce, low s).
    secret, compressed = _wif_secret("cUeKHd5orzT3mz8P9pxyREHfsWtVfgsfDjiZZBcjUBAaGk1BTj7N")
    address = "mpLQjfK79b7CCV4VMJWEWAj5Mpx8Up5zxB"
    message = "This is just a test message"
    expected = (
        "INbVnW4e6PeRmsv2Qgu8NuopvrVjkcxob+sX8OcZG0SALhWybUjzMLPdAsXI46YZGb0KQTRii+wWIQzRpG/U+S0="
    )
    assert compressed
    assert sig.address_for(secret, compressed, version=0x6F) == address
    assert sig.sign_message(secret, message, compressed) == expected
    assert sig.verify_message(address, message, expected, versions={0x6F})
    assert not sig.verify_message(address, message + "!", expected, versions={0x6F})
    # /new took mainnet addresses only (pycoin raised on 0x6f; the original answered 500).
    assert not sig.verify_message(address, message, expected)
    assert sig.check_new_signature(address, message, expected) == "invalid_address"


def test_python_bitcoinlib_signmessage_vector() -> None:
    # petertodd/python-bitcoinlib bitcoin/tests/test_signmessage.py, test_verify_message_simple
    # and test_sign_message_simple (the message is the address itself).
    secret, compressed = _wif_secret("L4vB5fomsK8L95wQ7GFzvErYGht49JsCPJyJMHpB4xGM6xgi2jvG")
    address = "1F26pNMrywyZJdr22jErtKcjF8R3Ttt55G"
    expected = (
        "H85WKpqtNZDrajOnYDgUY+abh0KCAcOsAIOQwx2PftAbLEPRA7mzXA/CjXRxzz0MC225pR/hx02Vf2Ag2x33kU4="
    )
    assert sig.address_for(secret, compressed) == address
    assert sig.sign_message(secret, address, compressed) == expected
    assert sig.verify_message(address, address, expected)
    assert sig.check_new_signature(address, address, expected) is None


# bitcoinjs/bitcoinjs-lib test/message.js (2014): the same (r, s) under an uncompressed (0x1b)
# and a compressed (0x1f) header, by the bitcoin-wiki key above.
BJS_MESSAGE = "vires is numeris"
BJS_ADDR = "16UwLL9Risc3QfPqBUvKofHmBQ7wMtjvM"
BJS_CADDR = "1PMycacnJaSqwwJqjawXBErnLsZ7RkXUAs"
BJS_RS = (
    "c25ac0fb503abc9bad23f558742740fafaec1f52deaaf106b9759a5ce84c9392"
    "1c4a669c5ec3dfeb7e2d7d177a2f49db407900874f6de2f701a4c16783776d8d"
)
BJS_SIG = _b64(bytes.fromhex("1b" + BJS_RS))
BJS_CSIG = _b64(bytes.fromhex("1f" + BJS_RS))


def test_bitcoinjs_uncompressed_and_compressed_vectors() -> None:
    assert sig.verify_message(BJS_ADDR, BJS_MESSAGE, BJS_SIG)
    assert sig.verify_message(BJS_CADDR, BJS_MESSAGE, BJS_CSIG)
    assert not sig.verify_message(BJS_ADDR, "foobar", BJS_SIG)
    assert not sig.verify_message(BJS_CADDR, "foobar", BJS_CSIG)
    assert not sig.verify_message("1MsHWS1BnwMc3tLE8G35UXsS58fKipzB7a", BJS_MESSAGE, BJS_SIG)
    assert not sig.verify_message("1Q1pE5vPGEEMqRcVRMbtBK842Y6Pzo6nK9", BJS_MESSAGE, BJS_CSIG)
    key = bytes.fromhex("18E14A7B6A307F426A94F8114701E7C8E774E7F9A47E2C2035DB29A206321725")
    assert sig.sign_message(key, BJS_MESSAGE, compressed=False) == BJS_SIG
    assert sig.sign_message(key, BJS_MESSAGE, compressed=True) == BJS_CSIG


def test_compressed_flag_cross_verification_strict_versus_siggy() -> None:
    # Bitcoin Core (and bitcoinjs: "does not cross verify") honour the header's compressed flag;
    # siggy ignored the header and tried both forms, so the original /new accepted these.
    assert not sig.verify_message(BJS_ADDR, BJS_MESSAGE, BJS_CSIG)
    assert not sig.verify_message(BJS_CADDR, BJS_MESSAGE, BJS_SIG)
    assert sig.check_new_signature(BJS_ADDR, BJS_MESSAGE, BJS_CSIG) is None
    assert sig.check_new_signature(BJS_CADDR, BJS_MESSAGE, BJS_SIG) is None


# --- generated cases ------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize(
    "message", ["", "hello", "x" * 252, "y" * 253, "é中\u2603\U0001f600" * 60, "z" * 1024]
)
def test_sign_then_verify(compressed: bool, message: str) -> None:
    key = _key(len(message) + compressed)
    address = sig.address_for(key, compressed)
    signature = sig.sign_message(key, message, compressed)
    assert len(signature) == sig.SIGNATURE_CHARS
    header = base64.b64decode(signature)[0]
    assert (31 <= header <= 34) if compressed else (27 <= header <= 30)
    assert sig.verify_message(address, message, signature)
    assert sig.verify_message_siggy(address, message, signature)
    assert sig.check_new_signature(address, message, signature) is None
    # altered message, another key's address, the same key's other address form
    altered = message[:-1] + "." if message else "."
    assert not sig.verify_message(address, altered, signature)
    assert sig.check_new_signature(address, altered, signature) == "signature_invalid"
    other = sig.address_for(_key(999), compressed)
    assert not sig.verify_message(other, message, signature)
    assert sig.check_new_signature(other, message, signature) == "signature_invalid"
    assert not sig.verify_message(sig.address_for(key, not compressed), message, signature)


@pytest.mark.parametrize("compressed", [True, False])
def test_altered_signature_bytes_are_refused(compressed: bool) -> None:
    key, message = _key(3), "altered signature"
    address = sig.address_for(key, compressed)
    raw = base64.b64decode(sig.sign_message(key, message, compressed))
    for position in (1, 16, 32, 33, 48, 64):
        bad = bytearray(raw)
        bad[position] ^= 0x01
        assert not sig.verify_message(address, message, _b64(bytes(bad))), position
        assert sig.check_new_signature(address, message, _b64(bytes(bad))) == "signature_invalid"


@pytest.mark.parametrize("compressed", [True, False])
def test_wrong_header_byte(compressed: bool) -> None:
    key, message = _key(4), "header"
    address = sig.address_for(key, compressed)
    raw = base64.b64decode(sig.sign_message(key, message, compressed))
    for header in (0, 1, 26, 35, 36, 127, 255):  # outside 27..34
        bad = _b64(bytes([header]) + raw[1:])
        assert not sig.verify_message(address, message, bad), header
        assert sig.check_new_signature(address, message, bad) is None, header  # siggy: ignored
    # inside 27..34 but with the other recovery id, or the other compressed flag
    flip_recid = _b64(bytes([raw[0] ^ 1]) + raw[1:])
    flip_form = _b64(bytes([raw[0] + (-4 if compressed else 4)]) + raw[1:])
    assert not sig.verify_message(address, message, flip_recid)
    assert not sig.verify_message(address, message, flip_form)
    assert sig.check_new_signature(address, message, flip_recid) is None
    assert sig.check_new_signature(address, message, flip_form) is None


def test_message_length_cap_counts_characters() -> None:
    key = _key(5)
    address = sig.address_for(key)
    at_cap = "é" * sig.MAX_MESSAGE_CHARS  # 1024 characters, 2048 UTF-8 bytes: accepted
    assert sig.check_new_signature(address, at_cap, sig.sign_message(key, at_cap)) is None
    over = "a" * (sig.MAX_MESSAGE_CHARS + 1)
    good_sig = sig.sign_message(key, over)
    assert sig.check_new_signature(address, over, good_sig) == "message_too_long"
    # the cap comes first: even a bad signature and a bad address are refused for the length
    assert sig.check_new_signature("nonsense", over, "short") == "message_too_long"
    # verify_message itself has no cap
    assert sig.verify_message(address, over, good_sig)
    assert sig.verify_message_siggy(address, over, good_sig)


def test_signature_length_and_base64() -> None:
    key, message = _key(6), "base64"
    address = sig.address_for(key)
    good = sig.sign_message(key, message)
    for bad in ("", "abc", good[:-1], good + "=", good + "AAAA", " " + good):
        assert sig.check_new_signature(address, message, bad) == "signature_length", bad
        assert not sig.verify_message(address, message, bad)
    # 88 characters that are not valid base64
    assert sig.check_new_signature(address, message, good[:-2] + "=A") == "signature_invalid"
    assert sig.check_new_signature(address, message, "!" * 88) == "signature_invalid"
    assert sig.check_new_signature(address, message, "é" * 88) == "signature_invalid"
    assert sig.check_new_signature(address, message, "=" * 88) == "signature_invalid"
    assert not sig.verify_message(address, message, good[:-2] + "=A")
    assert not sig.verify_message(address, message, good[:40] + "!!!!" + good[44:])
    assert not sig.verify_message(address, message, good.rstrip("="))
    assert not sig.verify_message(address, message, good[:-1] + "A")  # 66 bytes
    # siggy decoded leniently: 88 characters decoding to 66 bytes used the first 65
    assert sig.check_new_signature(address, message, good[:-1] + "A") is None


def test_bad_base64_is_a_signature_refusal_before_the_address() -> None:
    # siggy decoded the signature before it read the address, so base64 with bad padding was
    # "Signature invalid." whatever the address. ("!" * 88 decodes, leniently, to nothing.)
    assert sig.check_new_signature("not-an-address", "m", "A" * 86 + "=A") == "signature_invalid"
    assert sig.check_new_signature("not-an-address", "m", "!" * 88) == "invalid_address"
    key = _key(7)
    good = sig.sign_message(key, "m")
    assert sig.check_new_signature("not-an-address", "m", good) == "invalid_address"


def test_malformed_inputs_never_raise() -> None:
    address = sig.address_for(_key(8))
    good = sig.sign_message(_key(8), "m")
    assert sig.check_new_signature(address, None, good) == "malformed"
    assert sig.check_new_signature(address, "m", None) == "malformed"
    assert sig.check_new_signature(address, 12, good) == "malformed"
    assert sig.check_new_signature(address, "m", ["x"] * 88) == "malformed"
    assert sig.check_new_signature(None, "m", good) == "invalid_address"
    lone = "\ud800"  # JSON can carry a lone surrogate; it has no UTF-8 form
    assert sig.check_new_signature(address, lone, good) == "signature_invalid"
    assert not sig.verify_message(address, lone, good)
    for args in [
        (None, "m", good),
        (address, None, good),
        (address, "m", None),
        (address, "m", b"bytes"),
        (12, 12, 12),
        (address, "m", "A" * 88),  # r = s = 0 after the header
        (address, "m", _b64(b"\x1f" + b"\xff" * 64)),  # r, s >= n
        (address, "m", _b64(b"\x1f" + sig._N.to_bytes(32, "big") + (1).to_bytes(32, "big"))),
    ]:
        assert sig.verify_message(*args) is False  # type: ignore[arg-type]
        assert sig.verify_message_siggy(*args) is False  # type: ignore[arg-type]
        assert sig.check_new_signature(*args) is not None
    rnd = random.Random(11)
    alphabet = "ABCxyz0189+/=!é "
    for _ in range(200):
        junk = "".join(rnd.choice(alphabet) for _ in range(rnd.choice([87, 88, 89])))
        assert sig.verify_message(address, "m", junk) is False
        assert sig.check_new_signature(address, "m", junk) is not None


def test_r_that_is_no_curve_x_coordinate_is_refused() -> None:
    # x = 5 has no point on secp256k1 (5^3 + 7 = 132 is not a square mod p); pycoin raised here.
    r = 5
    assert pow((r**3 + 7) % sig._P, (sig._P - 1) // 2, sig._P) != 1
    bad = _b64(b"\x1f" + r.to_bytes(32, "big") + (7).to_bytes(32, "big"))
    assert not sig.verify_message(sig.address_for(_key(9)), "m", bad)
    assert sig.check_new_signature(sig.address_for(_key(9)), "m", bad) == "signature_invalid"


def test_every_refusal_word_has_the_original_text() -> None:
    assert set(sig.REFUSAL_MESSAGES) == {
        "malformed",
        "message_too_long",
        "signature_length",
        "invalid_address",
        "signature_invalid",
    }


# --- agreement with the original implementation ---------------------------------------------------


def test_agrees_with_recorded_siggy_verdicts() -> None:
    """tests/data/signatures-siggy.json: verdicts of the original's siggy 0.1.0 on pycoin 0.52
    for valid, altered, re-headed and mis-encoded signatures ("error": siggy raised, the original
    node answered 500, which is a refusal)."""
    cases = json.loads((DATA / "signatures-siggy.json").read_text("utf-8"))["cases"]
    assert len(cases) > 100
    seen = set()
    for case in cases:
        got = sig.check_new_signature(case["address"], case["message"], case["signature"])
        assert (got is None) == (case["siggy"] is True), case["case"]
        seen.add((case["case"], case["siggy"]))
    assert ("header_byte_changed", True) in seen
    assert ("same_key_other_form_address", True) in seen
    assert ("message_altered", False) in seen
