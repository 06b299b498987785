"""The tlog Merkle tree against a naive transcription of RFC 6962 section 2.1 and Go's vectors:
roots, every inclusion and consistency proof for small trees, tampering, and the stored path."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from downstream_node.tlog.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MemoryTree,
    ProofError,
    consistency_keys,
    consistency_proof,
    inclusion_keys,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    root_from_inclusion_proof,
    root_keys,
    tree_root,
    verify_consistency,
    verify_inclusion,
)

# --- an independent reference: RFC 6962 section 2.1, written as the RFC states it ----------

MAX_LEAVES = 4097
DATA = [i.to_bytes(4, "big") + b"leaf" for i in range(MAX_LEAVES)]


def _sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def mth(lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi])."""
    n = hi - lo
    if n == 0:
        return _sha(b"")
    if n == 1:
        return _sha(b"\x00" + DATA[lo])
    k = _split(n)
    return _sha(b"\x01" + mth(lo, lo + k) + mth(lo + k, hi))


def path(m: int, lo: int, hi: int) -> list[bytes]:
    """PATH(m, D[lo:hi])."""
    n = hi - lo
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*path(m, lo, lo + k), mth(lo + k, hi)]
    return [*path(m - k, lo + k, hi), mth(lo, lo + k)]


def subproof(m: int, lo: int, hi: int, b: bool) -> list[bytes]:
    """SUBPROOF(m, D[lo:hi], b)."""
    n = hi - lo
    if m == n:
        return [] if b else [mth(lo, hi)]
    k = _split(n)
    if m <= k:
        return [*subproof(m, lo, lo + k, b), mth(lo + k, hi)]
    return [*subproof(m - k, lo + k, hi, False), mth(lo, lo + k)]


def naive_path(m: int, n: int) -> list[bytes]:
    return path(m, 0, n)


def naive_proof(m: int, n: int) -> list[bytes]:
    return subproof(m, 0, n, True) if 0 < m < n else []


@pytest.fixture(scope="module")
def tree() -> MemoryTree:
    t = MemoryTree()
    for d in DATA:
        t.append(d)
    return t


def checking_get(tree: MemoryTree, size: int) -> tuple[Callable[[int, int], bytes], list]:
    """A getter that refuses any node not a full subtree of the first ``size`` leaves."""
    seen: list[tuple[int, int]] = []

    def get(level: int, index: int) -> bytes:
        assert (index + 1) << level <= size, (level, index, size)
        seen.append((level, index))
        return tree.get(level, index)

    return get, seen


def flipped(h: bytes, pos: int) -> bytes:
    return h[:pos] + bytes([h[pos] ^ 0x10]) + h[pos + 1 :]


def assert_inclusion_fails(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], r: bytes
) -> None:
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, size, proof, r)


def assert_consistency_fails(m: int, n: int, proof: Sequence[bytes], r1: bytes, r2: bytes) -> None:
    with pytest.raises(ProofError):
        verify_consistency(m, n, proof, r1, r2)


# --- fixed reference values ---------------------------------------------------------------
# From github.com/transparency-dev/merkle: testonly/constants.go (LeafInputs, RootHashes,
# NodeHashes) and proof/verify_test.go (inclusionProofs, consistencyProofs; leaf numbers there
# count from one).

GO_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
GO_ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
GO_NODES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]
_N = {(lv, i): bytes.fromhex(h) for lv, row in enumerate(GO_NODES) for i, h in enumerate(row)}
# (leaf index from zero, tree size, proof)
GO_INCLUSION = [
    (0, 8, [_N[0, 1], _N[1, 1], _N[2, 1]]),
    (5, 8, [_N[0, 4], _N[1, 3], _N[2, 0]]),
    (2, 3, [_N[1, 0]]),
    (1, 5, [_N[0, 0], _N[1, 1], _N[0, 4]]),
]
GO_CONSISTENCY = [
    (1, 1, []),
    (1, 8, [_N[0, 1], _N[1, 1], _N[2, 1]]),
    (6, 8, [_N[1, 2], _N[1, 3], _N[2, 0]]),
    (2, 5, [_N[1, 1], _N[0, 4]]),
    (6, 7, [_N[1, 2], _N[0, 6], _N[2, 0]]),
]


