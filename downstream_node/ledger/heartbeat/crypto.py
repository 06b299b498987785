"""Thin wrappers over the ``cryptography`` package: AES-CTR keystreams, AES-CFB8.

This is the only module of the heartbeat package that imports ``cryptography``,
so a change of backend (or of its deprecations) stays in one place.
"""

from __future__ import annotations

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
    every evaluation). ``encrypt_many`` runs many independent CFB8 streams side by side.
    """

    __slots__ = ("_algorithm", "_cipher", "_ecb")

    def __init__(self, key: bytes) -> None:
        self._algorithm = algorithms.AES(key)
        self._cipher = Cipher(self._algorithm, CFB8(_ZERO_IV))
        self._ecb = Cipher(self._algorithm, ECB())

    def stream(self) -> ByteStream:
        return self._cipher.encryptor()

    def encrypt_many(self, registers: bytes, messages: bytes, size: int) -> tuple[bytes, bytes]:
        """Encrypt one ``size``-byte message per stream, continuing each stream.

        ``registers`` holds each stream's 16-byte shift register (``bytes(16 * count)`` for
        fresh streams from the zero IV) and ``messages`` the messages back to back. Returns
        the ciphertexts back to back and the registers after them.

        CFB8 spends one AES block per byte, so one stream at a time costs a Python call per
        evaluation plus ``size`` dependent AES calls inside it; here every step is a single
        ECB call over all the registers at once, and the shift of every register is two
        slice operations on one buffer. The output is byte for byte that of the CFB8 mode.
        """
        count = len(registers) // 16
        if count * 16 != len(registers) or count * size != len(messages):
            raise ValueError("registers and messages disagree on the number of streams")
        if count == 0 or size == 0:
            return b"", bytes(registers)
        if count * (4.0 + 0.04 * size) <= size * (5.0 + 0.006 * count):
            # few streams (typically the last retries of a batch): one encryptor each,
            # resumed from its register, which is exactly CFB8's IV
            outs = []
            regs_out = []
            for i in range(count):
                register = registers[16 * i : 16 * i + 16]
                enc = Cipher(self._algorithm, CFB8(register)).encryptor()
                cipher = enc.update(messages[size * i : size * (i + 1)])
                outs.append(cipher)
                regs_out.append((register + cipher)[-16:])
            return b"".join(outs), b"".join(regs_out)
        regs = bytearray(registers)
        shift = memoryview(regs)
        out = bytearray(count * size)
        ecb = self._ecb.encryptor()
        from_bytes = int.from_bytes
        zero = bytes(count)
        for k in range(size):
            keystream = ecb.update(regs)[0::16]  # byte 0 of E(register) for each stream
            column = messages[k::size]
            if column == zero:  # the PRF's zero padding: ciphertext is the keystream itself
                cipher = keystream
            else:
                cipher = (from_bytes(keystream, "big") ^ from_bytes(column, "big")).to_bytes(
                    count, "big"
                )
            out[k::size] = cipher
            shift[:-1] = shift[1:]  # shift every register left one byte ...
            regs[15::16] = cipher  # ... and feed its ciphertext byte in at the end
        return bytes(out), bytes(regs)


def cfb8_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-CFB8 encryption (the original PySwizzle's state encryption)."""
    enc = Cipher(algorithms.AES(key), CFB8(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def cfb8_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-CFB8 decryption, the inverse of ``cfb8_encrypt``."""
    dec = Cipher(algorithms.AES(key), CFB8(iv)).decryptor()
    return dec.update(data) + dec.finalize()
