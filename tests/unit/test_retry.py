"""The service's read-decide-append loop: a conflict means nothing was written, so the whole
attempt runs again on fresh state; after the last try the caller gets ``busy``."""

from __future__ import annotations

import pytest

from downstream_node.domain.errors import ConcurrencyConflict, Refused
from downstream_node.service.retry import RETRIES, until_appended


async def test_an_attempt_that_conflicts_runs_again_and_its_result_is_returned() -> None:
    calls: list[int] = []
    rereads: list[int] = []

    async def attempt() -> str:
        calls.append(len(calls))
        if len(calls) < 3:
            raise ConcurrencyConflict("file-x", 4, 5)
        return "assigned"

    async def reread() -> None:
        rereads.append(len(calls))

    assert await until_appended(attempt, busy="contended", on_conflict=reread) == "assigned"
    assert calls == [0, 1, 2]
    assert rereads == [1, 2]  # fresh state before each new attempt, never after the last


async def test_after_the_last_conflict_the_caller_gets_busy_with_the_sentence_given() -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise ConcurrencyConflict("ip-10.0.0.1", 1, 2)

    with pytest.raises(Refused) as refused:
        await until_appended(attempt, busy="too many tokens at once; try again")
    assert (refused.value.status, refused.value.message) == (
        "busy",
        "too many tokens at once; try again",
    )
    assert calls == RETRIES


async def test_a_refusal_is_not_retried() -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise Refused("no_chunks", "nothing to take")

    with pytest.raises(Refused, match="nothing to take"):
        await until_appended(attempt, busy="contended")
    assert calls == 1