@pytest.fixture(scope="module")
def go_tree() -> MemoryTree:
    t = MemoryTree()
    for d in GO_LEAVES:
        t.append(d)
    return t


def test_go_vectors_roots_and_nodes(go_tree: MemoryTree) -> None:
    assert GO_ROOTS[0] == EMPTY_ROOT
    for size in range(9):
        assert go_tree.root(size) == GO_ROOTS[size]
        assert root(leaf_hash(d) for d in GO_LEAVES[:size]) == GO_ROOTS[size]
    for (level, index), h in _N.items():
        assert go_tree.get(level, index) == h


def test_go_vectors_proofs(go_tree: MemoryTree) -> None:
    for index, size, proof in GO_INCLUSION:
        assert go_tree.inclusion_proof(index, size) == proof
        verify_inclusion(leaf_hash(GO_LEAVES[index]), index, size, proof, GO_ROOTS[size])
    for m, n, proof in GO_CONSISTENCY:
        assert go_tree.consistency_proof(m, n) == proof
        verify_consistency(m, n, proof, GO_ROOTS[m], GO_ROOTS[n])


def test_go_corruption_probes(go_tree: MemoryTree) -> None:
    some = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
    for index, size, proof in GO_INCLUSION:
        leaf, r = leaf_hash(GO_LEAVES[index]), GO_ROOTS[size]
        probes = [
            (index - 1, size, r, leaf, proof),
            (index + 1, size, r, leaf, proof),
            (index ^ 2, size, r, leaf, proof),
            (index, size * 2, r, leaf, proof),
            (index, size // 2, r, leaf, proof),
            (index, size, r, b"WrongLeaf", proof),
            (index, size, EMPTY_ROOT, leaf, proof),
            (index, size, some, leaf, proof),
            (index, size, r, leaf, [*proof, b""]),
            (index, size, r, leaf, [*proof, r]),
            (index, size, r, leaf, [b"", *proof]),
            (index, size, r, leaf, [r, *proof]),
            (index, size, r, leaf, proof[:-1]),
            (index, size, r, leaf, [proof[0], some, *proof[1:]]),
        ]
        for i, s, rt, lf, pr in probes:
            assert_inclusion_fails(lf, i, s, pr, rt)
    for m, n, proof in GO_CONSISTENCY[1:]:
        r1, r2 = GO_ROOTS[m], GO_ROOTS[n]
        for args in [
            (m - 1, n, proof, r1, r2),
            (m + 1, n, proof, r1, r2),
            (m ^ 2, n, proof, r1, r2),
            (m, n * 2, proof, r1, r2),
            (m, n // 2, proof, r1, r2),
            (m, n, proof, some, r2),
            (m, n, proof, r1, some),
            (m, n, proof, r2, r1),
            (m, n, [], r1, r2),
            (m, n, [*proof, b""], r1, r2),
            (m, n, [*proof, r1], r1, r2),
            (m, n, [*proof, r2], r1, r2),
            (m, n, [b"", *proof], r1, r2),
            (m, n, [r1, *proof], r1, r2),
            (m, n, [r2, *proof], r1, r2),
            (m, n, [proof[0], *proof], r1, r2),
            (m, n, proof[:-1], r1, r2),
        ]:
            if args[0] > args[1] or args[0] < 0:
                with pytest.raises(ProofError):
                    verify_consistency(*args)
                continue
            assert_consistency_fails(*args)


def test_go_trivial_consistency_cases() -> None:
    a, b = hashlib.sha256(b"1").digest(), hashlib.sha256(b"2").digest()
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 1, [], EMPTY_ROOT, b)
    verify_consistency(1, 1, [], b, b)
    for args in [
        (0, 0, [], a, b),
        (1, 1, [], a, b),
        (1, 0, [], a, b),
        (2, 1, [], a, b),
        (1, 2, [], a, b),
        (0, 0, [EMPTY_ROOT], EMPTY_ROOT, EMPTY_ROOT),
        (0, 1, [EMPTY_ROOT], EMPTY_ROOT, EMPTY_ROOT),
        (1, 1, [EMPTY_ROOT], EMPTY_ROOT, EMPTY_ROOT),
    ]:
        assert_consistency_fails(*args)


# --- exhaustive comparison with the naive reference for small trees ------------------------


@pytest.mark.parametrize("n", range(1, 65))
def test_small_tree_inclusion(tree: MemoryTree, n: int) -> None:
    r = mth(0, n)
    assert tree.root(n) == r
    assert tree_root(checking_get(tree, n)[0], n) == r
    for m in range(n):
        proof = inclusion_proof(checking_get(tree, n)[0], m, n)
        assert proof == naive_path(m, n)
        leaf = leaf_hash(DATA[m])
        verify_inclusion(leaf, m, n, proof, r)
        assert root_from_inclusion_proof(leaf, m, n, proof) == r
        # SHA-256 treats every byte alike; all 32 positions for small trees, one otherwise.
        positions = range(32) if n <= 16 else [(m * 7 + n) % 32]
        for i in range(len(proof)):
            for pos in positions:
                bad = [*proof[:i], flipped(proof[i], pos), *proof[i + 1 :]]
                assert_inclusion_fails(leaf, m, n, bad, r)
        for pos in positions:
            assert_inclusion_fails(flipped(leaf, pos), m, n, proof, r)
            assert_inclusion_fails(leaf, m, n, proof, flipped(r, pos))
        for other in range(n) if n <= 16 else {m - 1, m + 1, m ^ 2, m ^ 1, n - 1 - m}:
            if other != m and 0 <= other < n:
                assert_inclusion_fails(leaf, other, n, proof, r)
        for size in {n - 1, n + 1, 2 * n, n // 2, 64}:
            if size != n and m < size and naive_path(m, size) != proof:
                assert_inclusion_fails(leaf, m, size, proof, mth(0, size))
        assert_inclusion_fails(leaf, m, n, [*proof, r], r)
        if proof:
            assert_inclusion_fails(leaf, m, n, proof[:-1], r)


@pytest.mark.parametrize("n", range(1, 65))
def test_small_tree_consistency(tree: MemoryTree, n: int) -> None:
    r2 = mth(0, n)
    for m in range(0, n + 1):
        get, _ = checking_get(tree, n)
        proof = consistency_proof(get, m, n)
        assert proof == naive_proof(m, n)
        r1 = mth(0, m)
        verify_consistency(m, n, proof, r1, r2)
        if not proof:
            continue
        positions = range(32) if n <= 16 else [(m * 5 + n) % 32]
        for i in range(len(proof)):
            for pos in positions:
                bad = [*proof[:i], flipped(proof[i], pos), *proof[i + 1 :]]
                assert_consistency_fails(m, n, bad, r1, r2)
        for pos in positions:
            assert_consistency_fails(m, n, proof, flipped(r1, pos), r2)
            assert_consistency_fails(m, n, proof, r1, flipped(r2, pos))
        for m2, n2 in {(m - 1, n), (m + 1, n), (m, n + 1), (m, n - 1), (m, 2 * n), (m ^ 2, n)}:
            if (m2, n2) != (m, n) and 0 < m2 < n2 and naive_proof(m2, n2) != proof:
                assert_consistency_fails(m2, n2, proof, mth(0, m2), mth(0, n2))
        assert_consistency_fails(m, n, proof, r2, r1)
        assert_consistency_fails(m, n, proof[:-1], r1, r2)
        assert_consistency_fails(m, n, [*proof, r1], r1, r2)


@pytest.mark.parametrize("n", [1000, 4097, *random.Random(6962).sample(range(65, 4097), 4)])
def test_larger_trees_sampled(tree: MemoryTree, n: int) -> None:
    rng = random.Random(n)
    r2 = mth(0, n)
    assert tree.root(n) == r2
    for m in {0, 1, n // 2, n - 2, n - 1, *rng.sample(range(n), 20)}:
        get, seen = checking_get(tree, n)
        proof = inclusion_proof(get, m, n)
        assert proof == naive_path(m, n)
        assert sorted(set(seen)) == sorted(inclusion_keys(m, n))
        verify_inclusion(leaf_hash(DATA[m]), m, n, proof, r2)
        if len(set(proof)) > 1:
            assert_inclusion_fails(leaf_hash(DATA[m]), m, n, proof[::-1], r2)
    for m in {1, 2, 63, 64, n // 2, n - 1, n, *rng.sample(range(1, n), 20)}:
        get, seen = checking_get(tree, n)
        proof = consistency_proof(get, m, n)
        assert proof == naive_proof(m, n)
        assert sorted(set(seen)) == sorted(consistency_keys(m, n))
        verify_consistency(m, n, proof, mth(0, m), r2)


# --- the incremental, stored-hash path ------------------------------------------------------


def test_compact_range_appends_and_persists() -> None:
    store: dict[tuple[int, int], bytes] = {}
    frontier = CompactRange()
    assert frontier.root() == EMPTY_ROOT
    for n in range(1, 300):
        nodes = frontier.append(leaf_hash(DATA[n - 1]))
        # The new leaf first; then one node per trailing one bit of the old size.
        assert nodes[0] == (0, n - 1, leaf_hash(DATA[n - 1]))
        assert len(nodes) == 1 + ((n - 1) ^ n).bit_length() - 1
        for level, index, h in nodes:
            assert (level, index) not in store
            assert h == mth(index << level, (index + 1) << level)
            store[level, index] = h
        assert frontier.size == n
        assert frontier.root() == mth(0, n)
        assert tree_root(lambda lv, i: store[lv, i], n) == mth(0, n)
        assert len(frontier.hashes) == n.bit_count()
        assert len(root_keys(n)) == n.bit_count()
    # Every full subtree of the tree is stored, and nothing else.
    assert len(store) == sum(299 >> level for level in range(10))


def test_from_store_resumes_identically(tree: MemoryTree) -> None:
    for size in [0, 1, 5, 64, 255, 1000]:
        resumed = CompactRange.from_store(tree.get, size)
        assert resumed.size == size and resumed.root() == mth(0, size)
        for k in range(size, size + 40):
            resumed.append(leaf_hash(DATA[k]))
        assert resumed.root() == mth(0, size + 40)


def test_memory_tree_matches_frontier_and_leaf_list() -> None:
    t = MemoryTree(leaf_hash(d) for d in DATA[:100])
    assert t.size == 100
    assert t.root() == root(leaf_hash(d) for d in DATA[:100]) == mth(0, 100)
    assert t.append(b"more") == 100 and t.size == 101
    with pytest.raises(ValueError):
        t.root(102)
    with pytest.raises(ValueError):
        t.inclusion_proof(101)
    with pytest.raises(ValueError):
        t.consistency_proof(5, 200)


def test_parameter_errors(tree: MemoryTree) -> None:
    for bad in [(-1, 5), (5, 5), (0, 0)]:
        with pytest.raises(ValueError):
            inclusion_proof(tree.get, *bad)
    with pytest.raises(ValueError):
        consistency_proof(tree.get, 6, 5)
    with pytest.raises(ValueError):
        tree_root(tree.get, -1)
    with pytest.raises(ValueError):
        CompactRange(3, [EMPTY_ROOT])
    with pytest.raises(ValueError):
        CompactRange().append(b"short")
    assert_inclusion_fails(leaf_hash(b""), 0, 0, [], EMPTY_ROOT)
    assert_inclusion_fails(leaf_hash(b""), -1, 1, [], leaf_hash(b""))
    assert node_hash(b"a", b"b") == _sha(b"\x01ab")


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_sizes_property(tree: MemoryTree, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, MAX_LEAVES))
    m = data.draw(st.integers(0, n))
    index = data.draw(st.integers(0, n - 1))
    assert consistency_proof(checking_get(tree, n)[0], m, n) == naive_proof(m, n)
    assert inclusion_proof(checking_get(tree, n)[0], index, n) == naive_path(index, n)
    get, seen = checking_get(tree, n)
    tree_root(get, n)
    assert seen == root_keys(n)
