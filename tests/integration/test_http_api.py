"""The API's happy paths and its furniture: response bodies match their schemas, request
ids, the access log (tokens redacted), /health, /metrics, the OpenAPI document, /api/docs."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from http_support import ADDRESS, CHUNK, INTERVAL, RECEIPT, head, new_node, prove, stock
from structlog.testing import capture_logs

from downstream_node.domain.clock import parse_time
from downstream_node.domain.contracts import HandBackPolicy
from downstream_node.http import schemas as sc
from downstream_node.http.app import create_app
from downstream_node.http.openapi import build_spec, render_html
from downstream_node.service import Node

API = "/api/downstream"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
async def served(db_url: str, tmp_path: Path, aiohttp_client: Any) -> tuple[TestClient, Node]:
    node, clock = new_node(db_url, tmp_path)
    node.test_clock = clock  # type: ignore[attr-defined]
    client = await aiohttp_client(create_app(node))
    await stock(node, files=2)
    return client, node


async def get_json(client: TestClient, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.get(path, **kwargs) as response:
        return response.status, await response.json()


async def test_the_farmer_routes(served: tuple[TestClient, Node]) -> None:
    client, node = served
    status, created = await get_json(client, f"{API}/new/{ADDRESS}")
    assert status == 200 and sc.new_token_schema.validate(created) == {}
    assert set(created) == {"token", "heartbeat"}
    token, heartbeat = created["token"], created["heartbeat"]
    assert heartbeat == {"key": "", "check_fraction": 0.01}  # public: no secret key

    status, contract = await get_json(client, f"{API}/chunk/{token.upper()}")  # hex any case
    assert status == 200 and sc.chunk_schema.validate(contract) == {}
    assert set(contract) == {"seed", "file_hash", "size", "challenge", "tag", "due", "expiration"}
    assert ISO_Z.match(contract["expiration"]) and ISO_Z.match(contract["due"])
    issued = parse_time(contract["due"]) - node.clock.now()
    assert issued.total_seconds() == INTERVAL

    status, due = await get_json(client, f"{API}/due/{token}")
    assert status == 200 and sc.due_schema.validate(due) == {}
    assert due["all_contracts"] == [{"hash": contract["file_hash"]}]
    [open_challenge] = due["due_contracts"]
    assert open_challenge["challenge"] == contract["challenge"]

    async with client.post(
        f"{API}/answer/{token}/{contract['file_hash'].upper()}",
        json={"proof": prove(heartbeat, contract), "extra": "ignored"},
    ) as response:
        assert response.status == 200
        assert await response.json() == {"status": "pass", "receipt": RECEIPT}
    status, due = await get_json(client, f"{API}/due/{token}")
    assert due["due_contracts"] == [] and len(due["all_contracts"]) == 1

    status, removed = await get_json(client, f"{API}/remove/{token}/{contract['file_hash']}")
    assert (status, removed) == (200, {"status": "ok"})
    assert await get_json(client, f"{API}/due/{token}") == (
        200,
        {"all_contracts": [], "due_contracts": []},
    )


async def test_due_brings_each_contract_up_to_date(served: tuple[TestClient, Node]) -> None:
    client, node = served
    clock = node.test_clock  # type: ignore[attr-defined]
    _, created = await get_json(client, f"{API}/new/{ADDRESS}")
    token, heartbeat = created["token"], created["heartbeat"]
    _, a = await get_json(client, f"{API}/chunk/{token}")
    _, b = await get_json(client, f"{API}/chunk/{token}")
    async with client.post(
        f"{API}/answer/{token}/{a['file_hash']}", json={"proof": prove(heartbeat, a)}
    ) as response:
        assert await response.json() == {"status": "pass", "receipt": RECEIPT}
    clock.advance(INTERVAL / 2)
    await node.add_seeded(CHUNK, seed="a third chunk")
    _, c = await get_json(client, f"{API}/chunk/{token}")
    before = head(node)
    clock.advance(INTERVAL / 2)  # a is due for its next challenge, b lapsed unanswered, c is open

    status, due = await get_json(client, f"{API}/due/{token}")
    assert status == 200
    assert [x["hash"] for x in due["all_contracts"]] == [a["file_hash"], c["file_hash"]]
    challenges = {x["hash"]: x["challenge"] for x in due["due_contracts"]}
    assert set(challenges) == {a["file_hash"], c["file_hash"]}
    assert challenges[a["file_hash"]] != a["challenge"]  # a's next challenge
    assert challenges[c["file_hash"]] == c["challenge"]
    assert b["file_hash"] not in challenges
    written = [e.event_type for e in node.store.read_all(after=before)]
    assert sorted(written) == ["ChallengeIssued", "ContractExpired"]


async def test_a_handed_back_chunk_is_not_offered_again_at_once(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """A farmer that hands a chunk back (one it cannot store, say) is offered the others, and
    that one again only after ``handed_back_seconds``: otherwise the least-held file would
    come back first on every /chunk and the farmer could take nothing else."""
    node, clock = new_node(db_url, tmp_path, handed_back_seconds=600)
    client = await aiohttp_client(create_app(node))
    files = await stock(node, files=2)
    _, created = await get_json(client, f"{API}/new/{ADDRESS}")
    token = created["token"]
    _, got = await get_json(client, f"{API}/chunk/{token}")
    first = got["file_hash"]
    [second] = set(files) - {first}
    assert (await get_json(client, f"{API}/remove/{token}/{first}"))[0] == 200
    _, got = await get_json(client, f"{API}/chunk/{token}")
    assert got["file_hash"] == second
    status, body = await get_json(client, f"{API}/chunk/{token}")
    assert (status, body["status"]) == (404, "no_chunks")
    # another farmer is offered it at once
    _, other = await get_json(client, f"{API}/new/{ADDRESS}")
    assert (await get_json(client, f"{API}/chunk/{other['token']}"))[1]["file_hash"] == first
    await get_json(client, f"{API}/remove/{other['token']}/{first}")
    clock.advance(601)
    _, got = await get_json(client, f"{API}/chunk/{token}")
    assert got["file_hash"] == first


async def test_hand_backs_are_limited_per_token_and_per_address(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """A /chunk then /remove loop writes a new encoding into the ledger each time: a token
    may hand back 3 contracts per hour here, an address 4 across its tokens; past that the
    farmer gets 429 ``too_many_requests`` with the seconds until one leaves the hour, keeps
    its contract, and nothing is written."""
    limits = HandBackPolicy(per_token=3, per_address=4, window=3600)
    node, clock = new_node(db_url, tmp_path, hand_backs=limits, handed_back_seconds=0)
    client = await aiohttp_client(create_app(node))
    await stock(node, files=6, redundancy=2)
    first, second = [(await get_json(client, f"{API}/new/{ADDRESS}"))[1]["token"] for _ in range(2)]

    async def cycle(token: str) -> tuple[int, Any, str | None]:
        _, contract = await get_json(client, f"{API}/chunk/{token}")
        async with client.get(f"{API}/remove/{token}/{contract['file_hash']}") as response:
            return response.status, await response.json(), response.headers.get("Retry-After")

    for _ in range(3):
        assert (await cycle(first))[0] == 200
        clock.advance(60)
    before = head(node)
    status, body, retry = await cycle(first)
    assert (status, body["status"]) == (429, "too_many_requests")
    assert retry == str(3600 - 180 + 1)  # the first hand-back leaves the hour then
    assert [e.event_type for e in node.store.read_all(after=before)] == [
        "ChunkEncoded",
        "ContractAssigned",
    ]  # the chunk taken, nothing handed back
    assert (await cycle(second))[0] == 200  # the address's fourth
    status, body, _ = await cycle(second)
    assert (status, body["status"]) == (429, "too_many_requests")
    clock.advance(3600 - 180 + 1)
    assert (await cycle(second))[0] == 200


async def test_request_ids_and_the_access_log(served: tuple[TestClient, Node]) -> None:
    client, node = served
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with client.get(f"{API}/new/{ADDRESS}", headers={"X-Request-Id": "abc-123"}) as r:
            assert r.headers["X-Request-Id"] == "abc-123"
            token = (await r.json())["token"]
        async with client.get(f"{API}/chunk/{token}") as r:
            generated = r.headers["X-Request-Id"]
            assert re.fullmatch(r"[0-9a-f]{32}", generated)
        async with client.get(f"{API}/due/{token}", headers={"X-Request-Id": "bad id <x>"}) as r:
            assert r.headers["X-Request-Id"] != "bad id <x>"  # not echoed: replaced
        async with client.get("/nowhere/" + token) as r:
            assert r.status == 404 and r.headers["X-Request-Id"]
    access = [e for e in logs if e["event"] == "request"]
    assert [e["status"] for e in access] == [200, 200, 200, 404]
    first = access[0]
    assert first["request_id"] == "abc-123"
    assert first["route"] == "/api/downstream/new/{sjcx_address}"
    assert first["method"] == "GET" and first["latency_ms"] >= 0
    assert access[1]["route"] == "/api/downstream/chunk/{token}"
    assert access[1]["request_id"] == generated
    assert access[3]["route"] == "unmatched"
    # node events carry the request id too, and no log line holds the token
    created = [e for e in logs if e["event"] == "token_created"]
    assert created and created[0]["request_id"] == "abc-123"
    assert token not in repr(logs)
    # the request id lands in the ledger's metadata of the events it caused
    events = list(node.store.read_all())
    assert any(e.meta.get("request_id") == "abc-123" for e in events)


async def test_health(served: tuple[TestClient, Node]) -> None:
    client, node = served
    status, body = await get_json(client, "/health")
    assert status == 200 and sc.health_schema.validate(body) == {}
    assert body == {
        "status": "ok",
        "database": True,
        "position": head(node),
        "projection_lag": 0,
        "generation": 1,
    }


async def test_health_is_503_when_the_database_is_unreachable(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    # nothing listens on port 1: the node was never started, every connection fails
    node, _ = new_node("mysql+pymysql://root@127.0.0.1:1/none", tmp_path)
    client = await aiohttp_client(create_app(node, manage_node=False))
    try:
        status, body = await get_json(client, "/health")
        assert status == 503 and body["status"] == "unavailable" and body["database"] is False
        async with client.get("/metrics") as response:
            assert response.status == 200
            assert "downstream_database_up 0.0" in await response.text()
    finally:
        await node.close()


async def test_a_table_gone_from_under_the_node_is_503_in_one_log_line(
    served: tuple[TestClient, Node],
) -> None:
    """A database being restored (its tables dropped, or not loaded yet) fails no request
    as the node's own bug: 503 with Retry-After, and one log line per request, no
    traceback (an outage fails every request)."""
    client, node = served
    await node.whitelist([(ADDRESS, "10000")])
    generation = node.store.head().projection_generation
    with node.store.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE proj{generation}_whitelist")
    with capture_logs() as logs:
        async with client.get(f"/api/downstream/new/{ADDRESS}") as response:
            body = await response.json()
            assert response.status == 503 and response.headers["Retry-After"]
    assert body["status"] == "error" and "unavailable" in body["message"]
    [line] = [e for e in logs if e["event"] == "database_unavailable"]
    assert line["log_level"] == "error" and "exc_info" not in line and line["error"]


async def test_metrics(served: tuple[TestClient, Node]) -> None:
    client, node = served
    _, created = await get_json(client, f"{API}/new/{ADDRESS}")
    token, heartbeat = created["token"], created["heartbeat"]
    _, contract = await get_json(client, f"{API}/chunk/{token}")
    url = f"{API}/answer/{token}/{contract['file_hash']}"
    bad = prove(heartbeat, contract)
    bad["leaf"]["index"] = 1  # well formed, wrong
    async with client.post(url, json={"proof": bad}) as r:
        assert await r.json() == {"status": "fail", "receipt": RECEIPT}
    async with client.post(url, json={"proof": prove(heartbeat, contract)}) as r:
        assert await r.json() == {"status": "pass", "receipt": RECEIPT}
    await get_json(client, f"{API}/chunk/{'0' * 32}")
    async with client.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    assert 'downstream_answers_total{verdict="pass"} 1.0' in text
    assert 'downstream_answers_total{verdict="fail"} 1.0' in text
    assert (
        'downstream_http_requests_total{method="GET",route="/api/downstream/chunk/{token}",'
        'status="404"} 1.0' in text
    )
    assert 'downstream_http_request_duration_seconds_bucket{le="0.005",route=' in text
    appended = float(re.search(r"^downstream_events_appended_total (\S+)$", text, re.M)[1])
    assert appended == node.committer.appended > 0
    assert f"downstream_ledger_position {float(head(node))}" in text
    assert "downstream_projection_lag 0.0" in text
    assert "downstream_database_up 1.0" in text
    assert token not in text


async def test_metrics_count_files_below_target_and_unavailable(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """From the projections at the node's clock: a file with no replica online is both below
    target and unavailable; one replica of two is below target only; a lapse counts at once."""
    from prometheus_client.parser import text_string_to_metric_families

    node, clock = new_node(db_url, tmp_path)
    client = await aiohttp_client(create_app(node, sweep_seconds=None))

    async def gauges() -> dict[str, float]:
        async with client.get("/metrics") as response:
            text = await response.text()
        values = {
            s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
        }
        return {
            k: values[k] for k in ("downstream_files_below_target", "downstream_files_unavailable")
        }

    files = await stock(node, files=2, redundancy=2)
    assert await gauges() == {
        "downstream_files_below_target": 2.0,
        "downstream_files_unavailable": 2.0,
    }
    _, created = await get_json(client, f"{API}/new/{ADDRESS}")
    status, contract = await get_json(client, f"{API}/chunk/{created['token']}")
    assert status == 200 and contract["file_hash"] in files
    assert await gauges() == {
        "downstream_files_below_target": 2.0,
        "downstream_files_unavailable": 1.0,
    }
    clock.advance(INTERVAL)  # its first challenge lapses: offline now, before any sweep
    assert await gauges() == {
        "downstream_files_below_target": 2.0,
        "downstream_files_unavailable": 2.0,
    }


async def test_background_sweep_frees_lapsed_replicas(
    db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    node, clock = new_node(db_url, tmp_path)
    client = await aiohttp_client(create_app(node, sweep_seconds=0.02))
    [file_hash] = await stock(node, files=1)
    _, first = await get_json(client, f"{API}/new/{ADDRESS}")
    _, second = await get_json(client, f"{API}/new/{ADDRESS}")
    status, _ = await get_json(client, f"{API}/chunk/{first['token']}")
    assert status == 200
    assert (await get_json(client, f"{API}/chunk/{second['token']}"))[0] == 404  # no_chunks
    before = head(node)
    clock.advance(INTERVAL)  # the first challenge lapses unanswered; nobody asks
    for _ in range(250):
        if head(node) > before:
            break
        await asyncio.sleep(0.02)
    events = list(node.store.read_all(after=before))
    assert [e.event_type for e in events] == ["ContractExpired"]
    status, contract = await get_json(client, f"{API}/chunk/{second['token']}")
    assert (status, contract["file_hash"]) == (200, file_hash)


async def test_each_app_has_its_own_registry(db_url: str, tmp_path: Path) -> None:
    first, _ = new_node(db_url, tmp_path / "a")
    second, _ = new_node(db_url, tmp_path / "b")
    a, b = create_app(first, manage_node=False), create_app(second, manage_node=False)
    from downstream_node.http.metrics import METRICS

    a[METRICS].on_answer("pass")
    assert a[METRICS].answers.labels(verdict="pass")._value.get() == 1
    assert b[METRICS].answers.labels(verdict="pass")._value.get() == 0
    for node in (first, second):
        await node.close()


# -- the OpenAPI document and the docs page -------------------------------------------------------


async def test_openapi_document(served: tuple[TestClient, Node]) -> None:
    client, _ = served
    status, doc = await get_json(client, "/api/openapi.json")
    assert status == 200
    try:
        from openapi_spec_validator import validate
    except ImportError:  # pragma: no cover - the test extra installs it
        validate = None
    if validate is not None:
        validate(doc)
    assert doc["openapi"].startswith("3.")
    # every route of the app is documented, with its methods
    app: web.Application = client.app
    documented = {
        (p, m.upper()) for p, item in doc["paths"].items() for m in item if m != "parameters"
    }
    served_routes = {
        (r.resource.canonical, r.method)
        for r in app.router.routes()
        if r.method != "HEAD"
        and not r.resource.canonical.startswith("/api/docs")
        and r.resource.canonical != "/api/openapi.json"
    }
    assert served_routes == documented
    # the schemas come from the marshmallow classes; errors reference the Error schema
    schemas = doc["components"]["schemas"]
    assert set(schemas["Chunk"]["required"]) == {
        "seed",
        "file_hash",
        "size",
        "challenge",
        "tag",
        "due",
        "expiration",
    }
    assert set(schemas["Error"]["properties"]["status"]["enum"]) == set(sc.STATUS_WORDS)
    answer = doc["paths"]["/api/downstream/answer/{token}/{file_hash}"]["post"]
    assert answer["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AnswerRequest"
    }
    assert {"200", "400", "404", "409", "410", "413", "429", "500", "503"} <= set(
        answer["responses"]
    )
    # the description documents every status word with its code
    for word, (code, _) in sc.STATUS_WORDS.items():
        assert f"| `{word}` | {code} |" in doc["info"]["description"]


async def test_docs_page(served: tuple[TestClient, Node]) -> None:
    client, _ = served
    async with client.get("/api/docs") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        page = await response.text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for path in (
        "/api/downstream/new/{sjcx_address}",
        "/api/downstream/answer/{token}/{file_hash}",
    ):
        assert path in page
    for word in sc.STATUS_WORDS:
        assert f"<code>{word}</code>" in page
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no external assets


def test_docs_page_escapes_everything() -> None:
    from downstream_node.config import Settings

    doc = build_spec(Settings())
    doc["info"]["title"] = "<script>alert(1)</script>"
    doc["paths"]["/x/<img src=x>"] = {
        "get": {
            "summary": '"><b>',
            "description": "`<i>` & <u>",
            "responses": {"200": {"description": "<svg onload=1>"}},
        }
    }
    page = render_html(doc)
    for raw in ("<script>", "<img src=x>", '"><b>', "<i>", "<u>", "<svg"):
        assert raw not in page
    assert "&lt;script&gt;" in page and "<code>&lt;i&gt;</code>" in page


class _GoneReader:
    """A log pipe whose reader went away: every write fails."""

    def write(self, _text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self) -> bool:
        return False


async def test_a_log_that_cannot_be_written_fails_no_request(
    served: tuple[TestClient, Node],
) -> None:
    """``serve 2>&1 | tee`` whose tee died: the requests still get their answers (a token
    recorded must reach its farmer); only the log lines are lost."""
    import logging

    from downstream_node.http.logs import configure_logging

    client, node = served
    await node.whitelist([(ADDRESS, "10000")])
    level = logging.getLogger().level
    try:
        configure_logging("json", stream=_GoneReader())  # type: ignore[arg-type]
        status, _ = await get_json(client, "/health")
        assert status == 200
        status, body = await get_json(client, f"/api/downstream/new/{ADDRESS}")
        assert status == 200 and body["token"]
        logging.getLogger("aiohttp.server").error("a stdlib record, also lost")
    finally:
        structlog.reset_defaults()
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "_downstream", False):
                logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)


def test_log_formats_write_one_event_per_line() -> None:
    import io
    import logging

    from downstream_node.http.logs import configure_logging

    level = logging.getLogger().level
    try:
        out = io.StringIO()
        configure_logging("json", stream=out)
        structlog.get_logger("t").info("request", route="/x", status=200)
        logging.getLogger("aiohttp.server").warning("bad %s", "request line")
        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            structlog.get_logger("t").exception("unhandled_error")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [e["event"] for e in lines] == ["request", "bad request line", "unhandled_error"]
        assert lines[0]["status"] == 200 and lines[0]["timestamp"].endswith("Z")
        assert lines[1]["logger"] == "aiohttp.server" and lines[1]["level"] == "warning"
        assert "ZeroDivisionError" in lines[2]["exception"]
        out = io.StringIO()
        configure_logging("console", stream=out)
        structlog.get_logger("t").info("request", status=200)
        assert "request" in out.getvalue() and "status=200" in out.getvalue()
        with pytest.raises(ValueError):
            configure_logging("xml")
    finally:
        structlog.reset_defaults()
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "_downstream", False):
                logging.getLogger().removeHandler(handler)
        logging.getLogger("aiohttp.access").disabled = False
        logging.getLogger().setLevel(level)
