"""The one SQLite writer: a thread that runs queued write operations in group commits.

Many requests' writes share one transaction and one fsync; each operation runs in its own savepoint,
so one failing operation fails only its own caller. Nothing here runs on the event loop.
"""

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("storegate.store")

Op = Callable[[sqlite3.Connection], Any]
_Item = tuple[Op, "asyncio.Future[Any]"]
_BATCH_MAX = 512


class WriterOverloaded(Exception):
    pass


class Writer:
    def __init__(self, connect: Callable[[], sqlite3.Connection], queue_max: int) -> None:
        self._connect = connect
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=queue_max)
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
        future: asyncio.Future[Any] = self._loop.create_future()
        try:
            self._queue.put_nowait((op, future))
        except queue.Full:
            raise WriterOverloaded from None
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
                batch = [first]
                while len(batch) < _BATCH_MAX:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                self._commit(conn, batch)
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, future in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = op(conn)
                except sqlite3.Error as exc:
                    conn.execute("ROLLBACK TO op")
                    outcomes.append((future, None, exc))
                else:
                    outcomes.append((future, result, None))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("sqlite group commit failed: %s", exc)
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("rollback failed")
            outcomes = [(future, None, exc) for _, future in batch]
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_resolve, outcomes)
        except RuntimeError:
            log.warning("event loop closed before %d write results were delivered", len(outcomes))


def _resolve(outcomes: list[tuple["asyncio.Future[Any]", Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
