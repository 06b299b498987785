"""The v1 API's part of the OpenAPI document (``build_spec`` in ``openapi.py`` calls
``add_v1_paths``): every route of ``http/v1.py`` with its parameters, bodies and the codes it
may answer, so that ``/api/docs`` shows them and the schemathesis run fuzzes them.
"""

from __future__ import annotations

import re
from typing import Any

from apispec import APISpec
from marshmallow import Schema

from ..service.v1 import SORT_KEYS
from . import schemas_v1 as s1
from .v1 import V1, list_paths

SCHEMAS: dict[str, type[Schema]] = {
    "V1Msg": s1.MsgSchema,
    "V1NewRequest": s1.NewRequestSchema,
    "V1Token": s1.TokenSchema,
    "V1Chunk": s1.ChunkSchema,
    "V1Chunks": s1.ChunksSchema,
    "V1ChallengeRequest": s1.ChallengeRequestSchema,
    "V1ChallengeItem": s1.ChallengeItemSchema,
    "V1Challenges": s1.ChallengesSchema,
    "V1ProofItem": s1.ProofItemSchema,
    "V1AnswerRequest": s1.AnswerRequestSchema,
    "V1ReportItem": s1.ReportItemSchema,
    "V1Report": s1.ReportSchema,
    "V1Farmer": s1.FarmerSchema,
    "V1Farmers": s1.FarmersSchema,
}

# A route's {name:regex} segment, which OpenAPI writes {name}.
ROUTE_PATTERN = re.compile(r"\{(\w+):[^}]+\}")
TOKEN = {
    "name": "token",
    "in": "path",
    "required": True,
    "description": "The secret token from /new.",
    "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"},
}
ADDRESS = {
    "name": "sjcx_address",
    "in": "path",
    "required": True,
    "description": "The farmer's SJCX address (a Bitcoin P2PKH address, `1...`).",
    "schema": {"type": "string", "minLength": 26, "maxLength": 35},
}


def _int(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "integer", "minimum": 0},
    }


SIZE = _int("size", "The total bytes wanted (the farmer's space left to fill).")
LIMIT = _int("limit", "Farmers per page.")
PAGE = _int("page", "Page number, from 0 (offset = limit x page).")
SORTBY = {
    "name": "sortby",
    "in": "path",
    "required": True,
    "description": "The key to sort by.",
    "schema": {"type": "string", "enum": list(SORT_KEYS)},
}
FARMER_ID = {
    "name": "farmer_id",
    "in": "path",
    "required": True,
    "description": "A farmer id from the status list (20 hex digits).",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{20}$"},
}

# What each code means on the v1 routes (the body is always {"status": "error", "message"}).
CODES = {
    400: "A refusal in the original's words: `Nonexistent token.`, a signature or whitelist "
    "refusal, `IP Disallowed, ...`, `Invalid sort.`, or a body that is not what the route "
    "reads.",
    404: "`Nonexistent token.` (/heartbeat), `Nonexistent farmer id.`, or no such route.",
    413: "The body is larger than this route takes (`too_large`).",
    429: "Too many requests this minute, per token (the status routes: per IP address); "
    "see Retry-After.",
    500: "An unexpected error on the node (a bug; it is logged with the request id).",
    503: "Too much contention, or the database is unreachable (see Retry-After).",
}


