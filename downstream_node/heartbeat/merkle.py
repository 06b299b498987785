"""Merkle heartbeat: a tree of seeded window hashes, one leaf per future challenge.

Wire-compatible with the original ``heartbeat.Merkle`` dicts; objects are immutable and
``next_challenge`` returns a new state instead of changing the one it was given.
"""

from __future__ import annotations

import hmac
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, BinaryIO, ClassVar

from .codec import (
    b64,
    check_bytes,
    check_int,
    check_number,
    coerce,
    get_b64,
    get_int,
    get_list,
    get_mapping,
    get_number,
    parse_b64,
)
from .errors import HeartbeatError, OutOfChallenges
from .prf import KeyedPRF

__all__ = [
    "DEFAULT_CHALLENGES",
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHALLENGES",
    "MIN_CHUNK_SIZE",
    "Merkle",
    "MerkleChallenge",
    "MerkleProof",
    "MerkleState",
    "MerkleTag",
]

DEFAULT_CHALLENGES = 256
DEFAULT_CHUNK_SIZE = 8192
# The original let a tiny file with check fraction 0.01 get a 0-byte window, which proves
# nothing. A fraction never yields a window below this (nor above the file itself).
MIN_CHUNK_SIZE = 256
MAX_ORDER = 20
MAX_CHALLENGES = 1 << MAX_ORDER
MAX_FILE_SIZE = 1 << 62
KEY_SIZE = 32
_HASH_SIZES = (32,)
_NODE_SIZES = (0, 32)  # a missing leaf is stored as "" in the tree
_READ_BLOCK = 1 << 20


def _tree_order(leaves: int) -> int:
    """ceil(log2(leaves)) computed exactly (the float version misrounds large powers of 2)."""
    return (leaves - 1).bit_length()


def _leaf_hash(blob: bytes, index: int) -> bytes:
    return sha256(blob + str(index).encode()).digest()


def _next_seed(key: bytes, seed: bytes) -> bytes:
    return hmac.digest(key, seed, "sha256")


def _window(seed: bytes, filesz: int, chunksz: int) -> tuple[int, int]:
    """The (offset, length) of the window a seed selects."""
    length = min(chunksz, filesz)
    return KeyedPRF(seed, filesz - length + 1)(0), length


def _mac_input(index: int, seed: bytes, n: int, root: bytes, timestamp: int | float) -> bytes:
    # exactly the original's HMAC input: decimal texts and raw bytes, concatenated
    return b"".join((str(index).encode(), seed, str(n).encode(), root, str(timestamp).encode()))


def _chunk_hash(file: BinaryIO, seed: bytes, filesz: int, chunksz: int) -> bytes:
    offset, length = _window(seed, filesz, chunksz)
    file.seek(offset)
    mac = hmac.new(seed, digestmod="sha256")
    left = length
    while left:
        data = file.read(min(left, _READ_BLOCK))
        if not data:
            # the original asserted inside an endless loop here; a short file is an answer
            raise HeartbeatError(
                f"file ended before the challenged window ({offset}+{length} of {filesz} bytes)"
            )
        mac.update(data)
        left -= len(data)
    return mac.digest()


@dataclass(frozen=True, slots=True)
class MerkleChallenge:
    """Challenge ``index``: the seed selecting and keying the window to hash."""

    seed: bytes
    index: int

    def __post_init__(self) -> None:
        check_bytes(self.seed, "challenge.seed", _HASH_SIZES)
        check_int(self.index, "challenge.index", lo=0, hi=MAX_CHALLENGES - 1)

    def todict(self) -> dict[str, Any]:
        return {"seed": b64(self.seed), "index": self.index}

    @classmethod
    def fromdict(cls, d: object) -> MerkleChallenge:
        m = get_mapping(d, "challenge", ("seed", "index"))
        return cls(
            seed=get_b64(m, "seed", "challenge", sizes=_HASH_SIZES),
            index=get_int(m, "index", "challenge", lo=0, hi=MAX_CHALLENGES - 1),
        )


