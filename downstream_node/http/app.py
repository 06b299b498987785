"""The aiohttp application: factory, node life cycle, middlewares.

``create_app(node)`` returns an app that starts the node when the app starts and closes it
when the app stops (``cleanup_ctx``), optionally sweeping expired contracts in the
background. Two middlewares wrap every handler:

- ``observe``: takes the ``X-Request-Id`` header (or makes one), echoes it on the response,
  binds it to the log context, and writes one access-log line per request (request id,
  method, route template, path with tokens redacted, status, latency) and the metrics.
- ``errors``: refuses oversized bodies before they are read (413), maps a ``Refused`` to
  ``{"status": word, "message": sentence}`` with the word's HTTP code, answers unknown
  routes and methods with JSON 404/405, and turns anything unexpected into a logged
  ``500 {"status": "error"}``. A database that is unreachable, drops the connection or
  fails an append, or does not answer within the request's budget (``settings.db_wait``),
  is ``503 {"status": "error"}`` with ``Retry-After``: retryable, never a verdict (an
  append whose commit outcome is unknown is not reported as done; a farmer's identical
  retry of an answer gets the recorded verdict).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import sqlalchemy.exc
import structlog
from aiohttp import web

from ..domain import tokens as tk
from ..domain.errors import Refused
from ..ledger.db import UNAVAILABLE_CODES, mysql_error_code
from ..ledger.store import AppendFailed
from ..service import Node
from ..service.runtime import DatabaseTimeout
from . import schemas as sc
from .ledger import add_ledger_routes
from .metrics import METRICS, Metrics, metrics_handler
from .openapi import add_doc_routes
from .proxies import Network, client_address, parse_trusted
from .routes import (
    HASH_RE,
    LIMITER,
    NEW_LIMITER,
    NODE,
    REMOTE,
    REQUEST_ID,
    ClientGone,
    UnreadableBody,
    add_routes,
    body_limit,
    new_token_limiter,
    token_limiter,
)
from .v1 import add_v1_routes

log = structlog.get_logger("downstream.http")
access_log = structlog.get_logger("downstream.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TRUSTED_PROXIES = web.AppKey("trusted_proxies", tuple[Network, ...])

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:+=/-]{1,128}\Z")
DATABASE_RETRY_AFTER = "5"
# How long a refused /new should wait: a slot frees only when a token is deleted.
TOKENS_RETRY_AFTER = "60"
# As nginx records it: the client closed the connection before the node could answer.
CLIENT_GONE = 499
HTTP_WORDS = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def error_response(status: str, message: str, code: int | None = None) -> web.Response:
    code = code or sc.STATUS_WORDS.get(status, (400, ""))[0]
    return web.json_response(
        sc.error_schema.dump({"status": status, "message": message}), status=code
    )


def route_name(request: web.Request) -> str:
    """The route template, e.g. ``/api/downstream/chunk/{token}``; ``unmatched`` if none."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    if resource is None or isinstance(request.match_info.http_exception, web.HTTPException):
        return "unmatched"
    return resource.canonical


def redacted_path(request: web.Request) -> str:
    """The path as logs may show it: the token parameter and every run of 32 or more hex
    digits cut short, except a well-formed ``file_hash`` parameter (not a secret)."""
    path = request.path
    token = request.match_info.get("token")
    if token:
        path = path.replace(f"/{token}", f"/{tk.redact(token)}", 1)
    file_hash = request.match_info.get("file_hash")
    keep = None
    if (
        file_hash
        and HASH_RE.match(file_hash)
        and not (token and token.lower() in file_hash.lower())
    ):
        keep = file_hash
    return tk.HEX_RUN.sub(
        lambda m: m.group(0) if m.group(0) == keep else tk.redact(m.group(0)), path
    )


