"""The v1 API in process (farmer 0.1.8's routes): a signed /new, bulk chunks within the limits,
bulk challenge and answer with a result per item, the public status routes, the bodies farmer
0.1.8 sends (plain JSON labelled gzip), and one contract seen through both APIs."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from http_support import ADDRESS, CHUNK, INTERVAL, head, new_node, prove
from mmdb_support import city, write_city_db

from downstream_node.domain.clock import FakeClock
from downstream_node.domain.errors import Refused
from downstream_node.domain.signatures import address_for, sign_message
from downstream_node.http.app import create_app
from downstream_node.http.schemas_v1 import (
    challenges_schema,
    chunks_schema,
    farmer_schema,
    farmers_schema,
    report_schema,
    token_schema,
)
from downstream_node.service import Node

API = "/api/downstream"
V1 = "/api/downstream/v1"
KEY = hashlib.sha256(b"v1 farmer key").digest()
SIGNED = address_for(KEY)
MESSAGE = "I own this address and farm with it"
UNKNOWN_HASH = "ab" * 32


def identity(key: bytes = KEY, compressed: bool = True, message: str = MESSAGE) -> dict:
    return {"message": message, "signature": sign_message(key, message, compressed)}


async def call(client: TestClient, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.request(method, path, **kwargs) as response:
        return response.status, await response.json()


async def v1_token(client: TestClient, address: str = SIGNED, key: bytes = KEY) -> dict:
    status, body = await call(client, "POST", f"{V1}/new/{address}", json=identity(key))
    assert status == 200, body
    return body


def answer_body(items: list[dict]) -> dict[str, Any]:
    """A bulk /answer as farmer 0.1.8 sends it: plain JSON labelled gzip."""
    return {
        "data": json.dumps({"proofs": items}),
        "headers": {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    }


@pytest.fixture
async def served(db_url: str, tmp_path: Path, aiohttp_client: Any) -> tuple[TestClient, Node]:
    node, clock = new_node(db_url, tmp_path)
    node.test_clock = clock  # type: ignore[attr-defined]
    client = await aiohttp_client(create_app(node))
    await node.whitelist([(SIGNED, "20000"), (ADDRESS, "20000")])
    return client, node


async def seeded(node: Node, count: int, size: int = CHUNK, prefix: str = "v1") -> list[str]:
    return [await node.add_seeded(size, seed=f"{prefix}-{size}-{i}") for i in range(count)]


def without_receipts(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A report's items without their receipts, after checking that exactly the recorded
    verdicts (``ok`` and ``Invalid proof``) carry one, a signed note."""
    for item in items:
        recorded = item.get("status") == "ok" or item.get("error") == "Invalid proof"
        assert ("receipt" in item) == recorded, item
        if recorded:
            assert "\nreceipt\n" in item["receipt"] and "\u2014 " in item["receipt"], item
    return [{k: v for k, v in item.items() if k != "receipt"} for item in items]


