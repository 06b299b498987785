"""Every error of the API: its status word, HTTP code and JSON body; and that refused or
malformed requests append nothing to the ledger."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import sys
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from aiohttp.test_utils import TestClient
from http_support import (
    ADDRESS,
    INTERVAL,
    POOR,
    RECEIPT,
    STRANGER,
    head,
    new_node,
    prove,
    real_server,
    stock,
)
from structlog.testing import capture_logs

from downstream_node import logs as library_logs
from downstream_node.domain.clock import FakeClock
from downstream_node.domain.errors import Refused
from downstream_node.domain.tokens import TokenPolicy
from downstream_node.farmer import corrupt_proof
from downstream_node.http.app import create_app
from downstream_node.http.logs import configure_logging
from downstream_node.http.schemas import STATUS_WORDS
from downstream_node.service import Node

API = "/api/downstream"
UNKNOWN_TOKEN = "0" * 32
UNKNOWN_HASH = "ab" * 32


@dataclass
class Api:
    client: TestClient
    node: Node
    clock: FakeClock
    files: list[str]

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.client.get(path, **kwargs) as response:
            return response.status, await response.json()

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.client.post(path, **kwargs) as response:
            return response.status, await response.json()

    async def token(self) -> tuple[str, dict]:
        status, body = await self.get(f"{API}/new/{ADDRESS}")
        assert status == 200, body
        return body["token"], body["heartbeat"]


async def make_api(db_url: str, tmp_path: Path, aiohttp_client: Any, **overrides: Any) -> Api:
    node, clock = new_node(db_url, tmp_path, **overrides)
    client = await aiohttp_client(create_app(node))
    files = await stock(node)
    return Api(client, node, clock, files)


@pytest.fixture
async def api(db_url: str, tmp_path: Path, aiohttp_client: Any) -> Api:
    return await make_api(db_url, tmp_path, aiohttp_client)


def assert_error(status: int, body: Any, word: str, code: int) -> None:
    assert (status, body.get("status")) == (code, word), body
    assert set(body) == {"status", "message"}
    assert isinstance(body["message"], str) and body["message"]
    assert STATUS_WORDS[word][0] == code or word == "error"


# -- the seed README's words ----------------------------------------------------------------------


async def test_invalid_address(api: Api) -> None:
    before = head(api.node)
    bad = {
        "short": "1abc",
        "too long": "1" * 36,
        "not base58": "0OIl" + ADDRESS[4:],
        "bad checksum": ADDRESS[:-1] + ("2" if ADDRESS[-1] != "2" else "3"),
        "not whitelisted": STRANGER,
        "below the minimum balance": POOR,
    }
    for why, address in bad.items():
        status, body = await api.get(f"{API}/new/{address}")
        assert_error(status, body, "invalid_address", 400)
        assert why and body["message"]
    assert head(api.node) == before


async def test_no_token(api: Api) -> None:
    await api.token()
    before = head(api.node)
    for token in (UNKNOWN_TOKEN, "abc", "g" * 32, "0" * 33, "%20" * 11):
        for path in (f"/chunk/{token}", f"/due/{token}", f"/remove/{token}/{api.files[0]}"):
            status, body = await api.get(API + path)
            assert_error(status, body, "no_token", 404)
        status, body = await api.post(
            f"{API}/answer/{token}/{api.files[0]}", json={"proof": {"leaf": {}}}
        )
        assert_error(status, body, "no_token", 404)
    assert head(api.node) == before


async def test_no_hash(api: Api) -> None:
    token, heartbeat = await api.token()
    status, contract = await api.get(f"{API}/chunk/{token}")
    assert status == 200
    proof = prove(heartbeat, contract)
    before = head(api.node)
    not_held = next(f for f in api.files if f != contract["file_hash"])
    for file_hash in (UNKNOWN_HASH, not_held, "ab" * 31, "zz" * 32, "ab" * 33):
        status, body = await api.get(f"{API}/remove/{token}/{file_hash}")
        assert_error(status, body, "no_hash", 404)
        status, body = await api.post(f"{API}/answer/{token}/{file_hash}", json={"proof": proof})
        assert_error(status, body, "no_hash", 404)
    assert head(api.node) == before


async def test_no_chunks(api: Api) -> None:
    token, _ = await api.token()
    other, _ = await api.token()
    for _ in api.files:  # redundancy 1: this token takes every replica
        status, _body = await api.get(f"{API}/chunk/{token}")
        assert status == 200
    before = head(api.node)
    status, body = await api.get(f"{API}/chunk/{token}")
    assert_error(status, body, "no_chunks", 404)
    status, body = await api.get(f"{API}/chunk/{other}")
    assert_error(status, body, "no_chunks", 404)
    assert head(api.node) == before


async def test_error_is_a_logged_500_for_a_real_bug(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, _ = await api.token()

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(api.node, "due", broken)
    with capture_logs() as logs:
        status, body = await api.get(f"{API}/due/{token}", headers={"X-Request-Id": "bug-1"})
    assert_error(status, body, "error", 500)
    assert "bug-1" in body["message"] and "ZeroDivision" not in body["message"]
    crash = [e for e in logs if e["event"] == "unhandled_error"]
    assert crash and crash[0]["route"] == "/api/downstream/due/{token}"
    assert crash[0]["log_level"] == "error" and crash[0].get("exc_info")


async def test_error_is_503_when_the_database_fails(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, _ = await api.token()

    async def down(*args: Any, **kwargs: Any) -> None:
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("gone away"))

    monkeypatch.setattr(api.node, "chunk", down)
    with capture_logs():
        async with api.client.get(f"{API}/chunk/{token}") as response:
            body = await response.json()
            assert response.headers["Retry-After"]
    assert_error(response.status, body, "error", 503)


# -- our words ------------------------------------------------------------------------------------


async def test_answer_words_already_answered_and_expired(api: Api) -> None:
    token, heartbeat = await api.token()
    _, contract = await api.get(f"{API}/chunk/{token}")
    url = f"{API}/answer/{token}/{contract['file_hash']}"
    proof = prove(heartbeat, contract)
    assert await api.post(url, json={"proof": proof}) == (
        200,
        {"status": "pass", "receipt": RECEIPT},
    )
    before = head(api.node)
    # the same answer again (a retry) gets its recorded verdict; another one is refused
    assert await api.post(url, json={"proof": proof}) == (
        200,
        {"status": "pass", "receipt": RECEIPT},
    )
    status, body = await api.post(url, json={"proof": corrupt_proof(proof)})
    assert_error(status, body, "already_answered", 409)
    assert head(api.node) == before  # nothing recorded for either

    _, other = await api.get(f"{API}/chunk/{token}")
    api.clock.advance(INTERVAL)  # the second contract's first challenge lapses unanswered
    late = f"{API}/answer/{token}/{other['file_hash']}"
    status, body = await api.post(late, json={"proof": prove(heartbeat, other)})
    assert_error(status, body, "expired", 410)
    # the late answer is recorded for auditors (rejected, contract expired), then it is gone
    assert head(api.node) > before
    status, body = await api.post(late, json={"proof": prove(heartbeat, other)})
    assert_error(status, body, "no_hash", 404)


async def test_a_challenge_records_at_most_eight_wrong_answers(api: Api) -> None:
    """300 distinct wrong proofs for one challenge add 8 events; the others are refused
    ``too_many_failures`` (429) unrecorded; a recorded one sent again keeps its verdict, the
    right proof still passes, and the next challenge may fail 8 times afresh."""
    token, heartbeat = await api.token()
    _, contract = await api.get(f"{API}/chunk/{token}")
    url = f"{API}/answer/{token}/{contract['file_hash']}"
    proof = prove(heartbeat, contract)

    def wrong(n: int) -> dict:
        blob = bytearray(base64.b64decode(proof["leaf"]["blob"]))
        blob[n % len(blob)] ^= 1 + n // len(blob)  # distinct for n < 255 x the blob's length
        return {**proof, "leaf": {**proof["leaf"], "blob": base64.b64encode(blob).decode()}}

    before = head(api.node)
    replies = [await api.post(url, json={"proof": wrong(n)}) for n in range(300)]
    assert [(s, b["status"], "receipt" in b) for s, b in replies[:8]] == [(200, "fail", True)] * 8
    for status, body in replies[8:]:
        assert_error(status, body, "too_many_failures", 429)
    assert head(api.node) == before + 8
    again = await api.post(url, json={"proof": wrong(3)})
    assert again == replies[3]  # its recorded verdict, and the same receipt
    status, body = await api.post(url, json={"proof": proof})
    assert (status, body["status"]) == (200, "pass")
    assert head(api.node) == before + 9

    api.clock.advance(INTERVAL)
    status, due = await api.get(f"{API}/due/{token}")  # issues the next challenge
    challenge = next(c for c in due["due_contracts"] if c["hash"] == contract["file_hash"])
    proof = prove(heartbeat, contract, challenge["challenge"])
    replies = [await api.post(url, json={"proof": wrong(n)}) for n in range(9)]
    assert [s for s, _ in replies] == [200] * 8 + [429]


async def test_bad_proof_format(api: Api) -> None:
    token, heartbeat = await api.token()
    _, contract = await api.get(f"{API}/chunk/{token}")
    url = f"{API}/answer/{token}/{contract['file_hash']}"
    good = prove(heartbeat, contract)
    before = head(api.node)
    shapes = [
        "a string",
        [1, 2],
        7,
        None,
        {},
        {"leaf": {}, "branch": {}},
        {"leaf": {"index": 0, "blob": "not base64!"}, "branch": good["branch"]},
        {"leaf": {"index": -1, "blob": good["leaf"]["blob"]}, "branch": good["branch"]},
        {"leaf": good["leaf"], "branch": {"rows": "nope"}},
        {"leaf": good["leaf"], "branch": {"rows": [["a"]]}},
    ]
    for proof in shapes:
        status, body = await api.post(url, json={"proof": proof})
        assert_error(status, body, "bad_proof_format", 400)
    assert head(api.node) == before
    assert await api.post(url, json={"proof": good}) == (
        200,
        {"status": "pass", "receipt": RECEIPT},
    )


async def test_bad_request_bodies(api: Api) -> None:
    token, _ = await api.token()
    _, contract = await api.get(f"{API}/chunk/{token}")
    url = f"{API}/answer/{token}/{contract['file_hash']}"
    before = head(api.node)
    bodies = [
        b"",
        b"   ",
        b"not json",
        b'{"proof": ',
        b"[]",
        b'"proof"',
        b"null",
        b"42",
        b'{"proof": NaN}',
        b'{"prof": {}}',
        b"\xff\xfe\x00garbage",
        b"[" * 100_000,
    ]
    for raw in bodies:
        status, body = await api.post(url, data=raw, headers={"Content-Type": "application/json"})
        assert_error(status, body, "bad_request", 400)
    assert head(api.node) == before


async def test_a_body_its_content_encoding_does_not_describe_is_400(api: Api) -> None:
    token, heartbeat = await api.token()
    _, contract = await api.get(f"{API}/chunk/{token}")
    url = f"{API}/answer/{token}/{contract['file_hash']}"
    before = head(api.node)
    plain = b'{"proof": {}}'
    for encoding, raw in (
        ("gzip", b"not gzip at all"),
        ("deflate", b"\x00\x01garbage"),
        # Codings it cannot decode, alone or in a list (RFC 9110), are refused, not read as
        # if plain.
        ("br", plain),
        ("compress", plain),
        ("gzip, br", plain),
        ("br, gzip", gzip.compress(plain)),
    ):
        with capture_logs() as logs:
            status, body = await api.post(url, data=raw, headers={"Content-Encoding": encoding})
        assert_error(status, body, "bad_request", 400)
        assert "Content-Encoding" in body["message"]
        assert not [e for e in logs if e["log_level"] == "error"], logs
    assert head(api.node) == before
    # a body encoded as it says is read as any other, a list of codings undone in turn
    proof = json.dumps({"proof": prove(heartbeat, contract)}).encode()
    twice = gzip.compress(zlib.compress(proof))
    status, body = await api.post(
        url, data=twice, headers={"Content-Encoding": "deflate, identity, X-Gzip"}
    )
    assert (status, body) == (200, {"status": "pass", "receipt": RECEIPT})
    assert head(api.node) == before + 1


async def test_a_client_gone_before_its_body_is_499_and_no_error(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A farmer that hangs up halfway through its body, or before its reply is ready, is
    logged as 499 (as nginx would), not as the node's 500 with a traceback nor as a 200
    nobody read; an undecodable body is the route's 400 (the node decodes bodies itself),
    with no warning, body or traceback logged."""
    node, _ = new_node(db_url, tmp_path)
    due = node.due
    hung_up = asyncio.Event()

    async def slow_due(*args: Any, **kwargs: Any) -> Any:
        await hung_up.wait()
        await asyncio.sleep(0.1)  # for the server to see the connection close
        return await due(*args, **kwargs)

    monkeypatch.setattr(node, "due", slow_due)
    out = io.StringIO()
    configure_logging("json", stream=out)
    try:
        async with real_server(create_app(node)) as server:
            await stock(node)
            token, _ = await node.create_token(ADDRESS)
            before = head(node)
            host, port = server.url.removeprefix("http://").split(":")

            async def send(raw: bytes, *, hang_up: bool) -> bytes:
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(raw)
                await writer.drain()
                reply = b"" if hang_up else await asyncio.wait_for(reader.read(65536), 5)
                writer.close()
                return reply

            start = f"POST {API}/answer/{token}/{UNKNOWN_HASH} HTTP/1.1\r\nHost: node\r\n"
            await send(f'{start}Content-Length: 100\r\n\r\n{{"proof"'.encode(), hang_up=True)
            reply = await send(
                f"{start}Content-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc".encode(),
                hang_up=False,
            )
            assert reply.startswith(b"HTTP/1.1 400 "), reply
            await send(
                f"GET {API}/due/{token} HTTP/1.1\r\nHost: node\r\n\r\n".encode(), hang_up=True
            )
            hung_up.set()
            for _ in range(100):  # the server notices the hang-ups in its own time
                if out.getvalue().count('"status": 499') == 2:
                    break
                await asyncio.sleep(0.02)
            assert head(node) == before
    finally:
        configure_logging("console", stream=sys.stderr)
        library_logs.configure()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    access = [line["status"] for line in lines if line["event"] == "request"]
    assert sorted(access) == [400, 499, 499], lines
    assert [line["level"] for line in lines if line["level"] not in ("info", "debug")] == [], lines
    assert not any("exception" in line or "Traceback" in str(line) for line in lines), lines
    assert token not in out.getvalue()


