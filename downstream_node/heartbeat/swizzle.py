"""Swizzle heartbeat: Shacham-Waters private compact proof of retrievability.

Speaks the dict format of the original pure-Python ``PySwizzle``; the PRFs run batched and
the sector arithmetic on gmpy2.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import cycle, repeat
from operator import add, itemgetter, mul
from typing import Any, BinaryIO, ClassVar

import gmpy2
from gmpy2 import mpz

from .codec import (
    b64,
    check_bytes,
    check_int,
    coerce,
    get_b64,
    get_bool,
    get_int,
    get_list,
    get_mapping,
    parse_b64,
)
from .crypto import AES_KEY_SIZES, cfb8_decrypt, cfb8_encrypt
from .errors import HeartbeatError
from .prf import KeyedPRF

__all__ = [
    "DEFAULT_SECTORS",
    "PRIME_BITS",
    "Swizzle",
    "SwizzleChallenge",
    "SwizzleProof",
    "SwizzleState",
    "SwizzleTag",
]

DEFAULT_SECTORS = 10
PRIME_BITS = 1024
MIN_PRIME_BITS = 64
MAX_PRIME_BITS = 4096
MAX_SECTORS = 1024
# 2**24 chunks of 10 x 128 bytes is a 20 GiB file: far above any chunk we hand out, and a
# bound on the work a hostile challenge or tag can ask for.
MAX_CHUNKS = 1 << 24
REDRAWS = 64  # challenges drawn at most for one that samples a file's data
_MAX_VALUE = 1 << MAX_PRIME_BITS
KEY_SIZE = 32
_PRF_KEY_SIZES = (32,)
_IV_SIZES = (0, 16)  # the original leaves iv empty until a state is first encrypted
_READ_BLOCK = 1 << 20
_SPAN_GAP = 8


def _read_full(file: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at end of file (short reads are retried)."""
    data = file.read(size)
    if data is None:
        data = b""
    if len(data) == size or not data:
        return bytes(data)
    parts = [data]
    got = len(data)
    while got < size:
        more = file.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _spans(chunks: Sequence[int], size: int) -> Iterator[tuple[int, list[int]]]:
    """Group sorted chunk indices into runs read with one seek each: neighbours up to
    ``_SPAN_GAP`` chunks apart share a read (cheaper than a seek, and on a seeded chunk
    than a new keystream), and no read exceeds ``_READ_BLOCK`` bytes."""
    i = 0
    while i < len(chunks):
        first = chunks[i]
        j = i
        while (
            j + 1 < len(chunks)
            and chunks[j + 1] - chunks[j] <= _SPAN_GAP
            and (chunks[j + 1] - first + 1) * size <= _READ_BLOCK
        ):
            j += 1
        yield first, list(chunks[i : j + 1])
        i = j + 1


@lru_cache(maxsize=4)
def _sector_cutter(sectorsize: int, count: int) -> Callable[[bytes], Any]:
    """One ``itemgetter`` cutting ``count`` consecutive sectors (a tuple when ``count`` > 1).

    Cached: a 1 MiB block of a 1024-bit prime has 8,190 sectors, and building the slices
    costs about as much as cutting them; a few sizes (the full block, the last one) recur.
    """
    return itemgetter(*(slice(k * sectorsize, (k + 1) * sectorsize) for k in range(count)))


def _check_big_ints(values: Sequence[object], name: str) -> tuple[int, ...]:
    for value in values:
        if type(value) is not int:
            raise HeartbeatError(f"{name}: expected integers, got {type(value).__name__}")
        if not 0 <= value < _MAX_VALUE:
            raise HeartbeatError(f"{name}: integer out of range")
    return tuple(values)  # type: ignore[arg-type]


def _mac_input(iv: bytes, chunks: int, f_key: bytes, alpha_key: bytes, encrypted: bool) -> bytes:
    # the original's HMAC input, over the keys as stored (ciphertext when encrypted)
    return b"".join((iv, str(chunks).encode(), f_key, alpha_key, str(encrypted).encode()))


