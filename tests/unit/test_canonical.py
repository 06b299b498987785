"""The canonical text and the hash chain are byte for byte what ``json.dumps`` gave before
they were made faster: a ledger written by either verifies with the other."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from downstream_node.domain.canonical import (
    canonical,
    canonical_json,
    chain_hash,
    chain_next,
    digest_text,
)

scalars = st.none() | st.booleans() | st.integers() | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def reference_canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@given(values)
def test_canonical_text_is_sorted_compact_json(value: Any) -> None:
    text, decoded = canonical(value)
    assert text == reference_canonical(value)
    assert decoded == json.loads(text)
    assert canonical_json(value) == text
    # What answers' request ids hash: the same text, so ids made before it existed still match.
    assert digest_text(value) == text


@given(st.integers(), st.text(), st.integers(), st.text(), st.integers(), st.text())
def test_chain_hash_is_sha256_over_the_previous_hash_and_the_row(
    position: int, stream_id: str, version: int, event_type: str, schema: int, text: str
) -> None:
    content = [position, stream_id, version, event_type, schema, text, "{}", None, 17]
    expected = hashlib.sha256(
        f"{'a' * 64}\n{json.dumps(content, separators=(',', ':'), ensure_ascii=False)}".encode()
    ).hexdigest()
    got = chain_hash(
        "a" * 64,
        position=position,
        stream_id=stream_id,
        version=version,
        event_type=event_type,
        schema_version=schema,
        payload=text,
        meta="{}",
        request_id=None,
        occurred_at=17,
    )
    assert got == expected == chain_next("a" * 64, tuple(content))


def test_refused_values() -> None:
    with pytest.raises(TypeError, match="float"):
        canonical({"a": [1, {"b": 1.5}]})
    with pytest.raises(TypeError, match="float"):
        canonical({"a": float("nan")})
    with pytest.raises(TypeError, match="keys must be strings"):
        canonical({1: "a"})
    with pytest.raises(TypeError, match="not JSON serializable"):
        canonical({"a": object()})
    circular: dict[str, Any] = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="circular"):
        canonical(circular)