async def test_a_farmer_session_through_v1_is_one_contract_in_both_apis(
    served: tuple[TestClient, Node],
) -> None:
    client, node = served
    clock: FakeClock = node.test_clock  # type: ignore[attr-defined]
    await seeded(node, 2)
    async with client.get("/") as response:
        assert response.status == 200
    assert await call(client, "GET", f"{V1}/") == (200, {"msg": "ok"})

    created = await v1_token(client)
    assert token_schema.validate(created) == {}
    token = created["token"]
    assert created["type"] == "Merkle" and created["heartbeat"] == {
        "key": "",
        "check_fraction": 0.01,
    }
    assert await call(client, "GET", f"{V1}/heartbeat/{token}") == (200, created)

    status, got = await call(client, "GET", f"{V1}/chunk/{token}/{CHUNK}")
    assert status == 200 and chunks_schema.validate(got) == {}
    [contract] = got["chunks"]
    assert contract["size"] == CHUNK and contract["due"] == INTERVAL
    file_hash = contract["file_hash"]

    # The same contract through the 2014-10 API.
    status, due = await call(client, "GET", f"{API}/due/{token}")
    assert due["due_contracts"][0]["hash"] == file_hash
    assert due["due_contracts"][0]["challenge"] == contract["challenge"]

    before = head(node)
    proof = prove(created["heartbeat"], contract)
    status, report = await call(
        client,
        "POST",
        f"{V1}/answer/{token}",
        **answer_body([{"file_hash": file_hash, "proof": proof}]),
    )
    assert status == 200 and report_schema.validate(report) == {}
    assert without_receipts(report["report"]) == [{"file_hash": file_hash, "status": "ok"}]
    assert head(node) == before + 1
    status, due = await call(client, "GET", f"{API}/due/{token}")
    assert due["due_contracts"] == []  # answered, in the other API too

    # Before due: the same challenge, answered; after due: the next one.
    ask = {"json": {"hashes": [file_hash, UNKNOWN_HASH, 7]}}
    status, got = await call(client, "POST", f"{V1}/challenge/{token}", **ask)
    assert status == 200 and challenges_schema.validate(got) == {}
    first, unknown, odd = got["challenges"]
    assert first["answered"] is True and first["challenge"] == contract["challenge"]
    assert unknown == {"file_hash": UNKNOWN_HASH, "error": "contract not found"}
    assert odd == {"file_hash": 7, "error": "contract not found"}
    clock.advance(INTERVAL + 1)
    status, got = await call(
        client, "POST", f"{V1}/challenge/{token}", json={"hashes": [file_hash]}
    )
    [second] = got["challenges"]
    assert second["answered"] is False and second["challenge"] != contract["challenge"]
    assert second["due"] == INTERVAL - 1  # anchored to the old due, not to now
    status, report = await call(
        client,
        "POST",
        f"{V1}/answer/{token}",
        **answer_body(
            [
                {
                    "file_hash": file_hash,
                    "proof": prove(created["heartbeat"], contract, second["challenge"]),
                }
            ]
        ),
    )
    assert without_receipts(report["report"]) == [{"file_hash": file_hash, "status": "ok"}]

    status, farmers = await call(client, "GET", f"{V1}/status/list/")
    assert status == 200 and farmers_schema.validate(farmers) == {}
    [me] = farmers["farmers"]
    assert (me["address"], me["heartbeats"], me["contracts"], me["size"]) == (SIGNED, 2, 1, CHUNK)
    assert me["online"] is True and me["location"] is None and me["uptime"] == 100.0
    status, shown = await call(client, "GET", f"{V1}/status/show/{me['id']}")
    assert status == 200 and farmer_schema.validate(shown) == {} and shown == me

    await node.delete_token(token)
    assert await call(client, "GET", f"{V1}/heartbeat/{token}") == (
        404,
        {"status": "error", "message": "Nonexistent token."},
    )
    before = head(node)
    for method, path, items in (
        ("GET", f"/chunk/{token}", []),
        ("POST", f"/answer/{token}", []),
        ("POST", f"/answer/{token}", [{"file_hash": file_hash, "proof": proof}]),
        ("POST", f"/answer/{token}", [{"file_hash": file_hash, "proof": "corrupt"}]),
    ):
        status, body = await call(client, method, V1 + path, json={"proofs": items})
        assert (status, body["message"]) == (400, "Nonexistent token.")
    assert head(node) == before