@dataclass(frozen=True, slots=True)
class MerkleTag:
    """The Merkle tree without its leaves, with the window size and the file size."""

    nodes: tuple[bytes, ...]
    order: int
    chunksz: int
    filesz: int

    def __post_init__(self) -> None:
        check_int(self.order, "tag.tree.order", lo=0, hi=MAX_ORDER)
        check_int(self.chunksz, "tag.chunksz", lo=1, hi=MAX_FILE_SIZE)
        check_int(self.filesz, "tag.filesz", lo=1, hi=MAX_FILE_SIZE)
        if type(self.nodes) is not tuple or len(self.nodes) != 2 << self.order:
            raise HeartbeatError(f"tag.tree.nodes: expected {2 << self.order} nodes")
        for node in self.nodes:
            check_bytes(node, "tag.tree.nodes[]", _NODE_SIZES)

    @property
    def root(self) -> bytes:
        return self.nodes[0]

    def branch(self, index: int) -> tuple[tuple[bytes, bytes], ...]:
        """The sibling pairs from leaf ``index``'s level up to just below the root."""
        nodes = self.nodes
        pos = index + (1 << self.order) - 1
        rows = []
        for _ in range(self.order):
            left = pos if pos % 2 else pos - 1
            rows.append((nodes[left], nodes[left + 1]))
            pos = (pos + 1) // 2 - 1
        return tuple(rows)

    def todict(self) -> dict[str, Any]:
        return {
            "tree": {"nodes": [b64(x) for x in self.nodes], "order": self.order, "leaves": []},
            "chunksz": self.chunksz,
            "filesz": self.filesz,
        }

    @classmethod
    def fromdict(cls, d: object) -> MerkleTag:
        m = get_mapping(d, "tag", ("tree", "chunksz", "filesz"))
        tree = get_mapping(m["tree"], "tag.tree", ("nodes", "order", "leaves"))
        order = get_int(tree, "order", "tag.tree", lo=0, hi=MAX_ORDER)
        count = 2 << order
        raw = get_list(tree, "nodes", "tag.tree", lo=count, hi=count)
        # the original strips the leaves before handing a tag out; we only ever see []
        get_list(tree, "leaves", "tag.tree", lo=0, hi=0)
        nodes = tuple(parse_b64(x, "tag.tree.nodes[]", sizes=_NODE_SIZES) for x in raw)
        return cls(
            nodes=nodes,
            order=order,
            chunksz=get_int(m, "chunksz", "tag", lo=1, hi=MAX_FILE_SIZE),
            filesz=get_int(m, "filesz", "tag", lo=1, hi=MAX_FILE_SIZE),
        )


@dataclass(frozen=True, slots=True)
class MerkleState:
    """The node's secret record: current seed and index, challenge count, root, MAC.

    ``index`` challenges have been issued; ``seed`` is the last one issued (the root seed
    while ``index == 0``). The timestamp is carried for compatibility only: the ledger,
    not the state, says which challenge is current.
    """

    index: int
    seed: bytes
    n: int
    root: bytes
    hmac: bytes
    timestamp: int | float

    def __post_init__(self) -> None:
        check_int(self.n, "state.n", lo=1, hi=MAX_CHALLENGES)
        check_int(self.index, "state.index", lo=0, hi=self.n)
        check_bytes(self.seed, "state.seed", _HASH_SIZES)
        check_bytes(self.root, "state.root", _HASH_SIZES)
        check_bytes(self.hmac, "state.hmac", _HASH_SIZES)
        check_number(self.timestamp, "state.timestamp")

    @property
    def remaining(self) -> int:
        """How many more challenges this state can issue."""
        return self.n - self.index

    def mac_input(self) -> bytes:
        return _mac_input(self.index, self.seed, self.n, self.root, self.timestamp)

    def todict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seed": b64(self.seed),
            "n": self.n,
            "root": b64(self.root),
            "hmac": b64(self.hmac),
            "timestamp": self.timestamp,
        }

    @classmethod
    def fromdict(cls, d: object) -> MerkleState:
        m = get_mapping(d, "state", ("index", "seed", "n", "root", "hmac", "timestamp"))
        n = get_int(m, "n", "state", lo=1, hi=MAX_CHALLENGES)
        return cls(
            index=get_int(m, "index", "state", lo=0, hi=n),
            seed=get_b64(m, "seed", "state", sizes=_HASH_SIZES),
            n=n,
            root=get_b64(m, "root", "state", sizes=_HASH_SIZES),
            hmac=get_b64(m, "hmac", "state", sizes=_HASH_SIZES),
            timestamp=get_number(m, "timestamp", "state"),
        )


