"""The Batcher: concurrent callers share one call over a batch, each gets its own outcome."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from downstream_node.ledger.batching import Batcher


class Doubler:
    """Doubles numbers; refuses negative ones (that caller's own error); may be held."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.release.wait(10)
        self.batches.append(list(items))
        return [ValueError(f"negative: {i}") if i < 0 else 2 * i for i in items]


async def test_callers_arriving_while_a_batch_runs_share_the_next_batch() -> None:
    run = Doubler()
    run.release.clear()
    batcher: Batcher[int, int] = Batcher(run, executor=ThreadPoolExecutor(1))
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.05)  # the first batch, [0], is held in its thread
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 21)]
    await asyncio.sleep(0.05)
    run.release.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [2 * i for i in range(1, 21)]
    assert run.batches == [[0], list(range(1, 21))]
    assert batcher.batches == 2
    await batcher.close()


async def test_one_items_error_goes_to_its_caller_alone() -> None:
    batcher: Batcher[int, int] = Batcher(Doubler())
    results = await asyncio.gather(*(batcher.submit(i) for i in (3, -1, 4)), return_exceptions=True)
    assert results[0] == 6 and results[2] == 8
    assert isinstance(results[1], ValueError) and "negative: -1" in str(results[1])
    await batcher.close()


async def test_a_batch_that_raises_fails_every_caller_with_the_lost_error() -> None:
    def broken(items: list[int]) -> list[int | BaseException]:
        raise OSError("disk gone")

    batcher: Batcher[int, int] = Batcher(broken, on_lost=lambda exc: RuntimeError(f"lost: {exc}"))
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert [str(r) for r in results] == ["lost: disk gone"] * 3
    await batcher.close()


async def test_batches_are_capped_and_nothing_queued_is_dropped() -> None:
    run = Doubler()
    batcher: Batcher[int, int] = Batcher(run, max_batch=4)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(10))) == [
        2 * i for i in range(10)
    ]
    assert max(len(b) for b in run.batches) <= 4
    assert sorted(i for b in run.batches for i in b) == list(range(10))
    await batcher.close()


async def test_a_caller_that_gives_up_does_not_cancel_the_others() -> None:
    run = Doubler()
    run.release.clear()
    batcher: Batcher[int, int] = Batcher(run, executor=ThreadPoolExecutor(1))
    impatient = asyncio.create_task(batcher.submit(1))
    patient = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0.05)
    impatient.cancel()
    run.release.set()
    assert await patient == 4
    with pytest.raises(asyncio.CancelledError):
        await impatient
    await batcher.close()


async def test_closed_batcher_refuses_new_items() -> None:
    batcher: Batcher[int, int] = Batcher(Doubler())
    assert await batcher.submit(5) == 10
    await batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.submit(1)
