"""Thin wrappers over the ``cryptography`` package: AES-CTR keystreams, AES-CFB8.

This is the only module of the heartbeat package that imports ``cryptography``,
so a change of backend (or of its deprecations) stays in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # CFB8 moved to "decrepit" in cryptography 43; the old path warns, then goes away.
    from cryptography.hazmat.decrepit.ciphers.modes import CFB8
except ImportError:  # pragma: no cover - only on cryptography < 43
    from cryptography.hazmat.primitives.ciphers.modes import CFB8
from cryptography.hazmat.primitives.ciphers.modes import CTR, ECB

__all__ = [
    "AES_KEY_SIZES",
    "ByteStream",
    "Cfb8Cipher",
    "CtrKeystream",
    "cfb8_decrypt",
    "cfb8_encrypt",
]

AES_KEY_SIZES = frozenset((16, 24, 32))
_ZERO_IV = bytes(16)
_ZEROS = bytes(1 << 20)  # shared plaintext for keystream generation; never written to


class ByteStream(Protocol):
    """A running stream cipher: each call continues where the previous one stopped."""

    def update(self, data: bytes, /) -> bytes: ...


class CtrKeystream:
    """AES-CTR keystream starting at a given 128-bit big-endian counter block."""

    __slots__ = ("_enc",)

    def __init__(self, key: bytes, first_block: int) -> None:
        nonce = (first_block % (1 << 128)).to_bytes(16, "big")
        self._enc = Cipher(algorithms.AES(key), CTR(nonce)).encryptor()

    def take(self, n: int) -> bytes:
        """The next ``n`` keystream bytes."""
        if n <= len(_ZEROS):
            return self._enc.update(memoryview(_ZEROS)[:n])
        out = bytearray(n)
        self.fill(memoryview(out))
        return bytes(out)

    def fill(self, out: memoryview) -> None:
        """Write the next ``len(out)`` keystream bytes into ``out``."""
        step = len(_ZEROS)
        zeros = memoryview(_ZEROS)
        for start in range(0, len(out), step):
            piece = out[start : start + step]
            self._enc.update_into(zeros[: len(piece)], piece)


class Cfb8Cipher:
    """AES in CFB mode with 8-bit feedback, as the KeyedPRF uses it.

    ``stream()`` is one fresh encryptor from the all-zero IV (the PRF restarts from it for
    every evaluation), ``resume(register)`` one continuing from a shift register.
    ``encrypt_columns`` runs many independent CFB8 streams side by side; ``encrypt_many``
    is the same with the messages back to back.
    """

    __slots__ = ("_algorithm", "_cipher", "_ecb")

    def __init__(self, key: bytes) -> None:
        self._algorithm = algorithms.AES(key)
        self._cipher = Cipher(self._algorithm, CFB8(_ZERO_IV))
        self._ecb = Cipher(self._algorithm, ECB())

    def stream(self) -> ByteStream:
        return self._cipher.encryptor()

    def resume(self, register: bytes) -> ByteStream:
        """An encryptor continuing a stream whose 16-byte shift register is ``register``
        (CFB8's register is exactly its IV)."""
        return Cipher(self._algorithm, CFB8(register)).encryptor()

    def encrypt_columns(
        self, registers: bytes, columns: Sequence[bytes | None]
    ) -> tuple[list[bytes | bytearray], bytes]:
        """Encrypt one message per stream, given column by column, continuing each stream.

        ``registers`` holds each stream's 16-byte shift register (``bytes(16 * count)`` for
        fresh streams from the zero IV); ``columns[k]`` holds byte ``k`` of every stream's
        message (``None``: all zero). Returns the ciphertext columns the same way and the
        registers after them.

        CFB8 spends one AES block per byte, so one stream at a time costs ``len(columns)``
        dependent AES calls; here every step is a single ECB call over all the registers.
        The registers lie in a sliding window of one buffer: stream ``s`` reads
        ``buf[k + 16 s : k + 16 s + 16]`` at step ``k``, and its ciphertext byte goes to
        ``buf[k + 16 s + 16]``, the first byte of stream ``s + 1``'s register, which that
        stream has just used for the last time. So no step shifts the registers.
        """
        count = len(registers) // 16
        if count * 16 != len(registers):
            raise ValueError("registers must be 16 bytes per stream")
        n16 = 16 * count
        buf = bytearray(n16 + len(columns))
        buf[:n16] = registers
        window = memoryview(buf)
        encrypted = bytearray(n16 + 15)  # update_into wants room for a partial block
        update_into = self._ecb.encryptor().update_into
        from_bytes = int.from_bytes
        out: list[bytes | bytearray] = []
        for k, column in enumerate(columns):
            update_into(window[k : k + n16], encrypted)
            cipher: bytes | bytearray = encrypted[0:n16:16]  # byte 0 of E(register) each
            if column is not None:
                cipher = (from_bytes(cipher) ^ from_bytes(column)).to_bytes(count)
            out.append(cipher)
            buf[k + 16 : k + 16 + n16 : 16] = cipher
        return out, bytes(buf[len(columns) :])

    def encrypt_many(self, registers: bytes, messages: bytes, size: int) -> tuple[bytes, bytes]:
        """``encrypt_columns`` with the ``size``-byte messages back to back, and the
        ciphertexts returned the same way."""
        count = len(registers) // 16
        if count * 16 != len(registers) or count * size != len(messages):
            raise ValueError("registers and messages disagree on the number of streams")
        if count == 0 or size == 0:
            return b"", bytes(registers)
        if count * (4.0 + 0.04 * size) <= size * (1.0 + 0.0075 * count):
            # few streams: one encryptor each, resumed from its register
            outs = []
            regs_out = []
            for i in range(count):
                register = registers[16 * i : 16 * i + 16]
                cipher = self.resume(register).update(messages[size * i : size * (i + 1)])
                outs.append(cipher)
                regs_out.append((register + cipher)[-16:])
            return b"".join(outs), b"".join(regs_out)
        columns = [messages[k::size] for k in range(size)]
        cipher_columns, regs = self.encrypt_columns(registers, columns)
        out = bytearray(count * size)
        for k, column in enumerate(cipher_columns):
            out[k::size] = column
        return bytes(out), regs


def cfb8_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-CFB8 encryption (the original PySwizzle's state encryption)."""
    enc = Cipher(algorithms.AES(key), CFB8(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def cfb8_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-CFB8 decryption, the inverse of ``cfb8_encrypt``."""
    dec = Cipher(algorithms.AES(key), CFB8(iv)).decryptor()
    return dec.update(data) + dec.finalize()
