"""The Batcher: asks of one event-loop pass answered by one call, and never an ask left waiting."""

import asyncio
import gc
import logging
import weakref
from collections.abc import Coroutine
from typing import Any

import pytest

from storegate.errors import StoreUnavailable
from storegate.store.batch import Batcher


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


def test_asks_of_one_pass_are_answered_together_in_order_and_split_at_the_maximum() -> None:
    calls: list[list[int]] = []

    async def answer(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0)
        return [i * 10 for i in items]

    async def main() -> None:
        batcher = Batcher(answer, 4)
        assert await asyncio.gather(*(batcher.ask(i) for i in range(10))) == [i * 10 for i in range(10)]
        assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        assert await batcher.ask(7) == 70 and calls[-1] == [7], "alone, an ask is a batch of one"

    run(main())


def test_a_caller_that_left_is_skipped_and_a_batch_nobody_waits_for_is_not_sent() -> None:
    calls: list[list[int]] = []

    async def answer(items: list[int]) -> list[int]:
        calls.append(items)
        return items

    async def main() -> None:
        batcher = Batcher(answer, 100)
        asks = [asyncio.ensure_future(batcher.ask(i)) for i in range(3)]
        await asyncio.sleep(0)  # every ask has joined the batch, which has not run yet
        asks[1].cancel()
        assert await asyncio.gather(asks[0], asks[2]) == [0, 2] and calls == [[0, 2]]
        gone = [asyncio.ensure_future(batcher.ask(i)) for i in range(3)]
        await asyncio.sleep(0)
        for task in gone:
            task.cancel()
        await asyncio.sleep(0.01)
        assert calls == [[0, 2]], "nobody waited: no call"
        assert await batcher.ask(5) == 5

    run(main())


def test_failures_reach_every_caller_as_503_with_their_class_and_headers() -> None:
    class Busy(StoreUnavailable):
        pass

    async def unavailable(items: list[int]) -> list[int]:
        raise Busy("the store is busy", retry_after=7)

    async def buggy(items: list[int]) -> list[int]:
        raise KeyError("a bug")

    async def main() -> None:
        down = Batcher(unavailable, 10)
        results = await asyncio.gather(*(down.ask(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, Busy) and r.headers == {"Retry-After": "7"} for r in results), results
        assert len({id(r) for r in results}) == len(results), "each caller its own exception"
        broken = Batcher(buggy, 10)
        bug = await asyncio.gather(*(broken.ask(i) for i in range(3)), return_exceptions=True)
        assert all(type(r) is StoreUnavailable for r in bug), bug

    run(main())


def test_a_batch_whose_task_never_ran_fails_its_asks_and_takes_no_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def answer(items: list[int]) -> list[int]:
        return items

    async def main() -> None:
        batcher = Batcher(answer, 100)
        first = asyncio.ensure_future(batcher.ask(1))
        await asyncio.sleep(0)
        assert batcher._open is not None
        batcher._open[1].cancel()  # e.g. a loop shutting down cancels what is pending
        with pytest.raises(StoreUnavailable):
            await first
        assert await asyncio.wait_for(batcher.ask(2), 5) == 2, "a later ask starts a new batch"

    with caplog.at_level(logging.ERROR):
        run(main())


def test_close_lets_batches_under_way_answer_and_refuses_new_asks() -> None:
    release = asyncio.Event()

    async def answer(items: list[int]) -> list[int]:
        await release.wait()
        return items

    async def main() -> None:
        batcher = Batcher(answer, 100)
        under_way = asyncio.ensure_future(batcher.ask(3))
        await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.01)
        assert not closing.done(), "close waits for the batch under way"
        release.set()
        await closing
        assert await under_way == 3
        with pytest.raises(StoreUnavailable):
            await batcher.ask(4)

    run(main())


def test_a_failed_batch_leaves_nothing_for_the_cycle_collector() -> None:
    """The asks' items are freed by reference counting alone once their callers have their errors:
    no failure's traceback keeps a frame that keeps the batch (the first caller's included)."""

    class Item:
        pass

    async def answer(items: list[Item]) -> list[int]:
        raise StoreUnavailable("down")

    async def main() -> list["weakref.ref[Item]"]:
        batcher: Batcher[Item, int] = Batcher(answer, 4)
        items = [Item() for _ in range(6)]
        refs = [weakref.ref(i) for i in items]
        results = await asyncio.gather(*(batcher.ask(i) for i in items), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results)
        del items, results
        return refs

    gc.collect()
    gc.disable()
    try:
        refs = asyncio.run(main())
        assert [r() for r in refs] == [None] * 6
    finally:
        gc.enable()
