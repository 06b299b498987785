"""The transparency log's public, read-only routes under ``/api/ledger``: the signed checkpoint,
the public feed, and RFC 9162 inclusion and consistency proofs, with their schemas and their
part of the OpenAPI document. Answers fixed by their parameters are cacheable for good.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from aiohttp import web
from apispec import APISpec
from marshmallow import fields

from ..domain.errors import Refused
from ..domain.public import PUBLIC_FIELDS
from ..service.ledger import MAX_PAGE
from . import schemas as sc
from .routes import NODE

PREFIX = "/api/ledger"
DEFAULT_PAGE = 100
IMMUTABLE = "public, max-age=31536000, immutable"
FRESH = "no-cache"
MAX_INT = 2**63 - 1
_DECIMAL = re.compile(r"[0-9]{1,19}")  # ASCII only: str.isdigit also takes "²"


class PublicEventSchema(sc._Base):
    event_type = fields.String(required=True)
    meta_commitment = fields.String(
        required=True,
        metadata={
            "description": "HMAC-SHA-256 (hex) of the event's stored meta under the event's "
            "own key, which the operator can reveal to open this one commitment."
        },
    )
    occurred_at = fields.Integer(required=True, metadata={"description": "UTC microseconds."})
    payload = fields.Dict(
        required=True,
        metadata={"description": "As recorded; TokenCreated's ip is a keyed pseudonym."},
    )
    position = fields.Integer(required=True)
    schema_version = fields.Integer(required=True)
    stream_id = fields.String(
        required=True, metadata={"description": "ip-<address> streams appear as ip-hmac-<hex>."}
    )
    version = fields.Integer(required=True)
    leaf_hash = fields.String(
        required=True,
        metadata={
            "description": "Base64 SHA-256(0x00 || canonical JSON of the other fields): the "
            "event's leaf in the log's RFC 6962 tree. Recompute it rather than trust it."
        },
    )


class EventPageSchema(sc._Base):
    events = fields.List(fields.Nested(PublicEventSchema), required=True)
    next = fields.Integer(
        required=True, metadata={"description": "The last position returned: ask after it."}
    )


class ProofSchema(sc._Base):
    hashes = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "The RFC 9162 proof's hashes, base64, in order."},
    )


event_page_schema = EventPageSchema()
proof_schema = ProofSchema()
assert set(PUBLIC_FIELDS) | {"leaf_hash"} == set(PublicEventSchema().fields)


def _int(request: web.Request, name: str, default: int | None = None, *, minimum: int = 0) -> int:
    """A query parameter as the OpenAPI document declares it: a decimal in
    ``minimum..MAX_INT``; ``bad_request`` otherwise."""
    text = request.query.get(name)
    if text is None:
        if default is None:
            raise Refused("bad_request", f"the query parameter {name} is required")
        return default
    if not _DECIMAL.fullmatch(text) or not minimum <= int(text) <= MAX_INT:
        raise Refused(
            "bad_request", f"{name} must be an integer from {minimum} up, not {text[:40]!r}"
        )
    return int(text)


def _proof(hashes: list[bytes]) -> web.Response:
    response = web.json_response(
        proof_schema.dump({"hashes": [base64.b64encode(h).decode() for h in hashes]})
    )
    # A proof between given sizes never changes once the tree has those sizes.
    response.headers["Cache-Control"] = IMMUTABLE
    return response


async def checkpoint(request: web.Request) -> web.Response:
    text = await request.app[NODE].ledger.checkpoint()
    response = web.Response(text=text, content_type="text/plain", charset="utf-8")
    response.headers["Cache-Control"] = FRESH
    return response


async def events(request: web.Request) -> web.Response:
    after = _int(request, "after", 0)
    limit = _int(request, "limit", DEFAULT_PAGE)
    node = request.app[NODE]
    page = await node.ledger.events(after, limit)
    # A page of 1000 events with their tags is megabytes of JSON: encoded off the event loop.
    body = await node.rt.run(lambda: json.dumps(event_page_schema.dump(page)).encode())
    response = web.Response(body=body, content_type="application/json")
    # A full page below the tree's size holds committed events only: it never changes.
    full = len(page["events"]) == limit
    response.headers["Cache-Control"] = IMMUTABLE if full else FRESH
    return response


async def inclusion(request: web.Request) -> web.Response:
    position, size = _int(request, "position", minimum=1), _int(request, "size", minimum=1)
    return _proof(await request.app[NODE].ledger.inclusion(position, size))


async def consistency(request: web.Request) -> web.Response:
    first, second = _int(request, "first"), _int(request, "second")
    return _proof(await request.app[NODE].ledger.consistency(first, second))


def add_ledger_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX + "/checkpoint", checkpoint, name="ledger_checkpoint")
    app.router.add_get(PREFIX + "/events", events, name="ledger_events")
    app.router.add_get(PREFIX + "/proof/inclusion", inclusion, name="ledger_inclusion")
    app.router.add_get(PREFIX + "/proof/consistency", consistency, name="ledger_consistency")


# -- the OpenAPI part ---------------------------------------------------------------------------

SCHEMAS = {"PublicEvent": PublicEventSchema, "EventPage": EventPageSchema, "Proof": ProofSchema}


def _query(name: str, description: str, *, required: bool = True, **schema: Any) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_INT, **schema},
    }


def add_ledger_paths(spec: APISpec, responses: Any) -> None:
    """The routes above in ``spec``; ``responses(ok, schema, *words)`` as openapi.py makes
    them."""
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    spec.path(
        path=PREFIX + "/checkpoint",
        operations={
            "get": {
                "operationId": "ledgerCheckpoint",
                "summary": "Signed checkpoint",
                "description": "The log's latest C2SP tlog-checkpoint: origin, tree size and "
                "base64 RFC 6962 root, signed (Ed25519 signed note) by the key the ledger's "
                "LogKeyConfigured event names.",
                "responses": {
                    "200": {
                        "description": "The signed note.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "503": {
                        "description": "`error`: the database is unreachable.",
                        "content": {"application/json": {"schema": sc.ErrorSchema}},
                    },
                },
            }
        },
    )
    spec.path(
        path=PREFIX + "/events",
        parameters=[
            _query("after", "Events after this position (default 0).", required=False),
            _query(
                "limit",
                f"At most this many (default {DEFAULT_PAGE}).",
                required=False,
                minimum=1,
                maximum=MAX_PAGE,
            ),
        ],
        operations={
            "get": {
                "operationId": "ledgerEvents",
                "summary": "Public feed",
                "description": "The events' public forms in position order, each with its "
                "leaf hash. A full page is immutable (cacheable for good).",
                "responses": responses("A page.", EventPageSchema, "bad_request"),
            }
        },
    )
    spec.path(
        path=PREFIX + "/proof/inclusion",
        parameters=[
            _query("position", "The event's position (its leaf index is position - 1).", minimum=1),
            _query("size", "The tree size the proof is for.", minimum=1),
        ],
        operations={
            "get": {
                "operationId": "ledgerInclusionProof",
                "summary": "Inclusion proof",
                "description": "RFC 9162 inclusion proof (audit path) of an event in a tree.",
                "responses": responses("The proof.", ProofSchema, "bad_request", "not_in_log"),
            }
        },
    )
    spec.path(
        path=PREFIX + "/proof/consistency",
        parameters=[
            _query("first", "The older tree size."),
            _query("second", "The newer tree size."),
        ],
        operations={
            "get": {
                "operationId": "ledgerConsistencyProof",
                "summary": "Consistency proof",
                "description": "RFC 9162 proof that the tree of size first is a prefix of "
                "the tree of size second.",
                "responses": responses("The proof.", ProofSchema, "bad_request", "not_in_log"),
            }
        },
    )
