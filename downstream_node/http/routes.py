"""The farmers' API handlers (the seed README's routes) and ``/health``.

A handler checks its path parameters (length and alphabet) and its body before it touches
the node, calls one node command, and dumps the result through its schema. Refusals travel
as ``Refused`` to the error middleware in ``app.py``; a handler never writes SQL.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, NoReturn

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from marshmallow import Schema, ValidationError

from ..domain import tokens as tk
from ..domain.clock import to_micros
from ..domain.errors import Refused
from ..service import Context, Node
from . import schemas as sc

log = structlog.get_logger("downstream.http")

PREFIX = "/api/downstream"
TOKEN_RE = re.compile(r"^[0-9a-fA-F]{32}\Z")
HASH_RE = re.compile(r"^[0-9a-fA-F]{64}\Z")
ADDRESS_MIN, ADDRESS_MAX = 26, 35
B58 = set(tk.B58_ALPHABET)

NODE = web.AppKey("node", Node)
REQUEST_ID = web.RequestKey("request_id", str)
# The farmer's address: the peer's, or behind a trusted proxy the one it forwards (proxies.py).
REMOTE = web.RequestKey("remote", str)


class ClientGone(Exception):
    """The client closed its connection before its request's body arrived: nobody is left to
    answer (the access log records 499), and it is not the node's fault."""


class UnreadableBody(Refused):
    """``bad_request`` for a body that cannot be decoded: where it ends is unknown, so the
    connection closes after the reply."""


class RateLimited(Refused):
    """``too_many_requests``, with the seconds until the window turns."""

    def __init__(self, retry_after: int, message: str) -> None:
        super().__init__("too_many_requests", message)
        self.retry_after = retry_after


class RateLimiter:
    """At most ``limit`` requests per key (a token, an IP) per clock minute (fixed windows).

    Only the current minute's counters are kept, so memory is bounded by one minute of
    traffic whatever tokens a client makes up. Time comes from the node's clock.
    """

    def __init__(self, node: Node, limit: int) -> None:
        self.node = node
        self.limit = limit
        self._window = -1
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self, key: str, per: str = "token") -> None:
        if self.limit <= 0:
            return
        now = to_micros(self.node.clock.now()) // 1_000_000
        window = now // 60
        with self._lock:
            if window != self._window:
                self._window, self._counts = window, {}
            count = self._counts.get(key, 0) + 1
            self._counts[key] = count
        if count > self.limit:
            raise RateLimited(
                60 - now % 60,
                f"at most {self.limit} requests per minute per {per}; retry later",
            )


LIMITER = web.AppKey("rate_limiter", RateLimiter)
NEW_LIMITER = web.AppKey("new_token_rate_limiter", RateLimiter)


# -- input checks (no node involved) ------------------------------------------------------------


def check_address(address: str) -> str:
    if not ADDRESS_MIN <= len(address) <= ADDRESS_MAX:
        raise Refused(
            "invalid_address",
            f"an address has {ADDRESS_MIN} to {ADDRESS_MAX} characters, not {len(address)}",
        )
    if not set(address) <= B58:
        raise Refused("invalid_address", "an address has only Base58 characters")
    if not tk.is_valid_address(address):
        raise Refused("invalid_address", "the address's Base58Check checksum or version is wrong")
    return address


def check_token(token: str) -> str:
    if not TOKEN_RE.match(token):
        raise Refused("no_token", "no such token (a token is 32 hexadecimal characters)")
    return token.lower()


