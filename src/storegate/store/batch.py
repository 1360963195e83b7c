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

from storegate.errors import StoregateError, StoreUnavailable

log = logging.getLogger("storegate.store")
K = TypeVar("K")
V = TypeVar("V")
Batch = list[tuple[K, asyncio.Future[V]]]


class Batcher(Generic[K, V]):
    def __init__(self, answer: Callable[[list[K]], Awaitable[list[V]]], max_size: int) -> None:
        """`answer` gets the asks (in order) and returns one answer per ask, in the same order."""
        self._answer = answer
        self._max = max_size
        self._open: tuple[Batch[K, V], asyncio.Task[None]] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    async def ask(self, item: K) -> V:
        if self._closed:
            raise StoreUnavailable("the store is closing")
        current = self._open
        if current is None or len(current[0]) >= self._max or current[1].done():
            current = self._open = self._start()
        answer: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        current[0].append((item, answer))
        try:
            return await answer
        finally:
            # A failed answer's traceback holds this frame: with neither the answer nor its batch in
            # it, no reference cycle (future -> exception -> traceback -> frame -> future) waits for
            # the cycle collector (serve raises its threshold: cli/main.py).
            del answer, current

    def _start(self) -> tuple[Batch[K, V], "asyncio.Task[None]"]:
        batch: Batch[K, V] = []
        task = asyncio.ensure_future(self._run(batch))
        self._running.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(lambda done: self._ended(done, batch))
        return batch, task

    async def close(self) -> None:
        """No new asks; the batches under way finish (their callers get their answers)."""
        self._closed = True
        if self._running:
            await asyncio.wait(set(self._running))

    def _ended(self, task: "asyncio.Task[None]", batch: Batch[K, V]) -> None:
        """Whatever way the task ended (even cancelled before its first step), no ask is left waiting
        and no later ask joins its batch."""
        self._running.discard(task)
        if self._open is not None and self._open[0] is batch:
            self._open = None
        _fail_unanswered(batch, StoreUnavailable("the store could not answer"))

    async def _run(self, batch: Batch[K, V]) -> None:
        if self._open is not None and self._open[0] is batch:
            self._open = None  # asks from now on start the next batch
        asked = [(item, answer) for item, answer in batch if not answer.done()]  # a caller may have left
        if not asked:
            return
        try:
            answers = await self._answer([item for item, _ in asked])
        except StoreUnavailable as exc:
            _fail_unanswered(asked, exc)
            return
        except Exception:  # a bug: logged here; every ask of the batch answers 503 (in _ended)
            log.exception("answering a batch failed")
            return
        for (_, answer), value in zip(asked, answers, strict=True):
            if not answer.done():
                answer.set_result(value)


def _fail_unanswered(batch: "list[tuple[K, asyncio.Future[V]]]", exc: StoregateError) -> None:
    for _, answer in batch:
        if not answer.done():
            answer.set_exception(_copy(exc))


def _copy(exc: StoregateError) -> StoregateError:
    """The same error for each caller, each its own instance (one raised in many tasks would grow
    one traceback), of the same class, with the same headers (Retry-After)."""
    fresh = exc.__class__.__new__(exc.__class__)
    fresh.__dict__.update(exc.__dict__)
    fresh.args = exc.args
    fresh.headers = dict(exc.headers)
    return fresh
