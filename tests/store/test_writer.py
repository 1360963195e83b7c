"""The SQLite writer's group commit: one failing write in a batch fails alone."""

import asyncio
from pathlib import Path

import pytest

from storegate.errors import StoreUnavailable
from storegate.store import MessagesQuery
from storegate.store.sqlite import SQLiteStore
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
