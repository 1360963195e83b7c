"""The SQLite writer's group commit: one failing write in a batch fails alone."""

import asyncio
import gc
import sqlite3
import weakref
from pathlib import Path

import pytest

from storegate.errors import StoreUnavailable
from storegate.store import MessagesQuery
from storegate.store.sqlite import SQLiteStore
from storegate.store.writer import Grouped, Writer
from tests.store.test_contract import completion


def test_a_failing_write_fails_alone_in_its_batch(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "w.db"))
        await store.open()
        try:
            first = completion()
            await store.insert(first)
            others = [completion() for _ in range(20)]
            batch = [*others[:10], first, *others[10:]]  # `first` again: a duplicate id
            results = await asyncio.gather(*(store.insert(c) for c in batch), return_exceptions=True)
            assert isinstance(results[10], StoreUnavailable)
            assert [r for i, r in enumerate(results) if i != 10] == [None] * 20
            for c in others:
                assert await store.get("p", c.id) is not None
            page = await store.list_messages(MessagesQuery("p", first.id, None, 10, "asc"))
            assert page is not None and len(page.items) == 2, "the duplicate added no messages"
        finally:
            await store.close()

    asyncio.run(main())


def test_writes_past_the_queue_bound_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "q.db"), queue_max=5)
        await store.open()
        try:
            results = await asyncio.gather(
                *(store.insert(completion()) for _ in range(200)), return_exceptions=True
            )
            refused = [r for r in results if isinstance(r, StoreUnavailable)]
            assert refused and all(r.headers["Retry-After"] for r in refused)
            assert results.count(None) >= 5
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.parametrize("count", [1, 3])
def test_close_flushes_pending_writes(tmp_path: Path, count: int) -> None:
    async def main() -> list[str]:
        store = SQLiteStore(str(tmp_path / "f.db"))
        await store.open()
        made = [completion() for _ in range(count)]
        pending = [asyncio.ensure_future(store.insert(c)) for c in made]
        await asyncio.sleep(0)
        await store.close()
        await asyncio.gather(*pending)
        reopened = SQLiteStore(str(tmp_path / "f.db"))
        await reopened.open()
        try:
            return [c.id for c in made if await reopened.get("p", c.id) is not None]
        finally:
            await reopened.close()

    assert len(asyncio.run(main())) == count


def test_a_failed_group_commit_leaves_nothing_for_the_cycle_collector(tmp_path: Path) -> None:
    """Once their callers have their errors, the failed writes are freed by reference counting alone:
    no failure's traceback keeps a writer frame that keeps the batch (serve raises the collector's
    threshold, cli/main.py)."""

    class Record:
        pass

    def fail(conn: sqlite3.Connection, items: list[Record]) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    async def main() -> list["weakref.ref[Record]"]:
        writer = Writer(lambda: sqlite3.connect(tmp_path / "g.db", check_same_thread=False), 100)
        writer.start(asyncio.get_running_loop())
        try:
            records = [Record() for _ in range(5)]
            refs = [weakref.ref(r) for r in records]
            futures = [writer.submit(Grouped(fail, r)) for r in records]  # one batch: replayed one by one
            results = await asyncio.gather(*futures, return_exceptions=True)
            assert all(isinstance(r, sqlite3.OperationalError) for r in results)
            del records, futures, results
        finally:
            await writer.stop()
        return refs

    gc.collect()
    gc.disable()
    try:
        refs = asyncio.run(main())
        assert [r() for r in refs] == [None] * 5
    finally:
        gc.enable()
