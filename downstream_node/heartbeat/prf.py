"""KeyedPRF: the original library's keyed pseudo-random function onto ``[0, range)``.

SHA-256 of ``str(x)`` sized to the range, AES-CFB8 from a zero IV, masked to the range's bits,
re-encrypted on the same stream until below the range; ``many`` batches evaluations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from hashlib import sha256

from .crypto import AES_KEY_SIZES, ByteStream, Cfb8Cipher
from .errors import HeartbeatError

__all__ = ["MAX_TRIES", "KeyedPRF"]

# Each attempt succeeds with probability range / 2**bitlen(range) >= 1/2, so 256 failures in a
# row (p < 2**-256) mean a broken cipher, not bad luck: stop rather than spin forever.
MAX_TRIES = 256


class KeyedPRF:
    """``KeyedPRF(key, range)(x)`` is a deterministic pseudo-random integer in ``[0, range)``."""

    __slots__ = ("_cipher", "_mask", "_nbytes", "_pad", "key", "range")

    def __init__(self, key: bytes, range_: int) -> None:
        if len(key) not in AES_KEY_SIZES:
            raise HeartbeatError(f"PRF key must be 16, 24 or 32 bytes, got {len(key)}")
        if range_ < 1:
            # bit length 0 would make every attempt fail: the original looped forever here
            raise HeartbeatError("PRF range must be at least 1")
        self.key = key
        self.range = int(range_)
        bits = self.range.bit_length()
        self._nbytes = (bits + 7) // 8
        self._mask = (1 << bits) - 1
        self._pad = bytes(max(0, self._nbytes - 32))
        self._cipher = Cfb8Cipher(key)

    def __call__(self, x: int) -> int:
        return self._from_digest(sha256(str(x).encode()).digest())

    def _from_digest(self, digest: bytes) -> int:
        if self.range == 1:
            return 0  # the only value; the original reached it after a few wasted attempts
        return self._finish(self._cipher.stream(), digest, MAX_TRIES)

    eval = __call__  # the original's method name

    @staticmethod
    def digests(xs: Iterable[int]) -> list[bytes]:
        """The SHA-256 inputs of ``xs``: shareable between PRFs evaluated at the same points."""
        return [sha256(str(x).encode()).digest() for x in xs]

    def many(self, xs: Iterable[int]) -> list[int]:
        """Evaluate at each of ``xs``: the same values as one call each."""
        return self.many_digests(self.digests(xs))

    def many_digests(self, digests: Sequence[bytes]) -> list[int]:
        """Evaluate at the points whose ``digests`` are given, in a batch (all CFB8 streams
        advanced together) when that is cheaper than one evaluation at a time."""
        if self.range == 1:
            return [0] * len(digests)
        results = [0] * len(digests)
        pending = list(range(len(digests)))  # points still without a value
        registers = bytes(16 * len(digests))  # fresh streams: the all-zero IV
        for tries in range(MAX_TRIES):
            if self._one_at_a_time_is_cheaper(len(pending)):
                # few streams (a small batch, or the last misses of a big one): one
                # encryptor each, run until it hits, instead of whole rounds of per-byte
                # steps whose fixed cost no longer shrinks with the number of streams
                for point, slot in zip(pending, range(0, 16 * len(pending), 16), strict=True):
                    stream = self._cipher.resume(registers[slot : slot + 16])
                    results[point] = self._finish(stream, digests[point], MAX_TRIES - tries)
                return results
            values, registers = self._round(registers, [digests[i] for i in pending])
            rng, retry = self.range, []
            for slot, num in enumerate(values):
                if num < rng:
                    results[pending[slot]] = num
                else:
                    retry.append(slot)
            if not retry:
                return results
            # a miss re-encrypts the same message on the same stream, as one call would
            pending = [pending[slot] for slot in retry]
            registers = b"".join([registers[16 * slot : 16 * slot + 16] for slot in retry])
        raise HeartbeatError("KeyedPRF found no value in range")  # pragma: no cover

    def _one_at_a_time_is_cheaper(self, count: int) -> bool:
        # rough costs in microseconds, measured with OpenSSL AES-NI: one encryptor per point
        # for all its tries (each hits with probability >= 1/2: 2 tries or fewer on
        # average) versus one round of the batch (about 1 us per byte step, plus the ECB
        # work, plus reading each candidate)
        size = self._nbytes
        return count * (5.0 + 0.08 * size) <= size * (1.0 + 0.0075 * count) + 0.5 * count

    def _round(self, registers: bytes, digests: Sequence[bytes]) -> tuple[list[int], bytes]:
        """One try of every stream: the masked candidates and the registers after it."""
        count, size = len(digests), self._nbytes
        joined = b"".join(digests)
        # message byte k of every stream: digest byte k, zero past the 32 digest bytes
        columns: list[bytes | None] = [joined[k::32] for k in range(min(size, 32))]
        columns += [None] * (size - len(columns))
        cipher_columns, registers = self._cipher.encrypt_columns(registers, columns)
        by_byte = b"".join(cipher_columns)
        values = list(map(int.from_bytes, [by_byte[s::count] for s in range(count)]))
        if self._mask != (1 << (8 * size)) - 1:
            mask = self._mask
            values = [v & mask for v in values]
        return values, registers

    def _finish(self, stream: ByteStream, digest: bytes, tries: int) -> int:
        """Continue one evaluation on its own stream until a candidate falls in range."""
        data = digest[: self._nbytes] if self._nbytes <= 32 else digest + self._pad
        rng, mask = self.range, self._mask
        for _ in range(tries):
            num = int.from_bytes(stream.update(data), "big") & mask
            if num < rng:
                return num
        raise HeartbeatError("KeyedPRF found no value in range")  # pragma: no cover
