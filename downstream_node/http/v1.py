"""The v1 API under ``/api/downstream/v1``, as the final original node served it and as farmer
0.1.8 calls it (protocol v1): signed ``/new``, ``/heartbeat``, bulk ``/chunk``, ``/challenge``
and ``/answer``, the public ``/status`` routes, and ``GET /`` (the farmer's first request).

Errors have the original's shape, ``{"status": "error", "message": <the original's text>}``,
with its codes (400, 404), except where this node refuses for reasons of its own (429 rate
limits, 503 busy or database down, 413 too large); farmer 0.1.8 reads only the message.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..domain.errors import Refused
from ..service.v1 import SignatureRefused
from . import schemas as sc
from . import schemas_v1 as s1
from .routes import (
    BODY_LIMITS,
    LIMITER,
    NODE,
    TOKEN_RE,
    RateLimited,
    UnreadableBody,
    client_group,
    context,
    limit_new_tokens,
    loads_strict,
    read_body,
    reply,
)

V1 = "/api/downstream/v1"
NO_TOKEN = "Nonexistent token."
NO_FARMER = "Nonexistent farmer id."
GET_NEW = "New token requests must include posted signature proving ownership of farming address"
MALFORMED_NEW = 'Posted data must be JSON encoded object including "signature" and "message"'
NOT_WHITELISTED = "Invalid address given: address must be in whitelist."
DEFAULT_CHUNK_REQUEST = 33554432  # the original's DEFAULT_CHUNK_SIZE: the total asked for
# Digits beyond these are a number larger than any budget: no int() of a huge string.
MAX_DIGITS = 30
FARMER_ID_CHARS = 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class V1Error(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def v1_error(code: int, message: str) -> web.Response:
    return web.json_response(
        sc.error_schema.dump({"status": "error", "message": message}), status=code
    )


def v1_errors(no_token_code: int = 400) -> Callable[[Handler], Handler]:
    """Refusals in the original's shape and words (``Nonexistent token.`` is the one text the
    farmer acts on: it registers again)."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except V1Error as refused:
                return v1_error(refused.code, refused.message)
            except RateLimited as refused:
                response = v1_error(429, refused.message)
                response.headers["Retry-After"] = str(refused.retry_after)
                return response
            except Refused as refused:
                response = _refusal(request, refused, no_token_code)
                if isinstance(refused, UnreadableBody):
                    response.force_close()
                return response

        return wrapped

    return wrap


def _refusal(request: web.Request, refused: Refused, no_token_code: int) -> web.Response:
    word = refused.status
    if word == "no_token":
        return v1_error(no_token_code, NO_TOKEN)
    if word == "invalid_address":
        text = refused.message if isinstance(refused, SignatureRefused) else NOT_WHITELISTED
        return v1_error(400, text)
    if word == "too_many_tokens":
        most = request.app[NODE].settings.token_policy.max_tokens_per_ip
        return v1_error(400, f"IP Disallowed, only {most} tokens are permitted per IP address")
    response = v1_error(sc.STATUS_WORDS.get(word, (400, ""))[0], refused.message)
    if word == "busy":
        response.headers["Retry-After"] = "1"
    return response


async def _token(request: web.Request) -> str:
    token = request.match_info["token"]
    if not TOKEN_RE.match(token):
        raise Refused("no_token", NO_TOKEN)
    token = token.lower()
    await request.app[LIMITER].check(token)
    return token


async def _public(request: web.Request) -> None:
    """The public status routes read every farmer: limited per IP address, as a token's
    requests are (the same limiter, keys of their own)."""
    await request.app[LIMITER].check(f"ip:{client_group(request)}", "IP address")


def _number(text: str) -> int:
    """A path number (ASCII digits, as the routes match): its value, capped at 10**MAX_DIGITS
    without converting a huge string; leading zeros do not count towards the cap."""
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= MAX_DIGITS else 10**MAX_DIGITS


async def _json_body(request: web.Request, *, lenient_gzip: bool = False) -> Any:
    body = await read_body(request, lenient_gzip=lenient_gzip)
    try:
        return loads_strict(body)
    except (ValueError, RecursionError):
        return None


def _token_reply(token: str, heartbeat: dict[str, Any], kind: str) -> web.Response:
    return reply(s1.token_schema, {"token": token, "type": kind, "heartbeat": heartbeat})


# -- handlers -----------------------------------------------------------------------------------


async def root(request: web.Request) -> web.Response:
    """Farmer 0.1.8 opens the server root first and quits unless it answers 2xx."""
    return reply(s1.msg_schema, {"msg": "ok"})


@v1_errors()
async def new_get(request: web.Request) -> web.Response:
    raise V1Error(400, GET_NEW)


@v1_errors()
async def new_post(request: web.Request) -> web.Response:
    await limit_new_tokens(request)
    body = await _json_body(request)
    if not isinstance(body, dict) or "signature" not in body or "message" not in body:
        raise V1Error(400, MALFORMED_NEW)
    node = request.app[NODE]
    token, heartbeat = await node.v1.new_signed(
        request.match_info["sjcx_address"], body["message"], body["signature"], context(request)
    )
    return _token_reply(token, heartbeat, node.scheme.kind)