async def test_signed_new_refuses_as_the_original_did(
    served: tuple[TestClient, Node],
) -> None:
    client, node = served
    before = head(node)
    url = f"{V1}/new/{SIGNED}"
    cases: list[tuple[str, dict[str, Any], str]] = [
        (
            "GET",
            {},
            "New token requests must include posted signature proving ownership of farming address",
        ),
        (
            "POST",
            {"data": "not json"},
            'Posted data must be JSON encoded object including "signature" and "message"',
        ),
        (
            "POST",
            {"json": {"message": MESSAGE}},
            'Posted data must be JSON encoded object including "signature" and "message"',
        ),
        (
            "POST",
            {"json": identity(message="x" * 1025)},
            "Please restrict your message to less than 1024 bytes.",
        ),
        (
            "POST",
            {"json": {"message": MESSAGE, "signature": identity()["signature"][:-4]}},
            "Your signature is the wrong length.  It should be 88bytes.",
        ),
        (
            "POST",
            {"json": {"message": MESSAGE + ".", "signature": identity()["signature"]}},
            "Signature invalid.",
        ),
        (
            "POST",  # signed by another key
            {"json": identity(key=hashlib.sha256(b"someone else").digest())},
            "Signature invalid.",
        ),
    ]
    signature = identity()["signature"]
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    cases.append(
        ("POST", {"json": {"message": MESSAGE, "signature": flipped}}, "Signature invalid.")
    )
    for method, kwargs, message in cases:
        status, body = await call(client, method, url, **kwargs)
        assert (status, body) == (400, {"status": "error", "message": message}), (kwargs, body)
    # The same identity posted for another (whitelisted) address, or for one that is no address.
    broken = SIGNED[:-1] + ("2" if SIGNED[-1] != "2" else "3")
    for address, message in (
        (ADDRESS, "Signature invalid."),
        (broken, "Invalid address given: address is not a valid SJCX address."),
    ):
        status, body = await call(client, "POST", f"{V1}/new/{address}", json=identity())
        assert (status, body) == (400, {"status": "error", "message": message}), address
    # A valid signature for an address not on the whitelist.
    stranger_key = hashlib.sha256(b"not whitelisted").digest()
    status, body = await call(
        client, "POST", f"{V1}/new/{address_for(stranger_key)}", json=identity(stranger_key)
    )
    assert (status, body["message"]) == (
        400,
        "Invalid address given: address must be in whitelist.",
    )
    assert head(node) == before  # nothing written for any refusal

    # Uncompressed keys sign too; a message of exactly 1024 characters is fine.
    uncompressed = address_for(KEY, compressed=False)
    await node.whitelist([(uncompressed, "10000")])
    status, body = await call(
        client, "POST", f"{V1}/new/{uncompressed}", json=identity(compressed=False)
    )
    assert status == 200 and len(body["token"]) == 32
    status, body = await call(client, "POST", url, json=identity(message="y" * 1024))
    assert status == 200
    # 5 tokens per IP address, whatever the API (one per API made above, then three more).
    for _ in range(3):
        await v1_token(client)
    status, body = await call(client, "POST", url, json=identity())
    assert (status, body["message"]) == (
        400,
        "IP Disallowed, only 5 tokens are permitted per IP address",
    )


async def test_chunks_are_the_largest_that_fit_at_most_ten(
    served: tuple[TestClient, Node],
) -> None:
    client, node = served
    await seeded(node, 12, CHUNK)
    await seeded(node, 2, 2 * CHUNK)
    await node.add_file(_real_file(node), redundancy=1)  # a v1 farmer cannot write it
    token = (await v1_token(client))["token"]
    status, got = await call(client, "GET", f"{V1}/chunk/{token}/{3 * CHUNK - 1}")
    assert [c["size"] for c in got["chunks"]] == [2 * CHUNK]  # the largest that fits
    status, got = await call(client, "GET", f"{V1}/chunk/{token}/{100 * CHUNK}")
    sizes = [c["size"] for c in got["chunks"]]
    assert sizes == [2 * CHUNK] + [CHUNK] * 9  # 11 would fit: 10 per request
    assert len({c["file_hash"] for c in got["chunks"]}) == 10
    status, got = await call(client, "GET", f"{V1}/chunk/{token}/0")
    assert (status, got) == (200, {"chunks": []})
    status, got = await call(client, "GET", f"{V1}/chunk/{token}/{100 * CHUNK}")
    assert [c["size"] for c in got["chunks"]] == [CHUNK] * 3  # what is left of the pool
    status, got = await call(client, "GET", f"{V1}/chunk/{token}")
    assert (status, got) == (200, {"chunks": []})  # nothing the farmer could write


async def test_path_numbers_are_ascii_and_leading_zeros_do_not_inflate_them(
    served: tuple[TestClient, Node],
) -> None:
    client, node = served
    await seeded(node, 3, CHUNK)
    token = (await v1_token(client))["token"]
    # 31 characters, value 1: one byte asked, so no chunk fits (it was read as 10**30).
    status, got = await call(client, "GET", f"{V1}/chunk/{token}/{'0' * 30}1")
    assert (status, got) == (200, {"chunks": []})
    status, got = await call(client, "GET", f"{V1}/chunk/{token}/{'0' * 30}{CHUNK}")
    assert status == 200 and [c["size"] for c in got["chunks"]] == [CHUNK]
    async with client.get(f"{V1}/chunk/{token}/%D9%A1") as response:  # an Arabic-Indic 1
        assert response.status == 404
        assert "status" in await response.json()
    _, listed = await call(client, "GET", f"{V1}/status/list/{'0' * 30}1")
    assert len(listed["farmers"]) == 1