@dataclass(frozen=True, slots=True)
class MerkleProof:
    """The challenged leaf (index and seeded window HMAC) and its branch."""

    index: int
    blob: bytes
    rows: tuple[tuple[bytes, bytes], ...]

    def __post_init__(self) -> None:
        check_int(self.index, "proof.leaf.index", lo=0, hi=MAX_CHALLENGES - 1)
        check_bytes(self.blob, "proof.leaf.blob", _HASH_SIZES)
        if type(self.rows) is not tuple or len(self.rows) > MAX_ORDER:
            raise HeartbeatError(f"proof.branch.rows: expected a tuple of <= {MAX_ORDER} rows")
        for row in self.rows:
            if type(row) is not tuple or len(row) != 2:
                raise HeartbeatError("proof.branch.rows[]: expected a (left, right) pair")
            check_bytes(row[0], "proof.branch.rows[][0]", _NODE_SIZES)
            check_bytes(row[1], "proof.branch.rows[][1]", _NODE_SIZES)

    def todict(self) -> dict[str, Any]:
        return {
            "leaf": {"index": self.index, "blob": b64(self.blob)},
            "branch": {"rows": [[b64(left), b64(right)] for left, right in self.rows]},
        }

    @classmethod
    def fromdict(cls, d: object) -> MerkleProof:
        m = get_mapping(d, "proof", ("leaf", "branch"))
        leaf = get_mapping(m["leaf"], "proof.leaf", ("index", "blob"))
        branch = get_mapping(m["branch"], "proof.branch", ("rows",))
        rows = []
        for row in get_list(branch, "rows", "proof.branch", hi=MAX_ORDER):
            if type(row) not in (list, tuple) or len(row) != 2:
                raise HeartbeatError("proof.branch.rows[]: expected a [left, right] pair")
            rows.append(
                (
                    parse_b64(row[0], "proof.branch.rows[][0]", sizes=_NODE_SIZES),
                    parse_b64(row[1], "proof.branch.rows[][1]", sizes=_NODE_SIZES),
                )
            )
        return cls(
            index=get_int(leaf, "index", "proof.leaf", lo=0, hi=MAX_CHALLENGES - 1),
            blob=get_b64(leaf, "blob", "proof.leaf", sizes=_HASH_SIZES),
            rows=tuple(rows),
        )


def _check_fraction(value: object) -> float | None:
    if value is None:
        return None
    # ints are compared before any float conversion: a huge int would overflow isfinite()
    if type(value) is int and value == 1:
        return value
    if type(value) is not float or not math.isfinite(value) or not 0 < value <= 1:
        raise HeartbeatError("check_fraction must be None or a number in (0, 1]")
    return value