@dataclass(frozen=True, slots=True)
class SwizzleChallenge:
    """Sample ``chunks`` chunk indices and coefficients below ``v_max`` from ``key``."""

    chunks: int
    v_max: int
    key: bytes

    def __post_init__(self) -> None:
        # at least one chunk: a zero-chunk challenge accepted an all-zero proof
        check_int(self.chunks, "challenge.chunks", lo=1, hi=MAX_CHUNKS)
        check_int(self.v_max, "challenge.v_max", lo=2, hi=_MAX_VALUE)
        check_bytes(self.key, "challenge.key", _PRF_KEY_SIZES)

    def todict(self) -> dict[str, Any]:
        return {"chunks": self.chunks, "v_max": self.v_max, "key": b64(self.key)}

    @classmethod
    def fromdict(cls, d: object) -> SwizzleChallenge:
        m = get_mapping(d, "challenge", ("chunks", "v_max", "key"))
        return cls(
            chunks=get_int(m, "chunks", "challenge", lo=1, hi=MAX_CHUNKS),
            v_max=get_int(m, "v_max", "challenge", lo=2, hi=_MAX_VALUE),
            key=get_b64(m, "key", "challenge", sizes=_PRF_KEY_SIZES),
        )


@dataclass(frozen=True, slots=True)
class SwizzleTag:
    """One authenticator ``sigma_i`` per chunk."""

    sigma: tuple[int, ...]

    def __post_init__(self) -> None:
        if type(self.sigma) is not tuple or not 1 <= len(self.sigma) <= MAX_CHUNKS:
            raise HeartbeatError(f"tag.sigma: expected a tuple of 1 to {MAX_CHUNKS} integers")
        _check_big_ints(self.sigma, "tag.sigma")

    def todict(self) -> dict[str, Any]:
        return {"sigma": list(self.sigma)}

    @classmethod
    def fromdict(cls, d: object) -> SwizzleTag:
        m = get_mapping(d, "tag", ("sigma",))
        raw = get_list(m, "sigma", "tag", lo=1, hi=MAX_CHUNKS)
        return cls(sigma=_check_big_ints(raw, "tag.sigma"))


@dataclass(frozen=True, slots=True)
class SwizzleState:
    """The PRF keys (normally AES-CFB8-encrypted under the heartbeat key), chunk count, MAC.

    Our ``encode`` always stores the keys encrypted, and nothing here ever decrypts a state
    in place: the plaintext keys exist only inside ``verify``.
    """

    f_key: bytes
    alpha_key: bytes
    chunks: int
    encrypted: bool
    iv: bytes
    hmac: bytes

    def __post_init__(self) -> None:
        check_bytes(self.f_key, "state.f_key", _PRF_KEY_SIZES)
        check_bytes(self.alpha_key, "state.alpha_key", _PRF_KEY_SIZES)
        check_int(self.chunks, "state.chunks", lo=1, hi=MAX_CHUNKS)
        if type(self.encrypted) is not bool:
            raise HeartbeatError("state.encrypted: expected a boolean")
        check_bytes(self.iv, "state.iv", (16,) if self.encrypted else _IV_SIZES)
        check_bytes(self.hmac, "state.hmac", (32,))

    @property
    def remaining(self) -> None:
        """Swizzle challenges are unlimited (``None``), unlike Merkle's."""
        return None

    def mac_input(self) -> bytes:
        return _mac_input(self.iv, self.chunks, self.f_key, self.alpha_key, self.encrypted)

    def todict(self) -> dict[str, Any]:
        return {
            "f_key": b64(self.f_key),
            "alpha_key": b64(self.alpha_key),
            "chunks": self.chunks,
            "encrypted": self.encrypted,
            "iv": b64(self.iv),
            "hmac": b64(self.hmac),
        }

    @classmethod
    def fromdict(cls, d: object) -> SwizzleState:
        m = get_mapping(d, "state", ("f_key", "alpha_key", "chunks", "encrypted", "iv", "hmac"))
        return cls(
            f_key=get_b64(m, "f_key", "state", sizes=_PRF_KEY_SIZES),
            alpha_key=get_b64(m, "alpha_key", "state", sizes=_PRF_KEY_SIZES),
            chunks=get_int(m, "chunks", "state", lo=1, hi=MAX_CHUNKS),
            encrypted=get_bool(m, "encrypted", "state"),
            iv=get_b64(m, "iv", "state", sizes=_IV_SIZES),
            hmac=get_b64(m, "hmac", "state", sizes=(32,)),
        )