def accepted_request_id(incoming: str) -> str:
    """The client's request id if it is safe to log and record, else a fresh one.

    A request id is written to every log line and event of its request, so one holding a run
    of 32 or more hex digits (a token, or a token's hash) is never taken as sent: a client
    that puts its token there must not find it in the node's logs and ledger."""
    if REQUEST_ID_RE.match(incoming) and not tk.HEX_RUN.search(incoming):
        return incoming
    # 32 hex digits of os.urandom, as uuid4().hex but without building a UUID per request.
    return secrets.token_hex(16)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = accepted_request_id(request.headers.get(REQUEST_ID_HEADER, ""))
    request[REQUEST_ID] = request_id
    trusted = request.app[TRUSTED_PROXIES]
    request[REMOTE] = tk.plain_address(
        (
            client_address(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)
            if trusted
            else request.remote
        )
        or ""
    )
    started = time.perf_counter()
    status = CLIENT_GONE  # unless an answer comes
    try:
        # Bound for the handler only: one connection's requests share one task (keep-alive).
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            response = await handler(request)
        finally:
            structlog.contextvars.reset_contextvars(**bound)
        transport = request.transport
        # A reply nobody will read (the farmer hung up meanwhile) is logged as such, not as
        # the status it would have had.
        status = response.status if transport and not transport.is_closing() else CLIENT_GONE
        response.headers[REQUEST_ID_HEADER] = request_id
        # No browser may sniff a JSON error (or anything else) into HTML.
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response
    finally:
        elapsed = time.perf_counter() - started
        route = route_name(request)
        metrics = request.app.get(METRICS)
        if metrics is not None:
            metrics.observe(route, request.method, status, elapsed)
        access_log.info(
            "request",
            request_id=request_id,
            method=request.method,
            route=route,
            path=redacted_path(request),
            status=status,
            latency_ms=round(elapsed * 1000, 2),
            remote=request[REMOTE],
        )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    node = request.app[NODE]
    max_body = body_limit(request)
    try:
        length = request.content_length
        if length is not None and length > max_body:
            raise Refused("too_large", f"the body has {length} bytes; at most {max_body} allowed")
        with node.rt.wait_budget():  # a stalled database is a 503 in time, not a hang
            return await handler(request)
    except ClientGone:
        # Nobody reads this reply; its code is what the access log and the metrics record.
        return web.Response(status=CLIENT_GONE)
    except Refused as refused:
        response = error_response(refused.status, refused.message)
        if refused.retry_after is not None:  # a limit that time lifts (RateLimited, say)
            response.headers["Retry-After"] = str(refused.retry_after)
        elif refused.status == "busy":
            response.headers["Retry-After"] = "1"
        elif refused.status == "too_many_tokens":
            response.headers["Retry-After"] = TOKENS_RETRY_AFTER
        elif refused.status not in sc.STATUS_WORDS:
            log.warning("unmapped_status_word", status=refused.status)
        if isinstance(refused, UnreadableBody):
            response.force_close()  # tells the client not to send more on this connection
        return response
    except web.HTTPException as exc:
        return _http_error(exc, max_body)
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except AppendFailed as failed:
        log.error(
            "append_failed",
            route=route_name(request),
            before_commit=failed.before_commit,
            error=repr(failed.cause)[:500],
        )
        if failed.before_commit:
            message = "the database failed before anything was recorded; retry later"
        else:
            message = (
                "the database failed while committing, so whether this was recorded is "
                "unknown; retry later (an identical answer gets the recorded verdict)"
            )
        return _unavailable(message)
    except DatabaseTimeout as timeout:
        log.error("database_timeout", route=route_name(request), seconds=timeout.seconds)
        return _unavailable(
            f"the database did not answer within {timeout.seconds:g} s; retry later (an "
            "identical answer gets the recorded verdict)"
        )
    except Exception as exc:
        if _database_unavailable(exc):
            # One line, not a traceback: an outage fails every request, and its log must not
            # flood (the cause is the database's, and its message says which).
            cause = getattr(exc, "orig", None) or exc
            log.error("database_unavailable", route=route_name(request), error=repr(cause)[:500])
            return _unavailable("the database is unavailable; retry later")
        log.exception("unhandled_error", route=route_name(request))
        return error_response(
            "error",
            f"internal error; quote request id {request.get(REQUEST_ID)} when reporting it",
            500,
        )


def _database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unreachable or dropped the connection."""
    if isinstance(
        exc,
        (
            sqlalchemy.exc.OperationalError,
            sqlalchemy.exc.InterfaceError,
            sqlalchemy.exc.DisconnectionError,
            sqlalchemy.exc.TimeoutError,  # no pooled connection came free in time
        ),
    ):
        return True
    if not isinstance(exc, sqlalchemy.exc.DBAPIError):
        return False
    return exc.connection_invalidated or mysql_error_code(exc) in UNAVAILABLE_CODES


def _unavailable(message: str) -> web.Response:
    response = error_response("error", message, 503)
    response.headers["Retry-After"] = DATABASE_RETRY_AFTER
    return response


def _http_error(exc: web.HTTPException, max_body: int) -> web.Response:
    code = exc.status
    if code < 400:  # a redirect or a deliberate success: pass it on as it is
        return web.Response(status=code, headers=exc.headers, text=exc.text)
    word = HTTP_WORDS.get(code, "bad_request" if code < 500 else "error")
    if code == 404:
        message = "no such route; the API lives under /api/downstream (see /api/docs)"
    elif code == 405:
        allowed = exc.headers.get("Allow", "")
        message = f"this route does not accept this method (allowed: {allowed})"
    elif code == 413:
        message = f"the body is larger than {max_body} bytes"
    else:
        message = exc.reason
    response = error_response(word, message, code)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def _node_life(
    node: Node, manage_node: bool, sweep_seconds: float | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def life(app: web.Application) -> AsyncIterator[None]:
        if manage_node:
            await node.start()
        sweeper = None
        if sweep_seconds and sweep_seconds > 0:
            sweeper = asyncio.create_task(_sweep(node, sweep_seconds), name="sweep-expired")
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            if manage_node:
                await node.close()

    return life


async def _sweep(node: Node, every: float) -> None:
    """Mark lapsed contracts expired so their replicas return to the pool."""
    while True:
        await asyncio.sleep(every)
        try:
            swept = await node.sweep_expired()
        except Exception:
            log.exception("sweep_failed")
            continue
        if swept:
            log.info("contracts_expired", count=swept)


def create_app(
    node: Node,
    *,
    manage_node: bool = True,
    sweep_seconds: float | None = None,
) -> web.Application:
    """The farmers' API for ``node``.

    ``manage_node``: start the node with the app and close it when the app stops (set it
    to False when the caller owns the node). ``sweep_seconds``: if set, run
    ``node.sweep_expired()`` that often in the background.
    """
    app = web.Application(
        client_max_size=node.settings.max_body,
        middlewares=[observe, errors],
        # Bodies are read as sent and decoded by the routes (routes.read_body): farmer 0.1.8
        # labels plain JSON gzip, which aiohttp's own decoding would refuse before any route.
        handler_args={"auto_decompress": False},
    )
    app[NODE] = node
    app[TRUSTED_PROXIES] = parse_trusted(node.settings.trusted_proxies)
    app[METRICS] = Metrics(node)
    app[LIMITER] = token_limiter(node)
    app[NEW_LIMITER] = new_token_limiter(node)
    app.cleanup_ctx.append(_node_life(node, manage_node, sweep_seconds))
    add_routes(app)
    add_v1_routes(app)
    add_ledger_routes(app)
    add_doc_routes(app)
    app.router.add_get("/metrics", metrics_handler, name="metrics")
    return app
