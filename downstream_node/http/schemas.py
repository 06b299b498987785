"""Marshmallow schemas of every request and response body, and the API's status words.

Handlers dump every response through these schemas and load every request body with them;
the OpenAPI document is generated from the same classes, so the docs cannot drift from the
wire. Heartbeat objects (``heartbeat``, ``challenge``, ``tag``, ``proof``) are the heartbeat
library's ``todict()`` forms and travel as free-form JSON objects.
"""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

# Status word -> (HTTP code, when it is sent). The seed README's words are kept exactly
# (invalid_address, no_chunks, no_token, no_hash, error); the others are ours.
STATUS_WORDS: dict[str, tuple[int, str]] = {
    "invalid_address": (
        400,
        "The address is not a Base58Check address of 26 to 35 characters, is not on the "
        "crowdsale whitelist, or holds less than the minimum balance.",
    ),
    "bad_request": (
        400,
        "The request body is not valid JSON, not a JSON object, or lacks a required key.",
    ),
    "bad_proof_format": (400, "The proof is not a well-formed proof of the node's heartbeat."),
    "no_token": (
        404,
        "No such token: unknown, deleted, or not 32 hexadecimal characters.",
    ),
    "no_hash": (
        404,
        "The token holds no live contract for this file hash (never taken, removed, expired "
        "or ended), or the hash is not 64 hexadecimal characters.",
    ),
    "no_chunks": (404, "No chunk is available for this token right now; ask again later."),
    "not_found": (404, "No such route."),
    "method_not_allowed": (405, "The route exists but not with this HTTP method."),
    "already_answered": (409, "The current challenge of this contract was already answered."),
    "expired": (
        410,
        "The challenge expired before the answer arrived; the contract has ended.",
    ),
    "too_large": (413, "The request body is larger than the node accepts."),
    "too_many_tokens": (429, "This IP address already holds the maximum number of tokens."),
    "too_many_failures": (
        429,
        "Eight wrong answers were recorded for this challenge; answer the next one.",
    ),
    "too_many_requests": (
        429,
        "More requests this minute than the node allows (per token; for /new, per IP "
        "address); see Retry-After.",
    ),
    "not_in_log": (
        404,
        "The position or tree size is beyond the transparency log's current tree.",
    ),
    "error": (
        500,
        "An unexpected error on the node (a bug; it is logged with the request id). "
        "Sent with 503 when the database is unreachable.",
    ),
    "busy": (
        503,
        "Too much contention on this contract, file or IP address; retry (see Retry-After).",
    ),
}

ANSWER_WORDS = ("pass", "fail")

TIME_DOC = "ISO 8601 UTC timestamp, e.g. 2014-10-02T14:22:09Z"
HEX64 = "^[0-9a-f]{64}$"


class _Base(Schema):
    class Meta:
        unknown = EXCLUDE
        ordered = True


def _object(description: str, example: dict | None = None, **kwargs: object) -> fields.Dict:
    metadata: dict[str, object] = {"description": description}
    if example is not None:
        metadata["example"] = example
    return fields.Dict(keys=fields.String(), metadata=metadata, **kwargs)  # type: ignore[arg-type]


MERKLE_CHALLENGE = {"seed": "7p4WTZ1lUgozVZSi8cPfUAADjVdQdYhttvZVNBuNskE=", "index": 0}
MERKLE_PROOF = {
    "leaf": {"index": 0, "blob": "Base64 of the leaf HMAC"},
    "branch": {"rows": [["Base64 left", "Base64 right"]]},
}


class ErrorSchema(_Base):
    status = fields.String(
        required=True,
        validate=validate.OneOf(list(STATUS_WORDS)),
        metadata={"description": "A status word (see the table in the description)."},
    )
    message = fields.String(
        required=True, metadata={"description": "A sentence for humans; never parse it."}
    )


class StatusSchema(_Base):
    status = fields.String(
        required=True,
        validate=validate.OneOf(["ok"]),
        metadata={"description": "Always `ok` on success."},
    )