async def test_bodies_with_non_finite_numbers_are_not_echoed_as_invalid_json(
    served: tuple[TestClient, Node],
) -> None:
    client, _ = served
    token = (await v1_token(client))["token"]
    for path, body in (
        (f"{V1}/challenge/{token}", '{"hashes": [NaN, 1e400, -Infinity]}'),
        (f"{V1}/answer/{token}", '{"proofs": [{"file_hash": 1e400, "proof": {}}]}'),
    ):
        async with client.post(path, data=body) as response:
            text = await response.text()
            # Whatever the verdict, the reply parses as RFC 8259 JSON.
            assert not re.search(r"\b(NaN|-?Infinity)\b", text), text
            json.loads(text)
            assert response.status == 400, text


async def test_a_challenge_past_its_wrong_answers_says_so_per_item(
    served: tuple[TestClient, Node],
) -> None:
    client, node = served
    await seeded(node, 1, CHUNK)
    created = await v1_token(client)
    token, beat = created["token"], created["heartbeat"]
    _, got = await call(client, "GET", f"{V1}/chunk/{token}/{CHUNK}")
    [mine] = got["chunks"]
    right = prove(beat, mine)
    errors = []
    for n in range(10):  # distinct wrong proofs: one bit of the leaf flipped, another each time
        blob = bytearray(base64.b64decode(right["leaf"]["blob"]))
        blob[n] ^= 1
        wrong = {**right, "leaf": {**right["leaf"], "blob": base64.b64encode(blob).decode()}}
        _, report = await call(
            client,
            "POST",
            f"{V1}/answer/{token}",
            **answer_body([{"file_hash": mine["file_hash"], "proof": wrong}]),
        )
        errors.append(report["report"][0]["error"])
    assert errors[:8] == ["Invalid proof"] * 8
    assert errors[8:] == ["Too many wrong answers to this challenge; answer the next one."] * 2
    _, report = await call(
        client,
        "POST",
        f"{V1}/answer/{token}",
        **answer_body([{"file_hash": mine["file_hash"], "proof": right}]),
    )
    assert report["report"][0]["status"] == "ok"  # a right proof still passes


def _real_file(node: Node) -> Path:
    path = Path(str(node.settings.secret_path())).with_name("real-chunk.bin")
    path.write_bytes(b"real bytes" * 1000)
    return path


