"""The one SQLite writer: a thread that runs queued write operations in group commits.

Many requests' writes share one transaction and one fsync, and consecutive writes of one kind (the
inserts of a busy server) run as one executemany. Should anything fail, the batch is rolled back and
replayed one write per transaction, so a failure reaches only its own caller. Nothing here runs on
the event loop.
"""

import asyncio
import logging
import queue
import sqlite3
import threading
import traceback
from collections.abc import Callable
from typing import Any

log = logging.getLogger("storegate.store")

Op = Callable[[sqlite3.Connection], Any]
Many = Callable[[sqlite3.Connection, list[Any]], None]


class Grouped:
    """A write that may share one call of `many` with its neighbours of the same `many`."""

    __slots__ = ("item", "many")

    def __init__(self, many: Many, item: Any) -> None:
        self.many = many
        self.item = item

    def __call__(self, conn: sqlite3.Connection) -> None:
        self.many(conn, [self.item])


_Item = tuple[Op, "asyncio.Future[Any]"]
_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]
_BATCH_MAX = 512


class WriterOverloaded(Exception):
    pass


class Writer:
    def __init__(self, connect: Callable[[], sqlite3.Connection], queue_max: int) -> None:
        self._connect = connect
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._queue_max = queue_max
        self._thread = threading.Thread(target=self._run, name="storegate-sqlite-writer", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error

    def submit(self, op: Op) -> "asyncio.Future[Any]":
        assert self._loop is not None
        if self._queue.qsize() >= self._queue_max:
            raise WriterOverloaded
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put((op, future))
        return future

    async def stop(self) -> None:
        """Finish every queued write, then stop."""
        if self._thread.is_alive():
            await asyncio.to_thread(self._queue.put, None)
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                if first is None:
                    break
                # Not kept in this frame once committed: a failure's traceback reaches this frame too.
                batch, stopping = self._take(first)
                self._commit(conn, batch)
                del first, batch
        finally:
            conn.close()

    def _take(self, first: _Item) -> tuple[list[_Item], bool]:
        """The batch that `first` opens: what is queued behind it, up to _BATCH_MAX; True if the stop
        signal came among them."""
        batch = [first]
        while len(batch) < _BATCH_MAX:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _commit(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        try:
            outcomes = _transaction(conn, batch)
        except Exception as exc:  # the thread must outlive any one failure
            if len(batch) == 1:
                outcomes = [(batch[0][1], None, exc)]
            else:
                log.warning(
                    "group commit of %d writes failed (%s); replaying them one by one", len(batch), exc
                )
                outcomes = []
                for item in batch:
                    try:
                        outcomes += _transaction(conn, [item])
                    except Exception as one:
                        outcomes.append((item[1], None, one))
                del item
        for _, _, error in outcomes:
            if error is not None:
                _drop_locals(error)
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_resolve, outcomes)
        except RuntimeError:
            log.warning("event loop closed before %d write results were delivered", len(outcomes))
        # A failure's traceback holds this frame and those below it (cleared above): without these in
        # it, no reference cycle keeps the batch's records until the cycle collector runs (serve
        # raises its threshold: cli/main.py).
        del outcomes, batch


def _transaction(conn: sqlite3.Connection, batch: list[_Item]) -> list[_Outcome]:
    """Run the batch in one transaction; on any error roll it all back and raise."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        outcomes: list[_Outcome] = []
        for run in _runs(batch):
            head = run[0][0]
            if isinstance(head, Grouped):
                head.many(conn, [op.item for op, _ in run if isinstance(op, Grouped)])
                outcomes += [(future, None, None) for _, future in run]
            else:
                outcomes.append((run[0][1], head(conn), None))
        conn.execute("COMMIT")
    except Exception:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback failed")
        raise
    return outcomes


def _runs(batch: list[_Item]) -> list[list[_Item]]:
    """Split a batch into runs: consecutive Grouped writes of one `many` together, anything else alone."""
    runs: list[list[_Item]] = []
    for item in batch:
        op, last = item[0], runs[-1][-1][0] if runs else None
        if isinstance(op, Grouped) and isinstance(last, Grouped) and last.many is op.many:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _drop_locals(failure: BaseException) -> None:
    """The finished frames in a failure's tracebacks (its own and those of the failures it follows: a
    replayed write's holds the group's) drop their locals, so none reaches back to the failure; the
    tracebacks still print."""
    seen: set[int] = set()
    error: BaseException | None = failure
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def _resolve(outcomes: list[_Outcome]) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