def check_hash(file_hash: str) -> str:
    if not HASH_RE.match(file_hash):
        raise Refused("no_hash", "no such file hash (a file hash is 64 hexadecimal characters)")
    return file_hash.lower()


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; ``bad_request`` otherwise (413 comes from ``read``)."""
    try:
        body = await request.read()
    except RequestPayloadError:
        # A body its Content-Encoding does not describe (gzip that is not gzip): the
        # client's mistake, not a 500.
        raise UnreadableBody(
            "bad_request",
            "the body could not be decoded as its Content-Encoding says; send it as it is "
            "or encoded as declared",
        ) from None
    except ConnectionResetError:
        raise ClientGone from None
    if not body.strip():
        raise Refused("bad_request", 'the body is empty; send a JSON object like {"proof": {}}')
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise Refused("bad_request", f"the body is not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise Refused("bad_request", f"the body must be a JSON object, not {_json_kind(data)}")
    return data


def _json_kind(value: Any) -> str:
    for kind, name in ((list, "an array"), (str, "a string"), (bool, "a boolean")):
        if isinstance(value, kind):
            return name
    if value is None:
        return "null"
    return "a number"


def _describe(messages: Any) -> str:
    if isinstance(messages, dict):
        return "; ".join(f"{key}: {_describe(value)}" for key, value in messages.items())
    if isinstance(messages, list):
        return " ".join(_describe(m) for m in messages)
    return str(messages)


def context(request: web.Request) -> Context:
    return Context(request_id=request.get(REQUEST_ID), actor="farmer", remote=request[REMOTE])


def reply(schema: Schema, data: Any, status: int = 200) -> web.Response:
    return web.json_response(schema.dump(data), status=status)


# The answer route's reply, encoded directly: the busiest route need not run the schema for
# two strings (tests check the body against it).
_encode_answer = json.JSONEncoder(separators=(", ", ": ")).encode


def _token_param(request: web.Request) -> str:
    token = check_token(request.match_info["token"])
    request.app[LIMITER].check(token)
    return token


# -- handlers -----------------------------------------------------------------------------------


async def new_token(request: web.Request) -> web.Response:
    request.app[NEW_LIMITER].check(f"ip:{request[REMOTE]}", "IP address")
    address = check_address(request.match_info["sjcx_address"])
    token, heartbeat = await request.app[NODE].create_token(address, context(request))
    return reply(sc.new_token_schema, {"token": token, "heartbeat": heartbeat})


async def chunk(request: web.Request) -> web.Response:
    token = _token_param(request)
    contract = await request.app[NODE].chunk(token, context(request))
    return reply(sc.chunk_schema, contract)


async def remove(request: web.Request) -> web.Response:
    token = _token_param(request)
    file_hash = check_hash(request.match_info["file_hash"])
    await request.app[NODE].remove(token, file_hash, context(request))
    return reply(sc.status_schema, {"status": "ok"})


async def due(request: web.Request) -> web.Response:
    token = _token_param(request)
    return reply(sc.due_schema, await request.app[NODE].due(token, context(request)))


async def answer(request: web.Request) -> web.Response:
    token = _token_param(request)
    file_hash = check_hash(request.match_info["file_hash"])
    body = await read_json_object(request)
    proof = body.get("proof")
    if type(proof) is not dict:
        # A JSON object is what the schema's load returns as it is (its keys are strings):
        # only anything else goes through the schema's machinery (7% of the event loop's
        # time on the busiest route), for its error.
        proof = _answer_body(body)["proof"]
    verdict = await request.app[NODE].answer_receipted(token, file_hash, proof, context(request))
    body = _encode_answer({"status": verdict.status, "receipt": verdict.receipt})
    return web.Response(body=body.encode(), content_type="application/json", charset="utf-8")


def _answer_body(body: dict[str, Any]) -> dict[str, Any]:
    try:
        return sc.answer_request_schema.load(body)  # type: ignore[no-any-return]
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"body": exc.messages}
        if set(messages) == {"proof"} and "proof" in body:
            raise Refused(
                "bad_proof_format", f"the proof must be a JSON object: {_describe(messages)}"
            ) from None
        raise Refused("bad_request", f"invalid body: {_describe(messages)}") from None


async def health(request: web.Request) -> web.Response:
    try:
        state = await request.app[NODE].health()
    except Exception as exc:
        log.warning("health_check_failed", error=repr(exc))
        return reply(
            sc.health_schema,
            {
                "status": "unavailable",
                "database": False,
                "message": f"the database is unreachable: {type(exc).__name__}",
            },
            status=503,
        )
    return reply(sc.health_schema, {"status": "ok", "database": True, **state})


def add_routes(app: web.Application) -> None:
    # The seed's GET routes change state (a token, a contract, the next challenge): HEAD,
    # which aiohttp would route to them, must not, so it is not allowed there.
    get = {"allow_head": False}
    app.router.add_get(PREFIX + "/new/{sjcx_address}", new_token, name="new_token", **get)
    app.router.add_get(PREFIX + "/chunk/{token}", chunk, name="chunk", **get)
    app.router.add_get(PREFIX + "/remove/{token}/{file_hash}", remove, name="remove", **get)
    app.router.add_get(PREFIX + "/due/{token}", due, name="due", **get)
    app.router.add_post(PREFIX + "/answer/{token}/{file_hash}", answer, name="answer")
    app.router.add_get("/health", health, name="health")
