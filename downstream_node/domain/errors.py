"""Refusals: a decision's way of saying no, with the API's status word and a sentence.

The ledger knows nothing of HTTP; the web layer maps each status word to an HTTP code.
"""

from __future__ import annotations


class Refused(Exception):
    """A command was refused; nothing was written."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"Refused({self.status!r}, {self.message!r})"