@dataclass(frozen=True, slots=True)
class SwizzleProof:
    """``mu_j`` per sector and the aggregated ``sigma``."""

    mu: tuple[int, ...]
    sigma: int

    def __post_init__(self) -> None:
        if type(self.mu) is not tuple or not 1 <= len(self.mu) <= MAX_SECTORS:
            raise HeartbeatError(f"proof.mu: expected a tuple of 1 to {MAX_SECTORS} integers")
        _check_big_ints(self.mu, "proof.mu")
        _check_big_ints((self.sigma,), "proof.sigma")

    def todict(self) -> dict[str, Any]:
        return {"mu": list(self.mu), "sigma": self.sigma}

    @classmethod
    def fromdict(cls, d: object) -> SwizzleProof:
        m = get_mapping(d, "proof", ("mu", "sigma"))
        mu = _check_big_ints(get_list(m, "mu", "proof", lo=1, hi=MAX_SECTORS), "proof.mu")
        return cls(mu=mu, sigma=_check_big_ints((m["sigma"],), "proof.sigma")[0])


def _check_prime(value: object) -> int:
    if type(value) not in (int, type(mpz(0))):  # never bool or float
        raise HeartbeatError(f"prime must be an integer, got {type(value).__name__}")
    prime = int(value)  # type: ignore[call-overload]
    if not MIN_PRIME_BITS <= prime.bit_length() <= MAX_PRIME_BITS:
        raise HeartbeatError(f"prime must have {MIN_PRIME_BITS} to {MAX_PRIME_BITS} bits")
    if not gmpy2.is_prime(prime):
        raise HeartbeatError("prime is not prime")
    return prime


