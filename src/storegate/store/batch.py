"""Answer together what was asked during one pass of the event loop.

Every request read from the sockets in one pass runs its handler in that pass (or the next); each
asks the batcher and waits. The first ask of a pass starts a task, and a task's first step runs on
the next pass: by then every ask of this pass has joined, and one call answers them all. At one
request at a time the batch holds one ask, and the wait is one pass of an idle loop.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from storegate.errors import StoreUnavailable

log = logging.getLogger("storegate.store")
K = TypeVar("K")
V = TypeVar("V")


class Batcher(Generic[K, V]):
    def __init__(self, answer: Callable[[list[K]], Awaitable[list[V]]], max_size: int) -> None:
        """`answer` gets the asks (in order) and returns one answer per ask, in the same order."""
        self._answer = answer
        self._max = max_size
        self._open: list[tuple[K, asyncio.Future[V]]] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def ask(self, item: K) -> V:
        batch = self._open
        if batch is None or len(batch) >= self._max:
            batch = self._open = []
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._running.discard)
        answer: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        batch.append((item, answer))
        return await answer

    async def _run(self, batch: list[tuple[K, "asyncio.Future[V]"]]) -> None:
        if self._open is batch:
            self._open = None  # asks from now on start the next batch
        try:
            asked = [(item, answer) for item, answer in batch if not answer.done()]  # a caller may have left
            if not asked:
                return
            try:
                answers = await self._answer([item for item, _ in asked])
            except StoreUnavailable as exc:
                for _, answer in asked:
                    if (
                        not answer.done()
                    ):  # each its own exception: one raised in many tasks grows one traceback
                        answer.set_exception(StoreUnavailable(exc.message))
                return
            except Exception:  # a bug: logged here; every ask of the batch answers 503 (below)
                log.exception("answering a batch failed")
                return
            for (_, answer), value in zip(asked, answers, strict=True):
                if not answer.done():
                    answer.set_result(value)
        finally:  # cancelled (the store closing) or failed: no ask is left waiting
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(StoreUnavailable("the store could not answer"))