async def test_too_large(api: Api) -> None:
    token, heartbeat = await api.token()
    _, contract = await api.get(f"{API}/chunk/{token}")
    url = f"{API}/answer/{token}/{contract['file_hash']}"
    before = head(api.node)
    huge = json.dumps({"proof": {"pad": "x" * api.node.settings.max_body}}).encode()
    status, body = await api.post(url, data=huge)  # with a Content-Length
    assert_error(status, body, "too_large", 413)

    async def chunked() -> Any:  # no Content-Length: the limit applies while reading
        for _ in range(api.node.settings.max_body // 65536 + 2):
            yield b" " * 65536

    status, body = await api.post(url, data=chunked())
    assert_error(status, body, "too_large", 413)
    # a body just under the limit is read and judged on its content
    padded = json.dumps({"proof": prove(heartbeat, contract)}).encode()
    padded += b" " * (api.node.settings.max_body - len(padded))
    assert await api.post(url, data=padded) == (200, {"status": "pass", "receipt": RECEIPT})
    assert head(api.node) == before + 1


@pytest.mark.parametrize("heartbeat", ["Merkle", "Swizzle"])
async def test_a_real_file_gone_or_shrunk_is_skipped_not_a_500(
    db_url: str, tmp_path: Path, aiohttp_client: Any, heartbeat: str
) -> None:
    """A monitored real file that was deleted or truncated on disk cannot be encoded: /chunk
    offers the other files, then no_chunks, and logs which file the operator must mend. (Its
    size a whole number of Swizzle chunks: a shrunk one must not be encoded as other bytes.)"""
    api = await make_api(db_url, tmp_path, aiohttp_client, heartbeat=heartbeat)
    paths = [tmp_path / "gone.bin", tmp_path / "shrunk.bin"]
    broken = []
    for i, path in enumerate(paths):
        path.write_bytes(bytes([i + 1]) * 1280 * 50)
        broken.append(await api.node.add_file(path))
    paths[0].unlink()
    paths[1].write_bytes(b"short")
    token, _ = await api.token()
    before = head(api.node)
    got = []
    with capture_logs() as logs:
        for _ in range(len(api.files) + 1):
            status, body = await asyncio.wait_for(api.get(f"{API}/chunk/{token}"), 60)
            if status != 200:
                break
            got.append(body["file_hash"])
    assert_error(status, body, "no_chunks", 404)
    assert sorted(got) == sorted(api.files)
    assert sorted({e["file_hash"] for e in logs if e["event"] == "file_unreadable"}) == sorted(
        broken
    )
    assert head(api.node) == before + 2 * len(api.files)  # ChunkEncoded, ContractAssigned


async def test_too_many_tokens(db_url: str, tmp_path: Path, aiohttp_client: Any) -> None:
    api = await make_api(
        db_url, tmp_path, aiohttp_client, token_policy=replace(TokenPolicy(), max_tokens_per_ip=2)
    )
    await api.token()
    token, _ = await api.token()
    before = head(api.node)
    status, body = await api.get(f"{API}/new/{ADDRESS}")
    assert_error(status, body, "too_many_tokens", 429)
    assert head(api.node) == before
    await api.node.delete_token(token)  # a deleted token frees its slot
    await api.token()


async def test_too_many_requests(db_url: str, tmp_path: Path, aiohttp_client: Any) -> None:
    api = await make_api(db_url, tmp_path, aiohttp_client, requests_per_token_per_minute=3)
    token, _ = await api.token()
    for _ in range(3):
        assert (await api.get(f"{API}/due/{token}"))[0] == 200
    async with api.client.get(f"{API}/due/{token}") as response:
        body = await response.json()
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert_error(response.status, body, "too_many_requests", 429)
    other, _ = await api.token()  # counted per token
    assert (await api.get(f"{API}/due/{other}"))[0] == 200
    api.clock.advance(60)
    assert (await api.get(f"{API}/due/{token}"))[0] == 200


async def test_busy_is_503_with_retry_after(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    token, _ = await api.token()

    async def contended(*args: Any, **kwargs: Any) -> None:
        raise Refused("busy", "too much contention for chunks; try again")

    monkeypatch.setattr(api.node, "chunk", contended)
    async with api.client.get(f"{API}/chunk/{token}") as response:
        body = await response.json()
        assert response.headers["Retry-After"] == "1"
    assert_error(response.status, body, "busy", 503)


async def test_unknown_routes_and_methods_are_json(api: Api) -> None:
    token, _ = await api.token()
    before = head(api.node)
    # ("/" answers 200: farmer 0.1.8 checks the server root first.)
    for path in ("/api", "/api/downstream", "/api/downstream/nope", f"{API}/chunk/{token}/extra"):
        status, body = await api.get(path)
        assert_error(status, body, "not_found", 404)
    async with api.client.get(f"{API}/answer/{token}/{api.files[0]}") as response:
        body = await response.json()
        assert "POST" in response.headers["Allow"]
    assert_error(response.status, body, "method_not_allowed", 405)
    for path in (f"{API}/chunk/{token}", f"{API}/new/{ADDRESS}", f"{API}/due/{token}"):
        status, body = await api.post(path, json={})
        assert_error(status, body, "method_not_allowed", 405)
        async with api.client.head(path) as response:  # HEAD must not change state
            assert response.status == 405
    assert head(api.node) == before


async def test_not_in_log_for_a_proof_beyond_the_tree(api: Api) -> None:
    size = head(api.node)
    status, body = await api.get(f"/api/ledger/proof/inclusion?position=1&size={size + 1}")
    assert_error(status, body, "not_in_log", 404)
    status, body = await api.get(f"/api/ledger/proof/consistency?first=1&second={size + 1}")
    assert_error(status, body, "not_in_log", 404)


async def test_every_documented_word_is_produced_somewhere() -> None:
    """The words this module asserts on cover the whole table (a guard for new words)."""
    source = Path(__file__).read_text()
    missing = [w for w in STATUS_WORDS if f'"{w}"' not in source]
    assert not missing
