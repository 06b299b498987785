"""SeededChunk: a test chunk regenerated from its seed string, as a seekable binary file.

The bytes are the AES-256-CTR keystream under SHA-256(seed) with a big-endian counter
starting at 1, cut to ``size``; they are produced on demand and never held whole.
"""

from __future__ import annotations

import io
from hashlib import sha256

from .crypto import CtrKeystream
from .errors import HeartbeatError

__all__ = ["SeededChunk"]

_BLOCK = 16


class SeededChunk(io.RawIOBase):
    """A read-only, seekable file object over the seeded keystream of ``size`` bytes."""

    def __init__(self, seed: str, size: int) -> None:
        super().__init__()
        if type(seed) is not str:
            raise HeartbeatError("seed must be a string")
        if type(size) is not int or size < 0:
            raise HeartbeatError("size must be a non-negative integer")
        self.seed = seed
        self.size = size
        self._key = sha256(seed.encode("utf-8")).digest()
        self._pos = 0
        # A live keystream stays valid while reads are sequential; a seek discards it.
        self._stream: CtrKeystream | None = None
        self._stream_pos = -1

    def __repr__(self) -> str:
        return f"SeededChunk(seed={self.seed!r}, size={self.size})"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _keystream(self) -> CtrKeystream:
        pos = self._pos
        if self._stream is None or self._stream_pos != pos:
            stream = CtrKeystream(self._key, pos // _BLOCK + 1)
            skip = pos % _BLOCK
            if skip:
                stream.take(skip)
            self._stream = stream
        return self._stream

    def _available(self, n: int | None) -> int:
        left = max(0, self.size - self._pos)
        return left if n is None or n < 0 else min(n, left)

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        n = self._available(size)
        if n == 0:
            return b""
        data = self._keystream().take(n)
        self._pos += n
        self._stream_pos = self._pos
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self._check_open()
        out = memoryview(buffer).cast("B")
        n = self._available(len(out))
        if n == 0:
            return 0
        self._keystream().fill(out[:n])
        self._pos += n
        self._stream_pos = self._pos
        return n

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed SeededChunk")