def _json(schema: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _responses(ok: str, schema: str, *codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": ok, **_json(schema)}}
    for code in sorted({*codes, 500, 503}):
        out[str(code)] = {"description": CODES[code], **_json("Error")}
    return out


def _op(op_id: str, summary: str, description: str, responses: dict, **more: Any) -> dict:
    return {
        "operationId": op_id,
        "summary": summary,
        "description": description,
        "responses": responses,
        **more,
    }


def _body(schema: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, **_json(schema)}}


def add_v1_paths(spec: APISpec) -> None:
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    msg = '`{"msg": "ok"}`: the node answers.'
    spec.path(
        path="/",
        operations={
            "get": _op(
                "root",
                "Server root",
                "Farmer 0.1.8 opens the server root first and quits unless it answers 2xx.",
                {"200": {"description": msg, **_json("V1Msg")}},
            )
        },
    )
    spec.path(
        path=V1 + "/",
        operations={
            "get": _op("v1Index", "v1 index", msg, {"200": {"description": msg, **_json("V1Msg")}})
        },
    )
    spec.path(
        path=V1 + "/new/{sjcx_address}",
        parameters=[ADDRESS],
        operations={
            "get": _op(
                "v1NewGet",
                "New token (refused)",
                "A new token must be asked for with a POST carrying a signature: always 400.",
                {"400": {"description": CODES[400], **_json("Error")}},
            ),
            "post": _op(
                "v1New",
                "New token, signed",
                "A token for a whitelisted address whose owner signed `message` with the "
                "address's key (a Bitcoin signed message, compressed or uncompressed key). "
                "Every token gets the node's one public heartbeat.",
                _responses("The token.", "V1Token", 400, 413, 429),
                **_body("V1NewRequest"),
            ),
        },
    )
    spec.path(
        path=V1 + "/heartbeat/{token}",
        parameters=[TOKEN],
        operations={
            "get": _op(
                "v1Heartbeat",
                "Token check",
                "The token's heartbeat type and public heartbeat, as /new gave them; "
                "404 `Nonexistent token.` tells the farmer to register again.",
                _responses("The token.", "V1Token", 404, 429),
            )
        },
    )
    chunk_doc = (
        "New contracts: each time the largest pooled seeded chunk that still fits, at most 10, "
        "adding up to at most `size` (default 33554432) and to what the address may still "
        "hold across all its tokens (1 GiB)."
    )
    spec.path(
        path=V1 + "/chunk/{token}",
        parameters=[TOKEN],
        operations={
            "get": _op(
                "v1Chunk",
                "Contracts",
                chunk_doc,
                _responses("The contracts.", "V1Chunks", 400, 429),
            )
        },
    )
    spec.path(
        path=V1 + "/chunk/{token}/{size}",
        parameters=[TOKEN, SIZE],
        operations={
            "get": _op(
                "v1ChunkSize",
                "Contracts up to a size",
                chunk_doc,
                _responses("The contracts.", "V1Chunks", 400, 404, 429),
            )
        },
    )
    challenge_doc = (
        "Per contract: the open challenge (`answered: true` means come back after `due`), the "
        "next one once the answered one fell due (due one interval after the old due), or why "
        "there is none. A per-item problem is inside the 200."
    )
    spec.path(
        path=V1 + "/challenge/{token}",
        parameters=[TOKEN],
        operations={
            "get": _op(
                "v1ChallengeAll",
                "Challenges of every contract",
                challenge_doc,
                _responses("One item per contract.", "V1Challenges", 400, 429),
            ),
            "post": _op(
                "v1Challenge",
                "Challenges",
                challenge_doc,
                _responses("One item per hash.", "V1Challenges", 400, 413, 429),
                **_body("V1ChallengeRequest"),
            ),
        },
    )
    spec.path(
        path=V1 + "/answer/{token}",
        parameters=[TOKEN],
        operations={
            "post": _op(
                "v1Answer",
                "Answers",
                "Proofs, each verified and recorded as the per-contract answer route records "
                "it; a result per proof inside the 200. The body may be plain JSON even when "
                "labelled `Content-Encoding: gzip` (farmer 0.1.8 labels every one so), or "
                "really gzipped; up to several MiB.",
                _responses("One result per proof, in order.", "V1Report", 400, 413, 429),
                **_body("V1AnswerRequest"),
            )
        },
    )
    for path, online, descending in list_paths():
        canonical = ROUTE_PATTERN.sub(r"{\1}", path)  # {limit:[0-9]+} is {limit} to OpenAPI
        params = [
            p
            for key, p in (("{sortby}", SORTBY), ("{limit}", LIMIT), ("{page}", PAGE))
            if key in canonical
        ]
        op_id = "v1StatusList" + "".join(
            part.strip("{}").title() for part in canonical[len(V1 + "/status/list") :].split("/")
        )
        spec.path(
            path=canonical,
            parameters=params,
            operations={
                "get": _op(
                    op_id,
                    "Farmers" + (", online only" if online else ""),
                    "Every live token as a farmer: sorted"
                    + (" descending" if descending else "")
                    + ", "
                    + ("online ones only, " if online else "")
                    + "then paged.",
                    _responses("The farmers.", "V1Farmers", 400, 429, *([404] if params else [])),
                )
            },
        )
    spec.path(
        path=V1 + "/status/show/{farmer_id}",
        parameters=[FARMER_ID],
        operations={
            "get": _op(
                "v1StatusShow",
                "One farmer",
                "The farmer's status, with the same keys and meaning as in the list.",
                _responses("The farmer.", "V1Farmer", 404, 429),
            )
        },
    )
