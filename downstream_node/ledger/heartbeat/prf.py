"""KeyedPRF: the original library's keyed pseudo-random function onto ``[0, range)``.

SHA-256 of ``str(x)`` sized to the range, AES-CFB8 from a zero IV, masked to the range's bits,
re-encrypted on the same stream until below the range; ``many`` batches evaluations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from hashlib import sha256

from .crypto import AES_KEY_SIZES, Cfb8Cipher
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
        rng = self.range
        if rng == 1:
            return 0  # the only value; the original reached it after a few wasted attempts
        data = digest[: self._nbytes] if self._nbytes <= 32 else digest + self._pad
        stream = self._cipher.stream()
        mask = self._mask
        for _ in range(MAX_TRIES):
            num = int.from_bytes(stream.update(data), "big") & mask
            if num < rng:
                return num
        raise HeartbeatError("KeyedPRF found no value in range")  # pragma: no cover

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
        rng, size = self.range, self._nbytes
        if rng == 1:
            return [0] * len(digests)
        # rough costs in microseconds, measured with OpenSSL AES-NI: one stream per call
        # versus one ECB call per byte position over every stream at once
        if len(digests) * (3.0 + 0.04 * size) <= size * (6.0 + 0.006 * len(digests)):
            return [self._from_digest(d) for d in digests]
        pad = self._pad
        messages = b"".join((d[:size] if size <= 32 else d + pad) for d in digests)
        registers = bytes(16 * len(digests))
        results = [0] * len(digests)
        pending = list(range(len(digests)))
        mask = self._mask
        for _ in range(MAX_TRIES):
            cipher, registers = self._cipher.encrypt_many(registers, messages, size)
            retry = []
            for slot, point in enumerate(pending):
                num = int.from_bytes(cipher[slot * size : (slot + 1) * size], "big") & mask
                if num < rng:
                    results[point] = num
                else:
                    retry.append(slot)
            if not retry:
                return results
            # a miss re-encrypts the same message on the same stream, as one call would
            pending = [pending[slot] for slot in retry]
            registers = b"".join(registers[16 * slot : 16 * slot + 16] for slot in retry)
            messages = b"".join(messages[size * slot : size * (slot + 1)] for slot in retry)
        raise HeartbeatError("KeyedPRF found no value in range")  # pragma: no cover
