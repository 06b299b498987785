"""Round trips of objects made by our own heartbeat code, on seeded chunks and real files.

Covers SeededChunk's file behaviour, the batched PRF against the one-at-a-time one, and
encode / challenge / prove / verify for Merkle and Swizzle, through JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from downstream_node.heartbeat import (
    HeartbeatError,
    KeyedPRF,
    Merkle,
    OutOfChallenges,
    SeededChunk,
    Swizzle,
)
from downstream_node.heartbeat.crypto import Cfb8Cipher
from downstream_node.heartbeat.merkle import MIN_CHUNK_SIZE

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "heartbeat-interop.json").read_text())
PRIME = next(c for c in VECTORS if c["kind"] == "PySwizzle")["secret"]["prime"]  # 1024 bits
SMALL_PRIME = 340282366920938463463374607431768211507  # 2**128 + 51


def _reference(seed: str, size: int) -> bytes:
    """The seeded bytes straight from the definition: AES-256-CTR of zeros, counter from 1."""
    key = hashlib.sha256(seed.encode()).digest()
    enc = Cipher(algorithms.AES(key), modes.CTR((1).to_bytes(16, "big"))).encryptor()
    return enc.update(bytes(size))


def _json(obj: Any) -> Any:
    return json.loads(json.dumps(obj.todict()))


@pytest.fixture
def real_file(tmp_path: Path) -> Iterator[io.BufferedReader]:
    path = tmp_path / "chunk.bin"
    path.write_bytes(os.urandom(50_001))
    with path.open("rb") as fh:
        yield fh


# -- SeededChunk ---------------------------------------------------------------------


def test_seeded_chunk_is_a_seekable_readable_binary_file() -> None:
    chunk = SeededChunk("seed", 1000)
    assert isinstance(chunk, io.RawIOBase)
    assert chunk.readable() and chunk.seekable() and not chunk.writable()
    ref = _reference("seed", 1000)
    assert chunk.read(10) == ref[:10]
    assert chunk.tell() == 10
    assert chunk.read(5) == ref[10:15]
    assert chunk.seek(-3, io.SEEK_END) == 997
    assert chunk.read() == ref[997:]
    assert chunk.read(10) == b""
    assert chunk.seek(5000) == 5000 and chunk.read(1) == b""
    chunk.seek(100)
    assert chunk.seek(17, io.SEEK_CUR) == 117
    buf = bytearray(40)
    assert chunk.readinto(buf) == 40 and bytes(buf) == ref[117:157]
    chunk.seek(990)
    assert chunk.readinto(buf) == 10 and bytes(buf[:10]) == ref[990:]
    with pytest.raises(ValueError):
        chunk.seek(-1)
    chunk.close()
    with pytest.raises(ValueError):
        chunk.read(1)


def test_seeded_chunk_works_under_io_buffered_reader() -> None:
    ref = _reference("buffered", 70_000)
    reader = io.BufferedReader(SeededChunk("buffered", 70_000))
    assert reader.read(3) == ref[:3]
    reader.seek(65_000)
    assert reader.read() == ref[65_000:]


def test_seeded_chunk_large_reads_stream_through_small_buffers() -> None:
    size = (1 << 20) * 3 + 5  # bigger than the shared zero buffer
    ref = _reference("big", size)
    chunk = SeededChunk("big", size)
    assert chunk.read() == ref
    chunk.seek(7)
    out = bytearray(size)
    assert chunk.readinto(out) == size - 7
    assert bytes(out[: size - 7]) == ref[7:]


@settings(max_examples=200, deadline=None)
@given(
    seed=st.text(max_size=20),
    size=st.integers(0, 5000),
    ops=st.lists(st.tuples(st.integers(0, 5200), st.integers(-1, 700)), max_size=8),
)
def test_seeded_chunk_random_seeks_match_the_definition(
    seed: str, size: int, ops: list[tuple[int, int]]
) -> None:
    ref = _reference(seed, size)
    chunk = SeededChunk(seed, size)
    for offset, count in ops:
        chunk.seek(offset)
        expected = ref[offset:] if count < 0 else ref[offset : offset + count]
        assert chunk.read(count) == expected
        assert chunk.tell() == max(offset, min(size, offset + len(expected)))


# -- PRF -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    rng=st.one_of(st.integers(1, 2**20), st.integers(2**60, 2**1100)),
    count=st.integers(0, 300),
    start=st.integers(0, 10**12),
)
def test_batched_prf_equals_one_at_a_time(key: bytes, rng: int, count: int, start: int) -> None:
    prf = KeyedPRF(key, rng)
    points = range(start, start + count)
    values = prf.many(points)
    assert values == [prf(x) for x in points]
    assert all(0 <= v < rng for v in values)


@settings(max_examples=100, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    count=st.integers(1, 200),
    size=st.integers(1, 40),
    data=st.data(),
)
def test_batched_cfb8_equals_the_cfb8_mode(key: bytes, count: int, size: int, data: Any) -> None:
    cipher = Cfb8Cipher(key)
    first = data.draw(st.binary(min_size=count * size, max_size=count * size))
    second = data.draw(st.binary(min_size=count * size, max_size=count * size))
    out1, regs = cipher.encrypt_many(bytes(16 * count), first, size)
    out2, _ = cipher.encrypt_many(regs, second, size)
    for i in range(count):
        stream = cipher.stream()
        assert out1[i * size : (i + 1) * size] == stream.update(first[i * size : (i + 1) * size])
        assert out2[i * size : (i + 1) * size] == stream.update(second[i * size : (i + 1) * size])


@pytest.mark.parametrize(
    "rng",
    [
        2**1023 + 1,  # each try hits with probability ~1/2: many rounds, then one at a time
        PRIME,  # the vectors' 1024-bit prime
        2**255 + 19,  # messages shorter than the 32-byte digest
        821,  # two-byte messages and a partial mask, as the challenge's chunk indices
    ],
)
def test_batched_prf_with_many_rounds_equals_one_at_a_time(rng: int) -> None:
    prf = KeyedPRF(hashlib.sha256(str(rng).encode()).digest(), rng)
    points = range(1000, 1820)
    assert prf.many(points) == [prf(x) for x in points]


@settings(max_examples=50, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    count=st.integers(1, 100),
    size=st.integers(1, 40),
    data=st.data(),
)
def test_cfb8_columns_equal_the_cfb8_mode(key: bytes, count: int, size: int, data: Any) -> None:
    cipher = Cfb8Cipher(key)
    zero = data.draw(st.lists(st.booleans(), min_size=size, max_size=size))
    columns = [None if z else data.draw(st.binary(min_size=count, max_size=count)) for z in zero]
    out, registers = cipher.encrypt_columns(bytes(16 * count), columns)
    for i in range(count):
        message = bytes(0 if column is None else column[i] for column in columns)
        stream = cipher.stream()
        assert bytes(column[i] for column in out) == stream.update(message)
        # the registers after the message continue the stream
        follow = cipher.resume(registers[16 * i : 16 * i + 16]).update(b"more")
        assert follow == stream.update(b"more")


# -- Merkle --------------------------------------------------------------------------


def _merkle_all_rounds(beat: Merkle, file: Any, n: int, **kwargs: Any) -> None:
    tag, state = beat.encode(file, n=n, **kwargs)
    tag, state = Merkle.Tag.fromdict(_json(tag)), Merkle.State.fromdict(_json(state))
    public = Merkle.fromdict(_json(beat.get_public()))
    assert state.remaining == n
    for i in range(n):
        challenge, state = beat.next_challenge(_json(state))
        assert challenge.index == i and state.remaining == n - i - 1
        proof = public.prove(file, _json(challenge), _json(tag))
        assert beat.verify(_json(proof), _json(challenge), _json(state)) is True
    with pytest.raises(OutOfChallenges, match="re-encode"):
        beat.next_challenge(state)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 33])
def test_merkle_every_challenge_round_trips_on_a_seeded_chunk(n: int) -> None:
    _merkle_all_rounds(Merkle(check_fraction=0.01), SeededChunk("m", 100_003), n)


def test_merkle_round_trips_on_a_real_file(real_file: io.BufferedReader) -> None:
    _merkle_all_rounds(Merkle(), real_file, 20)
    _merkle_all_rounds(Merkle(check_fraction=0.5), real_file, 4)


def test_merkle_default_challenge_count() -> None:
    assert Merkle.DEFAULT_CHALLENGES == 256
    tag, state = Merkle().encode(SeededChunk("d", 4096))
    assert state.n == state.remaining == 256 and tag.order == 8


def test_merkle_seeded_encoding_is_deterministic() -> None:
    key, seed = os.urandom(32), os.urandom(32)
    a = Merkle(key, 0.01).encode(SeededChunk("x", 30_000), n=16, seed=seed)
    b = Merkle(key, 0.01).encode(SeededChunk("x", 30_000), n=16, seed=seed)
    assert a[0].todict() == b[0].todict() and a[1].todict() == b[1].todict()
    c = Merkle(key, 0.01).encode(SeededChunk("x", 30_000), n=16, seed=os.urandom(32))
    assert c[0].todict() != a[0].todict()


def test_merkle_gen_challenge_does_not_advance_but_next_challenge_does() -> None:
    beat = Merkle()
    _, state = beat.encode(SeededChunk("g", 10_000), n=4)
    assert beat.gen_challenge(state) == beat.gen_challenge(state)
    first, after = beat.next_challenge(state)
    second, _ = beat.next_challenge(after)
    assert first.index == 0 and second.index == 1 and first.seed != second.seed
    assert state.index == 0


def test_merkle_proof_from_other_data_fails() -> None:
    beat = Merkle(check_fraction=0.01)
    tag, state = beat.encode(SeededChunk("right", 40_000), n=4)
    challenge, state = beat.next_challenge(state)
    proof = beat.get_public().prove(SeededChunk("wrong", 40_000), challenge, tag)
    assert beat.verify(proof, challenge, state) is False


def test_merkle_explicit_and_capped_window_sizes() -> None:
    beat = Merkle()
    tag, _ = beat.encode(SeededChunk("s", 1000), n=2)
    assert tag.chunksz == 1000 and tag.filesz == 1000  # default 8192 capped at the file
    tag, _ = beat.encode(SeededChunk("s", 1000), n=2, chunksz=10)
    assert tag.chunksz == 10
    _merkle_all_rounds(beat, SeededChunk("s", 1000), 3, chunksz=1)
    # a filesz smaller than the file uses only the prefix
    tag, _ = beat.encode(SeededChunk("s", 1000), n=2, filesz=500)
    assert tag.filesz == 500


@pytest.mark.parametrize("size", [1, 2, 50, 255, 256, 257, 1000, 30_000])
def test_merkle_tiny_files_with_small_fraction_get_a_real_window(size: int) -> None:
    beat = Merkle(check_fraction=0.01)
    tag, _ = beat.encode(SeededChunk("tiny", size), n=3)
    assert tag.chunksz == max(min(size, MIN_CHUNK_SIZE), int(0.01 * size)) >= 1
    _merkle_all_rounds(beat, SeededChunk("tiny", size), 3)


def test_merkle_timestamp_is_clock_for_random_seed() -> None:
    _, state = Merkle().encode(SeededChunk("t", 100), n=1)
    assert state.timestamp > 1_600_000_000
    _, state = Merkle().encode(SeededChunk("t", 100), n=1, seed=bytes(32))
    assert state.timestamp == 0.0


def test_merkle_heartbeat_dict_round_trips() -> None:
    for beat in (Merkle(), Merkle(check_fraction=0.25), Merkle(os.urandom(32), 1)):
        assert Merkle.fromdict(_json(beat)) == beat
        assert Merkle.fromdict(_json(beat)).todict() == beat.todict()
    beat = Merkle()
    assert beat.todict()["key"] not in repr(beat) and beat.key.hex() not in repr(beat)


def test_merkle_type_accessors_match_the_original() -> None:
    assert Merkle.tag_type() is Merkle.Tag
    assert Merkle.state_type() is Merkle.State
    assert Merkle.challenge_type() is Merkle.Challenge
    assert Merkle.proof_type() is Merkle.Proof


# -- Swizzle -------------------------------------------------------------------------


def _swizzle_rounds(beat: Swizzle, file: Any, rounds: int = 3) -> None:
    tag, state = beat.encode(file)
    stored = _json(state)
    assert stored["encrypted"] is True
    tag = Swizzle.Tag.fromdict(_json(tag))
    public = Swizzle.fromdict(_json(beat.get_public()))
    for _ in range(rounds):
        challenge, after = beat.next_challenge(stored)
        assert after.todict() == stored
        proof = public.prove(file, _json(challenge), _json(tag))
        assert beat.verify(_json(proof), _json(challenge), stored) is True
        assert beat.verify(proof, challenge, Swizzle.State.fromdict(stored)) is True
        assert stored["encrypted"] is True and state.todict() == stored


@pytest.mark.parametrize("size", [1, 127, 128, 129, 1279, 1280, 1281, 2560, 20_000])
def test_swizzle_round_trips_on_seeded_chunks(size: int) -> None:
    _swizzle_rounds(Swizzle(prime=PRIME), SeededChunk("sw", size))


@pytest.mark.parametrize("sectors", [1, 2, 3, 10, 17])
def test_swizzle_round_trips_with_other_sector_counts(sectors: int) -> None:
    beat = Swizzle(prime=SMALL_PRIME, sectors=sectors)
    assert beat.sectorsize == 16
    _swizzle_rounds(beat, SeededChunk("sec", 5_000), rounds=2)


@pytest.mark.parametrize(
    ("sectors", "size"),
    [(1, 16), (1, 33), (3, 48), (3, 5_000), (10, 160), (10, (1 << 20) + 170)],
)
def test_swizzle_authenticators_follow_the_definition(sectors: int, size: int) -> None:
    """sigma_i = f(i) + sum_j alpha(j) * m_ij mod p, one chunk at a time with plain ints
    (a last partial chunk included; the largest size spans two read blocks)."""
    beat = Swizzle(prime=SMALL_PRIME, sectors=sectors)
    data = _reference("def", size)
    f_key, alpha_key = bytes(range(32)), bytes(range(32, 64))
    f = KeyedPRF(f_key, SMALL_PRIME)
    alphas = [KeyedPRF(alpha_key, SMALL_PRIME)(j) for j in range(sectors)]
    ss, chunk = beat.sectorsize, beat.chunk_size
    expected = []
    for i in range(size // chunk + 1):
        sectors_i = [data[i * chunk + j * ss : i * chunk + (j + 1) * ss] for j in range(sectors)]
        dot = sum(a * int.from_bytes(m, "big") for a, m in zip(alphas, sectors_i, strict=True))
        expected.append((f(i) + dot) % SMALL_PRIME)
    assert beat._authenticators(io.BytesIO(data), f_key, alpha_key) == expected


def test_swizzle_round_trips_on_a_real_file(real_file: io.BufferedReader) -> None:
    _swizzle_rounds(Swizzle(prime=PRIME), real_file)


def test_swizzle_chunk_count_matches_the_original_rule() -> None:
    beat = Swizzle(prime=PRIME)  # 1280-byte chunks
    for size, chunks in [(1, 1), (1279, 1), (1280, 2), (1281, 2), (20_000, 16), (25_600, 21)]:
        tag, state = beat.encode(SeededChunk("n", size))
        assert len(tag.sigma) == state.chunks == chunks


def test_swizzle_partial_challenges_cover_at_least_one_chunk() -> None:
    beat = Swizzle(prime=PRIME)
    tag, state = beat.encode(SeededChunk("p", 20_000))
    for chunks in (0, 1, 5, 16):
        challenge = beat.gen_challenge(state, chunks=chunks)
        assert challenge.chunks == max(1, chunks)
        proof = beat.prove(SeededChunk("p", 20_000), challenge, tag)
        assert beat.verify(proof, challenge, state)


def test_swizzle_proof_from_other_data_fails() -> None:
    beat = Swizzle(prime=PRIME)
    tag, state = beat.encode(SeededChunk("right", 20_000))
    challenge = beat.gen_challenge(state)
    proof = beat.prove(SeededChunk("wrong", 20_000), challenge, tag)
    assert beat.verify(proof, challenge, state) is False


def test_swizzle_generates_a_1024_bit_prime_by_default() -> None:
    beat = Swizzle()
    assert beat.prime.bit_length() == 1024 and beat.sectors == 10 and len(beat.key) == 32
    assert Swizzle.fromdict(_json(beat)) == beat
    assert Swizzle.fromdict(_json(beat)).todict() == beat.todict()
    assert beat.get_public().prime == beat.prime
    _swizzle_rounds(beat, SeededChunk("gen", 3000), rounds=1)


def test_swizzle_state_has_no_challenge_limit() -> None:
    _, state = Swizzle(prime=PRIME).encode(SeededChunk("r", 100))
    assert state.remaining is None


def test_swizzle_type_accessors_match_the_original() -> None:
    assert Swizzle.tag_type() is Swizzle.Tag
    assert Swizzle.state_type() is Swizzle.State
    assert Swizzle.challenge_type() is Swizzle.Challenge
    assert Swizzle.proof_type() is Swizzle.Proof


def test_public_api_exports() -> None:
    import downstream_node.heartbeat as hb

    for name in ("Merkle", "Swizzle", "SeededChunk", "HeartbeatError", "OutOfChallenges"):
        assert name in hb.__all__
    assert issubclass(hb.OutOfChallenges, hb.HeartbeatError)
    assert issubclass(hb.HeartbeatError, ValueError)
    with pytest.raises(HeartbeatError):
        KeyedPRF(bytes(32), 0)


@pytest.mark.parametrize("size", [16, 31, 32, 33, 63, 64])
def test_merkle_state_mac_is_hmac_sha256_for_every_key_length(size: int) -> None:
    import hmac

    beat = Merkle(os.urandom(size))
    _, state = beat.encode(SeededChunk("mac", 500), n=2, seed=os.urandom(32))
    assert state.hmac == hmac.digest(beat.key, state.mac_input(), "sha256")
