"""The project's errors under one root, ``DownstreamError``: refusals (a decision's way of
saying no, with the API's status word and a sentence), unreadable events and the ledger's own.

The ledger knows nothing of HTTP; the web layer maps each status word to an HTTP code.
"""

from __future__ import annotations


class DownstreamError(Exception):
    """Root of every error this project raises on purpose (the heartbeat library, which
    imports nothing of the project, keeps its own ``HeartbeatError``)."""


class Refused(DownstreamError):
    """A command was refused; nothing was written. ``retry_after``: seconds after which the
    same request may succeed, when the refusal is a limit that time lifts."""

    def __init__(self, status: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"Refused({self.status!r}, {self.message!r})"


class UnknownEvent(DownstreamError, ValueError):
    """A recorded event of a type this code does not know, or of a newer schema: a reader
    stops rather than fold a history it would misread."""


class LedgerError(DownstreamError):
    """Base class of the ledger's own errors."""


class ConcurrencyConflict(LedgerError):
    """The stream moved on since the caller read it; nothing was written."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream_id!r} is at version {actual}, the append expected {expected}"
        )
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
