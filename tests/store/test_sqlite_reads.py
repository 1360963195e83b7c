"""SQLite reads that fail: every read path answers StoreUnavailable (a 503) in storegate's words,
never an unhandled sqlite3 error (a 500)."""

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from storegate.errors import StoreUnavailable
from storegate.store import ListQuery, sqlite
from storegate.store.sqlite import SQLiteStore


@pytest.mark.parametrize(
    "metadata",
    [{"env": "dev"}, {"env": "dev", "user": "u1"}],
    ids=["one filter, on the event loop", "two filters, in the slow reader's thread"],
)
def test_a_list_the_store_cannot_read_is_store_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metadata: dict[str, str]
) -> None:
    def failing(*_: Any) -> list[Any]:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite, "_select", failing)

    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "r.db"))
        await store.open()
        try:
            query = ListQuery(project="p", model=None, metadata=metadata, after=None, limit=20, order="asc")
            for read in (store.list, store.list_rendered):
                with pytest.raises(StoreUnavailable, match=r"^the store could not answer: disk I/O error$"):
                    await read(query)
        finally:
            await store.close()

    asyncio.run(main())
