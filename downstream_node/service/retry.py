"""Read, decide, append; on a conflict, read again and decide again.

An append made at the stream version it read fails with ``ConcurrencyConflict`` when anyone
moved the stream meanwhile, and then nothing was written: running the whole attempt again on
fresh state is safe. After ``RETRIES`` conflicts the command answers ``busy``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..domain.errors import ConcurrencyConflict, Refused

T = TypeVar("T")

RETRIES = 8


async def until_appended(
    attempt: Callable[[], Awaitable[T]],
    *,
    busy: str,
    on_conflict: Callable[[], Awaitable[None]] | None = None,
    tries: int = RETRIES,
) -> T:
    """``attempt()`` (it reads, decides and appends) until it meets no conflict.

    ``on_conflict`` runs after each conflict, before the next attempt (e.g. to read the
    token again, which refuses a token deleted meanwhile). ``busy`` is the sentence of the
    ``Refused("busy", ...)`` raised once ``tries`` attempts have all conflicted.
    """
    for _ in range(tries):
        try:
            return await attempt()
        except ConcurrencyConflict:
            if on_conflict is not None:
                await on_conflict()
    raise Refused("busy", busy)