def _check_key(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise HeartbeatError(f"key must be bytes, got {type(value).__name__}")
    key = bytes(value)
    if key and not 16 <= len(key) <= 64:
        raise HeartbeatError("key must be empty (public) or 16 to 64 bytes")
    return key


class Merkle:
    """The Merkle heartbeat. With a key it encodes, issues challenges and verifies; the
    public copy (empty key, same check fraction) is what a farmer gets, and it proves.

    Errors: malformed objects, a public heartbeat asked to do secret work, an unusable
    file and a state with a bad MAC when issuing a challenge raise ``HeartbeatError``;
    an exhausted state raises ``OutOfChallenges``. ``verify`` returns ``False`` for any
    well-formed but wrong proof, challenge or state (including a bad state MAC).
    """

    DEFAULT_CHALLENGES: ClassVar[int] = DEFAULT_CHALLENGES
    DEFAULT_CHUNK_SIZE: ClassVar[int] = DEFAULT_CHUNK_SIZE
    MIN_CHUNK_SIZE: ClassVar[int] = MIN_CHUNK_SIZE
    MAX_CHALLENGES: ClassVar[int] = MAX_CHALLENGES
    Tag: ClassVar[type[MerkleTag]] = MerkleTag
    State: ClassVar[type[MerkleState]] = MerkleState
    Challenge: ClassVar[type[MerkleChallenge]] = MerkleChallenge
    Proof: ClassVar[type[MerkleProof]] = MerkleProof

    __slots__ = ("_inner", "_key", "_outer", "check_fraction")

    def __init__(self, key: bytes | None = None, check_fraction: float | None = None) -> None:
        self._key = os.urandom(KEY_SIZE) if key is None else _check_key(key)
        # HMAC-SHA256 (RFC 2104) with the padded-key hash states computed once: copying two
        # C hash objects per state check costs half of copying an ``hmac.HMAC`` object
        padded = self._key.ljust(64, b"\0")  # keys are at most 64 bytes (_check_key)
        self._inner = sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = sha256(bytes(b ^ 0x5C for b in padded))
        self.check_fraction = _check_fraction(check_fraction)

    @property
    def key(self) -> bytes:
        return self._key

    def __repr__(self) -> str:  # never show the key
        kind = "public" if self.is_public else "secret"
        return f"Merkle({kind}, check_fraction={self.check_fraction!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Merkle)
            and hmac.compare_digest(self.key, other.key)
            and self.check_fraction == other.check_fraction
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def is_public(self) -> bool:
        return not self.key

    def todict(self) -> dict[str, Any]:
        return {"key": b64(self.key), "check_fraction": self.check_fraction}

    @classmethod
    def fromdict(cls, d: object) -> Merkle:
        m = get_mapping(d, "heartbeat", ("key", "check_fraction"))
        key = parse_b64(m["key"], "heartbeat.key")
        return cls(key=key, check_fraction=m["check_fraction"])

    def get_public(self) -> Merkle:
        return Merkle(key=b"", check_fraction=self.check_fraction)

    def _require_secret(self, what: str) -> None:
        if self.is_public:
            raise HeartbeatError(f"a public heartbeat cannot {what}")

    def chunk_size_for(self, filesz: int) -> int:
        """The window size ``encode`` picks for a file of ``filesz`` bytes."""
        if self.check_fraction is None:
            chunksz = DEFAULT_CHUNK_SIZE
        else:
            chunksz = max(int(self.check_fraction * filesz), MIN_CHUNK_SIZE)
        return max(1, min(chunksz, filesz))

    def encode(
        self,
        file: BinaryIO,
        n: int = DEFAULT_CHALLENGES,
        seed: bytes | None = None,
        chunksz: int | None = None,
        filesz: int | None = None,
        *,
        timestamp: float | None = None,
    ) -> tuple[MerkleTag, MerkleState]:
        """Encode ``file`` for ``n`` challenges.

        ``seed`` (32 bytes) is the root seed; given it, the result depends only on the key,
        the seed and the file, and the timestamp defaults to ``0.0`` so that the state is
        reproducible too. Without it the seed is random and the timestamp is the clock.
        ``filesz`` defaults to the file's length (seek to its end); ``chunksz`` to
        ``chunk_size_for(filesz)``. Raises ``HeartbeatError`` on an empty or short file.
        """
        self._require_secret("encode")
        check_int(n, "n", lo=1, hi=MAX_CHALLENGES)
        if seed is None:
            seed = os.urandom(KEY_SIZE)
            if timestamp is None:
                timestamp = time.time()
        elif timestamp is None:
            timestamp = 0.0
        seed = bytes(seed)
        check_bytes(seed, "seed", _HASH_SIZES)
        if filesz is None:
            file.seek(0, os.SEEK_END)
            filesz = file.tell()
        if type(filesz) is int and filesz == 0:
            raise HeartbeatError("cannot encode an empty file")
        check_int(filesz, "filesz", lo=1, hi=MAX_FILE_SIZE)
        if chunksz is None:
            chunksz = self.chunk_size_for(filesz)
        else:
            check_int(chunksz, "chunksz", lo=1, hi=MAX_FILE_SIZE)
            chunksz = min(chunksz, filesz)

        order = _tree_order(n)
        width = 1 << order
        nodes: list[bytes] = [b""] * (2 * width)
        current = seed
        for i in range(n):
            current = _next_seed(self.key, current)
            nodes[width - 1 + i] = _leaf_hash(_chunk_hash(file, current, filesz, chunksz), i)
        for k in range(width - 2, -1, -1):
            nodes[k] = sha256(nodes[2 * k + 1] + nodes[2 * k + 2]).digest()

        tag = MerkleTag(nodes=tuple(nodes), order=order, chunksz=chunksz, filesz=filesz)
        state = self._signed(0, seed, n, nodes[0], timestamp)
        return tag, state

    def _signed(
        self, index: int, seed: bytes, n: int, root: bytes, timestamp: int | float
    ) -> MerkleState:
        mac = self._state_mac(index, seed, n, root, timestamp)
        return MerkleState(index, seed, n, root, mac, timestamp)

    def _state_mac(self, index: int, seed: bytes, n: int, root: bytes, timestamp: float) -> bytes:
        inner = self._inner.copy()
        inner.update(_mac_input(index, seed, n, root, timestamp))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def check_state(self, state: MerkleState | Mapping[str, Any]) -> bool:
        """Whether the state's MAC holds under this heartbeat's key (constant-time)."""
        self._require_secret("check a state")
        st = coerce(state, MerkleState, "state")
        expected = self._state_mac(st.index, st.seed, st.n, st.root, st.timestamp)
        return hmac.compare_digest(expected, st.hmac)

    def next_challenge(
        self, state: MerkleState | Mapping[str, Any]
    ) -> tuple[MerkleChallenge, MerkleState]:
        """The next challenge and the state after issuing it; ``state`` is left as it was.

        Raises ``HeartbeatError`` if the state's MAC fails, ``OutOfChallenges`` once all
        ``state.n`` challenges have been issued.
        """
        st = coerce(state, MerkleState, "state")
        if not self.check_state(st):
            raise HeartbeatError("state signature invalid")
        if st.index >= st.n:
            raise OutOfChallenges(
                f"all {st.n} challenges of this encoding have been issued; "
                "re-encode the file with a new seed"
            )
        seed = _next_seed(self.key, st.seed)
        challenge = MerkleChallenge(seed=seed, index=st.index)
        return challenge, self._signed(st.index + 1, seed, st.n, st.root, st.timestamp)

    def gen_challenge(self, state: MerkleState | Mapping[str, Any]) -> MerkleChallenge:
        """The next challenge, without touching ``state`` (unlike the original, which
        advanced it in place): use ``next_challenge`` to get the advanced state too."""
        return self.next_challenge(state)[0]

    def prove(
        self,
        file: BinaryIO,
        challenge: MerkleChallenge | Mapping[str, Any],
        tag: MerkleTag | Mapping[str, Any],
    ) -> MerkleProof:
        """Answer ``challenge`` from ``file`` (read only in the challenged window).

        Raises ``HeartbeatError`` when the tag has no such leaf or the file is shorter
        than the window the tag's ``filesz`` implies.
        """
        chal = coerce(challenge, MerkleChallenge, "challenge")
        tg = coerce(tag, MerkleTag, "tag")
        if chal.index >= 1 << tg.order or not tg.nodes[chal.index + (1 << tg.order) - 1]:
            raise HeartbeatError(f"tag has no leaf {chal.index}")
        blob = _chunk_hash(file, chal.seed, tg.filesz, tg.chunksz)
        return MerkleProof(index=chal.index, blob=blob, rows=tg.branch(chal.index))

    def verify(
        self,
        proof: MerkleProof | Mapping[str, Any],
        challenge: MerkleChallenge | Mapping[str, Any],
        state: MerkleState | Mapping[str, Any],
    ) -> bool:
        """Whether ``proof`` answers ``challenge`` for the file ``state`` was made from.

        Dicts are parsed first (``HeartbeatError`` if malformed). Beyond the original's
        checks, the branch must have exactly the tree's height, the running hash must sit
        on the side the leaf index dictates (as in every honest proof), and when ``state``
        is the one that issued ``challenge`` (``challenge.index == state.index - 1``) the
        challenge's seed must be the state's. In every case the committed leaf binds the
        proof to the window the right seed selects.
        """
        if not self._key:
            raise HeartbeatError("a public heartbeat cannot verify")
        pr = proof if type(proof) is MerkleProof else coerce(proof, MerkleProof, "proof")
        chal = (
            challenge
            if type(challenge) is MerkleChallenge
            else coerce(challenge, MerkleChallenge, "challenge")
        )
        st = state if type(state) is MerkleState else coerce(state, MerkleState, "state")
        expected = self._state_mac(st.index, st.seed, st.n, st.root, st.timestamp)
        if not hmac.compare_digest(expected, st.hmac):
            return False
        index = chal.index
        rows = pr.rows
        if pr.index != index or index >= st.n or len(rows) != _tree_order(st.n):
            return False
        if index == st.index - 1 and not hmac.compare_digest(chal.seed, st.seed):
            return False  # not the challenge this state issued
        running = _leaf_hash(pr.blob, index)
        bits = index  # bit k of the leaf index says on which side level k's node sits
        for left, right in rows:
            if (right if bits & 1 else left) != running:
                return False
            running = sha256(left + right).digest()
            bits >>= 1
        return hmac.compare_digest(running, st.root)

    @staticmethod
    def tag_type() -> type[MerkleTag]:
        return MerkleTag

    @staticmethod
    def state_type() -> type[MerkleState]:
        return MerkleState

    @staticmethod
    def challenge_type() -> type[MerkleChallenge]:
        return MerkleChallenge

    @staticmethod
    def proof_type() -> type[MerkleProof]:
        return MerkleProof
