"""Structured logging: structlog, one event per line on standard error, JSON or console.

Request handlers bind ``request_id`` with structlog's context variables, so every line a
request causes carries it. Output never goes to standard output, which commands keep for
their results.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure(
    fmt: str = "console", level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        # Plain tracebacks: rich's (the default when installed) show local variables.
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


# Until a command configures it, log to standard error like any well-behaved library.
configure()
