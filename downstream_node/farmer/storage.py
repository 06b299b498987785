"""Chunk files on disk: a contract's chunk regenerated from its seed (streamed, checked
against the file hash) and the check that a chunk on disk is still intact.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..heartbeat import SeededChunk
from .client import FarmerError

WRITE_BLOCK = 1024 * 1024


def write_chunk(seed: str, size: int, file_hash: str, path: Path) -> Path:
    """Regenerate a seeded chunk into ``path`` in blocks, checking it against its hash.

    An existing file of the right size and hash is kept, so a restarted farmer reuses it.
    """
    if intact(path, size, file_hash):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    source = SeededChunk(seed, size)
    with open(tmp, "wb") as out:
        while block := source.read(WRITE_BLOCK):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != file_hash:
        tmp.unlink(missing_ok=True)
        raise FarmerError(
            "error", f"the chunk regenerated from its seed does not hash to {file_hash}", 0
        )
    os.replace(tmp, path)
    return path


def intact(path: Path, size: int, file_hash: str) -> bool:
    """Whether ``path`` holds the chunk: its size and hash (unreadable counts as damaged)."""
    try:
        return path.is_file() and path.stat().st_size == size and _sha256(path) == file_hash
    except OSError:
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(WRITE_BLOCK):
            digest.update(block)
    return digest.hexdigest()
