"""Hostile input and abuse: oversized bodies refused before they are read, path parameters
checked, nothing reflected unescaped, tokens per IP and requests per token (and per IP on
/new) rate-limited with Retry-After, tokens compared in constant time and never written
whole to a log, an event row or an audit report."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from http_support import ADDRESS, RECEIPT, head, new_node, prove, real_server, stock
from reliability_support import check_ledger, event_rows_text, kill, start_serve
from structlog.testing import capture_logs

from downstream_node import logs as library_logs
from downstream_node.domain import tokens as tk
from downstream_node.domain.tokens import TokenPolicy
from downstream_node.farmer import Farmer, FarmerError
from downstream_node.http import routes
from downstream_node.http.app import create_app, redacted_path
from downstream_node.http.logs import configure_logging
from downstream_node.http.proxies import client_address, parse_trusted
from downstream_node.service import Context, Node

API = "/api/downstream"
HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "</textarea><svg/onload=x>",
]
MARKERS = (b"<script", b"<img", b"<svg", b"onerror=", b"onload=")


async def call(client: TestClient, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.request(method, path, **kwargs) as response:
        return response.status, await response.json()


@pytest.fixture
async def api(db_url: str, tmp_path: Path, aiohttp_client: Any) -> tuple[TestClient, Node]:
    node, _ = new_node(db_url, tmp_path)
    client = await aiohttp_client(create_app(node))
    await stock(node)
    return client, node


# -- 413 before parsing ---------------------------------------------------------------------------


async def test_an_oversized_body_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A huge Content-Length with a body that never comes is refused at once (413), and the
    handler never runs: nothing waits for, buffers or parses the body."""
    node, _ = new_node(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path)
    touched: list[str] = []

    async def never(*args: Any, **kwargs: Any) -> Any:
        touched.append("the handler read the body")
        raise AssertionError("the body was read")

    monkeypatch.setattr(routes, "read_json_object", never)
    async with real_server(create_app(node)) as server:
        await stock(node)
        token, _ = await node.create_token(ADDRESS)
        before = head(node)
        host, port = server.url.removeprefix("http://").split(":")
        for method, path in (
            ("POST", f"{API}/answer/{token}/{'ab' * 32}"),
            ("GET", f"{API}/new/{ADDRESS}"),
            ("POST", "/nowhere"),
        ):
            reader, writer = await asyncio.open_connection(host, int(port))
            started = time.monotonic()
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {10**12}\r\n\r\n{{".encode()
            )
            await writer.drain()
            status, body = await _read_response(reader)
            writer.close()
            await writer.wait_closed()
            assert (status, body["status"]) == (413, "too_large"), path
            assert time.monotonic() - started < 3  # at once, not after a body timeout
        assert head(node) == before
    assert touched == []


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, Any]:
    status_line = await asyncio.wait_for(reader.readline(), 5)
    length = 0
    while (line := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    return int(status_line.split()[1]), json.loads(body)


# -- path parameters -------------------------------------------------------------------------------


async def test_path_parameters_are_length_and_alphabet_checked(
    api: tuple[TestClient, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, node = api
    token, _ = await node.create_token(ADDRESS)
    before = head(node)
    reached: list[str] = []
    for name in ("chunk", "due", "remove", "answer"):

        async def spy(*args: Any, _name: str = name, **kwargs: Any) -> Any:
            reached.append(_name)
            raise AssertionError(f"{_name} reached the node with a malformed parameter")

        monkeypatch.setattr(node, name, spy)
    bad_tokens = [
        "0" * 31,
        "0" * 33,
        "g" * 32,
        "é" * 32,
        "\uff10" * 32,  # full-width digits: Unicode's \d would take them
        "%00" * 11,
        "0" * 31 + "\n",
        token + "%0A",  # a final newline, which ``$`` would let through
        "<script>" + "0" * 24,
        "a" * 4_000,
    ]
    bad_hashes = [
        "ab" * 31,
        "ab" * 33,
        "zz" * 32,
        "ab" * 31 + "é",
        "<svg>" + "a" * 59,
        "ab" * 32 + "%0A",
    ]
    for bad in bad_tokens:
        for path in (f"/chunk/{bad}", f"/due/{bad}", f"/remove/{bad}/{'ab' * 32}"):
            status, body = await call(client, "GET", API + path)
            assert (status, body["status"]) in {(404, "no_token"), (404, "not_found")}, path
        status, body = await call(
            client, "POST", f"{API}/answer/{bad}/{'ab' * 32}", json={"proof": {}}
        )
        assert (status, body["status"]) in {(404, "no_token"), (404, "not_found")}
    for bad in bad_hashes:
        status, body = await call(client, "GET", f"{API}/remove/{token}/{bad}")
        assert (status, body["status"]) in {(404, "no_hash"), (404, "not_found")}
        status, body = await call(client, "POST", f"{API}/answer/{token}/{bad}", json={"proof": {}})
        assert (status, body["status"]) in {(404, "no_hash"), (404, "not_found")}
    for bad in ("1" * 25, "1" * 36, "0OIl" + ADDRESS[4:], ADDRESS[:-1] + "é", "<b>" + ADDRESS[3:]):
        status, body = await call(client, "GET", f"{API}/new/{bad}")
        assert (status, body["status"]) in {(400, "invalid_address"), (404, "not_found")}
    # a request line longer than the HTTP parser takes is refused before any route
    async with client.get(f"{API}/chunk/{'a' * 10_000}") as response:
        assert response.status == 400
    assert reached == []
    assert head(node) == before


# -- nothing reflected unescaped -------------------------------------------------------------------


async def test_no_response_reflects_input_unescaped(api: tuple[TestClient, Node]) -> None:
    client, node = api
    token, heartbeat = await node.create_token(ADDRESS)
    contract = await node.chunk(token)
    file_hash = contract["file_hash"]
    seen = 0
    for payload in HOSTILE:
        requests: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", f"{API}/new/{payload}", {}),
            ("GET", f"{API}/chunk/{payload}", {}),
            ("GET", f"{API}/due/{token}?x={payload}", {}),
            ("GET", f"{API}/remove/{token}/{payload}", {}),
            ("GET", f"{API}/{payload}", {}),
            ("GET", f"/{payload}", {}),
            ("PUT", f"{API}/chunk/{token}", {}),
            ("GET", f"{API}/due/{token}", {"headers": {"X-Request-Id": payload}}),
            ("GET", f"{API}/due/{token}", {"headers": {"User-Agent": payload, "Referer": payload}}),
            ("GET", f"/api/docs?q={payload}", {"headers": {"X-Request-Id": payload}}),
            ("POST", f"{API}/answer/{token}/{file_hash}", {"data": payload}),
            ("POST", f"{API}/answer/{token}/{file_hash}", {"json": {payload: payload}}),
            ("POST", f"{API}/answer/{token}/{file_hash}", {"json": {"proof": payload}}),
            ("POST", f"{API}/answer/{token}/{file_hash}", {"json": {"proof": {payload: 1}}}),
            (
                "POST",
                f"{API}/answer/{token}/{file_hash}",
                {"json": {"proof": {"leaf": {"index": 0, "blob": payload}, "branch": payload}}},
            ),
        ]
        for method, path, kwargs in requests:
            async with client.request(method, path, **kwargs) as response:
                raw = await response.read()
                kind = response.headers.get("Content-Type", "")
                assert response.headers.get("X-Content-Type-Options") == "nosniff"
                assert payload not in response.headers.get("X-Request-Id", "")
            lowered = raw.lower()
            assert not any(marker in lowered for marker in MARKERS), (path, raw[:300])
            if path.startswith("/api/docs"):
                assert kind.startswith("text/html") and response.status == 200
            else:
                assert kind.startswith("application/json"), (path, kind)
                assert response.status < 500, (path, raw[:300])
            seen += 1
    # the honest answer still passes afterwards
    url = f"{API}/answer/{token}/{file_hash}"
    assert await call(client, "POST", url, json={"proof": prove(heartbeat, contract)}) == (
        200,
        {"status": "pass", "receipt": RECEIPT},
    )
    assert seen == len(HOSTILE) * 15


# -- abuse: tokens per IP, requests per token and per IP -----------------------------------------


async def test_tokens_per_ip_hold_under_concurrency(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """20 simultaneous /new from one IP: exactly the limit succeed, the rest are 429
    too_many_tokens with Retry-After; only the token hashes are recorded."""
    policy = replace(TokenPolicy(), max_tokens_per_ip=5)
    node, _ = new_node(db_url, tmp_path, token_policy=policy)
    client = await aiohttp_client(create_app(node))
    await stock(node, files=1)

    async def new() -> tuple[int, Any, str | None]:
        async with client.get(f"{API}/new/{ADDRESS}") as response:
            return response.status, await response.json(), response.headers.get("Retry-After")

    results = await asyncio.gather(*(new() for _ in range(20)))
    made = [body["token"] for status, body, _ in results if status == 200]
    refused = [(status, body["status"], after) for status, body, after in results if status != 200]
    assert len(made) == 5
    assert refused and all(s == 429 and w == "too_many_tokens" and a for s, w, a in refused)
    await client.close()
    facts = check_ledger(db_url)
    created = [e for e in facts.events if e.event_type == "TokenCreated"]
    assert sorted(e.payload["token_hash"] for e in created) == sorted(map(tk.token_hash, made))
    assert {e.stream_id for e in created} == {"ip-127.0.0.1"}


async def test_tokens_per_ip_hold_across_nodes(db_url: str, tmp_path: Path) -> None:
    """Two nodes on their own engines (as two processes would be) share the per-IP limit."""
    policy = replace(TokenPolicy(), max_tokens_per_ip=3)
    nodes = [new_node(db_url, tmp_path, token_policy=policy)[0] for _ in range(2)]
    for node in nodes:
        await node.start()
    await stock(nodes[0], files=1)
    farmer = Context(actor="farmer", remote="192.0.2.7")

    async def new(node: Node) -> str:
        try:
            return (await node.create_token(ADDRESS, farmer))[0]
        except Exception as exc:  # Refused
            return getattr(exc, "status", repr(exc))

    try:
        results = await asyncio.gather(*(new(nodes[i % 2]) for i in range(12)))
    finally:
        for node in nodes:
            await node.close()
    assert sum(len(r) == 32 for r in results) == 3
    assert {r for r in results if len(r) != 32} == {"too_many_tokens"}


@pytest.mark.parametrize("trusted", [(), ("127.0.0.1", "10.0.0.0/8")])
async def test_per_ip_limits_behind_a_trusted_proxy(
    db_url: str, tmp_path: Path, aiohttp_client: Any, trusted: tuple[str, ...]
) -> None:
    """Behind trusted proxies each farmer's forwarded address has its own token limit (and is
    what the ledger records); without them, X-Forwarded-For is a farmer's own claim and
    changes nothing."""
    policy = replace(TokenPolicy(), max_tokens_per_ip=2)
    node, _ = new_node(db_url, tmp_path, token_policy=policy, trusted_proxies=trusted)
    client = await aiohttp_client(create_app(node))
    await stock(node, files=1)

    async def new(farmer: str) -> int:
        # The proxy at 127.0.0.1 passes on what the proxy at 10.9.9.9 saw: the farmer.
        headers = {"X-Forwarded-For": f"{farmer}, 10.9.9.9"}
        async with client.get(f"{API}/new/{ADDRESS}", headers=headers) as response:
            return response.status

    statuses = [await new(farmer) for farmer in ["198.51.100.1"] * 3 + ["198.51.100.2"] * 2]
    await client.close()
    created = [e for e in check_ledger(db_url).events if e.event_type == "TokenCreated"]
    if trusted:
        assert statuses == [200, 200, 429, 200, 200]
        assert sorted({e.stream_id for e in created}) == ["ip-198.51.100.1", "ip-198.51.100.2"]
    else:
        assert statuses == [200, 200, 429, 429, 429]
        assert {e.stream_id for e in created} == {"ip-127.0.0.1"}


async def test_per_ip_limits_count_an_ipv6_64_and_an_ipv4_mapped_address_as_one(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """Six addresses of one IPv6 /64 share one limit, as do ``::ffff:10.1.1.1`` and
    ``10.1.1.1``; another /64 has its own. Events record the group, not one address of it."""
    policy = replace(TokenPolicy(), max_tokens_per_ip=5)
    node, _ = new_node(db_url, tmp_path, token_policy=policy, trusted_proxies=("127.0.0.1",))
    client = await aiohttp_client(create_app(node))
    await stock(node, files=1)

    async def new(farmer: str) -> int:
        headers = {"X-Forwarded-For": farmer}
        async with client.get(f"{API}/new/{ADDRESS}", headers=headers) as response:
            return response.status

    one_64 = [f"2001:db8:1:2::{i:x}" for i in range(1, 7)] + ["2001:db8:1:2:ffff::1"]
    assert [await new(a) for a in one_64] == [200] * 5 + [429] * 2
    assert await new("2001:db8:1:3::1") == 200  # the next /64
    mapped = ["::ffff:10.1.1.1", "10.1.1.1"] * 3
    assert [await new(a) for a in mapped] == [200] * 5 + [429]
    await client.close()
    created = [e for e in check_ledger(db_url).events if e.event_type == "TokenCreated"]
    assert sorted({e.stream_id for e in created}) == [
        "ip-10.1.1.1",
        "ip-2001:db8:1:2::/64",
        "ip-2001:db8:1:3::/64",
    ]


def test_address_groups_follow_the_configured_prefix() -> None:
    assert tk.ip_group("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert tk.ip_group("2001:db8:1:2:3:4:5:6", 48) == "2001:db8:1::/48"
    assert tk.ip_group("2001:db8:1:2:3:4:5:6", 128) == "2001:db8:1:2:3:4:5:6"
    assert tk.ip_group("::ffff:192.0.2.9") == "192.0.2.9"
    assert tk.ip_group("192.0.2.9") == "192.0.2.9"
    assert tk.ip_group("not an address") == "not an address"


def test_the_forwarded_address_is_read_from_the_nearest_untrusted_hop() -> None:
    trusted = parse_trusted(["10.0.0.0/8", "::1"])
    assert client_address("203.0.113.5", ["1.2.3.4"], trusted) == "203.0.113.5"  # not a proxy
    assert client_address("10.0.0.1", [], trusted) == "10.0.0.1"
    assert client_address("10.0.0.1", ["1.2.3.4, 5.6.7.8"], trusted) == "5.6.7.8"
    assert client_address("10.0.0.1", ["1.2.3.4, 10.0.0.2"], trusted) == "1.2.3.4"
    assert client_address("10.0.0.1", ["1.2.3.4", "10.0.0.2"], trusted) == "1.2.3.4"
    assert client_address("10.0.0.1", ["10.0.0.3, 10.0.0.2"], trusted) == "10.0.0.3"
    # what a farmer wrote left of a hop that is not an address is not believed
    assert client_address("10.0.0.1", ["1.2.3.4, junk, 10.0.0.2"], trusted) == "10.0.0.2"
    assert client_address("::1", ["2001:db8::1"], trusted) == "2001:db8::1"
    assert client_address("10.0.0.1", ["1.2.3.4"], ()) == "10.0.0.1"
    with pytest.raises(ValueError, match="not an IP"):
        parse_trusted(["10.0.0.0/8", "proxy.example"])


async def test_new_is_rate_limited_per_ip(db_url: str, tmp_path: Path, aiohttp_client: Any) -> None:
    node, clock = new_node(db_url, tmp_path, new_tokens_per_ip_per_minute=3)
    client = await aiohttp_client(create_app(node))
    await stock(node, files=1)
    statuses = [(await call(client, "GET", f"{API}/new/{ADDRESS}"))[0] for _ in range(2)]
    assert statuses == [200, 200]
    assert (await call(client, "GET", f"{API}/new/1BadAddressBadAddressBad"))[0] == 400
    async with client.get(f"{API}/new/{ADDRESS}") as response:  # refused ones count too
        body = await response.json()
        assert response.status == 429 and body["status"] == "too_many_requests"
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    clock.advance(60)
    assert (await call(client, "GET", f"{API}/new/{ADDRESS}"))[0] == 200


async def test_tokens_are_compared_in_constant_time(
    api: tuple[TestClient, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, node = api
    token, _ = await node.create_token(ADDRESS)
    compared: list[tuple[Any, Any]] = []
    real = tk.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tk.hmac, "compare_digest", spy)
    assert (await call(client, "GET", f"{API}/due/{token}"))[0] == 200
    assert (tk.token_hash(token), tk.token_hash(token)) in compared
    assert all(token not in (a, b) for a, b in compared)  # hashes, never the token itself


# -- tokens never written whole -------------------------------------------------------------------


def test_the_access_log_path_never_holds_a_token() -> None:
    token, file_hash = "0123456789abcdef" * 2, "ab" * 32

    class Fake:
        def __init__(self, path: str, **info: str) -> None:
            self.path = path
            self.match_info = info

    cases = {
        f"/api/downstream/chunk/{token}": {"token": token},
        f"/api/downstream/answer/{token}/{file_hash}": {"token": token, "file_hash": file_hash},
        f"/api/downstream/chunk/{token}a": {"token": token + "a"},
        f"/api/downstream/chunk/{token.upper()}/extra": {},
        f"/nowhere/x{token}y": {},
        f"/api/downstream/remove/{token}/{token}{token}": {"token": token, "file_hash": token * 2},
    }
    for path, info in cases.items():
        shown = redacted_path(Fake(path, **info))  # type: ignore[arg-type]
        assert token not in shown.lower(), shown
    shown = redacted_path(
        Fake(f"/api/downstream/answer/{token}/{file_hash}", token=token, file_hash=file_hash)
    )  # type: ignore[arg-type]
    assert shown.endswith(file_hash)


async def test_a_token_sent_as_request_id_is_neither_logged_nor_recorded(
    api: tuple[TestClient, Node], db_url: str
) -> None:
    """A farmer that puts its token (or its token's hash) in ``X-Request-Id`` gets a fresh
    request id: the token is in no log line and no event row; a plain request id is kept."""
    client, node = api
    token, _ = await node.create_token(ADDRESS)
    sent = {
        "token": token,
        "token in a longer id": f"req-{token}-1",
        "token hash": tk.token_hash(token),
    }
    with capture_logs() as logs:
        for what, request_id in sent.items():
            async with client.get(
                f"{API}/chunk/{token}", headers={"X-Request-Id": request_id}
            ) as response:
                assert response.status == 200, what
                echoed = response.headers["X-Request-Id"]
                assert request_id not in echoed and token not in echoed, what
        async with client.get(
            f"{API}/due/{token}", headers={"X-Request-Id": "farmer-7.retry-2"}
        ) as response:
            assert response.headers["X-Request-Id"] == "farmer-7.retry-2"
    logged_ids = {entry.get("request_id") for entry in logs}
    assert "farmer-7.retry-2" in logged_ids
    recorded = event_rows_text(db_url)
    for what, request_id in sent.items():
        assert request_id not in logged_ids, what
        assert f'"request_id":"{request_id}"' not in recorded, what
    assert token not in recorded and token not in json.dumps(logs)


async def test_an_unhandled_error_logs_no_token(
    api: tuple[TestClient, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console renderer's tracebacks show no local variables (a handler's hold the token)."""
    client, node = api
    token, _ = await node.create_token(ADDRESS)

    async def broken(token: str, *args: Any) -> Any:
        secret_copy = token  # noqa: F841 - a local a locals-printing traceback would show
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(node, "due", broken)
    for fmt in ("console", "json"):
        stream = io.StringIO()
        configure_logging(fmt, stream=stream)
        try:
            status, _ = await call(client, "GET", f"{API}/due/{token}")
        finally:
            configure_logging("console", stream=sys.stderr)
            library_logs.configure()
        output = stream.getvalue()
        assert status == 500 and "ZeroDivisionError" in output
        assert token not in output, fmt


async def test_control_characters_in_a_request_reach_no_terminal(
    api: tuple[TestClient, Node],
) -> None:
    """A path holding ESC, BEL or NUL is logged with them escaped, in both formats: a client
    must not clear or retitle the terminal of an operator tailing the log."""
    client, _ = api
    for fmt in ("console", "json"):
        stream = io.StringIO()
        configure_logging(fmt, stream=stream)
        try:
            async with client.get(f"{API}/x%1B[2J%1B]0;pwned%07%00") as response:
                assert response.status == 404
        finally:
            configure_logging("console", stream=sys.stderr)
            library_logs.configure()
        output = stream.getvalue()
        assert "pwned" in output, fmt  # the request was logged
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", output), fmt


async def test_no_token_in_logs_events_or_audit_report(tmp_path: Path) -> None:
    """A real ``serve`` with farmers, refusals and a deletion: no issued token appears in its
    log, in any event row, or in the audit report; their hashes do."""
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    served = await start_serve(
        db_url, tmp_path, "--demo", "--demo-size", "4096", "--demo-chunks", "4"
    )
    tokens: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:
            farmers = [
                Farmer(served.url, served.address or "", directory=tmp_path / f"f{i}", session=http)
                for i in range(3)
            ]
            for farmer in farmers:
                tokens.append(await farmer.register())
                await farmer.take_contracts(2)
                assert set((await farmer.poll_and_answer()).values()) <= {"pass"}
            one = farmers[0]
            some = next(iter(one.contracts))
            with pytest.raises(FarmerError):
                await one.answer(some, wrong=True)  # already_answered
            await one.remove(some)
            token = tokens[0]
            for path in (
                f"{API}/chunk/{token}a",
                f"{API}/chunk/{token.upper()}",
                f"{API}/chunk/{token}/extra",
                f"{API}/due/{token}?token={token}",
                f"{API}/remove/{token}/{token}",
                f"/{token}",
            ):
                async with http.get(served.url + path) as response:
                    assert response.status < 500
            async with http.post(
                f"{served.url}{API}/answer/{token}/{'ab' * 32}", data=token
            ) as response:
                assert response.status == 400
            # too long for the HTTP parser: aiohttp's own error log must not quote it
            async with http.get(f"{served.url}{API}/chunk/{token}{'0' * 9000}") as response:
                assert response.status == 400
    finally:
        await kill(served.process, sig=15)
    assert served.process.returncode == 0
    # delete a token through the CLI too, then audit
    runner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "downstream_node.cli",
        "--db",
        db_url,
        "--secret-file",
        str(tmp_path / "node-secret.json"),  # the node's, as start_serve gave it
        "token",
        "delete",
        tokens[1],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, cli_err = await asyncio.wait_for(runner.communicate(), 60)
    assert runner.returncode == 0, cli_err
    audit = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "downstream_node.cli",
        "--db",
        db_url,
        "audit",
        "uptime",
        "--format",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    report, audit_err = await asyncio.wait_for(audit.communicate(), 60)
    assert audit.returncode == 0, audit_err
    log_text = served.stderr.read_text() + cli_err.decode() + audit_err.decode()
    rows = event_rows_text(db_url)
    lines = [json.loads(line) for line in served.stderr.read_text().splitlines() if line.strip()]
    assert sum(1 for e in lines if e["event"] == "request") >= 20
    for token in tokens:
        for text, where in ((log_text, "log"), (rows, "events"), (report.decode(), "audit")):
            assert token not in text.lower(), f"a token in the {where}"
        assert tk.token_hash(token) in rows
        assert tk.token_hash(token) in report.decode()
