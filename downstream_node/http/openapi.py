"""The API's OpenAPI 3 document, generated with apispec from the marshmallow schemas that the
handlers use, served at ``/api/openapi.json``, and a self-contained HTML page at ``/api/docs``
rendered from that same document (no scripts, no external assets, everything escaped).
"""

from __future__ import annotations

import html
import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema

from ..config import Settings
from . import schemas as sc
from .ledger import add_ledger_paths
from .openapi_v1 import add_v1_paths
from .routes import NODE, PREFIX

SCHEMAS: dict[str, type] = {
    "Error": sc.ErrorSchema,
    "Status": sc.StatusSchema,
    "AnswerResult": sc.AnswerResultSchema,
    "NewToken": sc.NewTokenSchema,
    "Chunk": sc.ChunkSchema,
    "ContractHash": sc.ContractHashSchema,
    "DueContract": sc.DueContractSchema,
    "Due": sc.DueSchema,
    "AnswerRequest": sc.AnswerRequestSchema,
    "Health": sc.HealthSchema,
}

PARAMS = {
    "sjcx_address": {
        "name": "sjcx_address",
        "in": "path",
        "required": True,
        "description": "The farmer's SJCX (Bitcoin-style Base58Check) address.",
        "schema": {
            "type": "string",
            "minLength": 26,
            "maxLength": 35,
            "pattern": "^[1-9A-HJ-NP-Za-km-z]{26,35}$",
        },
    },
    "token": {
        "name": "token",
        "in": "path",
        "required": True,
        "description": "The secret token from /new.",
        "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"},
    },
    "file_hash": {
        "name": "file_hash",
        "in": "path",
        "required": True,
        "description": "The contract's file hash (SHA-256, hex).",
        "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
    },
}


def _version() -> str:
    try:
        return version("downstream-node")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


def _description(settings: Settings) -> str:
    rows = "\n".join(
        f"| `{word}` | {code} | {meaning} |" for word, (code, meaning) in sc.STATUS_WORDS.items()
    )
    return (
        "The farmers' API of a downstream node: get a token for an SJCX address, take chunk "
        "contracts, answer their heartbeat challenges before they expire, end contracts. "
        "The 2014-10 routes are under `/api/downstream`; the v1 API of farmer 0.1.8 (signed "
        "`/new`, bulk routes, public status) under `/api/downstream/v1`, whose errors are "
        '`{"status": "error", "message": <the original node\'s text>}`.\n\n'
        'Every error is a JSON object `{"status": word, "message": sentence}`; clients '
        "branch on the word, never on the sentence. The words and their HTTP codes:\n\n"
        "| status | HTTP | meaning |\n|---|---|---|\n"
        f"{rows}\n\n"
        "Times are ISO 8601 UTC with a `Z` (`2014-10-02T14:22:09Z`). Heartbeat objects "
        "(`heartbeat`, `challenge`, `tag`, `proof`) are the heartbeat library's `todict()` "
        "forms. Every response carries `X-Request-Id` (the request's own if it sent a "
        "sane one, else a new one).\n\n"
        f"Limits of this node: request bodies up to {settings.max_body} bytes (the v1 bulk "
        f"`/answer`: {settings.max_bulk_body}); "
        f"{settings.token_policy.max_tokens_per_ip} live tokens per IP address; "
        f"{settings.requests_per_token_per_minute} requests per token per minute; "
        f"{settings.new_tokens_per_ip_per_minute} requests to `/new` per IP address per minute."
    )


