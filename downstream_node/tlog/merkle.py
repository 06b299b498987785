"""RFC 6962 / RFC 9162 Merkle tree hashing, inclusion and consistency proofs over stored subtrees.

A log keeps only full-subtree hashes keyed by (level, index); ``CompactRange`` yields them as
leaves are appended, and any size's root or proof is then O(log n) lookups of those hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

GetHash = Callable[[int, int], bytes]
"""``get(level, index)``: the hash of the full subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 holds the leaf hashes."""


class StoredNode(NamedTuple):
    level: int
    index: int
    hash: bytes


class ProofError(ValueError):
    """A proof did not verify, or its parameters were impossible."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _check_size(size: int) -> None:
    if size < 0:
        raise ValueError(f"tree size must not be negative: {size}")


def _perfect_ranges(begin: int, end: int) -> list[tuple[int, int]]:
    """Split ``[begin, end)`` into full subtrees (level, index), largest first.

    Only valid where ``begin`` is aligned to at least the largest piece, which holds for every
    node of an RFC 6962 tree: that is what lets a partial node be rebuilt from stored hashes.
    """
    keys = []
    pos = begin
    width = end - begin
    level = width.bit_length() - 1
    while level >= 0:
        if width >> level & 1:
            keys.append((level, pos >> level))
            pos += 1 << level
        level -= 1
    return keys


def _fold(hashes: Sequence[bytes]) -> bytes:
    # RFC 6962 splits at the largest power of two, so a range's perfect pieces nest to the right.
    result = hashes[-1]
    for h in reversed(hashes[:-1]):
        result = node_hash(h, result)
    return result


def _range_hash(get: GetHash, begin: int, end: int) -> bytes:
    return _fold([get(level, index) for level, index in _perfect_ranges(begin, end)])


