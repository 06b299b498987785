"""The public ledger routes as an auditor uses them: a checkpoint that verifies under the key
the ledger names, a feed whose recomputed tree has the checkpoint's root and holds no IP
address or token, proofs that tlog's verifiers accept, errors in the API's shape."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from http_support import ADDRESS, new_node, prove, stock

from downstream_node.domain.public import leaf_of_public
from downstream_node.http.app import create_app
from downstream_node.http.openapi import build_spec
from downstream_node.service import Node
from downstream_node.tlog import merkle, note
from downstream_node.tlog.checkpoint import Checkpoint

API = "/api/downstream"
LEDGER = "/api/ledger"


@pytest.fixture
async def farmed(db_url: str, tmp_path: Path, aiohttp_client: Any) -> tuple[TestClient, Node, str]:
    """A node where a farmer (at 127.0.0.1) took a token and answered a challenge."""
    node, _ = new_node(db_url, tmp_path)
    client = await aiohttp_client(create_app(node))
    await stock(node, files=2)
    async with client.get(f"{API}/new/{ADDRESS}") as response:
        created = await response.json()
    token = created["token"]
    async with client.get(f"{API}/chunk/{token}") as response:
        contract = await response.json()
    async with client.post(
        f"{API}/answer/{token}/{contract['file_hash']}",
        json={"proof": prove(created["heartbeat"], contract)},
    ) as response:
        assert response.status == 200
    return client, node, token


def verifier_of(node: Node) -> note.Verifier:
    [configured] = [e for e in node.store.read_stream("node") if e.event_type == "LogKeyConfigured"]
    return note.parse_verifier(configured.payload["vkey"])


async def feed(client: TestClient, limit: int) -> tuple[list[dict], list[str]]:
    events: list[dict] = []
    caching = []
    after = 0
    while True:
        async with client.get(f"{LEDGER}/events", params={"after": after, "limit": limit}) as r:
            assert r.status == 200
            page = await r.json()
            caching.append(r.headers["Cache-Control"])
        events += page["events"]
        if not page["events"]:
            return events, caching
        assert page["next"] == page["events"][-1]["position"]
        after = page["next"]


async def test_the_feed_rebuilds_the_checkpoints_tree_and_names_no_one(
    farmed: tuple[TestClient, Node, str],
) -> None:
    client, node, token = farmed
    async with client.get(f"{LEDGER}/checkpoint") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        signed = await response.text()
    checkpoint = Checkpoint.verify(signed, verifier_of(node))
    assert checkpoint.size == node.store.head().position

    events, caching = await feed(client, limit=3)
    assert [e["position"] for e in events] == list(range(1, checkpoint.size + 1))
    tree = merkle.MemoryTree()
    for event in events:
        leaf = leaf_of_public(event)
        assert base64.b64decode(event["leaf_hash"]) == leaf
        tree.append_hash(leaf)
    assert tree.root() == checkpoint.root_hash
    # Full pages below the tree's size never change; the last, partial one may grow.
    assert caching[0] == "public, max-age=31536000, immutable"
    assert caching[-1] == "no-cache"

    text = json.dumps(events)
    assert "127.0.0.1" not in text and token not in text
    created = next(e for e in events if e["event_type"] == "TokenCreated")
    assert created["payload"]["ip"] == created["stream_id"]
    assert created["stream_id"].startswith("ip-hmac-")

    for position in range(1, checkpoint.size + 1):
        async with client.get(
            f"{LEDGER}/proof/inclusion", params={"position": position, "size": checkpoint.size}
        ) as response:
            assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
            hashes = [base64.b64decode(h) for h in (await response.json())["hashes"]]
        merkle.verify_inclusion(
            tree.get(0, position - 1), position - 1, checkpoint.size, hashes, tree.root()
        )
    for first in range(checkpoint.size + 1):
        async with client.get(
            f"{LEDGER}/proof/consistency", params={"first": first, "second": checkpoint.size}
        ) as response:
            hashes = [base64.b64decode(h) for h in (await response.json())["hashes"]]
        merkle.verify_consistency(first, checkpoint.size, hashes, tree.root(first), tree.root())
        if hashes:
            hashes[0] = bytes([hashes[0][0] ^ 1]) + hashes[0][1:]
            with pytest.raises(merkle.ProofError):
                merkle.verify_consistency(
                    first, checkpoint.size, hashes, tree.root(first), tree.root()
                )


@pytest.mark.parametrize(
    ("path", "params", "code", "word"),
    [
        ("events", {"after": "-1"}, 400, "bad_request"),
        ("events", {"limit": "0"}, 400, "bad_request"),
        ("events", {"limit": "1001"}, 400, "bad_request"),
        ("events", {"after": "1e3"}, 400, "bad_request"),
        ("events", {"after": "²"}, 400, "bad_request"),
        ("proof/inclusion", {"position": "1"}, 400, "bad_request"),
        ("proof/inclusion", {"position": "x", "size": "2"}, 400, "bad_request"),
        # Below the OpenAPI document's minimum of 1: malformed, not merely outside the log.
        ("proof/inclusion", {"position": "0", "size": "2"}, 400, "bad_request"),
        ("proof/inclusion", {"position": "1", "size": "0"}, 400, "bad_request"),
        ("proof/inclusion", {"position": "3", "size": "2"}, 404, "not_in_log"),
        ("proof/inclusion", {"position": "1", "size": "99999"}, 404, "not_in_log"),
        ("proof/consistency", {"first": "3", "second": "2"}, 400, "bad_request"),
        ("proof/consistency", {"first": "1", "second": "99999999999"}, 404, "not_in_log"),
        ("proof/consistency", {"first": "1", "second": "9" * 30}, 400, "bad_request"),
    ],
)
async def test_bad_parameters_are_refused_in_the_apis_shape(
    farmed: tuple[TestClient, Node, str], path: str, params: dict, code: int, word: str
) -> None:
    client, _, _ = farmed
    async with client.get(f"{LEDGER}/{path}", params=params) as response:
        assert response.status == code
        body = await response.json()
    assert body["status"] == word and body["message"]


def test_the_routes_are_in_the_openapi_document() -> None:
    from downstream_node.config import Settings

    paths = build_spec(Settings())["paths"]
    for route in ("checkpoint", "events", "proof/inclusion", "proof/consistency"):
        assert f"{LEDGER}/{route}" in paths
    # The bounds the routes refuse outside of (the test above) are the ones declared.
    bounds = {
        (path.rsplit("/", 1)[-1], p["name"]): (p["schema"]["minimum"], p["schema"]["maximum"])
        for path, item in paths.items()
        if path.startswith(LEDGER)
        for p in item.get("parameters", [])
    }
    assert bounds[("events", "limit")] == (1, 1000)
    assert bounds[("events", "after")] == (0, 2**63 - 1)
    assert bounds[("inclusion", "position")] == bounds[("inclusion", "size")] == (1, 2**63 - 1)
