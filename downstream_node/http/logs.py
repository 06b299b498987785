"""Logging for the server and the farmer: structlog, one event per line, console or JSON.

``configure_logging("json")`` writes one JSON object per line (``timestamp`` ISO 8601 UTC,
``level``, ``event``, then the event's keys); ``"console"`` writes the same keys as aligned,
human-readable text. Records of the standard ``logging`` module (aiohttp's own errors, for
instance) go through the same renderer, so a log never mixes formats.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from typing import Any, TextIO

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

FORMATS = ("console", "json")
# C0 and C1 controls and DEL: what a terminal would act on rather than show.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def escape_controls(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Control characters in text values written as ``\\xNN``: a client's path or header
    must not clear or retitle the terminal of an operator tailing the console log (the JSON
    format escapes them already)."""
    for key, value in event.items():
        if type(value) is str and _CONTROLS.search(value):
            event[key] = _CONTROLS.sub(_escaped, value)
    return event


def _client_faults(record: logging.LogRecord) -> bool:
    """Client mistakes that aiohttp logs as the server's errors, kept as one-line warnings.

    A request it cannot parse is logged with the parser's error, which quotes the start of
    the request line: a token in the path would be written whole, so the quote goes. A body
    its Content-Encoding does not describe is refused (400) by the route, then aiohttp fails
    on it once more while draining it and logs an "unhandled exception". Neither traceback
    is the node's bug.
    """
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        record.msg = f"{record.getMessage()}: {type(exc).__name__} (HTTP {exc.code})"
    elif isinstance(exc, RequestPayloadError):
        record.msg = "a request body could not be decoded (refused with 400); connection closed"
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    else:
        return True
    record.args = None
    record.exc_info = None
    record.exc_text = None
    return True


class LossyStream:
    """A log's stream that drops what it cannot write. A log reader that went away (a
    closed pipe, ``serve 2>&1 | tee`` whose tee died) or a full disk must not fail the
    request being logged: its events are recorded already, and the farmer must hear so."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.dropped = 0  # lines (writes) lost

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed
            self.dropped += 1
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    def isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False


def configure_logging(
    fmt: str = "console",
    *,
    level: str | int = "INFO",
    stream: TextIO | None = None,
    cache_loggers: bool = False,
) -> None:
    """Configure structlog and the standard ``logging`` module alike.

    ``cache_loggers``: each logger keeps this configuration from its first use on, for a
    process that configures once (``serve``): otherwise structlog builds the logger anew on
    every call, a third of the cost of an access-log line. Off where the configuration may
    change again (tests capture logs by reconfiguring).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: one of {', '.join(FORMATS)}")
    stream = LossyStream(stream or sys.stderr)  # type: ignore[assignment]
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False, ensure_ascii=False)
        tail: list[Any] = [structlog.processors.format_exc_info]
    else:
        # Plain tracebacks: structlog's default (rich, when installed) prints every frame's
        # local variables, and a request's locals hold its token.
        renderer = structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        tail = [escape_controls]

    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=cache_loggers,
    )

    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_downstream", False):
            root.removeHandler(old)
    handler.addFilter(_client_faults)
    handler._downstream = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(numeric)
    # aiohttp's own access log would print raw paths, tokens included: ours replaces it.
    logging.getLogger("aiohttp.access").disabled = True
