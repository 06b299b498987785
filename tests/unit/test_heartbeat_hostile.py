"""Hostile input: malformed or forged heartbeat objects, short files, misuse.

The contract: ``fromdict`` raises ``HeartbeatError`` for anything malformed; ``verify`` on
parsed input returns ``False`` unless the proof is genuine; nothing raises another
exception type, loops without end, or says ``True`` to a forgery.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from downstream_node.heartbeat import (
    HeartbeatError,
    KeyedPRF,
    Merkle,
    OutOfChallenges,
    SeededChunk,
    Swizzle,
)

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "heartbeat-interop.json").read_text())
MERKLE = next(c for c in VECTORS if c["kind"] == "Merkle")
SWIZZLE = next(c for c in VECTORS if c["kind"] == "PySwizzle")
PRIME = SWIZZLE["secret"]["prime"]

Path_ = tuple[Any, ...]

JUNK: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**64,
    2**5000,
    -(2**5000),
    1.5,
    0.0,
    1e308,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "!!!!",
    "A",
    "AB==",  # valid alphabet, non-canonical padding bits
    "AAAA",  # canonical but 3 bytes
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",  # 32 bytes, all zero
    "A" * 10_000,
    "\u00e9t\u00e9",
    [],
    [1, 2],
    {},
    {"index": 0},
]


# -- helpers -------------------------------------------------------------------------


def _paths(obj: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every position in a JSON value; long lists contribute their ends and middle only."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        picks = range(len(obj)) if len(obj) <= 4 else sorted({0, len(obj) // 2, len(obj) - 1})
        for i in picks:
            yield (*prefix, i)
            yield from _paths(obj[i], (*prefix, i))


def _replace(obj: Any, path: Path_, value: Any) -> Any:
    out = copy.deepcopy(obj)
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return out


def _delete(obj: Any, path: Path_) -> Any:
    out = copy.deepcopy(obj)
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]
    return out


def _mutations(obj: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for path in _paths(obj):
        yield f"del {path}", _delete(obj, path)
        for junk in JUNK:
            yield f"{path}={junk!r:.30}", _replace(obj, path, junk)
    extra = copy.deepcopy(obj)
    extra["extra"] = 1
    yield "extra key", extra
    yield "not a dict", list(obj.items())
    yield "none", None


def _parses(cls: Any, d: Any) -> Any:
    """cls.fromdict(d), or None when it raises HeartbeatError (any other error fails)."""
    try:
        return cls.fromdict(d)
    except HeartbeatError:
        return None


def _verdict(beat: Any, proof: Any, challenge: Any, state: Any) -> bool | None:
    """verify(...) as True/False, or None for HeartbeatError."""
    try:
        result = beat.verify(proof, challenge, state)
    except HeartbeatError:
        return None
    assert type(result) is bool
    return result


def _same(cls: Any, mutated: Any, original: dict[str, Any]) -> bool:
    obj = _parses(cls, mutated)
    return obj is not None and obj.todict() == original


CASES = [MERKLE, SWIZZLE]


def _scheme(case: dict[str, Any]) -> Any:
    return Merkle if case["kind"] == "Merkle" else Swizzle


def _ids(case: dict[str, Any]) -> str:
    return str(case["kind"])


# -- structured mutations of every field -----------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("role", ["proof", "challenge", "state"])
def test_mutated_inputs_never_verify(case: dict[str, Any], role: str) -> None:
    scheme = _scheme(case)
    beat = scheme.fromdict(case["secret"])
    rnd = case["rounds"][0]
    good = {"proof": rnd["proof"], "challenge": rnd["challenge"], "state": rnd["state_after"]}
    cls = {"proof": scheme.Proof, "challenge": scheme.Challenge, "state": scheme.State}[role]
    for what, mutated in _mutations(good[role]):
        _parses(cls, mutated)
        args = {**good, role: mutated}
        verdict = _verdict(beat, args["proof"], args["challenge"], args["state"])
        if verdict:
            assert _same(cls, mutated, good[role]), what


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_mutated_tags_fail_cleanly_when_proving(case: dict[str, Any]) -> None:
    scheme = _scheme(case)
    public = scheme.fromdict(case["public"])
    beat = scheme.fromdict(case["secret"])
    rnd = case["rounds"][0]
    chunk = SeededChunk(case["seed"], case["size"])
    for _what, mutated in _mutations(case["tag"]):
        if _parses(scheme.Tag, mutated) is None:
            with pytest.raises(HeartbeatError):
                public.prove(chunk, rnd["challenge"], mutated)
            continue
        try:
            proof = public.prove(chunk, rnd["challenge"], mutated)
        except HeartbeatError:
            continue
        # a tag is not authenticated: a change off the challenged path may still prove
        assert type(beat.verify(proof, rnd["challenge"], rnd["state_after"])) is bool


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_mutated_heartbeat_dicts(case: dict[str, Any]) -> None:
    scheme = _scheme(case)
    rnd = case["rounds"][0]
    for what, mutated in _mutations(case["secret"]):
        beat = _parses(scheme, mutated)
        if beat is None:
            continue
        verdict = _verdict(beat, rnd["proof"], rnd["challenge"], rnd["state_after"])
        if verdict:
            assert beat.key == scheme.fromdict(case["secret"]).key, what


# -- random mutations (property based) ----------------------------------------------

_b64_text = st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode())
_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**4200), max_value=2**4200)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=60)
    | _b64_text
)
_json_values = st.recursive(
    _leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


def _random_mutation(obj: dict[str, Any], data: Any) -> Any:
    paths = list(_paths(obj))
    path = data.draw(st.sampled_from(paths))
    if data.draw(st.booleans()) and not isinstance(path[-1], int):
        return _delete(obj, path)
    return _replace(obj, path, data.draw(_json_values))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=st.sampled_from(CASES),
    role=st.sampled_from(["proof", "challenge", "state"]),
    data=st.data(),
)
def test_random_mutations_never_verify(case: dict[str, Any], role: str, data: Any) -> None:
    scheme = _scheme(case)
    beat = scheme.fromdict(case["secret"])
    rnd = case["rounds"][1]
    good = {"proof": rnd["proof"], "challenge": rnd["challenge"], "state": rnd["state_after"]}
    mutated = _random_mutation(good[role], data)
    cls = {"proof": scheme.Proof, "challenge": scheme.Challenge, "state": scheme.State}[role]
    args = {**good, role: mutated}
    if _verdict(beat, args["proof"], args["challenge"], args["state"]):
        assert _same(cls, mutated, good[role])


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_mutations_of_tags_and_heartbeats_raise_only_heartbeat_error(data: Any) -> None:
    case = data.draw(st.sampled_from(CASES))
    scheme = _scheme(case)
    for cls, original in ((scheme.Tag, case["tag"]), (scheme, case["secret"])):
        _parses(cls, _random_mutation(original, data))


@settings(max_examples=200, deadline=None)
@given(
    blob=st.binary(min_size=32, max_size=32),
    rows=st.lists(
        st.tuples(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32)),
        min_size=8,
        max_size=8,
    ),
    index=st.integers(0, 2),
)
def test_forged_merkle_proofs_are_rejected(
    blob: bytes, rows: list[tuple[bytes, bytes]], index: int
) -> None:
    beat = Merkle.fromdict(MERKLE["secret"])
    rnd = MERKLE["rounds"][index]
    proof = Merkle.Proof(index=rnd["challenge"]["index"], blob=blob, rows=tuple(rows))
    assert beat.verify(proof, rnd["challenge"], rnd["state_after"]) is False


@settings(max_examples=200, deadline=None)
@given(
    mu=st.lists(st.integers(0, PRIME - 1), min_size=10, max_size=10),
    sigma=st.integers(0, PRIME - 1),
)
def test_forged_swizzle_proofs_are_rejected(mu: list[int], sigma: int) -> None:
    beat = Swizzle.fromdict(SWIZZLE["secret"])
    rnd = SWIZZLE["rounds"][0]
    assert beat.verify({"mu": mu, "sigma": sigma}, rnd["challenge"], rnd["state_after"]) is False


# -- specific weaknesses of the original ----------------------------------------------


def test_merkle_prove_on_a_short_file_raises_instead_of_looping(tmp_path: Path) -> None:
    beat = Merkle(check_fraction=0.5)
    tag, state = beat.encode(SeededChunk("short", 10_000), n=4)
    challenge, _ = beat.next_challenge(state)
    with pytest.raises(HeartbeatError, match="ended"):
        beat.prove(SeededChunk("short", 5_000), challenge, tag)
    with pytest.raises(HeartbeatError):
        beat.prove(io.BytesIO(b""), challenge, tag)
    path = tmp_path / "trunc.bin"
    path.write_bytes(SeededChunk("short", 10_000).read()[:100])
    with path.open("rb") as fh, pytest.raises(HeartbeatError):
        beat.prove(fh, challenge, tag)


def test_merkle_encode_with_a_filesz_beyond_the_file_raises() -> None:
    with pytest.raises(HeartbeatError):
        Merkle().encode(SeededChunk("x", 100), n=2, filesz=1000, chunksz=1000)


def test_swizzle_prove_on_a_short_file_raises() -> None:
    beat = Swizzle(prime=PRIME)
    tag, state = beat.encode(SeededChunk("short", 20_000))
    challenge = beat.gen_challenge(state)
    with pytest.raises(HeartbeatError, match="ends inside"):
        beat.prove(SeededChunk("short", 3_000), challenge, tag)


def test_bad_state_mac_is_a_false_verdict_and_blocks_challenges() -> None:
    beat = Merkle.fromdict(MERKLE["secret"])
    rnd = MERKLE["rounds"][0]
    forged = dict(rnd["state_after"], hmac=base64.b64encode(bytes(32)).decode())
    assert beat.verify(rnd["proof"], rnd["challenge"], forged) is False
    with pytest.raises(HeartbeatError, match="signature"):
        beat.gen_challenge(forged)
    rewound = dict(rnd["state_after"], index=0)  # MAC no longer covers it
    assert beat.verify(rnd["proof"], rnd["challenge"], rewound) is False
    other = Merkle(check_fraction=0.01)  # right format, wrong key
    assert other.verify(rnd["proof"], rnd["challenge"], rnd["state_after"]) is False

    sw = Swizzle.fromdict(SWIZZLE["secret"])
    srnd = SWIZZLE["rounds"][0]
    forged = dict(SWIZZLE["initial_state"], chunks=1)
    assert sw.verify(srnd["proof"], srnd["challenge"], forged) is False
    with pytest.raises(HeartbeatError, match="signature"):
        sw.gen_challenge(forged)


def test_swizzle_zero_chunk_challenges_do_not_exist() -> None:
    beat = Swizzle.fromdict(SWIZZLE["secret"])
    rnd = SWIZZLE["rounds"][0]
    empty = dict(rnd["challenge"], chunks=0)
    with pytest.raises(HeartbeatError):
        Swizzle.Challenge.fromdict(empty)
    with pytest.raises(HeartbeatError):
        beat.verify({"mu": [0] * 10, "sigma": 0}, empty, rnd["state_after"])
    assert beat.verify({"mu": [0] * 10, "sigma": 0}, rnd["challenge"], rnd["state_after"]) is False


def test_swizzle_verify_refuses_challenges_the_node_never_makes() -> None:
    beat = Swizzle.fromdict(SWIZZLE["secret"])
    rnd = SWIZZLE["rounds"][0]
    # v_max 2 would make every coefficient 0 or 1; only the prime is accepted
    assert beat.verify(rnd["proof"], dict(rnd["challenge"], v_max=2), rnd["state_after"]) is False
    too_many = dict(rnd["challenge"], chunks=rnd["challenge"]["chunks"] + 1)
    assert beat.verify(rnd["proof"], too_many, rnd["state_after"]) is False
    with pytest.raises(HeartbeatError):
        Swizzle.fromdict(SWIZZLE["public"]).prove(
            SeededChunk(SWIZZLE["seed"], SWIZZLE["size"]), too_many, SWIZZLE["tag"]
        )


def test_swizzle_out_of_range_proof_values_are_rejected() -> None:
    beat = Swizzle.fromdict(SWIZZLE["secret"])
    rnd = SWIZZLE["rounds"][0]
    proof = rnd["proof"]
    shifted = dict(proof, sigma=proof["sigma"] + PRIME)  # same residue, not reduced
    assert beat.verify(shifted, rnd["challenge"], rnd["state_after"]) is False
    shifted = dict(proof, mu=[proof["mu"][0] + PRIME, *proof["mu"][1:]])
    assert beat.verify(shifted, rnd["challenge"], rnd["state_after"]) is False


@pytest.mark.parametrize("whole_chunks", [1, 2])
def test_swizzle_challenges_of_whole_chunk_files_need_the_data(whole_chunks: int) -> None:
    """A file of whole chunks ends with an authenticator of no data (the original's format);
    a challenge sampling only that one passes a proof made without the file. Told the
    file's size, the challenger never issues one: a proof from other bytes always fails."""
    beat = Swizzle()
    size = whole_chunks * beat.chunk_size
    tag, state = beat.encode(io.BytesIO(os.urandom(size)))
    assert len(tag.sigma) == whole_chunks + 1  # the empty tail
    public, forged = beat.get_public(), io.BytesIO(bytes(size))

    def forged_passes(challenge: Any) -> bool:
        return beat.verify(public.prove(forged, challenge, tag), challenge, state)

    # a state of other bytes than the size says (a file that shrank): drawn as usual, at once
    _, shrunk = beat.encode(io.BytesIO(b"short"))
    assert beat.next_challenge(shrunk, file_size=size)[0].chunks == 1
    rounds = 300
    told = [beat.next_challenge(state, file_size=size)[0] for _ in range(rounds)]
    assert not any(forged_passes(c) for c in told)
    if whole_chunks == 1:  # untold, a quarter of them or more would pass: the test can fail
        untold = [beat.next_challenge(state)[0] for _ in range(rounds)]
        assert sum(forged_passes(c) for c in untold) > rounds // 10


@pytest.mark.parametrize("size", range(1, 12))
def test_tiny_files_never_get_an_empty_window(size: int) -> None:
    beat = Merkle(check_fraction=0.01)
    tag, state = beat.encode(SeededChunk("tiny", size), n=2)
    assert tag.chunksz == size  # the whole file: below the minimum window
    challenge, state = beat.next_challenge(state)
    proof = beat.prove(SeededChunk("tiny", size), challenge, tag)
    assert beat.verify(proof, challenge, state)
    other = beat.prove(SeededChunk("tinier", size), challenge, tag)
    assert beat.verify(other, challenge, state) is False


def test_out_of_challenges_is_a_heartbeat_error_with_a_clear_message() -> None:
    beat = Merkle()
    tag, state = beat.encode(SeededChunk("o", 1000), n=1)
    challenge, state = beat.next_challenge(state)
    assert state.remaining == 0
    with pytest.raises(OutOfChallenges) as info:
        beat.gen_challenge(state)
    assert isinstance(info.value, HeartbeatError) and isinstance(info.value, ValueError)
    assert "1 challenges" in str(info.value) and "re-encode" in str(info.value)
    # the exhausted state still verifies the answer to its last challenge
    proof = beat.prove(SeededChunk("o", 1000), challenge, tag)
    assert beat.verify(proof, challenge, state) is True


def test_merkle_prove_for_a_leaf_the_tag_lacks_raises() -> None:
    beat = Merkle()
    tag, state = beat.encode(SeededChunk("l", 1000), n=3)  # tree of 4 leaves, 3 used
    ghost = Merkle.Challenge(seed=os.urandom(32), index=3)
    with pytest.raises(HeartbeatError):
        beat.prove(SeededChunk("l", 1000), ghost, tag)
    with pytest.raises(HeartbeatError):
        beat.prove(SeededChunk("l", 1000), Merkle.Challenge(seed=os.urandom(32), index=4), tag)
    fake = Merkle.Proof(index=3, blob=bytes(32), rows=tag.branch(3))
    assert beat.verify(fake, ghost, state) is False


@pytest.mark.parametrize(
    "fraction", [math.nan, math.inf, -math.inf, 0, 0.0, -0.1, 1.5, 2, True, False, "0.1", 10**400]
)
def test_bad_check_fractions_are_refused(fraction: Any) -> None:
    with pytest.raises(HeartbeatError):
        Merkle(check_fraction=fraction)
    with pytest.raises(HeartbeatError):
        Merkle.fromdict({"key": MERKLE["secret"]["key"], "check_fraction": fraction})


@pytest.mark.parametrize("key", ["text", 5, bytes(3), bytes(100)])
def test_bad_merkle_keys_are_refused(key: Any) -> None:
    with pytest.raises(HeartbeatError):
        Merkle(key=key)


@pytest.mark.parametrize(
    ("kwargs"),
    [
        {"prime": 15},
        {"prime": PRIME + 2},  # not prime
        {"prime": 2**61 - 1},  # prime but too small
        {"prime": 2.0**100},
        {"prime": True},
        {"sectors": 0},
        {"sectors": True},
        {"sectors": 10**6},
        {"key": bytes(5)},
        {"key": "k" * 32},
    ],
)
def test_bad_swizzle_parameters_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(HeartbeatError):
        Swizzle(**{"prime": PRIME, **kwargs})


@pytest.mark.parametrize(
    "args", [(None, 10), (b"seed", 10), ("s", -1), ("s", True), ("s", 1.0), ("s", None)]
)
def test_bad_seeded_chunk_arguments_are_refused(args: tuple[Any, Any]) -> None:
    with pytest.raises(HeartbeatError):
        SeededChunk(*args)


def test_encoding_arguments_are_checked() -> None:
    beat = Merkle()
    with pytest.raises(HeartbeatError, match="empty"):
        beat.encode(SeededChunk("e", 0))
    with pytest.raises(HeartbeatError, match="empty"):
        Swizzle(prime=PRIME).encode(io.BytesIO())
    for bad in ({"n": 0}, {"n": 2**30}, {"n": True}, {"seed": bytes(5)}, {"chunksz": 0}):
        with pytest.raises(HeartbeatError):
            beat.encode(SeededChunk("e", 100), **bad)
    with pytest.raises(HeartbeatError, match="public"):
        beat.get_public().encode(SeededChunk("e", 100))


@pytest.mark.parametrize("junk", [None, 5, "proof", [1, 2], b"x", 1.5])
def test_verify_refuses_non_objects(junk: Any) -> None:
    beat = Merkle.fromdict(MERKLE["secret"])
    rnd = MERKLE["rounds"][0]
    with pytest.raises(HeartbeatError):
        beat.verify(junk, rnd["challenge"], rnd["state_after"])
    with pytest.raises(HeartbeatError):
        beat.verify(rnd["proof"], junk, rnd["state_after"])
    with pytest.raises(HeartbeatError):
        beat.verify(rnd["proof"], rnd["challenge"], junk)
    sw = Swizzle.fromdict(SWIZZLE["secret"])
    srnd = SWIZZLE["rounds"][0]
    with pytest.raises(HeartbeatError):
        sw.verify(junk, srnd["challenge"], srnd["state_after"])


def test_objects_of_the_other_scheme_are_refused() -> None:
    beat = Merkle.fromdict(MERKLE["secret"])
    sw = Swizzle.fromdict(SWIZZLE["secret"])
    m, s = MERKLE["rounds"][0], SWIZZLE["rounds"][0]
    with pytest.raises(HeartbeatError):
        beat.verify(Swizzle.Proof.fromdict(s["proof"]), m["challenge"], m["state_after"])
    with pytest.raises(HeartbeatError):
        beat.verify(s["proof"], m["challenge"], m["state_after"])
    with pytest.raises(HeartbeatError):
        sw.verify(m["proof"], s["challenge"], s["state_after"])
    with pytest.raises(HeartbeatError):
        sw.verify(s["proof"], m["challenge"], s["state_after"])


@pytest.mark.parametrize("rng", [0, -1, -(2**80)])
def test_prf_with_an_empty_range_refuses_instead_of_looping(rng: int) -> None:
    with pytest.raises(HeartbeatError):
        KeyedPRF(bytes(32), rng)
    with pytest.raises(HeartbeatError):
        KeyedPRF(bytes(7), 10)