def _check_aes_key(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise HeartbeatError(f"key must be bytes, got {type(value).__name__}")
    key = bytes(value)
    if len(key) not in AES_KEY_SIZES:
        raise HeartbeatError("key must be 16, 24 or 32 bytes")
    return key


def generate_prime(bits: int = PRIME_BITS) -> int:
    """A random probable prime of exactly ``bits`` bits."""
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | 1
        prime = int(gmpy2.next_prime(candidate))
        if prime.bit_length() == bits:
            return prime


class Swizzle:
    """The Swizzle heartbeat (the original's ``PySwizzle`` wire format).

    Errors: malformed objects, an unusable file and a state with a bad MAC when issuing a
    challenge raise ``HeartbeatError``. ``verify`` returns ``False`` for any well-formed
    but wrong proof, challenge or state (including a bad MAC, a challenge with another
    ``v_max`` than the prime, or more chunks than the state has).
    """

    DEFAULT_SECTORS: ClassVar[int] = DEFAULT_SECTORS
    PRIME_BITS: ClassVar[int] = PRIME_BITS
    Tag: ClassVar[type[SwizzleTag]] = SwizzleTag
    State: ClassVar[type[SwizzleState]] = SwizzleState
    Challenge: ClassVar[type[SwizzleChallenge]] = SwizzleChallenge
    Proof: ClassVar[type[SwizzleProof]] = SwizzleProof

    __slots__ = ("_split", "key", "prime", "sectors", "sectorsize")

    def __init__(
        self, key: bytes | None = None, prime: int | None = None, sectors: int = DEFAULT_SECTORS
    ) -> None:
        self.key = os.urandom(KEY_SIZE) if key is None else _check_aes_key(key)
        self.prime = generate_prime() if prime is None else _check_prime(prime)
        self.sectors = check_int(sectors, "sectors", lo=1, hi=MAX_SECTORS)
        self.sectorsize = self.prime.bit_length() // 8
        ss = self.sectorsize
        cuts = [slice(j * ss, (j + 1) * ss) for j in range(self.sectors)]
        # itemgetter slices a chunk into all its sectors in one call (a 1-tuple needs a
        # wrapper: itemgetter with a single item returns the item itself)
        self._split: Callable[[bytes], tuple[bytes, ...]] = (
            itemgetter(*cuts) if len(cuts) > 1 else (lambda chunk: (chunk[cuts[0]],))
        )

    def __repr__(self) -> str:  # never show the key
        return f"Swizzle(prime_bits={self.prime.bit_length()}, sectors={self.sectors})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Swizzle)
            and hmac.compare_digest(self.key, other.key)
            and self.prime == other.prime
            and self.sectors == other.sectors
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def chunk_size(self) -> int:
        return self.sectors * self.sectorsize

    def todict(self) -> dict[str, Any]:
        return {"key": b64(self.key), "prime": self.prime, "sectors": self.sectors}

    @classmethod
    def fromdict(cls, d: object) -> Swizzle:
        m = get_mapping(d, "heartbeat", ("key", "prime", "sectors"))
        key = parse_b64(m["key"], "heartbeat.key", sizes=sorted(AES_KEY_SIZES))
        check_int(m["prime"], "heartbeat.prime", lo=2, hi=_MAX_VALUE)
        sectors = get_int(m, "sectors", "heartbeat", lo=1, hi=MAX_SECTORS)
        return cls(key=key, prime=m["prime"], sectors=sectors)

    def get_public(self) -> Swizzle:
        """Same prime and sectors with a fresh, unrelated key (as the original did)."""
        return Swizzle(key=None, prime=self.prime, sectors=self.sectors)

    # -- sector arithmetic ------------------------------------------------------------
    def _tail_products(self, chunk: bytes, coefs: Sequence[int]) -> list[int]:
        """``coef_j * m_j`` for the sectors present in a short chunk (the last may be short)."""
        ss = self.sectorsize
        return [
            coefs[j] * int.from_bytes(chunk[j * ss : (j + 1) * ss], "big")
            for j in range(min(self.sectors, -(-len(chunk) // ss)))
        ]

    # -- the scheme -------------------------------------------------------------------
    def encode(self, file: BinaryIO) -> tuple[SwizzleTag, SwizzleState]:
        """Tag ``file`` (read once from its start, in 1 MiB blocks).

        Like the original, a file of ``k`` full chunks plus ``r`` bytes gets ``k + 1``
        authenticators (the last one over the ``r`` bytes, possibly none). Raises
        ``HeartbeatError`` on an empty file, whose proof would need no data.
        """
        f_key, alpha_key = os.urandom(KEY_SIZE), os.urandom(KEY_SIZE)
        sigma = self._authenticators(file, f_key, alpha_key)
        iv = os.urandom(16)
        sealed = cfb8_encrypt(self.key, iv, f_key + alpha_key)
        f_sealed, alpha_sealed = sealed[:32], sealed[32:]
        mac = self._mac(_mac_input(iv, len(sigma), f_sealed, alpha_sealed, True))
        state = SwizzleState(f_sealed, alpha_sealed, len(sigma), True, iv, mac)
        return SwizzleTag(sigma=tuple(sigma)), state

    def _authenticators(self, file: BinaryIO, f_key: bytes, alpha_key: bytes) -> list[int]:
        """``sigma_i = f(i) + sum_j alpha(j) * m_ij mod p`` for every chunk of ``file``."""
        p, size = mpz(self.prime), self.chunk_size
        f = KeyedPRF(f_key, self.prime)
        alphas = [mpz(a) for a in KeyedPRF(alpha_key, self.prime).many(range(self.sectors))]
        per_block = max(1, _READ_BLOCK // size)
        file.seek(0)
        sigma: list[int] = []
        while True:
            data = _read_full(file, per_block * size)
            full = len(data) // size
            if len(sigma) + full >= MAX_CHUNKS:
                raise HeartbeatError("file too large for one Swizzle encoding")
            f_values = f.many(range(len(sigma), len(sigma) + full))
            sigma += self._block_sigmas(data, alphas, f_values, p)
            if len(data) < per_block * size:
                tail = data[full * size :]
                if not sigma and not tail:
                    raise HeartbeatError("cannot encode an empty file")
                sigma.append(int((f(len(sigma)) + sum(self._tail_products(tail, alphas))) % p))
                return sigma

    def _block_sigmas(
        self, data: bytes, alphas: Sequence[mpz], f_values: Sequence[int], p: mpz
    ) -> list[int]:
        """``(f_i + sum_j alphas[j] * m_ij) mod p`` for the first ``len(f_values)`` chunks
        of ``data``.

        Per sector one slice, one conversion, one product and one addition, all from C-level
        iteration: the sectors of the whole block are cut by one ``itemgetter`` call. That
        is the floor with gmpy2: packing many sectors into one big product needs room for
        the 2048-bit products, which doubles the multiplication and conversion work.
        """
        count = len(f_values) * self.sectors
        if count == 0:
            return []
        cut = _sector_cutter(self.sectorsize, count)
        sectors = cut(data) if count > 1 else (cut(data),)
        products = map(mul, cycle(alphas), map(mpz.from_bytes, sectors))
        groups = zip(*[products] * self.sectors, strict=True)  # one chunk's products each
        sums = map(sum, groups, f_values)  # f_i + the products of chunk i
        return [int(total % p) for total in sums]

    def _mac(self, mac_input: bytes) -> bytes:
        return hmac.digest(self.key, mac_input, "sha256")

    def check_state(self, state: SwizzleState | Mapping[str, Any]) -> bool:
        """Whether the state's MAC holds under this heartbeat's key (constant-time)."""
        st = coerce(state, SwizzleState, "state")
        return hmac.compare_digest(self._mac(st.mac_input()), st.hmac)

    def _open(self, state: SwizzleState) -> tuple[bytes, bytes] | None:
        """The plaintext PRF keys of an authentic state, or None; ``state`` is untouched."""
        if not self.check_state(state):
            return None
        if not state.encrypted:
            return state.f_key, state.alpha_key
        plain = cfb8_decrypt(self.key, state.iv, state.f_key + state.alpha_key)
        return plain[:32], plain[32:]

    def next_challenge(
        self,
        state: SwizzleState | Mapping[str, Any],
        chunks: int | None = None,
        *,
        file_size: int | None = None,
    ) -> tuple[SwizzleChallenge, SwizzleState]:
        """A fresh random challenge and the (unchanged) state, for symmetry with Merkle.

        ``chunks`` (default: all of the state's chunks) is clamped to at least one.
        ``file_size``, when the challenger knows it: a file of whole chunks ends, as in the
        original's encoding, with an authenticator of no data, and a challenge that samples
        only that one is answered without the file (a quarter of them for a one-chunk file),
        so such a challenge is drawn again (only if the state does hold that file's chunks
        and an empty tail: one encoded from other bytes may not, and would never qualify).
        Raises ``HeartbeatError`` if the state's MAC fails.
        """
        st = coerce(state, SwizzleState, "state")
        if not self.check_state(st):
            raise HeartbeatError("state signature invalid")
        count = st.chunks if chunks is None else check_int(chunks, "chunks", lo=0, hi=st.chunks)
        empty_tail = (
            file_size is not None
            and file_size % self.chunk_size == 0
            and st.chunks == file_size // self.chunk_size + 1
            and st.chunks > 1
        )
        for _ in range(REDRAWS):
            challenge = SwizzleChallenge(
                chunks=max(1, count), v_max=self.prime, key=os.urandom(KEY_SIZE)
            )
            if not empty_tail or set(self._sample(challenge, st.chunks)) != {st.chunks - 1}:
                return challenge, st
        # Each draw misses the data chunks with probability at most 1/4: not reached.
        raise HeartbeatError("no challenge sampling the file's data could be drawn")

    def gen_challenge(
        self, state: SwizzleState | Mapping[str, Any], chunks: int | None = None
    ) -> SwizzleChallenge:
        """A fresh random challenge; ``state`` is never modified (nor decrypted)."""
        return self.next_challenge(state, chunks)[0]

    def _sample(self, chal: SwizzleChallenge, count: int) -> dict[int, int]:
        """Chunk index -> summed coefficient; repeated indices add their coefficients."""
        digests = KeyedPRF.digests(range(chal.chunks))  # both PRFs hash the same points
        indices = KeyedPRF(chal.key, count).many_digests(digests)
        coefs = KeyedPRF(chal.key, chal.v_max).many_digests(digests)
        weights: dict[int, int] = {}
        for c, v in zip(indices, coefs, strict=True):
            weights[c] = weights.get(c, 0) + v
        return weights

    def prove(
        self,
        file: BinaryIO,
        challenge: SwizzleChallenge | Mapping[str, Any],
        tag: SwizzleTag | Mapping[str, Any],
    ) -> SwizzleProof:
        """Answer ``challenge`` from ``file`` and ``tag``, reading only challenged chunks.

        Raises ``HeartbeatError`` if the file is shorter than the tag describes, the tag
        holds values outside the prime's range or the challenge samples more chunks than
        the tag has.
        """
        chal = coerce(challenge, SwizzleChallenge, "challenge")
        tg = coerce(tag, SwizzleTag, "tag")
        p, size, sectors = self.prime, self.chunk_size, self.sectors
        if max(tg.sigma) >= p:
            raise HeartbeatError("tag value not below this heartbeat's prime")
        if chal.chunks > len(tg.sigma):
            # never issued by a node (it samples at most every chunk); bounds the work
            raise HeartbeatError("challenge samples more chunks than the tag has")
        last = len(tg.sigma) - 1
        weights = self._sample(chal, len(tg.sigma))
        mu = [mpz(0)] * sectors
        sigma = mpz(0)
        from_bytes, split = mpz.from_bytes, self._split
        for first, span in _spans(sorted(weights), size):
            file.seek(first * size)
            data = _read_full(file, (span[-1] - first + 1) * size)
            for c in span:
                w = mpz(weights[c] % p)
                chunk = data[(c - first) * size : (c - first + 1) * size]
                if len(chunk) == size:
                    mu = list(map(add, mu, map(mul, repeat(w), map(from_bytes, split(chunk)))))
                elif c < last:
                    raise HeartbeatError(f"file ends inside chunk {c} of {len(tg.sigma)}")
                else:
                    for j, product in enumerate(self._tail_products(chunk, [w] * sectors)):
                        mu[j] += product
                sigma += w * tg.sigma[c]
        mu = [m % p for m in mu]
        return SwizzleProof(mu=tuple(int(x) for x in mu), sigma=int(sigma % p))

    def verify(
        self,
        proof: SwizzleProof | Mapping[str, Any],
        challenge: SwizzleChallenge | Mapping[str, Any],
        state: SwizzleState | Mapping[str, Any],
    ) -> bool:
        """Whether ``proof`` answers ``challenge`` for the file ``state`` was made from.

        Dicts are parsed first (``HeartbeatError`` if malformed); the state is decrypted
        into local variables only.
        """
        pr = coerce(proof, SwizzleProof, "proof")
        chal = coerce(challenge, SwizzleChallenge, "challenge")
        st = coerce(state, SwizzleState, "state")
        p = self.prime
        if chal.v_max != p or chal.chunks > st.chunks:
            return False
        if len(pr.mu) != self.sectors or pr.sigma >= p or max(pr.mu) >= p:
            return False
        keys = self._open(st)
        if keys is None:
            return False
        weights = self._sample(chal, st.chunks)
        f_values = KeyedPRF(keys[0], p).many(weights)
        alphas = KeyedPRF(keys[1], p).many(range(self.sectors))
        rhs = sum(map(mul, map(mpz, weights.values()), f_values), mpz(0))
        rhs += sum(map(mul, map(mpz, alphas), pr.mu), mpz(0))
        return int(rhs % p) == pr.sigma

    @staticmethod
    def tag_type() -> type[SwizzleTag]:
        return SwizzleTag

    @staticmethod
    def state_type() -> type[SwizzleState]:
        return SwizzleState

    @staticmethod
    def challenge_type() -> type[SwizzleChallenge]:
        return SwizzleChallenge

    @staticmethod
    def proof_type() -> type[SwizzleProof]:
        return SwizzleProof