def _json(schema: type[Schema]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _responses(ok: str, ok_schema: type[Schema], *words: str) -> dict[str, Any]:
    """The success response and one error response per HTTP code, listing its words."""
    out: dict[str, Any] = {"200": {"description": ok, **_json(ok_schema)}}
    by_code: dict[int, list[str]] = {}
    for word in (*words, "error"):
        by_code.setdefault(sc.STATUS_WORDS[word][0], []).append(
            f"`{word}`: {sc.STATUS_WORDS[word][1]}"
        )
    by_code.setdefault(503, []).append("`error`: the database is unreachable (see Retry-After).")
    for code, lines in sorted(by_code.items()):
        out[str(code)] = {"description": "\n\n".join(lines), **_json(sc.ErrorSchema)}
    return out


def build_spec(settings: Settings) -> dict[str, Any]:
    spec = APISpec(
        title="downstream-node farmer API",
        version=_version(),
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": _description(settings)},
    )
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    limited = ("too_many_requests",)
    spec.path(
        path=PREFIX + "/new/{sjcx_address}",
        parameters=[PARAMS["sjcx_address"]],
        operations={
            "get": {
                "operationId": "newToken",
                "summary": "New token",
                "description": "A new secret token for a whitelisted address, and the node's "
                "public heartbeat. One address may hold many tokens.",
                "responses": _responses(
                    "The token and heartbeat.",
                    sc.NewTokenSchema,
                    "invalid_address",
                    "too_many_tokens",
                    "busy",
                    *limited,
                ),
            }
        },
    )
    spec.path(
        path=PREFIX + "/chunk/{token}",
        parameters=[PARAMS["token"]],
        operations={
            "get": {
                "operationId": "chunk",
                "summary": "Get a chunk contract",
                "description": "A new contract on a chunk this token does not hold yet, with "
                "its first challenge. Regenerate the chunk's bytes from `seed`.",
                "responses": _responses(
                    "The contract.", sc.ChunkSchema, "no_token", "no_chunks", "busy", *limited
                ),
            }
        },
    )
    spec.path(
        path=PREFIX + "/remove/{token}/{file_hash}",
        parameters=[PARAMS["token"], PARAMS["file_hash"]],
        operations={
            "get": {
                "operationId": "remove",
                "summary": "End a chunk contract",
                "description": "The farmer drops the chunk; its replica returns to the pool.",
                "responses": _responses(
                    "Ended.", sc.StatusSchema, "no_token", "no_hash", "busy", *limited
                ),
            }
        },
    )
    spec.path(
        path=PREFIX + "/due/{token}",
        parameters=[PARAMS["token"]],
        operations={
            "get": {
                "operationId": "due",
                "summary": "Contract status",
                "description": "Every live contract of the token, and those with an open "
                "challenge. Asking after a contract's `due` time issues its next challenge; "
                "contracts past their expiration end and are no longer listed.",
                "responses": _responses("The contracts.", sc.DueSchema, "no_token", *limited),
            }
        },
    )
    spec.path(
        path=PREFIX + "/answer/{token}/{file_hash}",
        parameters=[PARAMS["token"], PARAMS["file_hash"]],
        operations={
            "post": {
                "operationId": "answer",
                "summary": "Answer a challenge",
                "description": "Send the proof for the contract's open challenge. A wrong "
                "proof is `fail` (the challenge stays open until it expires); a different "
                "answer after a pass is `already_answered`; an answer after the expiration "
                "is `expired` and ends the contract. Answers are idempotent: the same proof "
                "for the same challenge is verified and recorded once, and sent again (a "
                "retry after a 503 or a lost reply, or many copies at once) it gets the same "
                "verdict.",
                "requestBody": {"required": True, **_json(sc.AnswerRequestSchema)},
                "responses": _responses(
                    "The verdict.",
                    sc.AnswerResultSchema,
                    "bad_request",
                    "bad_proof_format",
                    "no_token",
                    "no_hash",
                    "already_answered",
                    "expired",
                    "too_many_failures",
                    "too_large",
                    "busy",
                    *limited,
                ),
            }
        },
    )
    add_ledger_paths(spec, _responses)
    spec.path(
        path="/health",
        operations={
            "get": {
                "operationId": "health",
                "summary": "Health",
                "description": "Whether the database answers, the ledger position and the "
                "projection lag.",
                "responses": {
                    "200": {"description": "Healthy.", **_json(sc.HealthSchema)},
                    "503": {
                        "description": "The database is unreachable.",
                        **_json(sc.HealthSchema),
                    },
                },
            }
        },
    )
    spec.path(
        path="/metrics",
        operations={
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "description": "Requests by route and status, latency, answers by verdict, "
                "events appended, ledger position, projection lag.",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    )
    add_v1_paths(spec)
    return spec.to_dict()


# -- the HTML page ------------------------------------------------------------------------------

CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
code,pre{font-family:ui-monospace,monospace;background:#f4f4f4;border-radius:3px}
code{padding:0 .25em}pre{padding:.6em;overflow:auto}
table{border-collapse:collapse;width:100%;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f0f0f0}.method{font-weight:bold;text-transform:uppercase;color:#fff;
padding:.1em .5em;border-radius:3px;background:#2a7}.post{background:#27a}
.op{margin:1.5em 0;padding:.5em 1em;border:1px solid #ddd;border-radius:5px}
.muted{color:#666}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _text(value: str) -> str:
    """Escaped text with `code` spans and paragraphs (the only markup the document uses)."""
    parts = _e(value).split("`")
    marked = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    return "".join(f"<p>{para}</p>" for para in marked.split("\n\n") if para.strip())


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _type_of(prop: dict[str, Any]) -> str:
    name = _ref_name(prop)
    if name:
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    if prop.get("type") == "array":
        return f"array of {_type_of(prop.get('items', {}))}"
    kind = _e(prop.get("type", "any"))
    if "enum" in prop:
        kind += " (" + ", ".join(f"<code>{_e(v)}</code>" for v in prop["enum"]) + ")"
    if "pattern" in prop:
        kind += f" <code>{_e(prop['pattern'])}</code>"
    return kind


def _content_schema(body: dict[str, Any]) -> str:
    for media, content in body.get("content", {}).items():
        schema = content.get("schema", {})
        name = _ref_name(schema)
        shown = f'<a href="#schema-{_e(name)}">{_e(name)}</a>' if name else _e(schema.get("type"))
        return f"<code>{_e(media)}</code> {shown}"
    return ""


def render_html(doc: dict[str, Any]) -> str:
    info = doc["info"]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(info['title'])}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(info['title'])}</h1>",
        f'<p class="muted">version {_e(info["version"])} · OpenAPI '
        f'{_e(doc["openapi"])} · <a href="/api/openapi.json">openapi.json</a></p>',
    ]
    intro = info.get("description", "").split("| status |")[0]
    out.append(_text(intro))
    out.append("<h2 id='status-words'>Status words</h2>")
    out.append("<table><tr><th>status</th><th>HTTP</th><th>meaning</th></tr>")
    for word, (code, meaning) in sc.STATUS_WORDS.items():
        out.append(
            f"<tr><td><code>{_e(word)}</code></td><td>{code}</td><td>{_e(meaning)}</td></tr>"
        )
    out.append("</table>")
    tail = info.get("description", "").split("\n\n")
    out.append(_text("\n\n".join(p for p in tail if p.startswith(("Times", "Limits")))))

    out.append("<h2 id='routes'>Routes</h2>")
    for path, item in doc["paths"].items():
        shared = item.get("parameters", [])
        for method, op in item.items():
            if method == "parameters":
                continue
            anchor = _e(op.get("operationId", path))
            out.append(f"<div class='op' id='op-{anchor}'>")
            out.append(
                f"<h3><span class='method {_e(method)}'>{_e(method)}</span> "
                f"<code>{_e(path)}</code> — {_e(op.get('summary', ''))}</h3>"
            )
            out.append(_text(op.get("description", "")))
            params = shared + op.get("parameters", [])
            if params:
                out.append(
                    "<table><tr><th>parameter</th><th>in</th><th>format</th>"
                    "<th>description</th></tr>"
                )
                for p in params:
                    out.append(
                        f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
                        f"<td>{_type_of(p.get('schema', {}))}</td>"
                        f"<td>{_e(p.get('description', ''))}</td></tr>"
                    )
                out.append("</table>")
            if "requestBody" in op:
                out.append(f"<p><b>Body:</b> {_content_schema(op['requestBody'])}</p>")
            out.append("<table><tr><th>HTTP</th><th>body</th><th>when</th></tr>")
            for code, response in op.get("responses", {}).items():
                out.append(
                    f"<tr><td>{_e(code)}</td><td>{_content_schema(response)}</td>"
                    f"<td>{_text(response.get('description', ''))}</td></tr>"
                )
            out.append("</table></div>")

    out.append("<h2 id='schemas'>Bodies</h2>")
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        out.append(f"<h3 id='schema-{_e(name)}'>{_e(name)}</h3>")
        required = set(schema.get("required", []))
        out.append("<table><tr><th>key</th><th>type</th><th>required</th><th>description</th></tr>")
        for key, prop in schema.get("properties", {}).items():
            example = prop.get("example")
            shown = f"<pre>{_e(json.dumps(example, indent=1))}</pre>" if example is not None else ""
            out.append(
                f"<tr><td><code>{_e(key)}</code></td><td>{_type_of(prop)}</td>"
                f"<td>{'yes' if key in required else 'no'}</td>"
                f"<td>{_text(prop.get('description', ''))}{shown}</td></tr>"
            )
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


# -- routes -------------------------------------------------------------------------------------

SPEC = web.AppKey("openapi", dict)
DOCS = web.AppKey("docs_html", str)
DOCS_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[SPEC])


async def docs_html(request: web.Request) -> web.Response:
    response = web.Response(text=request.app[DOCS], content_type="text/html")
    response.headers["Content-Security-Policy"] = DOCS_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def add_doc_routes(app: web.Application) -> None:
    """Build the document once (it depends only on the settings) and serve it."""
    app[SPEC] = build_spec(app[NODE].settings)
    app[DOCS] = render_html(app[SPEC])
    app.router.add_get("/api/openapi.json", openapi_json, name="openapi")
    app.router.add_get("/api/docs", docs_html, name="docs")
