"""Bitcoin signed messages: the ``signmessage`` / ``verifymessage`` format, and the ``/new`` check.

A signed message is the double SHA-256 of ``"\\x18Bitcoin Signed Message:\\n"`` + the Bitcoin
varint of the message's UTF-8 length + the UTF-8 message, signed with ECDSA on secp256k1. The
signature travels as base64 of 65 bytes: a header byte, then r and s (32 bytes each, big-endian).
The header is ``27 + recovery id`` (0..3), plus 4 when the signer's address is made from the
compressed public key. An address is ``Base58Check(version || RIPEMD160(SHA256(public key)))``.

Two ways of checking are offered, because they differ:

- :func:`verify_message` is Bitcoin Core's ``verifymessage``: the header must be 27..34, it picks
  the single public key to recover and whether to hash it compressed or not.
- :func:`check_new_signature` is what the original downstream-node did on ``POST /new`` (with
  siggy 0.1.0 on pycoin 0.52, see docs of the v1 protocol, section 3): message at most 1024
  characters, signature text exactly 88 characters, a mainnet (version 0x00) address, and a
  signature that is accepted when *any* public key recoverable from (r, s) with x = r hashes to
  the address in *either* SEC form. The header byte is ignored altogether. Farmer 0.1.8 checks its
  identity with the same siggy code before it sends it, so this is the rule real identities were
  made to pass; a stricter one could lock out a farmer the original accepted.

Pure Python: the standard library plus ``ecdsa`` (python-ecdsa) for the curve arithmetic. RIPEMD-160
comes from hashlib when OpenSSL still offers it, else from the small implementation below.
Nothing here raises on malformed input: verification returns False, the /new check a reason word.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Collection

from ecdsa import SECP256k1, SigningKey
from ecdsa.ecdsa import Public_key, Signature
from ecdsa.ellipticcurve import INFINITY, PointJacobi

from .tokens import b58decode, b58encode

__all__ = [
    "ACCEPTED_ADDRESS_VERSIONS",
    "MAX_MESSAGE_CHARS",
    "REFUSAL_MESSAGES",
    "SIGNATURE_CHARS",
    "address_for",
    "check_new_signature",
    "decode_address",
    "encode_address",
    "hash160",
    "message_digest",
    "ripemd160",
    "sign_message",
    "verify_message",
    "verify_message_siggy",
]

#: The original node's ``MAX_SIG_MESSAGE_SIZE``: longer messages are refused (counted in
#: characters, i.e. code points, not bytes, whatever its error text says).
MAX_MESSAGE_CHARS = 1024
#: siggy's ``SIGNATURE_LENGTH``: base64 of 65 bytes is 88 characters with its padding.
SIGNATURE_CHARS = 88
#: Address version bytes /new accepts: pycoin's ``bitcoin_address_to_hash160_sec`` wanted 0x00
#: (a ``1...`` address) and raised on anything else, which the original answered with a 500.
ACCEPTED_ADDRESS_VERSIONS: frozenset[int] = frozenset({0x00})

#: What the original node said for each refusal of :func:`check_new_signature` (HTTP 400). The
#: original answered ``invalid_address`` here with a 500 ``Internal Server Error``; the text given
#: is the one its later Base58Check step used.
REFUSAL_MESSAGES: dict[str, str] = {
    "malformed": 'Posted data must be JSON encoded object including "signature" and "message"',
    "message_too_long": "Please restrict your message to less than 1024 bytes.",
    "signature_length": "Your signature is the wrong length.  It should be 88bytes.",
    "invalid_address": "Invalid address given: address is not a valid SJCX address.",
    "signature_invalid": "Signature invalid.",
}

_MAGIC = b"\x18Bitcoin Signed Message:\n"
_CURVE = SECP256k1.curve
_G = SECP256k1.generator
_N = SECP256k1.order
_P = _CURVE.p()


# --- hashes -------------------------------------------------------------------------------------


def ripemd160(data: bytes) -> bytes:
    """RIPEMD-160 of ``data``: hashlib's when OpenSSL offers it (OpenSSL 3 keeps it in the
    legacy provider, often not loaded), else the pure-Python one below."""
    try:
        h = hashlib.new("ripemd160")
    except ValueError:
        return _ripemd160_py(data)
    h.update(data)
    return h.digest()


def hash160(data: bytes) -> bytes:
    """RIPEMD160(SHA256(data)), the hash in a P2PKH address."""
    return ripemd160(hashlib.sha256(data).digest())


# RIPEMD-160 (Dobbertin, Bosselaers, Preneel 1996): two parallel lines of 80 steps over each
# 64-byte block. Per line: the message word order, the rotation amounts and the 5 round constants.
_RL = (
    *range(16),
    *(7, 4, 13, 1, 10, 6, 15, 3, 12, 0, 9, 5, 2, 14, 11, 8),
    *(3, 10, 14, 4, 9, 15, 8, 1, 2, 7, 0, 6, 13, 11, 5, 12),
    *(1, 9, 11, 10, 0, 8, 12, 4, 13, 3, 7, 15, 14, 5, 6, 2),
    *(4, 0, 5, 9, 7, 12, 2, 10, 14, 1, 3, 8, 11, 6, 15, 13),
)
_RR = (
    *(5, 14, 7, 0, 9, 2, 11, 4, 13, 6, 15, 8, 1, 10, 3, 12),
    *(6, 11, 3, 7, 0, 13, 5, 10, 14, 15, 8, 12, 4, 9, 1, 2),
    *(15, 5, 1, 3, 7, 14, 6, 9, 11, 8, 12, 2, 10, 0, 4, 13),
    *(8, 6, 4, 1, 3, 11, 15, 0, 5, 12, 2, 13, 9, 7, 10, 14),
    *(12, 15, 10, 4, 1, 5, 8, 7, 6, 2, 13, 14, 0, 3, 9, 11),
)
_SL = (
    *(11, 14, 15, 12, 5, 8, 7, 9, 11, 13, 14, 15, 6, 7, 9, 8),
    *(7, 6, 8, 13, 11, 9, 7, 15, 7, 12, 15, 9, 11, 7, 13, 12),
    *(11, 13, 6, 7, 14, 9, 13, 15, 14, 8, 13, 6, 5, 12, 7, 5),
    *(11, 12, 14, 15, 14, 15, 9, 8, 9, 14, 5, 6, 8, 6, 5, 12),
    *(9, 15, 5, 11, 6, 8, 13, 12, 5, 12, 13, 14, 11, 8, 5, 6),
)
_SR = (
    *(8, 9, 9, 11, 13, 15, 15, 5, 7, 7, 8, 11, 14, 14, 12, 6),
    *(9, 13, 15, 7, 12, 8, 9, 11, 7, 7, 12, 7, 6, 15, 13, 11),
    *(9, 7, 15, 11, 8, 6, 6, 14, 12, 13, 5, 14, 13, 13, 7, 5),
    *(15, 5, 8, 11, 14, 14, 6, 14, 6, 9, 12, 9, 12, 5, 15, 8),
    *(8, 5, 12, 9, 12, 5, 14, 6, 8, 13, 6, 5, 15, 13, 11, 11),
)
_KL = (0x00000000, 0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xA953FD4E)
_KR = (0x50A28BE6, 0x5C4DD124, 0x6D703EF3, 0x7A6D76E9, 0x00000000)
_M32 = 0xFFFFFFFF


def _rmd_f(j: int, x: int, y: int, z: int) -> int:
    """The boolean function of round ``j`` (0..4)."""
    if j == 0:
        return x ^ y ^ z
    if j == 1:
        return (x & y) | (~x & z)
    if j == 2:
        return (x | ~y) ^ z
    if j == 3:
        return (x & z) | (y & ~z)
    return x ^ (y | ~z)


def _rol(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & _M32


def _ripemd160_py(data: bytes) -> bytes:
    """Pure-Python RIPEMD-160 (slow, fine for the 32-byte inputs of addresses)."""
    msg = bytes(data)
    bits = (8 * len(msg)) & 0xFFFFFFFFFFFFFFFF
    msg += b"\x80" + b"\x00" * ((55 - len(msg)) % 64) + bits.to_bytes(8, "little")
    h0, h1, h2, h3, h4 = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0
    for off in range(0, len(msg), 64):
        x = [int.from_bytes(msg[off + 4 * i : off + 4 * i + 4], "little") for i in range(16)]
        al, bl, cl, dl, el = h0, h1, h2, h3, h4
        ar, br, cr, dr, er = h0, h1, h2, h3, h4
        for j in range(80):
            rnd = j // 16
            t = (al + _rmd_f(rnd, bl, cl, dl) + x[_RL[j]] + _KL[rnd]) & _M32
            t = (_rol(t, _SL[j]) + el) & _M32
            al, el, dl, cl, bl = el, dl, _rol(cl, 10), bl, t
            t = (ar + _rmd_f(4 - rnd, br, cr, dr) + x[_RR[j]] + _KR[rnd]) & _M32
            t = (_rol(t, _SR[j]) + er) & _M32
            ar, er, dr, cr, br = er, dr, _rol(cr, 10), br, t
        h0, h1, h2, h3, h4 = (
            (h1 + cl + dr) & _M32,
            (h2 + dl + er) & _M32,
            (h3 + el + ar) & _M32,
            (h4 + al + br) & _M32,
            (h0 + bl + cr) & _M32,
        )
    return b"".join(h.to_bytes(4, "little") for h in (h0, h1, h2, h3, h4))


# --- addresses ----------------------------------------------------------------------------------


def _checksum(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()[:4]


def encode_address(h160: bytes, version: int = 0x00) -> str:
    """Base58Check of ``version || h160``."""
    payload = bytes([version]) + bytes(h160)
    return b58encode(payload + _checksum(payload))


def decode_address(
    address: object, versions: Collection[int] = ACCEPTED_ADDRESS_VERSIONS
) -> bytes | None:
    """The 20-byte hash160 of a P2PKH ``address`` whose version byte is in ``versions``; None
    when it is not text, not Base58, not 25 bytes, has a bad checksum or another version."""
    if not isinstance(address, str) or not address or len(address) > 64:
        return None
    try:
        raw = b58decode(address)
    except ValueError:
        return None
    if len(raw) != 25:
        return None
    payload, check = raw[:21], raw[21:]
    if _checksum(payload) != check or payload[0] not in versions:
        return None
    return payload[1:]


def _sec(point: PointJacobi, compressed: bool) -> bytes:
    """The SEC encoding of a public key point."""
    x, y = point.x(), point.y()
    if compressed:
        return bytes([2 + (y & 1)]) + x.to_bytes(32, "big")
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def _secret_exponent(private_key_bytes: bytes) -> int:
    if not isinstance(private_key_bytes, bytes | bytearray) or len(private_key_bytes) != 32:
        raise ValueError("a private key is 32 bytes")
    d = int.from_bytes(private_key_bytes, "big")
    if not 1 <= d < _N:
        raise ValueError("private key out of range for secp256k1")
    return d


def address_for(private_key_bytes: bytes, compressed: bool = True, version: int = 0x00) -> str:
    """The P2PKH address of a 32-byte private key (raises ValueError on a bad key)."""
    point = _G * _secret_exponent(private_key_bytes)
    return encode_address(hash160(_sec(point, compressed)), version)


# --- messages and signatures --------------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def message_digest(message: str) -> bytes:
    """Double SHA-256 of the framed message (raises UnicodeEncodeError on lone surrogates)."""
    data = message.encode("utf-8")
    framed = _MAGIC + _varint(len(data)) + data
    return hashlib.sha256(hashlib.sha256(framed).digest()).digest()


def _recover(e: int, r: int, s: int, recid: int) -> PointJacobi | None:
    """The public key point that signature (r, s) on digest ``e`` recovers with ``recid`` (bit 0:
    parity of R's y; bit 1: R's x is r + n), after SEC 1 v2 section 4.1.6; None if there is none.
    The point is checked with a plain ECDSA verification before it is returned."""
    if not (1 <= r < _N and 1 <= s < _N and 0 <= recid <= 3):
        return None
    x = r + (recid >> 1) * _N
    if x >= _P:
        return None
    alpha = (pow(x, 3, _P) + 7) % _P
    y = pow(alpha, (_P + 1) // 4, _P)  # p = 3 (mod 4): the square root, if there is one
    if y * y % _P != alpha:
        return None
    if (y & 1) != (recid & 1):
        y = _P - y
    big_r = PointJacobi(_CURVE, x, y, 1, _N)
    r_inv = pow(r, -1, _N)
    # Q = r^-1 (s R - e G)
    q = _G.mul_add((-e * r_inv) % _N, big_r, (s * r_inv) % _N)
    if q == INFINITY:
        return None
    if not Public_key(_G, q, verify=False).verifies(e, Signature(r, s)):
        return None
    return q


def sign_message(private_key_bytes: bytes, message: str, compressed: bool = True) -> str:
    """Sign ``message`` the way Bitcoin Core's ``signmessagewithprivkey`` does: RFC 6979 nonce,
    low s, header 27 + recid (+4 if compressed). Returns the 88-character base64 signature."""
    d = _secret_exponent(private_key_bytes)
    digest = message_digest(message)
    e = int.from_bytes(digest, "big")
    key = SigningKey.from_secret_exponent(d, curve=SECP256k1, hashfunc=hashlib.sha256)
    r, s = key.sign_digest_deterministic(
        digest, hashfunc=hashlib.sha256, sigencode=lambda r, s, _order: (r, s)
    )
    if s > _N // 2:
        s = _N - s
    public = _G * d
    for recid in range(4):
        q = _recover(e, r, s, recid)
        if q is not None and q.x() == public.x() and q.y() == public.y():
            header = 27 + recid + (4 if compressed else 0)
            raw = bytes([header]) + r.to_bytes(32, "big") + s.to_bytes(32, "big")
            return base64.b64encode(raw).decode("ascii")
    raise AssertionError("no recovery id reproduces the signing key")  # pragma: no cover


def verify_message(
    address: str,
    message: str,
    signature_b64: str,
    *,
    versions: Collection[int] = ACCEPTED_ADDRESS_VERSIONS,
) -> bool:
    """Bitcoin Core's ``verifymessage``: True iff ``signature_b64`` (strict base64 of 65 bytes,
    header 27..34) recovers the key whose address is ``address``. Never raises."""
    try:
        h160 = decode_address(address, versions)
        if h160 is None or not isinstance(message, str) or not isinstance(signature_b64, str):
            return False
        raw = base64.b64decode(signature_b64.encode("ascii"), validate=True)
        if len(raw) != 65 or not 27 <= raw[0] <= 34:
            return False
        recid, compressed = (raw[0] - 27) & 3, raw[0] >= 31
        r, s = int.from_bytes(raw[1:33], "big"), int.from_bytes(raw[33:65], "big")
        q = _recover(int.from_bytes(message_digest(message), "big"), r, s, recid)
        return q is not None and hash160(_sec(q, compressed)) == h160
    except (ValueError, TypeError, ArithmeticError, binascii.Error, UnicodeError):
        return False


def _siggy_accepts(h160: bytes, message: str, signature: str) -> bool:
    """siggy 0.1.0's ``verify_signature`` after its length check: Python's lenient base64 decode
    (characters outside the alphabet are skipped; bad padding fails), r and s from bytes 1..32
    and 33..64 of whatever came out, header ignored, both y parities of R with x = r, each
    candidate key hashed in both SEC forms."""
    try:
        raw = base64.b64decode(signature)
        e = int.from_bytes(message_digest(message), "big")
    except (ValueError, binascii.Error, UnicodeError):
        return False
    r, s = int.from_bytes(raw[1:33], "big"), int.from_bytes(raw[33:65], "big")
    for recid in (0, 1):
        q = _recover(e, r, s, recid)
        if q is not None and h160 in (hash160(_sec(q, True)), hash160(_sec(q, False))):
            return True
    return False


def verify_message_siggy(address: str, message: str, signature_b64: str) -> bool:
    """The original node's signature test (siggy 0.1.0 on pycoin 0.52), without the message cap:
    True iff the signature text is 88 characters and some key recoverable from it, compressed or
    not, has the mainnet ``address``. Never raises."""
    return check_new_signature(address, message, signature_b64, max_message_chars=None) is None


def check_new_signature(
    address: object,
    message: object,
    signature: object,
    *,
    max_message_chars: int | None = MAX_MESSAGE_CHARS,
) -> str | None:
    """The checks the original node made on ``POST /new/<address>``, in its order. None when the
    request passes; else the reason word (a key of :data:`REFUSAL_MESSAGES`):

    - ``malformed``: ``message`` or ``signature`` is not a string;
    - ``message_too_long``: the message has more than 1024 characters;
    - ``signature_length``: the signature is not exactly 88 characters;
    - ``signature_invalid``: the signature is not base64 (siggy checked this before it looked at
      the address, so a bad signature with a bad address is refused as a bad signature);
    - ``invalid_address``: not a Base58Check P2PKH address with version 0x00 (the original: 500);
    - ``signature_invalid``: no key recoverable from the signature has that address.
    """
    if not isinstance(message, str) or not isinstance(signature, str):
        return "malformed"
    if max_message_chars is not None and len(message) > max_message_chars:
        return "message_too_long"
    if len(signature) != SIGNATURE_CHARS:
        return "signature_length"
    try:
        base64.b64decode(signature)
    except (ValueError, binascii.Error):
        return "signature_invalid"
    h160 = decode_address(address)
    if h160 is None:
        return "invalid_address"
    try:
        accepted = _siggy_accepts(h160, message, signature)
    except Exception:  # never raise on hostile input; an arithmetic surprise is a refusal
        accepted = False
    return None if accepted else "signature_invalid"