@v1_errors(no_token_code=404)
async def heartbeat(request: web.Request) -> web.Response:
    token = await _token(request)
    node = request.app[NODE]
    return _token_reply(token, await node.v1.heartbeat(token), node.scheme.kind)


@v1_errors()
async def chunk(request: web.Request) -> web.Response:
    token = await _token(request)
    size = request.match_info.get("size")
    wanted = _number(size) if size is not None else DEFAULT_CHUNK_REQUEST
    chunks = await request.app[NODE].v1.chunks(token, wanted, context(request))
    return reply(s1.chunks_schema, {"chunks": chunks})


@v1_errors()
async def challenge(request: web.Request) -> web.Response:
    token = await _token(request)
    hashes = None
    if request.method == "POST":
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("hashes"), list):
            raise Refused("bad_request", 'the body must be a JSON object {"hashes": [...]}')
        hashes = body["hashes"]
    items = await request.app[NODE].v1.challenges(token, hashes, context(request))
    return reply(s1.challenges_schema, {"challenges": items})


@v1_errors()
async def answer(request: web.Request) -> web.Response:
    token = await _token(request)
    body = await _json_body(request, lenient_gzip=True)
    if not isinstance(body, dict) or not isinstance(body.get("proofs"), list):
        raise Refused("bad_request", 'the body must be a JSON object {"proofs": [...]}')
    report = await request.app[NODE].v1.answer_all(token, body["proofs"], context(request))
    # Built by the command in the schema's shape (file_hash as sent, then status or error):
    # dumped as it is, not item by item through the schema, on the busiest v1 route.
    return web.json_response({"report": report})


def _lister(*, online: bool, descending: bool) -> Handler:
    @v1_errors()
    async def status_list(request: web.Request) -> web.Response:
        await _public(request)
        info = request.match_info
        limit = info.get("limit")
        farmers = await request.app[NODE].v1.farmers(
            sort=info.get("sortby", "id"),
            descending=descending,
            limit=_number(limit) if limit is not None else None,
            page=_number(info.get("page", "0")),
            online_only=online,
        )
        return reply(s1.farmers_schema, {"farmers": farmers})

    return status_list


@v1_errors()
async def status_show(request: web.Request) -> web.Response:
    await _public(request)
    farmer_id = request.match_info["farmer_id"]
    if len(farmer_id) != FARMER_ID_CHARS or not all(c in "0123456789abcdef" for c in farmer_id):
        raise V1Error(404, NO_FARMER)
    try:
        farmer = await request.app[NODE].v1.farmer(farmer_id)
    except Refused:
        raise V1Error(404, NO_FARMER) from None
    return reply(s1.farmer_schema, farmer)


# The list routes: (path under /status/list, descending); each also under /status/list/online.
LIST_PATHS = (
    ("/", False),
    ("/{limit:[0-9]+}", False),
    ("/{limit:[0-9]+}/{page:[0-9]+}", False),
    # The descending forms first: "by/d/x" is sortby "x", never sortby "d".
    ("/by/d/{sortby}", True),
    ("/by/d/{sortby}/{limit:[0-9]+}", True),
    ("/by/d/{sortby}/{limit:[0-9]+}/{page:[0-9]+}", True),
    ("/by/{sortby}", False),
    ("/by/{sortby}/{limit:[0-9]+}", False),
    ("/by/{sortby}/{limit:[0-9]+}/{page:[0-9]+}", False),
)


def list_paths() -> list[tuple[str, bool, bool]]:
    """Every status list path: (path, online only, descending)."""
    out = []
    for online in (False, True):
        base = V1 + "/status/list" + ("/online" if online else "")
        for tail, descending in LIST_PATHS:
            out.append((base + tail, online, descending))
    return out


def add_v1_routes(app: web.Application) -> None:
    node = app[NODE]
    get = {"allow_head": False}  # these GETs change state (tokens, contracts, challenges)
    app.router.add_get("/", root, name="root")
    app.router.add_get(V1 + "/", root, name="v1_index")
    app.router.add_get(V1 + "/new/{sjcx_address}", new_get, name="v1_new_get", **get)
    app.router.add_post(V1 + "/new/{sjcx_address}", new_post, name="v1_new")
    app.router.add_get(V1 + "/heartbeat/{token}", heartbeat, name="v1_heartbeat")
    app.router.add_get(V1 + "/chunk/{token}", chunk, name="v1_chunk", **get)
    app.router.add_get(V1 + "/chunk/{token}/{size:[0-9]+}", chunk, name="v1_chunk_size", **get)
    app.router.add_get(V1 + "/challenge/{token}", challenge, name="v1_challenge_all", **get)
    app.router.add_post(V1 + "/challenge/{token}", challenge, name="v1_challenge")
    app.router.add_post(V1 + "/answer/{token}", answer, name="v1_answer")
    for path, online, descending in list_paths():
        app.router.add_get(path, _lister(online=online, descending=descending))
    app.router.add_get(V1 + "/status/show/{farmer_id}", status_show, name="v1_status_show")
    # A farmer's batch of several hundred proofs (about 1 KiB each) in one /answer.
    app.setdefault(BODY_LIMITS, {})["v1_answer"] = node.settings.max_bulk_body