async def test_an_address_holds_its_limit_across_its_tokens(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    node, _ = new_node(db_url, tmp_path, max_bytes_per_address=5 * CHUNK)
    client = await aiohttp_client(create_app(node))
    await node.whitelist([(SIGNED, "20000")])
    await seeded(node, 8)
    first = (await v1_token(client))["token"]
    second = (await v1_token(client))["token"]
    _, got = await call(client, "GET", f"{V1}/chunk/{first}/{3 * CHUNK}")
    assert len(got["chunks"]) == 3
    _, got = await call(client, "GET", f"{V1}/chunk/{second}/{10 * CHUNK}")
    assert len(got["chunks"]) == 2  # 5 in all for the address
    _, got = await call(client, "GET", f"{V1}/chunk/{first}/{10 * CHUNK}")
    assert got == {"chunks": []}


async def test_two_hundred_proofs_in_one_answer_each_get_their_own_result(
    served: tuple[TestClient, Node],
) -> None:
    client, node = served
    small = 4096
    await seeded(node, 60, small)
    created = await v1_token(client)
    token, beat = created["token"], created["heartbeat"]
    contracts: list[dict] = []
    while len(contracts) < 50:
        _, got = await call(client, "GET", f"{V1}/chunk/{token}/{10 * small}")
        contracts += got["chunks"]
    other = (await v1_token(client))["token"]
    _, theirs = await call(client, "GET", f"{V1}/chunk/{other}/{small}")
    [their_contract] = theirs["chunks"]

    good, wrong = contracts[:40], contracts[40:50]
    items: list[dict] = []
    expected: list[dict] = []
    for c in good:
        items.append({"file_hash": c["file_hash"], "proof": prove(beat, c)})
        expected.append({"file_hash": c["file_hash"], "status": "ok"})
    for c in wrong:  # a proof for another contract's challenge
        items.append({"file_hash": c["file_hash"], "proof": prove(beat, good[0])})
        expected.append({"file_hash": c["file_hash"], "error": "Invalid proof"})
    for c in good[:20]:  # sent twice in the same batch: the same verdict, recorded once
        items.append({"file_hash": c["file_hash"], "proof": prove(beat, c)})
        expected.append({"file_hash": c["file_hash"], "status": "ok"})
    items.append({"file_hash": their_contract["file_hash"], "proof": prove(beat, their_contract)})
    expected.append({"file_hash": their_contract["file_hash"], "error": "contract not found"})
    for i in range(100):  # unknown contracts, some not even hashes
        fh: Any = f"{i:064x}" if i % 4 else (i if i % 8 else f"not a hash {i}")
        items.append({"file_hash": fh, "proof": prove(beat, good[0])})
        expected.append({"file_hash": fh, "error": "contract not found"})
    for c in contracts[50:] or good[:1]:
        items.append({"file_hash": c["file_hash"], "proof": "not a proof"})
        expected.append({"file_hash": c["file_hash"], "error": "Proof corrupted"})
    while len(items) < 200:
        items.append({"file_hash": None})
        expected.append({"file_hash": None, "error": "contract not found"})
    assert len(items) == 200

    before = head(node)
    status, report = await call(client, "POST", f"{V1}/answer/{token}", **answer_body(items))
    assert status == 200
    assert without_receipts(report["report"]) == expected
    assert head(node) == before + 40 + 10  # 40 passes, 10 fails, nothing else
    _, due = await call(client, "GET", f"{API}/due/{token}")
    still_open = {d["hash"] for d in due["due_contracts"]}
    assert still_open == {c["file_hash"] for c in contracts[40:]}
    _, due = await call(client, "GET", f"{API}/due/{other}")
    assert [d["hash"] for d in due["due_contracts"]] == [their_contract["file_hash"]]
    # Sent again as a retry: the same verdicts, nothing written.
    status, again = await call(client, "POST", f"{V1}/answer/{token}", **answer_body(items[:50]))
    assert again["report"] == report["report"][:50]  # the same receipts too
    assert head(node) == before + 50


async def test_answer_bodies_plain_gzipped_or_neither(
    served: tuple[TestClient, Node],
) -> None:
    client, node = served
    await seeded(node, 1)
    created = await v1_token(client)
    token = created["token"]
    _, got = await call(client, "GET", f"{V1}/chunk/{token}/{CHUNK}")
    [contract] = got["chunks"]
    raw = json.dumps(
        {
            "proofs": [
                {"file_hash": contract["file_hash"], "proof": prove(created["heartbeat"], contract)}
            ]
        }
    ).encode()
    before = head(node)
    for data in (b"\x1f\x8b not json", gzip.compress(b"not json either"), b""):
        status, body = await call(
            client, "POST", f"{V1}/answer/{token}", data=data, headers={"Content-Encoding": "gzip"}
        )
        assert status == 400 and body["status"] == "error", body
    assert head(node) == before
    status, body = await call(
        client,
        "POST",
        f"{V1}/answer/{token}",
        data=gzip.compress(raw),
        headers={"Content-Encoding": "gzip"},
    )
    assert body["report"][0]["status"] == "ok"
    # The 2014-10 routes keep their stricter reading: a false label is a 400.
    status, body = await call(
        client,
        "POST",
        f"{API}/answer/{token}/{contract['file_hash']}",
        data=b'{"proof": {}}',
        headers={"Content-Encoding": "gzip"},
    )
    assert (status, body["status"]) == (400, "bad_request")


async def test_a_bulk_answer_may_be_larger_than_other_bodies(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    node, _ = new_node(db_url, tmp_path, max_body=4096, max_bulk_body=64 * 1024)
    client = await aiohttp_client(create_app(node))
    await node.whitelist([(SIGNED, "20000")])
    token = (await v1_token(client))["token"]
    padding = [{"file_hash": f"{i:064x}", "proof": {}} for i in range(300)]
    status, body = await call(client, "POST", f"{V1}/answer/{token}", json={"proofs": padding})
    assert status == 200 and len(body["report"]) == 300
    status, body = await call(client, "POST", f"{V1}/answer/{token}", json={"proofs": padding * 4})
    assert status == 413
    status, body = await call(
        client,
        "POST",
        f"{V1}/challenge/{token}",
        json={"hashes": [f"{i:064x}" for i in range(100)]},
    )
    assert status == 413  # the bulk limit is /answer's alone


async def test_status_lists_sort_page_and_filter(served: tuple[TestClient, Node]) -> None:
    client, node = served
    clock: FakeClock = node.test_clock  # type: ignore[attr-defined]
    await seeded(node, 6)
    tokens = [(await v1_token(client))["token"] for _ in range(3)]
    held = {}
    for token, count in zip(tokens, (1, 3, 2), strict=True):
        _, got = await call(client, "GET", f"{V1}/chunk/{token}/{count * CHUNK}")
        held[token] = got["chunks"]
    # The second token answers one of its contracts; the third lets all of its lapse.
    beat = (await call(client, "GET", f"{V1}/heartbeat/{tokens[1]}"))[1]["heartbeat"]
    c = held[tokens[1]][0]
    await call(
        client,
        "POST",
        f"{V1}/answer/{tokens[1]}",
        **answer_body([{"file_hash": c["file_hash"], "proof": prove(beat, c)}]),
    )
    clock.advance(INTERVAL + 1)
    for token in tokens[:2]:  # these two ask for their next challenges: still online
        await call(client, "GET", f"{V1}/challenge/{token}")

    _, listed = await call(client, "GET", f"{V1}/status/list/by/d/contracts")
    rows = listed["farmers"]
    assert [r["contracts"] for r in rows] == [1, 0, 0]  # only the answered one went on
    ids = {r["id"]: r for r in rows}
    assert len(ids) == 3 and all(len(i) == 20 for i in ids)
    _, by_id = await call(client, "GET", f"{V1}/status/list/")
    assert [r["id"] for r in by_id["farmers"]] == sorted(ids)
    _, page = await call(client, "GET", f"{V1}/status/list/by/id/2/1")
    assert [r["id"] for r in page["farmers"]] == sorted(ids)[2:]
    _, page = await call(client, "GET", f"{V1}/status/list/1/0")
    assert [r["id"] for r in page["farmers"]] == sorted(ids)[:1]
    _, online = await call(client, "GET", f"{V1}/status/list/online/")
    assert [r["heartbeats"] for r in online["farmers"]] == [1]
    _, online = await call(client, "GET", f"{V1}/status/list/online/by/d/heartbeats/1/0")
    assert len(online["farmers"]) == 1  # filtered before paging: never a short page
    _, by_heartbeats = await call(client, "GET", f"{V1}/status/list/by/heartbeats")
    assert [r["heartbeats"] for r in by_heartbeats["farmers"]] == [0, 0, 1]
    assert by_heartbeats["farmers"][-1]["online"] is True
    assert await call(client, "GET", f"{V1}/status/list/by/colour") == (
        400,
        {"status": "error", "message": "Invalid sort."},
    )
    for unknown in ("0" * 20, "zz", "a" * 64):
        assert await call(client, "GET", f"{V1}/status/show/{unknown}") == (
            404,
            {"status": "error", "message": "Nonexistent farmer id."},
        )


async def test_the_public_status_routes_are_limited_per_ip(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    node, _ = new_node(db_url, tmp_path, requests_per_token_per_minute=3)
    client = await aiohttp_client(create_app(node))
    for path in ("/status/list/", "/status/list/by/size", "/status/show/" + "0" * 20):
        status, _ = await call(client, "GET", V1 + path)
        assert status in (200, 404)
    async with client.get(f"{V1}/status/list/online/") as response:
        assert response.status == 429 and int(response.headers["Retry-After"]) > 0
        body = await response.json()
    assert body["status"] == "error" and "per IP address" in body["message"]


async def test_farmers_are_located_from_the_operators_geoip_database(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    database = write_city_db(
        tmp_path / "city.mmdb",
        {"127.0.0.1/32": city("Testland", "North", "Loopville", "12345", 51.5, -0.125)},
    )
    node, _ = new_node(db_url, tmp_path, geoip=database)
    client = await aiohttp_client(create_app(node))
    await node.whitelist([(SIGNED, "20000")])
    await v1_token(client)  # from 127.0.0.1
    await node.create_token(SIGNED)  # the operator's: no IP
    _, listed = await call(client, "GET", f"{V1}/status/list/")
    located = [f["location"] for f in listed["farmers"]]
    assert sorted(located, key=lambda x: x is None) == [
        {
            "country": "Testland",
            "state": "North",
            "city": "Loopville",
            "zip": "12345",
            "lat": 51.5,
            "lon": -0.125,
        },
        None,
    ]
    assert farmers_schema.validate(listed) == {}
    (tmp_path / "broken.mmdb").write_bytes(b"not a database")
    with pytest.raises(Refused) as refused:
        new_node(db_url, tmp_path, geoip=tmp_path / "broken.mmdb")
    assert refused.value.status == "bad_geoip"
