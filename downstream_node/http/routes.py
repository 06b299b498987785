"""The farmers' API handlers (the seed README's routes) and ``/health``.

A handler checks its path parameters (length and alphabet) and its body before it touches
the node, calls one node command, and dumps the result through its schema. Refusals travel
as ``Refused`` to the error middleware in ``app.py``; a handler never writes SQL.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Callable
from typing import Any, NoReturn

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from marshmallow import Schema, ValidationError

from ..domain import tokens as tk
from ..domain.canonical import json_kind
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
        super().__init__("too_many_requests", message, retry_after=retry_after)


class SharedRateLimiter:
    """At most ``limit`` requests per key (a token, an IP) per clock minute (fixed windows,
    the node's clock), held across every process serving this database: the counts live in
    the database (``service/limits.py``, which leases allowances so that a busy subject
    costs a few writes a minute). ``max_lease`` 1 counts every request there."""

    def __init__(
        self,
        node: Node,
        name: str,
        limit: int,
        *,
        max_lease: int = 1,
        stored_as: Callable[[str], str] | None = None,
    ) -> None:
        self.limit = limit
        self.shared = node.minute_limit(name, limit, max_lease=max_lease, stored_as=stored_as)

    async def check(self, key: str, per: str = "token") -> None:
        retry_after = await self.shared.check(key)
        if retry_after is not None:
            raise RateLimited(
                retry_after, f"at most {self.limit} requests per minute per {per}; retry later"
            )


def token_limiter(node: Node) -> SharedRateLimiter:
    """Requests per token per minute: the hot path, so leases of up to a tenth of the limit;
    the database holds the token's hash, never the token."""
    limit = node.settings.requests_per_token_per_minute
    return SharedRateLimiter(
        node, "token", limit, max_lease=max(1, limit // 10), stored_as=tk.token_hash
    )


def new_token_limiter(node: Node) -> SharedRateLimiter:
    """``/new`` per IP per minute: every request counted in the database (exact)."""
    return SharedRateLimiter(node, "new_ip", node.settings.new_tokens_per_ip_per_minute)


LIMITER = web.AppKey("rate_limiter", SharedRateLimiter)
NEW_LIMITER = web.AppKey("new_token_rate_limiter", SharedRateLimiter)


# Route name -> the largest body it takes, where that is not the node's max_body.
BODY_LIMITS = web.AppKey("body_limits", dict)


def body_limit(request: web.Request) -> int:
    route = request.match_info.route
    name = route.name if route is not None else None
    limits = request.app.get(BODY_LIMITS) or {}
    return int(limits.get(name, request.app[NODE].settings.max_body))


async def limit_new_tokens(request: web.Request) -> None:
    """``/new`` (either API) per IP per minute, the IP counted as its group (an IPv6 /64)."""
    await request.app[NEW_LIMITER].check(client_group(request), "IP address")


def client_group(request: web.Request) -> str:
    """What per-IP limits count the request's client under (``tokens.ip_group``)."""
    policy = request.app[NODE].settings.token_policy
    return tk.ip_group(request[REMOTE], policy.ipv6_prefix)


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


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: a number JSON allows, but no reply could carry it
        raise ValueError(f"{text} is too large a number")
    return value


def loads_strict(body: bytes) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity refused, and numbers too large for a float,
    so that nothing read from a body is echoed back as invalid JSON (ValueError)."""
    return json.loads(body, parse_constant=_reject_constant, parse_float=_finite)


UNDECODABLE = (
    "the body could not be decoded as its Content-Encoding says; send it as it is "
    "or encoded as declared"
)


async def read_body(request: web.Request, *, lenient_gzip: bool = False) -> bytes:
    """The body, decoded as its ``Content-Encoding`` says (gzip, deflate), at most
    ``body_limit`` bytes before and after decoding (413 beyond).

    The server reads bodies as sent (``auto_decompress`` off: see ``create_app``) so that a
    route may be ``lenient_gzip``: farmer 0.1.8 labels every plain JSON /answer body gzip, and
    the original node ignored the label; there a body that is not gzip is taken as it is.
    """
    limit = body_limit(request)
    try:
        if limit == request.app[NODE].settings.max_body:  # aiohttp's client_max_size
            raw = await request.read()
        else:
            raw = await _read_up_to(request, limit)
    except RequestPayloadError:
        raise UnreadableBody("bad_request", UNDECODABLE) from None
    except ConnectionResetError:
        raise ClientGone from None
    codings = content_codings(request.headers.get("Content-Encoding", ""))
    if codings is None:  # br, zstd, compress...: this node decodes none of them
        raise UnreadableBody("bad_request", UNDECODABLE)
    try:
        for coding in reversed(codings):  # listed in the order they were applied
            raw = _decompress(raw, coding, limit)
    except zlib.error:
        if lenient_gzip and codings == ["gzip"]:
            return raw
        raise UnreadableBody("bad_request", UNDECODABLE) from None
    return raw


def content_codings(header: str) -> list[str] | None:
    """A ``Content-Encoding`` header's codings (RFC 9110: a list, in the order applied),
    ``identity`` left out; None if any is one this node cannot decode."""
    codings = []
    for item in header.split(","):
        coding = item.strip().lower()
        if coding in ("", "identity"):
            continue
        coding = {"x-gzip": "gzip"}.get(coding, coding)
        if coding not in ("gzip", "deflate"):
            return None
        codings.append(coding)
    return codings


async def _read_up_to(request: web.Request, limit: int) -> bytes:
    body = bytearray()
    async for piece in request.content.iter_any():
        body += piece
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    return bytes(body)


def _decompress(raw: bytes, encoding: str, limit: int) -> bytes:
    """gzip (concatenated members too) or deflate (zlib-wrapped or raw, as aiohttp took it);
    ``zlib.error`` for anything else, 413 past ``limit`` decoded bytes."""
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    else:
        wbits = zlib.MAX_WBITS if raw[:1] and raw[0] & 0xF == 8 else -zlib.MAX_WBITS
    out = bytearray()
    rest = raw
    while True:
        decoder = zlib.decompressobj(wbits)
        out += decoder.decompress(rest, limit + 1 - len(out))
        if len(out) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(out))
        if not decoder.eof:
            raise zlib.error("the stream ends early")
        rest = decoder.unused_data
        if not rest or encoding != "gzip":
            return bytes(out)


async def read_json_object(request: web.Request, *, lenient_gzip: bool = False) -> dict[str, Any]:
    """The body as a JSON object; ``bad_request`` otherwise (413 comes from ``read_body``)."""
    body = await read_body(request, lenient_gzip=lenient_gzip)
    if not body.strip():
        raise Refused("bad_request", 'the body is empty; send a JSON object like {"proof": {}}')
    try:
        data = loads_strict(body)
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise Refused("bad_request", f"the body is not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise Refused("bad_request", f"the body must be a JSON object, not {json_kind(data)}")
    return data


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


async def _token_param(request: web.Request) -> str:
    token = check_token(request.match_info["token"])
    await request.app[LIMITER].check(token)
    return token


# -- handlers -----------------------------------------------------------------------------------


async def new_token(request: web.Request) -> web.Response:
    await limit_new_tokens(request)
    address = check_address(request.match_info["sjcx_address"])
    token, heartbeat = await request.app[NODE].create_token(address, context(request))
    return reply(sc.new_token_schema, {"token": token, "heartbeat": heartbeat})


async def chunk(request: web.Request) -> web.Response:
    token = await _token_param(request)
    contract = await request.app[NODE].chunk(token, context(request))
    return reply(sc.chunk_schema, contract)


async def remove(request: web.Request) -> web.Response:
    token = await _token_param(request)
    file_hash = check_hash(request.match_info["file_hash"])
    await request.app[NODE].remove(token, file_hash, context(request))
    return reply(sc.status_schema, {"status": "ok"})


async def due(request: web.Request) -> web.Response:
    token = await _token_param(request)
    return reply(sc.due_schema, await request.app[NODE].due(token, context(request)))


async def answer(request: web.Request) -> web.Response:
    token = await _token_param(request)
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