class AnswerResultSchema(_Base):
    status = fields.String(
        required=True,
        validate=validate.OneOf(list(ANSWER_WORDS)),
        metadata={
            "description": "`pass` when the proof is valid (a heartbeat is counted), `fail` "
            "when it is not (the challenge stays open until it expires)."
        },
    )
    receipt = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "The node's signed receipt for the recorded verdict: a C2SP signed "
            "note `<origin>\\nreceipt\\n<position>\\n<base64 leaf hash>\\n` under the log's "
            "key. Keep it: an inclusion proof against any later checkpoint shows the verdict "
            "is still in the ledger. The same answer sent again gets the same receipt."
        },
    )


class NewTokenSchema(_Base):
    token = fields.String(
        required=True,
        validate=validate.Regexp("^[0-9a-f]{32}$"),
        metadata={"description": "The secret token: 32 hex characters. Keep it private."},
    )
    heartbeat = _object(
        "The node's public heartbeat (`get_public().todict()`), used to prove.",
        {"key": "", "check_fraction": 0.01},
        required=True,
    )


class ChunkSchema(_Base):
    seed = fields.String(
        required=True,
        metadata={"description": "The string the chunk's bytes are regenerated from."},
    )
    file_hash = fields.String(
        required=True,
        validate=validate.Regexp(HEX64),
        metadata={"description": "SHA-256 of the chunk (64 hex); the contract's name."},
    )
    size = fields.Integer(required=True, metadata={"description": "Chunk size in bytes."})
    challenge = _object("The first challenge.", MERKLE_CHALLENGE, required=True)
    tag = _object("The chunk's heartbeat tag, needed to prove.", required=True)
    due = fields.String(required=True, metadata={"description": f"When it is due; {TIME_DOC}"})
    expiration = fields.String(
        required=True,
        metadata={"description": f"When the contract lapses unless answered; {TIME_DOC}"},
    )


class ContractHashSchema(_Base):
    hash = fields.String(
        required=True, validate=validate.Regexp(HEX64), metadata={"description": "File hash."}
    )


class DueContractSchema(_Base):
    hash = fields.String(
        required=True, validate=validate.Regexp(HEX64), metadata={"description": "File hash."}
    )
    challenge = _object("The open challenge to answer.", MERKLE_CHALLENGE, required=True)
    due = fields.String(
        required=True, metadata={"description": f"When the challenge was issued for; {TIME_DOC}"}
    )
    expiration = fields.String(
        required=True, metadata={"description": f"Answer before this; {TIME_DOC}"}
    )


class DueSchema(_Base):
    all_contracts = fields.List(
        fields.Nested(ContractHashSchema),
        required=True,
        metadata={"description": "Every live contract of the token."},
    )
    due_contracts = fields.List(
        fields.Nested(DueContractSchema),
        required=True,
        metadata={"description": "The contracts with an unanswered challenge."},
    )


class AnswerRequestSchema(_Base):
    proof = _object(
        "The proof (`prove(file, challenge, tag).todict()`).", MERKLE_PROOF, required=True
    )


class HealthSchema(_Base):
    status = fields.String(
        required=True,
        validate=validate.OneOf(["ok", "unavailable"]),
        metadata={"description": "`ok`, or `unavailable` (HTTP 503) without a database."},
    )
    database = fields.Boolean(
        required=True, metadata={"description": "Whether the database answered."}
    )
    position = fields.Integer(metadata={"description": "The ledger's head position."})
    projection_lag = fields.Integer(
        metadata={"description": "Events appended but not yet in the read model."}
    )
    generation = fields.Integer(metadata={"description": "The live projection generation."})
    message = fields.String(metadata={"description": "Why the node is unavailable."})


error_schema = ErrorSchema()
status_schema = StatusSchema()
answer_result_schema = AnswerResultSchema()
new_token_schema = NewTokenSchema()
chunk_schema = ChunkSchema()
due_schema = DueSchema()
answer_request_schema = AnswerRequestSchema()
health_schema = HealthSchema()
