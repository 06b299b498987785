"""Marshmallow schemas of the v1 API's bodies (farmer 0.1.8, protocol v1), for the handlers in
``http/v1.py`` and for the OpenAPI document. Keys and JSON types are the original node's; a
``file_hash`` is echoed exactly as the farmer sent it, whatever its JSON type.
"""

from __future__ import annotations

from marshmallow import fields, validate

from .schemas import MERKLE_CHALLENGE, MERKLE_PROOF, _Base, _object

TOKEN_PATTERN = "^[0-9a-f]{32}$"
FILE_HASH_DOC = (
    "The contract's name: the chunk's SHA-256 as 64 hex characters. Echoed exactly as sent."
)


class MsgSchema(_Base):
    msg = fields.String(required=True, metadata={"description": "Always `ok`."})


class NewRequestSchema(_Base):
    message = fields.String(
        required=True,
        metadata={"description": "The signed message (at most 1024 characters)."},
    )
    signature = fields.String(
        required=True,
        metadata={
            "description": "Bitcoin signed-message signature of `message` by the address's "
            "key: base64 of 65 bytes, 88 characters."
        },
    )


class TokenSchema(_Base):
    token = fields.String(
        required=True,
        validate=validate.Regexp(TOKEN_PATTERN),
        metadata={"description": "The secret token: 32 hex characters. Keep it private."},
    )
    type = fields.String(
        required=True,
        validate=validate.OneOf(["Merkle", "Swizzle"]),
        metadata={"description": "The heartbeat's class name; farmer 0.1.8 speaks `Merkle`."},
    )
    heartbeat = _object(
        "The node's public heartbeat (`fromdict` of `type`).",
        {"key": "", "check_fraction": 0.01},
        required=True,
    )


class ChunkSchema(_Base):
    file_hash = fields.String(required=True, metadata={"description": FILE_HASH_DOC})
    seed = fields.String(
        required=True,
        metadata={"description": "The RandomIO seed the chunk's bytes are written from."},
    )
    size = fields.Integer(required=True, metadata={"description": "Chunk size in bytes."})
    challenge = _object("The first challenge.", MERKLE_CHALLENGE, required=True)
    tag = _object("The chunk's heartbeat tag, needed to prove.", required=True)
    due = fields.Float(
        required=True,
        metadata={"description": "Seconds from now until the challenge must be answered."},
    )


class ChunksSchema(_Base):
    chunks = fields.List(
        fields.Nested(ChunkSchema),
        required=True,
        metadata={
            "description": "New contracts, at most 10, adding up to at most the size asked "
            "for and to what the address may still hold; may be empty."
        },
    )


class ChallengeRequestSchema(_Base):
    hashes = fields.List(
        fields.Raw(),
        required=True,
        metadata={"description": "The `file_hash` of each contract to bring up to date."},
    )


class ChallengeItemSchema(_Base):
    file_hash = fields.Raw(required=True, metadata={"description": FILE_HASH_DOC})
    challenge = _object("The challenge to answer.", MERKLE_CHALLENGE)
    due = fields.Float(metadata={"description": "Seconds from now until it must be answered."})
    answered = fields.Boolean(
        metadata={"description": "True: already answered; ask again after `due`."}
    )
    error = fields.String(metadata={"description": "`contract not found`, `contract expired`."})
    status = fields.String(metadata={"description": "`no more challenges`: the contract ended."})


class ChallengesSchema(_Base):
    challenges = fields.List(
        fields.Nested(ChallengeItemSchema),
        required=True,
        metadata={"description": "One item per hash asked (every contract for a GET)."},
    )


class ProofItemSchema(_Base):
    file_hash = fields.Raw(required=True, metadata={"description": FILE_HASH_DOC})
    proof = _object("The proof for the contract's open challenge.", MERKLE_PROOF, required=True)


class AnswerRequestSchema(_Base):
    proofs = fields.List(
        fields.Nested(ProofItemSchema),
        required=True,
        metadata={"description": "Proofs, each verified and recorded on its own."},
    )


class ReportItemSchema(_Base):
    file_hash = fields.Raw(required=True, metadata={"description": FILE_HASH_DOC})
    status = fields.String(
        validate=validate.OneOf(["ok"]),
        metadata={"description": "`ok`: the proof is valid; a heartbeat is counted."},
    )
    error = fields.String(
        metadata={
            "description": "`contract not found`, `Proof corrupted`, `Answer failed: contract "
            "expired.`, `Challenge already answered.`, `Invalid proof`."
        }
    )
    receipt = fields.String(
        allow_none=True,
        metadata={
            "description": "For a recorded verdict (`ok` or `Invalid proof`): the node's signed "
            "receipt, a C2SP signed note promising the verdict event's position and leaf hash "
            "(see /api/ledger)."
        },
    )


class ReportSchema(_Base):
    report = fields.List(
        fields.Nested(ReportItemSchema),
        required=True,
        metadata={"description": "One item per proof, in the order sent."},
    )


class FarmerSchema(_Base):
    id = fields.String(
        required=True,
        validate=validate.Regexp("^[0-9a-f]{20}$"),
        metadata={"description": "The farmer id: the first 20 hex digits of the token's hash."},
    )
    address = fields.String(required=True, metadata={"description": "The SJCX address."})
    location = fields.Dict(
        required=True,
        allow_none=True,
        metadata={
            "description": "`{country, state, city, zip, lat, lon}` from the operator's GeoIP "
            "database, else null."
        },
    )
    uptime = fields.Float(
        required=True,
        metadata={"description": "Percent of the time since its first contract spent online."},
    )
    heartbeats = fields.Integer(required=True, metadata={"description": "Accepted proofs."})
    contracts = fields.Integer(required=True, metadata={"description": "Online contracts."})
    last_due = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The latest due time of its online contracts (ISO 8601 UTC)."},
    )
    size = fields.Integer(required=True, metadata={"description": "Bytes under online contracts."})
    online = fields.Boolean(required=True, metadata={"description": "Any contract online."})


class FarmersSchema(_Base):
    farmers = fields.List(fields.Nested(FarmerSchema), required=True)


msg_schema = MsgSchema()
token_schema = TokenSchema()
chunks_schema = ChunksSchema()
challenges_schema = ChallengesSchema()
report_schema = ReportSchema()
farmer_schema = FarmerSchema()
farmers_schema = FarmersSchema()