def _path_ranges(level: int, index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges of the siblings on the way from node (level, index) to the root of ``size``.

    A level with no sibling inside the tree is skipped: RFC 6962 promotes the node unchanged.
    """
    ranges = []
    while (size - 1) >> level:
        begin = (index ^ 1) << level
        if begin < size:
            ranges.append((begin, min(begin + (1 << level), size)))
        index >>= 1
        level += 1
    return ranges


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    _check_size(size)
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    return _path_ranges(0, index, size)


def _consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    _check_size(old_size)
    if old_size > new_size:
        raise ValueError(f"old size {old_size} is larger than new size {new_size}")
    if old_size in (0, new_size):
        return []
    # The last full subtree of the old tree is where RFC 9162's SUBPROOF stops descending; the
    # proof is that node (unless the old tree is that node) followed by its path in the new tree.
    level = (old_size & -old_size).bit_length() - 1
    index = (old_size - 1) >> level
    ranges = [] if index == 0 else [(index << level, old_size)]
    return ranges + _path_ranges(level, index, new_size)


def _keys(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    seen: dict[tuple[int, int], None] = {}
    for begin, end in ranges:
        seen.update(dict.fromkeys(_perfect_ranges(begin, end)))
    return list(seen)


def tree_root(get: GetHash, size: int) -> bytes:
    """The RFC 6962 root hash of the first ``size`` leaves."""
    _check_size(size)
    return _range_hash(get, 0, size) if size else EMPTY_ROOT


def inclusion_proof(get: GetHash, index: int, size: int) -> list[bytes]:
    """RFC 9162 section 2.1.3.1 audit path for leaf ``index`` in the tree of ``size`` leaves."""
    return [_range_hash(get, b, e) for b, e in _inclusion_ranges(index, size)]


def consistency_proof(get: GetHash, old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 section 2.1.4.1 proof that the tree of ``old_size`` is a prefix of ``new_size``."""
    return [_range_hash(get, b, e) for b, e in _consistency_ranges(old_size, new_size)]


def root_keys(size: int) -> list[tuple[int, int]]:
    """The (level, index) keys ``tree_root`` reads, so a store can fetch them in one query."""
    _check_size(size)
    return _perfect_ranges(0, size)


def inclusion_keys(index: int, size: int) -> list[tuple[int, int]]:
    """The (level, index) keys ``inclusion_proof`` reads."""
    return _keys(_inclusion_ranges(index, size))


def consistency_keys(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The (level, index) keys ``consistency_proof`` reads."""
    return _keys(_consistency_ranges(old_size, new_size))


def _check_hashes(*hashes: bytes) -> None:
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise ProofError(f"hash of {len(h)} bytes where {HASH_SIZE} were expected")


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` implies for ``leaf`` at ``index`` (RFC 9162 section 2.1.3.2)."""
    _check_hashes(leaf, *proof)
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ``ProofError`` unless ``proof`` shows ``leaf`` at ``index`` in the tree ``root``."""
    _check_hashes(root)
    if root_from_inclusion_proof(leaf, index, size, proof) != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Raise ``ProofError`` unless ``proof`` shows ``old_root`` is a prefix of ``new_root``.

    RFC 9162 section 2.1.4.2, plus its conventions for equal sizes and the empty old tree.
    """
    _check_hashes(old_root, new_root, *proof)
    if not 0 <= old_size <= new_size:
        raise ProofError(f"sizes {old_size} and {new_size} are not a growing tree")
    if old_size == new_size or old_size == 0:
        if proof:
            raise ProofError("a trivial consistency proof must be empty")
        if old_size == new_size and old_root != new_root:
            raise ProofError("trees of the same size have different roots")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("the old root is not the empty tree's root")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the tree is deep")
    if fr != old_root:
        raise ProofError("consistency proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("consistency proof does not lead to the new root")


class CompactRange:
    """The right edge of a tree: one perfect-subtree root per set bit of its size, largest first.

    Enough to append leaves and give the current root without reading anything back, which is
    what lets a writer add a leaf with O(log n) work inside its own transaction.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        _check_size(size)
        if len(hashes) != size.bit_count():
            raise ValueError(f"a tree of size {size} has {size.bit_count()} frontier hashes")
        _check_hashes(*hashes)
        self._size = size
        self._hashes = list(hashes)

    @classmethod
    def from_store(cls, get: GetHash, size: int) -> CompactRange:
        """Rebuild the frontier of a stored tree from its ``popcount(size)`` subtree hashes."""
        return cls(size, [get(level, index) for level, index in root_keys(size)])

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> list[StoredNode]:
        """Add one leaf hash; return every full-subtree node it completes, the leaf first."""
        _check_hashes(leaf)
        index = self._size
        nodes = [StoredNode(0, index, leaf)]
        h, level = leaf, 0
        # Each trailing one bit of the old size is a left sibling that the new leaf completes.
        while index & 1:
            h = node_hash(self._hashes.pop(), h)
            index >>= 1
            level += 1
            nodes.append(StoredNode(level, index, h))
        self._hashes.append(h)
        self._size += 1
        return nodes

    def extend(self, leaves: Iterable[bytes]) -> list[StoredNode]:
        nodes: list[StoredNode] = []
        for leaf in leaves:
            nodes.extend(self.append(leaf))
        return nodes

    def root(self) -> bytes:
        return _fold(self._hashes) if self._hashes else EMPTY_ROOT


def root(leaf_hashes: Iterable[bytes]) -> bytes:
    """The RFC 6962 root of a whole list of leaf hashes, in O(n) hashing and O(log n) memory."""
    frontier = CompactRange()
    for leaf in leaf_hashes:
        frontier.append(leaf)
    return frontier.root()


class MemoryTree:
    """An in-memory log for tests and small uses: the same stored-hash layout a database keeps."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = []
        self._frontier = CompactRange()
        for leaf in leaf_hashes:
            self.append_hash(leaf)

    @property
    def size(self) -> int:
        return self._frontier.size

    def append(self, data: bytes) -> int:
        """Append a leaf's data; return its index."""
        return self.append_hash(leaf_hash(data))

    def append_hash(self, leaf: bytes) -> int:
        index = self._frontier.size
        for level, _, h in self._frontier.append(leaf):
            if level == len(self._levels):
                self._levels.append([])
            self._levels[level].append(h)
        return index

    def get(self, level: int, index: int) -> bytes:
        return self._levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        return self._frontier.root() if size is None else tree_root(self.get, self._fit(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(self.get, index, self._fit(size))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return consistency_proof(self.get, old_size, self._fit(new_size))

    def _fit(self, size: int | None) -> int:
        if size is None:
            return self.size
        if size > self.size:
            raise ValueError(f"size {size} is beyond the tree's {self.size} leaves")
        return size
